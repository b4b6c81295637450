// RWKV-X training kernels: forward-with-saved-activations and backward of every non-GEMM op
// (compiled at run time by NVRTC; shared helpers in common.cuh). GEMMs are cuBLAS (src/backend/cuda/train/grad.ts).
// Layout: activations row-major [R, C] float32 unless named ...B (GEMM inputs, type `gin`). A batch of
// Bn sequences of T tokens is R = Bn·T rows, sequence b at rows [b·T, (b+1)·T): row-wise kernels see only
// R; the kernels that look along time (token shift, WKV, attention) take T and treat each sequence alone.
// Head size N = 64; a "head warp" handles one (token, head) with lane j owning columns j and j + 32.
// Gradients of parameters ACCUMULATE (+=) into their buffers (zeroed by the host once per step).
// GEMM inputs are bf16; compiled with -DTR_FP32 they are float32 instead (a test mode that leaves only
// fp32 rounding between the GPU and the CPU reference).

#include "common.cuh"

typedef long long i64;
#ifdef TR_FP32
typedef float gin;
__device__ __forceinline__ gin tog(float f) { return f; }
#else
typedef bf16 gin;
__device__ __forceinline__ gin tog(float f) { return f2bf(f); }
#endif

// ---------------------------------------------------------------------------------------------
// Generic

// The element-wise passes below take 4 elements per step with 16-byte loads where the pointers allow (a
// scalar loop otherwise, and for the tail): with a 4-byte load per step tr_f2bf and tr_act ran at 51–66% of
// the DRAM's bandwidth (Nsight Compute, H100). The arithmetic per element is the same, so the same bits.
__device__ __forceinline__ bool al16(const void* p) { return ((unsigned long long)p & 15) == 0; }
__device__ __forceinline__ bool gin4ok(const gin* p) { return ((unsigned long long)p & (4 * sizeof(gin) - 1)) == 0; }
// four GEMM-input values at p (8-byte aligned bf16, or 16-byte aligned float32 in the TR_FP32 build)
__device__ __forceinline__ void st4g(gin* p, float a, float b, float c, float d) {
#ifdef TR_FP32
  *(float4*)p = make_float4(a, b, c, d);
#else
  u32* q = (u32*)p;
  q[0] = (u32)f2bf(a) | ((u32)f2bf(b) << 16);
  q[1] = (u32)f2bf(c) | ((u32)f2bf(d) << 16);
#endif
}
template <class F> __device__ __forceinline__ float4 map4(float4 v, F f) { return make_float4(f(v.x), f(v.y), f(v.z), f(v.w)); }

extern "C" __global__ void tr_f2bf(gin* out, const float* in, int n) {
  const int step = gridDim.x * blockDim.x, tid = blockIdx.x * blockDim.x + threadIdx.x;
  int done = 0;
  if (al16(in) && gin4ok(out)) {
    done = n & ~3;
    for (int i = tid; 4 * i < done; i += step) { const float4 v = ((const float4*)in)[i]; st4g(out + 4 * i, v.x, v.y, v.z, v.w); }
  }
  for (int i = done + tid; i < n; i += step) out[i] = tog(in[i]);
}

// out[i] += Σ_t f(t, i) over R rows of C: mode 0 x; 1 x·y; 2 x[t]·(y[t−1] − y[t]) (y[−1] = 0 at each
// sequence start: the token-shift delta). Block (32, 8); grid (⌈C/32⌉, row splits); one atomic per column per block.
extern "C" __global__ void tr_colsum(float* out, const float* x, const float* y, int R, int C, int T, int mode) {
  __shared__ float sh[8][33];
  int i = blockIdx.x * 32 + threadIdx.x;
  float s = 0.f;
  if (i < C) {
    for (int t = blockIdx.y * 8 + threadIdx.y; t < R; t += gridDim.y * 8) {
      i64 o = (i64)t * C + i;
      float v = x[o];
      if (mode == 1) v *= y[o];
      else if (mode == 2) v *= (t % T > 0 ? y[o - C] : 0.f) - y[o];
      s += v;
    }
  }
  sh[threadIdx.y][threadIdx.x] = s;
  __syncthreads();
  if (threadIdx.y == 0 && i < C) {
    float a = 0.f;
    for (int r = 0; r < 8; r++) a += sh[r][threadIdx.x];
    atomicAdd(out + i, a);
  }
}

// Fused column sums: a block's rows are walked by its 8 warps (lane owning columns c and c + 32 of a head),
// each lane keeping its partial sums in registers; colsum_flush adds them into out (when not null) once per
// block. Replaces a separate tr_colsum pass, and the [R, C] array it would read, per parameter vector.
#define CS_ROWS 64
__device__ __forceinline__ void colsum_flush(float* out, const float* part, float* sh, int h) {
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  sh[warp * 64 + lane] = part[0];
  sh[warp * 64 + lane + 32] = part[1];
  __syncthreads();
  if (out && threadIdx.x < 64) {
    float s = 0.f;
    for (int w = 0; w < 8; w++) s += sh[w * 64 + threadIdx.x];
    atomicAdd(out + h * 64 + threadIdx.x, s);
  }
  __syncthreads();
}

// Σ g² over [lo, hi) into *out (double)
extern "C" __global__ void tr_sumsq(double* out, const float* g, int lo, int hi) {
  __shared__ float sh[32];
  float s = 0.f;
  for (int i = lo + blockIdx.x * blockDim.x + threadIdx.x; i < hi; i += gridDim.x * blockDim.x) s += g[i] * g[i];
  s = block_sum(s, sh);
  if (threadIdx.x == 0) atomicAdd(out, (double)s);
}

// AdamW over [lo, hi) of the flat parameter buffer, with the global-norm clip folded in. Segment s covers
// [segStart[s], segStart[s+1]) with learning-rate multiplier segLr[s] and decay flag segDecay[s].
// The GEMM copy is refreshed for every updated element. A non-finite gradient norm changes nothing (the host
// then stops with the last good checkpoint).
extern "C" __global__ void tr_adamw(float* p, gin* pb, float* m, float* v, const float* g, const int* segStart,
                                    const float* segLr, const int* segDecay, int nSeg, int lo, int hi, float lr, float b1,
                                    float b2, float eps, float wd, float c1, float c2, const double* sumsq, float maxNorm) {
  double ss = *sumsq;
  if (!(ss <= 1e300)) return;
  float norm = (float)sqrt(ss);
  float cs = (maxNorm > 0.f && norm > maxNorm) ? maxNorm / (norm + 1e-6f) : 1.f;
  for (int i = lo + blockIdx.x * blockDim.x + threadIdx.x; i < hi; i += gridDim.x * blockDim.x) {
    int a = 0, b = nSeg;  // largest s with segStart[s] <= i
    while (b - a > 1) { int c = (a + b) >> 1; if (segStart[c] <= i) a = c; else b = c; }
    float plr = lr * segLr[a];
    float decay = segDecay[a] ? 1.f - plr * wd : 1.f;
    float gi = g[i] * cs;
    float mi = b1 * m[i] + (1.f - b1) * gi;
    float vi = b2 * v[i] + (1.f - b2) * gi * gi;
    m[i] = mi; v[i] = vi;
    float w = p[i] * decay - (plr * (mi / c1)) / (sqrtf(vi / c2) + eps);
    p[i] = w;
    pb[i] = tog(w);
  }
}

// ---------------------------------------------------------------------------------------------
// Embedding, LayerNorm, token shift

