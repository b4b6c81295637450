/**
 * Extra streams and events, for running independent work side by side (the segment wavefront of a
 * long prefill). Streams are blocking ones (flags 0), like the context's own: synchronous copies on
 * the legacy stream still wait for them.
 */
import koffi from 'koffi';
import { check, cu, type Handle } from './driver.js';

type Fn = (...args: unknown[]) => number;
let extra: { waitEvent: Fn; destroyStream: Fn } | undefined;
function api() {
  if (extra) return extra;
  cu();
  const lib = koffi.load('libcuda.so.1');
  extra = {
    waitEvent: lib.func('int cuStreamWaitEvent(void *stream, void *ev, unsigned int flags)') as Fn,
    destroyStream: lib.func('int cuStreamDestroy_v2(void *stream)') as Fn,
  };
  return extra;
}

export function createStream(): Handle {
  const s: Handle[] = [null];
  check('cuStreamCreate', cu().cuStreamCreate(s, 0));
  return s[0];
}

export function destroyStream(s: Handle): void { api().destroyStream(s); }

/** Waits for all streams of the current context. */
export function syncContext(): void { check('cuCtxSynchronize', cu().cuCtxSynchronize()); }

/** An event without timing: a point in one stream that another stream can wait for. */
export class StreamEvent {
  readonly handle: Handle;
  constructor() {
    const e: Handle[] = [null];
    check('cuEventCreate', cu().cuEventCreate(e, 2 /* CU_EVENT_DISABLE_TIMING */));
    this.handle = e[0];
  }
  record(stream: Handle): void { check('cuEventRecord', cu().cuEventRecord(this.handle, stream)); }
  /** Work queued on `stream` after this call starts once the event's last recorded point is reached. */
  waitOn(stream: Handle): void { check('cuStreamWaitEvent', api().waitEvent(stream, this.handle, 0)); }
  destroy(): void { cu().cuEventDestroy(this.handle); }
}
