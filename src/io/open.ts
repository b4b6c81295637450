import * as fs from 'node:fs';
import { openReadOnly } from './dtype.js';
import { UserError } from '../util/errors.js';
import { PthSource } from './pth.js';
import { SafetensorsSource } from './safetensors.js';
import type { TensorSource } from './types.js';
import { looksLikeZip } from './zip.js';

/**
 * Open a checkpoint, choosing the reader by content rather than by file extension (released .pth
 * files get renamed freely, and .bin files are often zip checkpoints too).
 */
export function openCheckpoint(path: string): TensorSource {
  let st: fs.Stats;
  try {
    st = fs.statSync(path);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'ENOENT' || code === 'ENOTDIR') throw new UserError(`${path}: no such file`);
    throw new UserError(`${path}: cannot open (${code ?? String(e)})`);
  }
  if (st.isDirectory()) throw new UserError(`${path} is a directory, not a checkpoint file`);
  if (!st.isFile()) throw new UserError(`${path} is not a regular file`);
  if (st.size === 0) throw new UserError(`${path} is empty`);

  const head = Buffer.alloc(Math.min(16, st.size));
  const fd = openReadOnly(path);
  try {
    fs.readSync(fd, head, 0, head.length, 0);
  } finally {
    fs.closeSync(fd);
  }

  if (looksLikeZip(head)) return new PthSource(path);
  // safetensors: a u64 header length, then the JSON header, which always starts with '{'.
  if (head.length > 8 && head[8] === 0x7b) return new SafetensorsSource(path);
  // torch.save before 1.6 (or with _use_new_zipfile_serialization=False): a bare pickle stream whose
  // first object is the LONG1 magic number.
  if (head[0] === 0x80 && head[1] !== undefined && head[1] >= 2 && head[1] <= 5 && head[2] === 0x8a) {
    throw new UserError(`${path} is a legacy (pre-1.6, non-zip) PyTorch file, which is not supported; re-save it with a current torch.save`);
  }
  throw new UserError(`${path} is neither a PyTorch .pth (zip) nor a safetensors file`);
}
