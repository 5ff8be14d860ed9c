// Operators without a CUDA kernel yet: on valid CUDA tensors each raises openmla::Error saying
// "not implemented" (never a crash, never a silent no-op), and the device stays usable. An operator
// that has landed (listed by openmla::cuda_operators()) is skipped here: its own tests cover it.
#include <gtest/gtest.h>

#include <functional>
#include <random>

#include "gpu/device_tensor.h"

namespace openmla::test {
namespace {

::testing::AssertionResult raises_not_implemented(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    if (std::string(e.what()).find("not implemented") == std::string::npos)
      return ::testing::AssertionFailure()
             << "openmla::Error without 'not implemented': " << e.what();
    return ::testing::AssertionSuccess() << e.what();
  } catch (const std::exception& e) {
    return ::testing::AssertionFailure() << "expected openmla::Error, got: " << e.what();
  }
  return ::testing::AssertionFailure()
         << "returned normally, though cuda_operators() does not list it ('" << cuda_operators()
         << "')";
}

#define SKIP_IF_LANDED(op)                                                             \
  do {                                                                                 \
    if (has_cuda_kernel(op)) GTEST_SKIP() << op << " has a CUDA kernel in this build"; \
  } while (0)

class NotImplementedGpu : public GpuTest {
 protected:
  // After each test: nothing faulted, the device still allocates and runs.
  void TearDown() override {
    if (IsSkipped()) return;
    sync_device();
    void* p = nullptr;
    OPENMLA_CUDA_CHECK(cudaMalloc(&p, 1 << 20));
    OPENMLA_CUDA_CHECK(cudaFree(p));
  }
  std::mt19937_64 rng{11};
};

// Small valid dense-decode inputs on the GPU.
struct DenseDecodeInputs {
  TwinSet t;
  explicit DenseDecodeInputs(std::mt19937_64& rng) {
    fill_randn(t.add("q", HostTensor(DType::kBFloat16, {1, 1, 16, 576})).host, rng);
    fill_randn(t.add("k_cache", HostTensor(DType::kBFloat16, {2, 64, 1, 576})).host, rng);
    Twin& bt = t.add("block_table", HostTensor(DType::kInt32, {1, 2}));
    bt.host.set({0, 0}, 1);
    bt.host.set({0, 1}, 0);
    t.add("cache_seqlens", HostTensor(DType::kInt32, {1})).host.set({0}, 100);
    t.add("out", HostTensor(DType::kBFloat16, {1, 1, 16, 512})).host.poison();
    t.add("lse", HostTensor(DType::kFloat32, {1, 16, 1})).host.poison();
    t.upload_all();
  }
  DecodePlanConfig plan_config() const {
    DecodePlanConfig c;
    c.batch = 1;
    c.s_q = 1;
    c.h_q = 16;
    c.d_qk = 576;
    return c;
  }
  DenseDecodeParams params(const DecodePlan* plan) const {
    DenseDecodeParams p;
    p.q = t.view("q", Side::kDevice);
    p.k_cache = t.view("k_cache", Side::kDevice);
    p.block_table = t.view("block_table", Side::kDevice);
    p.cache_seqlens = t.view("cache_seqlens", Side::kDevice);
    p.out = t.view("out", Side::kDevice);
    p.lse = t.view("lse", Side::kDevice);
    p.plan = plan;
    return p;
  }
};

TEST_F(NotImplementedGpu, DecodePlanUpdate) {
  // The split-KV planner lands with the dense decode kernel.
  SKIP_IF_LANDED("dense_decode");
  DenseDecodeInputs in(rng);
  DecodePlan plan(cuda_device(0), in.plan_config());  // making a plan works already
  EXPECT_TRUE(
      raises_not_implemented([&] { plan.update(in.t.view("cache_seqlens", Side::kDevice)); }));
}

TEST_F(NotImplementedGpu, DenseDecode) {
  SKIP_IF_LANDED("dense_decode");
  DenseDecodeInputs in(rng);
  DecodePlan plan(cuda_device(0), in.plan_config());
  EXPECT_TRUE(raises_not_implemented([&] { dense_decode(in.params(&plan)); }));
}

TEST_F(NotImplementedGpu, SparseDecode) {
  SKIP_IF_LANDED("sparse_decode");
  TwinSet t;
  fill_randn(t.add("q", HostTensor(DType::kBFloat16, {1, 1, 64, 576})).host, rng);
  Twin& cache = t.add("k_cache", HostTensor(DType::kUInt8, {2, 64, 1, 656}));
  HostTensor src(DType::kBFloat16, {2, 64, 1, 576});
  fill_randn(src, rng);
  QuantizeKVParams qp;
  qp.input = src.view;
  qp.cache = cache.host.view;
  quantize_kv_cache(qp);
  Twin& idx = t.add("indices", HostTensor(DType::kInt32, {1, 1, 64}));
  for (int k = 0; k < 64; ++k) idx.host.set({0, 0, k}, 2 * k);
  t.add("out", HostTensor(DType::kBFloat16, {1, 1, 64, 512})).host.poison();
  t.add("lse", HostTensor(DType::kFloat32, {1, 64, 1})).host.poison();
  t.upload_all();
  DecodePlanConfig pc;
  pc.batch = 1;
  pc.s_q = 1;
  pc.h_q = 64;
  pc.d_qk = 576;
  pc.sparse = true;
  pc.topk = 64;
  DecodePlan plan(cuda_device(0), pc);
  SparseDecodeParams p;
  p.q = t.view("q", Side::kDevice);
  p.k_cache = t.view("k_cache", Side::kDevice);
  p.indices = t.view("indices", Side::kDevice);
  p.out = t.view("out", Side::kDevice);
  p.lse = t.view("lse", Side::kDevice);
  p.plan = &plan;
  // Both halves of the call: the sparse schedule and the operator.
  EXPECT_TRUE(raises_not_implemented([&] { plan.update(TensorView{}); }));
  EXPECT_TRUE(raises_not_implemented([&] { sparse_decode(p); }));
}

TEST_F(NotImplementedGpu, SparsePrefill) {
  SKIP_IF_LANDED("sparse_prefill");
  TwinSet t;
  fill_randn(t.add("q", HostTensor(DType::kBFloat16, {4, 64, 576})).host, rng);
  fill_randn(t.add("kv", HostTensor(DType::kBFloat16, {128, 1, 576})).host, rng);
  fill_uniform_int(t.add("indices", HostTensor(DType::kInt32, {4, 1, 128})).host, rng, -1, 127);
  t.add("out", HostTensor(DType::kBFloat16, {4, 64, 512})).host.poison();
  t.add("max_logits", HostTensor(DType::kFloat32, {4, 64})).host.poison();
  t.add("lse", HostTensor(DType::kFloat32, {4, 64})).host.poison();
  t.upload_all();
  SparsePrefillParams p;
  p.q = t.view("q", Side::kDevice);
  p.kv = t.view("kv", Side::kDevice);
  p.indices = t.view("indices", Side::kDevice);
  p.out = t.view("out", Side::kDevice);
  p.max_logits = t.view("max_logits", Side::kDevice);
  p.lse = t.view("lse", Side::kDevice);
  EXPECT_TRUE(raises_not_implemented([&] { sparse_prefill(p); }));
}

// Small valid dense-prefill inputs (one sequence of 8 queries and 8 keys, 4 heads, d_qk 192).
TwinSet dense_prefill_inputs(std::mt19937_64& rng, bool backward) {
  TwinSet t;
  fill_randn(t.add("q", HostTensor(DType::kBFloat16, {8, 4, 192})).host, rng);
  fill_randn(t.add("k", HostTensor(DType::kBFloat16, {8, 4, 192})).host, rng);
  fill_randn(t.add("v", HostTensor(DType::kBFloat16, {8, 4, 128})).host, rng);
  for (const char* cu : {"cu_seqlens_q", "cu_seqlens_k"}) {
    Twin& c = t.add(cu, HostTensor(DType::kInt32, {2}));
    c.host.set({0}, 0);
    c.host.set({1}, 8);
  }
  fill_randn(t.add("out", HostTensor(DType::kBFloat16, {8, 4, 128})).host, rng);
  fill_randn(t.add("lse", HostTensor(DType::kFloat32, {4, 8})).host, rng);
  if (backward) {
    fill_randn(t.add("dout", HostTensor(DType::kBFloat16, {8, 4, 128})).host, rng);
    t.add("dq", HostTensor(DType::kBFloat16, {8, 4, 192})).host.poison();
    t.add("dk", HostTensor(DType::kBFloat16, {8, 4, 192})).host.poison();
    t.add("dv", HostTensor(DType::kBFloat16, {8, 4, 128})).host.poison();
  }
  t.upload_all();
  return t;
}

TEST_F(NotImplementedGpu, DensePrefillForward) {
  SKIP_IF_LANDED("dense_prefill_forward");
  TwinSet t = dense_prefill_inputs(rng, false);
  DensePrefillParams p;
  p.q = t.view("q", Side::kDevice);
  p.k = t.view("k", Side::kDevice);
  p.v = t.view("v", Side::kDevice);
  p.cu_seqlens_q = t.view("cu_seqlens_q", Side::kDevice);
  p.cu_seqlens_k = t.view("cu_seqlens_k", Side::kDevice);
  p.out = t.view("out", Side::kDevice);
  p.lse = t.view("lse", Side::kDevice);
  p.max_seqlen_q = p.max_seqlen_k = 8;
  p.causal = true;
  EXPECT_TRUE(raises_not_implemented([&] { dense_prefill_forward(p); }));
}

TEST_F(NotImplementedGpu, DensePrefillBackward) {
  SKIP_IF_LANDED("dense_prefill_backward");
  TwinSet t = dense_prefill_inputs(rng, true);
  DensePrefillBackwardParams p;
  p.dout = t.view("dout", Side::kDevice);
  p.q = t.view("q", Side::kDevice);
  p.k = t.view("k", Side::kDevice);
  p.v = t.view("v", Side::kDevice);
  p.out = t.view("out", Side::kDevice);
  p.lse = t.view("lse", Side::kDevice);
  p.cu_seqlens_q = t.view("cu_seqlens_q", Side::kDevice);
  p.cu_seqlens_k = t.view("cu_seqlens_k", Side::kDevice);
  p.dq = t.view("dq", Side::kDevice);
  p.dk = t.view("dk", Side::kDevice);
  p.dv = t.view("dv", Side::kDevice);
  p.max_seqlen_q = p.max_seqlen_k = 8;
  EXPECT_TRUE(raises_not_implemented([&] { dense_prefill_backward(p); }));
}

}  // namespace
}  // namespace openmla::test
