import type { Command } from 'commander';
import { readFileSync } from 'node:fs';
import { loadTrainConfig, type TrainConfig } from '../../train/config.js';
import { LOG_FILE, train } from '../../train/trainer.js';
import { lossCurveSvg, type Point } from '../../train/plot.js';
import { writeFileAtomic } from '../../util/atomic.js';
import { fail } from '../../util/errors.js';
import { float, int } from '../args.js';

interface TrainFlags {
  config?: string;
  resume?: boolean;
  model?: string;
  data?: string;
  out?: string;
  ctx?: number;
  microBatch?: number;
  batch?: number;
  backend?: string;
  gradAccum?: number;
  steps?: number;
  lr?: number;
  lrFinal?: number;
  warmup?: number;
  schedule?: string;
  weightDecay?: number;
  gradClip?: number;
  freeze?: string;
  saveEvery?: number;
  seed?: number;
  chunk?: number;
  topk?: number;
  dim?: number;
  layers?: number;
  vocab?: number;
  l2wrap?: boolean;
  longce?: boolean;
  quiet?: boolean;
}

/** `rwkvx train` and `rwkvx plot-loss`. */
export function register(program: Command): void {
  program
    .command('train')
    .description('train an RWKV-7 / RWKV-X model on a binidx dataset (every config option is also a flag)')
    .option('--config <file>', 'JSON config (see configs/)')
    .option('--resume', `continue from OUT/${'train-state.safetensors'} exactly where it stopped`)
    .option('--model <path>', 'start from this checkpoint (else a fresh RWKV-7 of --dim/--layers/--vocab)')
    .option('--data <prefix>', 'binidx dataset prefix (see `rwkvx data prepare`)')
    .option('--out <dir>', 'output directory (model, training state, log)')
    .option('--ctx <n>', 'context length of a training window', int('--ctx', 1))
    .option('--micro-batch <n>', 'sequences per micro-batch (on cuda: one forward/backward of all of them)', int('--micro-batch', 1))
    .option('--batch <n>', 'same as --micro-batch', int('--batch', 1))
    .option('--grad-accum <n>', 'micro-batches per optimizer step', int('--grad-accum', 1))
    .option('--steps <n>', 'optimizer steps in total', int('--steps', 1))
    .option('--lr <x>', 'peak learning rate', float('--lr'))
    .option('--lr-final <x>', 'final learning rate of the cosine schedule', float('--lr-final'))
    .option('--warmup <n>', 'warm-up steps', int('--warmup', 0))
    .option('--schedule <kind>', 'cosine or constant')
    .option('--weight-decay <x>', 'AdamW decay on 2-D weights', float('--weight-decay'))
    .option('--grad-clip <x>', 'global gradient-norm clip (0 = off)', float('--grad-clip'))
    .option('--freeze <what>', "'rwkv' trains only the attention blocks (stage 1); 'none' trains all")
    .option('--save-every <n>', 'checkpoint interval in steps', int('--save-every', 1))
    .option('--seed <n>', 'seed of a fresh initialisation', int('--seed'))
    .option('--chunk <n>', 'attention chunk size', int('--chunk'))
    .option('--topk <n>', 'attention top-k', int('--topk'))
    .option('--dim <n>', 'fresh model width', int('--dim', 64))
    .option('--layers <n>', 'fresh model RWKV-7 blocks', int('--layers', 1))
    .option('--vocab <n>', 'fresh model vocabulary', int('--vocab', 2))
    .option('--no-l2wrap', 'disable the L2Wrap logit regulariser')
    .option('--longce', 'weight token losses by LongCE (long-context gain; window 8000, cap 10 unless the config says otherwise)')
    .option('--backend <name>', "cpu (default: the float32 reference), cuda (bf16 GEMMs, fp32 master weights), or auto (cuda when a GPU is usable); $RWKVX_BACKEND is not used here")
    .option('--quiet', 'no progress line')
    .action(async (o: TrainFlags) => {
      if (o.batch !== undefined && o.microBatch !== undefined && o.batch !== o.microBatch) fail('--batch and --micro-batch are the same option; give one');
      const flags: Partial<TrainConfig> = {
        model: o.model, data: o.data, out: o.out, ctx: o.ctx, microBatch: o.microBatch ?? o.batch, gradAccum: o.gradAccum, steps: o.steps,
        lr: o.lr, lrFinal: o.lrFinal, warmupSteps: o.warmup, schedule: o.schedule as TrainConfig['schedule'],
        weightDecay: o.weightDecay, gradClip: o.gradClip, freeze: o.freeze as TrainConfig['freeze'], saveEvery: o.saveEvery,
        seed: o.seed, chunk: o.chunk, topk: o.topk, l2wrap: o.l2wrap === false ? false : undefined, longce: o.longce,
        backend: o.backend as TrainConfig['backend'],
      };
      const init = { ...(o.dim ? { dim: o.dim } : {}), ...(o.layers ? { layers: o.layers } : {}), ...(o.vocab ? { vocab: o.vocab } : {}) };
      const c = loadTrainConfig(o.config, { ...flags, init: init as TrainConfig['init'] });
      const control = { stop: false };
      const onSig = () => {
        if (control.stop) process.exit(130);
        control.stop = true;
        process.stderr.write('\nrwkvx: stopping after this step and saving (Ctrl-C again to abort without saving)\n');
      };
      process.on('SIGINT', onSig);
      const tty = process.stderr.isTTY && !o.quiet;
      const r = await train(c, Boolean(o.resume), {
        control,
        onStart: (i) => { if (!o.quiet) process.stderr.write(`training on ${i.backend}${i.startStep > 0 ? `, resuming at step ${i.startStep}` : ''}\n`); },
        onStep: (s) => {
          const line = `step ${s.step}/${c.steps}  loss ${s.loss.toFixed(4)}  lr ${s.lr.toExponential(2)}  |g| ${s.gradNorm.toFixed(3)}  ${s.tokensPerSec.toFixed(0)} tok/s  ${s.elapsedSec.toFixed(0)}s`;
          if (tty) process.stderr.write(`\r${line}   `);
          else if (!o.quiet) process.stderr.write(line + '\n');
        },
      });
      process.off('SIGINT', onSig);
      if (tty) process.stderr.write('\n');
      process.stderr.write(`${r.stopped ? 'stopped' : 'finished'} at step ${r.step}; model in ${c.out}/model.safetensors\n`);
    });

  program
    .command('plot-loss')
    .description(`draw the loss curve of a training log (${LOG_FILE}) as SVG`)
    .argument('<log>', 'log.jsonl written by `rwkvx train`')
    .requiredOption('--out <file>', 'output .svg')
    .option('--title <text>', 'chart title', 'training loss')
    .action((log: string, o: { out: string; title: string }) => {
      let text: string;
      try { text = readFileSync(log, 'utf8'); } catch (e) { fail(`cannot read ${log}: ${(e as NodeJS.ErrnoException).code}`); }
      const pts: Point[] = [];
      text.split('\n').forEach((line, i) => {
        if (!line.trim()) return;
        let r: { step?: unknown; loss?: unknown };
        try { r = JSON.parse(line); } catch { fail(`${log}:${i + 1}: not valid JSON`); }
        if (typeof r.step !== 'number' || typeof r.loss !== 'number') fail(`${log}:${i + 1}: no numeric step and loss`);
        pts.push({ step: r.step, loss: r.loss });
      });
      if (pts.length < 2) fail(`${log} has ${pts.length} points; need at least 2 to draw a curve`);
      if (!/\.svg$/i.test(o.out)) fail('--out must end in .svg');
      writeFileAtomic(o.out, lossCurveSvg(pts, o.title));
      console.log(`${o.out}: ${pts.length} points, loss ${pts[0].loss.toFixed(3)} → ${pts[pts.length - 1].loss.toFixed(3)}`);
    });
}
