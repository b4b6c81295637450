/**
 * The prefill wavefront's issue order (src/backend/cuda/wavefront.ts), checked without a GPU: every task
 * once, each after the tasks it waits on, and no two segments alive at once on the same (h, vFirst) pair —
 * the property whose absence (segments s and s + K sharing a slot's residual stream) made 128K prefills
 * wrong before 2026-12-07.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { wavefrontOrder } from '../src/backend/cuda/wavefront.js';

const shapes: Array<[number, number, number]> = [];
for (const nSeg of [1, 2, 3, 5, 8, 17]) for (const L of [1, 2, 6, 16]) for (const live of [1, 2, 3, 4, 8, 16, 40]) shapes.push([nSeg, L, live]);

test('wavefront order: every (segment, layer) once, after its layer − 1 and after segment − 1 at that layer', () => {
  for (const [nSeg, L, live] of shapes) {
    const order = wavefrontOrder(nSeg, L, live), at = new Map<string, number>();
    order.forEach(([s, l], i) => at.set(`${s},${l}`, i));
    assert.equal(order.length, nSeg * L, `${nSeg}×${L}, ${live} live: task count`);
    assert.equal(at.size, nSeg * L, `${nSeg}×${L}, ${live} live: a task twice`);
    for (const [s, l] of order) {
      const i = at.get(`${s},${l}`)!;
      if (l > 0) assert.ok(at.get(`${s},${l - 1}`)! < i, `${nSeg}×${L}, ${live} live: (${s}, ${l}) before its layer ${l - 1}`);
      if (s > 0) assert.ok(at.get(`${s - 1},${l}`)! < i, `${nSeg}×${L}, ${live} live: (${s}, ${l}) before segment ${s - 1}'s`);
    }
  }
});

test('wavefront order: segments sharing a residual pair are never alive at once', () => {
  for (const [nSeg, L, live] of shapes) {
    const order = wavefrontOrder(nSeg, L, live);
    const first = new Array<number>(nSeg), last = new Array<number>(nSeg);
    order.forEach(([s, l], i) => { if (l === 0) first[s] = i; if (l === L - 1) last[s] = i; });
    for (let s = live; s < nSeg; s++) {
      assert.ok(first[s] > last[s - live], `${nSeg}×${L}, ${live} live: segment ${s} starts (task ${first[s]}) before segment ${s - live} ends (task ${last[s - live]})`);
    }
  }
});

test('wavefront order: with a pair per segment in flight it is the plain diagonal order', () => {
  for (const [nSeg, L] of [[8, 16], [3, 6], [17, 6], [1, 4]] as const) {
    const diag: Array<[number, number]> = [];
    for (let tau = 0; tau < nSeg + L - 1; tau++)
      for (let s = Math.max(0, tau - L + 1); s <= Math.min(nSeg - 1, tau); s++) diag.push([s, tau - s]);
    assert.deepEqual(wavefrontOrder(nSeg, L, Math.min(nSeg, L)), diag, `${nSeg}×${L}`);
  }
});

test('wavefront order: fewer pairs than layers hold later segments back (the old per-slot sharing is excluded)', () => {
  // 8 segments, 16 layers, 4 pairs: segment 4 may start only after segment 0's last layer
  const order = wavefrontOrder(8, 16, 4);
  const idx = (s: number, l: number) => order.findIndex(([a, b]) => a === s && b === l);
  assert.ok(idx(4, 0) > idx(0, 15));
  assert.ok(idx(3, 0) < idx(0, 15), 'segments within the pairs still overlap');
  assert.throws(() => wavefrontOrder(0, 16, 4), /wavefront of 0 segments/);
  assert.throws(() => wavefrontOrder(4, 16, 0), /0 live pairs/);
});
