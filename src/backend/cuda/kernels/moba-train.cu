// Sparse attention ("moba", SPEC §3) for TRAINING: forward with the softmax statistics kept, and the
// backward (dQ, dK, dV). Layout as train.cu: Bn sequences of T tokens are R = Bn·T rows of [R, C], C = H·64;
// blockIdx.z is the sequence (chunks, selection and causality are per sequence). Query t of chunk c = ⌊t/B⌋
// sees the keys of its own chunk up to itself and every key of the chunks sel[t, h, 0..nSel) (−1 unused),
// the nSel best of the complete earlier chunks by q·(chunk mean of k).
//
// Two implementations with one contract (src/backend/cuda/train/moba.ts picks):
//  - reference: thread per query or key on fp32 FMAs (tr_moba_*), lse in natural-log units;
//  - tensor cores (mt_*): flash-attention style on bf16 mma.sync with fp32 accumulation, tiles of 64
//    queries × 64 keys (needs B % 64 == 0), lse in log2 units of the scaled scores. The backward is
//    FlashAttention-2's split: mt_dq walks a query tile's keys, mt_dkv a key tile's queries; no atomics.

#include "common.cuh"
#include "attn.cuh"

typedef long long i64;
#define MT_MAXSEL 8

// Reference kernels: thread per (query or key, head), fp32 FMAs; grid (⌈T/64⌉, H, Bn), block 64. The
// trainer's fp32 test mode and chunk lengths that are not a multiple of 64 use them.

// means [Bn, ⌊T/B⌋, C]; grid (⌊T/B⌋, ⌈C/256⌉, Bn)
extern "C" __global__ void tr_chunk_means(float* means, const float* k, int T, int C, int B) {
  int c = blockIdx.x, i = blockIdx.y * blockDim.x + threadIdx.x;
  if (i >= C) return;
  k += (i64)blockIdx.z * T * C;
  means += (i64)blockIdx.z * (T / B) * C;
  float s = 0.f;
  for (int p = c * B; p < (c + 1) * B; p++) s += k[(i64)p * C + i];
  means[(i64)c * C + i] = s / B;
}

__device__ __forceinline__ float dot64(const float* q, const float* k) {
  float s0 = 0.f, s1 = 0.f, s2 = 0.f, s3 = 0.f;  // four chains (latency)
#pragma unroll
  for (int d = 0; d < 64; d += 4) {
    float4 kv = *reinterpret_cast<const float4*>(k + d);
    s0 += q[d] * kv.x; s1 += q[d + 1] * kv.y; s2 += q[d + 2] * kv.z; s3 += q[d + 3] * kv.w;
  }
  return (s0 + s1) + (s2 + s3);
}

// the nSel best of the c complete chunks before the query's own by q·mean (best[s] = −1 past the last);
// a strictly higher score ranks first, ties keep the lower chunk index first (the CPU reference's order)
__device__ __forceinline__ void select_top(int (&best)[MT_MAXSEL], const float (&qr)[64], const float* means, int c, int C, int h,
                                           int nSel) {
  float bs[MT_MAXSEL];
  for (int s = 0; s < MT_MAXSEL; s++) { best[s] = -1; bs[s] = -INFINITY; }
  for (int j = 0; j < c; j++) {
    float sc = dot64(qr, means + (i64)j * C + h * 64);
    int pos = nSel;
    for (int s = nSel - 1; s >= 0; s--) if (best[s] < 0 || sc > bs[s]) pos = s;
    if (pos < nSel) {
      for (int s = nSel - 1; s > pos; s--) { best[s] = best[s - 1]; bs[s] = bs[s - 1]; }
      best[pos] = j; bs[pos] = sc;
    }
  }
}

