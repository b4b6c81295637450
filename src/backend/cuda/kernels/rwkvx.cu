// RWKV-X inference kernels (compiled at run time by NVRTC; shared helpers in common.cuh).
// Storage: weights and GEMM inputs bf16 (raw 16-bit words), residual stream, WKV state,
// softmax and most activations float32.

#include "common.cuh"
#include "attn.cuh"
#include "tc-split.cuh"

// h[t, :] = emb[tok[t], :] (ln0 folded into the table at load)
extern "C" __global__ void embed(float* h, const bf16* emb, const int* tok, int C) {
  int t = blockIdx.x;
  const bf16* e = emb + (long long)tok[t] * C;
  for (int i = threadIdx.x; i < C; i += blockDim.x) h[(long long)t * C + i] = bf2f(e[i]);
}

// LayerNorm statistics (eps 1e-5) of one row of C, by one warp, summed in exactly the order of
// block_sum over 256 threads (lane l stands for threads l, 32 + l, …, 224 + l): the same bits as the
// block-per-row LayerNorms of decoding and training, without a block barrier.
__device__ __forceinline__ float warp_sum256(const float* p) {
  float s = 0.f;
#pragma unroll
  for (int w = 0; w < 8; w++) s += warp_sum(p[w]);
  return s;
}
__device__ __forceinline__ void ln_stats_warp(const float* x, int C, float& mean, float& inv) {
  const int l = threadIdx.x & 31;
  float p[8];
#pragma unroll
  for (int w = 0; w < 8; w++) p[w] = 0.f;
  for (int i0 = l; i0 < C; i0 += 256)
#pragma unroll
    for (int w = 0; w < 8; w++) if (i0 + 32 * w < C) p[w] += x[i0 + 32 * w];
  mean = warp_sum256(p) / C;
#pragma unroll
  for (int w = 0; w < 8; w++) p[w] = 0.f;
  for (int i0 = l; i0 < C; i0 += 256)
#pragma unroll
    for (int w = 0; w < 8; w++) if (i0 + 32 * w < C) { float d = x[i0 + 32 * w] - mean; p[w] += d * d; }
  inv = rsqrtf(warp_sum256(p) / C + 1e-5f);
}

// LayerNorm over rows of C, one warp per row (8 per block of 256); float32 and/or bf16 out (either may be null)
extern "C" __global__ void __launch_bounds__(256) layer_norm(float* outF, bf16* outB, const float* x, const float* w, const float* b, int T, int C) {
  const int t = blockIdx.x * 8 + (threadIdx.x >> 5), l = threadIdx.x & 31;
  if (t >= T) return;
  const long long o = (long long)t * C;
  float mean, inv;
  ln_stats_warp(x + o, C, mean, inv);
  for (int i = l; i < C; i += 32) {
    float y = (x[o + i] - mean) * inv * w[i] + b[i];
    if (outF) outF[o + i] = y;
    if (outB) outB[o + i] = f2bf(y);
  }
}

// LayerNorm + the M token-shift mixes, one warp per token t (8 per block of 256):
// out[m, t, :] = y_t + (y_{t−1} − y_t) ⊙ mu[m] with y = LN(x) and y_{−1} = prev (already normalised).
// Row t − 1 is normalised again here rather than read back from a float32 LN output (one pass over
// the activations instead of three). The warp of the last token writes its y to `last` (the next
// call's prev); last == prev is allowed when T = 1 (each lane reads prev[i] before it writes last[i]).
extern "C" __global__ void __launch_bounds__(256) ln_mix(bf16* out, float* last, const float* x, const float* w, const float* b,
    const float* prev, const float* mu, int T, int C, int M) {
  const int t = blockIdx.x * 8 + (threadIdx.x >> 5), l = threadIdx.x & 31;
  if (t >= T) return;
  const float* xr = x + (long long)t * C;
  float mean, inv, pmean = 0.f, pinv = 0.f;
  ln_stats_warp(xr, C, mean, inv);
  if (t > 0) ln_stats_warp(xr - C, C, pmean, pinv);
  for (int i = l; i < C; i += 32) {
    float y = (xr[i] - mean) * inv * w[i] + b[i];
    float p = t > 0 ? (xr[i - C] - pmean) * pinv * w[i] + b[i] : prev[i];
    float d = p - y;
    for (int m = 0; m < M; m++) out[((long long)m * T + t) * C + i] = f2bf(y + d * mu[m * C + i]);
    if (t == T - 1) last[i] = y;
  }
}

// ln_mix with the block's rows staged once: 8 tokens per block of 256 threads, rows t0 − 1 … t0 + 7 of x
// read into shared memory with 16-byte loads (9·C floats of dynamic shared memory), each warp's row
// statistics in ln_stats_warp's order (so the same bits as ln_mix), then every thread writes 8 channels
// of one token's M mixes as one 16-byte store each. C must be a multiple of 8.
__device__ __forceinline__ void ld8(float* d, const float* p) {
  const float4 a = *(const float4*)p, b = *(const float4*)(p + 4);
  d[0] = a.x; d[1] = a.y; d[2] = a.z; d[3] = a.w; d[4] = b.x; d[5] = b.y; d[6] = b.z; d[7] = b.w;
}
extern "C" __global__ void __launch_bounds__(256, 5) ln_mix8(bf16* out, float* last, const float* x, const float* w, const float* b,
    const float* prev, const float* mu, int T, int C, int M) {
  extern __shared__ __align__(16) float rows[];  // [9][C]: row 0 = token t0 − 1
  __shared__ float stat[9][2];
  const int t0 = blockIdx.x * 8, tid = threadIdx.x, warp = tid >> 5;
  const int nTok = min(8, T - t0), first = t0 > 0 ? 0 : 1;
  // 4 loads in flight per thread before their stores (a plain loop would wait for each load in turn: the
  // compiler may not move a global load past a shared-memory store through generic pointers)
  const int nLoad = (nTok + 1 - first) * (C / 4);
  for (int e0 = tid; e0 < nLoad; e0 += 4 * 256) {
    float4 v[4];
#pragma unroll
    for (int u = 0; u < 4; u++) {
      const int e = e0 + u * 256, r = first + e / (C / 4), c = (e % (C / 4)) * 4;
      if (e < nLoad) v[u] = __ldg((const float4*)&x[(long long)(t0 - 1 + r) * C + c]);
    }
#pragma unroll
    for (int u = 0; u < 4; u++) {
      const int e = e0 + u * 256, r = first + e / (C / 4), c = (e % (C / 4)) * 4;
      if (e < nLoad) *(float4*)&rows[r * C + c] = v[u];
    }
  }
  __syncthreads();
  if (warp < nTok) ln_stats_warp(rows + (warp + 1) * C, C, stat[warp + 1][0], stat[warp + 1][1]);
  if (warp == nTok % 8 && !first) ln_stats_warp(rows, C, stat[0][0], stat[0][1]);  // a warp with the least to do
  __syncthreads();
  const int C8 = C / 8;
  for (int e = tid; e < nTok * C8; e += 256) {
    const int r = e / C8, i = (e % C8) * 8, t = t0 + r;
    const float mean = stat[r + 1][0], inv = stat[r + 1][1];
    // 16-byte loads throughout: a lane's 8 channels are 32 bytes apart from the next lane's, so scalar
    // loads would cost 8 L1 wavefronts (8-way bank conflicts in shared memory) each
    float y[8], d[8], wv[8], bv[8], xv[8], pv[8];
    ld8(wv, w + i); ld8(bv, b + i); ld8(xv, rows + (r + 1) * C + i); ld8(pv, t > 0 ? rows + r * C + i : prev + i);
#pragma unroll
    for (int u = 0; u < 8; u++) {
      y[u] = (xv[u] - mean) * inv * wv[u] + bv[u];
      const float p = t > 0 ? (pv[u] - stat[r][0]) * stat[r][1] * wv[u] + bv[u] : pv[u];
      d[u] = p - y[u];
    }
    for (int m = 0; m < M; m++) {
      float mv[8];
      ld8(mv, mu + m * C + i);
      uint4 o;
      u32* ov = (u32*)&o;
#pragma unroll
      for (int u = 0; u < 4; u++) ov[u] = ((u32)f2bf(y[2 * u + 1] + d[2 * u + 1] * mv[2 * u + 1]) << 16) | f2bf(y[2 * u] + d[2 * u] * mv[2 * u]);
      *(uint4*)&out[((long long)m * T + t) * C + i] = o;
    }
    if (t == T - 1)
#pragma unroll
      for (int u = 0; u < 8; u++) last[i + u] = y[u];
  }
}

// out = act(in) as bf16; mode 0 tanh, 1 sigmoid, 2 relu²
extern "C" __global__ void act_bf16(bf16* out, const float* in, int n, int mode) {
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) {
    float v = in[i];
    float y = mode == 0 ? tanhf(v) : mode == 1 ? sigmoidf_(v) : (v > 0.f ? v * v : 0.f);
    out[i] = f2bf(y);
  }
}

// relu² in place on bf16 (the channel-mix hidden layer): 8 elements per 16-byte access, two accesses in
// flight per thread (with one 4-byte access per step it ran at ≈ 1.7 TB/s, about half the DRAM's rate)
__device__ __forceinline__ u32 relu_sq2(u32 p) {
  float a = bf2f((bf16)(p & 0xffff)), b = bf2f((bf16)(p >> 16));
  a = a > 0.f ? a * a : 0.f; b = b > 0.f ? b * b : 0.f;
  return pack_bf16(a, b);
}
__device__ __forceinline__ uint4 relu_sq8(uint4 p) { return make_uint4(relu_sq2(p.x), relu_sq2(p.y), relu_sq2(p.z), relu_sq2(p.w)); }
extern "C" __global__ void relu_sq_bf16(u32* x, int n2) {
  // the 16-byte path needs x 16-byte aligned (the model passes a buffer's start); otherwise all scalar
  const int n8 = ((unsigned long long)x & 15) ? 0 : n2 >> 2, step = gridDim.x * blockDim.x, tid = blockIdx.x * blockDim.x + threadIdx.x;
  uint4* x8 = (uint4*)x;
  int i = tid;
  for (; i + step < n8; i += 2 * step) {
    const uint4 p = x8[i], q = x8[i + step];
    x8[i] = relu_sq8(p); x8[i + step] = relu_sq8(q);
  }
  if (i < n8) x8[i] = relu_sq8(x8[i]);
  for (int j = 4 * n8 + tid; j < n2; j += step) x[j] = relu_sq2(x[j]);
}

