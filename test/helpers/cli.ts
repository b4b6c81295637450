/** Runs the rwkvx command line as a user would (a child process), capturing its output. */
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { dirname, join } from 'node:path';

const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
const MAIN = join(ROOT, 'src', 'cli', 'main.ts');

export interface CliResult {
  code: number | null;
  stdout: string;
  stderr: string;
}

export function rwkvx(args: string[], input?: string | Buffer, timeoutMs = 120_000): CliResult {
  const r = spawnSync(process.execPath, ['--import', 'tsx', MAIN, ...args], {
    cwd: ROOT, input: input ?? '', timeout: timeoutMs, encoding: 'utf8', maxBuffer: 1 << 28,
    // the exactness checks are against the CPU float32 reference, also on machines with a GPU
    env: { ...process.env, NODE_OPTIONS: '', RWKVX_BACKEND: process.env.RWKVX_BACKEND ?? 'cpu' },
  });
  if (r.error) throw r.error;
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

/** A user error: non-zero exit, exactly one line on stderr matching `pattern`, no stack trace. */
export function expectUserError(r: CliResult, pattern: RegExp): void {
  const lines = r.stderr.trim().split('\n');
  if (r.code === 0) throw new Error(`expected failure, got exit 0; stderr: ${r.stderr}`);
  if (lines.length !== 1 || !/^rwkvx: error: /.test(lines[0])) throw new Error(`expected one error line, got:\n${r.stderr}`);
  if (!pattern.test(lines[0])) throw new Error(`error '${lines[0]}' does not match ${pattern}`);
  if (/\n\s+at /.test(r.stderr)) throw new Error('stack trace printed for a user error');
}