// selection + softmax·V; writes y, lse [T, H], sel [T, H, nSel] (−1 unused)
extern "C" __global__ void __launch_bounds__(64) tr_moba_fwd(float* y, float* lse, int* sel, const float* q,
                                                             const float* k, const float* v, const float* means, int T,
                                                             int H, int B, int nSel, float scale) {
  int t = blockIdx.x * 64 + threadIdx.x, h = blockIdx.y;
  if (t >= T) return;
  int C = H * 64, c = t / B;
  {
    i64 so = (i64)blockIdx.z * T * C, sr = (i64)blockIdx.z * T * H;
    y += so; q += so; k += so; v += so; lse += sr; sel += sr * nSel; means += (i64)blockIdx.z * (T / B) * C;
  }
  float qr[64], acc[64];
  const float* qp = q + (i64)t * C + h * 64;
#pragma unroll
  for (int d = 0; d < 64; d++) { qr[d] = qp[d]; acc[d] = 0.f; }
  int best[MT_MAXSEL];
  select_top(best, qr, means, c, C, h, nSel);
  int* sp = sel + ((i64)t * H + h) * nSel;
  for (int s = 0; s < nSel; s++) sp[s] = best[s];
  float m = -INFINITY, l = 0.f;
  for (int s = 0; s <= nSel; s++) {
    int p0, p1;
    if (s < nSel) { if (best[s] < 0) continue; p0 = best[s] * B; p1 = p0 + B; }
    else { p0 = c * B; p1 = t + 1; }
    for (int p = p0; p < p1; p++) {
      float sc = dot64(qr, k + (i64)p * C + h * 64) * scale;
      const float* vp = v + (i64)p * C + h * 64;
      if (sc > m) {
        float f = expf(m - sc);
        l *= f;
#pragma unroll
        for (int d = 0; d < 64; d++) acc[d] *= f;
        m = sc;
      }
      float e = expf(sc - m);
      l += e;
#pragma unroll
      for (int d = 0; d < 64; d += 4) {
        float4 vv = *reinterpret_cast<const float4*>(vp + d);
        acc[d] += e * vv.x; acc[d + 1] += e * vv.y; acc[d + 2] += e * vv.z; acc[d + 3] += e * vv.w;
      }
    }
  }
  float il = 1.f / l;
  float* yp = y + (i64)t * C + h * 64;
#pragma unroll
  for (int d = 0; d < 64; d++) yp[d] = acc[d] * il;
  lse[(i64)t * H + h] = m + logf(l);
}

// D[t, h] = dy·y
extern "C" __global__ void tr_moba_dvec(float* D, const float* dy, const float* y, int T, int H) {
  int wid = (blockIdx.x * blockDim.x + threadIdx.x) >> 5, lane = threadIdx.x & 31;
  if (wid >= T * H) return;
  i64 o = (i64)(wid / H) * H * 64 + (wid % H) * 64 + lane;
  float s = warp_sum(dy[o] * y[o] + dy[o + 32] * y[o + 32]);
  if (lane == 0) D[wid] = s;
}

// dq = Σ_p P(dp − D)·scale·k_p, P = exp(q·k_p·scale − lse), dp = dy·v_p
extern "C" __global__ void __launch_bounds__(64) tr_moba_dq(float* dq, const float* dy, const float* q, const float* k,
                                                            const float* v, const float* lse, const float* D,
                                                            const int* sel, int T, int H, int B, int nSel, float scale) {
  int t = blockIdx.x * 64 + threadIdx.x, h = blockIdx.y;
  if (t >= T) return;
  int C = H * 64, c = t / B;
  {
    i64 so = (i64)blockIdx.z * T * C, sr = (i64)blockIdx.z * T * H;
    dq += so; dy += so; q += so; k += so; v += so; lse += sr; D += sr; sel += sr * nSel;
  }
  float qr[64], dyr[64], acc[64];
  i64 qo = (i64)t * C + h * 64;
#pragma unroll
  for (int d = 0; d < 64; d++) { qr[d] = q[qo + d]; dyr[d] = dy[qo + d]; acc[d] = 0.f; }
  float L = lse[(i64)t * H + h], Dv = D[(i64)t * H + h];
  const int* sp = sel + ((i64)t * H + h) * nSel;
  for (int s = 0; s <= nSel; s++) {
    int p0, p1;
    if (s < nSel) { int j = sp[s]; if (j < 0) continue; p0 = j * B; p1 = p0 + B; }
    else { p0 = c * B; p1 = t + 1; }
    for (int p = p0; p < p1; p++) {
      const float* kp = k + (i64)p * C + h * 64;
      float P = expf(dot64(qr, kp) * scale - L);
      float ds = P * (dot64(dyr, v + (i64)p * C + h * 64) - Dv) * scale;
#pragma unroll
      for (int d = 0; d < 64; d += 4) {
        float4 kv = *reinterpret_cast<const float4*>(kp + d);
        acc[d] += ds * kv.x; acc[d + 1] += ds * kv.y; acc[d + 2] += ds * kv.z; acc[d + 3] += ds * kv.w;
      }
    }
  }
#pragma unroll
  for (int d = 0; d < 64; d++) dq[qo + d] = acc[d];
}

