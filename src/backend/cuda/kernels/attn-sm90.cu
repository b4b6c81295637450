// moba prefill attention on Hopper warpgroup MMA (wgmma, sm_90a): the own-chunk and selected-chunk
// kernels of rwkvx.cu (`attention` in moba mode with partO, `moba_attn`) with one warpgroup of 128
// threads per 64 query rows. The tensor cores read each K/V tile from shared memory once per warpgroup
// (mma.sync reads it once per warp of 16 rows), which is what bounds the mma.sync kernels.
// Per key tile of NK keys: S = Q·Kᵀ (m64nNKk16 ×4, Q fragments in registers), mask where needed,
// online softmax in exp2, O += P·V (m64n64k16 × NK/16, P in registers, V N-major). K/V tiles arrive by
// cp.async into two swizzled stages. Results: the normalised output (fp32) and its log2-sum-exp per
// (query, head, slot), as the mma.sync kernels write them; moba_merge (rwkvx.cu) combines the slots.

#include "common.cuh"
#include "attn.cuh"
#include "wgmma.cuh"

#define MAXSEL 8

// rows [row0, row0 + NK) of head h of K and V (row-major [tokens, C] bf16) into the swizzled stage at
// shared addresses sK / sV; rows at or past `end` are zero-filled
template <int NK>
__device__ __forceinline__ void wg_load_kv(u32 sK, u32 sV, const bf16* K, const bf16* V, int row0, int end, int C, int h, int tid) {
#pragma unroll
  for (int i = 0; i < NK / 16; i++) {
    const int e = tid + 128 * i, r = e >> 3, c = e & 7;
    const bool ok = row0 + r < end;
    const long long off = (long long)(ok ? row0 + r : 0) * C + h * 64 + c * 8;
    const u32 so = r * 128 + ((c ^ (r & 7)) << 4);
#ifdef RWKVX_EMU
    emu_cp16(emu_smem_ptr(sK + so), K + off, ok ? 16 : 0);
    emu_cp16(emu_smem_ptr(sV + so), V + off, ok ? 16 : 0);
#else
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" :: "r"(sK + so), "l"(K + off), "r"(ok ? 16 : 0) : "memory");
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" :: "r"(sV + so), "l"(V + off), "r"(ok ? 16 : 0) : "memory");
#endif
  }
  cp_commit();
}

__device__ __forceinline__ void wg_s(float (&s)[64], const u32 (&a)[4], u64 d, int acc) { wgmma_m64n128k16<0>(s, a, d, acc); }
__device__ __forceinline__ void wg_s(float (&s)[32], const u32 (&a)[4], u64 d, int acc) { wgmma_m64n64k16<0>(s, a, d, acc); }

// One tile of NK keys for the warpgroup's 64 query rows (this thread: row a = 16·warp + g, b = a + 8).
// valid(col, row) masks key column col for row a (0) / b (1), applied only when `full` is false.
// m in log2 units (scaled), l the running sum, o [8 column groups][4] flattened as in the wgmma layout.
template <int NK, class Valid>
__device__ __forceinline__ void wg_tile(u32 sK, u32 sV, const u32 (&qf)[4][4], float (&o)[32], float& ma, float& mb,
    float& la, float& lb, float scaleLog2, bool full, Valid valid) {
  constexpr int NG = NK / 8;
  const int c4 = threadIdx.x & 3;
  float s[NK / 2];
  const u64 dK = wg_desc(sK), dV = wg_desc(sV);
  wg_fence();
#pragma unroll
  for (int ks = 0; ks < 4; ks++) wg_s(s, qf[ks], dK + 2 * ks, ks);
  wg_commit();
  wg_wait0();
  wg_keep(s);
  if (!full) {
#pragma unroll
    for (int n = 0; n < NG; n++)
#pragma unroll
      for (int u = 0; u < 2; u++) {
        const int col = n * 8 + 2 * c4 + u;
        if (!valid(col, 0)) s[4 * n + u] = -INFINITY;
        if (!valid(col, 1)) s[4 * n + 2 + u] = -INFINITY;
      }
  }
  float mxa = -INFINITY, mxb = -INFINITY;
#pragma unroll
  for (int n = 0; n < NG; n++) {
    mxa = fmaxf(mxa, fmaxf(s[4 * n], s[4 * n + 1]));
    mxb = fmaxf(mxb, fmaxf(s[4 * n + 2], s[4 * n + 3]));
  }
  mxa = fmaxf(mxa, __shfl_xor_sync(0xffffffffu, mxa, 1));
  mxa = fmaxf(mxa, __shfl_xor_sync(0xffffffffu, mxa, 2));
  mxb = fmaxf(mxb, __shfl_xor_sync(0xffffffffu, mxb, 1));
  mxb = fmaxf(mxb, __shfl_xor_sync(0xffffffffu, mxb, 2));
  // the scale is positive, so the maximum of the scaled scores is the scaled maximum
  const float na = fmaxf(ma, mxa * scaleLog2), nb = fmaxf(mb, mxb * scaleLog2);
  const float ua = na == -INFINITY ? 0.f : na, ub = nb == -INFINITY ? 0.f : nb;
  const float fa = exp2f(ma - ua), fb = exp2f(mb - ub);
  ma = na; mb = nb;
  la *= fa; lb *= fb;
#pragma unroll
  for (int n = 0; n < 8; n++) { o[4 * n] *= fa; o[4 * n + 1] *= fa; o[4 * n + 2] *= fb; o[4 * n + 3] *= fb; }
  u32 pf[NK / 16][4];
#pragma unroll
  for (int n = 0; n < NG; n++) {
    const float p0 = exp2f(fmaf(s[4 * n], scaleLog2, -ua)), p1 = exp2f(fmaf(s[4 * n + 1], scaleLog2, -ua));
    const float p2 = exp2f(fmaf(s[4 * n + 2], scaleLog2, -ub)), p3 = exp2f(fmaf(s[4 * n + 3], scaleLog2, -ub));
    la += p0 + p1; lb += p2 + p3;
    pf[n >> 1][(n & 1) * 2] = pack_bf16(p0, p1);
    pf[n >> 1][(n & 1) * 2 + 1] = pack_bf16(p2, p3);
  }
  wg_keep(o);
  wg_keep(pf);
  wg_fence();
#pragma unroll
  for (int ks = 0; ks < NK / 16; ks++) wgmma_m64n64k16<1>(o, pf[ks], dV + 128 * ks, 1);
  wg_commit();
  wg_wait0();
  wg_keep(o);
}