// A time-mix LoRA in one pass: out[T, C] = f(x[T, C]·W1[C, L])·W2[L, C] with f = tanh (mode 0), σ (1) or the
// identity (−1); x, W1, W2 bf16, out fp32, the middle rounded to bf16 as the two cuBLAS GEMMs with act_bf16
// between them rounded it. The [T, L] middle never leaves registers: a block takes 128 rows (8 warps of 16),
// streams 64-wide slices of x and W1 through shared memory (cp.async, two stages), turns its accumulators
// into the A fragments of the second product and streams 64-column tiles of W2 the same way. Why: cuBLAS
// ran these skinny pairs at ≈ 3.5× their byte floor, plus the middle's round trip and a launch for f.
// C a multiple of 64, L of 32, L ≤ 128 (the caller falls back to cuBLAS otherwise).
#define LORA_ROWS 128
template <int L>
__device__ __forceinline__ void lora_body(float* __restrict__ out, const bf16* __restrict__ x, const bf16* __restrict__ W1,
    const bf16* __restrict__ W2, int T, int C, int mode) {
  extern __shared__ __align__(16) unsigned char lora_smem[];
  constexpr int LS = L + 8;                           // padded W1 row (bf16): ldmatrix rows on distinct banks
  bf16* Xs = (bf16*)lora_smem;                        // [2][128][KS]; phase 2 reuses it as W2s [2][L][KS]
  bf16* W1s = Xs + 2 * LORA_ROWS * KS;                // [2][64][LS]
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, g = lane >> 2, c4 = lane & 3;
  const int mi = lane >> 3, r8 = lane & 7;
  const int row0 = blockIdx.x * LORA_ROWS;
  const int nk = C / 64;
  auto loadX = [&](int kc, int buf) {
    bf16* xs = Xs + buf * LORA_ROWS * KS;
    for (int e = tid; e < LORA_ROWS * 8; e += 256) {
      const int r = e >> 3, c8 = (e & 7) * 8;
      const bool ok = row0 + r < T;
      cp16(&xs[r * KS + c8], x + (long long)(ok ? row0 + r : 0) * C + kc * 64 + c8, ok ? 16 : 0);
    }
    bf16* ws = W1s + buf * 64 * LS;
    for (int e = tid; e < 64 * (L / 8); e += 256) {
      const int r = e / (L / 8), c8 = (e % (L / 8)) * 8;
      cp16(&ws[r * LS + c8], W1 + (long long)(kc * 64 + r) * L + c8, 16);
    }
    cp_commit();
  };
  float acc[L / 8][4];
#pragma unroll
  for (int n = 0; n < L / 8; n++) acc[n][0] = acc[n][1] = acc[n][2] = acc[n][3] = 0.f;
  loadX(0, 0);
  for (int kc = 0; kc < nk; kc++) {
    if (kc + 1 < nk) { loadX(kc + 1, (kc + 1) & 1); cp_wait1(); } else cp_wait0();
    __syncthreads();
    const bf16* xs = Xs + (kc & 1) * LORA_ROWS * KS + warp * 16 * KS;
    const bf16* ws = W1s + (kc & 1) * 64 * LS;
#pragma unroll
    for (int ks = 0; ks < 4; ks++) {
      u32 af[4];
      ldsm_x4(af[0], af[1], af[2], af[3], xs + (r8 + (mi & 1) * 8) * KS + ks * 16 + (mi >> 1) * 8);
#pragma unroll
      for (int np = 0; np < L / 16; np++) {
        u32 b0, b1, b2, b3;
        ldsm_x4_t(b0, b1, b2, b3, ws + (ks * 16 + (mi & 1) * 8 + r8) * LS + (2 * np + (mi >> 1)) * 8);
        mma16816(acc[2 * np], af, b0, b1);
        mma16816(acc[2 * np + 1], af, b2, b3);
      }
    }
    __syncthreads();
  }
  bf16* W2s = Xs;
  auto loadW2 = [&](int nt, int buf) {
    bf16* ws = W2s + buf * L * KS;
    for (int e = tid; e < L * 8; e += 256) {
      const int r = e >> 3, c8 = (e & 7) * 8;
      cp16(&ws[r * KS + c8], W2 + (long long)r * C + nt * 64 + c8, 16);
    }
    cp_commit();
  };
  loadW2(0, 0);
  u32 hf[L / 16][4];
#pragma unroll
  for (int n = 0; n < L / 8; n++) {
#pragma unroll
    for (int u = 0; u < 4; u++) {
      const float v = acc[n][u];
      acc[n][u] = mode == 0 ? tanhf(v) : mode == 1 ? sigmoidf_(v) : v;
    }
  }
#pragma unroll
  for (int ks = 0; ks < L / 16; ks++) {
    hf[ks][0] = pack_bf16(acc[2 * ks][0], acc[2 * ks][1]);
    hf[ks][1] = pack_bf16(acc[2 * ks][2], acc[2 * ks][3]);
    hf[ks][2] = pack_bf16(acc[2 * ks + 1][0], acc[2 * ks + 1][1]);
    hf[ks][3] = pack_bf16(acc[2 * ks + 1][2], acc[2 * ks + 1][3]);
  }
  const int ra = row0 + warp * 16 + g, rb = ra + 8;
  for (int nt = 0; nt < nk; nt++) {
    if (nt + 1 < nk) { loadW2(nt + 1, (nt + 1) & 1); cp_wait1(); } else cp_wait0();
    __syncthreads();
    const bf16* ws = W2s + (nt & 1) * L * KS;
    float o[8][4];
#pragma unroll
    for (int n = 0; n < 8; n++) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.f;
    mma_ab<L / 16>(o, hf, ws, lane);
#pragma unroll
    for (int n = 0; n < 8; n++) {
      const int col = nt * 64 + n * 8 + 2 * c4;
      if (ra < T) *(float2*)(out + (long long)ra * C + col) = make_float2(o[n][0], o[n][1]);
      if (rb < T) *(float2*)(out + (long long)rb * C + col) = make_float2(o[n][2], o[n][3]);
    }
    __syncthreads();
  }
}
extern "C" __global__ void __launch_bounds__(256, 2) lora32(float* out, const bf16* x, const bf16* W1, const bf16* W2, int T, int C, int mode) {
  lora_body<32>(out, x, W1, W2, T, C, mode);
}
extern "C" __global__ void __launch_bounds__(256, 2) lora64(float* out, const bf16* x, const bf16* W1, const bf16* W2, int T, int C, int mode) {
  lora_body<64>(out, x, W1, W2, T, C, mode);
}
extern "C" __global__ void __launch_bounds__(256, 2) lora96(float* out, const bf16* x, const bf16* W1, const bf16* W2, int T, int C, int mode) {
  lora_body<96>(out, x, W1, W2, T, C, mode);
}
extern "C" __global__ void __launch_bounds__(256, 2) lora128(float* out, const bf16* x, const bf16* W1, const bf16* W2, int T, int C, int mode) {
  lora_body<128>(out, x, W1, W2, T, C, mode);
}

// Per (token, head), one warp: decay, in-context rate, normalised key, written key, value residual.
//   w  ← exp(−e^{−½}·σ(w0 + dw))        (dw = tanh(x_w·w1)·w2, float32)
//   a  ← σ(a0 + da)                       (in place in da)
//   kk ← normalise(k ⊙ k_k)
//   k  ← k ⊙ (1 + (a − 1) ⊙ k_a)
//   v  ← layer 0: vFirst = v; else v + (vFirst − v) ⊙ σ(v0 + dv)
extern "C" __global__ void tmix_prep(float* w, float* da, float* kk, float* k, float* v, float* vFirst, const float* dv,
    const float* w0, const float* a0, const float* v0, const float* kkw, const float* ka, int T, int H, int first) {
  int warp = (blockIdx.x * blockDim.x + threadIdx.x) >> 5, lane = threadIdx.x & 31;
  if (warp >= T * H) return;
  const int t = warp / H, h = warp % H;
  const long long row = (long long)t * H * 64;
  const TmixLane o = tmix_lane(k + row, w + row, da + row, v + row, vFirst + row, dv + row, w0, a0, v0, kkw, ka, h, lane, first);
#pragma unroll
  for (int e = 0; e < 2; e++) {
    const long long idx = row + h * 64 + lane + 32 * e;
    da[idx] = o.a[e]; kk[idx] = o.kn[e]; k[idx] = o.kt[e]; w[idx] = o.w[e];
    if (first) vFirst[idx] = o.v[e]; else v[idx] = o.v[e];
  }
}

