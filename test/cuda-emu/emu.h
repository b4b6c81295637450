// A CUDA execution model on the CPU, for running the kernel sources of src/backend/cuda/kernels as they
// are written (test/cuda-emu.test.ts; no GPU). Compiled with g++ before a kernel file; the kernel files
// see RWKVX_EMU and route their few PTX instructions (cp.async, ldmatrix, mma.sync) to emu_* here.
//
// Model: the blocks of a grid run one after another; the threads of a block are fibers (ucontext) on one
// OS thread, switched only at __syncthreads and warp collectives, so a run is deterministic. A barrier
// releases when every live thread of the block reached it; a warp collective when every lane of the warp
// did — anything else (a divergent __syncthreads, a shuffle with exited lanes) is reported as an error
// instead of hanging. A cp.async destination holds NaNs from the issue until the wait_group that covers
// it, so reading a stage early or overwriting one still in use shows. Odd blocks run their threads in
// reverse order, so a missing barrier between a write and another thread's read shows either way. Warp-collective results
// (shuffles, ldmatrix, mma.sync) follow the PTX ISA's fragment layouts; mma.sync sums in k order in fp32.

#pragma once
#include <setjmp.h>
#include <ucontext.h>
#include <cmath>
#include <math.h>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <string>
#include <type_traits>
#include <vector>

#define RWKVX_EMU 1
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))
#define __shared__ static

struct dim3 { unsigned x = 1, y = 1, z = 1; };
struct uint3 { unsigned x, y, z; };
struct alignas(8) float2 { float x, y; };
struct alignas(16) float4 { float x, y, z, w; };
struct alignas(8) int2 { int x, y; };
struct alignas(16) uint4 { unsigned x, y, z, w; };
inline float2 make_float2(float x, float y) { return {x, y}; }
inline float4 make_float4(float x, float y, float z, float w) { return {x, y, z, w}; }
inline uint4 make_uint4(unsigned x, unsigned y, unsigned z, unsigned w) { return {x, y, z, w}; }