// the 1024-aligned base of the dynamic shared memory (the launch adds 1 KB of slack)
__device__ __forceinline__ u32 wg_smem_base() {
  extern __shared__ unsigned char wg_smem[];
  return (smem_u32(wg_smem) + 1023u) & ~1023u;
}

// finishes the rows: l summed over the 4 lanes of a row, O normalised, written with L = m + log2 l
__device__ __forceinline__ void wg_store(float* partO, float* partL, long long ba, long long bb, bool wa, bool wb,
    const float (&o)[32], float ma, float mb, float la, float lb) {
  const int c4 = threadIdx.x & 3;
  la += __shfl_xor_sync(0xffffffffu, la, 1);
  la += __shfl_xor_sync(0xffffffffu, la, 2);
  lb += __shfl_xor_sync(0xffffffffu, lb, 1);
  lb += __shfl_xor_sync(0xffffffffu, lb, 2);
  const float ia = la > 0.f ? 1.f / la : 0.f, ib = lb > 0.f ? 1.f / lb : 0.f;
#pragma unroll
  for (int n = 0; n < 8; n++) {
    const int d = n * 8 + 2 * c4;
    if (wa) *(float2*)(partO + ba * 64 + d) = make_float2(o[4 * n] * ia, o[4 * n + 1] * ia);
    if (wb) *(float2*)(partO + bb * 64 + d) = make_float2(o[4 * n + 2] * ib, o[4 * n + 3] * ib);
  }
  if (c4 == 0) {
    if (wa) partL[ba] = la > 0.f ? ma + log2f(la) : -INFINITY;
    if (wb) partL[bb] = lb > 0.f ? mb + log2f(lb) : -INFINITY;
  }
}

// Own chunk, causal (moba): query t (position p = P + t) sees keys ⌊p/B⌋·B … p. One block per (64-query
// tile, head); slot 0 of partO [T, H, nSlot, 64] / partL [T, H, nSlot].
template <int NK>
__device__ __forceinline__ void own_body(float* partO, float* partL, const float* q, const bf16* K, const bf16* V,
    int T, int H, int P, int B, int nSlot, float scaleLog2) {
  const u32 sb = wg_smem_base();
  const int C = H * 64, h = blockIdx.y, t0 = blockIdx.x * 64;
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, g = lane >> 2, c4 = lane & 3;
  const int tLast = min(t0 + 63, T - 1), pLast = P + tLast, pFirst = P + t0;
  const int ws0 = (pFirst / B) * B, wsLast = (pLast / B) * B, end = pLast + 1;
  const int ta = t0 + warp * 16 + g, tb = ta + 8, pa = P + ta, pb = P + tb;
  const int wsa = (pa / B) * B, wsb = (pb / B) * B;
  u32 qf[4][4];
  load_q_frag(qf, ta < T ? q + (long long)ta * C + h * 64 : nullptr, tb < T ? q + (long long)tb * C + h * 64 : nullptr, c4);
  float o[32];
#pragma unroll
  for (int i = 0; i < 32; i++) o[i] = 0.f;
  float ma = -INFINITY, mb = -INFINITY, la = 0.f, lb = 0.f;
  constexpr u32 STAGE = 2 * NK * 128;
  const int nTiles = (end - ws0 + NK - 1) / NK;
  wg_load_kv<NK>(sb, sb + NK * 128, K, V, ws0, end, C, h, tid);
  for (int i = 0; i < nTiles; i++) {
    const u32 st = sb + (i & 1) * STAGE;
    if (i + 1 < nTiles) { const u32 nx = sb + ((i + 1) & 1) * STAGE; wg_load_kv<NK>(nx, nx + NK * 128, K, V, ws0 + (i + 1) * NK, end, C, h, tid); cp_wait1(); }
    else cp_wait0();
    fence_proxy_async();
    __syncthreads();
    const int kt = ws0 + i * NK;
    const bool full = kt >= wsLast && kt + NK - 1 <= pFirst;
    wg_tile<NK>(st, st + NK * 128, qf, o, ma, mb, la, lb, scaleLog2, full, [&](int col, int row) {
      const int kp = kt + col;
      return row == 0 ? kp <= pa && kp >= wsa : kp <= pb && kp >= wsb;
    });
    __syncthreads();
  }
  wg_store(partO, partL, ((long long)ta * H + h) * nSlot, ((long long)tb * H + h) * nSlot, ta < T, tb < T, o, ma, mb, la, lb);
}

