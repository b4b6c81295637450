// Tensor-core building blocks of the attention kernels (inference: rwkvx.cu; training: moba-train.cu):
// mma.sync m16n8k16 bf16 → fp32, ldmatrix loads of 64×64 bf16 tiles, the flash-attention tile step.
// Inlined by module-cache.ts like common.cuh (include common.cuh first).

__device__ __forceinline__ void mma16816(float* d, const u32* a, u32 b0, u32 b1) {
#ifdef RWKVX_EMU
  emu_mma16816(d, a, b0, b1);
#else
  asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
               : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#endif
}

__device__ __forceinline__ int window_start(int mode, int t, int P, int B, int wsConst) {
  if (mode == 0) return ((P + t) / B) * B;
  if (mode == 1) return 0;
  if (mode == 2) return P + (t / B) * B;
  return wsConst;
}

#define KS 72  // padded row length (bf16) of the shared K and V tiles (144 bytes: ldmatrix rows hit distinct banks)

// four 8×8 bf16 matrices from shared memory; lane l gives the address of row l & 7 of matrix l >> 3
#ifdef RWKVX_EMU
__device__ __forceinline__ void ldsm_x4(u32& r0, u32& r1, u32& r2, u32& r3, const bf16* p) {
  u32 r[4]; emu_ldsm_x4(r, p, false); r0 = r[0]; r1 = r[1]; r2 = r[2]; r3 = r[3];
}
__device__ __forceinline__ void ldsm_x4_t(u32& r0, u32& r1, u32& r2, u32& r3, const bf16* p) {
  u32 r[4]; emu_ldsm_x4(r, p, true); r0 = r[0]; r1 = r[1]; r2 = r[2]; r3 = r[3];
}
#else
__device__ __forceinline__ void ldsm_x4(u32& r0, u32& r1, u32& r2, u32& r3, const bf16* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];"
               : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3) : "r"(smem_u32(p)));
}
__device__ __forceinline__ void ldsm_x4_t(u32& r0, u32& r1, u32& r2, u32& r3, const bf16* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];"
               : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3) : "r"(smem_u32(p)));
}
#endif

// Warp-level 16×64 products on tensor cores, the 64×64 operand a bf16 tile in shared memory (row length KS).
// A operands are m16n8k16 A fragments af[k-slice of 16][4]; accumulators are c[8 column groups of 8][4]
// (c[n][0..1]: row g, columns n·8 + 2·(lane & 3) + 0..1; c[n][2..3]: row g + 8).

// c = A·Bᵀ: Bs holds the 64 rows of B (each a row of 64 along the shared dimension); ldmatrix gives the
// "col" operand directly
__device__ __forceinline__ void mma_abt(float (&c)[8][4], const u32 (&af)[4][4], const bf16* Bs, int lane) {
  const int mi = lane >> 3, r8 = lane & 7;
#pragma unroll
  for (int n = 0; n < 8; n++) {
    c[n][0] = c[n][1] = c[n][2] = c[n][3] = 0.f;
#pragma unroll
    for (int kp = 0; kp < 2; kp++) {
      u32 b0, b1, b2, b3;
      ldsm_x4(b0, b1, b2, b3, Bs + (n * 8 + r8) * KS + kp * 32 + mi * 8);
      mma16816(c[n], af[2 * kp], b0, b1);
      mma16816(c[n], af[2 * kp + 1], b2, b3);
    }
  }
}
// c += A·B: Bs row-major [shared dimension 16·NK (64 by default)][64 columns], transposed on the way by
// ldmatrix.trans
template <int NK = 4>
__device__ __forceinline__ void mma_ab(float (&c)[8][4], const u32 (&af)[NK][4], const bf16* Bs, int lane) {
  const int mi = lane >> 3, r8 = lane & 7;
#pragma unroll
  for (int ks = 0; ks < NK; ks++) {
#pragma unroll
    for (int np = 0; np < 4; np++) {
      u32 b0, b1, b2, b3;
      ldsm_x4_t(b0, b1, b2, b3, Bs + (ks * 16 + (mi & 1) * 8 + r8) * KS + (2 * np + (mi >> 1)) * 8);
      mma16816(c[2 * np], af[ks], b0, b1);
      mma16816(c[2 * np + 1], af[ks], b2, b3);
    }
  }
}
// the warp's A fragments for S = Q·Kᵀ from fp32 query rows of one head (64 values each, rounded to bf16):
// qa for row g = lane / 4, qb for row g + 8; a null row gives zeros
__device__ __forceinline__ void load_q_frag(u32 (&qf)[4][4], const float* qa, const float* qb, int c4) {
  const float2 z = make_float2(0.f, 0.f);
#pragma unroll
  for (int ks = 0; ks < 4; ks++) {
    const int d = ks * 16 + 2 * c4;
    float2 a0 = qa ? *(const float2*)(qa + d) : z, a2 = qa ? *(const float2*)(qa + d + 8) : z;
    float2 b0 = qb ? *(const float2*)(qb + d) : z, b2 = qb ? *(const float2*)(qb + d + 8) : z;
    qf[ks][0] = pack_bf16(a0.x, a0.y);
    qf[ks][1] = pack_bf16(b0.x, b0.y);
    qf[ks][2] = pack_bf16(a2.x, a2.y);
    qf[ks][3] = pack_bf16(b2.x, b2.y);
  }
}
// an accumulator (16×64, fp32) as the A operand of the next product (bf16)
__device__ __forceinline__ void to_afrag(u32 (&af)[4][4], const float (&c)[8][4]) {
#pragma unroll
  for (int ks = 0; ks < 4; ks++) {
    af[ks][0] = pack_bf16(c[2 * ks][0], c[2 * ks][1]);
    af[ks][1] = pack_bf16(c[2 * ks][2], c[2 * ks][3]);
    af[ks][2] = pack_bf16(c[2 * ks + 1][0], c[2 * ks + 1][1]);
    af[ks][3] = pack_bf16(c[2 * ks + 1][2], c[2 * ks + 1][3]);
  }
}

