// Sparse MLA prefill (SPEC §4) on the CPU backend, through the public API, against a second and
// deliberately naive formulation written here: for every (query token, head) the selected kv rows
// are gathered explicitly (invalid entries and entries past topk_length dropped, duplicates kept),
// and in long double
//   x_j = scale * <q, kv_j>,  max_logits = max_j x_j,  lse = log(sum_j exp(x_j)),
//   out = sum_j exp(x_j) v_j / (sum_j exp(x_j) + exp(attn_sink))      (v_j = kv_j[:512])
// computed directly (no running max, no rescaling; long double's range holds exp() of every logit
// these tests produce). The attn_sink form is the algebraic rewrite of SPEC §3's
// out *= 1 / (1 + exp(sink - lse)), so it checks the formula, not a transcription of it.
//
// Checks: SPEC §6 tolerances (kPrefillOut, kLse) through close(), and -- because the CPU backend is
// the fp64 reference every GPU kernel is judged against -- that each output is the exact value
// rounded once to its dtype (bf16: relative error <= 2^-8, fp32: <= 2^-24, plus a tiny absolute
// floor for the fp64 arithmetic). Outputs (and their row padding) are NaN-poisoned before each
// call; padding must stay untouched.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "common/harness.h"
#include "common/reference_utils.h"