// WKV-7 recurrence. The 64 rows of a head's state are independent given the inputs, so a head is
// split over gridDim.y blocks of 16 rows (more SMs at work); 64 threads per block: row
// i = 16·blockIdx.y + tid/4, the thread holding columns 16·(tid%4) … +15 of it in registers.
// Inputs are staged in shared memory WKV_TT steps at a time (16-byte loads).
//   S ← S·diag(w) + (S·(−kk))·(kk⊙a)ᵀ + v·kᵀ ;  y = S·r
#define WKV_TT 32
// TPR threads per state row (NS = 64/TPR state values each in registers), 16 rows per block.
template <int TPR>
__device__ __forceinline__ void wkv7_body(float* y, float* state, const float* r, const float* w, const float* k,
    const float* v, const float* kk, const float* a, int T, int C) {
  constexpr int NS = 64 / TPR, NT = 16 * TPR, NV = NS / 4;
  __shared__ __align__(16) float sr[WKV_TT][64], sw[WKV_TT][64], sk[WKV_TT][64], skk[WKV_TT][64], ska[WKV_TT][64], sv[WKV_TT][16];
  int h = blockIdx.x, tid = threadIdx.x, il = tid / TPR, i = blockIdx.y * 16 + il, q = tid % TPR;
  float* S = state + (long long)h * 4096 + i * 64 + q * NS;
  float s[NS];
#pragma unroll
  for (int j = 0; j < NS; j++) s[j] = S[j];
  for (int t0 = 0; t0 < T; t0 += WKV_TT) {
    int n = min(WKV_TT, T - t0);
    __syncthreads();
    for (int e = tid; e < n * 16; e += NT) {
      int tt = e >> 4, c = (e & 15) * 4;
      long long idx = (long long)(t0 + tt) * C + h * 64 + c;
      float4 rr = *(const float4*)(r + idx), ww = *(const float4*)(w + idx), kt = *(const float4*)(k + idx);
      float4 kq = *(const float4*)(kk + idx), aa = *(const float4*)(a + idx);
      *(float4*)&sr[tt][c] = rr; *(float4*)&sw[tt][c] = ww; *(float4*)&sk[tt][c] = kt; *(float4*)&skk[tt][c] = kq;
      *(float4*)&ska[tt][c] = make_float4(kq.x * aa.x, kq.y * aa.y, kq.z * aa.z, kq.w * aa.w);
    }
    for (int e = tid; e < n * 16; e += NT) {
      int tt = e >> 4, c = e & 15;
      sv[tt][c] = v[(long long)(t0 + tt) * C + h * 64 + blockIdx.y * 16 + c];
    }
    __syncthreads();
#pragma unroll 2
    for (int tt = 0; tt < n; tt++) {
      const float4* pkk = (const float4*)&skk[tt][q * NS];
      float sa0 = 0.f, sa1 = 0.f;
#pragma unroll
      for (int j4 = 0; j4 < NV; j4++) {
        float4 z = pkk[j4];
        float part = s[4 * j4] * z.x + s[4 * j4 + 1] * z.y + s[4 * j4 + 2] * z.z + s[4 * j4 + 3] * z.w;
        if (j4 & 1) sa1 += part; else sa0 += part;
      }
      float sa = -(sa0 + sa1);
#pragma unroll
      for (int o = 1; o < TPR; o <<= 1) sa += __shfl_xor_sync(0xffffffffu, sa, o);
      float vi = sv[tt][il];
      const float4* pw = (const float4*)&sw[tt][q * NS];
      const float4* pka = (const float4*)&ska[tt][q * NS];
      const float4* pk = (const float4*)&sk[tt][q * NS];
      const float4* pr = (const float4*)&sr[tt][q * NS];
      float y0 = 0.f, y1 = 0.f;
#pragma unroll
      for (int j4 = 0; j4 < NV; j4++) {
        float4 ww = pw[j4], aa = pka[j4], kt = pk[j4], rr = pr[j4];
        s[4 * j4 + 0] = s[4 * j4 + 0] * ww.x + sa * aa.x + vi * kt.x;
        s[4 * j4 + 1] = s[4 * j4 + 1] * ww.y + sa * aa.y + vi * kt.y;
        s[4 * j4 + 2] = s[4 * j4 + 2] * ww.z + sa * aa.z + vi * kt.z;
        s[4 * j4 + 3] = s[4 * j4 + 3] * ww.w + sa * aa.w + vi * kt.w;
        y0 += s[4 * j4 + 0] * rr.x + s[4 * j4 + 1] * rr.y;
        y1 += s[4 * j4 + 2] * rr.z + s[4 * j4 + 3] * rr.w;
      }
      float yi = y0 + y1;
#pragma unroll
      for (int o = 1; o < TPR; o <<= 1) yi += __shfl_xor_sync(0xffffffffu, yi, o);
      if (q == 0) y[(long long)(t0 + tt) * C + h * 64 + i] = yi;
    }
  }
#pragma unroll
  for (int j = 0; j < NS; j++) S[j] = s[j];
}
// grid (H, 4): block y holds rows 16·y … 16·y + 15 of head x
extern "C" __global__ void __launch_bounds__(64) wkv7_seq(float* y, float* state, const float* r, const float* w, const float* k,
    const float* v, const float* kk, const float* a, int T, int C) { wkv7_body<4>(y, state, r, w, k, v, kk, a, T, C); }
extern "C" __global__ void __launch_bounds__(128) wkv7_seq8(float* y, float* state, const float* r, const float* w, const float* k,
    const float* v, const float* kk, const float* a, int T, int C) { wkv7_body<8>(y, state, r, w, k, v, kk, a, T, C); }
extern "C" __global__ void __launch_bounds__(256) wkv7_seq16(float* y, float* state, const float* r, const float* w, const float* k,
    const float* v, const float* kk, const float* a, int T, int C) { wkv7_body<16>(y, state, r, w, k, v, kk, a, T, C); }

// ---------------------------------------------------------------------------------------------
// Chunked WKV-7 (prefill). Per head, with α = −κ̂, β = κ̂⊙a, every token is
//   S_t = S_{t−1}·(diag(w_t) + α_t β_tᵀ) + v_t k̃_tᵀ,  y_t = S_t r_t,
// and the 64 rows of S evolve independently given the inputs. Over a chunk of WKV_CL tokens with
// Γ_t = w_1⊙…⊙w_t (cumulative decay, Γ_0 = 1) and u_t = S_{t−1}α_t (one value per row):
//   u_t = S_0(α_t⊙Γ_{t−1}) + Σ_{s<t} [(α_t⊙Γ_{t−1})·(β_s/Γ_s)] u_s + [(α_t⊙Γ_{t−1})·(k̃_s/Γ_s)] v_s
//   y_t = S_0(r_t⊙Γ_t)     + Σ_{s≤t} [(r_t⊙Γ_t)·(β_s/Γ_s)] u_s     + [(r_t⊙Γ_t)·(k̃_s/Γ_s)] v_s
//   S_L = S_0 diag(Γ_L) + Σ_s u_s (β_s⊙Γ_L/Γ_s)ᵀ + v_s (k̃_s⊙Γ_L/Γ_s)ᵀ
// The u's solve a unit lower-triangular L×L system: U = Wc·S_0ᵀ + M1·V with Wc, M1 state-free, so
// y = Q·S_0ᵀ + M2·V (Q = R̃ + Brb·Wc, M2 = Brb·M1 + Brk). `wkv7_chunk_prep` computes, for every
// (chunk, head) in parallel, a record of the state-free parts; `wkv7_chunk_scan` walks the chunks
// of a head in order (the only sequential part: T/WKV_CL steps). Decays lie in (0.545, 1), so over
// 16 tokens 1/Γ ≤ 1.7e4: the products (α⊙Γ_{t−1})·(β_s/Γ_s) stay exact to fp32 rounding, and
// Γ_L/Γ_s is a suffix product (≤ 1), never a quotient. Tokens past T are identity tokens
// (w = 1, everything else 0): the state passes through them unchanged.
// Record per (chunk, head), floats: [0,2048) WQt[64][32] (column p < 16: Wc[p][j], p ≥ 16: Q[p−16][j]);
// [2048,4096) BK[32][64] (rows < 16: β_s⊙Γ_L/Γ_s, rows ≥ 16: k̃_s⊙Γ_L/Γ_s); [4096,4160) Γ_L;
// [4160,4672) MT[16][32] (row s, column p < 16: M1[p][s], p ≥ 16: M2[p−16][s]). The V-dependent
// parts (U0 = M1·V, Y0 = M2·V) are formed by the scan from V, which it reads anyway: the record is
// 18.25 bytes per token and channel instead of 24.25.
#define WKV_CL 16
#define WKV_REC 4672

// Also does tmix_prep's work for its 16 tokens (one warp per token, as tmix_prep): from the raw
// projections (wd: decay LoRA output, da: rate LoRA output, k, v, dv: value-residual LoRA output) it
// forms ω, a, κ̂, k̃ and the value-mixed v, writes k̃ and v back (the bonus term and the scan read
// them) and vFirst in layer 0 (`first`), and keeps ω, a, κ̂ in shared memory only.
// 4 blocks per SM (64 registers): the block's phases are latency-bound, so occupancy is what counts.
// Both tokens' activations are loaded before either's results are stored (k and v are written in
// place, so otherwise the second token's loads wait behind the first token's stores).
extern "C" __global__ void __launch_bounds__(256, 4) wkv7_chunk_prep(float* __restrict__ rec, const float* __restrict__ r,
    const float* __restrict__ wd, const float* __restrict__ da, float* __restrict__ k, float* __restrict__ v,
    float* __restrict__ vFirst, const float* __restrict__ dv, const float* w0, const float* a0, const float* v0,
    const float* kkw, const float* ka, int T, int C, int first) {
  // rows padded to 65 floats: the (t, s) dot products read 16 different rows per warp conflict-free
  __shared__ float sA[WKV_CL][65], sB[WKV_CL][65], sK[WKV_CL][65], sR[WKV_CL][65], sW[WKV_CL][65];
  __shared__ float sAab[WKV_CL][WKV_CL], sAak[WKV_CL][WKV_CL], sBrb[WKV_CL][WKV_CL], sBrk[WKV_CL][WKV_CL];
  const int c = blockIdx.x, h = blockIdx.y, H = gridDim.y, tid = threadIdx.x, t0 = c * WKV_CL, lane = tid & 31;
  float* out = rec + ((long long)c * H + h) * WKV_REC;
  TmixIn in[2];
  float rv[2][2];
#pragma unroll
  for (int rr = 0; rr < 2; rr++) {
      const int tok = t0 + (tid >> 5) + 8 * rr;
      if (tok < T) {
        const long long row = (long long)tok * C;
        in[rr] = tmix_load(k + row, wd + row, da + row, v + row, vFirst + row, dv + row, h, lane, first);
        rv[rr][0] = r[row + h * 64 + lane]; rv[rr][1] = r[row + h * 64 + lane + 32];
      }
    }
#pragma unroll
  for (int rr = 0; rr < 2; rr++) {
    const int t = (tid >> 5) + 8 * rr, tok = t0 + t;
    if (tok < T) {  // tmix_prep's step (tmix_lane), its results kept in shared memory
      const long long row = (long long)tok * C;
      const TmixLane o = tmix_math(in[rr], w0, a0, v0, kkw, ka, h, lane, first);
#pragma unroll
      for (int e = 0; e < 2; e++) {
        const int j = lane + 32 * e;
        const long long idx = row + h * 64 + j;
        if (first) vFirst[idx] = o.v[e]; else v[idx] = o.v[e];
        k[idx] = o.kt[e];
        sW[t][j] = o.w[e]; sA[t][j] = -o.kn[e]; sB[t][j] = o.kn[e] * o.a[e]; sK[t][j] = o.kt[e]; sR[t][j] = rv[rr][e];
      }
    } else {
#pragma unroll
      for (int e = 0; e < 2; e++) {
        const int j = lane + 32 * e;
        sW[t][j] = 1.f; sA[t][j] = 0.f; sB[t][j] = 0.f; sK[t][j] = 0.f; sR[t][j] = 0.f;
      }
    }
  }
  __syncthreads();
  if (tid < 64) {
    const int j = tid;
    // suffix products Γ_L/Γ_s = w_{s+1}⋯w_L: the final-state weights of β_s and k̃_s
    float suf = 1.f;
    for (int t = WKV_CL - 1; t >= 0; t--) {
      out[2048 + t * 64 + j] = sB[t][j] * suf;
      out[2048 + (WKV_CL + t) * 64 + j] = sK[t][j] * suf;
      suf *= sW[t][j];
    }
    float g = 1.f;
    for (int t = 0; t < WKV_CL; t++) {
      sA[t][j] *= g;                 // α_t ⊙ Γ_{t−1}
      g *= sW[t][j];
      float inv = 1.f / g;
      sB[t][j] *= inv;               // β_t / Γ_t
      sK[t][j] *= inv;               // k̃_t / Γ_t
      sR[t][j] *= g;                 // r_t ⊙ Γ_t
    }
    out[4096 + j] = g;
  }
  __syncthreads();
  {
    const int t = tid >> 4, s = tid & 15;
    float aab = 0.f, aak = 0.f, brb = 0.f, brk = 0.f;
#pragma unroll 8
    for (int j = 0; j < 64; j++) {
      float at = sA[t][j], rt = sR[t][j], bs = sB[s][j], ks = sK[s][j];
      aab += at * bs; aak += at * ks; brb += rt * bs; brk += rt * ks;
    }
    sAab[t][s] = s < t ? aab : 0.f; sAak[t][s] = s < t ? aak : 0.f;
    sBrb[t][s] = s <= t ? brb : 0.f; sBrk[t][s] = s <= t ? brk : 0.f;
  }
  __syncthreads();
  if (tid < 64 + WKV_CL) {
    // column `tid` of X = [Wc | M1] = (I − Aab)⁻¹ [Ã | Aak] by forward substitution in registers, then
    // the same column of [Q | M2] = [R̃ | Brk] + Brb·X
    const bool wc = tid < 64;
    const int col = wc ? tid : tid - 64;
    float x[WKV_CL], q[WKV_CL];
#pragma unroll
    for (int t = 0; t < WKV_CL; t++) {
      float b = wc ? sA[t][col] : sAak[t][col];
#pragma unroll
      for (int s = 0; s < t; s++) b += sAab[t][s] * x[s];
      x[t] = b;
    }
#pragma unroll
    for (int t = 0; t < WKV_CL; t++) {
      float b = wc ? sR[t][col] : sBrk[t][col];
#pragma unroll
      for (int s = 0; s <= t; s++) b += sBrb[t][s] * x[s];
      q[t] = b;
    }
    float4* o = (float4*)(out + (wc ? 0 : 4160) + col * 32);
#pragma unroll
    for (int e = 0; e < 4; e++) {
      o[e] = make_float4(x[4 * e], x[4 * e + 1], x[4 * e + 2], x[4 * e + 3]);
      o[4 + e] = make_float4(q[4 * e], q[4 * e + 1], q[4 * e + 2], q[4 * e + 3]);
    }
  }
}


