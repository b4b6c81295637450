// Chunked WKV-7 for TRAINING: a drop-in replacement for train.cu's sequential `tr_wkv_fwd` / `tr_wkv_bwd`
// (the default; RWKVX_TRAIN_WKV=seq switches back; src/backend/cuda/train/wkv7-chunked.ts). Same layout and contract:
// Bn sequences of T tokens, rows [b·T, (b+1)·T) of [R, C] float32 inputs (r, ω, k̃, v, κ̂, a), every sequence
// starting from S = 0; the chunk-start states go to ckpt [Bn, ⌈T/16⌉, H, 64, 64] (state row i = value
// index, column j = key index), exactly the states tr_wkv_fwd saves every 16 tokens; the backward ADDS
// (+=) into dr, dω, dk̃, dv, dκ̂ (the α = −κ̂ part only) and db (the gradient of b = κ̂⊙a), as tr_wkv_bwd.
//
// Math and names: docs/wkv7-chunked.md and its float64 reference src/train/wkv7-chunked.ts (α = −κ̂,
// β = κ̂⊙a, k = k̃; per chunk Γ_t = w_1⊙…⊙w_t, Ã_t = α_t⊙Γ_{t−1}, R̃_t = r_t⊙Γ_t, B̂_t = β_t/Γ_t,
// K̂_t = k_t/Γ_t, P_t = β_t⊙Γ_n/Γ_t, Q_t = k_t⊙Γ_n/Γ_t; A, A_k strictly lower, B_m, B_k lower).
// Chunk length 16; tokens past T are identity tokens (w = 1, everything else 0), which change nothing.
//
// Kernels (the training forward, then the 3-pass backward):
//   wkt_prep   grid (chunks, H, Bn), 256 threads: per (sequence, chunk, head) the state-free record
//              [Wc | Qf | P | Q | U0 | Y0 | Γ_n] (WKT_REC floats; Wc = (I − A)⁻¹Ã, U0 = (I − A)⁻¹A_k V,
//              Qf = R̃ + B_m Wc, Y0 = B_m U0 + B_k V): U = Wc S_0ᵀ + U0, Y = Qf S_0ᵀ + Y0.
//   wkt_scan   grid (H, 64/8, Bn), 128 threads: 8 state rows, sequential over chunks; writes y and ckpt
//              (and the final state when `sfin` is not null).
//   wkt_chain  grid (H, 64/8, Bn), 128 threads: the backward's only sequential pass, last chunk to first,
//              carrying the rows g of dS: p_t = P_t·g, g ← Γ_n⊙g + Σ_t p_t Wc_t + dY_{t,i} Qf_t; writes
//              the gradient of every chunk-END state to gend (layout of ckpt), and dS_0 to `dsin` if not null.
//   wkt_grad   grid (chunks, H, Bn), 256 threads, WKT_GRAD_SMEM bytes of dynamic shared memory: all input
//              gradients of one (sequence, chunk, head) from its start state (ckpt), end-state gradient
//              (gend), dy and the recomputed factors. Each block owns its tokens × 64 channels: plain +=.
// The record is written by the forward's wkt_prep and read by wkt_scan and wkt_chain (the trainer's
// backward recomputes each block's forward first, so the record is there).
//
// Every kernel body is a __host__ __device__ template over an executor X: X::each(f) runs phase f for
// every thread of the block and then synchronises (on the device: f(threadIdx.x); __syncthreads()), so a
// host harness can run the very same bodies block by block, thread by thread. Phases never read what
// another thread writes in the same phase; values a thread keeps across phases live in X::Local.

#include "common.cuh"

typedef long long i64;
#define HD __host__ __device__ __forceinline__

#define WKT_L 16
#define WKT_REC 6208
#define WKT_RO_W 0      // Wc [16][64]
#define WKT_RO_QF 1024  // Qf [16][64]
#define WKT_RO_P 2048   // P [16][64]
#define WKT_RO_Q 3072   // Q [16][64]
#define WKT_RO_U0 4096  // U0 [16][64] (token t, state row i)
#define WKT_RO_Y0 5120  // Y0 [16][64]
#define WKT_RO_GN 6144  // Γ_n [64]
#define WKT_ROWS 8      // state rows per block of wkt_scan / wkt_chain
#define WKT_GRAD_SMEM 95744

