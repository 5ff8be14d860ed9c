// Dense decode (SPEC §1) through the public API, against a second, naive formulation written
// here: the visible keys of each query are gathered explicitly through the block table, and
// logits, max, sum of exp, lse and o = sum_j exp(x_j - lse) v_j are evaluated by the formula in
// long double.
//
// Inputs follow SPEC §6: randn/10 clamped to [-1, 1], unused cache slots and pages NaN, block
// tables randomly permuted with garbage past the used pages, outputs poisoned with NaN before each
// call, and (pad > 0) every tensor non-contiguous with NaN in the row padding.
#include <gtest/gtest.h>

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <numeric>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "common/harness.h"
#include "common/reference_utils.h"
#include "openmla/openmla.h"

namespace openmla::test {
namespace {

constexpr int kDv = 512;

struct DenseCase {
  int b, s_q, h_q, h_kv, d_qk, page_size;
  bool causal;
  DType dtype;
  float scale;  // 0: the default 1/sqrt(d_qk)
  int pad;      // row padding of every tensor (0: contiguous)
  uint64_t seed;
};

std::string case_name(const DenseCase& c) {
  std::ostringstream os;
  os << (c.dtype == DType::kBFloat16 ? "bf16" : "fp16") << "_d" << c.d_qk << "_ps" << c.page_size
     << (c.causal ? "_causal" : "") << "_b" << c.b << "_sq" << c.s_q << "_hq" << c.h_q << "_hkv"
     << c.h_kv << (c.pad ? "_pad" : "") << (c.scale > 0 ? "_scale" : "") << "_" << c.seed;
  return os.str();
}

// One problem: inputs as the API sees them, and the host-side facts the reference needs.
struct Problem {
  DenseCase c;
  std::vector<int32_t> lens;
  std::vector<std::vector<int32_t>> pages;  // pages[i][j]: page of request i's j-th block
  int64_t num_pages = 0, max_pages = 0;
  HostTensor q, k_cache, block_table, cache_seqlens;
};

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Lengths: drawn from values around page boundaries; one request empty and one shorter than s_q
// when the batch has room for them.
std::vector<int32_t> draw_lengths(const DenseCase& c, std::mt19937_64& rng) {
  std::vector<int32_t> pool;
  if (c.page_size == 1)
    pool = {1, 2, 7, 19, 33};
  else if (c.page_size == 16)
    pool = {1, 15, 16, 17, 31, 32, 33, 50};
  else
    pool = {1, 63, 64, 65, 100, 129};
  std::vector<int32_t> lens(c.b);
  for (auto& l : lens) l = pool[rng() % pool.size()];
  auto short_len = [&] { return c.s_q > 1 ? int32_t(1 + rng() % (c.s_q - 1)) : int32_t(0); };
  if (c.b >= 3) {
    lens[0] = 0;
    lens[c.b - 1] = short_len();
  } else if (c.b == 2) {
    lens[0] = c.seed % 2 ? 0 : short_len();
  }
  return lens;
}

Problem make_problem(const DenseCase& c, std::vector<int32_t> lens = {}) {
  Problem p;
  p.c = c;
  std::mt19937_64 rng(c.seed);
  p.lens = lens.empty() ? draw_lengths(c, rng) : lens;
  const int64_t ps = c.page_size;
  int64_t used = 0, most = 0;
  for (int32_t l : p.lens) {
    used += ceil_div(l, ps);
    most = std::max(most, ceil_div(l, ps));
  }
  const int64_t spare = 3;  // pages nobody owns: all NaN
  p.num_pages = used + spare;
  p.max_pages = most + 2;  // at least two garbage entries per row
  std::vector<int32_t> perm(p.num_pages);
  std::iota(perm.begin(), perm.end(), 0);
  std::shuffle(perm.begin(), perm.end(), rng);
  size_t next = 0;
  p.pages.resize(c.b);
  for (int i = 0; i < c.b; ++i)
    for (int64_t j = 0; j < ceil_div(p.lens[i], ps); ++j) p.pages[i].push_back(perm[next++]);
  const std::vector<int32_t> spare_pages(perm.begin() + next, perm.end());

  p.block_table = HostTensor(DType::kInt32, {c.b, p.max_pages}, c.pad);
  p.block_table.fill_nan();  // padding: 0xffffffff
  const int32_t np = int32_t(p.num_pages);
  std::vector<int32_t> garbage = {INT_MAX,        INT_MIN,       -1, np, np + 12345, -np,
                                  spare_pages[0], spare_pages[1]};
  for (int i = 0; i < c.b; ++i) {
    for (int64_t j = 0; j < p.max_pages; ++j) {
      int32_t v;
      if (j < int64_t(p.pages[i].size())) {
        v = p.pages[i][j];
      } else if (rng() % 3 == 0 && used > 0) {
        v = perm[rng() % used];  // a valid page of some request: finite data, wrong token
      } else {
        v = garbage[rng() % garbage.size()];
      }
      p.block_table.set({i, j}, v);
    }
  }
  p.cache_seqlens = HostTensor(DType::kInt32, {c.b});
  for (int i = 0; i < c.b; ++i) p.cache_seqlens.set({i}, p.lens[i]);

  p.k_cache = HostTensor(c.dtype, {p.num_pages, ps, c.h_kv, c.d_qk}, c.pad);
  p.k_cache.fill_nan();  // unused slots, spare pages and padding stay NaN
  std::normal_distribution<double> nd(0.0, 0.1);
  for (int i = 0; i < c.b; ++i)
    for (int64_t t = 0; t < p.lens[i]; ++t)
      for (int64_t hk = 0; hk < c.h_kv; ++hk)
        for (int64_t d = 0; d < c.d_qk; ++d)
          p.k_cache.set({p.pages[i][t / ps], t % ps, hk, d}, std::clamp(nd(rng), -1.0, 1.0));

  p.q = HostTensor(c.dtype, {c.b, c.s_q, c.h_q, c.d_qk}, c.pad);
  p.q.fill_nan();
  fill_randn(p.q, rng);
  return p;
}

struct Outputs {
  HostTensor out, lse;
};

Outputs poisoned_outputs(const Problem& p) {
  const DenseCase& c = p.c;
  Outputs o{HostTensor(c.dtype, {c.b, c.s_q, c.h_q, kDv}, c.pad),
            HostTensor(DType::kFloat32, {c.b, c.h_q, c.s_q}, c.pad)};
  o.out.poison();
  o.lse.poison();
  return o;
}

void run(const Problem& p, Outputs& o) {
  DenseDecodeParams dp;
  dp.q = p.q.view;
  dp.k_cache = p.k_cache.view;
  dp.block_table = p.block_table.view;
  dp.cache_seqlens = p.cache_seqlens.view;
  dp.out = o.out.view;
  dp.lse = o.lse.view;
  dp.causal = p.c.causal;
  dp.softmax_scale = p.c.scale;
  dense_decode(dp);
}

int64_t visible(const Problem& p, int i, int r) {
  const int64_t L = p.lens[i];
  if (!p.c.causal) return L;
  return std::clamp<int64_t>(L - p.c.s_q + r + 1, 0, L);  // tokens t <= L - s_q + r
}

// The naive reference. The result is stored into tensors of the output dtypes (out: the dtype of
// q, lse: fp32), i.e. rounded once to what the API can return. That is the right thing to compare
// against: the best any backend can return is the exact value rounded to the output dtype, so
// the SPEC §6 tolerances then measure only the backend's own error, not our rounding. (Comparing
// the bf16 output with the unrounded value would also charge the unavoidable 1/2-ulp rounding of
// the output to the backend.) The rounding here is the correct one (see round_to_odd_f32).
Outputs reference(const Problem& p) {
  const DenseCase& c = p.c;
  Outputs ref{HostTensor(c.dtype, {c.b, c.s_q, c.h_q, kDv}),
              HostTensor(DType::kFloat32, {c.b, c.h_q, c.s_q})};
  const ld scale = c.scale > 0 ? ld(c.scale) : 1 / std::sqrt(ld(c.d_qk));
  const int64_t group = c.h_q / c.h_kv, ps = c.page_size;
  std::vector<ld> keys, q(c.d_qk), x, o(kDv);
  for (int i = 0; i < c.b; ++i)
    for (int64_t hk = 0; hk < c.h_kv; ++hk) {
      // Gather request i's tokens of KV head hk: token t at k_cache[bt[i][t / ps]][t % ps].
      const int64_t L = p.lens[i];
      keys.assign(L * c.d_qk, 0);
      for (int64_t t = 0; t < L; ++t) {
        const int64_t page = p.pages[i][t / ps];
        for (int64_t d = 0; d < c.d_qk; ++d)
          keys[t * c.d_qk + d] = p.k_cache.get({page, t % ps, hk, d});
      }
      for (int r = 0; r < c.s_q; ++r)
        for (int64_t g = 0; g < group; ++g) {
          const int64_t h = hk * group + g;  // query head h reads KV head h / (h_q / h_kv)
          const int64_t n = visible(p, i, r);
          for (int64_t d = 0; d < c.d_qk; ++d) q[d] = p.q.get({i, r, h, d});
          std::fill(o.begin(), o.end(), ld(0));
          ld lse = std::numeric_limits<ld>::infinity();
          if (n > 0) {
            x.assign(n, 0);
            ld m = -std::numeric_limits<ld>::infinity();
            for (int64_t j = 0; j < n; ++j) {
              ld dot = 0;
              for (int64_t d = 0; d < c.d_qk; ++d) dot += q[d] * keys[j * c.d_qk + d];
              x[j] = scale * dot;
              m = std::max(m, x[j]);
            }
            ld sum = 0;
            for (int64_t j = 0; j < n; ++j) sum += std::exp(x[j] - m);
            lse = m + std::log(sum);
            for (int64_t j = 0; j < n; ++j) {
              const ld w = std::exp(x[j] - lse);
              for (int64_t d = 0; d < kDv; ++d) o[d] += w * keys[j * c.d_qk + d];
            }
          }
          for (int64_t d = 0; d < kDv; ++d) ref.out.set({i, r, h, d}, round_to_odd_f32(o[d]));
          set_f32(ref.lse, {i, h, r}, lse);
        }
    }
  return ref;
}

// The full check of one problem.
void check_problem(const Problem& p) {
  const DenseCase& c = p.c;
  const std::vector<uint8_t> q0 = p.q.storage, k0 = p.k_cache.storage, bt0 = p.block_table.storage;
  Outputs got = poisoned_outputs(p);
  const std::vector<uint8_t> poison_out = got.out.storage, poison_lse = got.lse.storage;
  run(p, got);
  const Outputs ref = reference(p);

  EXPECT_TRUE(close("out", got.out, ref.out, kDecodeOut));
  EXPECT_TRUE(close("lse", got.lse, ref.lse, kLse));
  // The CPU backend computes in fp64 from the same inputs (SPEC §6): beyond the SPEC tolerances
  // it must agree with the correctly rounded long double formula to within 1 ulp of the output
  // dtype. (Not 0: its fp64 value may sit a hair on the other side of a rounding boundary, and
  // its store rounds fp64 -> fp32 -> bf16/fp16, which double-rounds in about 1 element in 10^5.)
  EXPECT_LE(max_ulp(got.out, ref.out), 1) << "out differs from the naive formula by > 1 ulp";
  EXPECT_LE(max_ulp(got.lse, ref.lse), 1) << "lse differs from the naive formula by > 1 ulp";

  // A query that sees no key: o exactly 0, lse +inf.
  for (int i = 0; i < c.b; ++i)
    for (int r = 0; r < c.s_q; ++r) {
      if (visible(p, i, r) > 0) continue;
      for (int h = 0; h < c.h_q; ++h) {
        EXPECT_EQ(got.lse.get({i, h, r}), std::numeric_limits<double>::infinity())
            << "request " << i << " row " << r << " head " << h;
        for (int d = 0; d < kDv; ++d)
          if (got.out.get({i, r, h, d}) != 0.0) {
            ADD_FAILURE() << "out not 0 for an empty row: request " << i << " row " << r << " head "
                          << h << " dim " << d << ": " << got.out.get({i, r, h, d});
            break;
          }
      }
    }

  EXPECT_TRUE(padding_untouched(got.out, poison_out));
  EXPECT_TRUE(padding_untouched(got.lse, poison_lse));
  EXPECT_EQ(p.q.storage, q0) << "q modified";
  EXPECT_EQ(p.k_cache.storage, k0) << "k_cache modified";
  EXPECT_EQ(p.block_table.storage, bt0) << "block_table modified";

  // Two identical calls give bit-identical results.
  Outputs again = poisoned_outputs(p);
  run(p, again);
  EXPECT_EQ(again.out.storage, got.out.storage) << "out not bit-identical across identical calls";
  EXPECT_EQ(again.lse.storage, got.lse.storage) << "lse not bit-identical across identical calls";
}

// ---------------------------------------------------------------------------------------------
// The sweep: every (dtype, d_qk, page size, causal) with two shapes each, rotating through the
// shapes so that every s_q, h_q, h_kv and batch value meets several of the others.

std::vector<DenseCase> sweep() {
  struct Shape {
    int b, s_q, h_q, h_kv;
  };
  const Shape shapes[] = {{1, 1, 1, 1},  {3, 1, 16, 8},  {2, 2, 3, 1},
                          {3, 4, 16, 2}, {2, 17, 3, 1},  {2, 2, 64, 1},
                          {4, 1, 64, 8}, {2, 17, 16, 1}, {3, 4, 64, 2}};
  const int n_shapes = sizeof(shapes) / sizeof(shapes[0]);
  std::vector<DenseCase> cases;
  int k = 0;
  for (DType dt : {DType::kBFloat16, DType::kFloat16})
    for (int d : {576, 512})
      for (int ps : {1, 16, 64})
        for (bool causal : {false, true})
          for (int rep = 0; rep < 2; ++rep, ++k) {
            const Shape s = shapes[(k * 5 + rep) % n_shapes];
            const int pad = (k % 3 == 1) ? 0 : 8 + k % 5;
            const float scale = k % 4 == 3 ? 0.25f : 0.0f;
            cases.push_back(
                {s.b, s.s_q, s.h_q, s.h_kv, d, ps, causal, dt, scale, pad, uint64_t(1000 + k)});
          }
  return cases;
}

class DenseDecodeSweep : public ::testing::TestWithParam<DenseCase> {};

TEST_P(DenseDecodeSweep, MatchesNaiveFormula) { check_problem(make_problem(GetParam())); }

INSTANTIATE_TEST_SUITE_P(Cpu, DenseDecodeSweep, ::testing::ValuesIn(sweep()),
                         [](const auto& info) { return case_name(info.param); });

// ---------------------------------------------------------------------------------------------
// Edge cases, spelled out.

// Zero-length requests (out exactly 0, lse +inf) and causal rows with s_q > L (fully masked rows
// give 0 / +inf; the others see t <= L - s_q + r).
TEST(DenseDecode, ZeroLengthAndFullyMaskedRows) {
  for (bool causal : {false, true})
    for (DType dt : {DType::kBFloat16, DType::kFloat16}) {
      DenseCase c{4, 4, 16, 2, 576, 16, causal, dt, 0.0f, 5, 77};
      SCOPED_TRACE(case_name(c));
      // Request 1 (L = 2 < s_q = 4): rows 0 and 1 see nothing when causal, rows 2, 3 see 1, 2.
      // Request 3 (L = 3): row 0 sees nothing.
      Problem p = make_problem(c, {0, 2, 17, 3});
      check_problem(p);
      Outputs got = poisoned_outputs(p);
      run(p, got);
      auto row_empty = [&](int i, int r) {
        for (int h = 0; h < c.h_q; ++h) {
          if (got.lse.get({i, h, r}) != std::numeric_limits<double>::infinity()) return false;
          for (int d = 0; d < kDv; ++d)
            if (got.out.get({i, r, h, d}) != 0.0) return false;
        }
        return true;
      };
      for (int r = 0; r < 4; ++r) EXPECT_TRUE(row_empty(0, r)) << "L = 0, row " << r;
      EXPECT_EQ(row_empty(1, 0), causal);
      EXPECT_EQ(row_empty(1, 1), causal);
      EXPECT_FALSE(row_empty(1, 2));
      EXPECT_EQ(row_empty(3, 0), causal);
      EXPECT_FALSE(row_empty(3, 1));
      EXPECT_FALSE(row_empty(2, 0));
    }
}

// Every request empty: the whole output is 0 / +inf, whatever the (all-garbage) block table holds.
TEST(DenseDecode, AllRequestsEmpty) {
  DenseCase c{3, 2, 16, 1, 512, 64, true, DType::kBFloat16, 0.0f, 3, 78};
  check_problem(make_problem(c, {0, 0, 0}));
}

// A causal query row whose visible prefix ends exactly at a page boundary, and s_q = 1 causal
// (which must equal non-causal).
TEST(DenseDecode, CausalPageBoundaries) {
  DenseCase c{3, 17, 3, 1, 576, 16, true, DType::kBFloat16, 0.0f, 0, 79};
  check_problem(make_problem(c, {32, 33, 48}));
  for (bool causal : {false, true}) {
    DenseCase c1{2, 1, 16, 1, 576, 16, causal, DType::kBFloat16, 0.0f, 0, 80};
    check_problem(make_problem(c1, {16, 33}));
  }
  DenseCase a{2, 1, 16, 1, 576, 16, false, DType::kBFloat16, 0.0f, 0, 80};
  DenseCase b = a;
  b.causal = true;
  Problem pa = make_problem(a, {16, 33}), pb = make_problem(b, {16, 33});
  Outputs oa = poisoned_outputs(pa), ob = poisoned_outputs(pb);
  run(pa, oa);
  run(pb, ob);
  EXPECT_EQ(oa.out.storage, ob.out.storage) << "causal with s_q = 1 must equal non-causal";
  EXPECT_EQ(oa.lse.storage, ob.lse.storage);
}

// Logits in the hundreds: exp overflows fp64 unless the maximum is subtracted.
TEST(DenseDecode, LargeLogits) {
  for (DType dt : {DType::kBFloat16, DType::kFloat16}) {
    DenseCase c{2, 2, 16, 1, 576, 16, false, dt, 100.0f, 0, 81};
    Problem p = make_problem(c, {40, 7});
    std::mt19937_64 rng(82);
    fill_randn(p.q, rng, 0.5);
    for (int i = 0; i < c.b; ++i)
      for (int64_t t = 0; t < p.lens[i]; ++t)
        for (int64_t d = 0; d < c.d_qk; ++d)
          p.k_cache.set({p.pages[i][t / 16], t % 16, 0, d},
                        std::clamp(std::normal_distribution<double>(0, 0.5)(rng), -1.0, 1.0));
    check_problem(p);
    Outputs got = poisoned_outputs(p);
    run(p, got);
    double biggest = 0;
    got.lse.for_each([&](int64_t o) { biggest = std::max(biggest, got.lse.get_flat(o)); });
    EXPECT_GT(biggest, 710.0) << "test does not reach the fp64 exp overflow range";
  }
}

// Batch 0 is a no-op.
TEST(DenseDecode, EmptyBatch) {
  HostTensor q(DType::kBFloat16, {0, 1, 16, 576}), k(DType::kBFloat16, {1, 16, 1, 576});
  HostTensor bt(DType::kInt32, {0, 1}), sl(DType::kInt32, {0});
  HostTensor out(DType::kBFloat16, {0, 1, 16, 512}), lse(DType::kFloat32, {0, 16, 1});
  DenseDecodeParams dp;
  dp.q = q.view;
  dp.k_cache = k.view;
  dp.block_table = bt.view;
  dp.cache_seqlens = sl.view;
  dp.out = out.view;
  dp.lse = lse.view;
  EXPECT_NO_THROW(dense_decode(dp));
}

}  // namespace
}  // namespace openmla::test
