// Sparse decode over an FP8 cache (SPEC §2, §3) through the public API, against a naive
// formulation written here. The cache is built with the library's quantize_kv_cache from random
// bf16 data; the reference keys come from decoding the cache BYTES here (e4m3 by formula times the
// tile scale read from the documented offsets, bf16 RoPE), not from the library's dequantize.
// The reference gathers the selected slots explicitly (main pool, then extra pool), and evaluates
// logits, max, sum of exp, lse and o = sum_j exp(x_j - lse) v_j in long double, then the sink.
//
// Caches hold slots poisoned with 0xff bytes (NaN values, NaN/inf scales) that no counted index
// selects; index positions past topk_length, and the row padding of the index tensors, point at
// them, so that a kernel that reads one produces NaN. Page strides are padded with 0xff bytes.
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
constexpr ld kInfL = std::numeric_limits<ld>::infinity();

// ---------------------------------------------------------------------------------------------
// Naive FP8 cache decoding, from the layout in SPEC §2.

ld e4m3_value(uint8_t b) {
  const int s = b >> 7, e = (b >> 3) & 15, m = b & 7;
  if (e == 15 && m == 7) return std::numeric_limits<ld>::quiet_NaN();
  const ld v = e == 0 ? std::ldexp(ld(m) / 8, -6) : std::ldexp(1 + ld(m) / 8, e - 7);
  return s ? -v : v;
}
ld bf16_value(const uint8_t* p) {
  uint16_t h;
  memcpy(&h, p, 2);
  const uint32_t u = uint32_t(h) << 16;
  float f;
  memcpy(&f, &u, 4);
  return f;
}

struct Fmt {
  KVCacheFormat format;
  bool model1;
  int d_qk, nope, tile, tiles, bpt;
};
Fmt fmt_for(int d_qk) {
  return d_qk == 512 ? Fmt{KVCacheFormat::kFP8Model1, true, 512, 448, 64, 7, 584}
                     : Fmt{KVCacheFormat::kFP8V32, false, 576, 512, 128, 4, 656};
}

// Byte offsets of token `off` of the page starting at `base`.
struct TokenAt {
  int64_t nope, scales, rope;
};
TokenAt token_at(const Fmt& f, int64_t base, int64_t ps, int64_t off) {
  if (!f.model1) return {base + off * 656, base + off * 656 + 512, base + off * 656 + 528};
  return {base + off * 576, base + ps * 576 + off * 8, base + off * 576 + 448};
}

// One cache pool: the FP8 bytes, which slots are poisoned, and the naively decoded keys.
struct Pool {
  Fmt f;
  int64_t ps = 0, pages = 0;
  HostTensor cache;
  std::vector<bool> poisoned;
  std::vector<int32_t> good, bad;     // slot ids
  std::vector<std::vector<ld>> keys;  // per slot, d_qk values (empty when poisoned)
  int64_t slots() const { return ps * pages; }
};

