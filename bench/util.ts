/** Small helpers the benchmark scripts share: flags, medians, reproducible token streams. */

/** The value after `--name` on the command line, else `def`. */
export function arg(name: string, def: string): string {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 && i + 1 < process.argv.length ? process.argv[i + 1] : def;
}

export function median(a: number[]): number {
  const s = [...a].sort((x, y) => x - y);
  return s[Math.floor(s.length / 2)];
}

/** n token ids in [0, V) from a linear congruential generator seeded with `seed`. */
export function randomTokens(n: number, V: number, seed: number): Int32Array {
  const out = new Int32Array(n);
  let x = seed >>> 0;
  for (let i = 0; i < n; i++) { x = (Math.imul(x, 1664525) + 1013904223) >>> 0; out[i] = x % V; }
  return out;
}

/** Exits with one line (status 1) where there is no usable CUDA device: GPU benchmarks need one. */
export async function requireCuda(): Promise<void> {
  const { cudaAvailable } = await import('../src/backend/cuda/driver.js');
  const a = cudaAvailable();
  if (!a.ok) {
    process.stderr.write(`${process.argv[1]?.split('/').pop() ?? 'bench'}: ${a.reason}\n`);
    process.exit(1);
  }
}
