// Dense and sparse MLA decode over a paged KV cache, and DecodePlan, the split-KV schedule.
#pragma once

#include <memory>

#include "openmla/tensor.h"

namespace openmla {

// What a plan is made for. One plan serves every layer of one decode step (same shapes, same
// cache_seqlens); `update` recomputes it on the device when the lengths change.
struct DecodePlanConfig {
  int batch = 0;  // the largest batch: update() and the calls take any batch up to it
  int s_q = 1;
  int h_q = 0;
  int h_kv = 1;
  int d_qk = 576;
  bool causal = false;
  bool sparse = false;  // plan for sparse_decode (work per request = topk, not cache length)
  int topk = 0;         // sparse only: indices per query (plus extra_topk)
  int extra_topk = 0;   // sparse only
  int num_sms = 0;      // 0: every SM of the device
  // A request's result does not depend on which other requests share the batch: requests are
  // never split across SMs (each is computed by one CTA per 64 query rows, blocks in order).
  // Cost: a long request no longer spreads over the GPU, so small batches of long contexts run on
  // few SMs (b=1 uses ceil(s_q*h_q/h_kv/64) * h_kv CTAs).
  bool batch_invariant = false;
  // Dense decode on CUDA: the plan does not hold the partial results of split requests (its
  // largest buffer, sized by the SM count and s_q * h_q, not by the batch: ~34 MB at h_q = 128 on
  // 132 SMs); every dense_decode call passes DenseDecodeParams::workspace instead. For engines
  // that keep many plans alive (one per captured batch size): their calls can share one
  // workspace per stream, or take it from the engine's allocator call by call.
  bool external_workspace = false;
};

// Split-KV schedule living in fixed-size device buffers (CUDA-graph safe). On the CPU a plan is
// accepted and ignored: the reference backend needs no schedule. The buffers also hold the
// calls' partial results and, for batches over 8, the sync words by which the attention kernel
// merges requests cut in two: calls that use one plan must not overlap on the GPU (issue them
// on one stream, or order them with events); use one plan per concurrent stream.
class DecodePlan {
 public:
  DecodePlan(Device device, const DecodePlanConfig& config);
  ~DecodePlan();
  DecodePlan(DecodePlan&&) noexcept;
  DecodePlan& operator=(DecodePlan&&) noexcept;
  DecodePlan(const DecodePlan&) = delete;
  DecodePlan& operator=(const DecodePlan&) = delete;

  // Recompute the schedule from cache_seqlens [b] int32 (on the plan's device), without a host
  // sync; b <= config.batch, and the calls until the next update have that batch (a plan made
  // for the largest batch serves every smaller one, with the schedule and bits of a plan made
  // for b). For sparse plans cache_seqlens may be left out (ndim -1) or hold topk_length.
  void update(const TensorView& cache_seqlens, Stream stream = nullptr);

  const DecodePlanConfig& config() const;
  Device device() const;
  // Bytes of DenseDecodeParams::workspace that a dense_decode call with this plan needs: 0 on the
  // CPU, for sparse plans, and when the plan never splits a request (one schedule part). The
  // same for every batch size of a given s_q, h_q, h_kv, d_qk and SM count.
  size_t workspace_bytes() const;

  struct Impl;
  Impl* impl() const { return impl_.get(); }

 private:
  std::unique_ptr<Impl> impl_;
};

// §1 dense decode. Shapes (strides free, last dimension contiguous):
//   q [b, s_q, h_q, d_qk] bf16|fp16; k_cache [num_pages, page_size, h_kv, d_qk] same dtype;
//   block_table [b, max_pages] int32; cache_seqlens [b] int32;
//   out [b, s_q, h_q, d_v] same dtype as q; lse [b, h_q, s_q] fp32.
struct DenseDecodeParams {
  TensorView q;
  TensorView k_cache;
  TensorView block_table;
  TensorView cache_seqlens;
  TensorView out;
  TensorView lse;
  int d_v = 512;
  float softmax_scale = 0.0f;  // 0: 1/sqrt(d_qk)
  bool causal = false;
  const DecodePlan* plan = nullptr;  // required on CUDA, ignored on the CPU
  Stream stream = nullptr;
  // Scratch for the partial results of split requests (optional): a contiguous rank-1 tensor of
  // any dtype on the device of q, at least plan->workspace_bytes() bytes, its data 256-byte
  // aligned, sharing no memory with the other arguments. Required on CUDA when the plan was made
  // with config.external_workspace (and workspace_bytes() > 0); otherwise, when given, it is used
  // instead of the plan's own buffer. Nothing in it is kept between calls, but like the plan it
  // is in use until the call's work on `stream` is done: calls sharing a workspace must not
  // overlap on the GPU.
  TensorView workspace;
};

void dense_decode(const DenseDecodeParams& params);

// §3 sparse decode over an FP8 cache (format from d_qk: 576 -> V32, 512 -> MODEL1).
//   q [b, s_q, h_q, d_qk] bf16; k_cache [num_pages, page_size, 1, bytes_per_token] uint8/fp8
//   (stride[0] = page stride in bytes, free; see kv_cache.h for the record layout);
//   indices [b, s_q, topk] int32 cache slots (page * page_size + offset; invalid = masked);
//   topk_length [b] int32, attn_sink [h_q] fp32, extra_* : optional;
//   out [b, s_q, h_q, d_v] bf16; lse [b, h_q, s_q] fp32.
struct SparseDecodeParams {
  TensorView q;
  TensorView k_cache;
  TensorView indices;
  TensorView topk_length;
  TensorView attn_sink;
  TensorView extra_k_cache;
  TensorView extra_indices;
  TensorView extra_topk_length;
  TensorView out;
  TensorView lse;
  int d_v = 512;
  float softmax_scale = 0.0f;  // 0: 1/sqrt(d_qk)
  const DecodePlan* plan = nullptr;
  Stream stream = nullptr;
};

void sparse_decode(const SparseDecodeParams& params);

}  // namespace openmla