// R state rows of one head per block (grid (H, 64/R)), 16·R threads. The chunk records are
// staged in shared memory with cp.async (WKV_STAGES buffers, below), so later chunks' loads overlap this chunk's math.
// Phase 1: lane p of warp w computes u_p (p < 16) or y_{p−16} for rows 2w and 2w + 1; phase 2: each
// thread updates 4 state values of row tid/16 — the same two rows per warp, so the phases hand over
// by __syncwarp and a chunk has one block barrier (the record's buffer handover): the scan is a chain
// of T/16 steps whose latency the wavefront does not always hide (3 barriers per chunk: ≈ 1% slower).
// (A split-phase variant with one buffer per phase, 22.8 instead of 41.5 KB, ran 3–6% slower at 128K on an
// H200 and was dropped, 2026-12-07: docs/cuda.md.) Dynamic shared memory: model.ts wkvScanSmem (60.7 KB at R = 8).
// WKV_STAGES record buffers (3; 2 with -DWKV_STAGES=2, RWKVX_WKV_STAGES=2, for A/B): chunk c + 2's copies
// are issued while chunk c is computed, so a DRAM round trip for a record (the prep wrote them long
// before: evicted from L2) is spread over two steps of the chain instead of one. 128K prefill, H100,
// 2026-12-07: RWKV-7 176.6 / 176.2 ms against 185.0 / 189.4 with 2 buffers (docs/cuda.md).
#ifndef WKV_STAGES
#define WKV_STAGES 3
#endif
template <int R, int RW = 2>
__device__ __forceinline__ void wkv7_chunk_scan_body(float* y, float* state, const float* rec, const float* v, int T, int C) {
  // RW state rows per warp (2, or 4 for the wide layout): a warp's lane p computes u_p / y_{p−16} of all
  // its rows from one read of the record's column p, and in phase 2 each thread updates RW/2 rows × 4
  // columns; rows per warp trade shared-memory reads of the record per row against the chain's ILP
  constexpr int NT = 32 * R / RW, RQ = R / 4, NB = WKV_STAGES, RT = RW / 2;
  static_assert(NB == 2 || NB == 3, "WKV_STAGES is 2 or 3");
  static_assert(RW == 2 || RW == 4 || RW == 8, "2, 4 or 8 rows per warp");
  extern __shared__ __align__(16) float wkvScanSmem[];  // model.ts wkvScanSmem(R) bytes
  float* sRec = wkvScanSmem;                                          // [NB][WKV_REC]
  float (*sV)[WKV_CL * R] = (float (*)[WKV_CL * R])(sRec + NB * WKV_REC);  // [NB][WKV_CL·R]
  float (*sS)[64] = (float (*)[64])(sRec + NB * (WKV_REC + WKV_CL * R));  // [R][64]
  // [2·WKV_CL][LU]: the wide layouts pad a row by 4 floats so that a warp's 16-byte stores of its rows'
  // u/y (one per lane, lanes LU floats apart) hit every bank once per quarter-warp
  constexpr int LU = RW == 2 ? R : R + 4;
  float (*sUY)[LU] = (float (*)[LU])(sRec + NB * (WKV_REC + WKV_CL * R) + 64 * R);
  const int h = blockIdx.x, H = gridDim.x, g0 = blockIdx.y * R, tid = threadIdx.x;
  const int nch = (T + WKV_CL - 1) / WKV_CL;
  const int lane = tid & 31, i0 = (tid >> 5) * RW;
  // phase 2: rows ri … ri + RT − 1, columns cj … cj + 3
  const int ri = i0 + (lane >> 4) * RT, cj = (lane & 15) * 4;
  float* Sg = state + (long long)h * 4096 + (g0 + ri) * 64 + cj;
  float4 s[RT];
#pragma unroll
  for (int q = 0; q < RT; q++) {
    s[q] = *(float4*)(Sg + q * 64);
    *(float4*)&sS[ri + q][cj] = s[q];
  }
  auto issueV = [&](int c, int b) {
    for (int e = tid; e < WKV_CL * RQ; e += NT) {
      int t = e / RQ, q = (e % RQ) * 4;
      int tok = c * WKV_CL + t;
      bool in = tok < T;
      cp16(&sV[b][t * R + q], v + (long long)(in ? tok : 0) * C + h * 64 + g0 + q, in ? 16 : 0);
    }
  };
  auto recAt = [&](int c) { return rec + ((long long)c * H + h) * WKV_REC; };
  // the whole record of chunk c into buffer b
  auto issue = [&](int c, int b) {
    const float* rc = recAt(c);
    for (int e = tid; e < WKV_REC / 4; e += NT) cp16(&sRec[b * WKV_REC + e * 4], rc + e * 4, 16);
    issueV(c, b);
  };
  for (int c = 0; c < NB - 1; c++) {
    if (c < nch) issue(c, c);
    cp_commit();
  }
  for (int c = 0; c < nch; c++) {
    const int b = c % NB;
    if (NB == 3) cp_wait1(); else cp_wait0();  // chunk c is in (chunk c + 1's copies may still fly)
    __syncthreads();  // every warp is done with chunk c − 1's buffer, the one chunk c + NB − 1 takes
    if (c + NB - 1 < nch) issue(c + NB - 1, (c + NB - 1) % NB);
    cp_commit();
    {
      const float* M = sRec + b * WKV_REC;
      float a[RW][2];
#pragma unroll
      for (int r = 0; r < RW; r++) a[r][0] = a[r][1] = 0.f;
#pragma unroll 4
      for (int j = 0; j < 64; j += 4) {
        float m0 = M[(j + 0) * 32 + lane], m1 = M[(j + 1) * 32 + lane], m2 = M[(j + 2) * 32 + lane], m3 = M[(j + 3) * 32 + lane];
#pragma unroll
        for (int r = 0; r < RW; r++) {
          float4 sr = *(const float4*)&sS[i0 + r][j];
          a[r][0] += m0 * sr.x + m1 * sr.y; a[r][1] += m2 * sr.z + m3 * sr.w;
        }
      }
      // + (M1·V)[lane] (u) or (M2·V)[lane − 16] (y), for the warp's rows
      const float* MT = M + 4160;
      float e[RW];
#pragma unroll
      for (int r = 0; r < RW; r++) e[r] = 0.f;
#pragma unroll
      for (int t = 0; t < WKV_CL; t++) {
        float m = MT[t * 32 + lane];
        if (RW == 2) {
#pragma unroll
          for (int r = 0; r < RW; r++) e[r] += m * sV[b][t * R + i0 + r];
        } else {
#pragma unroll
          for (int r = 0; r < RW; r += 4) {
            const float4 vr = *(const float4*)&sV[b][t * R + i0 + r];
            e[r] += m * vr.x; e[(r + 1) % RW] += m * vr.y; e[(r + 2) % RW] += m * vr.z; e[(r + 3) % RW] += m * vr.w;
          }
        }
      }
      float o[RW];
#pragma unroll
      for (int r = 0; r < RW; r++) o[r] = (a[r][0] + a[r][1]) + e[r];
      if (RW == 2) {
        sUY[lane][i0] = o[0]; sUY[lane][i0 + 1] = o[1 % RW];
      } else {
#pragma unroll
        for (int r = 0; r < RW; r += 4) *(float4*)&sUY[lane][i0 + r] = make_float4(o[r % RW], o[(r + 1) % RW], o[(r + 2) % RW], o[(r + 3) % RW]);
      }
      if (lane >= WKV_CL) {
        const int tok = c * WKV_CL + lane - WKV_CL;
        float* yo = y + (long long)tok * C + h * 64 + g0 + i0;
        if (tok < T) {
          if (RW == 2) *(float2*)yo = make_float2(o[0], o[1]);
          else {
#pragma unroll
            for (int r = 0; r < RW; r += 4) *(float4*)(yo + r) = make_float4(o[r % RW], o[(r + 1) % RW], o[(r + 2) % RW], o[(r + 3) % RW]);
          }
        }
      }
    }
    __syncwarp();
    {
      const float* BK = sRec + b * WKV_REC + 2048;
      float4 gl = *(const float4*)&BK[2048 + cj];
#pragma unroll
      for (int q = 0; q < RT; q++) { s[q].x *= gl.x; s[q].y *= gl.y; s[q].z *= gl.z; s[q].w *= gl.w; }
#pragma unroll 4
      for (int t = 0; t < WKV_CL; t++) {
        float4 bh = *(const float4*)&BK[t * 64 + cj], kh = *(const float4*)&BK[(WKV_CL + t) * 64 + cj];
        float uq[RT], vq[RT];
        if (RT == 1) { uq[0] = sUY[t][ri]; vq[0] = sV[b][t * R + ri]; }
        else {
#pragma unroll
          for (int q = 0; q < RT; q += 2) {
            const float2 u2 = *(const float2*)&sUY[t][ri + q], v2 = *(const float2*)&sV[b][t * R + ri + q];
            uq[q] = u2.x; uq[(q + 1) % RT] = u2.y; vq[q] = v2.x; vq[(q + 1) % RT] = v2.y;
          }
        }
#pragma unroll
        for (int q = 0; q < RT; q++) {
          float u = uq[q], vv = vq[q];
          s[q].x += u * bh.x + vv * kh.x; s[q].y += u * bh.y + vv * kh.y;
          s[q].z += u * bh.z + vv * kh.z; s[q].w += u * bh.w + vv * kh.w;
        }
      }
#pragma unroll
      for (int q = 0; q < RT; q++) *(float4*)&sS[ri + q][cj] = s[q];
    }
    __syncwarp();
  }
#pragma unroll
  for (int q = 0; q < RT; q++) *(float4*)(Sg + q * 64) = s[q];
}
extern "C" __global__ void __launch_bounds__(64) wkv7_chunk_scan4(float* y, float* state, const float* rec, const float* v, int T, int C) {
  wkv7_chunk_scan_body<4>(y, state, rec, v, T, C);
}
extern "C" __global__ void __launch_bounds__(128) wkv7_chunk_scan8(float* y, float* state, const float* rec, const float* v, int T, int C) {
  wkv7_chunk_scan_body<8>(y, state, rec, v, T, C);
}
extern "C" __global__ void __launch_bounds__(256) wkv7_chunk_scan16(float* y, float* state, const float* rec, const float* v, int T, int C) {
  wkv7_chunk_scan_body<16>(y, state, rec, v, T, C);
}
// the wide layouts (RWKVX_WKV_ROWS=16w, 32w): 16 or 32 rows per block with 4 or 8 per warp, 128 threads:
// a half or a quarter of the blocks of wkv7_chunk_scan8, each of whose warps reads the record once for
// 4 or 8 rows instead of 2
extern "C" __global__ void __launch_bounds__(128) wkv7_chunk_scan16w(float* y, float* state, const float* rec, const float* v, int T, int C) {
  wkv7_chunk_scan_body<16, 4>(y, state, rec, v, T, C);
}
extern "C" __global__ void __launch_bounds__(128) wkv7_chunk_scan32w(float* y, float* state, const float* rec, const float* v, int T, int C) {
  wkv7_chunk_scan_body<32, 8>(y, state, rec, v, T, C);
}

