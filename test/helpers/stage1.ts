/** The stage-1 check the CPU and GPU trainer tests share. */
import assert from 'node:assert/strict';
import { openCheckpoint } from '../../src/io/open.js';

/** Every `rwkv.*` tensor of `after` equals `before` bit for bit, and at least 4 attention tensors moved. */
export function assertOnlyAttentionMoved(beforePath: string, afterPath: string): void {
  const before = openCheckpoint(beforePath), after = openCheckpoint(afterPath);
  let changedAttn = 0;
  for (const n of before.names()) {
    const same = Buffer.compare(Buffer.from(before.readRaw(n)), Buffer.from(after.readRaw(n))) === 0;
    if (n.startsWith('rwkv.')) assert.ok(same, `${n} must stay frozen`);
    else if (!same) changedAttn++;
  }
  assert.ok(changedAttn >= 4, 'attention parameters moved');
  before.close(); after.close();
}