extern "C" __global__ void tr_gather(float* out, const float* emb, const int* ids, int C) {
  i64 t = blockIdx.x;
  const float* e = emb + (i64)ids[t] * C;
  for (int i = threadIdx.x; i < C; i += blockDim.x) out[t * C + i] = e[i];
}
extern "C" __global__ void tr_scatter_add(float* demb, const float* de, const int* ids, int C) {
  i64 t = blockIdx.x;
  float* e = demb + (i64)ids[t] * C;
  for (int i = threadIdx.x; i < C; i += blockDim.x) atomicAdd(e + i, de[t * C + i]);
}

// The LayerNorm kernels' per-element arithmetic, each operation rounded as written (the _rn intrinsics
// and fmaf are never contracted or split by NVVM or ptxas). Why: the block- and warp-per-row kernels
// must give the same bits, and with plain a * b - c the compiler fused products differently in each
// (a GPU run of 2026-12-07 moved bf16 gradients by 2e-3 where the emulator, which never fuses, saw none).
__device__ __forceinline__ float ln_xhat(float x, float mean, float inv) { return __fmul_rn(__fsub_rn(x, mean), inv); }
__device__ __forceinline__ float ln_y(float x, float mean, float inv, float w, float b) { return fmaf(ln_xhat(x, mean, inv), w, b); }
// the backward's row sums: m1 += dout⊙w, m2 += dout⊙w⊙x̂
__device__ __forceinline__ void ln_bwd_sums(float x, float d, float w, float mean, float inv, float& m1, float& m2) {
  const float gv = __fmul_rn(d, w);
  m1 = __fadd_rn(m1, gv);
  m2 = fmaf(gv, ln_xhat(x, mean, inv), m2);
}
// dx = inv·(dout⊙w − m1 − x̂·m2)
__device__ __forceinline__ float ln_dx(float d, float w, float xh, float m1, float m2, float inv) {
  return __fmul_rn(inv, __fsub_rn(__fsub_rn(__fmul_rn(d, w), m1), __fmul_rn(xh, m2)));
}

// LayerNorm over rows of C (eps 1e-5); float32 and/or bf16 output (either may be null)
extern "C" __global__ void tr_ln(float* outF, gin* outB, const float* x, const float* w, const float* b, int C) {
  __shared__ float sh[32];
  i64 o = (i64)blockIdx.x * C;
  float mean, inv;
  ln_stats_block(x + o, C, sh, mean, inv);
  for (int i = threadIdx.x; i < C; i += blockDim.x) {
    float y = ln_y(x[o + i], mean, inv, w[i], b[i]);
    if (outF) outF[o + i] = y;
    if (outB) outB[o + i] = tog(y);
  }
}

// Backward of tr_ln: dx (= or += when add) from dout; pw = dout⊙x̂ (for the weight gradient's column sum;
// the bias gradient is the column sum of dout itself). x is the forward's input.
extern "C" __global__ void tr_ln_bwd(float* dx, float* pw, const float* dout, const float* x, const float* w, int C, int add) {
  __shared__ float sh[32];
  i64 o = (i64)blockIdx.x * C;
  float mean, inv;
  ln_stats_block(x + o, C, sh, mean, inv);
  float m1 = 0.f, m2 = 0.f;
  for (int i = threadIdx.x; i < C; i += blockDim.x) ln_bwd_sums(x[o + i], dout[o + i], w[i], mean, inv, m1, m2);
  m1 = block_sum(m1, sh) / C;
  m2 = block_sum(m2, sh) / C;
  for (int i = threadIdx.x; i < C; i += blockDim.x) {
    float xh = ln_xhat(x[o + i], mean, inv), d = dout[o + i], r = ln_dx(d, w[i], xh, m1, m2, inv);
    dx[o + i] = add ? __fadd_rn(r, dx[o + i]) : r;
    pw[o + i] = __fmul_rn(d, xh);
  }
}

// tr_ln_bwd over LNB_ROWS rows per block with the weight and bias gradients (Σ dout⊙x̂, Σ dout) added into
// gw, gb (when not null) once per block, and optionally dx's bf16 copy (dxB: the next GEMM's input). Each
// thread owns columns tid + 256·j (j < LNB_MAXJ, so C ≤ 4096).
#define LNB_ROWS 16
#define LNB_MAXJ 16
extern "C" __global__ void __launch_bounds__(256) tr_ln_bwd_f(float* dx, gin* dxB, float* gw, float* gb, const float* dout,
                                                              const float* x, const float* w, int R, int C, int add) {
  __shared__ float sh[32];
  float aw[LNB_MAXJ], ab[LNB_MAXJ];
#pragma unroll
  for (int j = 0; j < LNB_MAXJ; j++) { aw[j] = 0.f; ab[j] = 0.f; }
  const int r1 = min(R, (blockIdx.x + 1) * LNB_ROWS);
  for (int row = blockIdx.x * LNB_ROWS; row < r1; row++) {
    const i64 o = (i64)row * C;
    float mean, inv;
    ln_stats_block(x + o, C, sh, mean, inv);
    float m1 = 0.f, m2 = 0.f;
    for (int i = threadIdx.x; i < C; i += blockDim.x) ln_bwd_sums(x[o + i], dout[o + i], w[i], mean, inv, m1, m2);
    m1 = block_sum(m1, sh) / C;
    m2 = block_sum(m2, sh) / C;
#pragma unroll
    for (int j = 0; j < LNB_MAXJ; j++) {
      const int i = threadIdx.x + j * 256;
      if (i < C) {
        float xh = ln_xhat(x[o + i], mean, inv), d = dout[o + i], r = ln_dx(d, w[i], xh, m1, m2, inv);
        if (add) r = __fadd_rn(r, dx[o + i]);
        dx[o + i] = r;
        if (dxB) dxB[o + i] = tog(r);
        aw[j] = fmaf(d, xh, aw[j]);
        ab[j] = __fadd_rn(ab[j], d);
      }
    }
  }
#pragma unroll
  for (int j = 0; j < LNB_MAXJ; j++) {
    const int i = threadIdx.x + j * 256;
    if (i < C) {
      if (gw) atomicAdd(gw + i, aw[j]);
      if (gb) atomicAdd(gb + i, ab[j]);
    }
  }
}

// tr_ln_bwd_f with a warp per row: lane holds columns lane + 32·m (m < M = C/32) of x, dout and w in
// registers, so a row is read once and its reductions are warp shuffles, no barriers. A block takes
// LNW_ROWS rows (8 warps); its column sums meet in shared memory, then one atomicAdd per column. Why: the
// block-per-row kernel spent its time in barriers and re-reads (≈ 2.2× its DRAM floor, 2026-12-06).
// The four row sums go in block_sum's order for 256 threads (thread 32u + lane adds columns
// 32u + lane + 256k in k's order; a shuffle tree per u; then u = 0 … 7 in turn), so dx is bit for bit
// tr_ln_bwd_f's: a first version summed in its own order, and the bf16 roundings it flipped moved the
// ill-conditioned fixture's gradients past the GPU tests' bounds. C = 128, 256, 512 or 768 (M = 4, 8, 16, 24;
// for M < 8 the partials of "threads" past C are 0, as in block_sum).
#define LNW_ROWS 64
// the per-"thread" partials part[u] (u < 8) of one row → block_sum's total: a shuffle tree per u, then u in turn
__device__ __forceinline__ float ln_tree8(float (&part)[8]) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1)
#pragma unroll
    for (int u = 0; u < 8; u++) part[u] += __shfl_xor_sync(0xffffffffu, part[u], o);
  float t = 0.f;