// The same scan on tensor cores (RWKVX_WKV_ROWS=tc): one block of 4 warps per head, warp w holding state
// rows 16w … 16w + 15 as mma.sync accumulators (fp32, never in shared memory). Per chunk both phases are
// small GEMMs: [U | Y] = S·WQt + Vᵀ·MT (16 × 32 per warp, k = 80) and S ← S·diag(Γ_L) + U·Bh + Vᵀ·Kh
// (16 × 64, k = 32). Operands go through bf16 m16n8k16 as hi + lo pairs (x = hi + lo, both bf16; three
// products, lo·lo dropped): ≈ 16 bits of mantissa per operand, about 2⁻¹⁷ relative per product, against
// the 2⁻⁸ of the bf16 activations the record is built from. The diagonal decay stays an fp32 multiply.
// Rows are independent, so warps never exchange data; the block barrier is only the record handover.
// Shared copy of a record, padded so each lane's B-fragment loads (rows 2t, 2t + 1, 2t + 8, 2t + 9,
// column g) hit distinct banks: WQt [64][36], BK [32][68], Γ [64], MT [16][36], V [16 tokens][68].
#define WKV_TC_STAGE 6208
// SPLIT: the corrections lo·hi and hi·lo go to an accumulator each, added once per phase (RWKVX_WKV_ROWS=tcs):
// the scan is latency-bound, and one accumulator chains 15 dependent mma per tile in phase 1 (5 when split).
// MT: 16-row tiles per warp, 4 / MT warps (tc2: 2 warps of 32 rows read each record fragment once for both
// tiles, half the shared-memory reads of tc and twice the independent mma per warp).
// PRE (RWKVX_WKV_ROWS=tcp): the block splits each record's 36 B fragments once, a chunk ahead, into
// fragment-major bf16 pairs (WKV_TC_FRAGS u32: a lane's four words of a fragment are one 16-byte load),
// instead of every warp splitting all of them on its own; the record four buffers deep (three chunks
// ahead, so the chunk split next has landed). The same products in the same order: tc's bits.
#define WKV_TC_FRAGS 4608
template <bool SPLIT, int MT, bool PRE = false> __device__ __forceinline__ void wkv7_chunk_scantc_body(float* y, float* state, const float* rec, const float* v, int T, int C) {
  constexpr int NB = PRE ? 4 : WKV_STAGES, ST = WKV_TC_STAGE, OB = 2304, OG = 4480, OM = 4544, OV = 5120, NT = 128 / MT, LY = 16 * MT + 4;
  static_assert(NB == 2 || NB == 3 || PRE, "WKV_STAGES is 2 or 3");
  static_assert(MT == 1 || MT == 2, "1 or 2 row tiles per warp");
  extern __shared__ __align__(16) float wkvScanSmem[];  // model.ts wkvScanSmem('tc') bytes
  const int h = blockIdx.x, H = gridDim.x, tid = threadIdx.x, lane = tid & 31, g = lane >> 2, t = lane & 3;
  const int i0 = (tid >> 5) * 16 * MT, nch = (T + WKV_CL - 1) / WKV_CL;
  float* sY = wkvScanSmem + NB * ST + (tid >> 5) * 16 * LY;  // [16 tokens][LY]: this warp's y rows, staged
  uint4* sF = reinterpret_cast<uint4*>(wkvScanSmem + NB * ST + 4 * 16 * 20);  // PRE: 2 × [36 fragments][32 lanes]
  float* Sg = state + (long long)h * 4096;
  float s[MT][8][4];
#pragma unroll
  for (int m = 0; m < MT; m++)
#pragma unroll
    for (int nt = 0; nt < 8; nt++) {
      const int i = i0 + 16 * m + g;
      const float2 a = *(const float2*)&Sg[i * 64 + 8 * nt + 2 * t], b = *(const float2*)&Sg[(i + 8) * 64 + 8 * nt + 2 * t];
      s[m][nt][0] = a.x; s[m][nt][1] = a.y; s[m][nt][2] = b.x; s[m][nt][3] = b.y;
    }
  auto issue = [&](int c, int b) {
    const float* rc = rec + ((long long)c * H + h) * WKV_REC;
    float* d = wkvScanSmem + b * ST;
    for (int e = tid; e < 512; e += NT) cp16(d + (e >> 3) * 36 + (e & 7) * 4, rc + e * 4, 16);
    for (int e = tid; e < 512; e += NT) cp16(d + OB + (e >> 4) * 68 + (e & 15) * 4, rc + 2048 + e * 4, 16);
    if (tid < 16) cp16(d + OG + tid * 4, rc + 4096 + tid * 4, 16);
    for (int e = tid; e < 128; e += NT) cp16(d + OM + (e >> 3) * 36 + (e & 7) * 4, rc + 4160 + e * 4, 16);
    for (int e = tid; e < 256; e += NT) {
      const int tt = e >> 4, tok = c * WKV_CL + tt;
      const bool in = tok < T;
      cp16(d + OV + tt * 68 + (e & 15) * 4, v + (long long)(in ? tok : 0) * C + h * 64 + (e & 15) * 4, in ? 16 : 0);
    }
  };
  // B fragment f of a record: phase 1's S·WQt (f < 16: ks = f / 4, np = f % 4), Vᵀ·MT (16 … 19: np), phase 2's
  // U·Bh and Vᵀ·Kh (20 … 35: nt = (f − 20) / 2, Kh when odd), for lane (gl, tl)
  auto bfrag_at = [&](const float* M, int f, int gl, int tl, u32& h0, u32& h1, u32& l0, u32& l1) {
    if (f < 16) bfrag_split(M + (16 * (f >> 2) + 2 * tl) * 36 + 8 * (f & 3) + gl, 36, h0, h1, l0, l1);
    else if (f < 20) bfrag_split(M + OM + (2 * tl) * 36 + 8 * (f - 16) + gl, 36, h0, h1, l0, l1);
    else bfrag_split(M + OB + (2 * tl + 16 * ((f - 20) & 1)) * 68 + 8 * ((f - 20) >> 1) + gl, 68, h0, h1, l0, l1);
  };
  // chunk c's record (buffer c % NB) split into fragment buffer c % 2, by the whole block
  auto presplit = [&](int c) {
    const float* M = wkvScanSmem + (c % NB) * ST;
    uint4* F = sF + (c & 1) * (WKV_TC_FRAGS / 4);
    static_assert(36 * 32 % NT == 0, "whole fragments per thread");
#pragma unroll  // every load in flight at once: this runs on the chunk's latency chain
    for (int k = 0; k < 36 * 32 / NT; k++) {
      const int e = tid + k * NT, ln = e & 31;
      u32 h0, h1, l0, l1;
      bfrag_at(M, e >> 5, ln >> 2, ln & 3, h0, h1, l0, l1);
      F[e] = make_uint4(h0, h1, l0, l1);
    }
  };
  for (int c = 0; c < NB - 1; c++) {
    if (c < nch) issue(c, c);
    cp_commit();
  }
  if (PRE) {
    cp_wait2();
    __syncthreads();
    presplit(0);
  }
  for (int c = 0; c < nch; c++) {
    const int b = c % NB;
    if (NB == 3 || PRE) cp_wait1(); else cp_wait0();
    __syncthreads();
    if (c + NB - 1 < nch) issue(c + NB - 1, (c + NB - 1) % NB);
    cp_commit();
    const float* M = wkvScanSmem + b * ST;
    const uint4* F = sF + (c & 1) * (WKV_TC_FRAGS / 4) + lane;
    auto bfrag = [&](int f, u32& h0, u32& h1, u32& l0, u32& l1) {
      if (PRE) {
        const uint4 x = F[f * 32];
        h0 = x.x; h1 = x.y; l0 = x.z; l1 = x.w;
      } else bfrag_at(M, f, g, t, h0, h1, l0, l1);
    };
    // Vᵀ (rows i, columns tokens) as an A fragment: element [i][tt] = V[tt][i]
    u32 vh[MT][4], vl[MT][4];
#pragma unroll
    for (int m = 0; m < MT; m++) afrag_split_t(M + OV + i0 + 16 * m + g, 68, vh[m], vl[m]);
    // phase 1: o = [U | Y] (columns p < 16: u_p, p ≥ 16: y_{p−16}) = S·WQt + Vᵀ·MT
    float o[MT][4][4], oc[MT][4][4], od[MT][4][4];
#pragma unroll
    for (int m = 0; m < MT; m++)
#pragma unroll
      for (int np = 0; np < 4; np++)
#pragma unroll
        for (int r = 0; r < 4; r++) o[m][np][r] = oc[m][np][r] = od[m][np][r] = 0.f;
#pragma unroll
    for (int ks = 0; ks < 4; ks++) {
      u32 ah[MT][4], al[MT][4];  // S columns 16ks … 16ks + 15
#pragma unroll
      for (int m = 0; m < MT; m++) afrag_split(s[m][2 * ks], s[m][2 * ks + 1], ah[m], al[m]);
#pragma unroll
      for (int np = 0; np < 4; np++) {
        u32 h0, h1, l0, l1;
        bfrag(4 * ks + np, h0, h1, l0, l1);
#pragma unroll
        for (int m = 0; m < MT; m++)
          mma16816x3s(o[m][np], SPLIT ? oc[m][np] : o[m][np], SPLIT ? od[m][np] : o[m][np], ah[m], al[m], h0, h1, l0, l1);
      }
    }
#pragma unroll
    for (int np = 0; np < 4; np++) {
      u32 h0, h1, l0, l1;
      bfrag(16 + np, h0, h1, l0, l1);
#pragma unroll
      for (int m = 0; m < MT; m++) {
        mma16816x3s(o[m][np], SPLIT ? oc[m][np] : o[m][np], SPLIT ? od[m][np] : o[m][np], vh[m], vl[m], h0, h1, l0, l1);
        if (SPLIT)
#pragma unroll
          for (int r = 0; r < 4; r++) o[m][np][r] += oc[m][np][r] + od[m][np][r];
      }
    }
    tc_write_y<MT>(y + (long long)c * WKV_CL * C + h * 64 + i0, C, T - c * WKV_CL, sY, o);
    // phase 2: S ← S·diag(Γ_L) + U·Bh + Vᵀ·Kh; U (tiles 0, 1) is the A fragment as it stands
    u32 uh[MT][4], ul[MT][4];
#pragma unroll
    for (int m = 0; m < MT; m++) afrag_split(o[m][0], o[m][1], uh[m], ul[m]);
#pragma unroll
    for (int nt = 0; nt < 8; nt++) {
      const float2 gm = *(const float2*)&M[OG + 8 * nt + 2 * t];
      u32 h0, h1, l0, l1, k0, k1, j0, j1;
      bfrag(20 + 2 * nt, h0, h1, l0, l1);
      bfrag(21 + 2 * nt, k0, k1, j0, j1);
#pragma unroll
      for (int m = 0; m < MT; m++) {
        float* sm = s[m][nt];
        sm[0] *= gm.x; sm[1] *= gm.y; sm[2] *= gm.x; sm[3] *= gm.y;
        float e[4] = {0.f, 0.f, 0.f, 0.f}, f[4] = {0.f, 0.f, 0.f, 0.f};
        float *ec = SPLIT ? e : sm, *fc = SPLIT ? f : sm;
        mma16816x3s(sm, ec, fc, uh[m], ul[m], h0, h1, l0, l1);
        mma16816x3s(sm, ec, fc, vh[m], vl[m], k0, k1, j0, j1);
        if (SPLIT)
#pragma unroll
          for (int r = 0; r < 4; r++) sm[r] += e[r] + f[r];
      }
    }
    // the next chunk's fragments while this chunk's last mma are in flight (their results are read only
    // after the next barrier)
    if (PRE && c + 1 < nch) presplit(c + 1);
    __syncwarp();
  }
#pragma unroll
  for (int m = 0; m < MT; m++) tc_store_rows(Sg, s[m], i0 + 16 * m);
}
extern "C" __global__ void __launch_bounds__(128) wkv7_chunk_scantc(float* y, float* state, const float* rec, const float* v, int T, int C) {
  wkv7_chunk_scantc_body<false, 1>(y, state, rec, v, T, C);
}
extern "C" __global__ void __launch_bounds__(128) wkv7_chunk_scantcs(float* y, float* state, const float* rec, const float* v, int T, int C) {
  wkv7_chunk_scantc_body<true, 1>(y, state, rec, v, T, C);
}
extern "C" __global__ void __launch_bounds__(128) wkv7_chunk_scantcp(float* y, float* state, const float* rec, const float* v, int T, int C) {
  wkv7_chunk_scantc_body<false, 1, true>(y, state, rec, v, T, C);
}
extern "C" __global__ void __launch_bounds__(64) wkv7_chunk_scantc2(float* y, float* state, const float* rec, const float* v, int T, int C) {
  wkv7_chunk_scantc_body<false, 2>(y, state, rec, v, T, C);
}
extern "C" __global__ void __launch_bounds__(64) wkv7_chunk_scantc2s(float* y, float* state, const float* rec, const float* v, int T, int C) {
  wkv7_chunk_scantc_body<true, 2>(y, state, rec, v, T, C);
}

