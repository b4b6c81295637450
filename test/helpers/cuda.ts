/**
 * What the GPU test files share: whether CUDA is usable here (and if not, the reason the tests give
 * when they skip), the CUDA model module loaded only where it is, disposal of the models a file made,
 * and a bit-exact comparison.
 */
import { after } from 'node:test';
import { cudaAvailable } from '../../src/backend/cuda/driver.js';

const avail = cudaAvailable();
export const skipReason = avail.ok ? undefined : avail.reason.startsWith('no NVIDIA GPU') ? avail.reason : `no NVIDIA GPU / CUDA driver found: ${avail.reason}`;
// loaded lazily so that a machine without CUDA never touches the backend
export const cuda = avail.ok ? await import('../../src/backend/cuda/model.js') : undefined;

const made: { dispose(): void }[] = [];
after(() => { for (const m of made) m.dispose(); });
/** Disposes `m` when the test file ends. */
export function keep<T extends { dispose(): void }>(m: T): T { made.push(m); return m; }

/** Index of the first element whose bits differ (0 for different lengths), −1 when identical. */
export function firstDiff(a: Float32Array, b: Float32Array): number {
  if (a.length !== b.length) return 0;
  for (let i = 0; i < a.length; i++) if (!Object.is(a[i], b[i])) return i;
  return -1;
}