struct DevExec {
  template <class T> struct Local {
    T v;
    HD T& operator[](int) { return v; }
  };
  template <class F> HD static void each(F&& f) {
#ifdef __CUDA_ARCH__
    f((int)threadIdx.x);
    __syncthreads();
#endif
  }
};

HD int wkt_imin(int a, int b) { return a < b ? a : b; }

// Loads token t of a chunk (channel j of head h) as the chunk factors' raw values: α, β, k, r, v, w.
// Tokens past T are identity tokens.
HD void wkt_load_token(float& al, float& be, float& kq, float& rr, float& vv, float& ww, const float* r, const float* om,
                       const float* kt, const float* v, const float* kh, const float* a, int tok, int T, int C, int h, int j) {
  al = 0.f; be = 0.f; kq = 0.f; rr = 0.f; vv = 0.f; ww = 1.f;
  if (tok < T) {
    i64 o = (i64)tok * C + h * 64 + j;
    float k = kh[o];
    al = -k; be = k * a[o]; kq = kt[o]; rr = r[o]; vv = v[o]; ww = om[o];
  }
}

// ---------------------------------------------------------------------------------------------
// wkt_prep

struct PrepSm {
  float at[16][65], bh[16][65], kh[16][65], rt[16][65];  // rows padded: (t, s) dot products conflict-free
  float v[16][64], w[16][64];
  float A[16][16], Ak[16][16], Bm[16][16], Bk[16][16];
  float X[16][128];  // [Wc | U0]
};
struct PrepArgs {
  float* rec; const float *r, *om, *kt, *v, *kh, *a;
  int T, C, H, nch, b, c, h;
};

template <class X> __host__ __device__ void wkt_prep_body(PrepSm& s, const PrepArgs& g) {
  const int T = g.T, C = g.C, h = g.h, t0 = g.c * WKT_L;
  const i64 so = (i64)g.b * T * C;
  float* out = g.rec + (((i64)g.b * g.nch + g.c) * g.H + h) * WKT_REC;
  X::each([&](int tid) {
    for (int e = tid; e < WKT_L * 64; e += 256) {
      int t = e >> 6, j = e & 63;
      float al, be, kq, rr, vv, ww;
      wkt_load_token(al, be, kq, rr, vv, ww, g.r + so, g.om + so, g.kt + so, g.v + so, g.kh + so, g.a + so, t0 + t, T, C, h, j);
      s.at[t][j] = al; s.bh[t][j] = be; s.kh[t][j] = kq; s.rt[t][j] = rr; s.v[t][j] = vv; s.w[t][j] = ww;
    }
  });
  X::each([&](int tid) {
    if (tid >= 64) return;
    const int j = tid;
    // suffix products Γ_n/Γ_t = w_{t+1}⋯w_n (never a quotient)
    float suf = 1.f;
    for (int t = WKT_L - 1; t >= 0; t--) {
      out[WKT_RO_P + t * 64 + j] = s.bh[t][j] * suf;
      out[WKT_RO_Q + t * 64 + j] = s.kh[t][j] * suf;
      suf *= s.w[t][j];
    }
    float gm = 1.f;
    for (int t = 0; t < WKT_L; t++) {
      s.at[t][j] *= gm;  // α_t⊙Γ_{t−1}
      gm *= s.w[t][j];
      s.bh[t][j] /= gm;  // β_t/Γ_t
      s.kh[t][j] /= gm;  // k_t/Γ_t
      s.rt[t][j] *= gm;  // r_t⊙Γ_t
    }
    out[WKT_RO_GN + j] = gm;
  });
  X::each([&](int tid) {
    const int t = tid >> 4, q = tid & 15;
    float ab = 0.f, ak = 0.f, rb = 0.f, rk = 0.f;
    for (int j = 0; j < 64; j++) {
      float at = s.at[t][j], rt = s.rt[t][j], bq = s.bh[q][j], kq = s.kh[q][j];
      ab += at * bq; ak += at * kq; rb += rt * bq; rk += rt * kq;
    }
    s.A[t][q] = q < t ? ab : 0.f; s.Ak[t][q] = q < t ? ak : 0.f;
    s.Bm[t][q] = q <= t ? rb : 0.f; s.Bk[t][q] = q <= t ? rk : 0.f;
  });
  X::each([&](int tid) {
    if (tid >= 128) return;
    // column `tid` of [Wc | U0] = (I − A)⁻¹ [Ã | A_k V], forward substitution
    float x[WKT_L];
#pragma unroll
    for (int t = 0; t < WKT_L; t++) {
      float bb;
      if (tid < 64) bb = s.at[t][tid];
      else {
        bb = 0.f;
#pragma unroll
        for (int q = 0; q < t; q++) bb += s.Ak[t][q] * s.v[q][tid - 64];
      }
#pragma unroll
      for (int q = 0; q < t; q++) bb += s.A[t][q] * x[q];
      x[t] = bb;
      s.X[t][tid] = bb;
      if (tid < 64) out[WKT_RO_W + t * 64 + tid] = bb;
      else out[WKT_RO_U0 + t * 64 + tid - 64] = bb;
    }
  });
  X::each([&](int tid) {
    if (tid < 64) {
      const int j = tid;  // Qf_t = R̃_t + Σ_{q≤t} B_m[t][q] Wc_q
      for (int t = 0; t < WKT_L; t++) {
        float bb = s.rt[t][j];
        for (int q = 0; q <= t; q++) bb += s.Bm[t][q] * s.X[q][j];
        out[WKT_RO_QF + t * 64 + j] = bb;
      }
    } else if (tid < 128) {
      const int i = tid - 64;  // Y0_t = Σ_{q≤t} B_m[t][q] U0_q + B_k[t][q] v_q
      for (int t = 0; t < WKT_L; t++) {
        float bb = 0.f;
        for (int q = 0; q <= t; q++) bb += s.Bm[t][q] * s.X[q][64 + i] + s.Bk[t][q] * s.v[q][i];
        out[WKT_RO_Y0 + t * 64 + i] = bb;
      }
    }
  });
}

