// Dense decode on the GPU against the CPU reference (SPEC §1, tolerances of §6): varlen with
// zero-length requests, NaN in every unused cache slot, garbage in unused block-table entries,
// permuted block tables, non-contiguous q/out, poisoned outputs, and bit-identical reruns.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <numeric>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "common/harness.h"
#include "cuda/params.h"  // kInlinePlanMaxBatch
#include "gpu/device_tensor.h"

namespace openmla::test {
namespace {

// Dense-decode params over the given views (device or host).
DenseDecodeParams decode_params(const TensorView& q, const TensorView& k_cache,
                                const TensorView& block_table, const TensorView& seqlens,
                                const TensorView& out, const TensorView& lse, bool causal,
                                const DecodePlan* plan) {
  DenseDecodeParams p;
  p.q = q;
  p.k_cache = k_cache;
  p.block_table = block_table;
  p.cache_seqlens = seqlens;
  p.out = out;
  p.lse = lse;
  p.causal = causal;
  p.plan = plan;
  return p;
}

// Elements of out (2-byte) and lse whose bits differ between two downloads.
int bit_diffs(const HostTensor& out, const HostTensor& out2, const HostTensor& lse,
              const HostTensor& lse2) {
  int diff = 0;
  out.for_each(
      [&](int64_t o) { diff += memcmp(&out.storage[o * 2], &out2.storage[o * 2], 2) != 0; });
  lse.for_each(
      [&](int64_t o) { diff += memcmp(&lse.storage[o * 4], &lse2.storage[o * 4], 4) != 0; });
  return diff;
}

struct Case {
  int b, s_q, s_k, h_q, h_kv;
  bool causal, fp16;
  int d_qk, page_size;
  bool varlen;  // lengths ~ N(s_k, s_k/2) with some zeros; else all s_k
  int q_pad;    // > 0: non-contiguous q and out
  int num_sms = 0;  // DecodePlanConfig::num_sms (0: every SM)
  bool batch_invariant = false;
  std::vector<int> lens = {};  // when not empty: the lengths (b of them; s_k, varlen unused)
};

std::string name(const Case& c) {
  std::ostringstream os;
  os << "b" << c.b << "_sq" << c.s_q << "_sk" << c.s_k << (c.varlen ? "v" : "") << "_hq" << c.h_q
     << "_hkv" << c.h_kv << (c.causal ? "_causal" : "") << (c.fp16 ? "_fp16" : "_bf16") << "_d"
     << c.d_qk << "_ps" << c.page_size << (c.q_pad ? "_strided" : "");
  if (c.num_sms) os << "_sms" << c.num_sms;
  if (c.batch_invariant) os << "_invariant";
  if (!c.lens.empty()) {
    os << "_lens";
    for (size_t i = 0; i < c.lens.size() && i < 12; ++i) os << (i ? "," : ":") << c.lens[i];
    if (c.lens.size() > 12) os << ",...";
  }
  return os.str();
}

// One case on the GPU against the CPU reference, then the determinism and plan-equivalence
// reruns below. Failures are reported as expectations of the calling test.
void check_case(const Case& c, uint64_t seed) {
  std::mt19937_64 rng(seed);
  const DType dt = c.fp16 ? DType::kFloat16 : DType::kBFloat16;

  // Lengths: varlen ~ N(s_k, s_k/2) clipped to >= 0, with a zero-length request when b > 1.
  std::vector<int> lens(c.b, c.s_k);
  if (!c.lens.empty()) {
    lens = c.lens;
  } else if (c.varlen) {
    std::normal_distribution<double> nd(c.s_k, c.s_k / 2.0);
    for (auto& l : lens) l = std::max(0, static_cast<int>(nd(rng)));
    if (c.b > 1) lens[1] = 0;
  }
  const int ps = c.page_size;
  int max_pages = 1;
  for (int l : lens) max_pages = std::max(max_pages, (l + ps - 1) / ps);
  max_pages += 1;  // a spare, garbage-filled column
  int used_pages = 0;
  for (int l : lens) used_pages += (l + ps - 1) / ps;
  const int num_pages = used_pages + 3;  // a few pages nobody uses (all NaN)

  HostTensor q(dt, {c.b, c.s_q, c.h_q, c.d_qk}, c.q_pad);
  fill_randn(q, rng);
  HostTensor kc(dt, {num_pages, ps, c.h_kv, c.d_qk});
  kc.fill_nan();
  HostTensor bt(DType::kInt32, {c.b, max_pages});
  HostTensor seq(DType::kInt32, {c.b});
  std::vector<int> perm(num_pages);
  std::iota(perm.begin(), perm.end(), 0);
  std::shuffle(perm.begin(), perm.end(), rng);
  std::normal_distribution<double> nd(0.0, 0.1);
  int next = 0;
  for (int i = 0; i < c.b; ++i) {
    seq.set({i}, lens[i]);
    const int np = (lens[i] + ps - 1) / ps;
    for (int j = 0; j < max_pages; ++j) {
      if (j < np) {
        const int page = perm[next++];
        bt.set({i, j}, page);
        for (int t = 0; t < ps && j * ps + t < lens[i]; ++t)
          for (int h = 0; h < c.h_kv; ++h)
            for (int d = 0; d < c.d_qk; ++d)
              kc.set({page, t, h, d}, std::clamp(nd(rng), -1.0, 1.0));
      } else {
        bt.set({i, j}, (j % 2) ? 0x7fffffff : -123456);  // garbage past the request's pages
      }
    }
  }

  HostTensor out_ref(dt, {c.b, c.s_q, c.h_q, 512}), lse_ref(DType::kFloat32, {c.b, c.h_q, c.s_q});
  dense_decode(decode_params(q.view, kc.view, bt.view, seq.view, out_ref.view, lse_ref.view,
                             c.causal, nullptr));

  HostTensor out(dt, {c.b, c.s_q, c.h_q, 512}, c.q_pad), lse(DType::kFloat32, {c.b, c.h_q, c.s_q});
  auto dq = DeviceTensor::from(q), dk = DeviceTensor::from(kc), dbt = DeviceTensor::from(bt),
       dseq = DeviceTensor::from(seq);
  DeviceTensor dout(out), dlse(lse);
  dout.poison();
  dlse.poison();
  DecodePlanConfig cfg{.batch = c.b, .s_q = c.s_q, .h_q = c.h_q, .h_kv = c.h_kv, .d_qk = c.d_qk,
                       .causal = c.causal, .num_sms = c.num_sms,
                       .batch_invariant = c.batch_invariant};
  DecodePlan plan(cuda_device(0), cfg);
  plan.update(dseq.view);
  const DenseDecodeParams p =
      decode_params(dq.view, dk.view, dbt.view, dseq.view, dout.view, dlse.view, c.causal, &plan);
  dense_decode(p);
  sync_device();
  dout.download(out);
  dlse.download(lse);
  EXPECT_TRUE(close("out", out, out_ref, kDecodeOut));
  EXPECT_TRUE(close("lse", lse, lse_ref, kLse));

  // Same inputs again (re-poisoned outputs): bit-identical.
  dout.poison();
  dlse.poison();
  plan.update(dseq.view);
  dense_decode(p);
  sync_device();
  HostTensor out2 = dout.to_host(out), lse2 = dlse.to_host(lse);
  bool same_o = true, same_l = true;
  out.for_each([&](int64_t o) {
    if (memcmp(&out.storage[o * 2], &out2.storage[o * 2], 2) != 0) same_o = false;
  });
  lse.for_each([&](int64_t o) {
    if (memcmp(&lse.storage[o * 4], &lse2.storage[o * 4], 4) != 0) same_l = false;
  });
  EXPECT_TRUE(same_o) << "out differs between two identical runs";
  EXPECT_TRUE(same_l) << "lse differs between two identical runs";

  // The case again through another plan (and workspace), outputs re-poisoned: the number of
  // out/lse elements whose bits differ from the first run's.
  auto rerun_diffs = [&](DecodePlan& other, const TensorView& workspace) {
    dout.poison();
    dlse.poison();
    other.update(dseq.view);
    DenseDecodeParams po = decode_params(dq.view, dk.view, dbt.view, dseq.view, dout.view,
                                         dlse.view, c.causal, &other);
    po.workspace = workspace;
    dense_decode(po);
    sync_device();
    return bit_diffs(out, dout.to_host(out), lse, dlse.to_host(lse));
  };

  // A plan without partial buffers of its own (config.external_workspace): the partial results
  // go to the call's workspace (poisoned: nothing may be read before it is written), same bits.
  {
    DecodePlanConfig ext = cfg;
    ext.external_workspace = true;
    DecodePlan ext_plan(cuda_device(0), ext);
    EXPECT_EQ(ext_plan.workspace_bytes(), plan.workspace_bytes());
    const int64_t ws_bytes = static_cast<int64_t>(std::max<size_t>(ext_plan.workspace_bytes(), 1));
    DeviceTensor ws(HostTensor(DType::kUInt8, {ws_bytes}));
    ws.poison();
    const int diff = rerun_diffs(ext_plan, ws.view);
    EXPECT_EQ(diff, 0) << "external workspace and the plan's own buffers differ in " << diff
                       << " elements";
  }

  // A plan made for a larger batch serves this one (its choices are remade for the batch of each
  // update): the same bits. Called with another batch than its last update's, it names the plan.
  {
    DecodePlanConfig big = cfg;
    big.batch = c.b + 7;
    DecodePlan big_plan(cuda_device(0), big);
    const int diff = rerun_diffs(big_plan, TensorView{});
    EXPECT_EQ(diff, 0) << "a plan made for batch " << big.batch << " differs in " << diff
                       << " elements";
    if (c.b > 1) {
      TensorView fewer = dseq.view;
      fewer.shape[0] = c.b - 1;
      big_plan.update(fewer);
      EXPECT_TRUE(throws_naming("plan", [&] {
        dense_decode(decode_params(dq.view, dk.view, dbt.view, dseq.view, dout.view, dlse.view,
                                   c.causal, &big_plan));
      }));
      sync_device();
    }
  }

  // Batches of at most 512 are planned inside the attention kernel (no planner launch; over 8
  // only by the narrow kernel and the pair-merge build, else this compares the planner with
  // itself); the planner kernel (forced by the development switch at plan creation) must give
  // the same schedule, so the same bits.
  if (c.b <= sm90::kInlinePlanMaxBatch) {
    setenv("OPENMLA_DECODE_NO_INLINE_PLAN", "1", 1);
    DecodePlan planner_plan(cuda_device(0), cfg);
    unsetenv("OPENMLA_DECODE_NO_INLINE_PLAN");
    const int diff = rerun_diffs(planner_plan, TensorView{});
    EXPECT_EQ(diff, 0) << "inline plan and planner kernel differ in " << diff << " elements";
  }
}

class DenseDecodeGpu : public GpuTestWithParam<Case> {};

TEST_P(DenseDecodeGpu, MatchesCpuReference) {
  const Case& c = GetParam();
  check_case(c, 1234 + c.b * 7 + c.s_q * 131 + c.h_q * 17 + c.s_k);
}

// A random case of the supported space, drawn so that the planner's and the kernels' edge paths
// come up often: group sizes around 64 and its divisors, several KV heads, pages that are not
// powers of two, lengths of 0 and at block / page boundaries, one long request among short
// ones, batches on both sides of the inline plans' limits (8, 512), plans for few SMs, and the
// batch-invariant schedule. Work is capped so that the CPU reference stays quick (`scale`
// multiplies the caps).
Case random_case(std::mt19937_64& rng, double scale_caps) {
  auto pick = [&](std::initializer_list<int> v) {
    return *(v.begin() + std::uniform_int_distribution<size_t>(0, v.size() - 1)(rng));
  };
  auto chance = [&](double p) { return std::uniform_real_distribution<double>(0, 1)(rng) < p; };
  auto uniform = [&](int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng); };
  Case c{};
  c.h_kv = chance(0.6) ? 1 : pick({2, 3, 4, 8});
  const int group = pick({1, 2, 3, 5, 8, 9, 16, 17, 31, 32, 33, 48, 63, 64, 65, 96, 126, 128});
  if (group * c.h_kv > 256) c.h_kv = 1;
  c.h_q = group * c.h_kv;
  c.s_q = chance(0.5) ? 1 : pick({1, 2, 2, 3, 4, 5, 7, 17, 33, 64});
  c.causal = chance(0.5);
  c.fp16 = chance(0.3);
  c.d_qk = chance(0.7) ? 576 : 512;
  c.page_size = chance(0.5) ? 64 : pick({1, 2, 3, 8, 16, 32, 48, 100, 128, 192, 256});
  c.q_pad = chance(0.3) ? pick({8, 24, 64}) : 0;
  c.num_sms = chance(0.6) ? 0 : pick({1, 2, 8, 16, 33, 100});
  c.batch_invariant = chance(0.1);
  const int kind = uniform(0, 9);
  c.b = kind < 5 ? uniform(1, 8) : kind < 8 ? uniform(9, 64) : uniform(65, 600);
  // Lengths: most near a scale drawn per case, some at block and page edges, some 0.
  const int scale = pick({1, 20, 63, 64, 65, 128, 300, 1000, 3000, 8000});
  c.lens.resize(c.b);
  for (int& l : c.lens) {
    const int mode = uniform(0, 9);
    if (mode == 0) {
      l = 0;
    } else if (mode <= 2) {
      l = std::max(0, 64 * uniform(1, std::max(1, scale / 64 + 1)) + uniform(-1, 1));
    } else if (mode == 3) {
      l = std::max(0, c.page_size * uniform(1, std::max(1, scale / c.page_size + 1)) +
                          uniform(-1, 1));
    } else {
      l = uniform(0, scale);
    }
  }
  if (c.b > 1 && chance(0.3)) c.lens[uniform(0, c.b - 1)] = scale * uniform(2, 6);  // one long
  // Keep the reference's work (query rows x tokens) and the host-side cache fill bounded.
  auto tokens = [&] {
    int64_t t = 0;
    for (int l : c.lens) t += l;
    return t;
  };
  while (tokens() * c.s_q * c.h_q > 1.5e6 * scale_caps || tokens() * c.h_kv > 4e4 * scale_caps)
    for (int& l : c.lens) l /= 2;
  c.s_k = c.lens.empty() ? 0 : *std::max_element(c.lens.begin(), c.lens.end());
  return c;
}

// Random cases (GPU only; ~0.5 s each on the H200 machine, most of it the CPU reference).
// OPENMLA_GPU_RANDOM_CASES sets how many (default 24), OPENMLA_GPU_RANDOM_SEED the first case's
// seed (default 1), OPENMLA_GPU_RANDOM_SCALE multiplies the work caps (default 1; larger values
// keep longer contexts), OPENMLA_GPU_RANDOM_VERBOSE=1 prints each case as it starts. A failure
// names the case and its seed, so that it can be rerun alone with OPENMLA_GPU_RANDOM_CASES=1.
TEST_F(GpuTest, DenseDecodeRandomCases) {
  const char* n_env = std::getenv("OPENMLA_GPU_RANDOM_CASES");
  const char* seed_env = std::getenv("OPENMLA_GPU_RANDOM_SEED");
  const bool verbose = std::getenv("OPENMLA_GPU_RANDOM_VERBOSE") != nullptr;
  const char* scale_env = std::getenv("OPENMLA_GPU_RANDOM_SCALE");
  const int n = n_env != nullptr ? std::atoi(n_env) : 24;
  const double scale = scale_env != nullptr ? std::max(0.01, std::atof(scale_env)) : 1.0;
  const uint64_t first = seed_env != nullptr ? std::strtoull(seed_env, nullptr, 10) : 1;
  for (uint64_t seed = first; seed < first + static_cast<uint64_t>(n); ++seed) {
    std::mt19937_64 rng(seed * 0x9e3779b97f4a7c15ull);
    const Case c = random_case(rng, scale);
    const std::string what = "OPENMLA_GPU_RANDOM_SEED=" + std::to_string(seed) + " " + name(c);
    if (verbose) {
      std::printf("case %s\n", what.c_str());
      std::fflush(stdout);
    }
    SCOPED_TRACE(what);
    check_case(c, seed);
    if (HasFailure()) break;  // the first failing case is the one to look at
  }
}

// A KV-cache pool the size engines allocate (here 5.2 GB: more than 2^32 bytes and 2^31
// elements), the requests' pages at its top: every cache address of the kernels must be formed
// in 64 bits. The pool is NaN except those pages; the CPU reference reads the same tokens from a
// compact copy (its own block table). Main kernel (h_q = 128, s_q = 2, causal, pages of 64) and
// narrow kernel (h_q = 16, pages of 16: boxes issued by the producers' lanes; pages of 1:
// 16-byte gathers).
TEST_F(GpuTest, DenseDecodeLargeCachePool) {
  const size_t pool_bytes = size_t(5200) << 20;
  void* pool = nullptr;
  if (cudaMalloc(&pool, pool_bytes) != cudaSuccess) {
    (void)cudaGetLastError();
    GTEST_SKIP() << "cannot allocate a " << (pool_bytes >> 20) << " MB cache pool";
  }
  struct PoolFree {
    void* p;
    ~PoolFree() { (void)cudaFree(p); }
  } pool_free{pool};
  OPENMLA_CUDA_CHECK(cudaMemset(pool, 0xff, pool_bytes));
  struct Big {
    int s_q, h_q, page;
    bool causal;
    std::vector<int> lens;
  };
  const Big cases[] = {{2, 128, 64, true, {700, 0, 1500}},
                       {1, 16, 16, false, {333, 1000, 64}},
                       {1, 16, 1, false, {333, 1000, 64}}};
  const int d = 576;
  for (const Big& c : cases) {
    SCOPED_TRACE("h_q " + std::to_string(c.h_q) + " page " + std::to_string(c.page));
    std::mt19937_64 rng(4321 + c.h_q);
    const int b = static_cast<int>(c.lens.size()), ps = c.page;
    const int64_t page_elems = int64_t(ps) * d;
    const int64_t num_pages = static_cast<int64_t>(pool_bytes / 2 / page_elems);
    ASSERT_GT(num_pages * page_elems, int64_t(1) << 31);
    int max_pages = 1, used = 0;
    for (int l : c.lens) {
      max_pages = std::max(max_pages, (l + ps - 1) / ps);
      used += (l + ps - 1) / ps;
    }
    // Compact copy for the reference: page k of it is pool page num_pages - 1 - perm[k].
    HostTensor kc(DType::kBFloat16, {used, ps, 1, d});
    kc.fill_nan();
    HostTensor bt_ref(DType::kInt32, {b, max_pages}), bt(DType::kInt32, {b, max_pages});
    HostTensor seq(DType::kInt32, {b});
    std::vector<int> perm(used);
    std::iota(perm.begin(), perm.end(), 0);
    std::shuffle(perm.begin(), perm.end(), rng);
    std::normal_distribution<double> nd(0.0, 0.1);
    int next = 0;
    for (int i = 0; i < b; ++i) {
      seq.set({i}, c.lens[i]);
      for (int j = 0; j < max_pages; ++j) {
        if (j * ps < c.lens[i]) {
          const int k = next++;
          bt_ref.set({i, j}, k);
          bt.set({i, j}, static_cast<double>(num_pages - 1 - perm[k]));
          for (int t = 0; t < ps && j * ps + t < c.lens[i]; ++t)
            for (int e = 0; e < d; ++e) kc.set({k, t, 0, e}, std::clamp(nd(rng), -1.0, 1.0));
        } else {
          bt_ref.set({i, j}, -7);
          bt.set({i, j}, -7);
        }
      }
    }
    for (int k = 0; k < used; ++k)
      OPENMLA_CUDA_CHECK(cudaMemcpy(
          static_cast<uint16_t*>(pool) + (num_pages - 1 - perm[k]) * page_elems,
          kc.storage.data() + int64_t(k) * page_elems * 2, page_elems * 2,
          cudaMemcpyHostToDevice));
    const TensorView dk = TensorView::contiguous(pool, DType::kBFloat16, cuda_device(0),
                                                 {num_pages, ps, 1, d});

    HostTensor q(DType::kBFloat16, {b, c.s_q, c.h_q, d});
    fill_randn(q, rng);
    HostTensor out_ref(DType::kBFloat16, {b, c.s_q, c.h_q, 512});
    HostTensor lse_ref(DType::kFloat32, {b, c.h_q, c.s_q});
    dense_decode(decode_params(q.view, kc.view, bt_ref.view, seq.view, out_ref.view,
                               lse_ref.view, c.causal, nullptr));

    HostTensor out = out_ref, lse = lse_ref;
    auto dq = DeviceTensor::from(q), dbt = DeviceTensor::from(bt), dseq = DeviceTensor::from(seq);
    DeviceTensor dout(out), dlse(lse);
    dout.poison();
    dlse.poison();
    const DecodePlanConfig cfg{.batch = b, .s_q = c.s_q, .h_q = c.h_q, .causal = c.causal};
    DecodePlan plan(cuda_device(0), cfg);
    plan.update(dseq.view);
    dense_decode(decode_params(dq.view, dk, dbt.view, dseq.view, dout.view, dlse.view, c.causal,
                               &plan));
    sync_device();
    dout.download(out);
    dlse.download(lse);
    EXPECT_TRUE(close("out", out, out_ref, kDecodeOut));
    EXPECT_TRUE(close("lse", lse, lse_ref, kLse));
  }
}

// With DecodePlanConfig::batch_invariant, a request's bits do not depend on its neighbours: the
// same request alone and in the middle of a batch of others gives bit-identical out and lse, and
// both match the CPU reference.
TEST_F(GpuTest, DenseDecodeBatchInvariantSameBitsAloneAndInABatch) {
  std::mt19937_64 rng(99);
  const int ps = 64, h_q = 128, d = 576, s_q = 2;
  const std::vector<int> lens = {3000, 64, 5000, 1, 777};  // request 2 is "x"
  const int b = static_cast<int>(lens.size());
  int max_pages = 0, pages = 0;
  for (int l : lens) {
    max_pages = std::max(max_pages, (l + ps - 1) / ps);
    pages += (l + ps - 1) / ps;
  }
  HostTensor q(DType::kBFloat16, {b, s_q, h_q, d}), kc(DType::kBFloat16, {pages, ps, 1, d});
  HostTensor bt(DType::kInt32, {b, max_pages}), seq(DType::kInt32, {b});
  fill_randn(q, rng);
  fill_randn(kc, rng);
  int next = 0;
  for (int i = 0; i < b; ++i) {
    seq.set({i}, lens[i]);
    for (int j = 0; j < max_pages; ++j) bt.set({i, j}, j < (lens[i] + ps - 1) / ps ? next++ : -1);
  }
  auto run = [&](const HostTensor& qq, const HostTensor& btt, const HostTensor& sq, int bb,
                 HostTensor& out, HostTensor& lse) {
    auto dq = DeviceTensor::from(qq), dk = DeviceTensor::from(kc), dbt = DeviceTensor::from(btt),
         dseq = DeviceTensor::from(sq);
    DeviceTensor dout(out), dlse(lse);
    dout.poison();
    dlse.poison();
    DecodePlanConfig cfg;
    cfg.batch = bb;
    cfg.s_q = s_q;
    cfg.h_q = h_q;
    cfg.causal = true;
    cfg.batch_invariant = true;
    DecodePlan plan(cuda_device(0), cfg);
    plan.update(dseq.view);
    dense_decode(
        decode_params(dq.view, dk.view, dbt.view, dseq.view, dout.view, dlse.view, true, &plan));
    sync_device();
    dout.download(out);
    dlse.download(lse);
  };
  HostTensor out_b(DType::kBFloat16, {b, s_q, h_q, 512}), lse_b(DType::kFloat32, {b, h_q, s_q});
  run(q, bt, seq, b, out_b, lse_b);
  // Request 2 alone.
  HostTensor q1(DType::kBFloat16, {1, s_q, h_q, d}), bt1(DType::kInt32, {1, max_pages}),
      seq1(DType::kInt32, {1});
  for (int r = 0; r < s_q; ++r)
    for (int h = 0; h < h_q; ++h)
      for (int c = 0; c < d; ++c) q1.set({0, r, h, c}, q.get({2, r, h, c}));
  for (int j = 0; j < max_pages; ++j) bt1.set({0, j}, bt.get({2, j}));
  seq1.set({0}, lens[2]);
  HostTensor out_1(DType::kBFloat16, {1, s_q, h_q, 512}), lse_1(DType::kFloat32, {1, h_q, s_q});
  run(q1, bt1, seq1, 1, out_1, lse_1);
  int diff = 0;
  for (int r = 0; r < s_q; ++r)
    for (int h = 0; h < h_q; ++h) {
      for (int c = 0; c < 512; ++c) {
        const double a = out_1.get({0, r, h, c}), e = out_b.get({2, r, h, c});
        if (memcmp(&a, &e, sizeof a) != 0) ++diff;
      }
      const double a = lse_1.get({0, h, r}), e = lse_b.get({2, h, r});
      if (memcmp(&a, &e, sizeof a) != 0) ++diff;
    }
  EXPECT_EQ(diff, 0) << "request 2 alone and in the batch differ in " << diff << " elements";
  // And the batch matches the CPU reference.
  HostTensor out_ref(DType::kBFloat16, {b, s_q, h_q, 512}), lse_ref(DType::kFloat32, {b, h_q, s_q});
  dense_decode(
      decode_params(q.view, kc.view, bt.view, seq.view, out_ref.view, lse_ref.view, true, nullptr));
  EXPECT_TRUE(close("out", out_b, out_ref, kDecodeOut));
  EXPECT_TRUE(close("lse", lse_b, lse_ref, kLse));
}

// DenseDecodeParams::workspace: its size depends on the SMs and the query rows, not on the
// batch; a plan made with external_workspace requires it; a workspace too small, misaligned, of
// the wrong rank or overlapping an output is refused before any launch, naming "workspace".
TEST_F(GpuTest, DenseDecodeWorkspaceChecks) {
  std::mt19937_64 rng(7);
  const int b = 4, h_q = 128, d = 576, ps = 64, len = 2000, pages_per = (len + ps - 1) / ps;
  HostTensor q(DType::kBFloat16, {b, 1, h_q, d}), kc(DType::kBFloat16, {b * pages_per, ps, 1, d});
  HostTensor bt(DType::kInt32, {b, pages_per}), seq(DType::kInt32, {b});
  fill_randn(q, rng);
  fill_randn(kc, rng);
  for (int i = 0; i < b; ++i) {
    seq.set({i}, len);
    for (int j = 0; j < pages_per; ++j) bt.set({i, j}, i * pages_per + j);
  }
  auto dq = DeviceTensor::from(q), dk = DeviceTensor::from(kc), dbt = DeviceTensor::from(bt),
       dseq = DeviceTensor::from(seq);
  DeviceTensor dout(HostTensor(DType::kBFloat16, {b, 1, h_q, 512})),
      dlse(HostTensor(DType::kFloat32, {b, h_q, 1}));
  DecodePlanConfig cfg;
  cfg.batch = b;
  cfg.h_q = h_q;
  cfg.external_workspace = true;
  DecodePlan plan(cuda_device(0), cfg);
  cfg.batch = 100;
  cfg.external_workspace = false;
  const DecodePlan big(cuda_device(0), cfg);
  const size_t need = plan.workspace_bytes();
  ASSERT_GT(need, 0u);
  EXPECT_EQ(big.workspace_bytes(), need);  // the same for every batch size
  EXPECT_EQ(DecodePlan(Device{}, cfg).workspace_bytes(), 0u);  // the CPU needs none
  plan.update(dseq.view);
  DeviceTensor ws(HostTensor(DType::kUInt8, {static_cast<int64_t>(need) + 512}));
  auto call = [&](const TensorView& w) {
    DenseDecodeParams p =
        decode_params(dq.view, dk.view, dbt.view, dseq.view, dout.view, dlse.view, false, &plan);
    p.workspace = w;
    dense_decode(p);
  };
  EXPECT_TRUE(throws_naming("workspace", [&] { call(TensorView{}); }));
  TensorView small = ws.view;
  small.shape[0] = static_cast<int64_t>(need) - 1;
  EXPECT_TRUE(throws_naming("workspace", [&] { call(small); }));
  TensorView shifted = ws.view;
  shifted.data = static_cast<char*>(ws.data()) + 16;
  shifted.shape[0] = static_cast<int64_t>(need) + 16;
  EXPECT_TRUE(throws_naming("workspace", [&] { call(shifted); }));
  TensorView rank2 = ws.view;
  rank2.ndim = 2;
  rank2.shape[1] = 1;
  rank2.strides[1] = 1;
  EXPECT_TRUE(throws_naming("workspace", [&] { call(rank2); }));
  TensorView on_out = dout.view;  // the output's bytes as a workspace
  on_out.ndim = 1;
  on_out.dtype = DType::kUInt8;
  on_out.shape[0] = static_cast<int64_t>(dout.bytes());
  on_out.strides[0] = 1;
  EXPECT_TRUE(throws_naming("workspace", [&] { call(on_out); }));
  // A float32 workspace of enough elements is fine (any dtype), and gives the CPU reference.
  DeviceTensor wsf(HostTensor(DType::kFloat32, {static_cast<int64_t>(need / 4) + 1}));
  wsf.poison();
  call(wsf.view);
  sync_device();
  HostTensor out(DType::kBFloat16, {b, 1, h_q, 512}), lse(DType::kFloat32, {b, h_q, 1});
  dout.download(out);
  dlse.download(lse);
  HostTensor out_ref(DType::kBFloat16, {b, 1, h_q, 512}), lse_ref(DType::kFloat32, {b, h_q, 1});
  dense_decode(decode_params(q.view, kc.view, bt.view, seq.view, out_ref.view, lse_ref.view,
                             false, nullptr));
  EXPECT_TRUE(close("out", out, out_ref, kDecodeOut));
  EXPECT_TRUE(close("lse", lse, lse_ref, kLse));
}

std::vector<Case> cases() {
  std::vector<Case> v;
  // b, s_q, s_k, h_q, h_kv, causal, fp16, d_qk, page, varlen, q_pad
  // Head counts, including non-multiples of 64 and several m-blocks.
  for (int h : {1, 3, 9, 16, 63, 64, 126, 128})
    v.push_back({2, 1, 140, h, 1, false, false, 576, 64, true, 0});
  // Query lengths (MTP / short prefill), causal and not.
  for (int sq : {1, 2, 4, 17})
    for (bool causal : {false, true})
      v.push_back({6, sq, 140, 16, 1, causal, false, 576, 64, true, 0});
  // KV heads.
  for (int hkv : {2, 8}) {
    v.push_back({2, 2, 140, 16, hkv, true, false, 576, 64, true, 0});
    v.push_back({2, 1, 20, 64, hkv, false, true, 512, 64, false, 0});
  }
  // Dtypes and head dims.
  for (bool fp16 : {false, true})
    for (int d : {576, 512}) v.push_back({6, 2, 140, 64, 1, true, fp16, d, 64, true, 8});
  // Page sizes.
  for (int ps : {1, 16, 32, 128, 256})
    v.push_back({6, 1, 140, 16, 1, false, false, 576, ps, true, 0});
  // Pages of 1-8 tokens in the narrow kernel (1: 16-byte gathers instead of copy-engine boxes;
  // 2-8: boxes issued by four warps): fp16 d 512 s_q 2 with 32 rows and strided q, two KV heads,
  // a long single request.
  v.push_back({5, 2, 700, 16, 1, true, true, 512, 1, true, 8});
  v.push_back({4, 1, 1000, 32, 2, false, false, 576, 8, true, 0});
  v.push_back({3, 1, 2000, 16, 1, false, false, 576, 2, false, 0});
  v.push_back({4, 1, 1000, 32, 2, false, false, 576, 1, true, 0});  // gathers, two KV heads
  v.push_back({2, 2, 300, 64, 8, true, false, 576, 1, true, 0});    // gathers, eight KV heads
  // Pages that are not powers of two (boxes of gcd(page, 64) tokens; the kernels divide by the
  // page size with a multiply and a shift), and small pages through the main (64-row) kernel.
  v.push_back({6, 1, 140, 64, 1, false, false, 576, 16, true, 0});
  v.push_back({3, 2, 300, 128, 1, true, false, 576, 48, true, 0});
  v.push_back({2, 1, 500, 64, 1, false, true, 512, 96, true, 0});
  v.push_back({3, 1, 300, 16, 1, false, false, 576, 100, true, 0});
  v.push_back({2, 2, 700, 32, 1, true, false, 576, 192, true, 0});
  // Long contexts and big batches (split-KV and combine paths).
  v.push_back({1, 1, 4096, 128, 1, false, false, 576, 64, false, 0});
  v.push_back({1, 2, 4096, 128, 1, true, false, 576, 64, false, 0});
  v.push_back({2, 4, 4096, 16, 1, true, true, 512, 64, true, 8});
  v.push_back({64, 1, 140, 128, 1, false, false, 576, 64, true, 0});
  v.push_back({128, 1, 140, 16, 1, false, false, 576, 64, true, 0});
  v.push_back({128, 2, 20, 128, 1, true, false, 576, 64, true, 0});
  // Requests cut into ~4 pieces with more than 8 cut requests and 128 rows: the row combine
  // kernel's loop over further pieces.
  v.push_back({16, 1, 2048, 128, 1, false, false, 576, 64, true, 0});
  // Batches over 8 on the main kernel: requests cut in two pieces are merged by the attention
  // kernel (the piece that finishes second; PlanBuffers::merge_pairs), longer ones by the combine
  // kernel. Two KV heads, two m blocks, fp16 / d 512 / pages of 32 / strided q, long requests.
  v.push_back({24, 1, 1024, 128, 2, false, false, 576, 64, true, 0});
  v.push_back({32, 2, 600, 64, 1, true, true, 512, 32, true, 8});
  v.push_back({12, 1, 3000, 128, 1, false, false, 576, 64, true, 0});
  // The narrow kernel (<= 32 query rows per KV head) on long contexts: its chunk ring wraps many
  // times, requests are cut across parts (combine), fp16 / d 512 / pages 128 and 256 / s_q 2.
  v.push_back({1, 1, 6000, 16, 1, false, false, 576, 64, false, 0});
  v.push_back({3, 1, 4096, 32, 1, false, true, 512, 128, true, 8});
  v.push_back({4, 2, 3000, 16, 1, true, false, 576, 256, true, 0});
  // Inline plans of several requests per lane of the planning warp (33-512 requests: 2-16 per
  // lane, some lanes empty or partly filled), pair merges among them; 600 below is the planner
  // kernel's. Their cut lists (written by the attention kernel's first CTA) read by each combine:
  // the row kernel (b 40, 250, 300), the quarter-row kernel (b 32 h_q 16: few items) and, on a
  // plan for 16 or 8 SMs (8 parts at most), the wide kernel.
  v.push_back({40, 1, 900, 128, 1, false, false, 576, 64, true, 0});
  v.push_back({250, 1, 200, 16, 1, false, false, 576, 64, true, 0});
  v.push_back({45, 1, 700, 128, 1, false, true, 512, 64, true, 0});
  v.push_back({32, 1, 2000, 16, 1, false, false, 576, 64, true, 0});
  v.push_back({20, 1, 900, 128, 1, false, false, 576, 64, true, 0, 16});
  v.push_back({12, 1, 600, 16, 1, false, false, 576, 64, true, 0, 8});
  // More requests than schedule parts (66 / 132 on an H200), short ragged lengths with zeros: most
  // parts hold several whole requests and a few cut ones.
  v.push_back({300, 1, 300, 16, 1, false, false, 576, 64, true, 0});
  v.push_back({300, 1, 300, 128, 1, false, false, 576, 64, true, 0});
  v.push_back({600, 1, 100, 64, 1, false, false, 576, 64, true, 0});  // the planner kernel
  // Batches over 8 with more than two m blocks: the main kernel's build without pair merges,
  // planned by the planner kernel (its cut list through the row and wide combines); pages of
  // 32 / fp16 / d 512, and a plan for 16 SMs.
  v.push_back({40, 2, 900, 128, 1, true, false, 576, 64, true, 0});
  v.push_back({20, 4, 700, 64, 1, true, true, 512, 32, true, 8});
  v.push_back({12, 2, 900, 128, 1, true, false, 576, 64, true, 0, 16});
  // Short prefills sent through decode: s_q = 128 (16384 query rows per KV head at h_q = 128).
  v.push_back({2, 128, 300, 128, 1, true, false, 576, 64, true, 0});
  v.push_back({1, 128, 200, 16, 2, true, true, 512, 16, false, 8});
  // Short and exactly-one-page lengths; causal with s_q > length.
  v.push_back({6, 17, 20, 3, 1, true, false, 576, 64, true, 0});
  v.push_back({2, 1, 64, 16, 1, false, false, 576, 64, false, 0});
  v.push_back({2, 4, 65, 16, 1, true, false, 576, 16, false, 0});
  return v;
}

INSTANTIATE_TEST_SUITE_P(Sweep, DenseDecodeGpu, ::testing::ValuesIn(cases()),
                         [](const auto& info) { return name(info.param); });

}  // namespace
}  // namespace openmla::test