// GroupNorm per head (eps 64e-5) + bonus (Σ r⊙k⊙r_k)·v, times the gate; bf16 out. One warp per (t, head).
extern "C" __global__ void gn_bonus_gate(bf16* out, const float* y, const float* r, const float* k, const float* v, const float* g,
    const float* lw, const float* lb, const float* rk, int T, int H) {
  int warp = (blockIdx.x * blockDim.x + threadIdx.x) >> 5, lane = threadIdx.x & 31;
  if (warp >= T * H) return;
  int t = warp / H, h = warp % H, C = H * 64;
  long long base = (long long)t * C + h * 64;
  float e0 = y[base + lane], e1 = y[base + lane + 32];
  float mean = warp_sum(e0 + e1) * (1.f / 64.f);
  float d0 = e0 - mean, d1 = e1 - mean;
  float inv = rsqrtf(warp_sum(d0 * d0 + d1 * d1) * (1.f / 64.f) + 64e-5f);
  int c0 = h * 64 + lane, c1 = c0 + 32;
  float bs = warp_sum(r[base + lane] * k[base + lane] * rk[c0] + r[base + lane + 32] * k[base + lane + 32] * rk[c1]);
  out[base + lane] = f2bf((d0 * inv * lw[c0] + lb[c0] + bs * v[base + lane]) * g[base + lane]);
  out[base + lane + 32] = f2bf((d1 * inv * lw[c1] + lb[c1] + bs * v[base + lane + 32]) * g[base + lane + 32]);
}

// Mean key of chunks [first, first + gridDim.x): means[c, :] = mean of K rows c·B … c·B + B − 1 (bf16 → f32)
extern "C" __global__ void chunk_means(float* means, const bf16* K, int C, int B, int first) {
  int c = first + blockIdx.x;
  int col = blockIdx.y * blockDim.x + threadIdx.x;
  if (col >= C) return;
  means[(long long)c * C + col] = chunk_mean_col(K + (long long)c * B * C + col, C, B);
}

#define MAXSEL 8
#include "decode-attn.cuh"
#include "topk.cuh"
// Top-nSel chunk selection by score q·mean(K_chunk) (float32), best first, ties to the lower index.
// One warp per (t, head). nFixed < 0: query t may choose among its complete past chunks (P+t)/B
// (moba); else among nFixed chunks with the score summed over all heads (official decoding), the
// choice written for every head. sel[t, h, s] = chunk index or −1.
// scores (optional, moba only): precomputed q·mean [T, H, nScore] by chunk_scores (bitwise the same
// sums). dyn (optional): P = dyn[1] (a captured decode step).
extern "C" __global__ void select_chunks(int* sel, const float* q, const float* means, const float* scores, const int* dyn,
    int T, int H, int P, int B, int nSel, int nFixed, int nScore) {
  int warp = (blockIdx.x * blockDim.x + threadIdx.x) >> 5, lane = threadIdx.x & 31;
  if (dyn) P = dyn[1];
  int together = nFixed >= 0;
  int rows = together ? T : T * H;
  if (warp >= rows) return;
  int t = together ? warp : warp / H, h = together ? 0 : warp % H, C = H * 64;
  int nAvail = together ? nFixed : (P + t) / B;
  int off = together ? 0 : h * 64, len = together ? C : 64;
  const float* qq = q + (long long)t * C + off;
  float bs[MAXSEL]; int bi[MAXSEL];
  topk_init(bs, bi);
  for (int j = lane; j < nAvail; j += 32) {
    float sc = 0.f;
    if (scores) sc = scores[((long long)t * H + h) * nScore + j];
    else {
      const float* m = means + (long long)j * C + off;
      for (int d = 0; d < 64; d++) sc = fmaf(qq[d], m[d], sc);
      for (int d = 64; d < len; d++) sc = fmaf(qq[d], m[d], sc);
    }
    topk_insert(bs, bi, sc, j, nSel);
  }
  int outIdx[MAXSEL];
  topk_merge(bs, bi, nSel, outIdx);
  if (lane == 0) {
    if (together) {
      for (int hh = 0; hh < H; hh++)
        for (int s = 0; s < MAXSEL; s++) sel[((long long)t * H + hh) * MAXSEL + s] = outIdx[s];
    } else {
      for (int s = 0; s < MAXSEL; s++) sel[((long long)t * H + h) * MAXSEL + s] = outIdx[s];
    }
  }
}