// Selected chunks: one block per 64 queries of one (head, chunk) list (moba_count/scan/scatter in
// rwkvx.cu), over all B keys of that chunk; slot s + 1.
template <int NK>
__device__ __forceinline__ void sel_body(float* partO, float* partL, const float* q, const bf16* K, const bf16* V,
    const int* list, const int* off, const int* tileOff, int H, int nC, int B, int nSlot, float scaleLog2) {
  const int nPairs = H * nC, b = blockIdx.x;
  if (b >= tileOff[nPairs]) return;
  const u32 sb = wg_smem_base();
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
  float o[32];
#pragma unroll
  for (int i = 0; i < 32; i++) o[i] = 0.f;
  float ma = -INFINITY, mb = -INFINITY, la = 0.f, lb = 0.f;
  constexpr u32 STAGE = 2 * NK * 128;
  const int start = j * B, end = (j + 1) * B, nTiles = (B + NK - 1) / NK;
  wg_load_kv<NK>(sb, sb + NK * 128, K, V, start, end, C, h, tid);
  for (int i = 0; i < nTiles; i++) {
    const u32 st = sb + (i & 1) * STAGE;
    if (i + 1 < nTiles) { const u32 nx = sb + ((i + 1) & 1) * STAGE; wg_load_kv<NK>(nx, nx + NK * 128, K, V, start + (i + 1) * NK, end, C, h, tid); cp_wait1(); }
    else cp_wait0();
    fence_proxy_async();
    __syncthreads();
    const int kt = start + i * NK;
    wg_tile<NK>(st, st + NK * 128, qf, o, ma, mb, la, lb, scaleLog2, kt + NK <= end, [&](int col, int) { return kt + col < end; });
    __syncthreads();
  }
  wg_store(partO, partL, ((long long)ta * H + h) * nSlot + (ea % MAXSEL) + 1, ((long long)tb * H + h) * nSlot + (eb % MAXSEL) + 1,
           ea >= 0, eb >= 0, o, ma, mb, la, lb);
}

// dynamic shared memory: 2 stages × (K + V) × NK rows × 128 bytes, + 1 KB for the alignment
extern "C" __global__ void __launch_bounds__(128) own_attn_wg128(float* partO, float* partL, const float* q, const bf16* K, const bf16* V,
    int T, int H, int P, int B, int nSlot, float scaleLog2) {
  own_body<128>(partO, partL, q, K, V, T, H, P, B, nSlot, scaleLog2);
}
extern "C" __global__ void __launch_bounds__(128) own_attn_wg64(float* partO, float* partL, const float* q, const bf16* K, const bf16* V,
    int T, int H, int P, int B, int nSlot, float scaleLog2) {
  own_body<64>(partO, partL, q, K, V, T, H, P, B, nSlot, scaleLog2);
}
extern "C" __global__ void __launch_bounds__(128) moba_attn_wg128(float* partO, float* partL, const float* q, const bf16* K, const bf16* V,
    const int* list, const int* off, const int* tileOff, int H, int nC, int B, int nSlot, float scaleLog2) {
  sel_body<128>(partO, partL, q, K, V, list, off, tileOff, H, nC, B, nSlot, scaleLog2);
}
extern "C" __global__ void __launch_bounds__(128) moba_attn_wg64(float* partO, float* partL, const float* q, const bf16* K, const bf16* V,
    const int* list, const int* off, const int* tileOff, int H, int nC, int B, int nSlot, float scaleLog2) {
  sel_body<64>(partO, partL, q, K, V, list, off, tileOff, H, nC, B, nSlot, scaleLog2);
}
