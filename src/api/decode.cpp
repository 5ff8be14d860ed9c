// Public dense/sparse decode entry points and DecodePlan: validate, resolve defaults, dispatch.
#include "openmla/decode.h"

#include "api/check.h"
#include "api/dispatch.h"
#include "openmla/kv_cache.h"

namespace openmla {

// ---------------- DecodePlan ----------------

static void validate_plan_config(const DecodePlanConfig& c) {
  if (c.batch < 0) throw Error("config.batch", "expected >= 0, got " + std::to_string(c.batch));
  check::positive(c.s_q, "config.s_q", "s_q");
  check::positive(c.h_q, "config.h_q", "h_q");
  check::positive(c.h_kv, "config.h_kv", "h_kv");
  if (c.h_q % c.h_kv != 0)
    throw Error("config.h_kv", "h_q (" + std::to_string(c.h_q) + ") must be a multiple of h_kv (" +
                                   std::to_string(c.h_kv) + ")");
  if (c.d_qk != 576 && c.d_qk != 512)
    throw Error("config.d_qk", "expected 576 or 512, got " + std::to_string(c.d_qk));
  if (int64_t(c.s_q) * c.h_q > check::kMaxDimSize)
    throw Error("config.s_q", "expected s_q * h_q <= 2^31 - 1 (query rows of a request), got " +
                                  std::to_string(c.s_q) + " * " + std::to_string(c.h_q));
  if (c.num_sms < 0)
    throw Error("config.num_sms", "expected >= 0 (0 = all SMs), got " + std::to_string(c.num_sms));
  if (c.sparse) {
    if (c.topk < 0) throw Error("config.topk", "expected >= 0, got " + std::to_string(c.topk));
    if (c.extra_topk < 0)
      throw Error("config.extra_topk", "expected >= 0, got " + std::to_string(c.extra_topk));
    if (c.h_kv != 1)
      throw Error("config.h_kv",
                  "expected 1 for a sparse plan (FP8 caches hold one KV head), got " +
                      std::to_string(c.h_kv));
    if (c.causal)
      throw Error("config.causal",
                  "expected false for a sparse plan (sparse decode has no causal "
                  "mask; the indices select the keys)");
  }
}

DecodePlan::DecodePlan(Device device, const DecodePlanConfig& config)
    : impl_(std::make_unique<Impl>()) {
  if (device.type != DeviceType::kCPU && device.type != DeviceType::kCUDA)
    throw Error("device", "expected cpu or cuda, got " + device_name(device));
  if (device.type == DeviceType::kCUDA && device.index < 0)
    throw Error("device", "expected a CUDA device index >= 0, got " + device_name(device));
  validate_plan_config(config);
  impl_->device = device;
  impl_->config = config;
  if (device.type == DeviceType::kCUDA) {
#if defined(OPENMLA_WITH_CUDA)
    sm90::plan_create(*impl_);
#else
    throw Error("device", "a CUDA plan needs a build of OpenMLA with the CUDA backend");
#endif
  }
}

DecodePlan::~DecodePlan() {
#if defined(OPENMLA_WITH_CUDA)
  if (impl_ && impl_->device.type == DeviceType::kCUDA) sm90::plan_destroy(*impl_);
#endif
}
DecodePlan::DecodePlan(DecodePlan&&) noexcept = default;
DecodePlan& DecodePlan::operator=(DecodePlan&& o) noexcept {
  if (this != &o) {
#if defined(OPENMLA_WITH_CUDA)
    if (impl_ && impl_->device.type == DeviceType::kCUDA) sm90::plan_destroy(*impl_);
#endif
    impl_ = std::move(o.impl_);
  }
  return *this;
}

static void check_not_moved_from(const DecodePlan::Impl* impl) {
  if (impl == nullptr) throw Error("plan", "use of a moved-from DecodePlan");
}

const DecodePlanConfig& DecodePlan::config() const {
  check_not_moved_from(impl_.get());
  return impl_->config;
}
Device DecodePlan::device() const {
  check_not_moved_from(impl_.get());
  return impl_->device;
}
size_t DecodePlan::workspace_bytes() const {
  check_not_moved_from(impl_.get());
  if (impl_->device.type != DeviceType::kCUDA || impl_->config.sparse) return 0;
  return impl_->call_workspace_bytes;
}

void DecodePlan::update(const TensorView& cache_seqlens, Stream stream) {
  check_not_moved_from(impl_.get());
  const auto& c = impl_->config;
  if (!c.sparse || cache_seqlens.present()) {
    check::tensor(cache_seqlens, "cache_seqlens", 1, "[b]");
    check::dtype(cache_seqlens, "cache_seqlens", {DType::kInt32});
    if (cache_seqlens.shape[0] > c.batch)
      check::fail("cache_seqlens",
                  "at most config.batch = " + std::to_string(c.batch) +
                      " requests in dim 0 (the largest batch the plan serves)",
                  cache_seqlens);
    if (cache_seqlens.device != impl_->device)
      check::fail("cache_seqlens",
                  "a tensor on " + device_name(impl_->device) + " (the device of the plan)",
                  cache_seqlens);
    check::device_pointers({{cache_seqlens, "cache_seqlens"}});
  }
  const int64_t batch = cache_seqlens.present() ? cache_seqlens.shape[0] : c.batch;
#if defined(OPENMLA_WITH_CUDA)
  if (impl_->device.type == DeviceType::kCUDA) sm90::plan_update(*impl_, cache_seqlens, stream);
#endif
  (void)stream;  // (the CPU backend needs no schedule)
  impl_->updated_batch = batch;
}

static void check_plan(const DecodePlan* plan, Device device, const DecodePlanConfig& want) {
  if (device.type == DeviceType::kCPU) return;  // accepted and ignored
  if (plan == nullptr)
    throw Error("plan",
                "a DecodePlan (made for these shapes and updated for this step) is "
                "required on " +
                    device_name(device));
  check_not_moved_from(plan->impl());
  const DecodePlanConfig& c = plan->config();
  if (plan->device() != device)
    throw Error("plan", "plan was made for " + device_name(plan->device()) + ", tensors are on " +
                            device_name(device));
  if (want.batch > c.batch || c.s_q != want.s_q || c.h_q != want.h_q || c.h_kv != want.h_kv ||
      c.d_qk != want.d_qk || c.sparse != want.sparse || c.causal != want.causal)
    throw Error("plan", "plan was made for other shapes (batch <= " + std::to_string(c.batch) +
                            ", s_q " + std::to_string(c.s_q) + ", h_q " + std::to_string(c.h_q) +
                            ", h_kv " + std::to_string(c.h_kv) + ", d_qk " +
                            std::to_string(c.d_qk) + ", causal " + std::to_string(c.causal) +
                            ", sparse " + std::to_string(c.sparse) + ") than this call");
  const int64_t updated = plan->impl()->updated_batch;
  if (updated < 0 && !want.sparse)  // (sparse plans cannot be updated on CUDA yet)
    throw Error("plan",
                "DecodePlan::update(cache_seqlens) must run (on this stream) before the "
                "first dense_decode with the plan");
  if (updated >= 0 && updated != want.batch)
    throw Error("plan", "plan was last updated for a batch of " + std::to_string(updated) +
                            ", this call has " + std::to_string(want.batch) +
                            ": update it with this step's cache_seqlens first");
  if (want.sparse && (c.topk != want.topk || c.extra_topk != want.extra_topk))
    throw Error("plan", "plan was made for topk " + std::to_string(c.topk) + " and extra_topk " +
                            std::to_string(c.extra_topk) + ", this call has " +
                            std::to_string(want.topk) + " and " + std::to_string(want.extra_topk) +
                            " (dim 2 of indices and extra_indices)");
}

// ---------------- dense decode ----------------

// out [b, s_q, h_q, d_v] in the dtype of q, lse [b, h_q, s_q] fp32: the outputs of both decoders.
static void check_decode_outputs(const TensorView& out, const TensorView& lse, const TensorView& q,
                                 int64_t b, int64_t s_q, int64_t h_q, int64_t d_v, Device dev) {
  check::tensor(out, "out", 4, "[b, s_q, h_q, d_v]");
  if (out.dtype != q.dtype)
    check::fail("out", std::string("dtype ") + dtype_name(q.dtype) + " (that of q)", out);
  const int64_t want_out[4] = {b, s_q, h_q, d_v};
  for (int i = 0; i < 4; ++i) check::dim(out, "out", i, want_out[i], "[b, s_q, h_q, d_v]");
  check::same_device(out, "out", dev);
  check::tensor(lse, "lse", 3, "[b, h_q, s_q]");
  check::dtype(lse, "lse", {DType::kFloat32});
  const int64_t want_lse[3] = {b, h_q, s_q};
  for (int i = 0; i < 3; ++i) check::dim(lse, "lse", i, want_lse[i], "[b, h_q, s_q]");
  check::same_device(lse, "lse", dev);
}

// The optional per-call workspace of dense decode (DenseDecodeParams::workspace): its form
// (before the overlap checks), then, once the plan is known to be valid, its size.
static void check_workspace_tensor(const TensorView& w, Device dev) {
  if (!w.present()) return;
  check::tensor(w, "workspace", 1, "[bytes / element size] (any dtype, contiguous)");
  check::same_device(w, "workspace", dev);
}

static void check_workspace(const DenseDecodeParams& p, Device dev) {
  const TensorView& w = p.workspace;
  const bool cuda_plan =
      dev.type == DeviceType::kCUDA && p.plan != nullptr && p.plan->impl() != nullptr;
  const size_t need = cuda_plan ? p.plan->workspace_bytes() : 0;
  if (!w.present()) {
    if (need > 0 && p.plan->config().external_workspace)
      throw Error("workspace",
                  "expected a workspace of at least " + std::to_string(need) +
                      " bytes (DecodePlan::workspace_bytes()): the plan was made with "
                      "config.external_workspace, got nothing");
    return;
  }
  const size_t bytes = static_cast<size_t>(w.numel()) * dtype_size(w.dtype);
  if (bytes < need)
    check::fail("workspace",
                "at least " + std::to_string(need) +
                    " bytes (DecodePlan::workspace_bytes()), got " + std::to_string(bytes) +
                    " bytes",
                w);
  if (need > 0 && reinterpret_cast<uintptr_t>(w.data) % 256 != 0)
    check::fail("workspace", "a data pointer aligned to 256 bytes", w);
}

static void validate(const DenseDecodeParams& p) {
  check::tensor(p.q, "q", 4, "[b, s_q, h_q, d_qk]");
  check::dtype(p.q, "q", {DType::kBFloat16, DType::kFloat16});
  const int64_t b = p.q.shape[0], s_q = p.q.shape[1], h_q = p.q.shape[2], d_qk = p.q.shape[3];
  const Device dev = p.q.device;
  if (d_qk != 576 && d_qk != 512) check::fail("q", "head dim d_qk 576 or 512 in dim 3", p.q);
  check::positive(s_q, "q", "s_q (dim 1)");
  check::positive(h_q, "q", "h_q (dim 2)");
  if (p.d_v != 512) throw Error("d_v", "expected 512, got " + std::to_string(p.d_v));
  check::scale(p.softmax_scale, "softmax_scale");

  check::tensor(p.k_cache, "k_cache", 4, "[num_pages, page_size, h_kv, d_qk]");
  if (p.k_cache.dtype != p.q.dtype)
    check::fail("k_cache", std::string("dtype ") + dtype_name(p.q.dtype) + " (that of q)",
                p.k_cache);
  check::dim(p.k_cache, "k_cache", 3, d_qk, "d_qk of q");
  check::positive(p.k_cache.shape[1], "k_cache", "page_size (dim 1)");
  const int64_t h_kv = p.k_cache.shape[2];
  check::positive(h_kv, "k_cache", "h_kv (dim 2)");
  if (h_q % h_kv != 0)
    check::fail("k_cache", "h_kv (dim 2) dividing h_q = " + std::to_string(h_q), p.k_cache);
  check::same_device(p.k_cache, "k_cache", dev);

  check::tensor(p.block_table, "block_table", 2, "[b, max_pages_per_seq]");
  check::dtype(p.block_table, "block_table", {DType::kInt32});
  check::dim(p.block_table, "block_table", 0, b, "batch of q");
  check::same_device(p.block_table, "block_table", dev);

  check::tensor(p.cache_seqlens, "cache_seqlens", 1, "[b]");
  check::dtype(p.cache_seqlens, "cache_seqlens", {DType::kInt32});
  check::dim(p.cache_seqlens, "cache_seqlens", 0, b, "batch of q");
  check::same_device(p.cache_seqlens, "cache_seqlens", dev);

  check_decode_outputs(p.out, p.lse, p.q, b, s_q, h_q, p.d_v, dev);

  DecodePlanConfig want;
  want.batch = static_cast<int>(b);
  want.s_q = static_cast<int>(s_q);
  want.h_q = static_cast<int>(h_q);
  want.h_kv = static_cast<int>(h_kv);
  want.d_qk = static_cast<int>(d_qk);
  want.causal = p.causal;
  const std::initializer_list<check::Named> ins = {{p.q, "q"},
                                                   {p.k_cache, "k_cache"},
                                                   {p.block_table, "block_table"},
                                                   {p.cache_seqlens, "cache_seqlens"}},
                                            outs = {{p.out, "out"},
                                                    {p.lse, "lse"},
                                                    {p.workspace, "workspace"}};
  check_workspace_tensor(p.workspace, dev);
  check::outputs(outs, ins);
  check_plan(p.plan, dev, want);
  check_workspace(p, dev);
  check::device_pointers(ins, outs);
}

void dense_decode(const DenseDecodeParams& params) {
  validate(params);
  DenseDecodeParams p = params;
  p.softmax_scale = check::resolve_scale(p.softmax_scale, p.q.shape[3]);
  if (p.q.shape[0] == 0) return;
  detail::dispatch(p.q.device, "q", p, &cpu::dense_decode, OPENMLA_CUDA_OP(dense_decode));
}

// ---------------- sparse decode ----------------

// FP8 cache tensor [num_pages, page_size, 1, bytes_per_token] of bytes.
void check_fp8_cache(const TensorView& c, const char* arg, KVCacheFormat format, Device dev);

static void check_indices(const TensorView& t, const char* arg, int64_t b, int64_t s_q,
                          Device dev) {
  check::tensor(t, arg, 3, "[b, s_q, topk]");
  check::dtype(t, arg, {DType::kInt32});
  check::dim(t, arg, 0, b, "batch of q");
  check::dim(t, arg, 1, s_q, "s_q of q");
  check::same_device(t, arg, dev);
}

static void check_lengths(const TensorView& t, const char* arg, int64_t n, const char* what,
                          Device dev) {
  if (!t.present()) return;
  check::tensor(t, arg, 1, what);
  check::dtype(t, arg, {DType::kInt32});
  check::dim(t, arg, 0, n, what);
  check::same_device(t, arg, dev);
}

void check_attn_sink(const TensorView& t, int64_t h_q, Device dev) {
  if (!t.present()) return;
  check::tensor(t, "attn_sink", 1, "[h_q]");
  check::dtype(t, "attn_sink", {DType::kFloat32});
  check::dim(t, "attn_sink", 0, h_q, "h_q of q");
  check::same_device(t, "attn_sink", dev);
}

static void validate(const SparseDecodeParams& p) {
  check::tensor(p.q, "q", 4, "[b, s_q, h_q, d_qk]");
  check::dtype(p.q, "q", {DType::kBFloat16});
  const int64_t b = p.q.shape[0], s_q = p.q.shape[1], h_q = p.q.shape[2], d_qk = p.q.shape[3];
  const Device dev = p.q.device;
  if (d_qk != 576 && d_qk != 512)
    check::fail("q", "head dim d_qk 576 (V32 FP8 cache) or 512 (MODEL1 FP8 cache) in dim 3", p.q);
  check::positive(s_q, "q", "s_q (dim 1)");
  check::positive(h_q, "q", "h_q (dim 2)");
  if (p.d_v != 512) throw Error("d_v", "expected 512, got " + std::to_string(p.d_v));
  check::scale(p.softmax_scale, "softmax_scale");
  const KVCacheFormat format = format_for_head_dim(static_cast<int>(d_qk));

  check_fp8_cache(p.k_cache, "k_cache", format, dev);
  check_indices(p.indices, "indices", b, s_q, dev);
  check_lengths(p.topk_length, "topk_length", b, "[b]", dev);
  check_attn_sink(p.attn_sink, h_q, dev);

  const bool extra = p.extra_k_cache.present() || p.extra_indices.present();
  if (extra) {
    if (!p.extra_k_cache.present())
      throw Error("extra_k_cache", "extra_indices given without extra_k_cache");
    if (!p.extra_indices.present())
      throw Error("extra_indices", "extra_k_cache given without extra_indices");
    check_fp8_cache(p.extra_k_cache, "extra_k_cache", format, dev);
    check_indices(p.extra_indices, "extra_indices", b, s_q, dev);
  }
  if (p.extra_topk_length.present() && !extra)
    throw Error("extra_topk_length", "given without extra_k_cache and extra_indices");
  check_lengths(p.extra_topk_length, "extra_topk_length", b, "[b]", dev);

  check_decode_outputs(p.out, p.lse, p.q, b, s_q, h_q, p.d_v, dev);

  DecodePlanConfig want;
  want.batch = static_cast<int>(b);
  want.s_q = static_cast<int>(s_q);
  want.h_q = static_cast<int>(h_q);
  want.h_kv = 1;
  want.d_qk = static_cast<int>(d_qk);
  want.sparse = true;
  want.topk = static_cast<int>(p.indices.shape[2]);
  want.extra_topk = extra ? static_cast<int>(p.extra_indices.shape[2]) : 0;
  const std::initializer_list<check::Named> ins = {{p.q, "q"},
                                                   {p.k_cache, "k_cache"},
                                                   {p.indices, "indices"},
                                                   {p.topk_length, "topk_length"},
                                                   {p.attn_sink, "attn_sink"},
                                                   {p.extra_k_cache, "extra_k_cache"},
                                                   {p.extra_indices, "extra_indices"},
                                                   {p.extra_topk_length, "extra_topk_length"}},
                                            outs = {{p.out, "out"}, {p.lse, "lse"}};
  check::outputs(outs, ins);
  check_plan(p.plan, dev, want);
  check::device_pointers(ins, outs);
}

void sparse_decode(const SparseDecodeParams& params) {
  validate(params);
  SparseDecodeParams p = params;
  p.softmax_scale = check::resolve_scale(p.softmax_scale, p.q.shape[3]);
  if (p.q.shape[0] == 0) return;
  detail::dispatch(p.q.device, "q", p, &cpu::sparse_decode, OPENMLA_CUDA_OP(sparse_decode));
}

}  // namespace openmla