// Key-centric: for key p (chunk c) the queries that see it are t ∈ [p, min((c+1)B, T)) and the queries of
// list[listOff[h·nc + c] .. listOff[h·nc + c + 1]) (those that selected chunk c; positions within the
// sequence; listOff has H·nc + 1 entries per sequence, indices into one list). mode 0: dv; mode 1: dk.
extern "C" __global__ void __launch_bounds__(64) tr_moba_dkv(float* out, const float* dy, const float* q, const float* k,
                                                             const float* v, const float* lse, const float* D,
                                                             const int* list, const int* listOff, int T, int H, int B,
                                                             int nc, float scale, int mode) {
  int p = blockIdx.x * 64 + threadIdx.x, h = blockIdx.y;
  if (p >= T) return;
  int C = H * 64, c = p / B;
  {
    i64 so = (i64)blockIdx.z * T * C, sr = (i64)blockIdx.z * T * H;
    out += so; dy += so; q += so; k += so; v += so; lse += sr; D += sr; listOff += (i64)blockIdx.z * (H * nc + 1);
  }
  float kr[64], vr[64], acc[64];
  i64 po = (i64)p * C + h * 64;
#pragma unroll
  for (int d = 0; d < 64; d++) { kr[d] = k[po + d]; vr[d] = mode ? v[po + d] : 0.f; acc[d] = 0.f; }
  // own chunk from its start (queries t < p skipped), so the lanes of a warp read the same query rows
  int c0 = c * B, ownEnd = min((c + 1) * B, T);
  int n1 = ownEnd - c0, l0 = 0, l1 = 0;
  if (c < nc) { l0 = listOff[h * nc + c]; l1 = listOff[h * nc + c + 1]; }
  int total = n1 + (l1 - l0);
  for (int u = 0; u < total; u++) {
    int t = u < n1 ? c0 + u : list[l0 + u - n1];
    if (t < p) continue;
    i64 qo = (i64)t * C + h * 64;
    const float* qp = q + qo;
    const float* dyp = dy + qo;
    float P = expf(dot64(kr, qp) * scale - lse[(i64)t * H + h]);
    if (mode == 0) {
#pragma unroll
      for (int d = 0; d < 64; d += 4) {
        float4 g = *reinterpret_cast<const float4*>(dyp + d);
        acc[d] += P * g.x; acc[d + 1] += P * g.y; acc[d + 2] += P * g.z; acc[d + 3] += P * g.w;
      }
    } else {
      float ds = P * (dot64(vr, dyp) - D[(i64)t * H + h]) * scale;
#pragma unroll
      for (int d = 0; d < 64; d += 4) {
        float4 g = *reinterpret_cast<const float4*>(qp + d);
        acc[d] += ds * g.x; acc[d + 1] += ds * g.y; acc[d + 2] += ds * g.z; acc[d + 3] += ds * g.w;
      }
    }
  }
#pragma unroll
  for (int d = 0; d < 64; d++) out[po + d] = acc[d];
}