namespace emu {
enum State { RUN, BAR, WARP, DONE };
struct Fiber {
  ucontext_t ctx;  // only to start the fiber on its stack; switches are _setjmp/_longjmp (no signal-mask syscalls)
  jmp_buf jb;
  bool started = false;
  State st = RUN;
  uint3 tid{0, 0, 0};
  unsigned wseq = 0;  // warp collectives passed
  // cp.async groups: copies of the open group, then the committed groups, oldest first
  struct Copy { void* dst; const void* src; int bytes; };
  std::vector<Copy> open;
  std::vector<std::vector<Copy>> groups;
};
struct Launch {
  dim3 grid, block;
  uint3 bid{0, 0, 0};
  int n = 0, cur = 0;
  std::vector<Fiber> f;
  jmp_buf sched;
  std::function<void()> body;
  std::string error;
  // per warp, two alternating exchange buffers of 64 bytes per lane
  std::vector<unsigned char> xbuf;
};
inline Launch*& L() { static Launch* l = nullptr; return l; }
inline Fiber& me() { return L()->f[L()->cur]; }
inline int lane() { return L()->cur & 31; }
inline unsigned char* slot(int ln, unsigned seq) {
  Launch& l = *L();
  const int w = l.cur >> 5;
  return l.xbuf.data() + ((size_t)(w * 2 + (seq & 1)) * 32 + ln) * 64;
}
[[noreturn]] inline void fail(const std::string& m) {
  L()->error = m;
  me().st = DONE;
  _longjmp(L()->sched, 1);
}
inline void yield(State s) {
  me().st = s;
  if (!_setjmp(me().jb)) _longjmp(L()->sched, 1);
}

inline void flush_group(std::vector<Fiber::Copy>& g) {
  for (auto& c : g) {
    if (c.bytes > 0) std::memcpy(c.dst, c.src, c.bytes);
    if (c.bytes < 16) std::memset((char*)c.dst + c.bytes, 0, 16 - c.bytes);
  }
  g.clear();
}
inline void wait_groups(int keep) {
  Fiber& f = me();
  while ((int)f.groups.size() > keep) { flush_group(f.groups.front()); f.groups.erase(f.groups.begin()); }
}
inline void commit() { Fiber& f = me(); f.groups.push_back(f.open); f.open.clear(); }

// a warp collective: deposit this lane's bytes, wait for the warp, then read any lane's deposit
template <class T> inline void deposit(const T& v) {
  static_assert(sizeof(T) <= 64, "deposit too large");
  std::memcpy(slot(lane(), me().wseq), &v, sizeof(T));
  yield(WARP);
}
template <class T> inline T peer(int ln) { T v; std::memcpy(&v, slot(ln, me().wseq), sizeof(T)); return v; }
inline void done_collective() { me().wseq++; }

inline void entry() {
  L()->body();
  commit();
  wait_groups(0);
  me().st = DONE;
  _longjmp(L()->sched, 1);
}
inline void resume(Launch& l, int i) {
  l.cur = i;
  Fiber& f = l.f[i];
  if (!_setjmp(l.sched)) {
    if (!f.started) { f.started = true; setcontext(&f.ctx); }
    _longjmp(f.jb, 1);
  }
}

// runs body for every thread of every block; "" or the first error
inline std::string run(dim3 grid, dim3 block, std::function<void()> body) {
  Launch l;
  l.grid = grid; l.block = block; l.body = std::move(body);
  l.n = (int)(block.x * block.y * block.z);
  if (l.n <= 0 || l.n > 1024) return "block of " + std::to_string(l.n) + " threads";
  l.f.resize(l.n);
  // fiber stacks are kept between launches (first-touch page faults dominate otherwise)
  constexpr size_t STACK = 256 * 1024;
  static std::vector<char> stacks;
  if (stacks.size() < l.n * STACK) stacks.resize(l.n * STACK);
  l.xbuf.assign((size_t)((l.n + 31) / 32) * 2 * 32 * 64, 0);
  L() = &l;
  for (unsigned bz = 0; bz < grid.z; bz++)
    for (unsigned by = 0; by < grid.y; by++)
      for (unsigned bx = 0; bx < grid.x; bx++) {
        l.bid = {bx, by, bz};
        for (int i = 0; i < l.n; i++) {
          Fiber& f = l.f[i];
          f.st = RUN; f.started = false; f.wseq = 0; f.open.clear(); f.groups.clear();
          f.tid = {(unsigned)(i % block.x), (unsigned)(i / block.x % block.y), (unsigned)(i / (block.x * block.y))};
          getcontext(&f.ctx);
          f.ctx.uc_stack.ss_sp = stacks.data() + i * STACK;
          f.ctx.uc_stack.ss_size = STACK;
          f.ctx.uc_link = nullptr;
          makecontext(&f.ctx, entry, 0);
        }
        for (;;) {
          bool ran = false;
          const bool rev = (bx + by + bz) & 1;
          for (int j = 0; j < l.n; j++) {
            const int i = rev ? l.n - 1 - j : j;
            if (l.f[i].st == RUN) { ran = true; resume(l, i); if (!l.error.empty()) { L() = nullptr; return l.error; } }
          }
          if (ran) continue;
          int live = 0, atBar = 0;
          bool released = false;
          for (int w = 0; w * 32 < l.n; w++) {
            int lo = w * 32, hi = std::min(l.n, lo + 32), waiting = 0, dead = 0;
            for (int i = lo; i < hi; i++) waiting += l.f[i].st == WARP, dead += l.f[i].st == DONE;
            if (waiting > 0 && waiting + dead == hi - lo) {
              if (dead > 0) { L() = nullptr; return "a warp collective with exited lanes (warp " + std::to_string(w) + ")"; }
              for (int i = lo; i < hi; i++) l.f[i].st = RUN;
              released = true;
            }
          }
          if (released) continue;
          for (auto& f : l.f) live += f.st != DONE, atBar += f.st == BAR;
          if (live == 0) break;
          if (atBar == live) { for (auto& f : l.f) if (f.st == BAR) f.st = RUN; continue; }
          L() = nullptr;
          return "deadlock: threads wait at different barriers or collectives (block " + std::to_string(bx) + "," +
                 std::to_string(by) + "," + std::to_string(bz) + ")";
        }
      }
  L() = nullptr;
  return "";
}
}  // namespace emu

// the CUDA built-ins (unsigned, as in CUDA), read from the running fiber and block
inline unsigned emu_get(int k, int d) {
  emu::Launch& l = *emu::L();
  if (k == 0) { auto& t = emu::me().tid; return d == 0 ? t.x : d == 1 ? t.y : t.z; }
  if (k == 1) return d == 0 ? l.bid.x : d == 1 ? l.bid.y : l.bid.z;
  const dim3& g = k == 2 ? l.block : l.grid;
  return d == 0 ? g.x : d == 1 ? g.y : g.z;
}
struct EmuV3 { unsigned x, y, z; };
#define threadIdx (EmuV3{emu_get(0, 0), emu_get(0, 1), emu_get(0, 2)})
#define blockIdx (EmuV3{emu_get(1, 0), emu_get(1, 1), emu_get(1, 2)})
#define blockDim (EmuV3{emu_get(2, 0), emu_get(2, 1), emu_get(2, 2)})
#define gridDim (EmuV3{emu_get(3, 0), emu_get(3, 1), emu_get(3, 2)})