extern "C" __global__ void __launch_bounds__(256) wkt_prep(float* rec, const float* r, const float* om, const float* kt,
                                                           const float* v, const float* kh, const float* a, int T, int C) {
  __shared__ PrepSm sm;
  PrepArgs g{rec, r, om, kt, v, kh, a, T, C, C / 64, (T + WKT_L - 1) / WKT_L, (int)blockIdx.z, (int)blockIdx.x, (int)blockIdx.y};
  wkt_prep_body<DevExec>(sm, g);
}

// The row update both sequential passes share (wkt_scan's state and, transposed, wkt_chain's gradient):
// R[i][j] ← gn[j]·R[i][j] + Σ_t a[t][i]·M[t][j] + b[t][i]·M[L + t][j] for this block's WKT_ROWS rows.
template <class X, int LD>
__host__ __device__ void row_update(float (*R)[LD], const float* gn, const float (*a)[WKT_ROWS], const float (*b)[WKT_ROWS],
                                    const float (*M)[64]) {
  constexpr int NT = 16 * WKT_ROWS;
  X::each([&](int tid) {
    for (int e = tid; e < WKT_ROWS * 64; e += NT) {
      const int i = e >> 6, j = e & 63;
      float x = gn[j] * R[i][j];
      for (int t = 0; t < WKT_L; t++) x += a[t][i] * M[t][j] + b[t][i] * M[WKT_L + t][j];
      R[i][j] = x;
    }
  });
}

// ---------------------------------------------------------------------------------------------
// wkt_scan: the forward's sequential pass. Per chunk: (load) the record into shared memory and the state
// into ckpt; (1) lane p of a warp: u_p (p < 16) or y_{p−16} of one row, a 64-long dot product with the
// state; (2) S ← S diag(Γ_n) + Σ_t u_t P_t + v_t Q_t, 4 values per thread.

struct ScanSm {
  float wq[32][65];  // rows 0–15 Wc, 16–31 Qf (padded: lane p reads row p)
  float pq[32][64];  // rows 0–15 P, 16–31 Q
  float gn[64];
  float u0[16][WKT_ROWS], y0[16][WKT_ROWS], v[16][WKT_ROWS], u[16][WKT_ROWS];
  float S[WKT_ROWS][64];
};
struct ScanArgs {
  float *y, *ckpt, *sfin; const float *rec, *v;
  int T, C, H, nch, b, h, g0;
};