// ---------------------------------------------------------------------------------------------
// Tensor-core kernels. Grid (⌈T/64⌉, H, Bn), 128 threads = 4 warps of 16 rows (queries, or keys in mt_dkv);
// in a warp, lane owns rows g = lane/4 and g + 8 of the warp's 16 and columns 2·(lane % 4) + {0, 1} of each
// group of 8 (the mma accumulator layout). B % 64 == 0, so a 64-row tile lies in one chunk.

// Selection per (query, head) as tr_moba_fwd's, and the tile mask: word w of mask[(b·H + h)·⌈T/64⌉ + tile]
// has bit i set when some query of the tile selected chunk 32w + i (nW = ⌈⌊T/B⌋/32⌉ words, ≥ 1).
extern "C" __global__ void __launch_bounds__(64) mt_select(int* sel, u32* mask, const float* q, const float* means, int T, int H, int B,
                                                           int nSel, int nW) {
  extern __shared__ u32 words[];
  const int t = blockIdx.x * 64 + threadIdx.x, h = blockIdx.y, C = H * 64, nQt = gridDim.x;
  for (int i = threadIdx.x; i < nW; i += 64) words[i] = 0u;
  __syncthreads();
  if (t < T) {
    i64 so = (i64)blockIdx.z * T * C;
    q += so; means += (i64)blockIdx.z * (T / B) * C; sel += (i64)blockIdx.z * T * H * nSel;
    float qr[64];
#pragma unroll
    for (int d = 0; d < 64; d++) qr[d] = q[(i64)t * C + h * 64 + d];
    int best[MT_MAXSEL];
    select_top(best, qr, means, t / B, C, h, nSel);
    int* sp = sel + ((i64)t * H + h) * nSel;
    for (int s = 0; s < nSel; s++) {
      sp[s] = best[s];
      if (best[s] >= 0) atomicOr(&words[best[s] >> 5], 1u << (best[s] & 31));
    }
  }
  __syncthreads();
  u32* mp = mask + (((i64)blockIdx.z * H + h) * nQt + blockIdx.x) * nW;
  for (int i = threadIdx.x; i < nW; i += 64) mp[i] = words[i];
}

__device__ __forceinline__ bool mask_bit(const u32* m, int j) { return (m[j >> 5] >> (j & 31)) & 1u; }

// The key tiles a query tile [t0, t0 + 64) of chunk ct visits: every tile of each selected chunk (in
// order), then its own chunk's tiles from the chunk start to the diagonal tile.
struct KeyTiles {
  const u32* m;  // the query tile's mask row
  int ct, B, t0, j, kt;
  __device__ void first() { j = next_chunk(-1); kt = j * B; }
  __device__ int next_chunk(int after) const {
    for (int x = after + 1; x < ct; x++) if (mask_bit(m, x)) return x;
    return ct;
  }
  __device__ bool done() const { return j == ct && kt > t0; }
  __device__ void advance() {
    kt += 64;
    if (j < ct && kt >= (j + 1) * B) { j = next_chunk(j); kt = j * B; }
  }
};

// Runs f(K tile, V tile, tiles) for each key tile a query tile [t0, t0 + 64) visits, the K and V tiles
// double-buffered in shared memory with cp.async (the next tile's loads overlap this tile's math)
template <class F>
__device__ __forceinline__ void walk_key_tiles(bf16 (*Ks)[64 * KS], bf16 (*Vs)[64 * KS], const bf16* kB, const bf16* vB, const u32* m,
                                               int t0, int B, int T, int C, int h, int tid, F f) {
  KeyTiles cur{m, t0 / B, B, t0, 0, 0};
  cur.first();
  KeyTiles nxt = cur;
  const int ownEnd = min(T, t0 + 64);
  load_kv_tile(Ks[0], Vs[0], kB, vB, cur.kt, cur.j < cur.ct ? T : ownEnd, C, h, tid);
  __syncthreads();
  for (int i = 0; !cur.done(); i++) {
    nxt.advance();
    if (!nxt.done()) {
      load_kv_tile(Ks[(i + 1) & 1], Vs[(i + 1) & 1], kB, vB, nxt.kt, nxt.j < nxt.ct ? T : ownEnd, C, h, tid);
      cp_wait1();
    } else cp_wait0();
    __syncthreads();
    f(Ks[i & 1], Vs[i & 1], cur);
    __syncthreads();
    cur = nxt;
  }
}

