// CPU reference: sparse prefill and dense (MHA, varlen) prefill forward and backward, in fp64.
#include <algorithm>
#include <vector>

#include "backend.h"
#include "cpu/common.h"

namespace openmla::cpu {

void sparse_prefill(const SparsePrefillParams& p) {
  const int64_t s_q = p.q.shape[0], h_q = p.q.shape[1], d_qk = p.q.shape[2];
  const int64_t s_kv = p.kv.shape[0], d_v = p.d_v;
  parallel_for(s_q, [&](int64_t r) {
    int64_t topk = p.indices.shape[2];
    if (p.topk_length.present()) {
      const int64_t l = load_i32(p.topk_length, r * p.topk_length.strides[0]);
      topk = std::max<int64_t>(0, std::min(topk, l));
    }
    std::vector<double> keys;
    int64_t n = 0;
    for (int64_t k = 0; k < topk; ++k) {
      const int64_t idx = load_i32(p.indices, offset(p.indices, {r, 0, k}));
      if (idx < 0 || idx >= s_kv) continue;
      keys.resize((n + 1) * d_qk);
      load_row(p.kv, offset(p.kv, {idx, 0, 0}), d_qk, keys.data() + n * d_qk);
      ++n;
    }
    std::vector<double> q(d_qk), o(d_v);
    for (int64_t h = 0; h < h_q; ++h) {
      load_row(p.q, offset(p.q, {r, h, 0}), d_qk, q.data());
      const AttendResult res =
          attend(q.data(), keys.data(), nullptr, n, d_qk, d_v, p.softmax_scale, o.data());
      if (p.attn_sink.present())
        apply_sink(load(p.attn_sink, h * p.attn_sink.strides[0]), res.lse, o.data(), d_v);
      store_row(p.out, offset(p.out, {r, h, 0}), d_v, o.data());
      store(p.max_logits, offset(p.max_logits, {r, h}), res.max_logit);
      store(p.lse, offset(p.lse, {r, h}), res.lse);
    }
  });
}

namespace {

struct Range {
  int64_t begin, end;
};
// Sequence i's row range from cu_seqlens, clamped into [0, total] (device values are unchecked).
Range seq_range(const TensorView& cu, int64_t i, int64_t total) {
  int64_t a = load_i32(cu, i * cu.strides[0]), e = load_i32(cu, (i + 1) * cu.strides[0]);
  a = std::clamp<int64_t>(a, 0, total);
  e = std::clamp<int64_t>(e, a, total);
  return {a, e};
}

// Number of keys query r (of lq queries, lk keys) sees.
int64_t visible_keys(bool causal, int64_t r, int64_t lq, int64_t lk) {
  if (!causal) return lk;
  return std::clamp<int64_t>(lk - lq + r + 1, 0, lk);
}

}  // namespace

void dense_prefill_forward(const DensePrefillParams& p) {
  const int64_t total_q = p.q.shape[0], h_q = p.q.shape[1], d_qk = p.q.shape[2];
  const int64_t total_k = p.k.shape[0], h_kv = p.k.shape[1], d_v = p.v.shape[2];
  const int64_t batch = p.cu_seqlens_q.shape[0] - 1, group = h_q / h_kv;
  // Rows no sequence covers still get defined outputs (0, lse +inf).
  std::vector<char> covered(total_q, 0);
  for (int64_t i = 0; i < batch; ++i) {
    const Range rq = seq_range(p.cu_seqlens_q, i, total_q);
    for (int64_t t = rq.begin; t < rq.end; ++t) covered[t] = 1;
  }
  parallel_for(batch * h_kv, [&](int64_t task) {
    const int64_t i = task / h_kv, hk = task % h_kv;
    const Range rq = seq_range(p.cu_seqlens_q, i, total_q);
    const Range rk = seq_range(p.cu_seqlens_k, i, total_k);
    const int64_t lq = rq.end - rq.begin, lk = rk.end - rk.begin;
    std::vector<double> keys(lk * d_qk), vals(lk * d_v), q(d_qk), o(d_v);
    for (int64_t j = 0; j < lk; ++j) {
      load_row(p.k, offset(p.k, {rk.begin + j, hk, 0}), d_qk, keys.data() + j * d_qk);
      load_row(p.v, offset(p.v, {rk.begin + j, hk, 0}), d_v, vals.data() + j * d_v);
    }
    for (int64_t g = 0; g < group; ++g) {
      const int64_t h = hk * group + g;
      for (int64_t r = 0; r < lq; ++r) {
        load_row(p.q, offset(p.q, {rq.begin + r, h, 0}), d_qk, q.data());
        const int64_t n = visible_keys(p.causal, r, lq, lk);
        const AttendResult res =
            attend(q.data(), keys.data(), vals.data(), n, d_qk, d_v, p.softmax_scale, o.data());
        store_row(p.out, offset(p.out, {rq.begin + r, h, 0}), d_v, o.data());
        store(p.lse, offset(p.lse, {h, rq.begin + r}), res.lse);
      }
    }
  });
  const std::vector<double> zero(d_v, 0.0);
  for (int64_t t = 0; t < total_q; ++t) {
    if (covered[t]) continue;
    for (int64_t h = 0; h < h_q; ++h) {
      store_row(p.out, offset(p.out, {t, h, 0}), d_v, zero.data());
      store(p.lse, offset(p.lse, {h, t}), kInf);
    }
  }
}

// Standard attention backward from the given out and lse:
//   P = exp(scale * q.k - lse), dv = P^T dout, dP = dout v^T, D = rowsum(dout * out),
//   dS = P (dP - D), dq = scale * dS k, dk = scale * dS^T q (summed over a group's heads).
void dense_prefill_backward(const DensePrefillBackwardParams& p) {
  const int64_t total_q = p.q.shape[0], h_q = p.q.shape[1], d_qk = p.q.shape[2];
  const int64_t total_k = p.k.shape[0], h_kv = p.k.shape[1], d_v = p.v.shape[2];
  const int64_t batch = p.cu_seqlens_q.shape[0] - 1, group = h_q / h_kv;
  const double scale = p.softmax_scale;
  // Rows no sequence covers get zero gradients.
  const std::vector<double> zero(std::max(d_qk, d_v), 0.0);
  for (int64_t t = 0; t < total_q; ++t)
    for (int64_t h = 0; h < h_q; ++h) store_row(p.dq, offset(p.dq, {t, h, 0}), d_qk, zero.data());
  for (int64_t t = 0; t < total_k; ++t)
    for (int64_t h = 0; h < h_kv; ++h) {
      store_row(p.dk, offset(p.dk, {t, h, 0}), d_qk, zero.data());
      store_row(p.dv, offset(p.dv, {t, h, 0}), d_v, zero.data());
    }
  parallel_for(batch * h_kv, [&](int64_t task) {
    const int64_t i = task / h_kv, hk = task % h_kv;
    const Range rq = seq_range(p.cu_seqlens_q, i, total_q);
    const Range rk = seq_range(p.cu_seqlens_k, i, total_k);
    const int64_t lq = rq.end - rq.begin, lk = rk.end - rk.begin;
    std::vector<double> k(lk * d_qk), v(lk * d_v), dk(lk * d_qk, 0.0), dv(lk * d_v, 0.0);
    for (int64_t j = 0; j < lk; ++j) {
      load_row(p.k, offset(p.k, {rk.begin + j, hk, 0}), d_qk, k.data() + j * d_qk);
      load_row(p.v, offset(p.v, {rk.begin + j, hk, 0}), d_v, v.data() + j * d_v);
    }
    std::vector<double> q(d_qk), dq(d_qk), dout(d_v), out(d_v), pr(lk), dp(lk);
    for (int64_t g = 0; g < group; ++g) {
      const int64_t h = hk * group + g;
      for (int64_t r = 0; r < lq; ++r) {
        const int64_t t = rq.begin + r;
        load_row(p.q, offset(p.q, {t, h, 0}), d_qk, q.data());
        load_row(p.dout, offset(p.dout, {t, h, 0}), d_v, dout.data());
        load_row(p.out, offset(p.out, {t, h, 0}), d_v, out.data());
        const double lse = load(p.lse, offset(p.lse, {h, t}));
        const int64_t n = visible_keys(p.causal, r, lq, lk);
        std::fill(dq.begin(), dq.end(), 0.0);
        if (n == 0 || std::isinf(lse)) {
          store_row(p.dq, offset(p.dq, {t, h, 0}), d_qk, dq.data());
          continue;
        }
        double D = 0.0;
        for (int64_t c = 0; c < d_v; ++c) D += dout[c] * out[c];
        for (int64_t j = 0; j < n; ++j) {
          double s = 0.0, d = 0.0;
          for (int64_t c = 0; c < d_qk; ++c) s += q[c] * k[j * d_qk + c];
          for (int64_t c = 0; c < d_v; ++c) d += dout[c] * v[j * d_v + c];
          pr[j] = std::exp(s * scale - lse);
          dp[j] = d;
        }
        for (int64_t j = 0; j < n; ++j) {
          const double ds = pr[j] * (dp[j] - D);
          for (int64_t c = 0; c < d_v; ++c) dv[j * d_v + c] += pr[j] * dout[c];
          for (int64_t c = 0; c < d_qk; ++c) {
            dq[c] += scale * ds * k[j * d_qk + c];
            dk[j * d_qk + c] += scale * ds * q[c];
          }
        }
        store_row(p.dq, offset(p.dq, {t, h, 0}), d_qk, dq.data());
      }
    }
    for (int64_t j = 0; j < lk; ++j) {
      store_row(p.dk, offset(p.dk, {rk.begin + j, hk, 0}), d_qk, dk.data() + j * d_qk);
      store_row(p.dv, offset(p.dv, {rk.begin + j, hk, 0}), d_v, dv.data() + j * d_v);
    }
  });
}

}  // namespace openmla::cpu
