// Development probe (not built by CMake, session 19): how much L2 does a dense-decode call leave
// to the kernels after it? Per round: one call (b=128 h_q=128 s_q=2 causal s_k=4096, random
// bf16 inputs), then a 40 MB buffer Z read twice, the second read timed by events (L2 hits are
// fast). Run it with and without OPENMLA_DECODE_K_EVICT_FIRST=1 to compare K's L2 policies at
// s_q = 2 (evict-last by default there). Session 19 (docs/benchmarks.md): Z alone 11.7-12.2 us;
// after a call 15.8 us with evict-first K, 14.9 with evict-last K, 14.6 with evict-last K
// demoted line by line after the call (a kernel since removed: ~10 us per call).
//   nvcc -std=c++20 -O2 -arch=sm_90a -I include -I src -o l2_after_probe \
//     scripts/dev/l2_after_probe.cu build/src/libopenmla.a -lcuda
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <vector>

#include "openmla/openmla.h"
#include "probe_read.cuh"

using namespace openmla;

// Pseudo-random bf16 in [-1, 1) (hash of the index).
__global__ void fill_bf16(uint16_t* x, size_t n, uint32_t seed) {
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n;
       i += size_t(gridDim.x) * blockDim.x) {
    uint32_t h = uint32_t(i) * 2654435761u ^ seed;
    h ^= h >> 15;
    h *= 2246822519u;
    h ^= h >> 13;
    const float f = float(h & 0xffff) / 32768.0f - 1.0f;
    x[i] = uint16_t(__float_as_uint(f) >> 16);
  }
}

int main() {
  cudaStream_t s;
  cudaStreamCreate(&s);
  const int b = 128, s_q = 2, h_q = 128, s_k = 4096, d = 576, ps = 64;
  const int per_req = s_k / ps, pages = b * per_req;
  void *q, *k, *bt, *seq, *out, *lse, *z;
  unsigned* sink;
  const size_t z_bytes = size_t(40) << 20;
  cudaMalloc(&q, size_t(b) * s_q * h_q * d * 2);
  cudaMalloc(&k, size_t(pages) * ps * d * 2);
  cudaMalloc(&bt, size_t(pages) * 4);
  cudaMalloc(&seq, size_t(b) * 4);
  cudaMalloc(&out, size_t(b) * s_q * h_q * 512 * 2);
  cudaMalloc(&lse, size_t(b) * h_q * s_q * 4);
  cudaMalloc(&z, z_bytes);
  cudaMalloc(&sink, 4);
  cudaMemset(z, 1, z_bytes);
  fill_bf16<<<528, 256>>>(static_cast<uint16_t*>(q), size_t(b) * s_q * h_q * d, 1);
  fill_bf16<<<528, 256>>>(static_cast<uint16_t*>(k), size_t(pages) * ps * d, 2);
  std::vector<int> hbt(pages), hseq(b, s_k);
  for (int i = 0; i < pages; ++i) hbt[i] = (i * 7919) % pages;  // scattered pages
  cudaMemcpy(bt, hbt.data(), pages * 4, cudaMemcpyHostToDevice);
  cudaMemcpy(seq, hseq.data(), b * 4, cudaMemcpyHostToDevice);
  const Device dv = cuda_device(0);
  DecodePlan plan(dv, DecodePlanConfig{.batch = b, .s_q = s_q, .h_q = h_q, .causal = true});
  DenseDecodeParams p;
  p.q = TensorView::contiguous(q, DType::kBFloat16, dv, {b, s_q, h_q, d});
  p.k_cache = TensorView::contiguous(k, DType::kBFloat16, dv, {pages, ps, 1, d});
  p.block_table = TensorView::contiguous(bt, DType::kInt32, dv, {b, per_req});
  p.cache_seqlens = TensorView::contiguous(seq, DType::kInt32, dv, {b});
  p.out = TensorView::contiguous(out, DType::kBFloat16, dv, {b, s_q, h_q, 512});
  p.lse = TensorView::contiguous(lse, DType::kFloat32, dv, {b, h_q, s_q});
  p.causal = true;
  p.plan = &plan;
  p.stream = s;
  cudaEvent_t e0, e1, c0, c1;
  cudaEventCreate(&e0);
  cudaEventCreate(&e1);
  cudaEventCreate(&c0);
  cudaEventCreate(&c1);
  const size_t n = z_bytes / 16;
  auto read_z = [&] { read_all<<<132 * 8, 256, 0, s>>>(static_cast<const uint4*>(z), n, sink); };
  std::vector<float> after, alone, call;
  for (int r = 0; r < 41; ++r) {
    cudaEventRecord(c0, s);
    plan.update(p.cache_seqlens, s);
    dense_decode(p);
    cudaEventRecord(c1, s);
    read_z();
    cudaEventRecord(e0, s);
    read_z();
    cudaEventRecord(e1, s);
    cudaEventSynchronize(e1);
    float ms = 0, cms = 0;
    cudaEventElapsedTime(&ms, e0, e1);
    cudaEventElapsedTime(&cms, c0, c1);
    if (r > 0) after.push_back(ms * 1000), call.push_back(cms * 1000);
    // Z alone: read twice, the second read timed.
    read_z();
    cudaEventRecord(e0, s);
    read_z();
    cudaEventRecord(e1, s);
    cudaEventSynchronize(e1);
    cudaEventElapsedTime(&ms, e0, e1);
    if (r > 0) alone.push_back(ms * 1000);
  }
  auto med = [](std::vector<float> v) {
    std::sort(v.begin(), v.end());
    return v[v.size() / 2];
  };
  printf("call %.1f us | Z re-read after the call %.2f us, Z alone %.2f us | %s\n", med(call),
         med(after), med(alone), cudaGetErrorString(cudaGetLastError()));
  return 0;
}