// 16 rows × 64 dims of a bf16 [R, C] matrix (rows r0 = row g, r1 = row g + 8; ≥ T → zeros) as A fragments
__device__ __forceinline__ void load_afrag(u32 (&f)[4][4], const bf16* X, int r0, int r1, int T, int C, int h, int c4) {
#pragma unroll
  for (int ks = 0; ks < 4; ks++) {
    int d = h * 64 + ks * 16 + 2 * c4;
    f[ks][0] = r0 < T ? *(const u32*)(X + (i64)r0 * C + d) : 0u;
    f[ks][1] = r1 < T ? *(const u32*)(X + (i64)r1 * C + d) : 0u;
    f[ks][2] = r0 < T ? *(const u32*)(X + (i64)r0 * C + d + 8) : 0u;
    f[ks][3] = r1 < T ? *(const u32*)(X + (i64)r1 * C + d + 8) : 0u;
  }
}

__device__ __forceinline__ void zero_acc(float (&c)[8][4]) {
#pragma unroll
  for (int n = 0; n < 8; n++) c[n][0] = c[n][1] = c[n][2] = c[n][3] = 0.f;
}

// rows r0/r1 of a [R, C] float32 matrix ← acc·f
__device__ __forceinline__ void store_acc(float* Y, const float (&c)[8][4], int r0, int r1, int T, int C, int h, int c4, float f) {
#pragma unroll
  for (int n = 0; n < 8; n++) {
    int d = h * 64 + n * 8 + 2 * c4;
    if (r0 < T) *(float2*)(Y + (i64)r0 * C + d) = make_float2(c[n][0] * f, c[n][1] * f);
    if (r1 < T) *(float2*)(Y + (i64)r1 * C + d) = make_float2(c[n][2] * f, c[n][3] * f);
  }
}

// the query tile's selections into shared memory (−1 past nSel or T)
__device__ __forceinline__ void load_sel(int (*selS)[MT_MAXSEL], const int* sel, int t0, int T, int H, int h, int nSel) {
  if (threadIdx.x < 64) {
    int t = t0 + threadIdx.x;
    for (int s = 0; s < MT_MAXSEL; s++) selS[threadIdx.x][s] = (t < T && s < nSel) ? sel[((i64)t * H + h) * nSel + s] : -1;
  }
}
__device__ __forceinline__ bool has_sel(const int* row, int j) {
  bool f = false;
#pragma unroll
  for (int s = 0; s < MT_MAXSEL; s++) f |= row[s] == j;
  return f;
}

