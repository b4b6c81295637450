// The split-K decode attention block both decode paths share (rwkvx.cu attn_decode for the cuBLAS step,
// decode.cu dec_attn for the multi-GEMV step). Block (x, h), 128 threads, handles up to DEC_SPL keys of slot
// x / nSplit (0: the own chunk up to P; s ≥ 1: the selected chunk sel[h, s − 1]), piece x % nSplit, and
// writes the unnormalised partial output, its max and its sum: part[h, x, 0..63 | 64: max | 65: sum]
// (log2 domain). dec_combine merges a head's partials. Needs common.cuh and MAXSEL.

#define DEC_SPL 256

struct DecAttnSmem {
  float qs[64];
  float ps[DEC_SPL];
  float red[4];
  float acc[4][64];
};

__device__ __forceinline__ void dec_attn_partial(DecAttnSmem& sm, float* part, const float* q, const bf16* K, const bf16* V,
                                                 const int* sel, int P, int H, int B, int nSplit, float scaleLog2) {
  const int C = H * 64, h = blockIdx.y, slot = blockIdx.x / nSplit, piece = blockIdx.x % nSplit;
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  int k0 = 0, k1 = 0;
  if (slot == 0) { int cs = (P / B) * B; k0 = cs + piece * DEC_SPL; k1 = min(k0 + DEC_SPL, P + 1); }
  else {
    int j = sel[h * MAXSEL + slot - 1];
    if (j >= 0) { k0 = j * B + piece * DEC_SPL; k1 = min(k0 + DEC_SPL, (j + 1) * B); }
  }
  const int n = max(0, k1 - k0);
  float* outp = part + ((long long)h * gridDim.x + blockIdx.x) * 66;
  if (n == 0) {
    if (tid < 64) outp[tid] = 0.f;
    if (tid == 0) { outp[64] = -INFINITY; outp[65] = 0.f; }
    return;
  }
  if (tid < 64) sm.qs[tid] = bf2f(f2bf(q[h * 64 + tid]));
  __syncthreads();
  float mx = -INFINITY;
  float sv[2];
#pragma unroll
  for (int u = 0; u < 2; u++) {
    int kk = tid + 128 * u;
    float s = -INFINITY;
    if (kk < n) {
      const uint4* row = (const uint4*)(K + (long long)(k0 + kk) * C + h * 64);
      float d = 0.f;
#pragma unroll
      for (int c = 0; c < 8; c++) {
        uint4 x = row[c];
        const u32 w[4] = {x.x, x.y, x.z, x.w};
#pragma unroll
        for (int e = 0; e < 4; e++) {
          d = fmaf(sm.qs[c * 8 + 2 * e], bf2f((bf16)(w[e] & 0xffff)), d);
          d = fmaf(sm.qs[c * 8 + 2 * e + 1], bf2f((bf16)(w[e] >> 16)), d);
        }
      }
      s = d * scaleLog2;
    }
    sv[u] = s;
    mx = fmaxf(mx, s);
  }
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
  if (lane == 0) sm.red[warp] = mx;
  __syncthreads();
  const float m = fmaxf(fmaxf(sm.red[0], sm.red[1]), fmaxf(sm.red[2], sm.red[3]));
  float l = 0.f;
#pragma unroll
  for (int u = 0; u < 2; u++) {
    int kk = tid + 128 * u;
    float p = sv[u] == -INFINITY ? 0.f : exp2f(sv[u] - m);
    l += p;
    sm.ps[kk] = bf2f(f2bf(p));
  }
  l = warp_sum(l);
  __syncthreads();
  if (lane == 0) sm.red[warp] = l;
  float a0 = 0.f, a1 = 0.f;
  for (int kk = warp * 64; kk < min(n, warp * 64 + 64); kk++) {
    u32 x = *(const u32*)(V + (long long)(k0 + kk) * C + h * 64 + 2 * lane);
    float p = sm.ps[kk];
    a0 = fmaf(p, bf2f((bf16)(x & 0xffff)), a0);
    a1 = fmaf(p, bf2f((bf16)(x >> 16)), a1);
  }
  sm.acc[warp][2 * lane] = a0; sm.acc[warp][2 * lane + 1] = a1;
  __syncthreads();
  if (tid < 64) outp[tid] = sm.acc[0][tid] + sm.acc[1][tid] + sm.acc[2][tid] + sm.acc[3][tid];
  if (tid == 0) { outp[64] = m; outp[65] = sm.red[0] + sm.red[1] + sm.red[2] + sm.red[3]; }
}

// dimension d of head h's attention output from its nBlk partials p[b·66 …] (read through L2: in dec_attn
// other blocks of the same launch wrote them)
__device__ __forceinline__ float dec_combine(const float* p, int nBlk, int d) {
  float M = -INFINITY;
  for (int b = 0; b < nBlk; b++) M = fmaxf(M, __ldcg(p + b * 66 + 64));
  float L = 0.f, o = 0.f;
  for (int b = 0; b < nBlk; b++) {
    float mb = __ldcg(p + b * 66 + 64);
    if (mb == -INFINITY) continue;
    float w = exp2f(mb - M);
    L += w * __ldcg(p + b * 66 + 65);
    o += w * __ldcg(p + b * 66 + d);
  }
  return L > 0.f ? o / L : 0.f;
}