Pool make_pool(int d_qk, int64_t ps, int64_t pages, int64_t page_pad, std::mt19937_64& rng) {
  Pool p;
  p.f = fmt_for(d_qk);
  p.ps = ps;
  p.pages = pages;
  const int64_t stride = fp8_page_bytes(p.f.format, ps) + page_pad;
  p.cache = HostTensor(DType::kUInt8, {pages, ps, 1, p.f.bpt}, {stride, p.f.bpt, p.f.bpt, 1});
  p.cache.fill_nan();  // 0xff everywhere: page padding stays NaN bytes

  HostTensor in(DType::kBFloat16, {pages, ps, 1, d_qk});
  fill_randn(in, rng);
  QuantizeKVParams qp;
  qp.input = in.view;
  qp.cache = p.cache.view;
  qp.format = p.f.format;
  quantize_kv_cache(qp);

  // Poison about one slot in eight: every byte of the token 0xff.
  p.poisoned.assign(p.slots(), false);
  for (int64_t s = 0; s < p.slots(); ++s) {
    if (rng() % 8 != 0) continue;
    p.poisoned[s] = true;
    const TokenAt t = token_at(p.f, (s / ps) * stride, ps, s % ps);
    memset(&p.cache.storage[t.nope], 0xff, p.f.nope);
    memset(&p.cache.storage[t.scales], 0xff, p.f.model1 ? 8 : 16);
    memset(&p.cache.storage[t.rope], 0xff, 128);
  }
  p.keys.resize(p.slots());
  for (int64_t s = 0; s < p.slots(); ++s) {
    if (p.poisoned[s]) {
      p.bad.push_back(int32_t(s));
      continue;
    }
    p.good.push_back(int32_t(s));
    const TokenAt t = token_at(p.f, (s / ps) * stride, ps, s % ps);
    const uint8_t* bytes = p.cache.storage.data();
    std::vector<ld>& k = p.keys[s];
    k.resize(d_qk);
    for (int tile = 0; tile < p.f.tiles; ++tile) {
      ld scale;
      if (p.f.model1) {
        scale = std::ldexp(ld(1), int(bytes[t.scales + tile]) - 127);  // UE8M0
      } else {
        float sf;
        memcpy(&sf, bytes + t.scales + 4 * tile, 4);
        scale = sf;
      }
      for (int j = 0; j < p.f.tile; ++j) {
        const int c = tile * p.f.tile + j;
        k[c] = e4m3_value(bytes[t.nope + c]) * scale;
      }
    }
    for (int j = 0; j < 64; ++j) k[p.f.nope + j] = bf16_value(bytes + t.rope + 2 * j);
  }
  return p;
}

// ---------------------------------------------------------------------------------------------
// Index tensors.

struct Selection {
  HostTensor indices;        // [b, s_q, topk]
  HostTensor lengths;        // [b] (ndim -1 view when absent)
  std::vector<int32_t> len;  // effective counted length per request (min(topk, max(0, l)))
};

// `dead_rows[i * s_q + r]`: every counted index of the row invalid.
// topk_length of request i rotates through 0, topk, topk + 37 (> topk) and a random length in
// between, starting at `salt`, so that the sweep meets all four.
Selection make_selection(const Pool& pool, int b, int s_q, int topk, bool with_lengths, int pad,
                         const std::vector<bool>& dead_rows, uint64_t salt, std::mt19937_64& rng) {
  Selection sel;
  sel.indices = HostTensor(DType::kInt32, {b, s_q, topk}, pad);
  // Row padding (beyond topk): poisoned slots when there are any, else valid ones. A kernel that
  // reads past topk (e.g. trusting topk_length > topk) picks them up.
  const int32_t pad_slot = pool.bad.empty() ? pool.good[0] : pool.bad[0];
  for (size_t k = 0; k + 4 <= sel.indices.storage.size(); k += 4)
    memcpy(&sel.indices.storage[k], &pad_slot, 4);

  sel.len.assign(b, topk);
  if (with_lengths) {
    sel.lengths = HostTensor(DType::kInt32, {b});
    for (int i = 0; i < b; ++i) {
      int32_t l;
      switch ((i + salt) % 4) {
        case 0:
          l = 0;
          break;
        case 1:
          l = topk;
          break;
        case 2:
          l = topk + 37;
          break;  // more than topk: only topk count
        default:
          l = 1 + int32_t(rng() % (topk - 1));
          break;
      }
      sel.lengths.set({i}, l);
      sel.len[i] = std::clamp(l, 0, topk);
    }
  }
  const int32_t ns = int32_t(pool.slots());
  const std::vector<int32_t> invalid = {-1, -1, -1, ns, ns + 1, INT_MAX, INT_MIN, -ns};
  for (int i = 0; i < b; ++i)
    for (int r = 0; r < s_q; ++r) {
      std::vector<int32_t> good = pool.good;
      std::shuffle(good.begin(), good.end(), rng);
      EXPECT_GE(good.size(), size_t(topk)) << "test setup: too few valid slots";
      const bool dead = dead_rows[i * s_q + r];
      for (int k = 0; k < topk; ++k) {
        int32_t v;
        if (k < sel.len[i]) {  // counted
          v = (dead || rng() % 7 == 0) ? invalid[rng() % invalid.size()] : good[k % good.size()];
        } else if (!pool.bad.empty() && rng() % 4 != 0) {
          v = pool.bad[rng() % pool.bad.size()];  // not counted: NaN if ever read
        } else {
          v = good[rng() % good.size()];  // not counted: finite, but wrong if read
        }
        sel.indices.set({i, r, k}, v);
      }
    }
  return sel;
}