// moba prefill's chunk choice in one pass: per (64-query tile, head) the scores q·mean for every complete
// past chunk of each query, tiles of 64 chunks in shared memory (both operands stored d-major, so a thread
// reads 4 queries and 4 chunks per 16-byte load), each thread a 4 × 4 block of fmaf chains in d order (the
// bits of select_chunks and dec_scores), its best nSel per query kept as it goes; the 16 threads that
// share a query then merge (topk_merge over 16 lanes): the same choices as select_chunks, no scores in
// memory. 256 threads: thread = (query group qg: 4 queries, chunk group cg: 4 chunks of each tile).
#define CSEL_S 68
extern "C" __global__ void __launch_bounds__(256) select_chunks_tiled(int* sel, const float* q, const float* means,
    int T, int H, int P, int B, int nSel) {
  __shared__ __align__(16) float qs[64 * CSEL_S];
  __shared__ __align__(16) float ms[64 * CSEL_S];
  const int C = H * 64, t0 = blockIdx.x * 64, h = blockIdx.y, tid = threadIdx.x;
  const int qg = tid >> 4, cg = tid & 15;
  for (int e = tid; e < 64 * 64; e += 256) {
    const int r = e >> 6, d = e & 63;
    qs[d * CSEL_S + r] = t0 + r < T ? q[(long long)(t0 + r) * C + h * 64 + d] : 0.f;
  }
  const int nMax = (P + min(t0 + 63, T - 1)) / B;
  int avail[4];
#pragma unroll
  for (int i = 0; i < 4; i++) { const int t = t0 + 4 * qg + i; avail[i] = t < T ? (P + t) / B : 0; }
  float bs[4][MAXSEL]; int bi[4][MAXSEL];
#pragma unroll
  for (int i = 0; i < 4; i++) topk_init(bs[i], bi[i]);
  for (int j0 = 0; j0 < nMax; j0 += 64) {
    __syncthreads();
    for (int e = tid; e < 64 * 64; e += 256) {
      const int r = e >> 6, d = e & 63;
      ms[d * CSEL_S + r] = j0 + r < nMax ? means[(long long)(j0 + r) * C + h * 64 + d] : 0.f;
    }
    __syncthreads();
    float acc[4][4];
#pragma unroll
    for (int i = 0; i < 4; i++)
#pragma unroll
      for (int j = 0; j < 4; j++) acc[i][j] = 0.f;
#pragma unroll 8
    for (int d = 0; d < 64; d++) {
      const float4 a = *(const float4*)&qs[d * CSEL_S + 4 * qg], b = *(const float4*)&ms[d * CSEL_S + 4 * cg];
      const float av[4] = {a.x, a.y, a.z, a.w}, bv[4] = {b.x, b.y, b.z, b.w};
#pragma unroll
      for (int i = 0; i < 4; i++)
#pragma unroll
        for (int j = 0; j < 4; j++) acc[i][j] = fmaf(av[i], bv[j], acc[i][j]);
    }
#pragma unroll
    for (int i = 0; i < 4; i++)
#pragma unroll
      for (int j = 0; j < 4; j++) {
        const int jj = j0 + 4 * cg + j;
        if (jj < avail[i]) topk_insert(bs[i], bi[i], acc[i][j], jj, nSel);
      }
  }
#pragma unroll
  for (int i = 0; i < 4; i++) {
    int outIdx[MAXSEL];
    topk_merge<16>(bs[i], bi[i], nSel, outIdx);
    const int t = t0 + 4 * qg + i;
    if (cg == 0 && t < T)
      for (int s = 0; s < MAXSEL; s++) sel[((long long)t * H + h) * MAXSEL + s] = outIdx[s];
  }
}

// ---------------------------------------------------------------------------------------------
// Sparse attention, FlashAttention-style with bf16 tensor-core MMA (mma.sync m16n8k16).
// One block of 4 warps per (64-query tile, head); each warp owns 16 query rows.
// Query t (absolute position p = P + t) sees key positions kp ≤ p with kp ≥ ws(t) (its window),
// or in a chunk listed in sel[t, h, :]. ws(t) by mode: 0 moba: ⌊p/B⌋·B; 1 dense: 0;
// 2 official prefill: P + ⌊t/B⌋·B; 3 official decode: wsConst.
// The keys visited are, chunk by chunk (chunks of B), those of chunks selected by any query of the
// tile and those at or after the tile's smallest window start; the mask makes the result exact.
// partO (optional): instead of bf16 out, the normalised output (fp32) and its log2-sum-exp go to
// slot 0 of partO [T, H, nSlot, 64] / partL [T, H, nSlot] (moba prefill: own chunk only, merged later).
extern "C" __global__ void __launch_bounds__(128) attention(bf16* out, const float* q, const bf16* K, const bf16* V, const int* sel,
    float* partO, float* partL, int T, int H, int P, int B, int nSel, int mode, int wsConst, int nSlot, float scaleLog2) {
  __shared__ __align__(16) bf16 Ks[64 * KS];
  __shared__ __align__(16) bf16 Vs[64 * KS];
  __shared__ int selS[64][MAXSEL];
  extern __shared__ u32 bitmap[];
  const int C = H * 64;
  const int h = blockIdx.y, t0 = blockIdx.x * 64;
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, g = lane >> 2, c4 = lane & 3;
  const int tLast = min(t0 + 63, T - 1);
  const int pLast = P + tLast;
  const int chunkLast = pLast / B;
  const int minWs = window_start(mode, t0, P, B, wsConst);
  const int chunkWs = minWs / B;
  const int nWords = chunkLast / 32 + 1;
  for (int i = tid; i < nWords; i += 128) bitmap[i] = 0u;
  __syncthreads();
  if (tid < 64) {
    int t = t0 + tid;
    for (int s = 0; s < MAXSEL; s++) {
      int j = (t < T && s < nSel && sel) ? sel[((long long)t * H + h) * MAXSEL + s] : -1;
      selS[tid][s] = j;
      if (j >= 0) atomicOr(&bitmap[j >> 5], 1u << (j & 31));
    }
  }
  __syncthreads();

  // this thread's two query rows
  const int ra = warp * 16 + g, rb = ra + 8;
  const int ta = t0 + ra, tb = t0 + rb;
  const int pa = P + ta, pb = P + tb;
  const int wsa = window_start(mode, ta, P, B, wsConst), wsb = window_start(mode, tb, P, B, wsConst);
  u32 qf[4][4];
  load_q_frag(qf, ta < T ? q + (long long)ta * C + h * 64 : nullptr, tb < T ? q + (long long)tb * C + h * 64 : nullptr, c4);
  float o[8][4];
#pragma unroll
  for (int n = 0; n < 8; n++) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.f;
  float ma = -INFINITY, mb = -INFINITY, la = 0.f, lb = 0.f;

  for (int j = 0; j <= chunkLast; j++) {
    bool inBm = (bitmap[j >> 5] >> (j & 31)) & 1u;
    if (!inBm && j < chunkWs) continue;
    int start = inBm ? j * B : max(j * B, minWs);
    int end = min((j + 1) * B, pLast + 1);
    bool sa = false, sb = false;
#pragma unroll
    for (int s = 0; s < MAXSEL; s++) { sa |= selS[ra][s] == j; sb |= selS[rb][s] == j; }
    for (int kt = start; kt < end; kt += 64) {
      __syncthreads();
      load_kv_tile(Ks, Vs, K, V, kt, end, C, h, tid);
      cp_wait0();
      __syncthreads();
      attn_tile(Ks, Vs, qf, o, ma, mb, la, lb, scaleLog2, lane, [&](int col, int row) {
        int kp = kt + col;
        return row == 0 ? kp < end && kp <= pa && (kp >= wsa || sa) : kp < end && kp <= pb && (kp >= wsb || sb);
      });
    }
  }
  la += __shfl_xor_sync(0xffffffffu, la, 1);
  la += __shfl_xor_sync(0xffffffffu, la, 2);
  lb += __shfl_xor_sync(0xffffffffu, lb, 1);
  lb += __shfl_xor_sync(0xffffffffu, lb, 2);
  float ia = la > 0.f ? 1.f / la : 0.f, ib = lb > 0.f ? 1.f / lb : 0.f;
  if (partO) {
    long long ba = ((long long)ta * H + h) * nSlot, bb = ((long long)tb * H + h) * nSlot;
#pragma unroll
    for (int n = 0; n < 8; n++) {
      int d = n * 8 + 2 * c4;
      if (ta < T) *(float2*)(partO + ba * 64 + d) = make_float2(o[n][0] * ia, o[n][1] * ia);
      if (tb < T) *(float2*)(partO + bb * 64 + d) = make_float2(o[n][2] * ib, o[n][3] * ib);
    }
    if (c4 == 0) {
      if (ta < T) partL[ba] = la > 0.f ? ma + log2f(la) : -INFINITY;
      if (tb < T) partL[bb] = lb > 0.f ? mb + log2f(lb) : -INFINITY;
    }
    return;
  }
#pragma unroll
  for (int n = 0; n < 8; n++) {
    int d = h * 64 + n * 8 + 2 * c4;
    if (ta < T) *(u32*)(out + (long long)ta * C + d) = pack_bf16(o[n][0] * ia, o[n][1] * ia);
    if (tb < T) *(u32*)(out + (long long)tb * C + d) = pack_bf16(o[n][2] * ib, o[n][3] * ib);
  }
}

// ---------------------------------------------------------------------------------------------
// moba prefill by (query group, chunk) pairs. The own chunk is the `attention` kernel above with
// nSel 0 writing slot 0 of partO/partL; each selected chunk j of query t adds slot s + 1 through the
// lists below (queries of head h that chose j, 64 per block); moba_merge combines the slots.

// scores[t, h, j] = q_t,h · mean_j,h for j < nC (the same fmaf order as select_chunks: equal bits)
#define CS_J 64
extern "C" __global__ void __launch_bounds__(256) chunk_scores(float* scores, const float* q, const float* means, int T, int H, int nC) {
  __shared__ float qs[64][65];
  __shared__ float ms[CS_J][65];
  const int C = H * 64, t0 = blockIdx.x * 64, h = blockIdx.y, j0 = blockIdx.z * CS_J, tid = threadIdx.x;
  for (int e = tid; e < 64 * 64; e += 256) {
    int r = e >> 6, d = e & 63;
    qs[r][d] = t0 + r < T ? q[(long long)(t0 + r) * C + h * 64 + d] : 0.f;
  }
  for (int e = tid; e < CS_J * 64; e += 256) {
    int r = e >> 6, d = e & 63;
    ms[r][d] = j0 + r < nC ? means[(long long)(j0 + r) * C + h * 64 + d] : 0.f;
  }
  __syncthreads();
  const int tq = tid & 63, g = tid >> 6, t = t0 + tq;
  for (int i = 0; i < CS_J / 4; i++) {
    int jl = g + 4 * i, j = j0 + jl;
    float sc = 0.f;
#pragma unroll 16
    for (int d = 0; d < 64; d++) sc = fmaf(qs[tq][d], ms[jl][d], sc);
    if (t < T && j < nC) scores[((long long)t * H + h) * nC + j] = sc;
  }
}

