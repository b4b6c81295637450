/**
 * A one-line progress indicator on stderr for long work (only on a terminal, so logs and pipes
 * stay clean).
 */
export class Progress {
  private n = 0;
  private last = 0;
  private readonly t0 = performance.now();
  private readonly tty = Boolean(process.stderr.isTTY);

  constructor(private readonly label: string, private readonly total: number) {}

  tick(by = 1): void {
    this.n += by;
    const now = performance.now();
    if (!this.tty || now - this.last < 100) return;
    this.last = now;
    const pct = this.total > 0 ? Math.floor((100 * this.n) / this.total) : 0;
    const width = 30, full = Math.round((width * pct) / 100);
    process.stderr.write(`\r${this.label} [${'#'.repeat(full)}${'.'.repeat(width - full)}] ${pct}% (${this.n}/${this.total}) ${((now - this.t0) / 1000).toFixed(1)}s`);
  }

  done(): void {
    if (this.tty) process.stderr.write(`\r${this.label}: done in ${((performance.now() - this.t0) / 1000).toFixed(1)}s${' '.repeat(30)}\n`);
  }
}
