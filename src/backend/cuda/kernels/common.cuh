// Device helpers shared by every kernel module. module-cache.ts inlines this file where a .cu says
// #include "common.cuh" (NVRTC then needs no include path); nvcc finds it beside the sources.

#ifndef INFINITY
#define INFINITY __int_as_float(0x7f800000)
#endif

typedef unsigned short bf16;  // raw bfloat16 bits (no cuda_bf16.h: NVRTC runs without CUDA headers)
typedef unsigned int u32;

__device__ __forceinline__ float bf2f(bf16 x) { return __uint_as_float(((u32)x) << 16); }
// round to nearest even; NaN stays a (quiet) NaN
__device__ __forceinline__ bf16 f2bf(float f) {
  u32 u = __float_as_uint(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return (bf16)0x7fc0;
  u += 0x7fffu + ((u >> 16) & 1u);
  return (bf16)(u >> 16);
}
// two floats → packed bf16x2, `lo` in the low half
__device__ __forceinline__ u32 pack_bf16(float lo, float hi) {
#ifdef RWKVX_EMU
  return (u32)f2bf(lo) | ((u32)f2bf(hi) << 16);
#else
  u32 r;
  asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
  return r;
#endif
}
__device__ __forceinline__ float sigmoidf_(float x) { return 1.f / (1.f + expf(-x)); }

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
// sum over the block (blockDim.x a multiple of 32, ≤ 1024); every thread gets the result. One
// reduction order everywhere, so LayerNorm statistics agree between prefill, decode and training.
__device__ float block_sum(float v, float* sh) {
  v = warp_sum(v);
  int w = threadIdx.x >> 5, l = threadIdx.x & 31, nw = blockDim.x >> 5;
  if (l == 0) sh[w] = v;
  __syncthreads();
  float s = 0.f;
  for (int i = 0; i < nw; i++) s += sh[i];
  __syncthreads();
  return s;
}

// LayerNorm statistics (eps 1e-5) of one row of C by the whole block, in block_sum's order (training's
// LayerNorm kernels; rounded as written, see train.cu's ln_xhat)
__device__ __forceinline__ void ln_stats_block(const float* x, int C, float* sh, float& mean, float& inv) {
  float s = 0.f;
  for (int i = threadIdx.x; i < C; i += blockDim.x) s += x[i];
  mean = block_sum(s, sh) / C;
  float q = 0.f;
  for (int i = threadIdx.x; i < C; i += blockDim.x) { float d = __fsub_rn(x[i], mean); q = fmaf(d, d, q); }
  inv = rsqrtf(block_sum(q, sh) / C + 1e-5f);
}

// the mean of B rows (stride C) of one bf16 column, summed in row order (prefill, decode and the GEMV
// decode step use this one order: the chunk means, and so the chunk choices, agree bit for bit); the
// unrolled loop keeps 32 loads in flight without reordering the additions
__device__ __forceinline__ float chunk_mean_col(const bf16* p, int C, int B) {
  float s = 0.f;
  int r = 0;
  for (; r + 32 <= B; r += 32) {
    float v[32];
#pragma unroll
    for (int u = 0; u < 32; u++) v[u] = bf2f(p[(long long)(r + u) * C]);
#pragma unroll
    for (int u = 0; u < 32; u++) s += v[u];
  }
  for (; r < B; r++) s += bf2f(p[(long long)r * C]);
  return s / B;
}

// (RWKVX_EMU: the CPU execution model of test/cuda-emu stands in for the PTX instructions)
#ifdef RWKVX_EMU
__device__ __forceinline__ u32 smem_u32(const void* p) { return emu_smem_u32(p); }
__device__ __forceinline__ void cp16(void* dst, const void* src, int bytes) { emu_cp16(dst, src, bytes); }
__device__ __forceinline__ void cp_commit() { emu_cp_commit(); }
__device__ __forceinline__ void cp_wait2() { emu_cp_wait(2); }
__device__ __forceinline__ void cp_wait1() { emu_cp_wait(1); }
__device__ __forceinline__ void cp_wait0() { emu_cp_wait(0); }
#else
__device__ __forceinline__ u32 smem_u32(const void* p) {
  u32 a;
  asm("{ .reg .u64 t; cvta.to.shared.u64 t, %1; cvt.u32.u64 %0, t; }" : "=r"(a) : "l"(p));
  return a;
}
// 16-byte asynchronous copy global → shared; `bytes` 0 fills zeros
__device__ __forceinline__ void cp16(void* dst, const void* src, int bytes) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" :: "r"(smem_u32(dst)), "l"(src), "r"(bytes) : "memory");
}
__device__ __forceinline__ void cp_commit() { asm volatile("cp.async.commit_group;" ::: "memory"); }
__device__ __forceinline__ void cp_wait2() { asm volatile("cp.async.wait_group 2;" ::: "memory"); }
__device__ __forceinline__ void cp_wait1() { asm volatile("cp.async.wait_group 1;" ::: "memory"); }
__device__ __forceinline__ void cp_wait0() { asm volatile("cp.async.wait_group 0;" ::: "memory"); }
#endif