#pragma unroll
  for (int u = 0; u < 8; u++) t += part[u];
  return t;
}
// LayerNorm statistics (eps 1e-5) of a row held as xv[m] = column lane + 32·m, in ln_stats_block's order
template <int M>
__device__ __forceinline__ void ln_stats_lanes(const float (&xv)[M], int C, float& mean, float& inv) {
  float p[8];
#pragma unroll
  for (int u = 0; u < 8; u++) {
    float s = 0.f;
#pragma unroll
    for (int m = u; m < M; m += 8) s += xv[m];
    p[u] = s;
  }
  mean = ln_tree8(p) / C;
#pragma unroll
  for (int u = 0; u < 8; u++) {
    float q = 0.f;
#pragma unroll
    for (int m = u; m < M; m += 8) { float d = __fsub_rn(xv[m], mean); q = fmaf(d, d, q); }
    p[u] = q;
  }
  inv = rsqrtf(ln_tree8(p) / C + 1e-5f);
}
// The column sums Σ dout⊙x̂ and Σ dout of a warp's rows accumulate in its own slice of shared memory
// (red [8 warps][2][C]), not in registers: with them in registers the kernel took 170 registers at C = 768,
// one block (8 warps) per SM, too few loads in flight for its bytes. Same additions in the same order.
template <int M>
__device__ __forceinline__ void ln_bwd_warp_body(float* red, float* dx, gin* dxB, float* gw, float* gb, const float* dout,
                                                 const float* x, const float* w, int R, int C, int add) {
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  float* aw = red + warp * 2 * C + lane;
  float* ab = aw + C;
  float wv[M];
#pragma unroll
  for (int m = 0; m < M; m++) { wv[m] = w[lane + 32 * m]; aw[32 * m] = 0.f; ab[32 * m] = 0.f; }
  const int r1 = min(R, (blockIdx.x + 1) * LNW_ROWS);
  for (int row = blockIdx.x * LNW_ROWS + warp; row < r1; row += 8) {
    const i64 o = (i64)row * C + lane;
    float xv[M], dv[M], p1[8], p2[8];
#pragma unroll
    for (int m = 0; m < M; m++) { xv[m] = x[o + 32 * m]; dv[m] = dout[o + 32 * m]; }
    float mean, inv;
    ln_stats_lanes<M>(xv, C, mean, inv);
#pragma unroll
    for (int u = 0; u < 8; u++) {
      float m1 = 0.f, m2 = 0.f;
#pragma unroll
      for (int m = u; m < M; m += 8) ln_bwd_sums(xv[m], dv[m], wv[m], mean, inv, m1, m2);
      p1[u] = m1; p2[u] = m2;
    }
    const float m1 = ln_tree8(p1) / C, m2 = ln_tree8(p2) / C;
#pragma unroll
    for (int m = 0; m < M; m++) {
      float xh = ln_xhat(xv[m], mean, inv), d = dv[m], r = ln_dx(d, wv[m], xh, m1, m2, inv);
      if (add) r = __fadd_rn(r, dx[o + 32 * m]);
      dx[o + 32 * m] = r;
      if (dxB) dxB[o + 32 * m] = tog(r);
      aw[32 * m] = fmaf(d, xh, aw[32 * m]);
      ab[32 * m] = __fadd_rn(ab[32 * m], d);
    }
  }
  __syncthreads();
  for (int i = threadIdx.x; i < C; i += 256) {
    float tw = 0.f, tb = 0.f;
#pragma unroll
    for (int u = 0; u < 8; u++) { tw += red[u * 2 * C + i]; tb += red[u * 2 * C + C + i]; }
    if (gw) atomicAdd(gw + i, tw);
    if (gb) atomicAdd(gb + i, tb);
  }
}
// tr_ln with a warp per row (8 rows per block of 256 threads), the row in registers and read once; its
// statistics in ln_stats_block's order (see ln_tree8), so the same bits as tr_ln. C = 128 … 768 as above.
template <int M>
__device__ __forceinline__ void ln_fwd_warp_body(float* outF, gin* outB, const float* x, const float* w, const float* b, int R, int C) {
  const int row = blockIdx.x * 8 + (threadIdx.x >> 5), lane = threadIdx.x & 31;
  if (row >= R) return;
  const i64 o = (i64)row * C + lane;
  float xv[M], mean, inv;
#pragma unroll
  for (int m = 0; m < M; m++) xv[m] = x[o + 32 * m];
  ln_stats_lanes<M>(xv, C, mean, inv);
#pragma unroll
  for (int m = 0; m < M; m++) {
    const int i = lane + 32 * m;
    float y = ln_y(xv[m], mean, inv, w[i], b[i]);
    if (outF) outF[o + 32 * m] = y;
    if (outB) outB[o + 32 * m] = tog(y);
  }
}
extern "C" __global__ void __launch_bounds__(256) tr_ln_w4(float* outF, gin* outB, const float* x, const float* w, const float* b, int R, int C) {
  ln_fwd_warp_body<4>(outF, outB, x, w, b, R, C);
}
extern "C" __global__ void __launch_bounds__(256) tr_ln_w8(float* outF, gin* outB, const float* x, const float* w, const float* b, int R, int C) {
  ln_fwd_warp_body<8>(outF, outB, x, w, b, R, C);
}
extern "C" __global__ void __launch_bounds__(256) tr_ln_w16(float* outF, gin* outB, const float* x, const float* w, const float* b, int R, int C) {
  ln_fwd_warp_body<16>(outF, outB, x, w, b, R, C);
}
extern "C" __global__ void __launch_bounds__(256) tr_ln_w24(float* outF, gin* outB, const float* x, const float* w, const float* b, int R, int C) {
  ln_fwd_warp_body<24>(outF, outB, x, w, b, R, C);
}
extern "C" __global__ void __launch_bounds__(256, 2) tr_ln_bwd_w4(float* dx, gin* dxB, float* gw, float* gb, const float* dout,
                                                               const float* x, const float* w, int R, int C, int add) {
  __shared__ float red[8 * 2 * 32 * 4];
  ln_bwd_warp_body<4>(red, dx, dxB, gw, gb, dout, x, w, R, C, add);
}
extern "C" __global__ void __launch_bounds__(256, 2) tr_ln_bwd_w8(float* dx, gin* dxB, float* gw, float* gb, const float* dout,
                                                                const float* x, const float* w, int R, int C, int add) {
  __shared__ float red[8 * 2 * 32 * 8];
  ln_bwd_warp_body<8>(red, dx, dxB, gw, gb, dout, x, w, R, C, add);
}
extern "C" __global__ void __launch_bounds__(256, 2) tr_ln_bwd_w16(float* dx, gin* dxB, float* gw, float* gb, const float* dout,
                                                                const float* x, const float* w, int R, int C, int add) {
  __shared__ float red[8 * 2 * 32 * 16];
  ln_bwd_warp_body<16>(red, dx, dxB, gw, gb, dout, x, w, R, C, add);
}
extern "C" __global__ void __launch_bounds__(256, 2) tr_ln_bwd_w24(float* dx, gin* dxB, float* gw, float* gb, const float* dout,
                                                                const float* x, const float* w, int R, int C, int add) {
  __shared__ float red[8 * 2 * 32 * 24];
  ln_bwd_warp_body<24>(red, dx, dxB, gw, gb, dout, x, w, R, C, add);
}