// 64 keys × 64 dims of K and V (row-major, padded rows) into shared memory, asynchronously; rows at or
// past `end` are zero-filled
__device__ __forceinline__ void load_kv_tile(bf16* Ks, bf16* Vs, const bf16* K, const bf16* V, int kt, int end, int C, int h, int tid) {
  for (int e = tid; e < 64 * 8; e += 128) {
    int r = e >> 3, c8 = (e & 7) * 8;
    bool ok = kt + r < end;
    long long off = (long long)(ok ? kt + r : 0) * C + h * 64 + c8;
    cp16(&Ks[r * KS + c8], K + off, ok ? 16 : 0);
    cp16(&Vs[r * KS + c8], V + off, ok ? 16 : 0);
  }
  cp_commit();
}

// One 64-key tile for the warp's 16 query rows (row a = g, row b = g + 8): S = Q·Kᵀ with K fragments by
// ldmatrix, the mask valid(key column 0..63, row 0 = a / 1 = b), online softmax in exp2, O += P·V with
// V fragments by ldmatrix.trans (V stays row-major in shared memory).
template <class Valid>
__device__ __forceinline__ void attn_tile(const bf16* Ks, const bf16* Vs, const u32 (&qf)[4][4], float (&o)[8][4],
    float& ma, float& mb, float& la, float& lb, float scaleLog2, int lane, Valid valid) {
  const int c4 = lane & 3;
  float s[8][4];
  mma_abt(s, qf, Ks, lane);
  float mxa = -INFINITY, mxb = -INFINITY;
#pragma unroll
  for (int n = 0; n < 8; n++) {
#pragma unroll
    for (int u = 0; u < 2; u++) {
      int col = n * 8 + 2 * c4 + u;
      s[n][u] = valid(col, 0) ? s[n][u] * scaleLog2 : -INFINITY;
      s[n][2 + u] = valid(col, 1) ? s[n][2 + u] * scaleLog2 : -INFINITY;
      mxa = fmaxf(mxa, s[n][u]);
      mxb = fmaxf(mxb, s[n][2 + u]);
    }
  }
  mxa = fmaxf(mxa, __shfl_xor_sync(0xffffffffu, mxa, 1));
  mxa = fmaxf(mxa, __shfl_xor_sync(0xffffffffu, mxa, 2));
  mxb = fmaxf(mxb, __shfl_xor_sync(0xffffffffu, mxb, 1));
  mxb = fmaxf(mxb, __shfl_xor_sync(0xffffffffu, mxb, 2));
  float na = fmaxf(ma, mxa), nb = fmaxf(mb, mxb);
  float ua = na == -INFINITY ? 0.f : na, ub = nb == -INFINITY ? 0.f : nb;
  float fa = exp2f(ma - ua), fb = exp2f(mb - ub);
  ma = na; mb = nb;
  la *= fa; lb *= fb;
#pragma unroll
  for (int n = 0; n < 8; n++) { o[n][0] *= fa; o[n][1] *= fa; o[n][2] *= fb; o[n][3] *= fb; }
#pragma unroll
  for (int n = 0; n < 8; n++) {
    s[n][0] = exp2f(s[n][0] - ua); s[n][1] = exp2f(s[n][1] - ua);
    s[n][2] = exp2f(s[n][2] - ub); s[n][3] = exp2f(s[n][3] - ub);
    la += s[n][0] + s[n][1]; lb += s[n][2] + s[n][3];
  }
  u32 pf[4][4];
  to_afrag(pf, s);
  mma_ab(o, pf, Vs, lane);
}