// Keys of row (i, r) of one pool as the contract defines them: the first len[i] indices, valid
// ones only.
void gather(const Pool& pool, const Selection& sel, int i, int r, std::vector<const ld*>& keys) {
  for (int k = 0; k < sel.len[i]; ++k) {
    const int64_t s = int64_t(sel.indices.get({i, r, k}));
    if (s < 0 || s >= pool.slots()) continue;
    keys.push_back(pool.keys[s].data());
  }
}

// ---------------------------------------------------------------------------------------------
// A problem: q, the pools, the selections, the sink.

struct SparseCase {
  int d_qk, page_size, num_pages;
  int b, s_q, h_q, topk;
  bool topk_len;
  bool sink;                              // attn_sink given: per head finite, -inf or +inf
  int extra_ps, extra_pages, extra_topk;  // extra_topk 0: no extra pool
  bool extra_len;
  int page_pad;  // bytes added to the page stride of both pools
  int pad;       // row padding of q, out, lse and the index tensors
  uint64_t seed;
};

std::string case_name(const SparseCase& c) {
  std::ostringstream os;
  os << (c.d_qk == 576 ? "V32" : "MODEL1") << "_ps" << c.page_size << "_b" << c.b << "_sq" << c.s_q
     << "_hq" << c.h_q << "_topk" << c.topk << (c.topk_len ? "_len" : "")
     << (c.sink ? "_sink" : "");
  if (c.extra_topk)
    os << "_extra_ps" << c.extra_ps << "_topk" << c.extra_topk << (c.extra_len ? "_len" : "");
  if (c.page_pad) os << "_pagepad" << c.page_pad;
  if (c.pad) os << "_pad";
  os << "_" << c.seed;
  return os.str();
}

struct Problem {
  SparseCase c;
  Pool main, extra;
  Selection sel, extra_sel;
  HostTensor q, sink;
  std::vector<bool> dead;
};

Problem make_problem(const SparseCase& c) {
  Problem p;
  p.c = c;
  std::mt19937_64 rng(c.seed);
  p.main = make_pool(c.d_qk, c.page_size, c.num_pages, c.page_pad, rng);
  if (c.extra_topk) p.extra = make_pool(c.d_qk, c.extra_ps, c.extra_pages, c.page_pad, rng);
  // The last row of the batch selects nothing valid in any pool (when that leaves other rows).
  p.dead.assign(c.b * c.s_q, false);
  if (c.b * c.s_q > 1) p.dead.back() = true;
  p.sel = make_selection(p.main, c.b, c.s_q, c.topk, c.topk_len, c.pad, p.dead, c.seed, rng);
  if (c.extra_topk)
    p.extra_sel = make_selection(p.extra, c.b, c.s_q, c.extra_topk, c.extra_len, c.pad, p.dead,
                                 c.seed + 2, rng);
  p.q = HostTensor(DType::kBFloat16, {c.b, c.s_q, c.h_q, c.d_qk}, c.pad);
  p.q.fill_nan();
  fill_randn(p.q, rng);
  if (c.sink) {
    p.sink = HostTensor(DType::kFloat32, {c.h_q});
    std::uniform_real_distribution<double> u(1.0, 7.0);  // around lse = log(#keys)
    for (int h = 0; h < c.h_q; ++h) {
      const int mode = int((h + c.seed) % 4);
      const double inf = std::numeric_limits<double>::infinity();
      p.sink.set({h}, mode == 1 ? -inf : mode == 2 ? inf : u(rng));
    }
  }
  return p;
}