// out[m][t] = x[t] + (x[t−1] − x[t])⊙mu[m] (x[−1] = 0 at each sequence start), M mixes, GEMM inputs
extern "C" __global__ void tr_mix(gin* out, const float* x, const float* mu, int R, int T, int C, int M) {
  i64 n = (i64)R * C;
  for (i64 e = blockIdx.x * (i64)blockDim.x + threadIdx.x; e < n; e += (i64)gridDim.x * blockDim.x) {
    int i = (int)(e % C);
    i64 t = e / C;
    float xv = x[e], d = (t % T > 0 ? x[e - C] : 0.f) - xv;
    for (int m = 0; m < M; m++) out[m * n + e] = tog(xv + d * mu[m * C + i]);
  }
}

// tr_mix with a block per row and 4 channels per thread (blockDim = C/4, C % 4 == 0, C ≤ 4096): 16-byte loads
// of the row and the one before, 8-byte stores of the bf16 mixes, and no 64-bit division per element (the
// grid-stride tr_mix pays an i64 e / C and e % C for each). The same arithmetic, so the same bits.
extern "C" __global__ void tr_mix_rows(gin* out, const float* x, const float* mu, int R, int T, int C, int M) {
  const int t = blockIdx.x, i = 4 * threadIdx.x;
  if (i >= C) return;
  const i64 n = (i64)R * C, e = (i64)t * C + i;
  const float4 xv = *(const float4*)(x + e);
  const float4 pv = t % T > 0 ? *(const float4*)(x + e - C) : make_float4(0.f, 0.f, 0.f, 0.f);
  const float d0 = pv.x - xv.x, d1 = pv.y - xv.y, d2 = pv.z - xv.z, d3 = pv.w - xv.w;
  for (int m = 0; m < M; m++) {
    const float4 mv = *(const float4*)(mu + m * C + i);
    st4g(out + m * n + e, xv.x + d0 * mv.x, xv.y + d1 * mv.y, xv.z + d2 * mv.z, xv.w + d3 * mv.w);
  }
}

// Backward of tr_mix: dx (= or +=) = Σ_m dmix_m − dd[t] + dd[t+1], dd = Σ_m dmix_m⊙mu_m. dmix float32 [M, T, C].
extern "C" __global__ void tr_mix_bwd(float* dx, const float* dmix, const float* mu, int R, int T, int C, int M, int add) {
  i64 n = (i64)R * C;
  for (i64 e = blockIdx.x * (i64)blockDim.x + threadIdx.x; e < n; e += (i64)gridDim.x * blockDim.x) {
    int i = (int)(e % C);
    i64 t = e / C;
    bool more = t % T + 1 < T;  // the next row belongs to the same sequence
    float s = 0.f, dd = 0.f, dn = 0.f;
    for (int m = 0; m < M; m++) {
      float a = dmix[m * n + e];
      s += a; dd += a * mu[m * C + i];
      if (more) dn += dmix[m * n + e + C] * mu[m * C + i];
    }
    float r = s - dd + dn;
    dx[e] = add ? dx[e] + r : r;
  }
}

// tr_mix_bwd with the mix weights' gradients (gmu[m] += Σ_t dmix_m[t]⊙(x[t−1] − x[t]), when gmu is not
// null) summed on the way: block (32, 8), a thread per column walking rows, one atomic per column and mix per
// block. x is the mixes' input (the LayerNorm output). M ≤ 6.
extern "C" __global__ void __launch_bounds__(256) tr_mix_bwd_f(float* dx, float* gmu, const float* dmix, const float* mu,
                                                               const float* x, int R, int T, int C, int M, int add) {
  __shared__ float sh[6][8][33];
  const int i = blockIdx.x * 32 + threadIdx.x;
  const i64 n = (i64)R * C;
  float part[6] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
  if (i < C) {
    float mv[6];
#pragma unroll
    for (int m = 0; m < 6; m++) mv[m] = m < M ? mu[m * C + i] : 0.f;
    for (int t = blockIdx.y * 8 + threadIdx.y; t < R; t += gridDim.y * 8) {
      const i64 e = (i64)t * C + i;
      const bool more = t % T + 1 < T;
      const float xs = (t % T > 0 ? x[e - C] : 0.f) - x[e];
      float s = 0.f, dd = 0.f, dn = 0.f;
#pragma unroll
      for (int m = 0; m < 6; m++)
        if (m < M) {
          const float a = dmix[m * n + e];
          s += a; dd += a * mv[m];
          if (more) dn += dmix[m * n + e + C] * mv[m];
          part[m] += a * xs;
        }
      const float r = s - dd + dn;
      dx[e] = add ? dx[e] + r : r;
    }
  }
  if (!gmu) return;
#pragma unroll
  for (int m = 0; m < 6; m++) sh[m][threadIdx.y][threadIdx.x] = part[m];
  __syncthreads();
  if (threadIdx.y < M && i < C) {
    float a = 0.f;
    for (int r = 0; r < 8; r++) a += sh[threadIdx.y][r][threadIdx.x];
    atomicAdd(gmu + threadIdx.y * C + i, a);
  }
}

__device__ __forceinline__ float act_f(float x, int mode) {
  if (mode == 0) return tanhf(x);
  if (mode == 1) return sigmoidf_(x);
  const float r = x > 0.f ? x : 0.f;
  return r * r;
}
// mode 0: tanh, 1: sigmoid, 2: relu²; outF may alias in; either output may be null
extern "C" __global__ void tr_act(float* outF, gin* outB, const float* in, int n, int mode) {
  const int step = gridDim.x * blockDim.x, tid = blockIdx.x * blockDim.x + threadIdx.x;
  int done = 0;
  if (al16(in) && (!outF || al16(outF)) && (!outB || gin4ok(outB))) {
    done = n & ~3;
    for (int i = tid; 4 * i < done; i += step) {
      const float4 y = map4(((const float4*)in)[i], [mode](float x) { return act_f(x, mode); });
      if (outF) ((float4*)outF)[i] = y;
      if (outB) st4g(outB + 4 * i, y.x, y.y, y.z, y.w);
    }
  }
  for (int i = done + tid; i < n; i += step) {
    const float y = act_f(in[i], mode);
    if (outF) outF[i] = y;
    if (outB) outB[i] = tog(y);
  }
}
// backward given the forward's output y (tanh, sigmoid) or input (relu²): dB ← d·f'(·) as the next GEMM's
// input (only that copy is read afterwards: no float32 write-back, 4 of 14 bytes per element for relu²)
__device__ __forceinline__ float act_bwd_f(float g, float v, int mode) {
  if (mode == 0) return g * (1.f - v * v);
  if (mode == 1) return g * (v * (1.f - v));
  return v > 0.f ? g * 2.f * v : 0.f;
}
extern "C" __global__ void tr_act_bwd(gin* dB, const float* d, const float* y, int n, int mode) {
  const int step = gridDim.x * blockDim.x, tid = blockIdx.x * blockDim.x + threadIdx.x;
  int done = 0;
  if (al16(d) && al16(y) && gin4ok(dB)) {
    done = n & ~3;
    for (int i = tid; 4 * i < done; i += step) {
      const float4 g = ((const float4*)d)[i], v = ((const float4*)y)[i];
      st4g(dB + 4 * i, act_bwd_f(g.x, v.x, mode), act_bwd_f(g.y, v.y, mode), act_bwd_f(g.z, v.z, mode), act_bwd_f(g.w, v.w, mode));
    }
  }
  for (int i = done + tid; i < n; i += step) dB[i] = tog(act_bwd_f(d[i], y[i], mode));
}

// ---------------------------------------------------------------------------------------------
// TimeMix element-wise parts (head warps)

