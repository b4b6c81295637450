/** Parsing and checking of command-line values, with one-line errors. */
import { readFileSync } from 'node:fs';
import { fail } from '../util/errors.js';

export function int(name: string, min = -Infinity) {
  return (v: string): number => {
    const n = Number(v);
    if (!/^-?\d+$/.test(v.trim()) || !Number.isSafeInteger(n)) fail(`${name} must be an integer (got '${v}')`);
    if (n < min) fail(`${name} must be ≥ ${min} (got ${n})`);
    return n;
  };
}

export function float(name: string) {
  return (v: string): number => {
    const n = Number(v);
    if (v.trim() === '' || !Number.isFinite(n)) fail(`${name} must be a number (got '${v}')`);
    return n;
  };
}

export function collect(v: string, prev: string[] = []): string[] {
  return [...prev, v];
}

/** Reads a JSON array of token ids (TOKENS.json). */
export function readTokensFile(path: string): number[] {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (e) {
    fail(`cannot read tokens file ${path}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
  }
  let v: unknown;
  try { v = JSON.parse(text); } catch { fail(`${path} is not valid JSON (expected an array of token ids)`); }
  if (!Array.isArray(v)) fail(`${path} must hold a JSON array of token ids`);
  if (v.length === 0) fail(`${path} holds no tokens (empty array)`);
  v.forEach((id, i) => {
    if (typeof id !== 'number' || !Number.isInteger(id) || id < 0) fail(`${path}: element ${i} (${JSON.stringify(id)}) is not a non-negative integer token id`);
  });
  return v as number[];
}

/** Reads all of stdin as UTF-8 (synchronously: the CLI is a one-shot process). */
export function readStdin(): string {
  try {
    return readFileSync(0, 'utf8');
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'EAGAIN') fail('stdin is not readable (no input given)');
    throw e;
  }
}