struct Outputs {
  HostTensor out, lse;
};
Outputs poisoned_outputs(const SparseCase& c) {
  Outputs o{HostTensor(DType::kBFloat16, {c.b, c.s_q, c.h_q, kDv}, c.pad),
            HostTensor(DType::kFloat32, {c.b, c.h_q, c.s_q}, c.pad)};
  o.out.poison();
  o.lse.poison();
  return o;
}

SparseDecodeParams params(const Problem& p, Outputs& o) {
  SparseDecodeParams sp;
  sp.q = p.q.view;
  sp.k_cache = p.main.cache.view;
  sp.indices = p.sel.indices.view;
  if (p.c.topk_len) sp.topk_length = p.sel.lengths.view;
  if (p.c.sink) sp.attn_sink = p.sink.view;
  if (p.c.extra_topk) {
    sp.extra_k_cache = p.extra.cache.view;
    sp.extra_indices = p.extra_sel.indices.view;
    if (p.c.extra_len) sp.extra_topk_length = p.extra_sel.lengths.view;
  }
  sp.out = o.out.view;
  sp.lse = o.lse.view;
  return sp;
}

// The naive reference, correctly rounded to the output dtypes (bf16 out, fp32 lse): the best any
// backend can return, so the SPEC §6 tolerances measure only the backend's own error (comparing
// with the unrounded value would charge the output's unavoidable 1/2-ulp rounding to it).
Outputs reference(const Problem& p) {
  const SparseCase& c = p.c;
  Outputs ref{HostTensor(DType::kBFloat16, {c.b, c.s_q, c.h_q, kDv}),
              HostTensor(DType::kFloat32, {c.b, c.h_q, c.s_q})};
  const ld scale = 1 / std::sqrt(ld(c.d_qk));
  std::vector<const ld*> keys;
  std::vector<ld> q(c.d_qk), x, o(kDv);
  for (int i = 0; i < c.b; ++i)
    for (int r = 0; r < c.s_q; ++r) {
      keys.clear();
      gather(p.main, p.sel, i, r, keys);
      if (c.extra_topk) gather(p.extra, p.extra_sel, i, r, keys);  // one softmax over the union
      const int64_t n = int64_t(keys.size());
      for (int h = 0; h < c.h_q; ++h) {
        for (int d = 0; d < c.d_qk; ++d) q[d] = p.q.get({i, r, h, d});
        std::fill(o.begin(), o.end(), ld(0));
        ld lse = kInfL;
        if (n > 0) {
          x.assign(n, 0);
          ld m = -kInfL;
          for (int64_t j = 0; j < n; ++j) {
            ld dot = 0;
            for (int d = 0; d < c.d_qk; ++d) dot += q[d] * keys[j][d];
            x[j] = scale * dot;
            m = std::max(m, x[j]);
          }
          ld sum = 0;
          for (int64_t j = 0; j < n; ++j) sum += std::exp(x[j] - m);
          lse = m + std::log(sum);
          for (int64_t j = 0; j < n; ++j) {
            const ld w = std::exp(x[j] - lse);
            for (int d = 0; d < kDv; ++d) o[d] += w * keys[j][d];
          }
          if (c.sink) {  // out *= 1 / (1 + exp(sink - lse)); lse unchanged
            const ld f = 1 / (1 + std::exp(ld(p.sink.get({h})) - lse));
            for (int d = 0; d < kDv; ++d) o[d] *= f;
          }
        }
        for (int d = 0; d < kDv; ++d) ref.out.set({i, r, h, d}, round_to_odd_f32(o[d]));
        set_f32(ref.lse, {i, h, r}, lse);
      }
    }
  return ref;
}

bool row_has_keys(const Problem& p, int i, int r) {
  std::vector<const ld*> keys;
  gather(p.main, p.sel, i, r, keys);
  if (p.c.extra_topk) gather(p.extra, p.extra_sel, i, r, keys);
  return !keys.empty();
}