// In: d (= x_w·w1·w2, becomes d + w0), a (pre-activation, becomes σ), sv (pre, becomes σ; blocks ≥ 1), k, vraw.
// Out: om = ω, kh = κ̂, kt = k̃, v (block 0 also writes vFirst), knorm [T, H] = ‖k⊙k_k‖ per head.
extern "C" __global__ void tr_tmix_prep(float* d, float* om, float* a, float* sv, float* kh, float* kt, float* v,
                                        float* vFirst, float* knorm, const float* k, const float* vraw, const float* w0,
                                        const float* a0, const float* v0, const float* kkp, const float* ka, int T, int H,
                                        int first) {
  int wid = (blockIdx.x * blockDim.x + threadIdx.x) >> 5, lane = threadIdx.x & 31;
  if (wid >= T * H) return;
  int t = wid / H, h = wid % H, C = H * 64;
  // every load of both channels first (the outputs are written through pointers that may alias the inputs,
  // so the compiler keeps each load after the stores before it: one exposed DRAM latency per load; 63% of
  // the DRAM's bandwidth that way, Nsight, H100); the arithmetic is unchanged
  float dz[2], ar[2], svr[2] = {0.f, 0.f}, vr[2], vf[2] = {0.f, 0.f}, kr[2];
  for (int q = 0; q < 2; q++) {
    const i64 o = (i64)t * C + h * 64 + lane + 32 * q;
    dz[q] = d[o]; ar[q] = a[o]; vr[q] = vraw[o]; kr[q] = k[o];
    if (!first) { svr[q] = sv[o]; vf[q] = vFirst[o]; }
  }
  float kap[2], ss = 0.f;
  for (int q = 0; q < 2; q++) {
    int c = h * 64 + lane + 32 * q;
    i64 o = (i64)t * C + c;
    float z = dz[q] + w0[c];
    d[o] = z;
    om[o] = expf(-0.60653065971f * sigmoidf_(z));
    float av = sigmoidf_(ar[q] + a0[c]);
    a[o] = av;
    if (first) { v[o] = vr[q]; vFirst[o] = vr[q]; }
    else {
      float s = sigmoidf_(svr[q] + v0[c]);
      sv[o] = s;
      v[o] = vr[q] + (vf[q] - vr[q]) * s;
    }
    float kv = kr[q];
    kap[q] = kv * kkp[c];
    ss += kap[q] * kap[q];
    kt[o] = kv * (1.f + (av - 1.f) * ka[c]);
  }
  float nrm = sqrtf(warp_sum(ss));
  if (lane == 0) knorm[wid] = nrm;
  float inv = 1.f / fmaxf(nrm, 1e-12f);
  for (int q = 0; q < 2; q++) kh[(i64)t * C + h * 64 + lane + 32 * q] = kap[q] * inv;
}

// z = (GroupNorm(y)·lnxw + lnxb + (Σ_j r_j k̃_j ρ_j)·v)⊙gate (the W_o input)
extern "C" __global__ void tr_out_fwd(gin* z, const float* y, const float* r, const float* kt, const float* v,
                                      const float* gate, const float* lnxw, const float* lnxb, const float* rk, int T, int H) {
  int wid = (blockIdx.x * blockDim.x + threadIdx.x) >> 5, lane = threadIdx.x & 31;
  if (wid >= T * H) return;
  int t = wid / H, h = wid % H, C = H * 64;
  i64 o0 = (i64)t * C + h * 64 + lane, o1 = o0 + 32;
  int c0 = h * 64 + lane, c1 = c0 + 32;
  float y0 = y[o0], y1 = y[o1];
  float mean = warp_sum(y0 + y1) / 64.f;
  float var = warp_sum((y0 - mean) * (y0 - mean) + (y1 - mean) * (y1 - mean)) / 64.f;
  float inv = rsqrtf(var + 64e-5f);
  float bonus = warp_sum(r[o0] * kt[o0] * rk[c0] + r[o1] * kt[o1] * rk[c1]);
  float a0 = (y0 - mean) * inv * lnxw[c0] + lnxb[c0] + bonus * v[o0];
  float a1 = (y1 - mean) * inv * lnxw[c1] + lnxb[c1] + bonus * v[o1];
  z[o0] = tog(a0 * gate[o0]);
  z[o1] = tog(a1 * gate[o1]);
}

// Backward of tr_out_fwd for token t, head h (one warp, lane owning columns lane and lane + 32): writes dv,
// dr, dkt, dy; returns per column the gate gradient and the column-sum terms for ρ, lnxw and lnxb.
struct OutBwdLane { float dgate[2], prk[2], pw[2], pb[2]; };
__device__ __forceinline__ OutBwdLane out_bwd_lane(float* dv, float* dr, float* dkt, float* dy, const float* dz,
    const float* y, const float* r, const float* kt, const float* v, const float* gate, const float* lnxw,
    const float* lnxb, const float* rk, int t, int h, int H) {
  const int lane = threadIdx.x & 31, C = H * 64;
  const int c[2] = {h * 64 + lane, h * 64 + lane + 32};
  const i64 o[2] = {(i64)t * C + c[0], (i64)t * C + c[1]};
  OutBwdLane L;
  float yv[2] = {y[o[0]], y[o[1]]};
  float mean = warp_sum(yv[0] + yv[1]) / 64.f;
  float var = warp_sum((yv[0] - mean) * (yv[0] - mean) + (yv[1] - mean) * (yv[1] - mean)) / 64.f;
  float inv = rsqrtf(var + 64e-5f);
  float bonus = warp_sum(r[o[0]] * kt[o[0]] * rk[c[0]] + r[o[1]] * kt[o[1]] * rk[c[1]]);
  float xh[2], e[2], gw[2], ds = 0.f, m1 = 0.f, m2 = 0.f;
  for (int q = 0; q < 2; q++) {
    xh[q] = (yv[q] - mean) * inv;
    float ov = xh[q] * lnxw[c[q]] + lnxb[c[q]] + bonus * v[o[q]];
    float d = dz[o[q]];
    L.dgate[q] = d * ov;
    e[q] = d * gate[o[q]];
    ds += e[q] * v[o[q]];
    gw[q] = e[q] * lnxw[c[q]];
    m1 += gw[q]; m2 += gw[q] * xh[q];
  }
  ds = warp_sum(ds);
  m1 = warp_sum(m1) / 64.f;
  m2 = warp_sum(m2) / 64.f;
  for (int q = 0; q < 2; q++) {
    float rr = r[o[q]], kk = kt[o[q]], rho = rk[c[q]];
    dv[o[q]] = e[q] * bonus;
    dr[o[q]] = ds * kk * rho;
    dkt[o[q]] = ds * rr * rho;
    L.prk[q] = ds * rr * kk;
    dy[o[q]] = inv * (gw[q] - m1 - xh[q] * m2);
    L.pw[q] = e[q] * xh[q];
    L.pb[q] = e[q];
  }
  return L;
}

// Backward of tr_out_fwd given dz: dgate, dv, dr, dkt, dy (all =); column-sum products prk (ρ), pw (lnxw), pb (lnxb).
extern "C" __global__ void tr_out_bwd(float* dgate, float* dv, float* dr, float* dkt, float* dy, float* prk, float* pw,
                                      float* pb, const float* dz, const float* y, const float* r, const float* kt,
                                      const float* v, const float* gate, const float* lnxw, const float* lnxb,
                                      const float* rk, int T, int H) {
  int wid = (blockIdx.x * blockDim.x + threadIdx.x) >> 5, lane = threadIdx.x & 31;
  if (wid >= T * H) return;
  int t = wid / H, h = wid % H, C = H * 64;
  const OutBwdLane L = out_bwd_lane(dv, dr, dkt, dy, dz, y, r, kt, v, gate, lnxw, lnxb, rk, t, h, H);
  for (int q = 0; q < 2; q++) {
    const i64 o = (i64)t * C + h * 64 + lane + 32 * q;
    dgate[o] = L.dgate[q]; prk[o] = L.prk[q]; pw[o] = L.pw[q]; pb[o] = L.pb[q];
  }
}

