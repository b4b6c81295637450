/**
 * The issue order of the prefill wavefront (model.ts forwardWavefront), kept apart from the GPU so that CI
 * checks it: rounds of the diagonal order over (segment, layer) — in each round every segment whose
 * inputs were queued before the round queues its next layer. Segment s's layer l needs segment s − 1's
 * layer l queued first (it waits on that task's event), and a segment's first layer needs the (h, vFirst)
 * pair it shares with segment s − `live` free: that segment's last layer queued (its event is then
 * recorded before the wait). With live ≥ min(segments, layers) this is the plain diagonal order.
 */
export function wavefrontOrder(nSeg: number, nLayer: number, live: number): Array<[number, number]> {
  if (!(nSeg >= 1 && nLayer >= 1 && live >= 1)) throw new Error(`wavefront of ${nSeg} segments, ${nLayer} layers, ${live} live pairs`);
  const out: Array<[number, number]> = [];
  const next = new Array<number>(nSeg).fill(0);  // next layer of each segment
  while (out.length < nSeg * nLayer) {
    const was = next.slice();
    for (let s = 0; s < nSeg; s++) {
      const l = was[s];
      if (l >= nLayer || (s > 0 && was[s - 1] <= l) || (l === 0 && s >= live && was[s - live] < nLayer)) continue;
      out.push([s, l]);
      next[s]++;
    }
  }
  return out;
}
