// CPU reference: dense decode over a paged cache and sparse decode over an FP8 cache (fp64).
#include <vector>

#include "backend.h"
#include "common/fp8_record.h"
#include "cpu/common.h"

namespace openmla::cpu {

// Tokens whose block-table entry is out of [0, num_pages) are masked, never dereferenced.
void dense_decode(const DenseDecodeParams& p) {
  const int64_t b = p.q.shape[0], s_q = p.q.shape[1], h_q = p.q.shape[2], d_qk = p.q.shape[3];
  const int64_t num_pages = p.k_cache.shape[0], page_size = p.k_cache.shape[1];
  const int64_t h_kv = p.k_cache.shape[2], group = h_q / h_kv, d_v = p.d_v;
  const int64_t max_pages = p.block_table.shape[1];

  // One task per (request, kv head, query token): gather that head's visible keys once.
  parallel_for(b * h_kv * s_q, [&](int64_t task) {
    const int64_t r = task % s_q, hk = (task / s_q) % h_kv, i = task / (s_q * h_kv);
    int64_t len = load_i32(p.cache_seqlens, i * p.cache_seqlens.strides[0]);
    if (len < 0) len = 0;
    int64_t visible = len;
    if (p.causal) visible = std::max<int64_t>(0, std::min<int64_t>(len, len - s_q + r + 1));
    std::vector<double> keys;
    keys.reserve(visible * d_qk);
    int64_t n = 0;
    for (int64_t t = 0; t < visible; ++t) {
      const int64_t slot = t / page_size;
      if (slot >= max_pages) break;
      const int64_t page = load_i32(p.block_table, offset(p.block_table, {i, slot}));
      if (page < 0 || page >= num_pages) continue;
      keys.resize((n + 1) * d_qk);
      load_row(p.k_cache, offset(p.k_cache, {page, t % page_size, hk, 0}), d_qk,
               keys.data() + n * d_qk);
      ++n;
    }
    std::vector<double> q(d_qk), o(d_v);
    for (int64_t g = 0; g < group; ++g) {
      const int64_t h = hk * group + g;
      load_row(p.q, offset(p.q, {i, r, h, 0}), d_qk, q.data());
      const AttendResult res =
          attend(q.data(), keys.data(), nullptr, n, d_qk, d_v, p.softmax_scale, o.data());
      store_row(p.out, offset(p.out, {i, r, h, 0}), d_v, o.data());
      store(p.lse, offset(p.lse, {i, h, r}), res.lse);
    }
  });
}

namespace {

// Appends the dequantized keys of request i, query r, of one pool to `keys` (as doubles).
void gather_fp8(const TensorView& cache, const TensorView& indices, const TensorView& topk_length,
                int64_t i, int64_t r, bool model1, int64_t d_qk, std::vector<double>& keys,
                int64_t& n) {
  const int64_t num_pages = cache.shape[0], page_size = cache.shape[1];
  const int64_t num_slots = num_pages * page_size;
  int64_t topk = indices.shape[2];
  if (topk_length.present()) {
    const int64_t l = load_i32(topk_length, i * topk_length.strides[0]);
    topk = std::max<int64_t>(0, std::min(topk, l));
  }
  const auto* base = static_cast<const uint8_t*>(cache.data);
  std::vector<uint16_t> tok(d_qk);
  for (int64_t k = 0; k < topk; ++k) {
    const int64_t slot = load_i32(indices, offset(indices, {i, r, k}));
    if (slot < 0 || slot >= num_slots) continue;
    const int64_t page = slot / page_size, off = slot % page_size;
    fp8::dequantize_token(base + page * cache.strides[0], off, page_size, model1, tok.data());
    keys.resize((n + 1) * d_qk);
    for (int64_t c = 0; c < d_qk; ++c) keys[n * d_qk + c] = num::bf16_to_f32(tok[c]);
    ++n;
  }
}

}  // namespace

void sparse_decode(const SparseDecodeParams& p) {
  const int64_t b = p.q.shape[0], s_q = p.q.shape[1], h_q = p.q.shape[2], d_qk = p.q.shape[3];
  const int64_t d_v = p.d_v;
  const bool model1 = d_qk == 512;
  parallel_for(b * s_q, [&](int64_t task) {
    const int64_t r = task % s_q, i = task / s_q;
    std::vector<double> keys;
    int64_t n = 0;
    gather_fp8(p.k_cache, p.indices, p.topk_length, i, r, model1, d_qk, keys, n);
    if (p.extra_k_cache.present())
      gather_fp8(p.extra_k_cache, p.extra_indices, p.extra_topk_length, i, r, model1, d_qk, keys,
                 n);
    std::vector<double> q(d_qk), o(d_v);
    for (int64_t h = 0; h < h_q; ++h) {
      load_row(p.q, offset(p.q, {i, r, h, 0}), d_qk, q.data());
      const AttendResult res =
          attend(q.data(), keys.data(), nullptr, n, d_qk, d_v, p.softmax_scale, o.data());
      if (p.attn_sink.present())
        apply_sink(load(p.attn_sink, h * p.attn_sink.strides[0]), res.lse, o.data(), d_v);
      store_row(p.out, offset(p.out, {i, r, h, 0}), d_v, o.data());
      store(p.lse, offset(p.lse, {i, h, r}), res.lse);
    }
  });
}

}  // namespace openmla::cpu