// tr_out_bwd over CS_ROWS rows of one head per block (grid ⌈R/CS_ROWS⌉ × H), with dgate written as the next
// GEMM's input (dgateB) and the column sums of ρ, lnxw and lnxb added into grk, glnw, glnb (when not null).
extern "C" __global__ void __launch_bounds__(256, 5) tr_out_bwd_f(gin* dgateB, float* dv, float* dr, float* dkt, float* dy,
    float* grk, float* glnw, float* glnb, const float* dz, const float* y, const float* r, const float* kt,
    const float* v, const float* gate, const float* lnxw, const float* lnxb, const float* rk, int R, int H) {
  __shared__ float sh[8 * 64];
  const int h = blockIdx.y, lane = threadIdx.x & 31, C = H * 64;
  float prk[2] = {0.f, 0.f}, pw[2] = {0.f, 0.f}, pb[2] = {0.f, 0.f};
  const int t1 = min(R, (blockIdx.x + 1) * CS_ROWS);
  for (int t = blockIdx.x * CS_ROWS + (threadIdx.x >> 5); t < t1; t += 8) {
    const OutBwdLane L = out_bwd_lane(dv, dr, dkt, dy, dz, y, r, kt, v, gate, lnxw, lnxb, rk, t, h, H);
    for (int q = 0; q < 2; q++) {
      dgateB[(i64)t * C + h * 64 + lane + 32 * q] = tog(L.dgate[q]);
      prk[q] += L.prk[q]; pw[q] += L.pw[q]; pb[q] += L.pb[q];
    }
  }
  colsum_flush(grk, prk, sh, h);
  colsum_flush(glnw, pw, sh, h);
  colsum_flush(glnb, pb, sh, h);
}

// After the WKV backward: keys, in-context rate, decay and value residual, element-wise.
//   dκ̂ = dkk + db⊙a, da = db⊙κ̂ + dk̃⊙k⊙k_a → dapre = da·a(1−a);
//   dk = dk̃⊙(1 + (a−1)k_a) + k_k⊙(dκ̂ − κ̂(κ̂·dκ̂))/‖κ‖;  pka = dk̃⊙k⊙(a−1), pkk = k⊙dκ;
//   dom ← dω·ω·(−e^{−1/2})σ(d)(1−σ(d));
//   value: block 0 dvraw = dv + dvFirst; else dvraw = dv(1−s), dvFirst += dv·s, dvpre = dv(vFirst − vraw)s(1−s).
// tmix_bwd_lane: that math for token t, head h (one warp); updates dvFirst, returns the rest per column.
struct TmixBwdLane { float dk[2], dapre[2], pka[2], pkk[2], dom[2], dvraw[2], dvpre[2]; };
__device__ __forceinline__ TmixBwdLane tmix_bwd_lane(float* dvFirst, const float* dom, const float* db, const float* dkk,
    const float* dkt, const float* dv, const float* kh, const float* a, const float* k, const float* knorm,
    const float* kkp, const float* ka, const float* om, const float* d, const float* sv, const float* vFirst,
    const float* vraw, int t, int h, int H, int first) {
  const int lane = threadIdx.x & 31, C = H * 64;
  TmixBwdLane L;
  // every load of both channels first (stores through pointers that may alias would otherwise hold each
  // later load back: one exposed DRAM latency per load); the arithmetic is unchanged
  float dkk_[2], db_[2], a_[2], kh_[2], k_[2], dkt_[2], d_[2], dom_[2], om_[2], dv_[2], dvf_[2];
  float sv_[2] = {0.f, 0.f}, vf_[2] = {0.f, 0.f}, vr_[2] = {0.f, 0.f};
  for (int q = 0; q < 2; q++) {
    const i64 o = (i64)t * C + h * 64 + lane + 32 * q;
    dkk_[q] = dkk[o]; db_[q] = db[o]; a_[q] = a[o]; kh_[q] = kh[o]; k_[q] = k[o]; dkt_[q] = dkt[o];
    d_[q] = d[o]; dom_[q] = dom[o]; om_[q] = om[o]; dv_[q] = dv[o]; dvf_[q] = dvFirst[o];
    if (!first) { sv_[q] = sv[o]; vf_[q] = vFirst[o]; vr_[q] = vraw[o]; }
  }
  const float nrm = knorm[(i64)t * H + h];
  float dkh[2], dot = 0.f;
  for (int q = 0; q < 2; q++) {
    dkh[q] = dkk_[q] + db_[q] * a_[q];
    dot += kh_[q] * dkh[q];
  }
  dot = warp_sum(dot);
  bool clamped = !(nrm > 1e-12f);
  float inv = 1.f / fmaxf(nrm, 1e-12f);
  for (int q = 0; q < 2; q++) {
    int c = h * 64 + lane + 32 * q;
    i64 o = (i64)t * C + c;
    float av = a_[q], kv = k_[q], kap = kh_[q], g = dkt_[q];
    float dkap = (clamped ? dkh[q] : dkh[q] - kap * dot) * inv;
    L.dk[q] = g * (1.f + (av - 1.f) * ka[c]) + dkap * kkp[c];
    float da = db_[q] * kap + g * kv * ka[c];
    L.dapre[q] = da * av * (1.f - av);
    L.pka[q] = g * kv * (av - 1.f);
    L.pkk[q] = dkap * kv;
    float s = sigmoidf_(d_[q]);
    L.dom[q] = dom_[q] * om_[q] * -0.60653065971f * s * (1.f - s);
    float dvv = dv_[q];
    L.dvpre[q] = 0.f;
    if (first) L.dvraw[q] = dvv + dvf_[q];
    else {
      float sg = sv_[q];
      L.dvraw[q] = dvv * (1.f - sg);
      dvFirst[o] = dvf_[q] + dvv * sg;
      L.dvpre[q] = dvv * (vf_[q] - vr_[q]) * sg * (1.f - sg);
    }
  }
  return L;
}
extern "C" __global__ void tr_tmix_bwd(float* dk, float* dapre, float* pka, float* pkk, float* dom, float* dvraw,
                                       float* dvpre, float* dvFirst, const float* db, const float* dkk, const float* dkt,
                                       const float* dv, const float* kh, const float* a, const float* k, const float* knorm,
                                       const float* kkp, const float* ka, const float* om, const float* d,
                                       const float* sv, const float* vFirst, const float* vraw, int T, int H, int first) {
  int wid = (blockIdx.x * blockDim.x + threadIdx.x) >> 5, lane = threadIdx.x & 31;
  if (wid >= T * H) return;
  int t = wid / H, h = wid % H, C = H * 64;
  const TmixBwdLane L = tmix_bwd_lane(dvFirst, dom, db, dkk, dkt, dv, kh, a, k, knorm, kkp, ka, om, d, sv, vFirst, vraw, t, h, H, first);
  for (int q = 0; q < 2; q++) {
    const i64 o = (i64)t * C + h * 64 + lane + 32 * q;
    dk[o] = L.dk[q]; dapre[o] = L.dapre[q]; pka[o] = L.pka[q]; pkk[o] = L.pkk[q]; dom[o] = L.dom[q]; dvraw[o] = L.dvraw[q];
    if (!first) dvpre[o] = L.dvpre[q];
  }
}

