// GPU dense decode as engines call it (SPEC §1): one DecodePlan serving several layers after one
// update, and the whole call (plan update + decode) captured in a CUDA graph and replayed, each
// against the CPU reference with the inputs of SPEC §6 (randn/10, NaN in unused cache slots,
// permuted block tables with garbage past each request's pages, padded q / out / lse, poisoned
// outputs). test_dense_decode.cpp holds the shape sweep. Skipped until dense_decode has a CUDA
// kernel in the build (openmla::cuda_operators()).
#include <gtest/gtest.h>

#include <algorithm>
#include <numeric>
#include <random>

#include "gpu/device_tensor.h"

namespace openmla::test {
namespace {

struct DenseCase {
  std::string name;
  int b, s_q, h_q, s_k;
  bool causal = false;
  int page = 64, d_qk = 576, h_kv = 1;
  DType dtype = DType::kBFloat16;
  bool external_ws = false;  // DecodePlanConfig::external_workspace: a workspace per TwinSet
};

std::vector<DenseCase> cases() {
  return {
      {"h128_sq1", 4, 1, 128, 300},
      {"h128_sq2_causal", 3, 2, 128, 700, true},
      {"h64_sq1", 5, 1, 64, 1000},
      {"h16_sq1", 5, 1, 16, 2000},
      {"h128_long_splitkv", 2, 1, 128, 6000},
      {"h128_b24_pair_merge", 24, 1, 128, 800},
      // Plans without partial buffers: the calls' workspace is baked into the graph.
      {"h128_long_splitkv_ext_ws", 2, 1, 128, 6000, false, 64, 576, 1, DType::kBFloat16, true},
      {"h128_b24_pair_merge_ext_ws", 24, 1, 128, 800, false, 64, 576, 1, DType::kBFloat16,
       true},
  };
}

// Request lengths covering the edges: empty, one token, a whole number of pages, fewer tokens
// than query tokens (causal rows that see nothing), s_k, and random ones.
std::vector<int32_t> lengths_for(const DenseCase& c, std::mt19937_64& rng) {
  std::uniform_int_distribution<int> ud(1, c.s_k);
  std::vector<int32_t> len(c.b);
  for (int i = 0; i < c.b; ++i) {
    switch (i % 7) {
      case 0:
        len[i] = c.s_k;
        break;
      case 1:
        len[i] = 0;
        break;
      case 2:
        len[i] = std::max(1, (c.s_k / c.page) * c.page);
        break;
      case 3:
        len[i] = 1;
        break;
      case 4:
        len[i] = std::max(0, c.s_q - 1);
        break;
      default:
        len[i] = ud(rng);
        break;
    }
  }
  return len;
}

DecodePlanConfig plan_config(const DenseCase& c) {
  return DecodePlanConfig{.batch = c.b, .s_q = c.s_q, .h_q = c.h_q, .h_kv = c.h_kv,
                          .d_qk = c.d_qk, .causal = c.causal, .external_workspace = c.external_ws};
}

// Builds the inputs of `c` with request lengths `len` in `t` (names as in DenseDecodeParams).
void build(const DenseCase& c, const std::vector<int32_t>& len, TwinSet& t, std::mt19937_64& rng) {
  int64_t pages_needed = 0;
  int max_pages = 1;
  for (int32_t l : len) {
    const int p = (l + c.page - 1) / c.page;
    pages_needed += p;
    max_pages = std::max(max_pages, p);
  }
  max_pages += 2;  // block-table entries past every request's pages hold garbage
  const int64_t num_pages = pages_needed + 3;  // spare pages nobody owns (NaN)

  HostTensor q(c.dtype, {c.b, c.s_q, c.h_q, c.d_qk}, /*pad=*/8);
  fill_randn(q, rng);
  t.add("q", std::move(q));

  // The whole cache NaN, then the tokens each request owns filled with randn/10.
  HostTensor k(c.dtype, {num_pages, c.page, c.h_kv, c.d_qk});
  k.fill_nan();
  std::vector<int32_t> perm(num_pages);
  std::iota(perm.begin(), perm.end(), 0);
  std::shuffle(perm.begin(), perm.end(), rng);
  HostTensor bt(DType::kInt32, {c.b, max_pages}, /*pad=*/3);
  std::uniform_int_distribution<int32_t> garbage(-(1 << 30), 1 << 30);
  bt.for_each([&](int64_t o) { bt.set_flat(o, garbage(rng)); });
  std::normal_distribution<double> nd(0.0, 0.1);
  int64_t next = 0;
  for (int i = 0; i < c.b; ++i) {
    const int p = (len[i] + c.page - 1) / c.page;
    for (int j = 0; j < p; ++j) bt.set({i, j}, perm[next++]);
    for (int64_t tok = 0; tok < len[i]; ++tok) {
      const int64_t page = int64_t(bt.get({i, tok / c.page}));
      for (int h = 0; h < c.h_kv; ++h)
        for (int d = 0; d < c.d_qk; ++d)
          k.set({page, tok % c.page, h, d}, std::clamp(nd(rng), -1.0, 1.0));
    }
  }
  t.add("k_cache", std::move(k));
  t.add("block_table", std::move(bt));
  HostTensor sl(DType::kInt32, {c.b});
  for (int i = 0; i < c.b; ++i) sl.set({i}, len[i]);
  t.add("cache_seqlens", std::move(sl));
  t.add("out", HostTensor(c.dtype, {c.b, c.s_q, c.h_q, 512}, /*pad=*/16));
  t.add("lse", HostTensor(DType::kFloat32, {c.b, c.h_q, c.s_q}, /*pad=*/1));
  if (c.external_ws) {
    const size_t bytes = DecodePlan(cuda_device(0), plan_config(c)).workspace_bytes();
    t.add("workspace", HostTensor(DType::kUInt8, {std::max<int64_t>(1, int64_t(bytes))}));
  }
  t.upload_all();
}


auto params_maker(const DenseCase& c, const TwinSet& t, const DecodePlan* plan,
                  cudaStream_t stream = nullptr) {
  return [&c, &t, plan, stream](Side s) {
    DenseDecodeParams p;
    p.q = t.view("q", s);
    p.k_cache = t.view("k_cache", s);
    p.block_table = t.view("block_table", s);
    p.cache_seqlens = t.view("cache_seqlens", s);
    p.out = t.view("out", s);
    p.lse = t.view("lse", s);
    p.causal = c.causal;
    if (s == Side::kDevice) {
      p.plan = plan;
      p.stream = stream;
      if (c.external_ws) p.workspace = t.view("workspace", s);
    }
    return p;
  };
}

const std::vector<OutputCheck> kOutputs = {{"out", kDecodeOut}, {"lse", kLse}};

class DenseDecodeGraphGpu : public GpuTestWithParam<DenseCase> {
 protected:
  void SetUp() override {
    GpuTestWithParam<DenseCase>::SetUp();
    if (IsSkipped()) return;
    if (!has_cuda_kernel("dense_decode")) GTEST_SKIP() << "dense_decode has no CUDA kernel yet";
  }
};

// One plan serves every layer of a step: two "layers" (other q, cache and block table, same
// lengths) after one update.
TEST_P(DenseDecodeGraphGpu, PlanReusedAcrossLayers) {
  const DenseCase& c = GetParam();
  std::mt19937_64 rng(7 + std::hash<std::string>{}(c.name));
  const std::vector<int32_t> len = lengths_for(c, rng);
  TwinSet layer0, layer1;
  build(c, len, layer0, rng);
  build(c, len, layer1, rng);
  DecodePlan plan(cuda_device(0), plan_config(c));
  plan.update(layer0.view("cache_seqlens", Side::kDevice));
  for (TwinSet* t : {&layer0, &layer1})
    EXPECT_TRUE(run_and_compare(
        *t, params_maker(c, *t, &plan), [](const DenseDecodeParams& p) { dense_decode(p); },
        kOutputs));
}

// The whole call (plan update + decode) captured in a CUDA graph and replayed.
TEST_P(DenseDecodeGraphGpu, CudaGraphReplay) {
  const DenseCase& c = GetParam();
  std::mt19937_64 rng(13 + std::hash<std::string>{}(c.name));
  TwinSet t;
  build(c, lengths_for(c, rng), t, rng);
  DecodePlan plan(cuda_device(0), plan_config(c));
  cudaStream_t stream = nullptr;
  OPENMLA_CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  cudaGraph_t graph = nullptr;
  cudaGraphExec_t exec = nullptr;
  auto make = params_maker(c, t, &plan, stream);
  OPENMLA_CUDA_CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
  try {
    plan.update(t.view("cache_seqlens", Side::kDevice), stream);
    dense_decode(make(Side::kDevice));
  } catch (...) {
    (void)cudaStreamEndCapture(stream, &graph);
    if (graph) (void)cudaGraphDestroy(graph);
    (void)cudaStreamDestroy(stream);
    throw;
  }
  OPENMLA_CUDA_CHECK(cudaStreamEndCapture(stream, &graph));
  OPENMLA_CUDA_CHECK(cudaGraphInstantiate(&exec, graph, 0));
  // Reference on the host, device outputs poisoned, then two replays (the second must not depend
  // on state the first left behind).
  for (const char* o : {"out", "lse"}) t[o].poison_both();
  dense_decode(make(Side::kHost));
  for (int rep = 0; rep < 2; ++rep) {
    for (const char* o : {"out", "lse"}) t[o].dev.poison();
    OPENMLA_CUDA_CHECK(cudaGraphLaunch(exec, stream));
    OPENMLA_CUDA_CHECK(cudaStreamSynchronize(stream));
    EXPECT_TRUE(close("out", t["out"].fetch(), t["out"].host, kDecodeOut)) << "replay " << rep;
    EXPECT_TRUE(close("lse", t["lse"].fetch(), t["lse"].host, kLse)) << "replay " << rep;
  }
  OPENMLA_CUDA_CHECK(cudaGraphExecDestroy(exec));
  OPENMLA_CUDA_CHECK(cudaGraphDestroy(graph));
  OPENMLA_CUDA_CHECK(cudaStreamDestroy(stream));
}

INSTANTIATE_TEST_SUITE_P(Spec, DenseDecodeGraphGpu, ::testing::ValuesIn(cases()),
                         [](const ::testing::TestParamInfo<DenseCase>& i) { return i.param.name; });

}  // namespace
}  // namespace openmla::test
