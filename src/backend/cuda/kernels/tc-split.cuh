// fp32 products on bf16 tensor cores, as hi + lo operand pairs (x = hi + lo, both bf16; three products, lo·lo
// dropped: about 2⁻¹⁷ relative per product): the tensor-core WKV-7 scans of inference (rwkvx.cu) and training
// (wkv7-train.cu). Inlined by module-cache.ts like common.cuh (include common.cuh and attn.cuh first).

__device__ __forceinline__ void split_bf16(float a, float b, u32& hi, u32& lo) {
  hi = pack_bf16(a, b);
  lo = pack_bf16(a - __uint_as_float(hi << 16), b - __uint_as_float(hi & 0xffff0000u));
}
// d += A·B with A = ah + al, B = (bh0, bh1) + (bl0, bl1), the small products first into e and f: e = f = d for
// one accumulator, or accumulators of their own for the corrections (shorter dependent chains)
__device__ __forceinline__ void mma16816x3s(float* d, float* e, float* f, const u32* ah, const u32* al, u32 bh0, u32 bh1, u32 bl0, u32 bl1) {
  mma16816(e, al, bh0, bh1);
  mma16816(f, ah, bl0, bl1);
  mma16816(d, ah, bh0, bh1);
}
// B fragment (k rows 2t, 2t + 1, 2t + 8, 2t + 9 of column g) of an fp32 matrix in shared memory, split
__device__ __forceinline__ void bfrag_split(const float* p, int ld, u32& h0, u32& h1, u32& l0, u32& l1) {
  split_bf16(p[0], p[ld], h0, l0);
  split_bf16(p[8 * ld], p[9 * ld], h1, l1);
}
// accumulator tiles c0, c1 (16 × 8 each, columns 8n … 8n + 15) are, packed, the A fragment of those 16 columns
__device__ __forceinline__ void afrag_split(const float* c0, const float* c1, u32* ah, u32* al) {
  split_bf16(c0[0], c0[1], ah[0], al[0]);
  split_bf16(c0[2], c0[3], ah[1], al[1]);
  split_bf16(c1[0], c1[1], ah[2], al[2]);
  split_bf16(c1[2], c1[3], ah[3], al[3]);
}
// A fragment of Xᵀ (rows i, columns tt) from X [tokens][ld] in shared memory, p = &X[0][first row + g]:
// element [i][tt] = X[tt][i]
__device__ __forceinline__ void afrag_split_t(const float* p, int ld, u32* ah, u32* al) {
  const int t = threadIdx.x & 3;
  split_bf16(p[(2 * t) * ld], p[(2 * t + 1) * ld], ah[0], al[0]);
  split_bf16(p[(2 * t) * ld + 8], p[(2 * t + 1) * ld + 8], ah[1], al[1]);
  split_bf16(p[(2 * t + 8) * ld], p[(2 * t + 9) * ld], ah[2], al[2]);
  split_bf16(p[(2 * t + 8) * ld + 8], p[(2 * t + 9) * ld + 8], ah[3], al[3]);
}
// B fragment of Wᵀ from W [n][k] in shared memory (k contiguous), p = &W[column g][k0 + 2t]: the pairs (2t, 2t + 1)
// and (2t + 8, 2t + 9) as 8-byte loads
__device__ __forceinline__ void bfrag_split_rows(const float* p, u32& h0, u32& h1, u32& l0, u32& l1) {
  const float2 x0 = *(const float2*)p, x1 = *(const float2*)(p + 8);
  split_bf16(x0.x, x0.y, h0, l0);
  split_bf16(x1.x, x1.y, h1, l1);
}
// A fragment (rows g, g + 8; columns k0 + 2t, + 1, + 8, + 9) of a 16-row fp32 matrix X [16][ld] in shared memory, split
__device__ __forceinline__ void afrag_split_rows(const float* X, int ld, int k0, u32* ah, u32* al) {
  const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
  const float* p = X + g * ld + k0 + 2 * t;
  const float2 a0 = *(const float2*)p, a1 = *(const float2*)(p + 8 * ld), a2 = *(const float2*)(p + 8), a3 = *(const float2*)(p + 8 * ld + 8);
  split_bf16(a0.x, a0.y, ah[0], al[0]);
  split_bf16(a1.x, a1.y, ah[1], al[1]);
  split_bf16(a2.x, a2.y, ah[2], al[2]);
  split_bf16(a3.x, a3.y, ah[3], al[3]);
}
// a 16-row tile of accumulators (rows r0 + g, r0 + g + 8 of a [64][64] fp32 matrix, 8 column tiles) to global memory
__device__ __forceinline__ void tc_store_rows(float* dst, const float (*s)[4], int r0) {
  const int g = (threadIdx.x & 31) >> 2, t = threadIdx.x & 3;
#pragma unroll
  for (int nt = 0; nt < 8; nt++) {
    *(float2*)&dst[(r0 + g) * 64 + 8 * nt + 2 * t] = make_float2(s[nt][0], s[nt][1]);
    *(float2*)&dst[(r0 + g + 8) * 64 + 8 * nt + 2 * t] = make_float2(s[nt][2], s[nt][3]);
  }
}
// a scan's y: tiles 2 and 3 of each row tile's [U | Y] accumulators (columns: the chunk's 16 tokens), staged in
// this warp's sY [16][16 MT + 4] so each token's 16 · MT rows leave as contiguous bytes; y = &y[chunk's first
// token][this warp's first row], rows ld apart, ntok of the 16 tokens in range
template <int MT> __device__ __forceinline__ void tc_write_y(float* y, int ld, int ntok, float* sY, const float (*o)[4][4]) {
  constexpr int LY = 16 * MT + 4;
  const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
#pragma unroll
  for (int m = 0; m < MT; m++)
#pragma unroll
    for (int np = 2; np < 4; np++) {
      const int tt = 8 * (np - 2) + 2 * t, i = 16 * m + g;
      sY[tt * LY + i] = o[m][np][0]; sY[(tt + 1) * LY + i] = o[m][np][1];
      sY[tt * LY + i + 8] = o[m][np][2]; sY[(tt + 1) * LY + i + 8] = o[m][np][3];
    }
  __syncwarp();
#pragma unroll
  for (int q = 0; q < 2 * MT; q++) {
    const int e = lane + 32 * q, tt = e / (4 * MT), c4 = (e % (4 * MT)) * 4;
    if (tt < ntok) *(float4*)(y + tt * ld + c4) = *(const float4*)&sY[tt * LY + c4];
  }
}
