import type { Command } from 'commander';
import { openCheckpoint } from '../../io/open.js';
import { inferConfig, validateTensors } from '../../model/weights.js';
import { describeLayout } from '../../model/config.js';

/** `rwkvx info MODEL`: what a checkpoint holds, without loading its weights. */
export function register(program: Command): void {
  program
    .command('info')
    .description('show architecture, dimensions, parameter count and dtype of a checkpoint')
    .argument('<model>', 'checkpoint (.pth or safetensors)')
    .option('--json', 'print as JSON')
    .action((path: string, o: { json?: boolean }) => {
      const src = openCheckpoint(path);
      try {
        const cfg = inferConfig(src);
        validateTensors(src, cfg);
        let params = 0;
        const dtypes = new Map<string, number>();
        for (const n of src.names()) {
          const info = src.info(n)!;
          const numel = info.shape.reduce((a, b) => a * b, 1);
          params += numel;
          dtypes.set(info.dtype, (dtypes.get(info.dtype) ?? 0) + numel);
        }
        const dtype = [...dtypes.entries()].sort((a, b) => b[1] - a[1]).map(([d]) => d).join('+');
        const layoutStr = describeLayout(cfg);
        const report = {
          file: path, format: src.format, arch: cfg.arch === 'rwkvx' ? 'RWKV-X' : 'RWKV-7',
          vocab: cfg.vocab, dim: cfg.dim, heads: cfg.heads, headSize: cfg.headSize,
          rwkvBlocks: cfg.nLayer, attentionBlocks: cfg.nAttn, ffn: cfg.ffn,
          lora: cfg.lora, params, dtype,
          ...(cfg.nAttn > 0 ? { chunk: cfg.chunk, topk: cfg.topk, layout: layoutStr, attnFfn: cfg.attnFfn } : {}),
        };
        if (o.json) {
          console.log(JSON.stringify(report, null, 2));
          return;
        }
        const lines = [
          ['file', `${path} (${src.format})`],
          ['architecture', report.arch],
          ['parameters', `${params.toLocaleString('en-US')} (${(params / 1e9).toFixed(3)}B)`],
          ['dtype', dtype],
          ['vocabulary', String(cfg.vocab)],
          ['width', `${cfg.dim} (${cfg.heads} heads × ${cfg.headSize})`],
          ['RWKV-7 blocks', String(cfg.nLayer)],
          ['channel-mix width', String(cfg.ffn)],
          ['LoRA ranks w/a/v/g', `${cfg.lora.w}/${cfg.lora.a}/${cfg.lora.v}/${cfg.lora.g}`],
        ];
        if (cfg.nAttn > 0) {
          lines.push(['attention blocks', `${cfg.nAttn} (one after every ${cfg.nLayer / cfg.nAttn} RWKV blocks)`]);
          lines.push(['layout', `${layoutStr}  (R = RWKV-7, A = attention)`]);
          lines.push(['chunk / top-k', `${cfg.chunk} / ${cfg.topk}${src.format === 'pth' ? ' (defaults; not stored in .pth)' : ''}`]);
        }
        for (const [k, v] of lines) console.log(`${k.padEnd(20)} ${v}`);
      } finally {
        src.close();
      }
    });
}