inline void __syncthreads() { emu::yield(emu::BAR); }
inline void __syncwarp(unsigned = 0xffffffffu) { emu::deposit(0); emu::done_collective(); }
inline void __threadfence() {}
template <class T> inline T __shfl_xor_sync(unsigned, T v, int o, int width = 32) {
  emu::deposit(v);
  T r = emu::peer<T>((emu::lane() ^ o) & (width - 1) | (emu::lane() & ~(width - 1)));
  emu::done_collective();
  return r;
}
template <class T> inline T __shfl_sync(unsigned, T v, int src, int width = 32) {
  emu::deposit(v);
  T r = emu::peer<T>((src & (width - 1)) | (emu::lane() & ~(width - 1)));
  emu::done_collective();
  return r;
}
template <class T> inline T __shfl_down_sync(unsigned, T v, unsigned d, int width = 32) {
  emu::deposit(v);
  int ln = emu::lane(), seg = ln & ~(width - 1), src = ln + (int)d;
  T r = (src - seg) < width ? emu::peer<T>(src) : v;
  emu::done_collective();
  return r;
}
inline unsigned __ballot_sync(unsigned, int p) {
  emu::deposit(p ? 1 : 0);
  unsigned r = 0;
  for (int i = 0; i < 32; i++) r |= (unsigned)emu::peer<int>(i) << i;
  emu::done_collective();
  return r;
}

inline float __uint_as_float(unsigned u) { float f; std::memcpy(&f, &u, 4); return f; }
inline float __int_as_float(int u) { float f; std::memcpy(&f, &u, 4); return f; }
inline unsigned __float_as_uint(float f) { unsigned u; std::memcpy(&u, &f, 4); return u; }
inline int __float_as_int(float f) { int u; std::memcpy(&u, &f, 4); return u; }
inline float rsqrtf(float x) { return 1.f / std::sqrt(x); }
inline float __expf(float x) { return std::exp(x); }
inline float __fdividef(float a, float b) { return a / b; }
// the device's rounded-as-written arithmetic (the host build never contracts: -ffp-contract=off)
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
template <class T> inline T __ldcg(const T* p) { return *p; }
template <class T> inline T __ldg(const T* p) { return *p; }
inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline int __ffs(int x) { return __builtin_ffs(x); }
inline int __clz(int x) { return x == 0 ? 32 : __builtin_clz((unsigned)x); }
template <class A, class B> inline typename std::common_type<A, B>::type min(A a, B b) { return b < a ? b : a; }
template <class A, class B> inline typename std::common_type<A, B>::type max(A a, B b) { return a < b ? b : a; }
template <class T> inline T atomicAdd(T* p, T v) { T o = *p; *p = o + v; return o; }
template <class T> inline T atomicOr(T* p, T v) { T o = *p; *p = o | v; return o; }
template <class T> inline T atomicMax(T* p, T v) { T o = *p; if (v > o) *p = v; return o; }
template <class T> inline T atomicExch(T* p, T v) { T o = *p; *p = v; return o; }

// the PTX instructions the kernel headers use (their #ifdef RWKVX_EMU branches)
// the destination reads as NaN (all ones) from the issue until the wait that lands the copy: reading a stage
// before its wait, or overwriting one that other threads still read (a missing barrier), shows up
inline void emu_cp16(void* dst, const void* src, int bytes) { std::memset(dst, 0xff, 16); emu::me().open.push_back({dst, src, bytes}); }
inline void emu_cp_commit() { emu::commit(); }
inline void emu_cp_wait(int keep) { emu::wait_groups(keep); }
inline void emu_cp_wait_all() { emu::commit(); emu::wait_groups(0); }

// one bf16 of a packed pair (the lower index in the low half)
inline float emu_half(unsigned w, int hi) { return __uint_as_float((hi ? w >> 16 : w & 0xffffu) << 16); }
// element [m][k] of a warp's 16×16 A fragment (mma.sync m16n8k16 and, per warp, wgmma): lane
// (m % 8)·4 + (k % 8) / 2, register (m ≥ 8) + 2·(k ≥ 8), half k % 2; the deposits start with the 4 registers
inline float emu_a_elem(int m, int k) {
  unsigned r[4];
  std::memcpy(r, emu::slot((m & 7) * 4 + (k & 7) / 2, emu::me().wseq), sizeof r);
  return emu_half(r[(m >> 3) + 2 * (k >> 3)], k & 1);
}