// tr_tmix_bwd over CS_ROWS rows of one head per block (grid ⌈R/CS_ROWS⌉ × H), writing only what the GEMM
// chain reads — the bf16 (GEMM-input) copies of dk, dapre, dω, dvraw, dvpre and dr — plus dvFirst (fp32),
// with the column sums for k_a, k_k, w0, a0 and v0 added into gka, gkk, gw0, ga0, gv0 (when not null).
extern "C" __global__ void __launch_bounds__(256) tr_tmix_bwd_f(gin* dkB, gin* dapreB, gin* domB, gin* dvrawB, gin* dvpreB,
    gin* drB, float* dvFirst, float* gka, float* gkk, float* gw0, float* ga0, float* gv0, const float* dr,
    const float* dom, const float* db, const float* dkk, const float* dkt, const float* dv, const float* kh,
    const float* a, const float* k, const float* knorm, const float* kkp, const float* ka, const float* om,
    const float* d, const float* sv, const float* vFirst, const float* vraw, int R, int H, int first) {
  __shared__ float sh[8 * 64];
  const int h = blockIdx.y, lane = threadIdx.x & 31, C = H * 64;
  float pka[2] = {0.f, 0.f}, pkk[2] = {0.f, 0.f}, pw0[2] = {0.f, 0.f}, pa0[2] = {0.f, 0.f}, pv0[2] = {0.f, 0.f};
  const int t1 = min(R, (blockIdx.x + 1) * CS_ROWS);
  for (int t = blockIdx.x * CS_ROWS + (threadIdx.x >> 5); t < t1; t += 8) {
    const TmixBwdLane L = tmix_bwd_lane(dvFirst, dom, db, dkk, dkt, dv, kh, a, k, knorm, kkp, ka, om, d, sv, vFirst, vraw, t, h, H, first);
    for (int q = 0; q < 2; q++) {
      const i64 o = (i64)t * C + h * 64 + lane + 32 * q;
      dkB[o] = tog(L.dk[q]); dapreB[o] = tog(L.dapre[q]); domB[o] = tog(L.dom[q]); dvrawB[o] = tog(L.dvraw[q]);
      drB[o] = tog(dr[o]);
      if (!first) dvpreB[o] = tog(L.dvpre[q]);
      pka[q] += L.pka[q]; pkk[q] += L.pkk[q]; pw0[q] += L.dom[q]; pa0[q] += L.dapre[q]; pv0[q] += L.dvpre[q];
    }
  }
  colsum_flush(gka, pka, sh, h);
  colsum_flush(gkk, pkk, sh, h);
  colsum_flush(gw0, pw0, sh, h);
  colsum_flush(ga0, pa0, sh, h);
  if (!first) colsum_flush(gv0, pv0, sh, h);
}

// ---------------------------------------------------------------------------------------------
// WKV-7 (SPEC §2 step 8–9) for training. Grid (H, 64/WR, Bn), block 32·WR: one warp per state row i,
// lane owning columns j = lane and lane + 32, blockIdx.z the sequence (each starts from S = 0). Rows evolve
// independently given the token inputs. The forward saves the state before every WKV_EVERY-th token
// (ckpt [Bn, ⌈T/16⌉, H, 64, 64]).

// (Measured on an H100, batch 16 × 4K: 16 rows per block, or per-row-group partial sums instead of the
// backward's atomics, change nothing: the kernels are bound by the per-token dependency chain.)
#define WR 8
#define WKV_EVERY 16

__device__ __forceinline__ void wkv_step(float& s0, float& s1, float& sa, float w0, float w1, float k0, float k1,
                                         float a0, float a1, float t0, float t1, float vi) {
  sa = -warp_sum(s0 * k0 + s1 * k1);
  s0 = s0 * w0 + sa * (k0 * a0) + vi * t0;
  s1 = s1 * w1 + sa * (k1 * a1) + vi * t1;
}

extern "C" __global__ void __launch_bounds__(32 * WR) tr_wkv_fwd(float* y, float* ckpt, const float* r, const float* om,
                                                             const float* kt, const float* v, const float* kh,
                                                             const float* a, int T, int C) {
  int h = blockIdx.x, lane = threadIdx.x & 31, i = blockIdx.y * WR + (threadIdx.x >> 5);
  int H = C / 64;
  {
    i64 so = (i64)blockIdx.z * T * C;
    y += so; r += so; om += so; kt += so; v += so; kh += so; a += so;
    ckpt += (i64)blockIdx.z * ((T + WKV_EVERY - 1) / WKV_EVERY) * H * 64 * 64;
  }
  int j0 = h * 64 + lane, j1 = j0 + 32;
  float s0 = 0.f, s1 = 0.f, sa;
  // the next token's inputs are loaded one step ahead (the loop is latency-bound)
  float x[11];
#define WKV_LOAD(t_) { i64 o_ = (i64)(t_) * C; x[0] = om[o_ + j0]; x[1] = om[o_ + j1]; x[2] = kh[o_ + j0]; x[3] = kh[o_ + j1]; \
    x[4] = a[o_ + j0]; x[5] = a[o_ + j1]; x[6] = kt[o_ + j0]; x[7] = kt[o_ + j1]; x[8] = v[o_ + h * 64 + i]; \
    x[9] = r[o_ + j0]; x[10] = r[o_ + j1]; }
  if (T > 0) WKV_LOAD(0);
  for (int t = 0; t < T; t++) {
    if (t % WKV_EVERY == 0) {
      float* cp = ckpt + (((i64)(t / WKV_EVERY) * H + h) * 64 + i) * 64;
      cp[lane] = s0; cp[lane + 32] = s1;
    }
    float c[11];
#pragma unroll
    for (int q = 0; q < 11; q++) c[q] = x[q];
    if (t + 1 < T) WKV_LOAD(t + 1);
    wkv_step(s0, s1, sa, c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7], c[8]);
    float yi = warp_sum(s0 * c[9] + s1 * c[10]);
    if (lane == 0) y[(i64)t * C + h * 64 + i] = yi;
  }
#undef WKV_LOAD
}

