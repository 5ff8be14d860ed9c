// Dense MHA prefill (SPEC §5), forward and backward, on the CPU backend through the public API,
// against a second and deliberately naive formulation written here in long double: for every
// (sequence, query, head) the visible keys (bottom-right causal: key j visible to query r iff
// j <= Lk - Lq + r) are enumerated explicitly and
//   x_j = scale * <q, k_j>,  lse = log(sum_j exp(x_j)),  out = sum_j exp(x_j) v_j / sum_j exp(x_j),
// computed directly (no running max; long double holds exp() of every logit used here);
// backward from the softmax Jacobian, P_j = exp(x_j - lse), dP_j = <dout, v_j>,
//   dS_j = P_j (dP_j - sum_i P_i dP_i),  dq = scale sum_j dS_j k_j,  dk_j = scale sum dS_j q,
//   dv_j = sum P_j dout   (dk, dv summed over all queries and over the query heads of a group),
// and, independently, by central finite differences of L = sum(dout * out) through that same
// long double forward.
//
// Tolerances. Forward: SPEC §6 (close() with kPrefillOut, kLse), and -- the CPU backend being the
// fp64 reference -- each output must be the exact value rounded once (bf16: |err| <= 2^-8 |x|,
// fp32: <= 2^-24 |x|, plus a tiny absolute floor for fp64 arithmetic).
// Backward: the library takes bf16 q, k, v, dout (we use the very same values), the forward's
// bf16 out and fp32 lse, and stores bf16 gradients. Against the exact gradient g its result
// carries three first-order errors, bounded per element by the reference (see grad_bound):
//   * D' = <dout, bf16(out)> instead of D = <dout, out>: |D' - D| <= 2^-8 sum |dout| |out|,
//     which moves every dS_j by P_j |D' - D|;
//   * P'_j = exp(x_j - fp32(lse)) = P_j (1 + eta), |eta| <= 2^-24 |lse| (+ fp64 rounding);
//   * the final bf16 rounding, <= 2^-8 |g|.
// The test allows 1.25 x that first-order bound (the margin covers the second-order terms).
// Since the D' term can dominate dq (dq is a cancelling sum), the gradients are also compared to
// the same naive formula evaluated from the library's own bf16 out and fp32 lse (as a backward
// that takes out and lse must use them): there only the final bf16 rounding (2^-8) remains.
// Elements whose exact gradient is structurally zero (keys no query sees, queries that see no key)
// must be exactly 0. The finite differences are taken in long double on the long double inputs
// (never through bf16 tensors) with step 2^-17: truncation ~ h^2 |L'''| / 6 ~ 1e-11 and rounding
// ~ 1e-19 |L| / h ~ 1e-14, so the naive analytic gradient must match them to 1e-9 + 1e-6 |g|,
// and the library's to its bound above plus that.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <sstream>
#include <string>
#include <tuple>
#include <vector>

#include "common/harness.h"
#include "common/reference_utils.h"