// mma.sync.m16n8k16.row.col f32.bf16.bf16.f32: A 16×16 (4 regs), B 16×8 (2 regs), D += A·B (4 floats)
inline void emu_mma16816(float* d, const unsigned* a, unsigned b0, unsigned b1) {
  struct In { unsigned a[4], b[2]; } in{{a[0], a[1], a[2], a[3]}, {b0, b1}};
  emu::deposit(in);
  auto A = emu_a_elem;
  // B[k][n]: lane n·4 + (k % 8) / 2, register k ≥ 8, half k % 2
  auto B = [&](int k, int n) { In p = emu::peer<In>(n * 4 + (k & 7) / 2); return emu_half(p.b[k >> 3], k & 1); };
  const int g = emu::lane() >> 2, t = emu::lane() & 3;
  for (int i = 0; i < 4; i++) {
    const int m = g + 8 * (i >> 1), n = 2 * t + (i & 1);
    float s = 0.f;
    for (int k = 0; k < 16; k++) s = std::fmaf(A(m, k), B(k, n), s);
    d[i] += s;
  }
  emu::done_collective();
}
// ldmatrix.m8n8.x4(.trans).b16: lane l gives the address of row l % 8 of matrix l / 8
inline void emu_ldsm_x4(unsigned* r, const unsigned short* p, bool trans) {
  emu::deposit(p);
  const int ln = emu::lane(), g = ln >> 2, t = ln & 3;
  for (int i = 0; i < 4; i++) {
    unsigned short lo, hi;
    if (!trans) {
      const unsigned short* row = emu::peer<const unsigned short*>(i * 8 + g);
      lo = row[2 * t]; hi = row[2 * t + 1];
    } else {
      lo = emu::peer<const unsigned short*>(i * 8 + 2 * t)[g];
      hi = emu::peer<const unsigned short*>(i * 8 + 2 * t + 1)[g];
    }
    r[i] = (unsigned)lo | ((unsigned)hi << 16);
  }
  emu::done_collective();
}

// dynamic shared memory (`extern __shared__ T name[]` becomes a pointer into this; every kernel's
// dynamic array aliases it, as on the GPU): the H100's 227 KB opt-in limit
#define EMU_DYN_SMEM 232448
inline void* emu_dyn_smem() { alignas(1024) static unsigned char b[EMU_DYN_SMEM]; return b; }
// shared-window addresses (what cvta.to.shared gives) are offsets into the dynamic buffer here
inline unsigned emu_smem_u32(const void* p) {
  const long long o = (const char*)p - (const char*)emu_dyn_smem();
  if (o < 0 || o >= EMU_DYN_SMEM) emu::fail("a 32-bit shared address of memory outside the dynamic shared buffer");
  return (unsigned)o;
}
inline void* emu_smem_ptr(unsigned a) { return (char*)emu_dyn_smem() + a; }

// wgmma.mma_async m64nNk16 f32.bf16.bf16, A in registers (per warp the m16n8k16 A layout of its 16 rows),
// B through a 128-byte-swizzle descriptor (K-major, or N-major with tb), D rows 16·warp + g (+8),
// columns 8·j + 2·t (+1) in d[4j … 4j + 3]. Computed at issue (the program may read d only after the wait).
template <int N>
inline void emu_wgmma(float* d, const unsigned* a, unsigned long long desc, int acc, int tb) {
  struct In { unsigned a[4]; } in{{a[0], a[1], a[2], a[3]}};
  emu::deposit(in);
  if ((desc >> 62) != 1) emu::fail("wgmma descriptor without the 128-byte swizzle");
  const unsigned start = (unsigned)(desc & 0x3FFF) << 4, sbo = (unsigned)((desc >> 32) & 0x3FFF) << 4;
  auto A = emu_a_elem;
  auto B = [&](int k, int n) {
    if (tb && n >= 64) emu::fail("N-major wgmma operand wider than one 128-byte row");
    unsigned ad = tb ? start + (k / 8) * sbo + (k % 8) * 128 + 2 * n : start + (n / 8) * sbo + (n % 8) * 128 + 2 * k;
    ad ^= ((ad >> 7) & 7) << 4;
    return emu_half(*(const unsigned short*)emu_smem_ptr(ad), 0);
  };
  const int g = emu::lane() >> 2, t = emu::lane() & 3;
  for (int i = 0; i < N / 2; i++) {
    const int m = g + 8 * ((i >> 1) & 1), n = 8 * (i >> 2) + 2 * t + (i & 1);
    float s = 0.f;
    for (int k = 0; k < 16; k++) s = std::fmaf(A(m, k), B(k, n), s);
    d[i] = acc ? d[i] + s : s;
  }
  emu::done_collective();
}
