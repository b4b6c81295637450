// One-token decoding (the CUDA-graph step of CudaModel): memory-bound kernels for M = 1.
// Separate NVRTC module from rwkvx.cu. Every kernel here may be launched with programmatic
// dependent launch (PDL, sm_90+): it may start while the kernel before it is still running, so
// before `pdl_wait()` it reads only what no kernel of the same step writes (weights, its own
// state, the problem tables) and it writes nothing. Every block calls pdl_wait() before it
// exits, so a grid never completes before the one it depends on: completion is transitive.

#include "common.cuh"

// PDL: wait until the preceding grid has completed and its writes are visible; let the next grid launch.
// Both are no-ops for a launch without the PDL attribute.
__device__ __forceinline__ void pdl_wait() {
#if __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}
__device__ __forceinline__ void pdl_trigger() {
#if __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

// weights are read once per token: keep them out of L1
__device__ __forceinline__ uint4 ld_stream(const uint4* p) {
#ifdef RWKVX_EMU
  return *p;
#else
  uint4 r;
  asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0,%1,%2,%3}, [%4];"
               : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w) : "l"(p));
  return r;
#endif
}
__device__ __forceinline__ float lo16(u32 u) { return __uint_as_float(u << 16); }
__device__ __forceinline__ float hi16(u32 u) { return __uint_as_float(u & 0xffff0000u); }

// ---------------------------------------------------------------------------------------------
// Multi-GEMV: several independent y = epilogue(W·x) in one launch, W [N, K] row-major bf16, x bf16.
// A problem is split into warp tasks: a warp covers 32/lpr rows with lpr lanes per row (lpr a
// power of two ≤ 32, ≤ K/8); lane `sub` of a row reads the 16-byte words sub, sub + lpr, … so a
// row group's loads are contiguous. Problem records (48 bytes, built by decode.ts):
struct GemvProb {
  const uint4* W;   // [N, K] bf16
  const uint4* x;   // [K] bf16
  void* y;          // [N] float32 or bf16
  int N, K8;        // rows; row length in 16-byte words (K / 8)
  int mode, lpr;    // epilogue (GV_*); lanes per row
  int task0;        // first warp task of this problem (tasks are numbered across problems)
  int dynStride;    // > 0: y advanced by dyn[1]·dynStride elements (the K/V cache row of the position)
};
#define GV_F32 0       // y = acc (float32)
#define GV_F32_ADD 1   // y += acc (float32; the residual adds)
#define GV_BF16 2      // y = bf16(acc)
#define GV_TANH 3      // y = bf16(tanh(acc))
#define GV_SIGMOID 4   // y = bf16(σ(acc))
#define GV_RELU2 5     // y = bf16(relu(bf16(acc))²): the rounding of a bf16 GEMM output, then relu²
#define GV_WARPS 4
#define GV_BATCH 8     // 16-byte words in flight per lane

__device__ __forceinline__ float dot8(uint4 w, uint4 x, float acc) {
  acc = fmaf(lo16(w.x), lo16(x.x), acc); acc = fmaf(hi16(w.x), hi16(x.x), acc);
  acc = fmaf(lo16(w.y), lo16(x.y), acc); acc = fmaf(hi16(w.y), hi16(x.y), acc);
  acc = fmaf(lo16(w.z), lo16(x.z), acc); acc = fmaf(hi16(w.z), hi16(x.z), acc);
  acc = fmaf(lo16(w.w), lo16(x.w), acc); acc = fmaf(hi16(w.w), hi16(x.w), acc);
  return acc;
}

__device__ __forceinline__ void gemv_out(const GemvProb* pr, int row, float acc, const int* dyn) {
  long long off = row;
  if (pr->dynStride > 0) off += (long long)dyn[1] * pr->dynStride;
  switch (pr->mode) {
    case GV_F32: ((float*)pr->y)[off] = acc; break;
    case GV_F32_ADD: ((float*)pr->y)[off] += acc; break;
    case GV_BF16: ((bf16*)pr->y)[off] = f2bf(acc); break;
    case GV_TANH: ((bf16*)pr->y)[off] = f2bf(tanhf(acc)); break;
    case GV_SIGMOID: ((bf16*)pr->y)[off] = f2bf(sigmoidf_(acc)); break;
    default: { float v = bf2f(f2bf(acc)); ((bf16*)pr->y)[off] = f2bf(v > 0.f ? v * v : 0.f); }
  }
}

