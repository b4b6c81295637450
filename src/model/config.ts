/** Model dimensions and the hybrid layout (SPEC §1–3). Every number comes from tensor shapes. */

export type AttentionSemantics = 'moba' | 'official';

export interface ModelConfig {
  /** 'rwkv7': RWKV-7 alone; 'rwkvx': RWKV-7 blocks interleaved with sparse-attention blocks. */
  arch: 'rwkv7' | 'rwkvx';
  vocab: number;
  /** Model width C. */
  dim: number;
  /** Heads H and head size N (H·N = C). */
  heads: number;
  headSize: number;
  /** Number of RWKV-7 blocks L. */
  nLayer: number;
  /** Channel-mix hidden width F. */
  ffn: number;
  /** LoRA ranks of the time-mix (w, a, v, g). */
  lora: { w: number; a: number; v: number; g: number };
  /** Number of attention blocks (0 for RWKV-7). */
  nAttn: number;
  /** Hidden width of the attention blocks' channel-mix. */
  attnFfn: number;
  /** Attention chunk size B and top-k (chunks attended per query, own chunk included). */
  chunk: number;
  topk: number;
}

export const DEFAULT_CHUNK = 2048;
export const DEFAULT_TOPK = 3;

/** One entry per block in execution order. */
export type LayoutEntry = { kind: 'rwkv'; index: number } | { kind: 'attn'; index: number };

/** [RWKV×interval, ATT, RWKV×interval, ATT, …] with interval = L / nAttn (SPEC §3 "Layout"). */
export function layout(cfg: Pick<ModelConfig, 'nLayer' | 'nAttn'>): LayoutEntry[] {
  const out: LayoutEntry[] = [];
  const interval = cfg.nAttn > 0 ? cfg.nLayer / cfg.nAttn : Infinity;
  let a = 0;
  for (let i = 0; i < cfg.nLayer; i++) {
    out.push({ kind: 'rwkv', index: i });
    if (cfg.nAttn > 0 && (i + 1) % interval === 0) out.push({ kind: 'attn', index: a++ });
  }
  return out;
}

/** Weight count of the whole model, from the config. */
export function parameterCount(cfg: ModelConfig): number {
  const C = cfg.dim, { w, a, v, g } = cfg.lora;
  const rwkvBlock = 4 * C * C + 2 * C * cfg.ffn + 2 * C * (w + a + v + g) + 13 * C + cfg.heads * cfg.headSize + 4 * C;
  const attnBlock = 4 * C * C + 2 * C * cfg.attnFfn + C + 4 * C;
  return 2 * cfg.vocab * C + 4 * C + cfg.nLayer * rwkvBlock + cfg.nAttn * attnBlock;
}

export function describeLayout(cfg: ModelConfig): string {
  return layout(cfg).map((e) => (e.kind === 'rwkv' ? 'R' : 'A')).join('');
}
