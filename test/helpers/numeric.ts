/** Small numeric helpers the test files share: a seeded generator and a relative error. */

/** mulberry32: a seeded generator of numbers uniform in [0, 1). */
export function rng(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let x = Math.imul(s ^ (s >>> 15), 1 | s);
    x = (x + Math.imul(x ^ (x >>> 7), 61 | x)) ^ x;
    return ((x ^ (x >>> 14)) >>> 0) / 2 ** 32;
  };
}

/** max |a − b| / max |b| over the elements (a NaN difference counts as infinite; absolute where b is all 0). */
export function rel(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let d = 0, m = 0;
  for (let i = 0; i < b.length; i++) {
    const x = Math.abs(a[i] - b[i]);
    if (!(x <= d)) d = Number.isNaN(x) ? Infinity : x;
    m = Math.max(m, Math.abs(b[i]));
  }
  return m > 0 ? d / m : d;
}
