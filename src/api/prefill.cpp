// Public sparse-prefill and dense-prefill entry points: validate, resolve defaults, dispatch.
#include "openmla/prefill.h"

#include "api/check.h"
#include "api/dispatch.h"

namespace openmla {

void check_attn_sink(const TensorView& t, int64_t h_q, Device dev);  // api/decode.cpp

// ---------------- sparse prefill ----------------

static void validate(const SparsePrefillParams& p) {
  check::tensor(p.q, "q", 3, "[s_q, h_q, d_qk]");
  check::dtype(p.q, "q", {DType::kBFloat16});
  const int64_t s_q = p.q.shape[0], h_q = p.q.shape[1], d_qk = p.q.shape[2];
  const Device dev = p.q.device;
  if (d_qk != 576 && d_qk != 512) check::fail("q", "head dim d_qk 576 or 512 in dim 2", p.q);
  check::positive(h_q, "q", "h_q (dim 1)");
  if (p.d_v != 512) throw Error("d_v", "expected 512, got " + std::to_string(p.d_v));
  check::scale(p.softmax_scale, "softmax_scale");

  check::tensor(p.kv, "kv", 3, "[s_kv, h_kv = 1, d_qk]");
  check::dtype(p.kv, "kv", {DType::kBFloat16});
  check::dim(p.kv, "kv", 1, 1, "h_kv = 1");
  check::dim(p.kv, "kv", 2, d_qk, "d_qk of q");
  check::same_device(p.kv, "kv", dev);

  check::tensor(p.indices, "indices", 3, "[s_q, h_kv = 1, topk]");
  check::dtype(p.indices, "indices", {DType::kInt32});
  check::dim(p.indices, "indices", 0, s_q, "s_q of q");
  check::dim(p.indices, "indices", 1, 1, "h_kv = 1");
  check::same_device(p.indices, "indices", dev);

  check_attn_sink(p.attn_sink, h_q, dev);
  if (p.topk_length.present()) {
    check::tensor(p.topk_length, "topk_length", 1, "[s_q]");
    check::dtype(p.topk_length, "topk_length", {DType::kInt32});
    check::dim(p.topk_length, "topk_length", 0, s_q, "s_q of q");
    check::same_device(p.topk_length, "topk_length", dev);
  }

  check::tensor(p.out, "out", 3, "[s_q, h_q, d_v]");
  check::dtype(p.out, "out", {DType::kBFloat16});
  const int64_t want_out[3] = {s_q, h_q, p.d_v};
  for (int i = 0; i < 3; ++i) check::dim(p.out, "out", i, want_out[i], "[s_q, h_q, d_v]");
  check::same_device(p.out, "out", dev);
  for (const auto& [t, name] : {std::pair{p.max_logits, "max_logits"}, std::pair{p.lse, "lse"}}) {
    check::tensor(t, name, 2, "[s_q, h_q]");
    check::dtype(t, name, {DType::kFloat32});
    check::dim(t, name, 0, s_q, "s_q of q");
    check::dim(t, name, 1, h_q, "h_q of q");
    check::same_device(t, name, dev);
  }
  const std::initializer_list<check::Named> ins = {{p.q, "q"},
                                                   {p.kv, "kv"},
                                                   {p.indices, "indices"},
                                                   {p.attn_sink, "attn_sink"},
                                                   {p.topk_length, "topk_length"}},
                                            outs = {{p.out, "out"},
                                                    {p.max_logits, "max_logits"},
                                                    {p.lse, "lse"}};
  check::outputs(outs, ins);
  check::device_pointers(ins, outs);
}

void sparse_prefill(const SparsePrefillParams& params) {
  validate(params);
  SparsePrefillParams p = params;
  p.softmax_scale = check::resolve_scale(p.softmax_scale, p.q.shape[2]);
  if (p.q.shape[0] == 0) return;
  detail::dispatch(p.q.device, "q", p, &cpu::sparse_prefill, OPENMLA_CUDA_OP(sparse_prefill));
}

// ---------------- dense prefill ----------------

struct DenseShapes {
  int64_t total_q, h_q, d_qk, total_k, h_kv, d_v, batch;
};

static DenseShapes validate_dense(const TensorView& q, const TensorView& k, const TensorView& v,
                                  const TensorView& cu_q, const TensorView& cu_k, float scale,
                                  int max_q, int max_k) {
  check::tensor(q, "q", 3, "[total_q, h_q, d_qk]");
  check::dtype(q, "q", {DType::kBFloat16});
  DenseShapes s{};
  s.total_q = q.shape[0];
  s.h_q = q.shape[1];
  s.d_qk = q.shape[2];
  const Device dev = q.device;
  if (s.d_qk != 192 && s.d_qk != 128) check::fail("q", "head dim d_qk 192 or 128 in dim 2", q);
  check::positive(s.h_q, "q", "h_q (dim 1)");
  check::scale(scale, "softmax_scale");
  if (max_q < 0) throw Error("max_seqlen_q", "expected >= 0, got " + std::to_string(max_q));
  if (max_k < 0) throw Error("max_seqlen_k", "expected >= 0, got " + std::to_string(max_k));

  check::tensor(k, "k", 3, "[total_k, h_kv, d_qk]");
  check::dtype(k, "k", {DType::kBFloat16});
  check::dim(k, "k", 2, s.d_qk, "d_qk of q");
  s.total_k = k.shape[0];
  s.h_kv = k.shape[1];
  check::positive(s.h_kv, "k", "h_kv (dim 1)");
  if (s.h_q % s.h_kv != 0)
    check::fail("k", "h_kv (dim 1) dividing h_q = " + std::to_string(s.h_q), k);
  check::same_device(k, "k", dev);

  check::tensor(v, "v", 3, "[total_k, h_kv, d_v]");
  check::dtype(v, "v", {DType::kBFloat16});
  check::dim(v, "v", 0, s.total_k, "total_k of k");
  check::dim(v, "v", 1, s.h_kv, "h_kv of k");
  check::dim(v, "v", 2, 128, "d_v = 128");
  s.d_v = 128;
  check::same_device(v, "v", dev);

  check::tensor(cu_q, "cu_seqlens_q", 1, "[batch + 1]");
  check::dtype(cu_q, "cu_seqlens_q", {DType::kInt32});
  check::positive(cu_q.shape[0], "cu_seqlens_q", "batch + 1 (dim 0)");
  check::same_device(cu_q, "cu_seqlens_q", dev);
  check::tensor(cu_k, "cu_seqlens_k", 1, "[batch + 1]");
  check::dtype(cu_k, "cu_seqlens_k", {DType::kInt32});
  check::dim(cu_k, "cu_seqlens_k", 0, cu_q.shape[0], "batch + 1 of cu_seqlens_q");
  check::same_device(cu_k, "cu_seqlens_k", dev);
  s.batch = cu_q.shape[0] - 1;
  return s;
}

static void check_out3(const TensorView& t, const char* name, int64_t n, int64_t h, int64_t d,
                       const char* layout, Device dev) {
  check::tensor(t, name, 3, layout);
  check::dtype(t, name, {DType::kBFloat16});
  check::dim(t, name, 0, n, layout);
  check::dim(t, name, 1, h, layout);
  check::dim(t, name, 2, d, layout);
  check::same_device(t, name, dev);
}

static void check_lse(const TensorView& lse, const DenseShapes& s, Device dev) {
  check::tensor(lse, "lse", 2, "[h_q, total_q] (head-major)");
  check::dtype(lse, "lse", {DType::kFloat32});
  check::dim(lse, "lse", 0, s.h_q, "h_q");
  check::dim(lse, "lse", 1, s.total_q, "total_q");
  check::same_device(lse, "lse", dev);
}

void dense_prefill_forward(const DensePrefillParams& params) {
  const DensePrefillParams& p = params;
  const DenseShapes s = validate_dense(p.q, p.k, p.v, p.cu_seqlens_q, p.cu_seqlens_k,
                                       p.softmax_scale, p.max_seqlen_q, p.max_seqlen_k);
  const Device dev = p.q.device;
  check_out3(p.out, "out", s.total_q, s.h_q, s.d_v, "[total_q, h_q, d_v]", dev);
  check_lse(p.lse, s, dev);
  const std::initializer_list<check::Named> ins = {{p.q, "q"},
                                                   {p.k, "k"},
                                                   {p.v, "v"},
                                                   {p.cu_seqlens_q, "cu_seqlens_q"},
                                                   {p.cu_seqlens_k, "cu_seqlens_k"}},
                                            outs = {{p.out, "out"}, {p.lse, "lse"}};
  check::outputs(outs, ins);
  check::device_pointers(ins, outs);
  DensePrefillParams r = p;
  r.softmax_scale = check::resolve_scale(p.softmax_scale, s.d_qk);
  if (s.total_q == 0) return;
  detail::dispatch(dev, "q", r, &cpu::dense_prefill_forward,
                   OPENMLA_CUDA_OP(dense_prefill_forward));
}

void dense_prefill_backward(const DensePrefillBackwardParams& params) {
  const DensePrefillBackwardParams& p = params;
  const DenseShapes s = validate_dense(p.q, p.k, p.v, p.cu_seqlens_q, p.cu_seqlens_k,
                                       p.softmax_scale, p.max_seqlen_q, p.max_seqlen_k);
  const Device dev = p.q.device;
  check_out3(p.dout, "dout", s.total_q, s.h_q, s.d_v, "[total_q, h_q, d_v]", dev);
  check_out3(p.out, "out", s.total_q, s.h_q, s.d_v, "[total_q, h_q, d_v]", dev);
  check_lse(p.lse, s, dev);
  check_out3(p.dq, "dq", s.total_q, s.h_q, s.d_qk, "[total_q, h_q, d_qk]", dev);
  check_out3(p.dk, "dk", s.total_k, s.h_kv, s.d_qk, "[total_k, h_kv, d_qk]", dev);
  check_out3(p.dv, "dv", s.total_k, s.h_kv, s.d_v, "[total_k, h_kv, d_v]", dev);
  check::outputs({{p.dq, "dq"}, {p.dk, "dk"}, {p.dv, "dv"}}, {{p.dout, "dout"},
                                                              {p.q, "q"},
                                                              {p.k, "k"},
                                                              {p.v, "v"},
                                                              {p.out, "out"},
                                                              {p.lse, "lse"},
                                                              {p.cu_seqlens_q, "cu_seqlens_q"},
                                                              {p.cu_seqlens_k, "cu_seqlens_k"}});
  check::device_pointers({{p.q, "q"},
                          {p.k, "k"},
                          {p.v, "v"},
                          {p.dout, "dout"},
                          {p.out, "out"},
                          {p.lse, "lse"},
                          {p.cu_seqlens_q, "cu_seqlens_q"},
                          {p.cu_seqlens_k, "cu_seqlens_k"},
                          {p.dq, "dq"},
                          {p.dk, "dk"},
                          {p.dv, "dv"}});
  DensePrefillBackwardParams r = p;
  r.softmax_scale = check::resolve_scale(p.softmax_scale, s.d_qk);
  if (s.total_q == 0 && s.total_k == 0) return;
  detail::dispatch(dev, "q", r, &cpu::dense_prefill_backward,
                   OPENMLA_CUDA_OP(dense_prefill_backward));
}

}  // namespace openmla
