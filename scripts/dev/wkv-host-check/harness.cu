// Host harness (scripts/dev/wkv-host-check.sh): runs the exact kernel bodies of wkv7-train.cu on the CPU (block by block, thread by thread)
// and compares with the float64 reference dumped by dump.ts.
#include "../../../src/backend/cuda/kernels/wkv7-train.cu"
#include <cstdio>
#include <cstdlib>
#include <cmath>
#include <vector>
#include <memory>

template <int NT> struct HostExec {
  template <class T> struct Local { T v[NT]; __host__ __device__ T& operator[](int i) { return v[i]; } };
  template <class F> __host__ __device__ static void each(F&& f) { for (int t = 0; t < NT; t++) f(t); }
  __host__ __device__ static void cp16(float* dst, const float* src) { for (int i = 0; i < 4; i++) dst[i] = src[i]; }
  __host__ __device__ static void cp_wait() {}
  __host__ __device__ static void cp_commit() {}
  template <int keep> __host__ __device__ static void cp_wait_keep() {}
};

static double relerr(const char* name, const float* got, const double* ref, size_t n, double tol, int& fails) {
  double d = 0, m = 0;
  for (size_t i = 0; i < n; i++) { double x = std::fabs((double)got[i] - ref[i]); if (!(x <= d)) d = std::isnan(x) ? INFINITY : x; m = std::fmax(m, std::fabs(ref[i])); }
  double rel = d / std::fmax(m, 1.0);  // relative, absolute where the reference is below 1 (dω is exactly 0 at T = 1)
  printf("  %-8s max|ref| %.3e  max|d| %.3e  rel %.3e %s\n", name, m, d, rel, rel <= tol ? "ok" : "FAIL");
  if (!(rel <= tol)) fails++;
  return rel;
}

int main(int argc, char** argv) {
  FILE* f = fopen(argv[1], "rb");
  std::vector<double> all;
  { double x[4096]; size_t k; while ((k = fread(x, 8, 4096, f)) > 0) all.insert(all.end(), x, x + k); }
  fclose(f);
  const int Bn = (int)all[0], T = (int)all[1], H = (int)all[2], C = H * 64, nch = (T + 15) / 16;
  const size_t n = (size_t)Bn * T * C, ns = (size_t)Bn * nch * H * 4096, nf = (size_t)Bn * H * 4096;
  size_t o = 3;
  auto take = [&](size_t m) { const double* p = all.data() + o; o += m; return p; };
  auto tofl = [](const double* p, size_t m) { return std::vector<float>(p, p + m); };
  std::vector<float> r = tofl(take(n), n), w = tofl(take(n), n), kt = tofl(take(n), n), v = tofl(take(n), n),
                     kk = tofl(take(n), n), a = tofl(take(n), n), dy = tofl(take(n), n);
  const double *ry = take(n), *rst = take(ns), *rfin = take(nf);
  const double* rg[6]; for (int q = 0; q < 6; q++) rg[q] = take(n);
  const double* rds0 = take(nf);
  if (o != all.size()) { printf("bad dump size\n"); return 2; }
  printf("Bn %d T %d H %d (C %d, %d chunks)\n", Bn, T, H, C, nch);
  std::vector<float> rec((size_t)Bn * nch * H * WKT_REC, NAN), y(n, NAN), ckpt(ns, NAN), sfin(nf, NAN), gend(ns, NAN), dsin(nf, NAN);
  int fails = 0;
  // forward
  { auto sm = std::make_unique<PrepSm>();
    for (int b = 0; b < Bn; b++) for (int c = 0; c < nch; c++) for (int h = 0; h < H; h++) {
      PrepArgs g{rec.data(), r.data(), w.data(), kt.data(), v.data(), kk.data(), a.data(), T, C, H, nch, b, c, h};
      wkt_prep_body<HostExec<256>>(*sm, g);
    } }
  { auto sm = std::make_unique<ScanSm>();
    for (int b = 0; b < Bn; b++) for (int h = 0; h < H; h++) for (int g0 = 0; g0 < 64; g0 += WKT_ROWS) {
      ScanArgs g{y.data(), ckpt.data(), sfin.data(), rec.data(), v.data(), T, C, H, nch, b, h, g0};
      wkt_scan_body<HostExec<WKT_THREADS>>(*sm, g);
    } }
  printf("forward (prep + scan) vs float64 reference:\n");
  relerr("y", y.data(), ry, n, 1e-5, fails);
  relerr("ckpt", ckpt.data(), rst, ns, 1e-5, fails);
  relerr("final S", sfin.data(), rfin, nf, 1e-5, fails);
  // backward: outputs pre-filled with 0.25 (+= is checked)
  const float PRE = 0.25f;
  std::vector<float> dr(n, PRE), dom(n, PRE), dkt(n, PRE), dv(n, PRE), dkk(n, PRE), db(n, PRE);
  { auto sm = std::make_unique<ChainSm>();
    for (int b = 0; b < Bn; b++) for (int h = 0; h < H; h++) for (int g0 = 0; g0 < 64; g0 += WKT_ROWS) {
      ChainArgs g{gend.data(), dsin.data(), rec.data(), dy.data(), T, C, H, nch, b, h, g0};
      wkt_chain_body<HostExec<WKT_THREADS>>(*sm, g);
    } }
  { auto sm = std::make_unique<GradSm>();
    for (int b = 0; b < Bn; b++) for (int c = 0; c < nch; c++) for (int h = 0; h < H; h++) {
      GradArgs g{dr.data(), dom.data(), dkt.data(), dv.data(), dkk.data(), db.data(), dy.data(), r.data(), w.data(), kt.data(), v.data(), kk.data(), a.data(),
                 ckpt.data(), gend.data(), T, C, H, nch, b, c, h};
      wkt_grad_body<HostExec<256>>(*sm, g);
    } }
  // the reference's dκ̂ = −dα + dβ⊙a and da = dβ⊙κ̂; the kernels give −dα (dkk) and dβ (db)
  std::vector<float> gr(n), gw(n), gkt(n), gv(n), gkk(n), ga(n);
  for (size_t i = 0; i < n; i++) {
    gr[i] = dr[i] - PRE; gw[i] = dom[i] - PRE; gkt[i] = dkt[i] - PRE; gv[i] = dv[i] - PRE;
    float bb = db[i] - PRE;
    gkk[i] = (dkk[i] - PRE) + bb * a[i]; ga[i] = bb * kk[i];
  }
  printf("backward (chain + grad) vs float64 reference:\n");
  relerr("dr", gr.data(), rg[0], n, 1e-5, fails);
  relerr("dw", gw.data(), rg[1], n, 1e-5, fails);
  relerr("dkt", gkt.data(), rg[2], n, 1e-5, fails);
  relerr("dv", gv.data(), rg[3], n, 1e-5, fails);
  relerr("dkk", gkk.data(), rg[4], n, 1e-5, fails);
  relerr("da", ga.data(), rg[5], n, 1e-5, fails);
  relerr("dS0", dsin.data(), rds0, nf, 1e-5, fails);
  printf(fails ? "FAILED (%d)\n" : "all ok\n", fails);
  return fails ? 1 : 0;
}
