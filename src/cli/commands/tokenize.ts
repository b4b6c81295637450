import type { Command } from 'commander';
import { WorldTokenizer } from '../../tokenizer/index.js';
import { fail } from '../../util/errors.js';
import { readStdin } from '../args.js';

function jsonLines(text: string): string[] {
  const lines = text.split('\n');
  if (lines.length && lines[lines.length - 1] === '') lines.pop();
  return lines;
}

/** `rwkvx tokenize` / `rwkvx detokenize`: stdin → stdout, whole text or one JSON value per line. */
export function register(program: Command): void {
  program
    .command('tokenize')
    .description('text on stdin → JSON array of token ids on stdout')
    .option('--jsonl', 'each input line is a JSON string; each output line its JSON array of ids')
    .action((o: { jsonl?: boolean }) => {
      const tok = WorldTokenizer.load();
      const input = readStdin();
      if (!o.jsonl) {
        process.stdout.write(JSON.stringify(tok.encode(input)) + '\n');
        return;
      }
      const out: string[] = [];
      jsonLines(input).forEach((line, i) => {
        let s: unknown;
        try { s = JSON.parse(line); } catch { fail(`line ${i + 1} is not valid JSON`); }
        if (typeof s !== 'string') fail(`line ${i + 1} is not a JSON string`);
        out.push(JSON.stringify(tok.encode(s)));
      });
      process.stdout.write(out.map((l) => l + '\n').join(''));
    });

  program
    .command('detokenize')
    .description('JSON array of token ids on stdin → text on stdout')
    .option('--jsonl', 'each input line is a JSON array of ids; each output line its text as a JSON string')
    .action((o: { jsonl?: boolean }) => {
      const tok = WorldTokenizer.load();
      const input = readStdin();
      const parse = (s: string, where: string): number[] => {
        let v: unknown;
        try { v = JSON.parse(s); } catch { fail(`${where} is not valid JSON (expected an array of token ids)`); }
        if (!Array.isArray(v) || v.some((x) => typeof x !== 'number' || !Number.isInteger(x))) fail(`${where} must be a JSON array of integer token ids`);
        return v as number[];
      };
      if (!o.jsonl) {
        if (input.trim() === '') fail('no input on stdin (expected a JSON array of token ids)');
        process.stdout.write(tok.decode(parse(input, 'input')));
        return;
      }
      const out = jsonLines(input).map((line, i) => JSON.stringify(tok.decode(parse(line, `line ${i + 1}`))) + '\n');
      process.stdout.write(out.join(''));
    });
}
