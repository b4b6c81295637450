// Top-nSel chunk choice by one warp (inference: select_chunks in rwkvx.cu, the decode step's
// dec_select in decode.cu — one code, so prefill and decoding choose the same chunks). Each lane keeps
// its best MAXSEL candidates sorted (strictly better moves ahead, equal scores keep the lower index
// first); the warp then pops the overall best nSel, ties to the lower index. Needs MAXSEL defined.

__device__ __forceinline__ void topk_init(float (&bs)[MAXSEL], int (&bi)[MAXSEL]) {
#pragma unroll
  for (int s = 0; s < MAXSEL; s++) { bs[s] = -INFINITY; bi[s] = -1; }
}

// the lane's candidate j with score sc, offered after the lane's earlier (lower-index) candidates
__device__ __forceinline__ void topk_insert(float (&bs)[MAXSEL], int (&bi)[MAXSEL], float sc, int j, int nSel) {
  int carryI = j; float carryS = sc;
#pragma unroll
  for (int s = 0; s < MAXSEL; s++) {
    if (s < nSel && (bi[s] < 0 || carryS > bs[s])) {
      float ts = bs[s]; int ti = bi[s];
      bs[s] = carryS; bi[s] = carryI;
      carryS = ts; carryI = ti;
      if (carryI < 0) break;
    }
  }
}

// every lane gets the best nSel indices of its group of W lanes (the warp, or aligned groups of 16, 8, …)
// in out (best first; −1 past nSel or where none is left)
template <int W = 32>
__device__ __forceinline__ void topk_merge(float (&bs)[MAXSEL], int (&bi)[MAXSEL], int nSel, int (&out)[MAXSEL]) {
#pragma unroll
  for (int s = 0; s < MAXSEL; s++) {
    float bv = bs[0]; int bix = bi[0];
    const int ix = bi[0];
#pragma unroll
    for (int o = W / 2; o > 0; o >>= 1) {
      float ov = __shfl_xor_sync(0xffffffffu, bv, o);
      int oi = __shfl_xor_sync(0xffffffffu, bix, o);
      bool take = oi >= 0 && (bix < 0 || ov > bv || (ov == bv && oi < bix));
      if (take) { bv = ov; bix = oi; }
    }
    out[s] = (s < nSel) ? bix : -1;
    if (bix >= 0 && bix == ix) {  // the winner pops its head
#pragma unroll
      for (int u = 0; u < MAXSEL - 1; u++) { bs[u] = bs[u + 1]; bi[u] = bi[u + 1]; }
      bs[MAXSEL - 1] = -INFINITY; bi[MAXSEL - 1] = -1;
    }
  }
}