// y = softmax(q·Kᵀ·scale)·V over the visible keys, lse2 = log2 Σ exp2(q·k·scaleLog2) (scaleLog2 = scale·log2 e)
extern "C" __global__ void __launch_bounds__(128) mt_fwd(float* y, float* lse2, const bf16* qB, const bf16* kB, const bf16* vB,
    const int* sel, const u32* mask, int T, int H, int B, int nSel, int nW, float scaleLog2) {
  __shared__ __align__(16) bf16 Ks[2][64 * KS];
  __shared__ __align__(16) bf16 Vs[2][64 * KS];
  __shared__ int selS[64][MT_MAXSEL];
  const int C = H * 64, h = blockIdx.y, t0 = blockIdx.x * 64, nQt = gridDim.x;
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, g = lane >> 2, c4 = lane & 3;
  {
    i64 so = (i64)blockIdx.z * T * C, sr = (i64)blockIdx.z * T * H;
    y += so; qB += so; kB += so; vB += so; lse2 += sr; sel += sr * nSel;
  }
  load_sel(selS, sel, t0, T, H, h, nSel);
  const int ra = warp * 16 + g, rb = ra + 8, ta = t0 + ra, tb = t0 + rb;
  u32 qf[4][4];
  load_afrag(qf, qB, ta, tb, T, C, h, c4);
  float o[8][4];
  zero_acc(o);
  float ma = -INFINITY, mb = -INFINITY, la = 0.f, lb = 0.f;
  walk_key_tiles(Ks, Vs, kB, vB, mask + (((i64)blockIdx.z * H + h) * nQt + blockIdx.x) * nW, t0, B, T, C, h, tid,
                 [&](const bf16* K, const bf16* V, const KeyTiles& tl) {
    const int kt = tl.kt;
    if (tl.j < tl.ct) {
      const bool sa = has_sel(selS[ra], tl.j), sb = has_sel(selS[rb], tl.j);
      attn_tile(K, V, qf, o, ma, mb, la, lb, scaleLog2, lane, [&](int, int row) { return row == 0 ? sa : sb; });
    } else {
      attn_tile(K, V, qf, o, ma, mb, la, lb, scaleLog2, lane, [&](int col, int row) { return kt + col <= (row == 0 ? ta : tb); });
    }
  });
  la += __shfl_xor_sync(0xffffffffu, la, 1);
  la += __shfl_xor_sync(0xffffffffu, la, 2);
  lb += __shfl_xor_sync(0xffffffffu, lb, 1);
  lb += __shfl_xor_sync(0xffffffffu, lb, 2);
#pragma unroll
  for (int n = 0; n < 8; n++) {
    int d = h * 64 + n * 8 + 2 * c4;
    if (ta < T) *(float2*)(y + (i64)ta * C + d) = make_float2(o[n][0] / la, o[n][1] / la);
    if (tb < T) *(float2*)(y + (i64)tb * C + d) = make_float2(o[n][2] / lb, o[n][3] / lb);
  }
  if (c4 == 0) {
    if (ta < T) lse2[(i64)ta * H + h] = ma + log2f(la);
    if (tb < T) lse2[(i64)tb * H + h] = mb + log2f(lb);
  }
}

// P (in place of s) = exp2(s·scaleLog2 − lse2 of its row or column) where valid, else 0. byCol: the softmax
// row is the accumulator's column (mt_dkv works on transposed tiles).
template <class Valid>
__device__ __forceinline__ void probs(float (&s)[8][4], float scaleLog2, float la, float lb, const float* lseCol, int c4, Valid valid) {
#pragma unroll
  for (int n = 0; n < 8; n++) {
#pragma unroll
    for (int u = 0; u < 4; u++) {
      int col = n * 8 + 2 * c4 + (u & 1), row = u >> 1;
      float l = lseCol ? lseCol[col] : (row ? lb : la);
      s[n][u] = valid(col, row) ? exp2f(s[n][u] * scaleLog2 - l) : 0.f;
    }
  }
}