// cnt[h, j] += number of (t, s) with sel[t, h, s] = j
extern "C" __global__ void moba_count(int* cnt, const int* sel, int T, int H, int nSel, int nC) {
  long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= (long long)T * H * nSel) return;
  int s = (int)(i % nSel); long long th = i / nSel; int h = (int)(th % H);
  int j = sel[th * MAXSEL + s];
  if (j >= 0) atomicAdd(&cnt[h * nC + j], 1);
}

// exclusive scans of cnt (→ off) and of ⌈cnt/64⌉ (→ tileOff), n + 1 entries each; one block of 1024
extern "C" __global__ void __launch_bounds__(1024) moba_scan(int* off, int* tileOff, const int* cnt, int n) {
  __shared__ int sa[1024], sb[1024];
  int tid = threadIdx.x, per = (n + 1023) / 1024, beg = min(n, tid * per), end = min(n, beg + per);
  int a = 0, b = 0;
  for (int i = beg; i < end; i++) { a += cnt[i]; b += (cnt[i] + 63) >> 6; }
  sa[tid] = a; sb[tid] = b;
  __syncthreads();
  for (int o = 1; o < 1024; o <<= 1) {
    int va = tid >= o ? sa[tid - o] : 0, vb = tid >= o ? sb[tid - o] : 0;
    __syncthreads();
    sa[tid] += va; sb[tid] += vb;
    __syncthreads();
  }
  int ra = sa[tid] - a, rb = sb[tid] - b;
  for (int i = beg; i < end; i++) { off[i] = ra; tileOff[i] = rb; ra += cnt[i]; rb += (cnt[i] + 63) >> 6; }
  if (tid == 1023) { off[n] = sa[1023]; tileOff[n] = sb[1023]; }
}

// list[off[h, j] + k] = t·MAXSEL + s for the (t, s) with sel[t, h, s] = j (order within a list: any)
extern "C" __global__ void moba_scatter(int* list, int* fill, const int* off, const int* sel, int T, int H, int nSel, int nC) {
  long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= (long long)T * H * nSel) return;
  int s = (int)(i % nSel); long long th = i / nSel; int h = (int)(th % H); int t = (int)(th / H);
  int j = sel[th * MAXSEL + s];
  if (j < 0) return;
  int k = atomicAdd(&fill[h * nC + j], 1);
  list[off[h * nC + j] + k] = t * MAXSEL + s;
}

// One block of 4 warps per 64 queries of one (head, chunk) list: attention over the whole chunk
// (every key is in the past of every listed query), normalised output and log2-sum-exp to slot s + 1.
extern "C" __global__ void __launch_bounds__(128) moba_attn(float* partO, float* partL, const float* q, const bf16* K, const bf16* V,
    const int* list, const int* off, const int* tileOff, int H, int nC, int B, int nSlot, float scaleLog2) {
  __shared__ __align__(16) bf16 Ks[2][64 * KS];
  __shared__ __align__(16) bf16 Vs[2][64 * KS];
  const int nPairs = H * nC, b = blockIdx.x;
  if (b >= tileOff[nPairs]) return;
  int lo = 0, hi = nPairs - 1;
  while (lo < hi) { int mid = (lo + hi) >> 1; if (tileOff[mid + 1] > b) hi = mid; else lo = mid + 1; }
  const int pair = lo, h = pair / nC, j = pair % nC, tile = b - tileOff[pair];
  const int count = off[pair + 1] - off[pair];
  const int C = H * 64;
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, g = lane >> 2, c4 = lane & 3;
  const int ra = tile * 64 + warp * 16 + g, rb = ra + 8;
  const int ea = ra < count ? list[off[pair] + ra] : -1, eb = rb < count ? list[off[pair] + rb] : -1;
  const int ta = ea >= 0 ? ea / MAXSEL : 0, tb = eb >= 0 ? eb / MAXSEL : 0;
  u32 qf[4][4];
  load_q_frag(qf, ea >= 0 ? q + (long long)ta * C + h * 64 : nullptr, eb >= 0 ? q + (long long)tb * C + h * 64 : nullptr, c4);
  float o[8][4];
#pragma unroll
  for (int n = 0; n < 8; n++) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.f;
  float ma = -INFINITY, mb = -INFINITY, la = 0.f, lb = 0.f;
  // double-buffered: the next tile's cp.async loads overlap this tile's math
  const int start = j * B, end = (j + 1) * B, nTiles = (B + 63) / 64;
  load_kv_tile(Ks[0], Vs[0], K, V, start, end, C, h, tid);
  for (int i = 0; i < nTiles; i++) {
    if (i + 1 < nTiles) { load_kv_tile(Ks[(i + 1) & 1], Vs[(i + 1) & 1], K, V, start + (i + 1) * 64, end, C, h, tid); cp_wait1(); }
    else cp_wait0();
    __syncthreads();
    const int kt = start + i * 64;
    attn_tile(Ks[i & 1], Vs[i & 1], qf, o, ma, mb, la, lb, scaleLog2, lane, [&](int col, int) { return kt + col < end; });
    __syncthreads();
  }
  la += __shfl_xor_sync(0xffffffffu, la, 1);
  la += __shfl_xor_sync(0xffffffffu, la, 2);
  lb += __shfl_xor_sync(0xffffffffu, lb, 1);
  lb += __shfl_xor_sync(0xffffffffu, lb, 2);
  float ia = la > 0.f ? 1.f / la : 0.f, ib = lb > 0.f ? 1.f / lb : 0.f;
  long long ba = ((long long)ta * H + h) * nSlot + (ea % MAXSEL) + 1, bb = ((long long)tb * H + h) * nSlot + (eb % MAXSEL) + 1;
#pragma unroll
  for (int n = 0; n < 8; n++) {
    int d = n * 8 + 2 * c4;
    if (ea >= 0) *(float2*)(partO + ba * 64 + d) = make_float2(o[n][0] * ia, o[n][1] * ia);
    if (eb >= 0) *(float2*)(partO + bb * 64 + d) = make_float2(o[n][2] * ib, o[n][3] * ib);
  }
  if (c4 == 0) {
    if (ea >= 0) partL[ba] = la > 0.f ? ma + log2f(la) : -INFINITY;
    if (eb >= 0) partL[bb] = lb > 0.f ? mb + log2f(lb) : -INFINITY;
  }
}

// out[t, h] = Σ_slots 2^(L_s − M)·O_s / Σ 2^(L_s − M) over slot 0 and the slots whose chunk exists; bf16.
// One warp per (t, head), two dims per lane.
extern "C" __global__ void moba_merge(bf16* out, const float* partO, const float* partL, const int* sel, int T, int H, int nSel) {
  int warp = (blockIdx.x * blockDim.x + threadIdx.x) >> 5, lane = threadIdx.x & 31;
  if (warp >= T * H) return;
  const int nSlot = nSel + 1;
  const long long base = (long long)warp * nSlot;
  float L[MAXSEL + 1];
  float M = -INFINITY;
#pragma unroll
  for (int s = 0; s <= MAXSEL; s++) {
    bool v = s < nSlot && (s == 0 || sel[(long long)warp * MAXSEL + s - 1] >= 0);
    L[s] = v ? partL[base + s] : -INFINITY;
    M = fmaxf(M, L[s]);
  }
  float wsum = 0.f, o0 = 0.f, o1 = 0.f;
#pragma unroll
  for (int s = 0; s <= MAXSEL; s++) {
    if (L[s] == -INFINITY) continue;
    float w = exp2f(L[s] - M);
    float2 v = *(const float2*)(partO + (base + s) * 64 + 2 * lane);
    wsum += w; o0 += w * v.x; o1 += w * v.y;
  }
  float inv = wsum > 0.f ? 1.f / wsum : 0.f;
  int t = warp / H, h = warp % H;
  *(u32*)(out + (long long)t * H * 64 + h * 64 + 2 * lane) = pack_bf16(o0 * inv, o1 * inv);
}

// ---------------------------------------------------------------------------------------------
// Decoding one token (moba) inside a CUDA graph: the position P is read from dyn[1] on the device.

// K, V rows of the new token into the caches at row P
extern "C" __global__ void kv_append(bf16* K, bf16* V, const bf16* kn, const bf16* vn, const int* dyn, int C) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  long long P = dyn[1];
  if (i < C) { K[P * C + i] = kn[i]; V[P * C + i] = vn[i]; }
}

// the chunk that the new token completes (if it completes one): its mean key
extern "C" __global__ void chunk_means_dyn(float* means, const bf16* K, int C, int B, const int* dyn) {
  int len = dyn[1] + 1;
  if (len % B) return;
  int c = len / B - 1;
  int col = blockIdx.x * blockDim.x + threadIdx.x;
  if (col >= C) return;
  means[(long long)c * C + col] = chunk_mean_col(K + (long long)c * B * C + col, C, B);
}

// Split-K decode attention for the cuBLAS step (decode-attn.cuh): the partials, then attn_decode_combine.
extern "C" __global__ void __launch_bounds__(128) attn_decode(float* part, const float* q, const bf16* K, const bf16* V, const int* sel,
    const int* dyn, int H, int B, int nSplit, float scaleLog2) {
  __shared__ DecAttnSmem sm;
  dec_attn_partial(sm, part, q, K, V, sel, dyn[1], H, B, nSplit, scaleLog2);
}

// out[h, :] = combination of the nBlk partials of head h (bf16). One block of 64 threads per head.
extern "C" __global__ void attn_decode_combine(bf16* out, const float* part, int H, int nBlk) {
  const int h = blockIdx.x, d = threadIdx.x;
  out[h * 64 + d] = f2bf(dec_combine(part + (long long)h * nBlk * 66, nBlk, d));
}

// decode scores: scores[h, j] = q_h · mean_j,h for j < P/B (the fmaf order of chunk_scores); one thread each
extern "C" __global__ void dec_scores(float* scores, const float* q, const float* means, const int* dyn, int H, int B, int cap) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  int h = i / cap, j = i % cap;
  if (h >= H || j >= dyn[1] / B) return;
  const int C = H * 64;
  const float* m = means + (long long)j * C + h * 64;
  const float* qq = q + h * 64;
  float sc = 0.f;
#pragma unroll 16
  for (int d = 0; d < 64; d++) sc = fmaf(qq[d], m[d], sc);
  scores[h * cap + j] = sc;
}