template <class X> __host__ __device__ void wkt_scan_body(ScanSm& s, const ScanArgs& g) {
  constexpr int NT = 16 * WKT_ROWS, RW = WKT_ROWS;
  const int T = g.T, C = g.C, H = g.H, h = g.h, g0 = g.g0;
  const i64 so = (i64)g.b * T * C;
  X::each([&](int tid) { for (int e = tid; e < RW * 64; e += NT) s.S[e >> 6][e & 63] = 0.f; });
  for (int c = 0; c < g.nch; c++) {
    const i64 blk = ((i64)g.b * g.nch + c) * H + h;
    const float* rc = g.rec + blk * WKT_REC;
    X::each([&](int tid) {
      for (int e = tid; e < 32 * 64; e += NT) {
        s.wq[e >> 6][e & 63] = rc[WKT_RO_W + e];  // Wc then Qf
        s.pq[e >> 6][e & 63] = rc[WKT_RO_P + e];  // P then Q
      }
      if (tid < 64) s.gn[tid] = rc[WKT_RO_GN + tid];
      for (int e = tid; e < 16 * RW; e += NT) {
        int t = e / RW, i = e % RW, tok = c * WKT_L + t;
        s.u0[t][i] = rc[WKT_RO_U0 + t * 64 + g0 + i];
        s.y0[t][i] = rc[WKT_RO_Y0 + t * 64 + g0 + i];
        s.v[t][i] = tok < T ? g.v[so + (i64)tok * C + h * 64 + g0 + i] : 0.f;
      }
      float* ck = g.ckpt + blk * 4096 + g0 * 64;
      for (int e = tid; e < RW * 64; e += NT) ck[e] = s.S[e >> 6][e & 63];
    });
    X::each([&](int tid) {
      for (int q = tid; q < 32 * RW; q += NT) {
        const int i = q >> 5, p = q & 31;
        float a0 = 0.f, a1 = 0.f;
        for (int j = 0; j < 64; j += 2) { a0 += s.wq[p][j] * s.S[i][j]; a1 += s.wq[p][j + 1] * s.S[i][j + 1]; }
        float acc = a0 + a1;
        if (p < WKT_L) s.u[p][i] = acc + s.u0[p][i];
        else {
          int t = p - WKT_L, tok = c * WKT_L + t;
          if (tok < T) g.y[so + (i64)tok * C + h * 64 + g0 + i] = acc + s.y0[t][i];
        }
      }
    });
    row_update<X>(s.S, s.gn, s.u, s.v, s.pq);
  }
  if (g.sfin) {
    X::each([&](int tid) {
      float* sf = g.sfin + ((i64)g.b * H + h) * 4096 + g0 * 64;
      for (int e = tid; e < RW * 64; e += NT) sf[e] = s.S[e >> 6][e & 63];
    });
  }
}

extern "C" __global__ void __launch_bounds__(128) wkt_scan(float* y, float* ckpt, float* sfin, const float* rec, const float* v,
                                                           int T, int C) {
  __shared__ ScanSm sm;
  ScanArgs g{y, ckpt, sfin, rec, v, T, C, C / 64, (T + WKT_L - 1) / WKT_L, (int)blockIdx.z, (int)blockIdx.x, (int)blockIdx.y * WKT_ROWS};
  wkt_scan_body<DevExec>(sm, g);
}

// ---------------------------------------------------------------------------------------------
// wkt_chain: the backward's sequential pass (the transpose of wkt_scan), last chunk to first. Per chunk:
// (load) the record and dy, and the current g (= the gradient of this chunk's END state) into gend;
// (1) p_t = P_t·g per row; (2) g ← Γ_n⊙g + Σ_t p_t Wc_t + dY_{t,i} Qf_t.

struct ChainSm {
  float p[16][65];   // P (padded: 16 lanes read 16 rows)
  float wq[32][64];  // rows 0–15 Wc, 16–31 Qf
  float gn[64];
  float dy[16][WKT_ROWS], pg[16][WKT_ROWS];
  float G[WKT_ROWS][65];
};
struct ChainArgs {
  float *gend, *dsin; const float *rec, *dy;
  int T, C, H, nch, b, h, g0;
};