// The RWKV-7 time mix's element-wise step for one token and head, by one warp; lane holds channels
// h·64 + lane and h·64 + lane + 32 (e = 0, 1). k, wd, da, v, vFirst, dv point at the token's rows (k, the
// decay / rate / value-residual LoRA outputs, v, layer 0's v); the parameters are indexed by channel.
// ω = exp(−e^{−½}·σ(w0 + wd)), a = σ(a0 + da), κ̂ = normalise(k ⊙ k_k) over the head,
// k̃ = k ⊙ (1 + (a − 1) ⊙ k_a), v + (vFirst − v) ⊙ σ(v0 + dv) (layer 0: v as is; vFirst not read).
// tmix_prep, the fused chunk prep and the decode step all use it, so their numbers agree.
struct TmixLane { float w[2], a[2], kn[2], kt[2], v[2]; };
// the token's activations (its loads, which callers may issue early), then the arithmetic
struct TmixIn { float k[2], wd[2], da[2], v[2], vf[2], dv[2]; };
__device__ __forceinline__ TmixIn tmix_load(const float* k, const float* wd, const float* da, const float* v,
    const float* vFirst, const float* dv, int h, int lane, bool first) {
  TmixIn in;
#pragma unroll
  for (int e = 0; e < 2; e++) {
    const int c = h * 64 + lane + 32 * e;
    in.k[e] = k[c]; in.wd[e] = wd[c]; in.da[e] = da[c]; in.v[e] = v[c];
    in.vf[e] = first ? 0.f : vFirst[c]; in.dv[e] = first ? 0.f : dv[c];
  }
  return in;
}
__device__ __forceinline__ TmixLane tmix_math(const TmixIn& in, const float* w0, const float* a0, const float* v0,
    const float* kkw, const float* ka, int h, int lane, bool first) {
  TmixLane o;
  float q[2], ss = 0.f;
#pragma unroll
  for (int e = 0; e < 2; e++) {
    const int c = h * 64 + lane + 32 * e;
    q[e] = in.k[e] * kkw[c];
    ss += q[e] * q[e];
  }
  ss = warp_sum(ss);
  const float inv = 1.f / fmaxf(sqrtf(ss), 1e-12f);
#pragma unroll
  for (int e = 0; e < 2; e++) {
    const int c = h * 64 + lane + 32 * e;
    o.a[e] = sigmoidf_(in.da[e] + a0[c]);
    o.kn[e] = q[e] * inv;
    o.kt[e] = in.k[e] * (1.f + (o.a[e] - 1.f) * ka[c]);
    o.w[e] = expf(-0.6065306597126334f * sigmoidf_(in.wd[e] + w0[c]));
    float vv = in.v[e];
    if (!first) { float sg = sigmoidf_(in.dv[e] + v0[c]); vv += (in.vf[e] - vv) * sg; }
    o.v[e] = vv;
  }
  return o;
}
__device__ __forceinline__ TmixLane tmix_lane(const float* k, const float* wd, const float* da, const float* v,
    const float* vFirst, const float* dv, const float* w0, const float* a0, const float* v0, const float* kkw,
    const float* ka, int h, int lane, bool first) {
  return tmix_math(tmix_load(k, wd, da, v, vFirst, dv, h, lane, first), w0, a0, v0, kkw, ka, h, lane, first);
}
