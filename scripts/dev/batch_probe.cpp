// Development probe (not built by CMake): the whole dense-decode call (DecodePlan::update +
// dense_decode) at batch sizes the bench does not have, with the inline plan and with the
// planner kernel (OPENMLA_DECODE_NO_INLINE_PLAN=1, read at plan creation), timed by CUDA-graph
// replay of 20 calls (median of 7 graph launches, best of 3 graphs). Constant bf16 inputs
// (timing only), pages of 64 in a scattered order, all
// requests of length s_k. Build against a CUDA build of the library, e.g.:
//   nvcc -std=c++17 -O2 -I include -I src -o batch_probe scripts/dev/batch_probe.cpp \
//     build/src/libopenmla.a -lcuda && ./batch_probe
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "openmla/openmla.h"

using namespace openmla;

static double time_graph(DecodePlan& plan, const DenseDecodeParams& p, const TensorView& seq,
                         cudaStream_t s) {
  cudaGraph_t g;
  cudaGraphExec_t ge;
  cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal);
  for (int i = 0; i < 20; ++i) {
    plan.update(seq, s);
    DenseDecodeParams q = p;
    q.stream = s;
    dense_decode(q);
  }
  cudaStreamEndCapture(s, &g);
  cudaGraphInstantiate(&ge, g, 0);
  cudaEvent_t a, b;
  cudaEventCreate(&a);
  cudaEventCreate(&b);
  std::vector<float> t;
  for (int r = 0; r < 8; ++r) {
    cudaEventRecord(a, s);
    cudaGraphLaunch(ge, s);
    cudaEventRecord(b, s);
    cudaEventSynchronize(b);
    float ms;
    cudaEventElapsedTime(&ms, a, b);
    if (r > 0) t.push_back(ms * 1000 / 20);
  }
  std::sort(t.begin(), t.end());
  cudaGraphExecDestroy(ge);
  cudaGraphDestroy(g);
  return t[t.size() / 2];
}

int main() {
  cudaStream_t s;
  cudaStreamCreate(&s);
  struct Cfg { int b, h_q, s_k; };
  for (Cfg c : {Cfg{128, 64, 4096}, Cfg{256, 64, 2048}, Cfg{256, 16, 4096}, Cfg{256, 128, 2048},
                Cfg{200, 128, 1024}, Cfg{384, 64, 2048}, Cfg{512, 64, 1024}, Cfg{512, 16, 2048},
                Cfg{512, 128, 1024}, Cfg{300, 128, 512}}) {
    const int d = 576, ps = 64, pages_per = c.s_k / ps, pages = c.b * pages_per;
    void *q, *k, *bt, *seq, *out, *lse;
    cudaMalloc(&q, size_t(c.b) * c.h_q * d * 2);
    cudaMalloc(&k, size_t(pages) * ps * d * 2);
    cudaMalloc(&bt, size_t(pages) * 4);
    cudaMalloc(&seq, size_t(c.b) * 4);
    cudaMalloc(&out, size_t(c.b) * c.h_q * 512 * 2);
    cudaMalloc(&lse, size_t(c.b) * c.h_q * 4);
    cudaMemset(q, 0x3c, size_t(c.b) * c.h_q * d * 2);
    cudaMemset(k, 0x3c, size_t(pages) * ps * d * 2);
    std::vector<int> hbt(pages), hseq(c.b, c.s_k);
    for (int i = 0; i < pages; ++i) hbt[i] = (i * 7919) % pages;
    cudaMemcpy(bt, hbt.data(), pages * 4, cudaMemcpyHostToDevice);
    cudaMemcpy(seq, hseq.data(), c.b * 4, cudaMemcpyHostToDevice);
    const Device dev = cuda_device(0);
    DenseDecodeParams p;
    p.q = TensorView::contiguous(q, DType::kBFloat16, dev, {c.b, 1, c.h_q, d});
    p.k_cache = TensorView::contiguous(k, DType::kBFloat16, dev, {pages, ps, 1, d});
    p.block_table = TensorView::contiguous(bt, DType::kInt32, dev, {c.b, pages_per});
    p.cache_seqlens = TensorView::contiguous(seq, DType::kInt32, dev, {c.b});
    p.out = TensorView::contiguous(out, DType::kBFloat16, dev, {c.b, 1, c.h_q, 512});
    p.lse = TensorView::contiguous(lse, DType::kFloat32, dev, {c.b, c.h_q, 1});
    double t[2];
    for (int planner = 0; planner < 2; ++planner) {
      if (planner) setenv("OPENMLA_DECODE_NO_INLINE_PLAN", "1", 1);
      DecodePlan plan(dev, DecodePlanConfig{.batch = c.b, .h_q = c.h_q});
      unsetenv("OPENMLA_DECODE_NO_INLINE_PLAN");
      p.plan = &plan;
      double best = 1e30;
      for (int rep = 0; rep < 3; ++rep) best = std::min(best, time_graph(plan, p, p.cache_seqlens, s));
      t[planner] = best;
    }
    printf("b=%d h_q=%d s_k=%d: inline plan %.1f us, planner kernel %.1f us (%+.1f %%)\n", c.b,
           c.h_q, c.s_k, t[0], t[1], 100 * (t[0] / t[1] - 1));
    for (void* x : {q, k, bt, seq, out, lse}) cudaFree(x);
  }
  return cudaGetLastError() == cudaSuccess ? 0 : 1;
}
