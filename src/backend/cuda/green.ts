/**
 * Development A/B (RWKVX_SCAN_SMS=N): the WKV-7 prefill scans confined to a green context of N SMs (the
 * driver rounds N to its partition granularity). The scan's blocks hold 60 KB of shared memory each,
 * which keeps cuBLAS's large-tile GEMM blocks off every SM a scan block sits on; packed onto a few SMs,
 * the scans would leave the others whole. Each stream that issues a scan gets a side stream of the
 * green context: the scan waits there for the stream's earlier work, and the stream's later work waits
 * for the scan, so the order of results is that of the one-stream code (same bits).
 */
import koffi from 'koffi';
import { check, cu, type Handle } from './driver.js';
import { StreamEvent } from './streams.js';
import { UserError } from '../../util/errors.js';

type Fn = (...args: unknown[]) => number;
const RES_BYTES = 144;  // CUdevResource (CUDA 12.4+ ABI version 1): type, 92 bytes of padding, a 48-byte union

export class ScanPartition {
  private sides = new Map<Handle, { side: Handle; before: StreamEvent; after: StreamEvent }>();
  private constructor(private green: Handle, private streamCreate: Fn, readonly sms: number) {}

  /** A partition of `want` SMs of device `ordinal`, or a one-line error where the driver has no green contexts. */
  static create(want: number, ordinal = 0): ScanPartition {
    cu();
    const lib = koffi.load('libcuda.so.1');
    let f: Record<string, Fn>;
    try {
      f = {
        get: lib.func('int cuDeviceGetDevResource(int dev, void *res, int type)') as Fn,
        split: lib.func('int cuDevSmResourceSplitByCount(void *result, _Inout_ unsigned int *nb, void *input, void *remaining, unsigned int flags, unsigned int minCount)') as Fn,
        desc: lib.func('int cuDevResourceGenerateDesc(_Out_ void **desc, void *res, unsigned int n)') as Fn,
        create: lib.func('int cuGreenCtxCreate(_Out_ void **g, void *desc, int dev, unsigned int flags)') as Fn,
        stream: lib.func('int cuGreenCtxStreamCreate(_Out_ void **s, void *g, unsigned int flags, int prio)') as Fn,
      };
    } catch (e) {
      throw new UserError(`RWKVX_SCAN_SMS needs a CUDA 12.4+ driver with green contexts (${(e as Error).message.split('\n')[0]})`);
    }
    const dev = [0];
    check('cuDeviceGet', cu().cuDeviceGet(dev, ordinal));
    const all = Buffer.alloc(RES_BYTES), part = Buffer.alloc(RES_BYTES), rest = Buffer.alloc(RES_BYTES), nb = [1];
    check('cuDeviceGetDevResource', f.get(dev[0], all, 1 /* CU_DEV_RESOURCE_TYPE_SM */));
    check('cuDevSmResourceSplitByCount', f.split(part, nb, all, rest, 0, want));
    const desc: Handle[] = [null], g: Handle[] = [null];
    check('cuDevResourceGenerateDesc', f.desc(desc, part, 1));
    check('cuGreenCtxCreate', f.create(g, desc[0], dev[0], 1 /* CU_GREEN_CTX_DEFAULT_STREAM */));
    return new ScanPartition(g[0], f.stream, part.readUInt32LE(96));
  }

  /** Runs `issue(side)` (launches on the side stream) ordered after `stream`'s earlier work and before its later work. */
  run(stream: Handle, issue: (side: Handle) => void): void {
    let s = this.sides.get(stream);
    if (!s) {
      const side: Handle[] = [null];
      check('cuGreenCtxStreamCreate', this.streamCreate(side, this.green, 1 /* CU_STREAM_NON_BLOCKING */, 0));
      s = { side: side[0], before: new StreamEvent(), after: new StreamEvent() };
      this.sides.set(stream, s);
    }
    s.before.record(stream);
    s.before.waitOn(s.side);
    issue(s.side);
    s.after.record(s.side);
    s.after.waitOn(stream);
  }
}
