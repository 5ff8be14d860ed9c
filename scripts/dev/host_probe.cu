// Development probe (not built by CMake, session 18): host time of the pieces of one eager
// dense-decode call (launches, plan update, the operator) and the eager call itself, b=1
// h_q=128 s_k=4096 with one input set (K in L2). Build against a CUDA build of the library:
//   nvcc -std=c++17 -O2 -arch=sm_90a -I include -I src -o host_probe scripts/dev/host_probe.cu \
//     build/src/libopenmla.a -lcuda
#include <cuda.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <functional>
#include <vector>

#include "openmla/openmla.h"

using namespace openmla;
using clk = std::chrono::steady_clock;

struct Big {
  char bytes[320];
};
__global__ void k_small(int) {}
__global__ void k_big(const __grid_constant__ CUtensorMap a, const __grid_constant__ CUtensorMap b,
                      const __grid_constant__ CUtensorMap c, const __grid_constant__ CUtensorMap d,
                      const Big p) {}

// Median host us per call of f over reps (sync every `every` calls, sync time excluded).
static double host_us(const std::function<void()>& f, int reps = 400, int every = 8) {
  std::vector<double> t;
  for (int r = 0; r < reps; ++r) {
    if (r % every == 0) cudaDeviceSynchronize();
    const auto a = clk::now();
    f();
    const auto b = clk::now();
    t.push_back(std::chrono::duration<double, std::micro>(b - a).count());
  }
  cudaDeviceSynchronize();
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

int main() {
  cudaStream_t s;
  cudaStreamCreate(&s);
  cudaFree(0);
  CUtensorMap m{};
  Big big{};
  printf("small <<<>>> launch        %.2f us\n", host_us([&] { k_small<<<1, 32, 0, s>>>(1); }));
  printf("big-param <<<>>> launch    %.2f us\n",
         host_us([&] { k_big<<<1, 32, 0, s>>>(m, m, m, m, big); }));
  for (int pdl = 0; pdl < 2; ++pdl) {
    cudaLaunchAttribute attr[1];
    attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attr[0].val.programmaticStreamSerializationAllowed = 1;
    cudaLaunchConfig_t cfg{};
    cfg.gridDim = dim3(132);
    cfg.blockDim = dim3(256);
    cfg.dynamicSmemBytes = 0;
    cfg.stream = s;
    cfg.attrs = attr;
    cfg.numAttrs = pdl;
    printf("big-param LaunchKernelEx (132 CTAs, pdl %d) %.2f us\n", pdl,
           host_us([&] { cudaLaunchKernelEx(&cfg, k_big, m, m, m, m, big); }));
  }
  int dev = 0;
  printf("cudaSetDevice(0)           %.2f us\n", host_us([&] { cudaSetDevice(0); }));
  printf("cudaGetDevice              %.2f us\n", host_us([&] { cudaGetDevice(&dev); }));

  // The library's call at b=1 h_q=128 s_k=4096 (one input set).
  const int b = 1, h_q = 128, s_k = 4096, d = 576, ps = 64, pages = s_k / ps;
  void *q, *k, *bt, *seq, *out, *lse;
  cudaMalloc(&q, size_t(b) * h_q * d * 2);
  cudaMalloc(&k, size_t(pages) * ps * d * 2);
  cudaMalloc(&bt, size_t(pages) * 4);
  cudaMalloc(&seq, 4);
  cudaMalloc(&out, size_t(b) * h_q * 512 * 2);
  cudaMalloc(&lse, size_t(b) * h_q * 4);
  cudaMemset(q, 0, size_t(b) * h_q * d * 2);
  cudaMemset(k, 0, size_t(pages) * ps * d * 2);
  std::vector<int> hbt(pages);
  for (int i = 0; i < pages; ++i) hbt[i] = i;
  cudaMemcpy(bt, hbt.data(), pages * 4, cudaMemcpyHostToDevice);
  cudaMemcpy(seq, &s_k, 4, cudaMemcpyHostToDevice);
  const Device dv = cuda_device(0);
  DecodePlan plan(dv, DecodePlanConfig{.batch = b, .h_q = h_q});
  DenseDecodeParams p;
  p.q = TensorView::contiguous(q, DType::kBFloat16, dv, {b, 1, h_q, d});
  p.k_cache = TensorView::contiguous(k, DType::kBFloat16, dv, {pages, ps, 1, d});
  p.block_table = TensorView::contiguous(bt, DType::kInt32, dv, {b, pages});
  p.cache_seqlens = TensorView::contiguous(seq, DType::kInt32, dv, {b});
  p.out = TensorView::contiguous(out, DType::kBFloat16, dv, {b, 1, h_q, 512});
  p.lse = TensorView::contiguous(lse, DType::kFloat32, dv, {b, h_q, 1});
  p.plan = &plan;
  p.stream = s;
  printf("plan.update (inline)       %.2f us\n", host_us([&] { plan.update(p.cache_seqlens, s); }));
  printf("dense_decode               %.2f us\n", host_us([&] { dense_decode(p); }));
  printf("update + dense_decode      %.2f us\n", host_us([&] {
           plan.update(p.cache_seqlens, s);
           dense_decode(p);
         }));
  // Eager: events around one call on an idle stream (median and minimum of 30).
  auto eager = [&](const char* what, const std::function<void()>& f) {
    cudaEvent_t e0, e1;
    cudaEventCreate(&e0);
    cudaEventCreate(&e1);
    std::vector<float> ev;
    for (int r = 0; r < 30; ++r) {
      cudaDeviceSynchronize();
      cudaEventRecord(e0, s);
      f();
      cudaEventRecord(e1, s);
      cudaEventSynchronize(e1);
      float ms;
      cudaEventElapsedTime(&ms, e0, e1);
      ev.push_back(ms * 1000);
    }
    std::sort(ev.begin(), ev.end());
    printf("%-26s %.2f us (min %.2f)\n", what, ev[ev.size() / 2], ev[0]);
  };
  eager("eager events", [&] {
    plan.update(p.cache_seqlens, s);
    dense_decode(p);
  });
  eager("empty kernel events", [&] { k_small<<<1, 32, 0, s>>>(1); });
  const cudaError_t e = cudaGetLastError();
  printf("%s\n", cudaGetErrorString(e));
  return 0;
}