template <class X> __host__ __device__ void wkt_chain_body(ChainSm& s, const ChainArgs& g) {
  constexpr int NT = 16 * WKT_ROWS, RW = WKT_ROWS;
  const int T = g.T, C = g.C, H = g.H, h = g.h, g0 = g.g0;
  const i64 so = (i64)g.b * T * C;
  X::each([&](int tid) { for (int e = tid; e < RW * 64; e += NT) s.G[e >> 6][e & 63] = 0.f; });
  for (int c = g.nch - 1; c >= 0; c--) {
    const i64 blk = ((i64)g.b * g.nch + c) * H + h;
    const float* rc = g.rec + blk * WKT_REC;
    X::each([&](int tid) {
      for (int e = tid; e < 16 * 64; e += NT) s.p[e >> 6][e & 63] = rc[WKT_RO_P + e];
      for (int e = tid; e < 32 * 64; e += NT) s.wq[e >> 6][e & 63] = rc[WKT_RO_W + e];  // Wc then Qf
      if (tid < 64) s.gn[tid] = rc[WKT_RO_GN + tid];
      for (int e = tid; e < 16 * RW; e += NT) {
        int t = e / RW, i = e % RW, tok = c * WKT_L + t;
        s.dy[t][i] = tok < T ? g.dy[so + (i64)tok * C + h * 64 + g0 + i] : 0.f;
      }
      float* ge = g.gend + blk * 4096 + g0 * 64;
      for (int e = tid; e < RW * 64; e += NT) ge[e] = s.G[e >> 6][e & 63];
    });
    X::each([&](int tid) {
      for (int q = tid; q < 16 * RW; q += NT) {
        const int i = q >> 4, t = q & 15;
        float a0 = 0.f, a1 = 0.f;
        for (int j = 0; j < 64; j += 2) { a0 += s.p[t][j] * s.G[i][j]; a1 += s.p[t][j + 1] * s.G[i][j + 1]; }
        s.pg[t][i] = a0 + a1;
      }
    });
    row_update<X>(s.G, s.gn, s.pg, s.dy, s.wq);
  }
  if (g.dsin) {
    X::each([&](int tid) {
      float* d = g.dsin + ((i64)g.b * H + h) * 4096 + g0 * 64;
      for (int e = tid; e < RW * 64; e += NT) d[e] = s.G[e >> 6][e & 63];
    });
  }
}

extern "C" __global__ void __launch_bounds__(128) wkt_chain(float* gend, float* dsin, const float* rec, const float* dy, int T, int C) {
  __shared__ ChainSm sm;
  ChainArgs g{gend, dsin, rec, dy, T, C, C / 64, (T + WKT_L - 1) / WKT_L, (int)blockIdx.z, (int)blockIdx.x, (int)blockIdx.y * WKT_ROWS};
  wkt_chain_body<DevExec>(sm, g);
}

// ---------------------------------------------------------------------------------------------
// wkt_grad: input gradients of one (sequence, chunk, head), 256 threads. From the chunk-start state S0
// (ckpt) and the chunk-end state's gradient G (gend):
//   Z = Ã S0ᵀ (+ A_k V), U = (I − A)⁻¹Z (forward substitution); dU = B_mᵀ dY + P Gᵀ, dZ = (I − A)⁻ᵀ dU
//   (back substitution); dA = sl(dZ Uᵀ), dA_k = sl(dZ Vᵀ), dB_m = l(dY Uᵀ), dB_k = l(dY Vᵀ);
//   dV = A_kᵀdZ + B_kᵀdY + Q Gᵀ; the factor gradients dÃ, dR̃, dB̂, dK̂, dP, dQ and dΓ_n = Σ_i G⊙S0;
//   then per channel the log-space decay gradient (a reverse sum along the chunk) and the outputs.
// Matrices over tokens are [16][65] (t, i or j; padded), states [64][65] (i, j). S0 and G share their
// space with the six factor gradients, written after the last read of S0 / G.