namespace openmla::test {
namespace {

using LD = long double;
constexpr LD kInfL = std::numeric_limits<LD>::infinity();
constexpr int64_t kDv = 512;

// ---------------------------------------------------------------- shared checks

// Every logical element of `got` equals the exact value `want` (row-major logical order) rounded
// once to got's dtype: |got - want| <= u * |want| + floor; infinities at exactly the same places
// with the same sign; NaN never.
::testing::AssertionResult rounded_once(const char* name, const HostTensor& got,
                                        const std::vector<LD>& want, double u, double floor) {
  size_t i = 0;
  int64_t bad = 0;
  std::ostringstream first;
  got.for_each([&](int64_t o) {
    const LD g = got.get_flat(o), w = want.at(i);
    bool ok;
    if (std::isnan(w) || std::isnan(g))
      ok = false;
    else if (std::isinf(w) || std::isinf(g))
      ok = g == w;
    else
      ok = std::fabs(g - w) <= LD(u) * std::fabs(w) + LD(floor);
    if (!ok && bad++ == 0)
      first << " first at logical element " << i << ": got " << double(g) << ", want " << double(w);
    ++i;
  });
  if (i != want.size()) return ::testing::AssertionFailure() << name << ": size mismatch";
  if (bad)
    return ::testing::AssertionFailure()
           << name << ": " << bad << " of " << i << " elements not the once-rounded exact value;"
           << first.str();
  return ::testing::AssertionSuccess();
}

bool same_bits(const HostTensor& a, const HostTensor& b) {
  std::vector<double> x, y;
  a.for_each([&](int64_t o) { x.push_back(a.get_flat(o)); });
  b.for_each([&](int64_t o) { y.push_back(b.get_flat(o)); });
  if (x.size() != y.size()) return false;
  for (size_t i = 0; i < x.size(); ++i)
    if (memcmp(&x[i], &y[i], sizeof(double)) != 0) return false;
  return true;
}

// The softmax scale the API uses: given, or 1/sqrt(d_qk) -- handed to the backend as fp32.
LD api_scale(float given, int64_t d_qk) {
  return given > 0 ? LD(given) : LD(static_cast<float>(1.0 / std::sqrt(double(d_qk))));
}

// ---------------------------------------------------------------- problem, call, reference

struct SparseProblem {
  int64_t s_q = 0, h_q = 0, d_qk = 0, s_kv = 0, topk = 0;
  HostTensor q, kv, indices, topk_length, attn_sink;
  bool has_len = false, has_sink = false;
  float scale = 0.0f;  // as passed to the API
};

struct SparseResult {
  HostTensor out, max_logits, lse;
};

// Calls openmla::sparse_prefill with NaN-poisoned outputs (`pad` extra elements per output row)
// and checks that nothing outside the output views was written.
SparseResult run(const SparseProblem& p, int64_t pad, bool use_sink = true) {
  SparseResult r{HostTensor(DType::kBFloat16, {p.s_q, p.h_q, kDv}, pad),
                 HostTensor(DType::kFloat32, {p.s_q, p.h_q}, pad),
                 HostTensor(DType::kFloat32, {p.s_q, p.h_q}, pad)};
  r.out.poison();
  r.max_logits.poison();
  r.lse.poison();
  const SparseResult before = r;
  SparsePrefillParams prm;
  prm.q = p.q.view;
  prm.kv = p.kv.view;
  prm.indices = p.indices.view;
  if (p.has_len) prm.topk_length = p.topk_length.view;
  if (p.has_sink && use_sink) prm.attn_sink = p.attn_sink.view;
  prm.out = r.out.view;
  prm.max_logits = r.max_logits.view;
  prm.lse = r.lse.view;
  prm.softmax_scale = p.scale;
  sparse_prefill(prm);
  EXPECT_TRUE(padding_untouched("out", before.out, r.out));
  EXPECT_TRUE(padding_untouched("max_logits", before.max_logits, r.max_logits));
  EXPECT_TRUE(padding_untouched("lse", before.lse, r.lse));
  return r;
}

struct SparseRef {
  std::vector<LD> out, max_logits, lse;  // row-major [s_q, h_q, 512], [s_q, h_q], [s_q, h_q]
};

SparseRef reference(const SparseProblem& p, bool use_sink = true) {
  const LD scale = api_scale(p.scale, p.d_qk);
  SparseRef ref;
  for (int64_t r = 0; r < p.s_q; ++r) {
    // Gather: the first topk_length entries (clamped to [0, topk]) that name a row of kv.
    int64_t counted = p.topk;
    if (p.has_len) {
      const int64_t l = static_cast<int64_t>(p.topk_length.get({r}));
      counted = l < 0 ? 0 : (l > p.topk ? p.topk : l);
    }
    std::vector<std::vector<LD>> keys;
    for (int64_t k = 0; k < counted; ++k) {
      const int64_t idx = static_cast<int64_t>(p.indices.get({r, 0, k}));
      if (idx < 0 || idx >= p.s_kv) continue;
      std::vector<LD> row(p.d_qk);
      for (int64_t c = 0; c < p.d_qk; ++c) row[c] = p.kv.get({idx, 0, c});
      keys.push_back(std::move(row));
    }
    for (int64_t h = 0; h < p.h_q; ++h) {
      if (keys.empty()) {
        ref.out.insert(ref.out.end(), kDv, LD(0));
        ref.max_logits.push_back(-kInfL);
        ref.lse.push_back(kInfL);
        continue;
      }
      std::vector<LD> q(p.d_qk), x, e;
      for (int64_t c = 0; c < p.d_qk; ++c) q[c] = p.q.get({r, h, c});
      for (const auto& key : keys) {
        LD dot = 0;
        for (int64_t c = 0; c < p.d_qk; ++c) dot += q[c] * key[c];
        x.push_back(scale * dot);
        e.push_back(std::exp(x.back()));
      }
      LD mx = -kInfL, z = 0;
      for (size_t j = 0; j < x.size(); ++j) {
        mx = std::max(mx, x[j]);
        z += e[j];
      }
      LD denom = z;
      if (p.has_sink && use_sink) denom += std::exp(LD(p.attn_sink.get({h})));  // +inf: out 0
      for (int64_t c = 0; c < kDv; ++c) {
        LD num = 0;
        for (size_t j = 0; j < keys.size(); ++j) num += e[j] * keys[j][c];
        ref.out.push_back(num / denom);
      }
      ref.max_logits.push_back(mx);
      ref.lse.push_back(std::log(z));
    }
  }
  return ref;
}

void expect_matches_reference(const SparseProblem& p, const SparseResult& got,
                              const SparseRef& ref) {
  EXPECT_TRUE(close("out", got.out, as_tensor({p.s_q, p.h_q, kDv}, ref.out), kPrefillOut));
  EXPECT_TRUE(close("max_logits", got.max_logits, as_tensor({p.s_q, p.h_q}, ref.max_logits), kLse));
  EXPECT_TRUE(close("lse", got.lse, as_tensor({p.s_q, p.h_q}, ref.lse), kLse));
  EXPECT_TRUE(rounded_once("out", got.out, ref.out, 0x1p-8, 1e-13));
  EXPECT_TRUE(rounded_once("max_logits", got.max_logits, ref.max_logits, 0x1p-24, 1e-12));
  EXPECT_TRUE(rounded_once("lse", got.lse, ref.lse, 0x1p-24, 1e-12));
}

// ---------------------------------------------------------------- random problems

struct SparseCase {
  const char* name;
  int64_t s_q, h_q, d_qk, s_kv, topk;
  int64_t poison_rows;  // last rows of kv are NaN, reachable only past topk_length
  bool topk_length, sink;
  int64_t pad;   // extra elements per row of every tensor with rows (inputs and outputs)
  float scale;   // 0: default
  double sigma;  // randn * sigma, clamped to [-1, 1]
  uint64_t seed;
};

void PrintTo(const SparseCase& c, std::ostream* os) { *os << c.name; }

SparseProblem make_problem(const SparseCase& c) {
  std::mt19937_64 rng(c.seed);
  SparseProblem p;
  p.s_q = c.s_q;
  p.h_q = c.h_q;
  p.d_qk = c.d_qk;
  p.s_kv = c.s_kv;
  p.topk = c.topk;
  p.scale = c.scale;
  p.q = HostTensor(DType::kBFloat16, {c.s_q, c.h_q, c.d_qk}, c.pad);
  p.q.fill_nan();  // padding stays NaN
  fill_randn(p.q, rng, c.sigma);
  // kv: NaN everywhere (padding, poison rows), random values in rows [0, n_normal).
  const int64_t n_normal = c.s_kv - c.poison_rows;
  p.kv = HostTensor(DType::kBFloat16, {c.s_kv, 1, c.d_qk}, c.pad);
  p.kv.fill_nan();
  std::normal_distribution<double> nd(0.0, c.sigma);
  for (int64_t t = 0; t < n_normal; ++t)
    for (int64_t d = 0; d < c.d_qk; ++d) p.kv.set({t, 0, d}, std::clamp(nd(rng), -1.0, 1.0));

  p.has_len = c.topk_length;
  if (p.has_len) p.topk_length = HostTensor(DType::kInt32, {c.s_q});
  p.indices = HostTensor(DType::kInt32, {c.s_q, 1, c.topk}, c.pad);
  p.indices.fill_nan();  // padding 0xff..: -1 -- harmless either way, never read
  const int64_t invalid[] = {-1,
                             -1,
                             -1,
                             -2,
                             c.s_kv,
                             c.s_kv + 1,
                             std::numeric_limits<int32_t>::max(),
                             std::numeric_limits<int32_t>::min(),
                             -123456789,
                             int64_t(1) << 30};
  std::uniform_int_distribution<int64_t> pick_normal(0, n_normal - 1);
  std::uniform_int_distribution<int64_t> pick_poison(n_normal, c.s_kv - 1);
  std::uniform_int_distribution<int> pick_invalid(0, std::size(invalid) - 1);
  std::uniform_real_distribution<double> u01(0.0, 1.0);
  for (int64_t r = 0; r < c.s_q; ++r) {
    int64_t counted = c.topk;
    if (p.has_len) {
      // Row patterns: 0, partial, exactly topk, more than topk, negative, random in [1, topk].
      int64_t len;
      switch (r % 6) {
        case 0:
          len = 0;
          break;
        case 1:
          len = std::max<int64_t>(1, c.topk / 2);
          break;
        case 2:
          len = c.topk;
          break;
        case 3:
          len = c.topk + 7;
          break;
        case 4:
          len = -3;
          break;
        default:
          len = std::uniform_int_distribution<int64_t>(1, c.topk)(rng);
          break;
      }
      p.topk_length.set({r}, double(len));
      counted = std::clamp<int64_t>(len, 0, c.topk);
    }
    std::vector<int64_t> row_valid;
    for (int64_t k = 0; k < c.topk; ++k) {
      int64_t idx;
      if (k >= counted) {
        // Past topk_length: in range, so only topk_length masks it; poison rows where there are.
        idx = c.poison_rows > 0 ? pick_poison(rng) : pick_normal(rng);
      } else if (r == 2 || n_normal == 0) {
        idx = invalid[pick_invalid(rng)];  // a row with no valid index at all
      } else {
        const double z = u01(rng);
        if (z < 0.25)
          idx = invalid[pick_invalid(rng)];
        else if (z < 0.4 && !row_valid.empty())  // a duplicate: counts twice
          idx = row_valid[std::uniform_int_distribution<size_t>(0, row_valid.size() - 1)(rng)];
        else
          idx = pick_normal(rng);
        if (idx >= 0 && idx < c.s_kv) row_valid.push_back(idx);
      }
      p.indices.set({r, 0, k}, double(idx));
    }
  }
  p.has_sink = c.sink;
  if (p.has_sink) {
    // Per head: -inf (no effect), +inf (zero output), finite around typical lse values.
    p.attn_sink = HostTensor(DType::kFloat32, {c.h_q});
    std::uniform_real_distribution<double> us(-1.0, 5.0);
    for (int64_t h = 0; h < c.h_q; ++h) {
      const int kind = static_cast<int>((h + c.seed) % 4);
      const double s = kind == 0 ? -INFINITY : kind == 1 ? INFINITY : us(rng);
      p.attn_sink.set({h}, s);
    }
  }
  return p;
}

class SparsePrefillRandom : public ::testing::TestWithParam<SparseCase> {};

TEST_P(SparsePrefillRandom, MatchesNaiveGatherFormula) {
  const SparseCase& c = GetParam();
  const SparseProblem p = make_problem(c);
  const SparseRef ref = reference(p);
  // Sanity of the generated problem: some valid keys, and (where intended) rows with none.
  int64_t finite = 0, none = 0;
  for (LD l : ref.lse) (std::isinf(l) ? none : finite) += 1;
  ASSERT_GT(finite, 0);
  if (c.s_q > 2) ASSERT_GT(none, 0);
  const SparseResult got = run(p, c.pad);
  expect_matches_reference(p, got, ref);
}

const SparseCase kSparseCases[] = {
    // name, s_q, h_q, d_qk, s_kv, topk, poison_rows, topk_length, sink, pad, scale, sigma, seed
    {"d576_basic", 5, 2, 576, 40, 16, 0, false, false, 0, 0.0f, 0.1, 11},
    {"d512_basic", 5, 2, 512, 40, 16, 0, false, false, 0, 0.0f, 0.1, 12},
    {"d576_len_sink_strided", 7, 3, 576, 48, 64, 8, true, true, 8, 0.0f, 0.1, 13},
    {"d512_len_sink_strided", 8, 16, 512, 70, 128, 6, true, true, 3, 0.0f, 0.1, 14},
    {"d576_topk1_tiny", 3, 1, 576, 2, 1, 0, false, false, 0, 0.0f, 0.1, 15},
    {"d512_topk5_len", 6, 5, 512, 9, 5, 3, true, false, 1, 0.0f, 0.1, 16},
    {"d576_sharp_custom_scale", 4, 4, 576, 64, 64, 0, false, true, 0, 0.5f, 0.5, 17},
    {"d512_sharp_len_strided", 6, 4, 512, 33, 32, 5, true, true, 2, 0.3f, 0.5, 18},
    {"d576_h64", 2, 64, 576, 300, 128, 0, false, true, 0, 0.0f, 0.1, 19},
    {"d512_h128_len", 6, 128, 512, 100, 64, 10, true, true, 4, 0.0f, 0.1, 20},
};

INSTANTIATE_TEST_SUITE_P(Cases, SparsePrefillRandom, ::testing::ValuesIn(kSparseCases),
                         [](const auto& info) { return std::string(info.param.name); });

// ---------------------------------------------------------------- targeted properties

SparseCase sink_case(int64_t d_qk, uint64_t seed) {
  return {"sink", 6, 4, d_qk, 50, 32, 4, true, true, 2, 0.0f, 0.1, seed};
}

void set_all_sinks(SparseProblem& p, double v) {
  for (int64_t h = 0; h < p.h_q; ++h) p.attn_sink.set({h}, v);
}

TEST(SparsePrefill, SinkScalesOutOnlyNotLseOrMaxLogits) {
  for (int64_t d_qk : {576, 512}) {
    SCOPED_TRACE(d_qk);
    SparseProblem p = make_problem(sink_case(d_qk, 31 + d_qk));
    // Finite sinks around the lse of this problem (log of ~20 keys) so the factor is far from 1.
    for (int64_t h = 0; h < p.h_q; ++h) p.attn_sink.set({h}, 1.0 + 1.5 * h);
    const SparseResult with = run(p, 1, true), without = run(p, 1, false);
    expect_matches_reference(p, with, reference(p, true));
    expect_matches_reference(p, without, reference(p, false));
    EXPECT_TRUE(same_bits(with.lse, without.lse));
    EXPECT_TRUE(same_bits(with.max_logits, without.max_logits));
    // The sink did change the output (else this test could not tell).
    EXPECT_FALSE(same_bits(with.out, without.out));
    // Explicitly: out_with = out_without / (1 + exp(sink - lse)), per (row, head).
    for (int64_t r = 0; r < p.s_q; ++r)
      for (int64_t h = 0; h < p.h_q; ++h) {
        const LD lse = without.lse.get({r, h});
        if (std::isinf(lse)) continue;
        const LD f = 1 / (1 + std::exp(LD(p.attn_sink.get({h})) - lse));
        for (int64_t c = 0; c < kDv; c += 37) {
          const LD a = with.out.get({r, h, c}), b = without.out.get({r, h, c});
          EXPECT_NEAR(double(a), double(b * f), double(0x1p-7 * std::fabs(b * f) + 1e-12));
        }
      }
  }
}

TEST(SparsePrefill, SinkMinusInfinityHasNoEffect) {
  SparseProblem p = make_problem(sink_case(576, 41));
  set_all_sinks(p, -INFINITY);
  const SparseResult with = run(p, 0, true), without = run(p, 0, false);
  EXPECT_TRUE(same_bits(with.out, without.out));
  EXPECT_TRUE(same_bits(with.lse, without.lse));
  EXPECT_TRUE(same_bits(with.max_logits, without.max_logits));
  expect_matches_reference(p, with, reference(p));
}

TEST(SparsePrefill, SinkPlusInfinityZeroesOutKeepsLse) {
  SparseProblem p = make_problem(sink_case(512, 43));
  set_all_sinks(p, INFINITY);
  const SparseResult with = run(p, 3, true), without = run(p, 3, false);
  int64_t nonzero = 0;
  with.out.for_each([&](int64_t o) {
    const double v = with.out.get_flat(o);
    if (v != 0.0 || std::isnan(v)) ++nonzero;
  });
  EXPECT_EQ(nonzero, 0);
  EXPECT_TRUE(same_bits(with.lse, without.lse));
  EXPECT_TRUE(same_bits(with.max_logits, without.max_logits));
  int64_t finite_lse = 0;
  with.lse.for_each([&](int64_t o) { finite_lse += std::isfinite(with.lse.get_flat(o)); });
  EXPECT_GT(finite_lse, 0);
  expect_matches_reference(p, with, reference(p));
}

// A query with no valid index: out 0, lse +inf, max_logits -inf, never NaN -- with or without a
// finite sink, whether the indices are invalid or topk_length is 0 / negative.
TEST(SparsePrefill, NoValidIndexGivesZeroInfMinusInf) {
  const int64_t s_q = 4, h_q = 3, d = 576, s_kv = 6, topk = 8;
  SparseProblem p;
  p.s_q = s_q, p.h_q = h_q, p.d_qk = d, p.s_kv = s_kv, p.topk = topk;
  std::mt19937_64 rng(5);
  p.q = HostTensor(DType::kBFloat16, {s_q, h_q, d});
  fill_randn(p.q, rng);
  p.kv = HostTensor(DType::kBFloat16, {s_kv, 1, d});
  fill_randn(p.kv, rng);
  p.indices = HostTensor(DType::kInt32, {s_q, 1, topk});
  const int64_t bad[] = {-1,
                         s_kv,
                         s_kv + 1,
                         std::numeric_limits<int32_t>::max(),
                         std::numeric_limits<int32_t>::min(),
                         -7,
                         int64_t(1) << 20,
                         -1};
  for (int64_t r = 0; r < s_q; ++r)
    for (int64_t k = 0; k < topk; ++k)
      p.indices.set({r, 0, k}, double(r < 2 ? bad[k] : k % s_kv));  // rows 2, 3: all valid
  p.has_len = true;
  p.topk_length = HostTensor(DType::kInt32, {s_q});
  const int64_t lens[] = {topk, topk + 100, 0, -5};  // rows 2, 3 masked by topk_length
  for (int64_t r = 0; r < s_q; ++r) p.topk_length.set({r}, double(lens[r]));
  p.has_sink = true;
  p.attn_sink = HostTensor(DType::kFloat32, {h_q});
  for (int64_t h = 0; h < h_q; ++h) p.attn_sink.set({h}, h == 0 ? -INFINITY : 0.5 * h);
  for (bool sink : {false, true}) {
    SCOPED_TRACE(sink);
    const SparseResult got = run(p, 2, sink);
    for (int64_t r = 0; r < s_q; ++r)
      for (int64_t h = 0; h < h_q; ++h) {
        EXPECT_EQ(got.lse.get({r, h}), INFINITY);
        EXPECT_EQ(got.max_logits.get({r, h}), -INFINITY);
        for (int64_t c = 0; c < kDv; ++c) ASSERT_EQ(got.out.get({r, h, c}), 0.0) << r << " " << h;
      }
  }
}

// Duplicate indices count once per occurrence, checked by closed forms rather than the loop above.
TEST(SparsePrefill, DuplicateIndicesCountTwice) {
  for (int64_t d : {576, 512}) {
    SCOPED_TRACE(d);
    const int64_t s_q = 3, h_q = 2, s_kv = 5, topk = 4, a = 3, b = 1;
    SparseProblem p;
    p.s_q = s_q, p.h_q = h_q, p.d_qk = d, p.s_kv = s_kv, p.topk = topk;
    std::mt19937_64 rng(77 + d);
    p.q = HostTensor(DType::kBFloat16, {s_q, h_q, d});
    fill_randn(p.q, rng, 0.5);
    p.kv = HostTensor(DType::kBFloat16, {s_kv, 1, d});
    fill_randn(p.kv, rng, 0.5);
    p.indices = HostTensor(DType::kInt32, {s_q, 1, topk});
    const int64_t rows[3][4] = {{a, a, a, a}, {a, b, a, -1}, {a, b, -1, s_kv}};
    for (int64_t r = 0; r < s_q; ++r)
      for (int64_t k = 0; k < topk; ++k) p.indices.set({r, 0, k}, double(rows[r][k]));
    const SparseResult got = run(p, 0);
    const LD scale = api_scale(0.0f, d);
    for (int64_t h = 0; h < h_q; ++h) {
      auto logit = [&](int64_t r, int64_t key) {
        LD s = 0;
        for (int64_t c = 0; c < d; ++c) s += LD(p.q.get({r, h, c})) * LD(p.kv.get({key, 0, c}));
        return scale * s;
      };
      // Row 0: four copies of one key: lse = x_a + log 4, max = x_a, out = v_a (exactly, bf16).
      const LD xa0 = logit(0, a);
      EXPECT_NEAR(got.lse.get({0, h}), double(xa0 + std::log(LD(4))), 1e-5);
      EXPECT_NEAR(got.max_logits.get({0, h}), double(xa0), 1e-5);
      for (int64_t c = 0; c < kDv; ++c) ASSERT_EQ(got.out.get({0, h, c}), p.kv.get({a, 0, c}));
      // Rows 1 and 2: weights 2:1 and 1:1 for keys a and b.
      for (int64_t r : {1, 2}) {
        const LD wa = r == 1 ? 2 : 1;
        const LD xa = logit(r, a), xb = logit(r, b);
        const LD z = wa * std::exp(xa) + std::exp(xb);
        EXPECT_NEAR(got.lse.get({r, h}), double(std::log(z)), 1e-5);
        EXPECT_NEAR(got.max_logits.get({r, h}), double(std::max(xa, xb)), 1e-5);
        for (int64_t c = 0; c < kDv; ++c) {
          const LD want =
              (wa * std::exp(xa) * p.kv.get({a, 0, c}) + std::exp(xb) * p.kv.get({b, 0, c})) / z;
          ASSERT_NEAR(got.out.get({r, h, c}), double(want),
                      double(0x1p-8 * std::fabs(want) + 1e-12))
              << "row " << r << " c " << c;
        }
      }
      // The duplicate matters: row 1's lse differs from the deduplicated log(e^xa + e^xb).
      EXPECT_GT(std::fabs(got.lse.get({1, h}) -
                          double(std::log(std::exp(logit(1, a)) + std::exp(logit(1, b))))),
                1e-3);
    }
  }
}

// Non-contiguous inputs and outputs with different paddings per tensor give the same result as
// contiguous ones (bit for bit: the values are the same).
TEST(SparsePrefill, StridedEqualsContiguous) {
  const SparseCase c{"strided", 5, 4, 512, 30, 32, 3, true, true, 0, 0.0f, 0.1, 91};
  const SparseProblem dense = make_problem(c);
  SparseProblem strided = dense;
  auto restride = [](const HostTensor& src, int64_t pad) {
    std::vector<int64_t> shape(src.view.shape, src.view.shape + src.view.ndim);
    HostTensor t(src.view.dtype, shape, pad);
    t.fill_nan();
    std::vector<int64_t> offs;
    src.for_each([&](int64_t o) { offs.push_back(o); });
    size_t i = 0;
    t.for_each([&](int64_t o) {
      memcpy(&t.storage[o * dtype_size(t.view.dtype)],
             &src.storage[offs[i++] * dtype_size(src.view.dtype)], dtype_size(t.view.dtype));
    });
    return t;
  };
  strided.q = restride(dense.q, 13);
  strided.kv = restride(dense.kv, 64);
  strided.indices = restride(dense.indices, 5);
  const SparseResult a = run(dense, 0), b = run(strided, 7);
  EXPECT_TRUE(same_bits(a.out, b.out));
  EXPECT_TRUE(same_bits(a.lse, b.lse));
  EXPECT_TRUE(same_bits(a.max_logits, b.max_logits));
  expect_matches_reference(strided, b, reference(strided));
}

TEST(SparsePrefill, ZeroQueriesIsANoOp) {
  SparsePrefillParams prm;
  HostTensor q(DType::kBFloat16, {0, 2, 576}), kv(DType::kBFloat16, {4, 1, 576});
  HostTensor idx(DType::kInt32, {0, 1, 64}), out(DType::kBFloat16, {0, 2, 512});
  HostTensor ml(DType::kFloat32, {0, 2}), lse(DType::kFloat32, {0, 2});
  prm.q = q.view, prm.kv = kv.view, prm.indices = idx.view, prm.out = out.view;
  prm.max_logits = ml.view, prm.lse = lse.view;
  EXPECT_NO_THROW(sparse_prefill(prm));
}

}  // namespace
}  // namespace openmla::test