// Backward through the recurrence (see src/backend/cpu/wkv7.ts wkv7Backward for the formulas). Per row,
// each 16-token stretch is recomputed from its checkpoint (in registers) and walked backwards. Row
// quantities (dv) are written directly (added); column quantities (dr, dω, dk̃, dκ̂ partial, db) are summed
// over the block's rows in shared memory and added to global memory with one atomic per column.
extern "C" __global__ void __launch_bounds__(32 * WR) tr_wkv_bwd(float* dr, float* dom, float* dkt, float* dv, float* dkk,
                                                             float* db, const float* dy, const float* r,
                                                             const float* om, const float* kt, const float* v,
                                                             const float* kh, const float* a, const float* ckpt,
                                                             int T, int C) {
  __shared__ float red[5][WR][64];
  int h = blockIdx.x, lane = threadIdx.x & 31, wi = threadIdx.x >> 5, i = blockIdx.y * WR + wi;
  int H = C / 64;
  {
    i64 so = (i64)blockIdx.z * T * C;
    dr += so; dom += so; dkt += so; dv += so; dkk += so; db += so; dy += so;
    r += so; om += so; kt += so; v += so; kh += so; a += so;
    ckpt += (i64)blockIdx.z * ((T + WKV_EVERY - 1) / WKV_EVERY) * H * 64 * 64;
  }
  int j0 = h * 64 + lane, j1 = j0 + 32;
  i64 vi_off = h * 64 + i;
  float d0 = 0.f, d1 = 0.f;  // dS of this row (after the current token)
  int nChunks = (T + WKV_EVERY - 1) / WKV_EVERY;
  for (int c = nChunks - 1; c >= 0; c--) {
    int t0 = c * WKV_EVERY, n = min(WKV_EVERY, T - t0);
    const float* cp = ckpt + (((i64)c * H + h) * 64 + i) * 64;
    float st0[WKV_EVERY + 1], st1[WKV_EVERY + 1], sav[WKV_EVERY];
    st0[0] = cp[lane]; st1[0] = cp[lane + 32];
#pragma unroll
    for (int u = 0; u < WKV_EVERY; u++) {
      if (u < n) {
        i64 o = (i64)(t0 + u) * C;
        float s0 = st0[u], s1 = st1[u], sa;
        wkv_step(s0, s1, sa, om[o + j0], om[o + j1], kh[o + j0], kh[o + j1], a[o + j0], a[o + j1], kt[o + j0],
                 kt[o + j1], v[o + vi_off]);
        st0[u + 1] = s0; st1[u + 1] = s1; sav[u] = sa;
      }
    }
#pragma unroll
    for (int u = WKV_EVERY - 1; u >= 0; u--) {
      if (u < n) {
        i64 o = (i64)(t0 + u) * C;
        float w0 = om[o + j0], w1 = om[o + j1], k0 = kh[o + j0], k1 = kh[o + j1];
        float b0 = k0 * a[o + j0], b1 = k1 * a[o + j1];
        float dyi = dy[o + vi_off], vi = v[o + vi_off];
        float g0 = d0 + dyi * r[o + j0], g1 = d1 + dyi * r[o + j1];
        float dsa = warp_sum(g0 * b0 + g1 * b1);
        float dvi = warp_sum(g0 * kt[o + j0] + g1 * kt[o + j1]);
        if (lane == 0) dv[o + vi_off] += dvi;
        float sa = sav[u];
        red[0][wi][lane] = st0[u + 1] * dyi; red[0][wi][lane + 32] = st1[u + 1] * dyi;  // dr
        red[1][wi][lane] = g0 * st0[u];      red[1][wi][lane + 32] = g1 * st1[u];      // dω
        red[2][wi][lane] = g0 * vi;          red[2][wi][lane + 32] = g1 * vi;          // dk̃
        red[3][wi][lane] = -dsa * st0[u];    red[3][wi][lane + 32] = -dsa * st1[u];    // dκ̂ (S part)
        red[4][wi][lane] = g0 * sa;          red[4][wi][lane + 32] = g1 * sa;          // db
        d0 = g0 * w0 - dsa * k0;
        d1 = g1 * w1 - dsa * k1;
        __syncthreads();
        for (int idx = threadIdx.x; idx < 5 * 64; idx += blockDim.x) {
          int q = idx >> 6, j = idx & 63;
          float s = 0.f;
#pragma unroll
          for (int w = 0; w < WR; w++) s += red[q][w][j];
          float* out = q == 0 ? dr : q == 1 ? dom : q == 2 ? dkt : q == 3 ? dkk : db;
          atomicAdd(out + o + h * 64 + j, s);
        }
        __syncthreads();
      }
    }
  }
}

// Sparse attention for training: moba-train.cu.

// ---------------------------------------------------------------------------------------------
// Cross-entropy over one row of V logits per block: lossRow[t] = wt·(lse − logit[target]) (wt: the token's
// weight, 1 without); dlogits = gscale·wt·(softmax − onehot) (+ L2Wrap: 1e-4·gscale·max on the arg-max) as a
// GEMM input. gscale = 1/(tokens in the step's mean). Max, arg-max and the sum of exponentials in one pass
// (online rescaling), so the logits are read twice and not written back.
__device__ __forceinline__ void ce_merge(float& m, float& s, int& a, float m2, float s2, int a2) {
  float mm = fmaxf(m, m2);
  if (mm == -INFINITY) return;
  float sum = (m == -INFINITY ? 0.f : s * expf(m - mm)) + (m2 == -INFINITY ? 0.f : s2 * expf(m2 - mm));
  if (m2 > m || (m2 == m && a2 < a)) a = a2;
  m = mm; s = sum;
}

extern "C" __global__ void __launch_bounds__(1024) tr_ce(const float* logits, gin* dlogB, float* lossRow, const int* targets,
                                                         const float* weights, int V, float gscale, int l2wrap) {
  __shared__ float shm[32], shs[32];
  __shared__ int shi[32];
  i64 row = blockIdx.x;
  const float* x = logits + row * V;
  float m = -INFINITY, s = 0.f;
  int arg = 0x7fffffff;
  auto see = [&](float z, int i) {
    if (z > m) { s = (m == -INFINITY ? 0.f : s * expf(m - z)) + 1.f; m = z; arg = i; }
    else s += expf(z - m);
  };
  if ((V & 3) == 0) {  // 16-byte loads (rows start 16-byte aligned when V % 4 == 0)
    const float4* x4 = reinterpret_cast<const float4*>(x);
    for (int i = threadIdx.x; i < V / 4; i += blockDim.x) {
      const float4 z = x4[i];
      see(z.x, 4 * i); see(z.y, 4 * i + 1); see(z.z, 4 * i + 2); see(z.w, 4 * i + 3);
    }
  } else {
    for (int i = threadIdx.x; i < V; i += blockDim.x) see(x[i], i);
  }
  for (int o = 16; o > 0; o >>= 1) {
    float m2 = __shfl_xor_sync(0xffffffffu, m, o), s2 = __shfl_xor_sync(0xffffffffu, s, o);
    int a2 = __shfl_xor_sync(0xffffffffu, arg, o);
    ce_merge(m, s, arg, m2, s2, a2);
  }
  int w = threadIdx.x >> 5, l = threadIdx.x & 31, nw = blockDim.x >> 5;
  if (l == 0) { shm[w] = m; shs[w] = s; shi[w] = arg; }
  __syncthreads();
  m = shm[0]; s = shs[0]; arg = shi[0];
  for (int k = 1; k < nw; k++) ce_merge(m, s, arg, shm[k], shs[k], shi[k]);
  float lse = m + logf(s);
  int tgt = targets[row];
  float wt = weights ? weights[row] : 1.f;
  if (threadIdx.x == 0) lossRow[row] = wt * (lse - x[tgt]);
  float gw = wt * gscale;
  gin* d = dlogB + row * V;
  auto grad = [&](float z, int i) {
    float g = gw * expf(z - lse);
    if (i == tgt) g -= gw;
    if (l2wrap && i == arg) g += 1e-4f * gscale * m;
    return g;
  };
  if ((V & 3) == 0) {
    const float4* x4 = reinterpret_cast<const float4*>(x);
    for (int i = threadIdx.x; i < V / 4; i += blockDim.x) {
      const float4 z = x4[i];
      d[4 * i] = tog(grad(z.x, 4 * i)); d[4 * i + 1] = tog(grad(z.y, 4 * i + 1));
      d[4 * i + 2] = tog(grad(z.z, 4 * i + 2)); d[4 * i + 3] = tog(grad(z.w, 4 * i + 3));
    }
  } else {
    for (int i = threadIdx.x; i < V; i += blockDim.x) d[i] = tog(grad(x[i], i));
  }
}