void check_problem(const Problem& p) {
  const SparseCase& c = p.c;
  const std::vector<uint8_t> cache0 = p.main.cache.storage, q0 = p.q.storage;
  Outputs got = poisoned_outputs(c);
  const std::vector<uint8_t> poison_out = got.out.storage, poison_lse = got.lse.storage;
  sparse_decode(params(p, got));
  const Outputs ref = reference(p);

  EXPECT_TRUE(close("out", got.out, ref.out, kDecodeOut));
  EXPECT_TRUE(close("lse", got.lse, ref.lse, kLse));
  // The CPU backend computes in fp64 from the dequantized values (SPEC §6): it must agree with
  // the correctly rounded long double formula to within 1 ulp (its store rounds fp64 -> fp32 ->
  // bf16, which double-rounds in about 1 element in 10^5).
  EXPECT_LE(max_ulp(got.out, ref.out), 1) << "out differs from the naive formula by > 1 ulp";
  EXPECT_LE(max_ulp(got.lse, ref.lse), 1) << "lse differs from the naive formula by > 1 ulp";

  int empty_rows = 0;
  for (int i = 0; i < c.b; ++i)
    for (int r = 0; r < c.s_q; ++r) {
      const bool any = row_has_keys(p, i, r);
      empty_rows += !any;
      for (int h = 0; h < c.h_q; ++h) {
        const bool zero_out =
            !any || (c.sink && p.sink.get({h}) == std::numeric_limits<double>::infinity());
        if (!any) {
          EXPECT_EQ(got.lse.get({i, h, r}), std::numeric_limits<double>::infinity())
              << "row without keys: request " << i << " row " << r << " head " << h;
        }
        if (zero_out)
          for (int d = 0; d < kDv; ++d)
            if (got.out.get({i, r, h, d}) != 0.0) {
              ADD_FAILURE() << "out must be exactly 0: request " << i << " row " << r << " head "
                            << h << " dim " << d << ": " << got.out.get({i, r, h, d});
              break;
            }
      }
    }
  if (c.b * c.s_q > 1) {
    EXPECT_GE(empty_rows, 1) << "test setup: no empty row";
  }

  EXPECT_TRUE(padding_untouched(got.out, poison_out));
  EXPECT_TRUE(padding_untouched(got.lse, poison_lse));
  EXPECT_EQ(p.main.cache.storage, cache0) << "k_cache modified";
  EXPECT_EQ(p.q.storage, q0) << "q modified";

  Outputs again = poisoned_outputs(c);
  sparse_decode(params(p, again));
  EXPECT_EQ(again.out.storage, got.out.storage) << "out not bit-identical across identical calls";
  EXPECT_EQ(again.lse.storage, got.lse.storage) << "lse not bit-identical across identical calls";
}

// ---------------------------------------------------------------------------------------------
// The sweep. Fields: d_qk, page_size, num_pages, b, s_q, h_q, topk, topk_len, sink,
// extra_ps, extra_pages, extra_topk, extra_len, page_pad, pad, seed.

std::vector<SparseCase> sweep() {
  return {
      {576, 64, 4, 2, 2, 64, 128, true, true, 0, 0, 0, false, 0, 0, 1},
      {576, 2, 100, 2, 1, 16, 64, false, false, 64, 2, 64, true, 32, 4, 2},
      {576, 53, 4, 3, 2, 1, 128, true, true, 2, 48, 64, false, 0, 3, 3},
      {576, 61, 3, 2, 1, 16, 64, false, true, 0, 0, 0, false, 100, 0, 4},
      {576, 69, 3, 3, 1, 64, 64, true, false, 61, 2, 64, true, 16, 5, 5},
      {576, 64, 2, 1, 2, 128, 64, false, true, 0, 0, 0, false, 0, 0, 6},
      {576, 576, 1, 2, 1, 32, 64, true, true, 2, 40, 64, true, 0, 2, 7},
      {512, 64, 3, 2, 2, 64, 64, true, true, 2, 48, 64, true, 0, 0, 8},
      {512, 2, 100, 2, 2, 16, 128, false, false, 0, 0, 0, false, 64, 2, 9},
      {512, 53, 3, 3, 1, 1, 64, true, true, 69, 2, 64, false, 0, 0, 10},
      {512, 61, 3, 2, 1, 64, 128, true, true, 0, 0, 0, false, 8, 7, 11},
      {512, 69, 2, 2, 2, 16, 64, false, true, 64, 3, 128, true, 576, 0, 12},
      {512, 576, 1, 2, 1, 32, 64, true, false, 0, 0, 0, false, 0, 0, 13},
  };
}