extern "C" __global__ void __launch_bounds__(128, 8) mgemv(const GemvProb* probs, int nProb, const int* dyn) {
  const int task = blockIdx.x * GV_WARPS + (threadIdx.x >> 5), lane = threadIdx.x & 31;
  int p = 0;
  while (p + 1 < nProb && task >= probs[p + 1].task0) p++;
  const GemvProb* pr = probs + p;
  const int lpr = pr->lpr, K8 = pr->K8, N = pr->N;
  const int row = (task - pr->task0) * (32 / lpr) + lane / lpr, sub = lane & (lpr - 1);
  const bool ok = row < N;
  const int cnt = ok ? (K8 - sub + lpr - 1) / lpr : 0;
  const uint4* wr = pr->W + (long long)(ok ? row : 0) * K8 + sub;
  const uint4* xr = pr->x + sub;
  uint4 wv[GV_BATCH];
#pragma unroll
  for (int u = 0; u < GV_BATCH; u++) if (u < cnt) wv[u] = ld_stream(wr + u * lpr);
  pdl_wait();
  pdl_trigger();
  float a0 = 0.f, a1 = 0.f;
  for (int j0 = 0; j0 < cnt; j0 += GV_BATCH) {
    if (j0 > 0) {
#pragma unroll
      for (int u = 0; u < GV_BATCH; u++) if (j0 + u < cnt) wv[u] = ld_stream(wr + (j0 + u) * lpr);
    }
#pragma unroll
    for (int u = 0; u < GV_BATCH; u++) {
      if (j0 + u < cnt) {
        uint4 xv = xr[(j0 + u) * lpr];
        if (u & 1) a1 = dot8(wv[u], xv, a1); else a0 = dot8(wv[u], xv, a0);
      }
    }
  }
  float acc = a0 + a1;
  for (int o = lpr >> 1; o > 0; o >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, o);
  if (ok && sub == 0) gemv_out(pr, row, acc, dyn);
}

// ---------------------------------------------------------------------------------------------
// One row: LayerNorm of x (eps 1e-5), then with prev: the M token-shift mixes
// out[m] = bf16(xn + (prev − xn)·mu[m]) and prev ← xn; without prev: out = bf16(xn).
// emb (optional): x ← emb[dyn[0]] first (the step's embedding, ln0 folded in at load).
// 256 threads (the statistics then equal those of layer_norm / ln_mix bit for bit).
extern "C" __global__ void __launch_bounds__(256) dec_ln_mix(bf16* out, float* x, const float* w, const float* b, float* prev,
    const float* mu, int C, int M, const bf16* emb, const int* dyn) {
  __shared__ float sh[32];
  pdl_wait();
  pdl_trigger();
  float s = 0.f;
  if (emb) {
    const bf16* e = emb + (long long)dyn[0] * C;
    for (int i = threadIdx.x; i < C; i += blockDim.x) { float v = bf2f(e[i]); x[i] = v; s += v; }
  } else {
    for (int i = threadIdx.x; i < C; i += blockDim.x) s += x[i];
  }
  float mean = block_sum(s, sh) / C;
  float v = 0.f;
  for (int i = threadIdx.x; i < C; i += blockDim.x) { float d = x[i] - mean; v += d * d; }
  float inv = rsqrtf(block_sum(v, sh) / C + 1e-5f);
  for (int i = threadIdx.x; i < C; i += blockDim.x) {
    float xv = (x[i] - mean) * inv * w[i] + b[i];
    if (!prev) { out[i] = f2bf(xv); continue; }
    float d = prev[i] - xv;
    for (int m = 0; m < M; m++) out[(long long)m * C + i] = f2bf(xv + d * mu[m * C + i]);
    prev[i] = xv;
  }
}