// dQ = scale · Σ_keys P ⊙ (dP − D) · k, dP = dy·vᵀ, over the same key tiles as mt_fwd
extern "C" __global__ void __launch_bounds__(128) mt_dq(float* dq, const bf16* qB, const bf16* kB, const bf16* vB, const bf16* dyB,
    const float* lse2, const float* Dv, const int* sel, const u32* mask, int T, int H, int B, int nSel, int nW, float scaleLog2, float scale) {
  __shared__ __align__(16) bf16 Ks[2][64 * KS];
  __shared__ __align__(16) bf16 Vs[2][64 * KS];
  __shared__ int selS[64][MT_MAXSEL];
  const int C = H * 64, h = blockIdx.y, t0 = blockIdx.x * 64, nQt = gridDim.x;
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, g = lane >> 2, c4 = lane & 3;
  {
    i64 so = (i64)blockIdx.z * T * C, sr = (i64)blockIdx.z * T * H;
    dq += so; qB += so; kB += so; vB += so; dyB += so; lse2 += sr; Dv += sr; sel += sr * nSel;
  }
  load_sel(selS, sel, t0, T, H, h, nSel);
  const int ra = warp * 16 + g, rb = ra + 8, ta = t0 + ra, tb = t0 + rb;
  u32 qf[4][4], df[4][4];
  load_afrag(qf, qB, ta, tb, T, C, h, c4);
  load_afrag(df, dyB, ta, tb, T, C, h, c4);
  const float La = ta < T ? lse2[(i64)ta * H + h] : 0.f, Lb = tb < T ? lse2[(i64)tb * H + h] : 0.f;
  const float Da = ta < T ? Dv[(i64)ta * H + h] : 0.f, Db = tb < T ? Dv[(i64)tb * H + h] : 0.f;
  float acc[8][4];
  zero_acc(acc);
  walk_key_tiles(Ks, Vs, kB, vB, mask + (((i64)blockIdx.z * H + h) * nQt + blockIdx.x) * nW, t0, B, T, C, h, tid,
                 [&](const bf16* K, const bf16* V, const KeyTiles& tl) {
    const int kt = tl.kt;
    const bool own = tl.j == tl.ct;
    const bool sa = own || has_sel(selS[ra], tl.j), sb = own || has_sel(selS[rb], tl.j);
    float p[8][4], dp[8][4];
    mma_abt(p, qf, K, lane);
    probs(p, scaleLog2, La, Lb, nullptr, c4, [&](int col, int row) {
      return row == 0 ? sa && (!own || kt + col <= ta) : sb && (!own || kt + col <= tb);
    });
    mma_abt(dp, df, V, lane);
#pragma unroll
    for (int n = 0; n < 8; n++) {
      dp[n][0] = p[n][0] * (dp[n][0] - Da); dp[n][1] = p[n][1] * (dp[n][1] - Da);
      dp[n][2] = p[n][2] * (dp[n][2] - Db); dp[n][3] = p[n][3] * (dp[n][3] - Db);
    }
    u32 sf[4][4];
    to_afrag(sf, dp);
    mma_ab(acc, sf, K, lane);
  });
  store_acc(dq, acc, ta, tb, T, C, h, c4, scale);
}

// The query tiles a key tile [k0, k0 + 64) of chunk c is seen by: its own chunk's from the diagonal tile to
// the chunk's end, then every later tile whose mask has chunk c.
struct QueryTiles {
  const u32* m;  // mask rows of the sequence and head, nW words per query tile
  int c, nW, nQt, ownLast, qt;
  __device__ bool done() const { return qt >= nQt; }
  __device__ bool own() const { return qt <= ownLast; }
  __device__ void advance() {
    qt++;
    while (qt > ownLast && qt < nQt && !mask_bit(m + (i64)qt * nW, c)) qt++;
  }
};

// the query tile's Q and dy rows (cp.async), and per query its lse2, D and whether it sees chunk c (own
// tiles: all; later tiles: those that selected c); rows ≥ T see nothing
__device__ __forceinline__ void load_q_tile(bf16* Qs, bf16* Ds, float* lseS, float* DS, int* okS, const bf16* qB, const bf16* dyB,
    const float* lse2, const float* Dv, const int* sel, int t0, int T, int H, int h, int nSel, int c, bool own, int tid) {
  const int C = H * 64;
  for (int e = tid; e < 64 * 8; e += 128) {
    int r = e >> 3, c8 = (e & 7) * 8;
    bool ok = t0 + r < T;
    i64 off = (i64)(ok ? t0 + r : 0) * C + h * 64 + c8;
    cp16(&Qs[r * KS + c8], qB + off, ok ? 16 : 0);
    cp16(&Ds[r * KS + c8], dyB + off, ok ? 16 : 0);
  }
  cp_commit();
  if (tid < 64) {
    int t = t0 + tid;
    bool ok = t < T;
    if (ok && !own) {
      bool f = false;
      for (int s = 0; s < nSel; s++) f |= sel[((i64)t * H + h) * nSel + s] == c;
      ok = f;
    }
    okS[tid] = ok;
    lseS[tid] = ok ? lse2[(i64)t * H + h] : 0.f;
    DS[tid] = ok ? Dv[(i64)t * H + h] : 0.f;
  }
}

