/** Draws a training log's loss curve as a self-contained SVG (no plotting dependency). */
export interface Point { step: number; loss: number }

function niceTicks(lo: number, hi: number, n = 5): number[] {
  const span = hi - lo || 1;
  const raw = span / n;
  const mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 5, 10].map((m) => m * mag).find((s) => span / s <= n) ?? 10 * mag;
  const out: number[] = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + 1e-9; v += step) out.push(Number(v.toPrecision(12)));
  return out;
}

/** Raw losses plus a moving average, on linear axes. */
export function lossCurveSvg(points: Point[], title: string): string {
  const W = 800, H = 480, L = 70, R = 20, T = 40, B = 50;
  const xs = points.map((p) => p.step), ys = points.map((p) => p.loss);
  const x0 = Math.min(...xs), x1 = Math.max(...xs);
  let y0 = Math.min(...ys), y1 = Math.max(...ys);
  if (y0 === y1) { y0 -= 0.5; y1 += 0.5; }
  const sx = (x: number) => L + ((x - x0) / (x1 - x0 || 1)) * (W - L - R);
  const sy = (y: number) => T + (1 - (y - y0) / (y1 - y0)) * (H - T - B);
  const path = (pts: Point[]) => pts.map((p, i) => `${i ? 'L' : 'M'}${sx(p.step).toFixed(1)},${sy(p.loss).toFixed(1)}`).join(' ');
  // centred moving average: follows the curve without the lag of an exponential average
  const half = Math.max(1, Math.round(points.length / 80));
  const smooth = points.map((p, i) => {
    const lo = Math.max(0, i - half), hi = Math.min(points.length, i + half + 1);
    let s = 0;
    for (let j = lo; j < hi; j++) s += ys[j];
    return { step: p.step, loss: s / (hi - lo) };
  });
  const esc = (s: string) => s.replace(/&/g, '&amp;').replace(/</g, '&lt;');
  const parts: string[] = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" font-family="sans-serif" font-size="12">`,
    `<rect width="${W}" height="${H}" fill="white"/>`,
    `<text x="${W / 2}" y="24" text-anchor="middle" font-size="16">${esc(title)}</text>`,
  ];
  for (const v of niceTicks(y0, y1)) {
    parts.push(`<line x1="${L}" x2="${W - R}" y1="${sy(v)}" y2="${sy(v)}" stroke="#ddd"/>`, `<text x="${L - 6}" y="${sy(v) + 4}" text-anchor="end">${v}</text>`);
  }
  for (const v of niceTicks(x0, x1)) {
    parts.push(`<line x1="${sx(v)}" x2="${sx(v)}" y1="${T}" y2="${H - B}" stroke="#eee"/>`, `<text x="${sx(v)}" y="${H - B + 18}" text-anchor="middle">${v}</text>`);
  }
  parts.push(
    `<rect x="${L}" y="${T}" width="${W - L - R}" height="${H - T - B}" fill="none" stroke="#333"/>`,
    `<path d="${path(points)}" fill="none" stroke="#9bc1e6" stroke-width="1"/>`,
    `<path d="${path(smooth)}" fill="none" stroke="#1f5fa6" stroke-width="2"/>`,
    `<text x="${(L + W - R) / 2}" y="${H - 10}" text-anchor="middle">step</text>`,
    `<text x="18" y="${(T + H - B) / 2}" text-anchor="middle" transform="rotate(-90 18 ${(T + H - B) / 2})">loss</text>`,
    '</svg>',
  );
  return parts.join('\n');
}
