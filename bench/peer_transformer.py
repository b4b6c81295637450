"""Dense Transformer peer of the same size as RWKV-X 0.22B, in PyTorch, for bench/cuda.ts.

16 pre-LN blocks of causal multi-head attention (12 heads of 64, no positional encoding needed for
timing) + 4C GELU MLP at C = 768, vocabulary 65536, bf16, F.scaled_dot_product_attention
on the cuDNN backend. Prefill: one forward of N tokens, logits of the last token (CUDA events,
median of 3). Decode: one token against a KV cache of N (static tensors), median of --steps, eager.
Peak memory: torch.cuda.max_memory_allocated over the run.
  python3 bench/peer_transformer.py --lengths 4096,16384,65536,131072 --decode 4096,65536 --json out.json
"""
import argparse, json
import torch
import torch.nn.functional as F
from torch.nn.attention import sdpa_kernel, SDPBackend

p = argparse.ArgumentParser()
p.add_argument('--lengths', default='4096,16384,65536,131072')
p.add_argument('--decode', default='4096,65536')
p.add_argument('--steps', type=int, default=32)
p.add_argument('--json', default='')
a = p.parse_args()
L, C, H, V = 16, 768, 12, 65536
dev, dt = 'cuda', torch.bfloat16
torch.manual_seed(0)
def w(*s, scale=None):
    return (torch.randn(*s, device=dev, dtype=torch.float32) * (scale or s[-1] ** -0.5)).to(dt)
emb = w(V, C, scale=1.0)
blocks = [dict(ln1=torch.ones(C, device=dev, dtype=dt), ln2=torch.ones(C, device=dev, dtype=dt),
               qkv=w(3 * C, C), o=w(C, C), up=w(4 * C, C), down=w(C, 4 * C)) for _ in range(L)]
lnf = torch.ones(C, device=dev, dtype=dt)
head = w(V, C)

@torch.inference_mode()
def prefill(tok):
    x = emb[tok]
    T = tok.shape[0]
    for b in blocks:
        h = F.layer_norm(x, (C,), b['ln1'])
        q, k, v = F.linear(h, b['qkv']).view(T, 3, H, 64).permute(1, 2, 0, 3).unbind(0)
        with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
            y = F.scaled_dot_product_attention(q[None], k[None], v[None], is_causal=True)[0]
        x = x + F.linear(y.permute(1, 0, 2).reshape(T, C), b['o'])
        h = F.layer_norm(x, (C,), b['ln2'])
        x = x + F.linear(F.gelu(F.linear(h, b['up'])), b['down'])
    return F.linear(F.layer_norm(x[-1:], (C,), lnf), head).float()

@torch.inference_mode()
def decode(tok, kc, vc):
    x = emb[tok]
    for b, kk, vv in zip(blocks, kc, vc):
        h = F.layer_norm(x, (C,), b['ln1'])
        q, k, v = F.linear(h, b['qkv']).view(1, 3, H, 64).permute(1, 2, 0, 3).unbind(0)
        with sdpa_kernel([SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION]):
            y = F.scaled_dot_product_attention(q[None], kk[None], vv[None])[0]
        x = x + F.linear(y.permute(1, 0, 2).reshape(1, C), b['o'])
        h = F.layer_norm(x, (C,), b['ln2'])
        x = x + F.linear(F.gelu(F.linear(h, b['up'])), b['down'])
    return F.linear(F.layer_norm(x, (C,), lnf), head).float()

def timed(fn, reps):
    ts = []
    for _ in range(reps):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record(); out = fn(); e.record(); torch.cuda.synchronize(); out.cpu()
        ts.append(s.elapsed_time(e))
    ts.sort()
    return ts[len(ts) // 2]

rows = []
prefill(torch.randint(0, V, (4096,), device=dev)); torch.cuda.synchronize()
for n in [int(x) for x in a.lengths.split(',')]:
    torch.cuda.empty_cache(); torch.cuda.reset_peak_memory_stats()
    tok = torch.randint(0, V, (n,), device=dev)
    try:
        pre = timed(lambda: prefill(tok), 1 if n >= 524288 else 3)  # one run at ≥512K (a minute each)
    except torch.OutOfMemoryError:
        print(json.dumps(dict(model='PyTorch Transformer (peer)', tokens=n, error='OOM'))); continue
    dec = None
    if str(n) in a.decode.split(','):
        try:
            kc = [torch.randn(H, n, 64, device=dev, dtype=dt) for _ in range(L)]
            vc = [torch.randn(H, n, 64, device=dev, dtype=dt) for _ in range(L)]
            t1 = torch.randint(0, V, (1,), device=dev)
            decode(t1, kc, vc)
            dec = timed(lambda: decode(t1, kc, vc), a.steps)
            del kc, vc
        except torch.OutOfMemoryError:
            dec = 'OOM'
    r = dict(model='PyTorch Transformer (peer)', tokens=n, prefill_ms=pre, prefill_tok_s=n / pre * 1000, decode_ms=dec,
             peak_gib=torch.cuda.max_memory_allocated() / 2 ** 30)
    rows.append(r); print(json.dumps(r), flush=True)
if a.json:
    json.dump(rows, open(a.json, 'w'), indent=1)
print(f"torch {torch.__version__}, {torch.cuda.get_device_name()}, cuDNN {torch.backends.cudnn.version()}")