namespace openmla::test {
namespace {

using LD = long double;
constexpr LD kInfL = std::numeric_limits<LD>::infinity();
constexpr int64_t kDv = 128;

// ---------------------------------------------------------------- shared checks

std::vector<LD> logical_values(const HostTensor& t) {
  std::vector<LD> v;
  t.for_each([&](int64_t o) { v.push_back(t.get_flat(o)); });
  return v;
}
std::vector<int64_t> logical_offsets(const HostTensor& t) {
  std::vector<int64_t> v;
  t.for_each([&](int64_t o) { v.push_back(o); });
  return v;
}

// Every logical element of `got` is the exact `want` rounded once: |got - want| <= u|want| + floor;
// infinities at the same places with the same sign; NaN never.
::testing::AssertionResult rounded_once(const char* name, const HostTensor& got,
                                        const std::vector<LD>& want, double u, double floor) {
  const std::vector<LD> g = logical_values(got);
  if (g.size() != want.size()) return ::testing::AssertionFailure() << name << ": size mismatch";
  int64_t bad = 0;
  std::ostringstream first;
  for (size_t i = 0; i < g.size(); ++i) {
    const LD w = want[i];
    bool ok;
    if (std::isnan(w) || std::isnan(g[i]))
      ok = false;
    else if (std::isinf(w) || std::isinf(g[i]))
      ok = g[i] == w;
    else
      ok = std::fabs(g[i] - w) <= LD(u) * std::fabs(w) + LD(floor);
    if (!ok && bad++ == 0)
      first << " first at logical element " << i << ": got " << double(g[i]) << ", want "
            << double(w);
  }
  if (bad)
    return ::testing::AssertionFailure()
           << name << ": " << bad << " of " << g.size()
           << " elements not the once-rounded exact value;" << first.str();
  return ::testing::AssertionSuccess();
}

// |got - want| <= 1.25 * (2^-8 (|want| + b) + b) per element (b = first-order bound, see top);
// where want and b are both 0 the element must be exactly 0.
::testing::AssertionResult within_bound(const char* name, const HostTensor& got,
                                        const std::vector<LD>& want, const std::vector<LD>& bound) {
  const std::vector<LD> g = logical_values(got);
  if (g.size() != want.size()) return ::testing::AssertionFailure() << name << ": size mismatch";
  int64_t bad = 0, zeros = 0;
  std::ostringstream first;
  for (size_t i = 0; i < g.size(); ++i) {
    bool ok;
    if (want[i] == 0 && bound[i] == 0) {
      ok = g[i] == 0;  // structurally zero: exactly 0 (also rules out NaN)
      ++zeros;
    } else {
      const LD tol = 1.25L * (0x1p-8L * (std::fabs(want[i]) + bound[i]) + bound[i]);
      ok = std::isfinite(g[i]) && std::fabs(g[i] - want[i]) <= tol;
    }
    if (!ok && bad++ == 0)
      first << " first at logical element " << i << ": got " << double(g[i]) << ", want "
            << double(want[i]) << " (bound " << double(bound[i]) << ")";
  }
  if (bad)
    return ::testing::AssertionFailure()
           << name << ": " << bad << " of " << g.size() << " elements out of bound;" << first.str();
  return ::testing::AssertionSuccess() << zeros << " structural zeros";
}

bool same_values(const HostTensor& a, const HostTensor& b) {
  const std::vector<LD> x = logical_values(a), y = logical_values(b);
  if (x.size() != y.size()) return false;
  for (size_t i = 0; i < x.size(); ++i)
    if (!(x[i] == y[i] || (std::isnan(x[i]) && std::isnan(y[i])))) return false;
  return true;
}

// A copy of `src`'s logical values in a tensor with the given strides (NaN elsewhere).
HostTensor relayout(const HostTensor& src, std::vector<int64_t> strides) {
  std::vector<int64_t> shape(src.view.shape, src.view.shape + src.view.ndim);
  HostTensor t(src.view.dtype, shape, std::move(strides));
  t.fill_nan();
  const std::vector<int64_t> from = logical_offsets(src);
  const size_t es = dtype_size(src.view.dtype);
  size_t i = 0;
  t.for_each([&](int64_t o) { memcpy(&t.storage[o * es], &src.storage[from[i++] * es], es); });
  return t;
}

LD api_scale(float given, int64_t d_qk) {  // the API hands the backend an fp32 scale
  return given > 0 ? LD(given) : LD(static_cast<float>(1.0 / std::sqrt(double(d_qk))));
}

// ---------------------------------------------------------------- problem

struct DenseCase {
  std::string name;
  std::vector<int64_t> lq, lk;
  int64_t extra_k;  // trailing rows of k/v no sequence covers (NaN-filled)
  int64_t h_q, h_kv, d_qk;
  bool causal;
  int64_t pad;   // extra elements per row of every input and output
  float scale;   // 0: default
  double sigma;  // of q and k (randn * sigma clamped to [-1, 1]); v and dout: randn / 10
  uint64_t seed;
};

void PrintTo(const DenseCase& c, std::ostream* os) { *os << c.name; }

struct DenseProblem {
  int64_t batch = 0, total_q = 0, total_k = 0, h_q = 0, h_kv = 0, d_qk = 0;
  bool causal = false;
  float scale = 0.0f;
  std::vector<int64_t> cu_q, cu_k;
  HostTensor q, k, v, cu_q_t, cu_k_t, dout;
};

DenseProblem make_dense(const DenseCase& c) {
  std::mt19937_64 rng(c.seed);
  DenseProblem p;
  p.batch = static_cast<int64_t>(c.lq.size());
  p.h_q = c.h_q, p.h_kv = c.h_kv, p.d_qk = c.d_qk, p.causal = c.causal, p.scale = c.scale;
  p.cu_q = {0};
  p.cu_k = {0};
  for (int64_t i = 0; i < p.batch; ++i) {
    p.cu_q.push_back(p.cu_q.back() + c.lq[i]);
    p.cu_k.push_back(p.cu_k.back() + c.lk[i]);
  }
  p.total_q = p.cu_q.back();
  p.total_k = p.cu_k.back() + c.extra_k;
  p.cu_q_t = HostTensor(DType::kInt32, {p.batch + 1});
  p.cu_k_t = HostTensor(DType::kInt32, {p.batch + 1});
  for (int64_t i = 0; i <= p.batch; ++i) {
    p.cu_q_t.set({i}, double(p.cu_q[i]));
    p.cu_k_t.set({i}, double(p.cu_k[i]));
  }
  p.q = HostTensor(DType::kBFloat16, {p.total_q, p.h_q, p.d_qk}, c.pad);
  p.k = HostTensor(DType::kBFloat16, {p.total_k, p.h_kv, p.d_qk}, c.pad);
  p.v = HostTensor(DType::kBFloat16, {p.total_k, p.h_kv, kDv}, c.pad);
  p.dout = HostTensor(DType::kBFloat16, {p.total_q, p.h_q, kDv}, c.pad);
  std::normal_distribution<double> nd(0.0, c.sigma), nd10(0.0, 0.1);
  auto rnd = [&] { return std::clamp(nd(rng), -1.0, 1.0); };
  auto rnd10 = [&] { return std::clamp(nd10(rng), -1.0, 1.0); };
  for (HostTensor* t : {&p.q, &p.k, &p.v, &p.dout}) t->fill_nan();  // padding, uncovered keys
  for (int64_t t = 0; t < p.total_q; ++t)
    for (int64_t h = 0; h < p.h_q; ++h) {
      for (int64_t d = 0; d < p.d_qk; ++d) p.q.set({t, h, d}, rnd());
      for (int64_t d = 0; d < kDv; ++d) p.dout.set({t, h, d}, rnd10());
    }
  for (int64_t t = 0; t < p.cu_k.back(); ++t)
    for (int64_t h = 0; h < p.h_kv; ++h) {
      for (int64_t d = 0; d < p.d_qk; ++d) p.k.set({t, h, d}, rnd());
      for (int64_t d = 0; d < kDv; ++d) p.v.set({t, h, d}, rnd10());
    }
  return p;
}

// Long double copies of the inputs, contiguous [row][head][dim].
struct Exact {
  std::vector<LD> q, k, v, dout;
};
Exact exact_inputs(const DenseProblem& p) {
  return {logical_values(p.q), logical_values(p.k), logical_values(p.v), logical_values(p.dout)};
}

// Visible keys of query r (0-based) of a sequence with lq queries and lk keys.
std::vector<int64_t> visible(const DenseProblem& p, int64_t r, int64_t lq, int64_t lk) {
  std::vector<int64_t> js;
  for (int64_t j = 0; j < lk; ++j)
    if (!p.causal || j <= lk - lq + r) js.push_back(j);
  return js;
}

struct FwdRef {
  std::vector<LD> out, lse;  // [total_q][h_q][d_v], [h_q][total_q]
};

FwdRef ref_forward(const DenseProblem& p, const Exact& x) {
  const LD scale = api_scale(p.scale, p.d_qk);
  const int64_t group = p.h_q / p.h_kv, dq = p.d_qk;
  FwdRef f;
  f.out.assign(p.total_q * p.h_q * kDv, LD(0));
  f.lse.assign(p.h_q * p.total_q, kInfL);
  for (int64_t i = 0; i < p.batch; ++i) {
    const int64_t lq = p.cu_q[i + 1] - p.cu_q[i], lk = p.cu_k[i + 1] - p.cu_k[i];
    for (int64_t r = 0; r < lq; ++r) {
      const int64_t t = p.cu_q[i] + r;
      const std::vector<int64_t> js = visible(p, r, lq, lk);
      if (js.empty()) continue;  // out 0, lse +inf
      for (int64_t h = 0; h < p.h_q; ++h) {
        const int64_t hk = h / group;
        const LD* qv = &x.q[(t * p.h_q + h) * dq];
        LD z = 0;
        std::vector<LD> num(kDv, LD(0));
        for (int64_t j : js) {
          const int64_t kt = p.cu_k[i] + j;
          const LD* kv = &x.k[(kt * p.h_kv + hk) * dq];
          LD dot = 0;
          for (int64_t c = 0; c < dq; ++c) dot += qv[c] * kv[c];
          const LD e = std::exp(scale * dot);
          z += e;
          const LD* vv = &x.v[(kt * p.h_kv + hk) * kDv];
          for (int64_t c = 0; c < kDv; ++c) num[c] += e * vv[c];
        }
        for (int64_t c = 0; c < kDv; ++c) f.out[(t * p.h_q + h) * kDv + c] = num[c] / z;
        f.lse[h * p.total_q + t] = std::log(z);
      }
    }
  }
  return f;
}

LD loss(const DenseProblem& p, const Exact& x) {  // L = sum(dout * out)
  const FwdRef f = ref_forward(p, x);
  LD l = 0;
  for (size_t i = 0; i < f.out.size(); ++i) l += x.dout[i] * f.out[i];
  return l;
}

struct BwdRef {
  std::vector<LD> dq, dk, dv;  // exact gradients, contiguous logical order
  std::vector<LD> bq, bk, bv;  // first-order error bounds of the library (see top)
};

struct Fwd;
LD given_out(const Fwd& f, int64_t t, int64_t h, int64_t c);
LD given_lse(const Fwd& f, int64_t h, int64_t t);

// `given` null: the exact gradient (and the library's first-order error bound). `given` set: the
// gradient the standard formula yields from that forward's stored bf16 out and fp32 lse
// (P_j = exp(x_j - lse), D = <dout, out>) -- what a backward taking out and lse as inputs should
// produce up to its final bf16 rounding; the bound then only covers fp64-vs-long-double sums.
BwdRef ref_backward(const DenseProblem& p, const Exact& x, const Fwd* given = nullptr) {
  const LD scale = api_scale(p.scale, p.d_qk);
  const int64_t group = p.h_q / p.h_kv, dq = p.d_qk;
  const FwdRef f = ref_forward(p, x);
  BwdRef b;
  b.dq.assign(x.q.size(), 0), b.dk.assign(x.k.size(), 0), b.dv.assign(x.v.size(), 0);
  b.bq.assign(x.q.size(), 0), b.bk.assign(x.k.size(), 0), b.bv.assign(x.v.size(), 0);
  for (int64_t i = 0; i < p.batch; ++i) {
    const int64_t lq = p.cu_q[i + 1] - p.cu_q[i], lk = p.cu_k[i + 1] - p.cu_k[i];
    for (int64_t r = 0; r < lq; ++r) {
      const int64_t t = p.cu_q[i] + r;
      const std::vector<int64_t> js = visible(p, r, lq, lk);
      if (js.empty()) continue;
      for (int64_t h = 0; h < p.h_q; ++h) {
        const int64_t hk = h / group;
        const LD* qv = &x.q[(t * p.h_q + h) * dq];
        const LD* dov = &x.dout[(t * p.h_q + h) * kDv];
        std::vector<LD> ov(kDv);
        for (int64_t c = 0; c < kDv; ++c)
          ov[c] = given ? given_out(*given, t, h, c) : f.out[(t * p.h_q + h) * kDv + c];
        const LD lse = given ? given_lse(*given, h, t) : f.lse[h * p.total_q + t];
        const size_t n = js.size();
        std::vector<LD> P(n), dP(n);
        for (size_t a = 0; a < n; ++a) {
          const int64_t kt = p.cu_k[i] + js[a];
          const LD* kv = &x.k[(kt * p.h_kv + hk) * dq];
          const LD* vv = &x.v[(kt * p.h_kv + hk) * kDv];
          LD dot = 0, dpv = 0;
          for (int64_t c = 0; c < dq; ++c) dot += qv[c] * kv[c];
          for (int64_t c = 0; c < kDv; ++c) dpv += dov[c] * vv[c];
          P[a] = std::exp(scale * dot - lse);
          dP[a] = dpv;
        }
        LD D = 0, dout_out = 0;
        if (given) {  // from the given out
          for (int64_t c = 0; c < kDv; ++c) D += dov[c] * ov[c];
        } else {  // from the Jacobian, not from out
          for (size_t a = 0; a < n; ++a) D += P[a] * dP[a];
        }
        for (int64_t c = 0; c < kDv; ++c) dout_out += std::fabs(dov[c] * ov[c]);
        // bf16(out) in D (exact mode only), and fp64 rounding in the library's sums.
        const LD dD = (given ? 0 : 0x1p-8L * dout_out) + 1e-15L * dout_out;
        // fp32(lse) (exact mode only), and fp64 rounding of the library's logits and exp().
        const LD eta = (given ? 0 : 1.01L * 0x1p-24L * std::fabs(lse)) + 1e-13L;
        for (size_t a = 0; a < n; ++a) {
          const int64_t kt = p.cu_k[i] + js[a];
          const LD* kv = &x.k[(kt * p.h_kv + hk) * dq];
          const LD dS = P[a] * (dP[a] - D);
          const LD w = P[a] * (eta * (std::fabs(dP[a]) + std::fabs(D) + dD) + dD);
          for (int64_t c = 0; c < dq; ++c) {
            b.dq[(t * p.h_q + h) * dq + c] += scale * dS * kv[c];
            b.bq[(t * p.h_q + h) * dq + c] += scale * w * std::fabs(kv[c]);
            b.dk[(kt * p.h_kv + hk) * dq + c] += scale * dS * qv[c];
            b.bk[(kt * p.h_kv + hk) * dq + c] += scale * w * std::fabs(qv[c]);
          }
          for (int64_t c = 0; c < kDv; ++c) {
            b.dv[(kt * p.h_kv + hk) * kDv + c] += P[a] * dov[c];
            b.bv[(kt * p.h_kv + hk) * kDv + c] += P[a] * eta * std::fabs(dov[c]);
          }
        }
      }
    }
  }
  return b;
}

// ---------------------------------------------------------------- calls

struct Fwd {
  HostTensor out, lse;
};
LD given_out(const Fwd& f, int64_t t, int64_t h, int64_t c) { return f.out.get({t, h, c}); }
LD given_lse(const Fwd& f, int64_t h, int64_t t) { return f.lse.get({h, t}); }

// Forward into the given (poisoned here) output tensors; nothing outside their views may change.
Fwd run_forward(const DenseProblem& p, HostTensor out, HostTensor lse) {
  out.poison();
  lse.poison();
  const HostTensor out0 = out, lse0 = lse;
  DensePrefillParams prm;
  prm.q = p.q.view, prm.k = p.k.view, prm.v = p.v.view;
  prm.cu_seqlens_q = p.cu_q_t.view, prm.cu_seqlens_k = p.cu_k_t.view;
  prm.out = out.view, prm.lse = lse.view;
  prm.softmax_scale = p.scale;
  prm.causal = p.causal;
  dense_prefill_forward(prm);
  EXPECT_TRUE(padding_untouched("out", out0, out));
  EXPECT_TRUE(padding_untouched("lse", lse0, lse));
  return {std::move(out), std::move(lse)};
}
Fwd run_forward(const DenseProblem& p, int64_t pad) {
  return run_forward(p, HostTensor(DType::kBFloat16, {p.total_q, p.h_q, kDv}, pad),
                     HostTensor(DType::kFloat32, {p.h_q, p.total_q}, pad));
}

struct Grads {
  HostTensor dq, dk, dv;
};
Grads run_backward(const DenseProblem& p, const Fwd& f, int64_t pad) {
  Grads g{HostTensor(DType::kBFloat16, {p.total_q, p.h_q, p.d_qk}, pad),
          HostTensor(DType::kBFloat16, {p.total_k, p.h_kv, p.d_qk}, pad),
          HostTensor(DType::kBFloat16, {p.total_k, p.h_kv, kDv}, pad)};
  g.dq.poison(), g.dk.poison(), g.dv.poison();
  const Grads g0 = g;
  DensePrefillBackwardParams prm;
  prm.dout = p.dout.view, prm.q = p.q.view, prm.k = p.k.view, prm.v = p.v.view;
  prm.out = f.out.view, prm.lse = f.lse.view;
  prm.cu_seqlens_q = p.cu_q_t.view, prm.cu_seqlens_k = p.cu_k_t.view;
  prm.dq = g.dq.view, prm.dk = g.dk.view, prm.dv = g.dv.view;
  prm.softmax_scale = p.scale;
  prm.causal = p.causal;
  dense_prefill_backward(prm);
  EXPECT_TRUE(padding_untouched("dq", g0.dq, g.dq));
  EXPECT_TRUE(padding_untouched("dk", g0.dk, g.dk));
  EXPECT_TRUE(padding_untouched("dv", g0.dv, g.dv));
  return g;
}

void expect_forward_matches(const DenseProblem& p, const Fwd& got, const FwdRef& ref) {
  EXPECT_TRUE(close("out", got.out, as_tensor({p.total_q, p.h_q, kDv}, ref.out), kPrefillOut));
  EXPECT_TRUE(close("lse", got.lse, as_tensor({p.h_q, p.total_q}, ref.lse), kLse));
  EXPECT_TRUE(rounded_once("out", got.out, ref.out, 0x1p-8, 1e-13));
  EXPECT_TRUE(rounded_once("lse", got.lse, ref.lse, 0x1p-24, 1e-12));
}

void expect_backward_matches(const Grads& g, const BwdRef& ref) {
  EXPECT_TRUE(within_bound("dq", g.dq, ref.dq, ref.bq));
  EXPECT_TRUE(within_bound("dk", g.dk, ref.dk, ref.bk));
  EXPECT_TRUE(within_bound("dv", g.dv, ref.dv, ref.bv));
}

// ---------------------------------------------------------------- varlen forward / backward

// Sequences: Lq < Lk; no queries (its keys unseen); no keys (out 0, lse +inf); Lq > Lk (causal:
// the first Lq - Lk queries see nothing); Lq << Lk; 1 x 1.
const std::vector<int64_t> kVarLq = {3, 0, 5, 4, 2, 1};
const std::vector<int64_t> kVarLk = {5, 4, 0, 2, 9, 1};

using VarParam = std::tuple<int64_t /*d_qk*/, std::pair<int64_t, int64_t> /*h_q, h_kv*/,
                            bool /*causal*/, int64_t /*pad*/>;

DenseCase var_case(const VarParam& prm) {
  const auto [d, heads, causal, pad] = prm;
  return {"var", kVarLq,      kVarLk,
          0,     heads.first, heads.second,
          d,     causal,      pad,
          0.0f,  0.1,         uint64_t(1000 + d + 10 * heads.second + 3 * causal + pad)};
}

std::string var_name(const ::testing::TestParamInfo<VarParam>& info) {
  const auto [d, heads, causal, pad] = info.param;
  return "d" + std::to_string(d) + "_hq" + std::to_string(heads.first) + "_hkv" +
         std::to_string(heads.second) + (causal ? "_causal" : "_full") +
         (pad ? "_strided" : "_contig");
}

class DensePrefillVarlen : public ::testing::TestWithParam<VarParam> {};

TEST_P(DensePrefillVarlen, ForwardMatchesNaive) {
  const DenseCase c = var_case(GetParam());
  const DenseProblem p = make_dense(c);
  const FwdRef ref = ref_forward(p, exact_inputs(p));
  const Fwd got = run_forward(p, c.pad);
  expect_forward_matches(p, got, ref);
  // Empty-key rows are really there: lse +inf and out exactly 0 for sequence 2 (no keys).
  for (int64_t t = p.cu_q[2]; t < p.cu_q[3]; ++t)
    for (int64_t h = 0; h < p.h_q; ++h) {
      EXPECT_EQ(got.lse.get({h, t}), INFINITY);
      for (int64_t d = 0; d < kDv; ++d) ASSERT_EQ(got.out.get({t, h, d}), 0.0);
    }
}

TEST_P(DensePrefillVarlen, BackwardMatchesNaiveAnalytic) {
  const DenseCase c = var_case(GetParam());
  const DenseProblem p = make_dense(c);
  const Fwd f = run_forward(p, c.pad);
  const Grads g = run_backward(p, f, c.pad);
  const Exact x = exact_inputs(p);
  expect_backward_matches(g, ref_backward(p, x));
  expect_backward_matches(g, ref_backward(p, x, &f));  // tight: from the out and lse it was given
  // Sequence 1 has keys but no queries: its dk, dv are exactly 0.
  for (int64_t t = p.cu_k[1]; t < p.cu_k[2]; ++t)
    for (int64_t h = 0; h < p.h_kv; ++h) {
      for (int64_t d = 0; d < p.d_qk; ++d) ASSERT_EQ(g.dk.get({t, h, d}), 0.0);
      for (int64_t d = 0; d < kDv; ++d) ASSERT_EQ(g.dv.get({t, h, d}), 0.0);
    }
}

INSTANTIATE_TEST_SUITE_P(Configs, DensePrefillVarlen,
                         ::testing::Combine(::testing::Values<int64_t>(192, 128),
                                            ::testing::Values(std::pair<int64_t, int64_t>{4, 1},
                                                              std::pair<int64_t, int64_t>{4, 2},
                                                              std::pair<int64_t, int64_t>{4, 4}),
                                            ::testing::Bool(), ::testing::Values<int64_t>(0, 3)),
                         var_name);

TEST(DensePrefillForward, SharpSoftmaxCustomScale) {
  for (bool causal : {false, true}) {
    SCOPED_TRACE(causal);
    const DenseCase c{"sharp", {6, 3}, {6, 8}, 0, 6, 3, 192, causal, 1, 0.35f, 0.8, 2024};
    const DenseProblem p = make_dense(c);
    const FwdRef ref = ref_forward(p, exact_inputs(p));
    // The softmax is far from uniform here (else scale errors could hide).
    LD spread = 0;
    for (LD l : ref.lse)
      if (std::isfinite(l)) spread = std::max(spread, l);
    EXPECT_GT(double(spread), 3.0);
    expect_forward_matches(p, run_forward(p, c.pad), ref);
  }
}

// Bottom-right causal alignment, checked without the reference's mask: query r of a causal
// sequence (Lq = 3, Lk = 5) equals a one-query non-causal sequence over keys 0 .. Lk - Lq + r.
TEST(DensePrefillForward, CausalIsBottomRightAligned) {
  const DenseCase c{"causal", {3}, {5}, 0, 2, 1, 128, true, 0, 0.0f, 0.5, 7};
  const DenseProblem p = make_dense(c);
  const Fwd causal = run_forward(p, 0);
  // The split problem: sequences (1 query, 3 keys), (1, 4), (1, 5) built from the same rows.
  DenseProblem s = p;
  s.causal = false;
  s.batch = 3;
  s.cu_q = {0, 1, 2, 3};
  s.cu_k = {0, 3, 7, 12};
  s.total_k = 12;
  s.cu_q_t = HostTensor(DType::kInt32, {4});
  s.cu_k_t = HostTensor(DType::kInt32, {4});
  for (int64_t i = 0; i < 4; ++i)
    s.cu_q_t.set({i}, double(s.cu_q[i])), s.cu_k_t.set({i}, double(s.cu_k[i]));
  s.k = HostTensor(DType::kBFloat16, {12, 1, 128});
  s.v = HostTensor(DType::kBFloat16, {12, 1, kDv});
  int64_t row = 0;
  for (int64_t n : {3, 4, 5})
    for (int64_t j = 0; j < n; ++j, ++row)
      for (int64_t d = 0; d < 128; ++d) {
        s.k.set({row, 0, d}, p.k.get({j, 0, d}));
        s.v.set({row, 0, d}, p.v.get({j, 0, d}));
      }
  const Fwd split = run_forward(s, 0);
  EXPECT_TRUE(close("out", causal.out, split.out, kPrefillOut));
  EXPECT_TRUE(close("lse", causal.lse, split.lse, kLse));
  // And the causal mask matters here (else this test could not tell).
  DenseProblem full = p;
  full.causal = false;
  EXPECT_FALSE(close("out", causal.out, run_forward(full, 0).out, kPrefillOut));
}

// lse is head-major [h_q, total_q]; here its row stride is padded, out has a padded head stride
// and q/k/v come in head-major (transposed) layouts: all honoured, result identical.
TEST(DensePrefillForward, NonContiguousViews) {
  const DenseCase c{"views", {4, 2, 3}, {6, 2, 1}, 0, 4, 2, 192, true, 0, 0.0f, 0.1, 99};
  const DenseProblem p = make_dense(c);
  const Fwd ref = run_forward(p, 0);
  DenseProblem t = p;
  t.q = relayout(p.q, {p.d_qk, p.total_q * p.d_qk, 1});  // [h][t][d] in memory
  t.k = relayout(p.k, {p.d_qk, p.total_k * p.d_qk, 1});
  t.v = relayout(p.v, {kDv + 8, p.total_k * (kDv + 8), 1});
  HostTensor out(DType::kBFloat16, {p.total_q, p.h_q, kDv}, {p.h_q * 136 + 40, 136, 1});
  HostTensor lse(DType::kFloat32, {p.h_q, p.total_q}, {p.total_q + 5, 1});
  const Fwd got = run_forward(t, std::move(out), std::move(lse));
  EXPECT_TRUE(same_values(ref.out, got.out));
  EXPECT_TRUE(same_values(ref.lse, got.lse));
  expect_forward_matches(t, got, ref_forward(t, exact_inputs(t)));
}

TEST(DensePrefillForward, NoKeysAtAll) {
  const DenseCase c{"nokeys", {2, 3}, {0, 0}, 0, 2, 1, 128, false, 2, 0.0f, 0.1, 5};
  for (bool causal : {false, true}) {
    DenseProblem p = make_dense(c);
    p.causal = causal;
    const Fwd got = run_forward(p, 2);
    expect_forward_matches(p, got, ref_forward(p, exact_inputs(p)));
    got.lse.for_each([&](int64_t o) { EXPECT_EQ(got.lse.get_flat(o), INFINITY); });
    got.out.for_each([&](int64_t o) { ASSERT_EQ(got.out.get_flat(o), 0.0); });
  }
}

TEST(DensePrefillForward, NoQueriesIsANoOp) {
  const DenseCase c{"noq", {0, 0}, {3, 2}, 0, 2, 2, 192, true, 0, 0.0f, 0.1, 6};
  const DenseProblem p = make_dense(c);
  EXPECT_NO_THROW(run_forward(p, 0));
}

// ---------------------------------------------------------------- backward: finite differences

// Small shapes: seq 0 has Lq > Lk (causal: its query 0 sees no key), seq 1 has keys but no
// queries, seq 2 has Lq < Lk, and one trailing key row belongs to no sequence.
const DenseCase kFdCases[] = {
    {"mha_d192", {3, 0, 2}, {2, 2, 3}, 1, 2, 2, 192, false, 0, 0.0f, 0.5, 301},
    {"mha_d192_causal", {3, 0, 2}, {2, 2, 3}, 1, 2, 2, 192, true, 3, 0.25f, 0.5, 302},
    {"gqa2to1_d128", {3, 0, 2}, {2, 2, 3}, 1, 2, 1, 128, false, 2, 0.25f, 0.5, 303},
    {"gqa2to1_d128_causal", {3, 0, 2}, {2, 2, 3}, 1, 2, 1, 128, true, 0, 0.0f, 0.5, 304},
    {"gqa4to2_d192_causal", {2, 0, 3}, {3, 1, 2}, 0, 4, 2, 192, true, 1, 0.3f, 0.6, 305},
    {"gqa4to2_d128", {1, 2}, {3, 2}, 1, 4, 2, 128, false, 0, 0.0f, 0.5, 306},
    {"mqa4to1_d192_causal", {4}, {4}, 0, 4, 1, 192, true, 2, 0.3f, 0.7, 307},
    {"one_token", {1}, {1}, 0, 2, 1, 128, false, 0, 0.0f, 0.5, 308},
};

class DensePrefillBackwardFD : public ::testing::TestWithParam<DenseCase> {};

TEST_P(DensePrefillBackwardFD, MatchesAnalyticAndFiniteDifferences) {
  const DenseCase& c = GetParam();
  const DenseProblem p = make_dense(c);
  const Exact x = exact_inputs(p);
  const BwdRef ref = ref_backward(p, x);
  const Fwd f = run_forward(p, c.pad);
  expect_forward_matches(p, f, ref_forward(p, x));
  const Grads g = run_backward(p, f, c.pad);
  expect_backward_matches(g, ref);
  expect_backward_matches(g, ref_backward(p, x, &f));

  // Central differences of L on random elements of q, k, v (long double, inputs perturbed in x).
  std::mt19937_64 rng(c.seed * 7 + 1);
  const LD h = 0x1p-17L;
  struct Which {
    const char* name;
    std::vector<LD> Exact::*field;
    const std::vector<LD>* analytic;
    const std::vector<LD>* bound;
    const HostTensor* lib;
  };
  const Which which[] = {{"dq", &Exact::q, &ref.dq, &ref.bq, &g.dq},
                         {"dk", &Exact::k, &ref.dk, &ref.bk, &g.dk},
                         {"dv", &Exact::v, &ref.dv, &ref.bv, &g.dv}};
  int64_t nonzero = 0;
  for (const Which& w : which) {
    const std::vector<int64_t> offs = logical_offsets(*w.lib);
    const size_t n = (x.*w.field).size();
    for (int trial = 0; trial < 12; ++trial) {
      const size_t e = std::uniform_int_distribution<size_t>(0, n - 1)(rng);
      Exact xp = x;
      const LD x0 = (x.*w.field)[e];
      if (std::isnan(x0)) {  // an uncovered key row: the library must give exactly 0
        EXPECT_EQ(w.lib->get_flat(offs[e]), 0.0) << w.name << " element " << e;
        continue;
      }
      (xp.*w.field)[e] = x0 + h;
      const LD lp = loss(p, xp);
      (xp.*w.field)[e] = x0 - h;
      const LD lm = loss(p, xp);
      const LD fd = (lp - lm) / (2 * h);
      const LD an = (*w.analytic)[e], b = (*w.bound)[e];
      const LD lib = w.lib->get_flat(offs[e]);
      const LD fd_tol = 1e-9L + 1e-6L * std::fabs(fd);
      EXPECT_LE(double(std::fabs(an - fd)), double(fd_tol))
          << w.name << " element " << e << ": analytic " << double(an) << ", fd " << double(fd);
      const LD lib_tol = 1.25L * (0x1p-8L * (std::fabs(fd) + b) + b) + fd_tol;
      EXPECT_LE(double(std::fabs(lib - fd)), double(lib_tol))
          << w.name << " element " << e << ": library " << double(lib) << ", fd " << double(fd);
      if (fd == 0) EXPECT_EQ(lib, 0.0L) << w.name << " element " << e;  // untouched by L
      nonzero += std::fabs(fd) > 1e-6L;
    }
  }
  EXPECT_GE(nonzero, 12);  // the differences did see real gradients (one_token: dv only)

  // Structural zeros: keys of sequences without queries and uncovered key rows; queries that
  // see no key (causal, Lq > Lk).
  std::vector<char> key_seen(p.total_k, 0);
  std::vector<char> query_sees(p.total_q, 0);
  for (int64_t i = 0; i < p.batch; ++i) {
    const int64_t lq = p.cu_q[i + 1] - p.cu_q[i], lk = p.cu_k[i + 1] - p.cu_k[i];
    for (int64_t r = 0; r < lq; ++r)
      for (int64_t j : visible(p, r, lq, lk))
        key_seen[p.cu_k[i] + j] = query_sees[p.cu_q[i] + r] = 1;
  }
  int64_t zero_rows = 0;
  for (int64_t t = 0; t < p.total_k; ++t) {
    if (key_seen[t]) continue;
    ++zero_rows;
    for (int64_t hk = 0; hk < p.h_kv; ++hk) {
      for (int64_t d = 0; d < p.d_qk; ++d) ASSERT_EQ(g.dk.get({t, hk, d}), 0.0) << t;
      for (int64_t d = 0; d < kDv; ++d) ASSERT_EQ(g.dv.get({t, hk, d}), 0.0) << t;
    }
  }
  for (int64_t t = 0; t < p.total_q; ++t) {
    if (query_sees[t]) continue;
    ++zero_rows;
    for (int64_t hq = 0; hq < p.h_q; ++hq)
      for (int64_t d = 0; d < p.d_qk; ++d) ASSERT_EQ(g.dq.get({t, hq, d}), 0.0) << t;
  }
  if (c.lq.size() > 1) EXPECT_GT(zero_rows, 0);
}

INSTANTIATE_TEST_SUITE_P(Small, DensePrefillBackwardFD, ::testing::ValuesIn(kFdCases),
                         [](const auto& info) { return info.param.name; });

// ---------------------------------------------------------------- backward: GQA summation

// Two query heads with identical q and dout sharing one KV head must give exactly twice the dk
// and dv of a single head (and the same dq per head): dk/dv are summed over a group's heads.
TEST(DensePrefillBackward, GqaSumsOverTheGroupsHeads) {
  for (bool causal : {false, true}) {
    SCOPED_TRACE(causal);
    const DenseCase c1{"one", {3, 2}, {4, 3}, 0, 1, 1, 192, causal, 0, 0.0f, 0.5, 401};
    const DenseProblem one = make_dense(c1);
    DenseProblem two = one;
    two.h_q = 2;
    two.q = HostTensor(DType::kBFloat16, {one.total_q, 2, 192}, 3);
    two.dout = HostTensor(DType::kBFloat16, {one.total_q, 2, kDv}, 3);
    for (int64_t t = 0; t < one.total_q; ++t)
      for (int64_t h = 0; h < 2; ++h) {
        for (int64_t d = 0; d < 192; ++d) two.q.set({t, h, d}, one.q.get({t, 0, d}));
        for (int64_t d = 0; d < kDv; ++d) two.dout.set({t, h, d}, one.dout.get({t, 0, d}));
      }
    const Grads g1 = run_backward(one, run_forward(one, 0), 0);
    const Fwd f2 = run_forward(two, 1);
    const Grads g2 = run_backward(two, f2, 2);
    expect_backward_matches(g2, ref_backward(two, exact_inputs(two)));
    expect_backward_matches(g2, ref_backward(two, exact_inputs(two), &f2));
    auto twice = [](const char* name, const HostTensor& a, const HostTensor& b2) {
      const std::vector<LD> x = logical_values(a), y = logical_values(b2);
      int64_t bad = 0, nonzero = 0;
      for (size_t i = 0; i < x.size(); ++i) {
        nonzero += x[i] != 0;
        // Both are bf16 roundings of (nearly) the same fp64 sum: equal up to one rounding.
        if (!(std::fabs(y[i] - 2 * x[i]) <= 0x1p-7L * std::fabs(2 * x[i]))) ++bad;
      }
      EXPECT_EQ(bad, 0) << name;
      EXPECT_GT(nonzero, int64_t(x.size() / 2)) << name;
    };
    twice("dk", g1.dk, g2.dk);
    twice("dv", g1.dv, g2.dv);
    for (int64_t t = 0; t < one.total_q; ++t)
      for (int64_t h = 0; h < 2; ++h)
        for (int64_t d = 0; d < 192; ++d)
          ASSERT_NEAR(g2.dq.get({t, h, d}), g1.dq.get({t, 0, d}),
                      0x1p-8 * std::fabs(g1.dq.get({t, 0, d})));
  }
}

// With no queries at all, every dk and dv is exactly 0 (outputs were poisoned).
TEST(DensePrefillBackward, NoQueriesGivesZeroKeyGradients) {
  const DenseCase c{"noq", {0, 0}, {2, 3}, 1, 2, 1, 192, true, 1, 0.0f, 0.1, 501};
  const DenseProblem p = make_dense(c);
  const Fwd f{HostTensor(DType::kBFloat16, {0, 2, kDv}), HostTensor(DType::kFloat32, {2, 0})};
  const Grads g = run_backward(p, f, 1);
  g.dk.for_each([&](int64_t o) { ASSERT_EQ(g.dk.get_flat(o), 0.0); });
  g.dv.for_each([&](int64_t o) { ASSERT_EQ(g.dv.get_flat(o), 0.0); });
}

}  // namespace
}  // namespace openmla::test