// ---------------------------------------------------------------------------------------------
// The RWKV-7 time mix after the projections, for one token: tmix_prep + wkv7_seq16 + gn_bonus_gate
// of rwkvx.cu fused, one block of 1024 threads per head (16 threads per state row, as wkv7_seq16).
// io [7][C] float32: r, k, v (projections), dw, da, dv (LoRA outputs), g (gate).
extern "C" __global__ void __launch_bounds__(1024) dec_wkv(bf16* out, float* state, float* vFirst, const float* io,
    const float* w0, const float* a0, const float* v0, const float* kkw, const float* ka, const float* rk,
    const float* lnxw, const float* lnxb, int C, int first) {
  __shared__ __align__(16) float sr[64], sw[64], sk[64], skk[64], ska[64], sv[64], sy[64];
  const int h = blockIdx.x, tid = threadIdx.x, il = tid >> 4, q = tid & 15;
  float* S = state + (long long)h * 4096 + il * 64 + q * 4;
  float4 st = *(const float4*)S;  // only this kernel (of this layer) touches the state
  pdl_wait();
  pdl_trigger();
  const float *r = io, *k = io + C, *v = io + 2 * C, *dw = io + 3 * C, *da = io + 4 * C, *dv = io + 5 * C, *g = io + 6 * C;
  if (tid < 32) {
    const int lane = tid;
    const TmixLane o = tmix_lane(k, dw, da, v, vFirst, dv, w0, a0, v0, kkw, ka, h, lane, first);
#pragma unroll
    for (int e = 0; e < 2; e++) {
      const int j = lane + 32 * e, c = h * 64 + j;
      sr[j] = r[c]; sw[j] = o.w[e]; sk[j] = o.kt[e]; skk[j] = o.kn[e]; ska[j] = o.kn[e] * o.a[e]; sv[j] = o.v[e];
      if (first) vFirst[c] = o.v[e];
    }
  }
  __syncthreads();
  {
    const float4 z = *(const float4*)&skk[q * 4];
    float sa0 = 0.f, sa1 = 0.f;
    sa0 += st.x * z.x + st.y * z.y + st.z * z.z + st.w * z.w;
    float sa = -(sa0 + sa1);
#pragma unroll
    for (int o = 1; o < 16; o <<= 1) sa += __shfl_xor_sync(0xffffffffu, sa, o);
    const float vi = sv[il];
    const float4 ww = *(const float4*)&sw[q * 4], aa = *(const float4*)&ska[q * 4];
    const float4 kt = *(const float4*)&sk[q * 4], rr = *(const float4*)&sr[q * 4];
    st.x = st.x * ww.x + sa * aa.x + vi * kt.x;
    st.y = st.y * ww.y + sa * aa.y + vi * kt.y;
    st.z = st.z * ww.z + sa * aa.z + vi * kt.z;
    st.w = st.w * ww.w + sa * aa.w + vi * kt.w;
    float y0 = 0.f, y1 = 0.f;
    y0 += st.x * rr.x + st.y * rr.y;
    y1 += st.z * rr.z + st.w * rr.w;
    float yi = y0 + y1;
#pragma unroll
    for (int o = 1; o < 16; o <<= 1) yi += __shfl_xor_sync(0xffffffffu, yi, o);
    if (q == 0) sy[il] = yi;
    *(float4*)S = st;
  }
  __syncthreads();
  if (tid < 32) {
    const int lane = tid, c0 = h * 64 + lane, c1 = c0 + 32;
    float e0 = sy[lane], e1 = sy[lane + 32];
    float mean = warp_sum(e0 + e1) * (1.f / 64.f);
    float d0 = e0 - mean, d1 = e1 - mean;
    float inv = rsqrtf(warp_sum(d0 * d0 + d1 * d1) * (1.f / 64.f) + 64e-5f);
    float bs = warp_sum(sr[lane] * sk[lane] * rk[c0] + sr[lane + 32] * sk[lane + 32] * rk[c1]);
    out[c0] = f2bf((d0 * inv * lnxw[c0] + lnxb[c0] + bs * sv[lane]) * g[c0]);
    out[c1] = f2bf((d1 * inv * lnxw[c1] + lnxb[c1] + bs * sv[lane + 32]) * g[c1]);
  }
}