// dV = Σ_queries Pᵀ·dy, dK = scale · Σ_queries (P ⊙ (dP − D))ᵀ·q; the warp's 16 rows are keys, the tile's
// 64 columns queries
extern "C" __global__ void __launch_bounds__(128) mt_dkv(float* dk, float* dv, const bf16* qB, const bf16* kB, const bf16* vB,
    const bf16* dyB, const float* lse2, const float* Dv, const int* sel, const u32* mask, int T, int H, int B, int nSel, int nW,
    float scaleLog2, float scale) {
  __shared__ __align__(16) bf16 Qs[2][64 * KS];
  __shared__ __align__(16) bf16 Ds[2][64 * KS];
  __shared__ float lseS[2][64], DS[2][64];
  __shared__ int okS[2][64];
  const int C = H * 64, h = blockIdx.y, k0 = blockIdx.x * 64, nQt = gridDim.x, c = k0 / B;
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, g = lane >> 2, c4 = lane & 3;
  {
    i64 so = (i64)blockIdx.z * T * C, sr = (i64)blockIdx.z * T * H;
    dk += so; dv += so; qB += so; kB += so; vB += so; dyB += so; lse2 += sr; Dv += sr; sel += sr * nSel;
  }
  const int ra = warp * 16 + g, rb = ra + 8, pa = k0 + ra, pb = k0 + rb;
  u32 kf[4][4], vf[4][4];
  load_afrag(kf, kB, pa, pb, T, C, h, c4);
  load_afrag(vf, vB, pa, pb, T, C, h, c4);
  float gk[8][4], gv[8][4];
  zero_acc(gk);
  zero_acc(gv);
  QueryTiles cur{mask + ((i64)blockIdx.z * H + h) * nQt * nW, c, nW, nQt, min(nQt, ((c + 1) * B + 63) / 64) - 1, k0 / 64};
  QueryTiles nxt = cur;
  load_q_tile(Qs[0], Ds[0], lseS[0], DS[0], okS[0], qB, dyB, lse2, Dv, sel, cur.qt * 64, T, H, h, nSel, c, cur.own(), tid);
  for (int i = 0; !cur.done(); i++) {
    nxt.advance();
    const int b = i & 1, nb = b ^ 1;
    if (!nxt.done()) {
      load_q_tile(Qs[nb], Ds[nb], lseS[nb], DS[nb], okS[nb], qB, dyB, lse2, Dv, sel, nxt.qt * 64, T, H, h, nSel, c, nxt.own(), tid);
      cp_wait1();
    } else cp_wait0();
    __syncthreads();
    const int q0 = cur.qt * 64;
    const bool own = cur.own();
    const int* ok = okS[b];
    float p[8][4], dp[8][4];
    mma_abt(p, kf, Qs[b], lane);  // [key][query]
    probs(p, scaleLog2, 0.f, 0.f, lseS[b], c4, [&](int col, int row) {
      return ok[col] && (!own || q0 + col >= (row == 0 ? pa : pb));
    });
    u32 pf[4][4];
    to_afrag(pf, p);
    mma_ab(gv, pf, Ds[b], lane);
    mma_abt(dp, vf, Ds[b], lane);  // dPᵀ [key][query]
#pragma unroll
    for (int n = 0; n < 8; n++) {
#pragma unroll
      for (int u = 0; u < 4; u++) dp[n][u] = p[n][u] * (dp[n][u] - DS[b][n * 8 + 2 * c4 + (u & 1)]);
    }
    to_afrag(pf, dp);
    mma_ab(gk, pf, Qs[b], lane);
    __syncthreads();
    cur = nxt;
  }
  store_acc(dk, gk, pa, pb, T, C, h, c4, scale);
  store_acc(dv, gv, pa, pb, T, C, h, c4, 1.f);
}