class SparseDecodeSweep : public ::testing::TestWithParam<SparseCase> {};

TEST_P(SparseDecodeSweep, MatchesNaiveFormula) { check_problem(make_problem(GetParam())); }

INSTANTIATE_TEST_SUITE_P(Cpu, SparseDecodeSweep, ::testing::ValuesIn(sweep()),
                         [](const auto& info) { return case_name(info.param); });

// ---------------------------------------------------------------------------------------------
// Metamorphic checks that do not rely on the reference above.

// attn_sink: -inf changes nothing, +inf gives exactly 0, lse is returned unchanged in both.
TEST(SparseDecode, SinkSemantics) {
  for (int d_qk : {576, 512}) {
    SparseCase c{d_qk, 64, 3, 2, 2, 16, 64, true, false, 0, 0, 0, false, 0, 3, 21};
    Problem p = make_problem(c);
    Outputs plain = poisoned_outputs(c);
    sparse_decode(params(p, plain));
    for (double s :
         {-std::numeric_limits<double>::infinity(), std::numeric_limits<double>::infinity(), 3.0}) {
      HostTensor sink(DType::kFloat32, {c.h_q});
      for (int h = 0; h < c.h_q; ++h) sink.set({h}, s);
      Outputs o = poisoned_outputs(c);
      SparseDecodeParams sp = params(p, o);
      sp.attn_sink = sink.view;
      sparse_decode(sp);
      EXPECT_EQ(o.lse.storage, plain.lse.storage) << "lse must be returned unchanged, sink " << s;
      if (s < 0) {
        EXPECT_EQ(o.out.storage, plain.out.storage) << "sink -inf must have no effect";
      } else if (std::isinf(s)) {
        o.out.for_each([&](int64_t k) { ASSERT_EQ(o.out.get_flat(k), 0.0) << "sink +inf"; });
      } else {
        // Finite: out = plain * 1 / (1 + exp(s - lse)) (rows without keys stay 0).
        HostTensor want = plain.out;
        for (int i = 0; i < c.b; ++i)
          for (int r = 0; r < c.s_q; ++r)
            for (int h = 0; h < c.h_q; ++h) {
              const double lse = plain.lse.get({i, h, r});
              const double f = std::isinf(lse) ? 1.0 : 1.0 / (1.0 + std::exp(s - lse));
              for (int d = 0; d < kDv; ++d) want.set({i, r, h, d}, plain.out.get({i, r, h, d}) * f);
            }
        EXPECT_TRUE(close("out with sink", o.out, want, kDecodeOut));
      }
    }
  }
}