// ---------------------------------------------------------------------------------------------
// Attention block, one token at position P = dyn[1] (moba), after the q/k/v GEMV (q float32, the new
// K/V rows already in the caches).
#define MAXSEL 8
#include "decode-attn.cuh"
#include "topk.cuh"

// Blocks 0 … H−1: the scores q_h·mean_j for the complete past chunks j < P/B (the fmaf order of
// dec_scores / chunk_scores, so choices equal prefill's) into scores[h, j], then the top-nSel
// chunks as select_chunks picks them (best first, ties to the lower index) into sel[h, :].
// Blocks H …: the mean key of the chunk the token completes, if it completes one (chunk_means_dyn).
extern "C" __global__ void __launch_bounds__(256) dec_select(int* sel, float* scores, float* means, const float* q, const bf16* K,
    const int* dyn, int H, int B, int cap, int nSel) {
  pdl_wait();
  pdl_trigger();
  const int C = H * 64, P = dyn[1], tid = threadIdx.x;
  if (blockIdx.x >= H) {
    int len = P + 1;
    int col = (blockIdx.x - H) * blockDim.x + tid;
    if (len % B || col >= C) return;
    int c = len / B - 1;
    means[(long long)c * C + col] = chunk_mean_col(K + (long long)c * B * C + col, C, B);
    return;
  }
  if (nSel == 0) return;
  const int h = blockIdx.x, nAvail = P / B;
  const float* qq = q + h * 64;
  float* sc = scores + (long long)h * cap;
  for (int j = tid; j < nAvail; j += blockDim.x) {
    const float* m = means + (long long)j * C + h * 64;
    float s = 0.f;
#pragma unroll 16
    for (int d = 0; d < 64; d++) s = fmaf(qq[d], m[d], s);
    sc[j] = s;
  }
  __syncthreads();
  if (tid >= 32) return;
  const int lane = tid;
  float bs[MAXSEL]; int bi[MAXSEL];
  topk_init(bs, bi);
  for (int j = lane; j < nAvail; j += 32) topk_insert(bs, bi, sc[j], j, nSel);
  int outIdx[MAXSEL];
  topk_merge(bs, bi, nSel, outIdx);
  if (lane == 0)
    for (int s = 0; s < MAXSEL; s++) sel[h * MAXSEL + s] = outIdx[s];
}

// The split-K attention block of decode-attn.cuh (block (x, h): up to DEC_SPL keys of slot x / nSplit,
// piece x % nSplit), then the last block of head h to finish combines the gridDim.x partials into
// out[h, :] (bf16) and resets counter[h] for the next step.
extern "C" __global__ void __launch_bounds__(128) dec_attn(bf16* out, float* part, int* counter, const float* q, const bf16* K,
    const bf16* V, const int* sel, const int* dyn, int H, int B, int nSplit, float scaleLog2) {
  __shared__ DecAttnSmem sm;
  __shared__ int isLast;
  pdl_wait();
  pdl_trigger();
  const int h = blockIdx.y, nBlk = gridDim.x, tid = threadIdx.x;
  dec_attn_partial(sm, part, q, K, V, sel, dyn[1], H, B, nSplit, scaleLog2);
  // the last of the head's blocks (in arrival order) combines; the fence publishes this block's partial first
  __threadfence();
  __syncthreads();
  if (tid == 0) isLast = atomicAdd(counter + h, 1) == nBlk - 1;
  __syncthreads();
  if (!isLast) return;
  __threadfence();
  if (tid == 0) counter[h] = 0;
  if (tid >= 64) return;
  out[h * 64 + tid] = f2bf(dec_combine(part + (long long)h * nBlk * 66, nBlk, tid));
}

// out[c, r] = in[r, c] for an R×Cc bf16 matrix (the LoRA factors in the [out, in] layout of mgemv; once, at set-up)
extern "C" __global__ void dec_transpose(bf16* out, const bf16* in, int R, int Cc) {
  long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= (long long)R * Cc) return;
  int r = (int)(i / Cc), c = (int)(i % Cc);
  out[(long long)c * R + r] = in[i];
}
