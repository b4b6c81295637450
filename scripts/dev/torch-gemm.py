# Development (device): PyTorch's time for the prefill GEMM shapes of bench/cuda.ts --gemm (same table),
# as a reference for what cuBLAS(Lt) reaches on this card.  python3 scripts/dev/torch-gemm.py [tokens]
import sys, torch
T = int(sys.argv[1]) if len(sys.argv) > 1 else 16384
C, F = 768, 3072
shapes = [('r/k/v', C, C, 'f32'), ('ffn key', C, F, 'bf16'), ('ffn value', F, C, 'f32'),
          ('decay LoRA 1', C, 64, 'f32'), ('decay LoRA 2', 64, C, 'f32'), ('value LoRA 2', 32, C, 'f32'), ('gate LoRA 2', 128, C, 'f32')]
print(f'torch {torch.__version__} GEMMs at {T} tokens on {torch.cuda.get_device_name()}')
print('| GEMM | K | N | out | ms | TFLOP/s |\n|---|---:|---:|---|---:|---:|')
for what, K, N, out in shapes:
    x = torch.zeros(T, K, dtype=torch.bfloat16, device='cuda'); w = torch.zeros(K, N, dtype=torch.bfloat16, device='cuda')
    od = torch.float32 if out == 'f32' else torch.bfloat16
    def run():
        try: return torch.mm(x, w, out_dtype=od)
        except Exception: return torch.mm(x, w)
    for _ in range(3): run()
    torch.cuda.synchronize()
    s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    s.record()
    for _ in range(20): run()
    e.record(); torch.cuda.synchronize()
    ms = s.elapsed_time(e) / 20
    print(f'| {what} | {K} | {N} | {out} | {ms:.3f} | {2 * T * K * N / ms / 1e9:.0f} |')