// With an extra pool there is one softmax over the union: lse = logaddexp(lse_main, lse_extra)
// and out = exp(lse_main - lse) out_main + exp(lse_extra - lse) out_extra, where the parts come
// from two calls over one pool each.
TEST(SparseDecode, ExtraPoolIsOneSoftmaxOverTheUnion) {
  for (int d_qk : {576, 512}) {
    SparseCase c{d_qk, 61, 3, 3, 2, 16, 64, true, false, 2, 100, 128, true, 24, 2, 31};
    Problem p = make_problem(c);
    Outputs u = poisoned_outputs(c), a = poisoned_outputs(c), b = poisoned_outputs(c);
    sparse_decode(params(p, u));
    SparseDecodeParams pa = params(p, a);
    pa.extra_k_cache = pa.extra_indices = pa.extra_topk_length = TensorView{};
    sparse_decode(pa);
    SparseDecodeParams pb = params(p, b);
    pb.k_cache = p.extra.cache.view;
    pb.indices = p.extra_sel.indices.view;
    pb.topk_length = p.extra_sel.lengths.view;
    pb.extra_k_cache = pb.extra_indices = pb.extra_topk_length = TensorView{};
    sparse_decode(pb);
    HostTensor want_out = u.out, want_lse = u.lse;
    for (int i = 0; i < c.b; ++i)
      for (int r = 0; r < c.s_q; ++r)
        for (int h = 0; h < c.h_q; ++h) {
          // A part without keys has lse +inf; in the log-sum-exp it weighs exp(-inf) = 0.
          const double inf = std::numeric_limits<double>::infinity();
          double la = a.lse.get({i, h, r}), lb = b.lse.get({i, h, r});
          if (la == inf) la = -inf;
          if (lb == inf) lb = -inf;
          const double m = std::max(la, lb);
          const double l = m == -inf ? inf : m + std::log(std::exp(la - m) + std::exp(lb - m));
          want_lse.set({i, h, r}, l);
          const double wa = la == -inf ? 0 : std::exp(la - l),
                       wb = lb == -inf ? 0 : std::exp(lb - l);
          for (int d = 0; d < kDv; ++d)
            want_out.set({i, r, h, d}, wa * a.out.get({i, r, h, d}) + wb * b.out.get({i, r, h, d}));
        }
    EXPECT_TRUE(close("union out", u.out, want_out, kDecodeOut));
    EXPECT_TRUE(close("union lse", u.lse, want_lse, kLse));
  }
}

// Rows whose indices are all invalid (-1, out of range, huge), or whose topk_length is 0: out 0,
// lse +inf, never NaN, whatever the sink.
TEST(SparseDecode, AllInvalidRows) {
  for (int d_qk : {576, 512})
    for (double s :
         {-std::numeric_limits<double>::infinity(), 2.0, std::numeric_limits<double>::infinity()}) {
      std::mt19937_64 rng(41);
      Pool pool = make_pool(d_qk, 2, 5, 0, rng);
      const int b = 2, s_q = 2, h_q = 16, topk = 64;
      HostTensor idx(DType::kInt32, {b, s_q, topk});
      const int32_t bad[] = {-1, 10, 11, INT_MAX, INT_MIN, -2, 1 << 30};
      for (int i = 0; i < b; ++i)
        for (int r = 0; r < s_q; ++r)
          for (int k = 0; k < topk; ++k) idx.set({i, r, k}, i == 1 ? 0 : bad[(k + r) % 7]);
      HostTensor len(DType::kInt32, {b});
      len.set({0}, topk);
      len.set({1}, 0);  // request 1 has valid slot 0 everywhere, but counts none of it
      HostTensor q(DType::kBFloat16, {b, s_q, h_q, d_qk});
      fill_randn(q, rng);
      HostTensor sink(DType::kFloat32, {h_q});
      for (int h = 0; h < h_q; ++h) sink.set({h}, s);
      HostTensor out(DType::kBFloat16, {b, s_q, h_q, kDv}), lse(DType::kFloat32, {b, h_q, s_q});
      out.poison();
      lse.poison();
      SparseDecodeParams sp;
      sp.q = q.view;
      sp.k_cache = pool.cache.view;
      sp.indices = idx.view;
      sp.topk_length = len.view;
      sp.attn_sink = sink.view;
      sp.out = out.view;
      sp.lse = lse.view;
      sparse_decode(sp);
      out.for_each([&](int64_t k) { ASSERT_EQ(out.get_flat(k), 0.0); });
      lse.for_each(
          [&](int64_t k) { ASSERT_EQ(lse.get_flat(k), std::numeric_limits<double>::infinity()); });
    }
}

}  // namespace
}  // namespace openmla::test
