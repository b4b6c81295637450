// Random weights generated on the GPU (benchmarks of big shapes: no host copy of billions of floats).
// A counter-based generator (splitmix64 of seed, tensor and index) so any launch order gives the same values.

#include "common.cuh"

typedef unsigned long long u64;

__device__ __forceinline__ float uniform01(u64 seed, int tensor, long long i) {
  u64 z = seed * 0x9E3779B97F4A7C15ull + ((u64)tensor << 40) + (u64)i * 0xD1B54A32D192ED03ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  z ^= z >> 31;
  return (float)(z >> 40) * (1.0f / 16777216.0f);
}

// offset ± scale, uniform; into outF (float32) when non-null, else outB (bfloat16)
extern "C" __global__ void fill_uniform(float* outF, bf16* outB, int n, int seed, int tensor, float scale, float offset) {
  for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x) {
    float v = scale == 0.f ? offset : offset + (uniform01((u64)(unsigned)seed, tensor, i) * 2.f - 1.f) * scale;
    if (outF) outF[i] = v; else outB[i] = f2bf(v);
  }
}
