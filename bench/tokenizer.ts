/**
 * Tokenizer throughput: `npm run bench:tokenizer`.
 * Builds a few MB of English from the licence texts found on this machine and a generated CJK/emoji
 * mix, then times encode and decode (median of several runs after a warm-up) and prints a table.
 */
import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { cpus, loadavg, platform, release } from 'node:os';
import { join } from 'node:path';
import { WorldTokenizer } from '../src/tokenizer/index.js';

const TARGET_BYTES = 8 << 20;
const RUNS = 7;

function collectFiles(dir: string, accept: (name: string) => boolean, out: string[]): void {
  if (!existsSync(dir)) return;
  for (const entry of readdirSync(dir).sort()) {
    const path = join(dir, entry);
    let st;
    try {
      st = statSync(path);
    } catch {
      continue;
    }
    if (st.isDirectory()) collectFiles(path, accept, out);
    else if (st.isFile() && accept(entry)) out.push(path);
  }
}

function englishCorpus(): string {
  const files: string[] = [];
  collectFiles('/usr/share/common-licenses', () => true, files);
  collectFiles('/usr/share/doc', (name) => name === 'copyright', files);
  const parts: string[] = [];
  let bytes = 0;
  for (const f of files) {
    if (bytes >= TARGET_BYTES) break;
    const text = readFileSync(f, 'utf8');
    parts.push(text);
    bytes += Buffer.byteLength(text);
  }
  if (bytes === 0) {
    // No licence texts on this machine: fall back to a repeated paragraph so the bench still runs.
    const p = 'The quick brown fox jumps over the lazy dog while the tokenizer counts bytes per second.\n';
    return p.repeat(Math.ceil(TARGET_BYTES / p.length));
  }
  let text = parts.join('\n');
  while (Buffer.byteLength(text) < TARGET_BYTES) text += '\n' + text;
  return text;
}

/** Deterministic so that runs on different days compare. */
function mulberry32(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function mixedCorpus(): string {
  const sentences = [
    '今天天气很好，我们一起去公园散步吧。',
    '这个模型可以在普通电脑上运行，速度也不错。',
    '人工智能正在改变我们的生活和工作方式。',
    '東京の春は桜がとてもきれいです。',
    'プログラムを書くのは楽しいですね。',
    '오늘은 날씨가 정말 좋네요.',
    'Привет, как дела? Всё хорошо.',
    'The model said: 你好！👋 Let us begin. 🚀🔥',
    'naïve café — résumé ✓ 👩‍👩‍👧 ½ °C',
  ];
  const fixtures = JSON.parse(
    readFileSync(new URL('../test/fixtures/tokenizer.json', import.meta.url), 'utf8'),
  ) as { cases: { text: string }[] };
  const pieces = [...sentences, ...fixtures.cases.map((c) => c.text)];
  const emoji = ['🙂', '😂', '🎉', '❤️', '👍', '🤖', '🌏', '✨'];
  const rand = mulberry32(20261128);
  const parts: string[] = [];
  let bytes = 0;
  while (bytes < TARGET_BYTES / 2) {
    const r = rand();
    const s = r < 0.85 ? pieces[Math.floor(rand() * pieces.length)]! : emoji[Math.floor(rand() * emoji.length)]!;
    parts.push(s);
    bytes += Buffer.byteLength(s);
  }
  return parts.join('');
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)]!;
}

function time(fn: () => void): number {
  fn(); // warm-up: lets the JIT compile the hot loop before timing
  const ms: number[] = [];
  for (let i = 0; i < RUNS; i++) {
    const t0 = performance.now();
    fn();
    ms.push(performance.now() - t0);
  }
  return median(ms) / 1000;
}

interface Row {
  name: string;
  mb: number;
  encMBs: number;
  encTokS: number;
  decMBs: number;
  charsPerToken: number;
  bytesPerToken: number;
}

/** Encodes and decodes each piece with its own call, so short pieces show the per-call overhead. */
function measure(tok: WorldTokenizer, name: string, pieces: string[]): Row {
  const text = pieces.join('');
  const bytes = Buffer.byteLength(text);
  let ids: number[][] = [];
  const enc = time(() => {
    ids = pieces.map((p) => tok.encode(p));
  });
  let decoded: string[] = [];
  const dec = time(() => {
    decoded = ids.map((x) => tok.decode(x));
  });
  if (decoded.join('') !== text) throw new Error(`${name}: decode(encode(text)) differs from the text`);
  const tokens = ids.reduce((n, x) => n + x.length, 0);
  const chars = [...text].length;
  return {
    name,
    mb: bytes / 1e6,
    encMBs: bytes / 1e6 / enc,
    encTokS: tokens / enc,
    decMBs: bytes / 1e6 / dec,
    charsPerToken: chars / tokens,
    bytesPerToken: bytes / tokens,
  };
}

const t0 = performance.now();
const tok = WorldTokenizer.load();
const loadMs = performance.now() - t0;

const english = englishCorpus();
const mixed = mixedCorpus();
const rows = [
  measure(tok, 'English (licence texts)', [english]),
  measure(tok, 'Mixed CJK/emoji', [mixed]),
  measure(tok, 'Both concatenated', [english + mixed]),
  measure(tok, 'English, one call per line', english.split(/(?<=\n)/)),
];

const cpu = cpus();
console.log(`machine: ${cpu[0]?.model ?? 'unknown CPU'}, ${cpu.length} cores, ${platform()} ${release()}, Node ${process.version}`);
console.log(`vocabulary load + trie build: ${loadMs.toFixed(0)} ms (first load; later loads are cached)`);
// Other work on the machine slows every figure; the load average says how busy it was.
console.log(`load average at the end: ${loadavg().map((x) => x.toFixed(2)).join(' ')}; median of ${RUNS} runs each`);
console.log('');
console.log('| text | MB | encode MB/s | encode Mtok/s | decode MB/s | chars/token | bytes/token |');
console.log('|---|---:|---:|---:|---:|---:|---:|');
for (const r of rows) {
  console.log(
    `| ${r.name} | ${r.mb.toFixed(2)} | ${r.encMBs.toFixed(1)} | ${(r.encTokS / 1e6).toFixed(2)} | ` +
      `${r.decMBs.toFixed(1)} | ${r.charsPerToken.toFixed(2)} | ${r.bytesPerToken.toFixed(2)} |`,
  );
}