struct GradSG { float S0[64][65]; float G[64][65]; };
union GradX { GradSG m; float fg[6][16][64]; };  // fg: dÃ, dR̃, dB̂, dK̂, dP, dQ
struct GradSm {
  float at[16][65], bh[16][65], kh[16][65], rt[16][65];
  float pp[16][64], qq[16][64];
  float gam[17][64], tail[16][64], w[16][64];
  float v[16][65], dy[16][65], u[16][65], dz[16][65];
  float A[16][16], Ak[16][16], Bm[16][16], Bk[16][16], dA[16][16], dAk[16][16], dBm[16][16], dBk[16][16];
  float dgn[64];
  GradX x;
};
static_assert(sizeof(GradSm) == WKT_GRAD_SMEM, "WKT_GRAD_SMEM must be sizeof(GradSm)");

struct GradArgs {
  float *dr, *dom, *dkt, *dv, *dkk, *db; const float *dy, *r, *om, *kt, *v, *kh, *a, *ckpt, *gend;
  int T, C, H, nch, b, c, h;
};
// what a thread of wkt_grad keeps between its product phase and writing the factor gradients
struct GradRegs { float at[4], rt[4], bh[4], kh[4], p[4], q[4], dv[4]; };

template <class X> __host__ __device__ void wkt_grad_body(GradSm& s, const GradArgs& g) {
  const int T = g.T, C = g.C, h = g.h, t0 = g.c * WKT_L;
  const i64 so = (i64)g.b * T * C, blk = ((i64)g.b * g.nch + g.c) * g.H + h;
  const float* ck = g.ckpt + blk * 4096;
  const float* ge = g.gend + blk * 4096;
  // load
  X::each([&](int tid) {
    for (int e = tid; e < WKT_L * 64; e += 256) {
      int t = e >> 6, j = e & 63, tok = t0 + t;
      float al, be, kq, rr, vv, ww;
      wkt_load_token(al, be, kq, rr, vv, ww, g.r + so, g.om + so, g.kt + so, g.v + so, g.kh + so, g.a + so, tok, T, C, h, j);
      s.at[t][j] = al; s.bh[t][j] = be; s.kh[t][j] = kq; s.rt[t][j] = rr; s.v[t][j] = vv; s.w[t][j] = ww;
      s.dy[t][j] = tok < T ? g.dy[so + (i64)tok * C + h * 64 + j] : 0.f;
    }
    for (int e = tid; e < 4096; e += 256) {
      s.x.m.S0[e >> 6][e & 63] = ck[e];
      s.x.m.G[e >> 6][e & 63] = ge[e];
    }
  });
  // factors, one channel per thread
  X::each([&](int tid) {
    if (tid >= 64) return;
    const int j = tid;
    float suf = 1.f;
    for (int t = WKT_L - 1; t >= 0; t--) {
      s.tail[t][j] = suf;
      s.pp[t][j] = s.bh[t][j] * suf;
      s.qq[t][j] = s.kh[t][j] * suf;
      suf *= s.w[t][j];
    }
    float gm = 1.f;
    s.gam[0][j] = 1.f;
    for (int t = 0; t < WKT_L; t++) {
      s.at[t][j] *= gm;
      gm *= s.w[t][j];
      s.gam[t + 1][j] = gm;
      s.bh[t][j] /= gm;
      s.kh[t][j] /= gm;
      s.rt[t][j] *= gm;
    }
  });
  // the four L×L matrices
  X::each([&](int tid) {
    const int t = tid >> 4, q = tid & 15;
    float ab = 0.f, ak = 0.f, rb = 0.f, rk = 0.f;
    for (int j = 0; j < 64; j++) {
      float at = s.at[t][j], rt = s.rt[t][j], bq = s.bh[q][j], kq = s.kh[q][j];
      ab += at * bq; ak += at * kq; rb += rt * bq; rk += rt * kq;
    }
    s.A[t][q] = q < t ? ab : 0.f; s.Ak[t][q] = q < t ? ak : 0.f;
    s.Bm[t][q] = q <= t ? rb : 0.f; s.Bk[t][q] = q <= t ? rk : 0.f;
  });
  // Ã S0ᵀ → u, P Gᵀ → dz (state products; thread: row i, tokens tq, tq + 4, …)
  X::each([&](int tid) {
    const int i = tid & 63, tq = tid >> 6;
    float z[4] = {0.f, 0.f, 0.f, 0.f}, pg[4] = {0.f, 0.f, 0.f, 0.f};
    for (int j = 0; j < 64; j++) {
      float s0 = s.x.m.S0[i][j], gg = s.x.m.G[i][j];
#pragma unroll
      for (int k = 0; k < 4; k++) { z[k] += s.at[tq + 4 * k][j] * s0; pg[k] += s.pp[tq + 4 * k][j] * gg; }
    }
#pragma unroll
    for (int k = 0; k < 4; k++) { s.u[tq + 4 * k][i] = z[k]; s.dz[tq + 4 * k][i] = pg[k]; }
  });
  // substitutions, one state row per thread: U = (I − A)⁻¹(Z + A_k V); dZ = (I − A)⁻ᵀ(P Gᵀ + B_mᵀ dY)
  X::each([&](int tid) {
    if (tid < 64) {
      const int i = tid;
      for (int t = 0; t < WKT_L; t++) {
        float x = s.u[t][i];
        for (int q = 0; q < t; q++) x += s.A[t][q] * s.u[q][i] + s.Ak[t][q] * s.v[q][i];
        s.u[t][i] = x;
      }
    } else if (tid < 128) {
      const int i = tid - 64;
      for (int t = WKT_L - 1; t >= 0; t--) {
        float x = s.dz[t][i] + s.Bm[t][t] * s.dy[t][i];
        for (int q = t + 1; q < WKT_L; q++) x += s.Bm[q][t] * s.dy[q][i] + s.A[q][t] * s.dz[q][i];
        s.dz[t][i] = x;
      }
    }
  });
  // gradients of the L×L matrices (sums over the state rows)
  X::each([&](int tid) {
    const int t = tid >> 4, q = tid & 15;
    float zu = 0.f, zv = 0.f, yu = 0.f, yv = 0.f;
    for (int i = 0; i < 64; i++) {
      float dzt = s.dz[t][i], dyt = s.dy[t][i], uq = s.u[q][i], vq = s.v[q][i];
      zu += dzt * uq; zv += dzt * vq; yu += dyt * uq; yv += dyt * vq;
    }
    s.dA[t][q] = q < t ? zu : 0.f; s.dAk[t][q] = q < t ? zv : 0.f;
    s.dBm[t][q] = q <= t ? yu : 0.f; s.dBk[t][q] = q <= t ? yv : 0.f;
  });
  // the state parts of the factor gradients and of dV; thread: channel (or row) cc, tokens tq, tq + 4, …
  typename X::template Local<GradRegs> regs;
  X::each([&](int tid) {
    GradRegs& rg = regs[tid];
    const int cc = tid & 63, tq = tid >> 6;
#pragma unroll
    for (int k = 0; k < 4; k++) { rg.at[k] = 0.f; rg.rt[k] = 0.f; rg.bh[k] = 0.f; rg.kh[k] = 0.f; rg.p[k] = 0.f; rg.q[k] = 0.f; rg.dv[k] = 0.f; }
    float dgn = 0.f;
    for (int i = 0; i < 64; i++) {
      float s0 = s.x.m.S0[i][cc], gg = s.x.m.G[i][cc];
      dgn += s0 * gg;
#pragma unroll
      for (int k = 0; k < 4; k++) {
        const int t = tq + 4 * k;
        rg.at[k] += s.dz[t][i] * s0; rg.rt[k] += s.dy[t][i] * s0;
        rg.p[k] += s.u[t][i] * gg; rg.q[k] += s.v[t][i] * gg;
      }
    }
    if (tid < 64) s.dgn[cc] = dgn;
    for (int j = 0; j < 64; j++) {
      float gg = s.x.m.G[cc][j];
#pragma unroll
      for (int k = 0; k < 4; k++) rg.dv[k] += s.qq[tq + 4 * k][j] * gg;
    }
  });
  // S0 and G are dead: the L×L parts of the factor gradients and of dV, then the factor gradients take S0's
  // and G's place; dv goes out (this block owns its rows)
  X::each([&](int tid) {
    GradRegs& rg = regs[tid];
    const int cc = tid & 63, tq = tid >> 6;
#pragma unroll
    for (int k = 0; k < 4; k++) {
      const int t = tq + 4 * k;
      float at = rg.at[k], rt = rg.rt[k], bh = 0.f, kh = 0.f, dv = rg.dv[k];
      for (int q = 0; q < t; q++) at += s.dA[t][q] * s.bh[q][cc] + s.dAk[t][q] * s.kh[q][cc];
      for (int q = 0; q <= t; q++) rt += s.dBm[t][q] * s.bh[q][cc] + s.dBk[t][q] * s.kh[q][cc];
      for (int q = t + 1; q < WKT_L; q++) {
        bh += s.dA[q][t] * s.at[q][cc]; kh += s.dAk[q][t] * s.at[q][cc];
        dv += s.Ak[q][t] * s.dz[q][cc];
      }
      for (int q = t; q < WKT_L; q++) {
        bh += s.dBm[q][t] * s.rt[q][cc]; kh += s.dBk[q][t] * s.rt[q][cc];
        dv += s.Bk[q][t] * s.dy[q][cc];
      }
      rg.at[k] = at; rg.rt[k] = rt; rg.bh[k] = bh; rg.kh[k] = kh; rg.dv[k] = dv;
    }
#pragma unroll
    for (int k = 0; k < 4; k++) {
      const int t = tq + 4 * k, tok = t0 + t;
      s.x.fg[0][t][cc] = rg.at[k]; s.x.fg[1][t][cc] = rg.rt[k]; s.x.fg[2][t][cc] = rg.bh[k];
      s.x.fg[3][t][cc] = rg.kh[k]; s.x.fg[4][t][cc] = rg.p[k]; s.x.fg[5][t][cc] = rg.q[k];
      if (tok < T) g.dv[so + (i64)tok * C + h * 64 + cc] += rg.dv[k];
    }
  });
  // per channel: dg_t = ∂/∂log Γ_t, its reverse sum along the chunk (→ dω), and the other outputs
  X::each([&](int tid) {
    if (tid >= 64) return;
    const int j = tid;
    float (*fg)[16][64] = s.x.fg;
    float(*dg)[65] = s.dz;  // dz is dead: dg_t of this channel in its column
    float last = s.dgn[j] * s.gam[WKT_L][j];
    for (int t = 0; t < WKT_L; t++) {
      float pq = fg[4][t][j] * s.pp[t][j] + fg[5][t][j] * s.qq[t][j];
      last += pq;
      float d = fg[1][t][j] * s.rt[t][j] - fg[2][t][j] * s.bh[t][j] - fg[3][t][j] * s.kh[t][j] - pq;
      if (t + 1 < WKT_L) d += fg[0][t + 1][j] * s.at[t + 1][j];
      dg[t][j] = d;
    }
    dg[WKT_L - 1][j] += last;
    float dlogw = 0.f;
    for (int t = WKT_L - 1; t >= 0; t--) {
      dlogw += dg[t][j];
      const int tok = t0 + t;
      if (tok < T) {
        const i64 o = so + (i64)tok * C + h * 64 + j;
        const float ga = s.gam[t + 1][j], tl = s.tail[t][j];
        g.dom[o] += dlogw / s.w[t][j];
        g.dr[o] += fg[1][t][j] * ga;
        g.dkt[o] += fg[3][t][j] / ga + fg[5][t][j] * tl;
        g.dkk[o] += -fg[0][t][j] * s.gam[t][j];  // −dα (the α = −κ̂ part; the b part goes through db)
        g.db[o] += fg[2][t][j] / ga + fg[4][t][j] * tl;
      }
    }
  });
}

extern "C" __global__ void __launch_bounds__(256, 2) wkt_grad(float* dr, float* dom, float* dkt, float* dv, float* dkk, float* db,
                                                           const float* dy, const float* r, const float* om, const float* kt,
                                                           const float* v, const float* kh, const float* a, const float* ckpt,
                                                           const float* gend, int T, int C) {
  extern __shared__ float4 wkt_dyn[];
  GradSm& sm = *reinterpret_cast<GradSm*>(wkt_dyn);
  GradArgs g{dr, dom, dkt, dv, dkk, db, dy, r, om, kt, v, kh, a, ckpt, gend,
             T, C, C / 64, (T + WKT_L - 1) / WKT_L, (int)blockIdx.z, (int)blockIdx.x, (int)blockIdx.y};
  wkt_grad_body<DevExec>(sm, g);
}
