// Sparse MLA prefill and dense MHA prefill (forward and backward).
#pragma once

#include "openmla/tensor.h"

namespace openmla {

// §4 sparse prefill.
//   q [s_q, h_q, d_qk] bf16; kv [s_kv, 1, d_qk] bf16; indices [s_q, 1, topk] int32 (invalid if
//   < 0 or >= s_kv); attn_sink [h_q] fp32 and topk_length [s_q] int32 optional;
//   out [s_q, h_q, d_v] bf16; max_logits [s_q, h_q] fp32; lse [s_q, h_q] fp32 (natural log).
struct SparsePrefillParams {
  TensorView q;
  TensorView kv;
  TensorView indices;
  TensorView attn_sink;
  TensorView topk_length;
  TensorView out;
  TensorView max_logits;
  TensorView lse;
  int d_v = 512;
  float softmax_scale = 0.0f;  // 0: 1/sqrt(d_qk)
  Stream stream = nullptr;
};

void sparse_prefill(const SparsePrefillParams& params);

// §5 dense prefill (MHA mode, varlen), d_qk in {192, 128}, d_v = 128, bf16.
//   q [total_q, h_q, d_qk]; k [total_k, h_kv, d_qk]; v [total_k, h_kv, d_v];
//   cu_seqlens_q, cu_seqlens_k [batch + 1] int32 (on the device of q);
//   out [total_q, h_q, d_v]; lse [h_q, total_q] fp32 (head-major).
// max_seqlen_q / max_seqlen_k bound the per-sequence lengths (used to size GPU grids; the CPU
// backend ignores them; 0 = unknown).
struct DensePrefillParams {
  TensorView q;
  TensorView k;
  TensorView v;
  TensorView cu_seqlens_q;
  TensorView cu_seqlens_k;
  TensorView out;
  TensorView lse;
  int max_seqlen_q = 0;
  int max_seqlen_k = 0;
  float softmax_scale = 0.0f;  // 0: 1/sqrt(d_qk)
  bool causal = false;         // bottom-right aligned
  Stream stream = nullptr;
};

void dense_prefill_forward(const DensePrefillParams& params);

// Backward: dout [total_q, h_q, d_v] and the forward's q, k, v, out, lse ->
//   dq [total_q, h_q, d_qk], dk [total_k, h_kv, d_qk], dv [total_k, h_kv, d_v] (bf16; dk/dv summed
//   over the query heads of a group).
struct DensePrefillBackwardParams {
  TensorView dout;
  TensorView q;
  TensorView k;
  TensorView v;
  TensorView out;
  TensorView lse;
  TensorView cu_seqlens_q;
  TensorView cu_seqlens_k;
  TensorView dq;
  TensorView dk;
  TensorView dv;
  int max_seqlen_q = 0;
  int max_seqlen_k = 0;
  float softmax_scale = 0.0f;
  bool causal = false;
  Stream stream = nullptr;
};

void dense_prefill_backward(const DensePrefillBackwardParams& params);

}  // namespace openmla
