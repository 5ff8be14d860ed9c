// Bad input (SPEC §7): every check of every public entry point, one test per rule.
//
// Each test starts from a valid call (asserted to succeed on the CPU backend), breaks exactly one
// thing and checks with throws_naming() that an openmla::Error names the right argument. The
// rules every tensor argument shares (rank, dtype, sizes, strides, data pointer, device, output
// aliasing) run as parameterized tests over all entry points ("Validation/TensorRules.*/<op>"),
// looping over each tensor argument of the op; the rules of one operator (head dims, d_v, scale,
// FP8 cache layout, plans, extra pools, cu_seqlens, ...) are plain tests below them.
//
// Tensors marked as living on a CUDA device are fakes (host memory): validation runs before any
// launch, so a call with one must fail before it reaches a kernel -- either on the rule under
// test or, when every shape is right, on the device-pointer check (CUDA build) or the missing
// CUDA backend (CPU-only build), which both name the first tensor.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "common/harness.h"
#include "openmla/openmla.h"

namespace openmla::test {
namespace {

constexpr DType kBF16 = DType::kBFloat16;
constexpr DType kF16 = DType::kFloat16;
constexpr DType kF32 = DType::kFloat32;
constexpr DType kI32 = DType::kInt32;
constexpr DType kU8 = DType::kUInt8;
constexpr DType kE4M3 = DType::kFloat8E4M3;

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();
constexpr float kInf = std::numeric_limits<float>::infinity();

// The message of the openmla::Error `f` throws ("" when it throws none).
template <class F>
std::string error_message(F&& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

::testing::AssertionResult contains(const std::string& text, const std::string& part) {
  if (text.find(part) != std::string::npos) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << "'" << text << "' does not contain '" << part << "'";
}

HostTensor randn(DType dtype, std::vector<int64_t> shape, uint64_t seed) {
  HostTensor t(dtype, std::move(shape));
  std::mt19937_64 rng(seed);
  fill_randn(t, rng);
  return t;
}

HostTensor ints(std::vector<int64_t> shape, const std::vector<int32_t>& values) {
  HostTensor t(kI32, std::move(shape));
  for (size_t i = 0; i < values.size(); ++i) t.ptr<int32_t>()[i] = values[i];
  return t;
}

// An FP8 cache [pages, page_size, 1, bytes_per_token] with the natural page stride, filled by
// quantizing random bf16 values.
HostTensor fp8_cache(KVCacheFormat format, int64_t pages, int64_t page_size, uint64_t seed) {
  const int64_t bpt = format_info(format).bytes_per_token;
  HostTensor c(kU8, {pages, page_size, 1, bpt}, {fp8_page_bytes(format, page_size), bpt, bpt, 1});
  HostTensor src = randn(kBF16, {pages, page_size, 1, format_info(format).d_qk}, seed);
  QuantizeKVParams q;
  q.input = src.view;
  q.cache = c.view;
  q.format = format;
  quantize_kv_cache(q);
  return c;
}

// A DecodePlan on a CUDA device, or nullptr when this build or machine cannot make one (plans
// on CUDA allocate device buffers).
std::unique_ptr<DecodePlan> try_cuda_plan(const DecodePlanConfig& c, int index = 0) {
  if (!built_with_cuda()) return nullptr;
  try {
    return std::make_unique<DecodePlan>(cuda_device(index), c);
  } catch (const Error&) {
    return nullptr;
  }
}

#define SKIP_WITHOUT_CUDA_PLAN(plan)                                                     \
  if (!(plan))                                                                           \
  GTEST_SKIP() << "no CUDA DecodePlan can be made here (CPU-only build or no GPU); the " \
                  "plan-on-CUDA checks run where one can"

// ---------------------------------------------------------------- cases

enum class Presence { kRequired, kOptional, kPaired };  // kPaired: optional only with its pair

struct Arg {
  std::string name;
  TensorView* view;
  Presence presence;
  bool output;
};

// A valid call of one entry point: owns its host tensors, exposes its tensor arguments (in the
// order the entry point validates them) and runs the call.
struct Case {
  virtual ~Case() = default;
  Case() = default;
  Case(const Case&) = delete;
  Case& operator=(const Case&) = delete;

  virtual void run() = 0;
  virtual std::vector<Arg> args() = 0;
  // The argument whose device picks the backend, and the first one checked against it.
  virtual std::string primary() const = 0;
  virtual std::string first_dependent() const = 0;
  // (argument, dim) whose size is tied to another argument or fixed: +1 there names the argument.
  virtual std::vector<std::pair<std::string, int>> tied_dims() const = 0;
  // Puts a plan matching the call in place when the tensors are on CUDA (decode only).
  virtual bool needs_plan() const { return false; }
  virtual void set_plan(const DecodePlan*) {}
  virtual DecodePlanConfig plan_config() const { return {}; }

  TensorView& view(const std::string& name) {
    for (Arg& a : args())
      if (a.name == name) return *a.view;
    ADD_FAILURE() << "no argument " << name;
    static TensorView none;
    return none;
  }
  Arg arg(const std::string& name) {
    for (Arg& a : args())
      if (a.name == name) return a;
    ADD_FAILURE() << "no argument " << name;
    return {};
  }
  void all_on(Device d) {
    for (Arg& a : args())
      if (a.view->present()) a.view->device = d;
  }
  std::function<void()> call() {
    return [this] { run(); };
  }
};

// §1 dense decode: b=2, s_q=2, h_q=4, pages of 4 tokens.
struct DenseDecodeCase : Case {
  HostTensor q, k_cache, block_table, cache_seqlens, out, lse;
  DenseDecodeParams p;
  DenseDecodeCase(DType dt = kBF16, int64_t d = 576, int64_t h_kv = 1, int64_t b = 2) {
    const int64_t s_q = 2, h_q = 4, page = 4, pages = 5, max_pages = 2;
    q = randn(dt, {b, s_q, h_q, d}, 1);
    k_cache = randn(dt, {pages, page, h_kv, d}, 2);
    std::vector<int32_t> bt, lens;
    for (int64_t i = 0; i < b; ++i) {
      for (int64_t j = 0; j < max_pages; ++j) bt.push_back(int32_t((i * max_pages + j) % pages));
      lens.push_back(int32_t(5 + 3 * i) % 9);
    }
    block_table = ints({b, max_pages}, bt);
    cache_seqlens = ints({b}, lens);
    out = HostTensor(dt, {b, s_q, h_q, 512});
    lse = HostTensor(kF32, {b, h_q, s_q});
    p.q = q.view;
    p.k_cache = k_cache.view;
    p.block_table = block_table.view;
    p.cache_seqlens = cache_seqlens.view;
    p.out = out.view;
    p.lse = lse.view;
  }
  void run() override { dense_decode(p); }
  std::vector<Arg> args() override {
    return {{"q", &p.q, Presence::kRequired, false},
            {"k_cache", &p.k_cache, Presence::kRequired, false},
            {"block_table", &p.block_table, Presence::kRequired, false},
            {"cache_seqlens", &p.cache_seqlens, Presence::kRequired, false},
            {"out", &p.out, Presence::kRequired, true},
            {"lse", &p.lse, Presence::kRequired, true}};
  }
  std::string primary() const override { return "q"; }
  std::string first_dependent() const override { return "k_cache"; }
  std::vector<std::pair<std::string, int>> tied_dims() const override {
    return {{"k_cache", 3}, {"block_table", 0}, {"cache_seqlens", 0}, {"out", 0}, {"out", 1},
            {"out", 2},     {"out", 3},         {"lse", 0},           {"lse", 1}, {"lse", 2}};
  }
  bool needs_plan() const override { return true; }
  void set_plan(const DecodePlan* plan) override { p.plan = plan; }
  DecodePlanConfig plan_config() const override {
    DecodePlanConfig c;
    c.batch = int(p.q.shape[0]);
    c.s_q = int(p.q.shape[1]);
    c.h_q = int(p.q.shape[2]);
    c.h_kv = int(p.k_cache.shape[2]);
    c.d_qk = int(p.q.shape[3]);
    c.causal = p.causal;
    return c;
  }
};

// §3 sparse decode with every optional argument: b=2, s_q=2, h_q=4, topk 8, extra topk 4.
struct SparseDecodeCase : Case {
  HostTensor q, k_cache, indices, topk_length, attn_sink, extra_k_cache, extra_indices,
      extra_topk_length, out, lse;
  SparseDecodeParams p;
  explicit SparseDecodeCase(KVCacheFormat format = KVCacheFormat::kFP8V32) {
    const int64_t b = 2, s_q = 2, h_q = 4, page = 4, pages = 3, topk = 8, extra_topk = 4;
    const int64_t d = format_info(format).d_qk;
    q = randn(kBF16, {b, s_q, h_q, d}, 3);
    k_cache = fp8_cache(format, pages, page, 4);
    extra_k_cache = fp8_cache(format, 2, 3, 5);
    indices = HostTensor(kI32, {b, s_q, topk});
    extra_indices = HostTensor(kI32, {b, s_q, extra_topk});
    std::mt19937_64 rng(6);
    fill_uniform_int(indices, rng, -1, pages * page + 1);  // some invalid: masked
    fill_uniform_int(extra_indices, rng, -1, 2 * 3);
    topk_length = ints({b}, {8, 5});
    extra_topk_length = ints({b}, {4, 1});
    attn_sink = randn(kF32, {h_q}, 7);
    out = HostTensor(kBF16, {b, s_q, h_q, 512});
    lse = HostTensor(kF32, {b, h_q, s_q});
    p.q = q.view;
    p.k_cache = k_cache.view;
    p.indices = indices.view;
    p.topk_length = topk_length.view;
    p.attn_sink = attn_sink.view;
    p.extra_k_cache = extra_k_cache.view;
    p.extra_indices = extra_indices.view;
    p.extra_topk_length = extra_topk_length.view;
    p.out = out.view;
    p.lse = lse.view;
  }
  void run() override { sparse_decode(p); }
  std::vector<Arg> args() override {
    return {{"q", &p.q, Presence::kRequired, false},
            {"k_cache", &p.k_cache, Presence::kRequired, false},
            {"indices", &p.indices, Presence::kRequired, false},
            {"topk_length", &p.topk_length, Presence::kOptional, false},
            {"attn_sink", &p.attn_sink, Presence::kOptional, false},
            {"extra_k_cache", &p.extra_k_cache, Presence::kPaired, false},
            {"extra_indices", &p.extra_indices, Presence::kPaired, false},
            {"extra_topk_length", &p.extra_topk_length, Presence::kOptional, false},
            {"out", &p.out, Presence::kRequired, true},
            {"lse", &p.lse, Presence::kRequired, true}};
  }
  std::string primary() const override { return "q"; }
  std::string first_dependent() const override { return "k_cache"; }
  std::vector<std::pair<std::string, int>> tied_dims() const override {
    return {{"k_cache", 2},
            {"k_cache", 3},
            {"indices", 0},
            {"indices", 1},
            {"topk_length", 0},
            {"attn_sink", 0},
            {"extra_k_cache", 2},
            {"extra_k_cache", 3},
            {"extra_indices", 0},
            {"extra_indices", 1},
            {"extra_topk_length", 0},
            {"out", 0},
            {"out", 1},
            {"out", 2},
            {"out", 3},
            {"lse", 0},
            {"lse", 1},
            {"lse", 2}};
  }
  bool needs_plan() const override { return true; }
  void set_plan(const DecodePlan* plan) override { p.plan = plan; }
  DecodePlanConfig plan_config() const override {
    DecodePlanConfig c;
    c.batch = int(p.q.shape[0]);
    c.s_q = int(p.q.shape[1]);
    c.h_q = int(p.q.shape[2]);
    c.h_kv = 1;
    c.d_qk = int(p.q.shape[3]);
    c.sparse = true;
    c.topk = int(p.indices.shape[2]);
    c.extra_topk = p.extra_indices.present() ? int(p.extra_indices.shape[2]) : 0;
    return c;
  }
};

// §4 sparse prefill with attn_sink and topk_length: s_q=3, h_q=4, s_kv=10, topk 8.
struct SparsePrefillCase : Case {
  HostTensor q, kv, indices, attn_sink, topk_length, out, max_logits, lse;
  SparsePrefillParams p;
  explicit SparsePrefillCase(int64_t d = 576) {
    const int64_t s_q = 3, h_q = 4, s_kv = 10, topk = 8;
    q = randn(kBF16, {s_q, h_q, d}, 8);
    kv = randn(kBF16, {s_kv, 1, d}, 9);
    indices = HostTensor(kI32, {s_q, 1, topk});
    std::mt19937_64 rng(10);
    fill_uniform_int(indices, rng, -1, s_kv + 1);
    attn_sink = randn(kF32, {h_q}, 11);
    topk_length = ints({s_q}, {8, 3, 0});
    out = HostTensor(kBF16, {s_q, h_q, 512});
    max_logits = HostTensor(kF32, {s_q, h_q});
    lse = HostTensor(kF32, {s_q, h_q});
    p.q = q.view;
    p.kv = kv.view;
    p.indices = indices.view;
    p.attn_sink = attn_sink.view;
    p.topk_length = topk_length.view;
    p.out = out.view;
    p.max_logits = max_logits.view;
    p.lse = lse.view;
  }
  void run() override { sparse_prefill(p); }
  std::vector<Arg> args() override {
    return {{"q", &p.q, Presence::kRequired, false},
            {"kv", &p.kv, Presence::kRequired, false},
            {"indices", &p.indices, Presence::kRequired, false},
            {"attn_sink", &p.attn_sink, Presence::kOptional, false},
            {"topk_length", &p.topk_length, Presence::kOptional, false},
            {"out", &p.out, Presence::kRequired, true},
            {"max_logits", &p.max_logits, Presence::kRequired, true},
            {"lse", &p.lse, Presence::kRequired, true}};
  }
  std::string primary() const override { return "q"; }
  std::string first_dependent() const override { return "kv"; }
  std::vector<std::pair<std::string, int>> tied_dims() const override {
    return {{"kv", 1},          {"kv", 2},  {"indices", 0}, {"indices", 1}, {"attn_sink", 0},
            {"topk_length", 0}, {"out", 0}, {"out", 1},     {"out", 2},     {"max_logits", 0},
            {"max_logits", 1},  {"lse", 0}, {"lse", 1}};
  }
};

// §5 dense prefill shapes: 2 sequences (q 3+2, k 4+3), h_q=4, h_kv=2 (GQA), d_qk 192, d_v 128.
struct DenseShapes {
  HostTensor q, k, v, cu_q, cu_k;
  explicit DenseShapes(int64_t d = 192) {
    q = randn(kBF16, {5, 4, d}, 12);
    k = randn(kBF16, {7, 2, d}, 13);
    v = randn(kBF16, {7, 2, 128}, 14);
    cu_q = ints({3}, {0, 3, 5});
    cu_k = ints({3}, {0, 4, 7});
  }
};

struct DenseForwardCase : Case {
  DenseShapes s;
  HostTensor out, lse;
  DensePrefillParams p;
  explicit DenseForwardCase(int64_t d = 192) : s(d) {
    out = HostTensor(kBF16, {5, 4, 128});
    lse = HostTensor(kF32, {4, 5});
    p.q = s.q.view;
    p.k = s.k.view;
    p.v = s.v.view;
    p.cu_seqlens_q = s.cu_q.view;
    p.cu_seqlens_k = s.cu_k.view;
    p.out = out.view;
    p.lse = lse.view;
    p.causal = true;
  }
  void run() override { dense_prefill_forward(p); }
  std::vector<Arg> args() override {
    return {{"q", &p.q, Presence::kRequired, false},
            {"k", &p.k, Presence::kRequired, false},
            {"v", &p.v, Presence::kRequired, false},
            {"cu_seqlens_q", &p.cu_seqlens_q, Presence::kRequired, false},
            {"cu_seqlens_k", &p.cu_seqlens_k, Presence::kRequired, false},
            {"out", &p.out, Presence::kRequired, true},
            {"lse", &p.lse, Presence::kRequired, true}};
  }
  std::string primary() const override { return "q"; }
  std::string first_dependent() const override { return "k"; }
  std::vector<std::pair<std::string, int>> tied_dims() const override {
    return {{"k", 2},   {"v", 0},   {"v", 1},   {"v", 2},   {"cu_seqlens_k", 0},
            {"out", 0}, {"out", 1}, {"out", 2}, {"lse", 0}, {"lse", 1}};
  }
};

struct DenseBackwardCase : Case {
  DenseShapes s;
  HostTensor dout, out, lse, dq, dk, dv;
  DensePrefillBackwardParams p;
  explicit DenseBackwardCase(int64_t d = 192) : s(d) {
    dout = randn(kBF16, {5, 4, 128}, 15);
    out = HostTensor(kBF16, {5, 4, 128});
    lse = HostTensor(kF32, {4, 5});
    DensePrefillParams f;  // out and lse from the forward, as a training step has them
    f.q = s.q.view;
    f.k = s.k.view;
    f.v = s.v.view;
    f.cu_seqlens_q = s.cu_q.view;
    f.cu_seqlens_k = s.cu_k.view;
    f.out = out.view;
    f.lse = lse.view;
    f.causal = true;
    dense_prefill_forward(f);
    dq = HostTensor(kBF16, {5, 4, d});
    dk = HostTensor(kBF16, {7, 2, d});
    dv = HostTensor(kBF16, {7, 2, 128});
    p.dout = dout.view;
    p.q = s.q.view;
    p.k = s.k.view;
    p.v = s.v.view;
    p.out = out.view;
    p.lse = lse.view;
    p.cu_seqlens_q = s.cu_q.view;
    p.cu_seqlens_k = s.cu_k.view;
    p.dq = dq.view;
    p.dk = dk.view;
    p.dv = dv.view;
    p.causal = true;
  }
  void run() override { dense_prefill_backward(p); }
  std::vector<Arg> args() override {
    return {{"q", &p.q, Presence::kRequired, false},
            {"k", &p.k, Presence::kRequired, false},
            {"v", &p.v, Presence::kRequired, false},
            {"cu_seqlens_q", &p.cu_seqlens_q, Presence::kRequired, false},
            {"cu_seqlens_k", &p.cu_seqlens_k, Presence::kRequired, false},
            {"dout", &p.dout, Presence::kRequired, false},
            {"out", &p.out, Presence::kRequired, false},
            {"lse", &p.lse, Presence::kRequired, false},
            {"dq", &p.dq, Presence::kRequired, true},
            {"dk", &p.dk, Presence::kRequired, true},
            {"dv", &p.dv, Presence::kRequired, true}};
  }
  std::string primary() const override { return "q"; }
  std::string first_dependent() const override { return "k"; }
  std::vector<std::pair<std::string, int>> tied_dims() const override {
    return {{"k", 2},    {"v", 0},    {"v", 1},   {"v", 2},   {"cu_seqlens_k", 0}, {"dout", 0},
            {"dout", 1}, {"dout", 2}, {"out", 0}, {"out", 1}, {"out", 2},          {"lse", 0},
            {"lse", 1},  {"dq", 0},   {"dq", 1},  {"dq", 2},  {"dk", 0},           {"dk", 1},
            {"dk", 2},   {"dv", 0},   {"dv", 1},  {"dv", 2}};
  }
};

// §2 FP8 KV cache: 3 pages of 4 tokens.
struct QuantizeCase : Case {
  HostTensor input, cache;
  QuantizeKVParams p;
  explicit QuantizeCase(KVCacheFormat format = KVCacheFormat::kFP8V32) {
    const KVCacheFormatInfo info = format_info(format);
    input = randn(kBF16, {3, 4, 1, info.d_qk}, 16);
    cache = HostTensor(kU8, {3, 4, 1, info.bytes_per_token},
                       {fp8_page_bytes(format, 4), info.bytes_per_token, info.bytes_per_token, 1});
    p.input = input.view;
    p.cache = cache.view;
    p.format = format;
  }
  void run() override { quantize_kv_cache(p); }
  std::vector<Arg> args() override {
    return {{"input", &p.input, Presence::kRequired, false},
            {"cache", &p.cache, Presence::kRequired, true}};
  }
  std::string primary() const override { return "input"; }
  std::string first_dependent() const override { return "cache"; }
  std::vector<std::pair<std::string, int>> tied_dims() const override {
    return {{"input", 2}, {"input", 3}, {"cache", 0}, {"cache", 1}, {"cache", 2}, {"cache", 3}};
  }
};

struct DequantizeCase : Case {
  HostTensor cache, output;
  DequantizeKVParams p;
  explicit DequantizeCase(KVCacheFormat format = KVCacheFormat::kFP8V32) {
    cache = fp8_cache(format, 3, 4, 17);
    output = HostTensor(kBF16, {3, 4, 1, format_info(format).d_qk});
    p.cache = cache.view;
    p.output = output.view;
    p.format = format;
  }
  void run() override { dequantize_kv_cache(p); }
  std::vector<Arg> args() override {
    return {{"cache", &p.cache, Presence::kRequired, false},
            {"output", &p.output, Presence::kRequired, true}};
  }
  std::string primary() const override { return "cache"; }
  std::string first_dependent() const override { return "output"; }
  std::vector<std::pair<std::string, int>> tied_dims() const override {
    return {{"cache", 2}, {"cache", 3}, {"output", 0}, {"output", 1}, {"output", 2}, {"output", 3}};
  }
};

struct AppendCase : Case {
  HostTensor input, slots, cache;
  AppendKVParams p;
  explicit AppendCase(KVCacheFormat format = KVCacheFormat::kFP8V32) {
    input = randn(kBF16, {5, format_info(format).d_qk}, 18);
    slots = ints({5}, {0, 7, -1, 11, 12});  // -1 and 12 (= 3 pages * 4) are skipped
    cache = fp8_cache(format, 3, 4, 19);
    p.input = input.view;
    p.slots = slots.view;
    p.cache = cache.view;
    p.format = format;
  }
  void run() override { append_kv_cache(p); }
  std::vector<Arg> args() override {
    return {{"input", &p.input, Presence::kRequired, false},
            {"slots", &p.slots, Presence::kRequired, false},
            {"cache", &p.cache, Presence::kRequired, true}};
  }
  std::string primary() const override { return "input"; }
  std::string first_dependent() const override { return "slots"; }
  std::vector<std::pair<std::string, int>> tied_dims() const override {
    return {{"input", 1}, {"slots", 0}, {"cache", 2}, {"cache", 3}};
  }
};

using Factory = std::function<std::unique_ptr<Case>()>;

const std::map<std::string, Factory>& factories() {
  static const std::map<std::string, Factory> f = {
      {"dense_decode", [] { return std::make_unique<DenseDecodeCase>(); }},
      {"dense_decode_fp16_d512_gqa",
       [] { return std::make_unique<DenseDecodeCase>(kF16, 512, 2); }},
      {"sparse_decode_v32", [] { return std::make_unique<SparseDecodeCase>(); }},
      {"sparse_decode_model1",
       [] { return std::make_unique<SparseDecodeCase>(KVCacheFormat::kFP8Model1); }},
      {"sparse_prefill", [] { return std::make_unique<SparsePrefillCase>(); }},
      {"sparse_prefill_d512", [] { return std::make_unique<SparsePrefillCase>(512); }},
      {"dense_prefill_forward", [] { return std::make_unique<DenseForwardCase>(); }},
      {"dense_prefill_forward_d128", [] { return std::make_unique<DenseForwardCase>(128); }},
      {"dense_prefill_backward", [] { return std::make_unique<DenseBackwardCase>(); }},
      {"quantize_kv_cache_v32", [] { return std::make_unique<QuantizeCase>(); }},
      {"quantize_kv_cache_model1",
       [] { return std::make_unique<QuantizeCase>(KVCacheFormat::kFP8Model1); }},
      {"dequantize_kv_cache_v32", [] { return std::make_unique<DequantizeCase>(); }},
      {"dequantize_kv_cache_model1",
       [] { return std::make_unique<DequantizeCase>(KVCacheFormat::kFP8Model1); }},
      {"append_kv_cache_v32", [] { return std::make_unique<AppendCase>(); }},
      {"append_kv_cache_model1",
       [] { return std::make_unique<AppendCase>(KVCacheFormat::kFP8Model1); }},
  };
  return f;
}

std::vector<std::string> op_names() {
  std::vector<std::string> names;
  for (const auto& [name, f] : factories()) names.push_back(name);
  return names;
}

// ---------------------------------------------------------------- rules every tensor shares

class TensorRules : public ::testing::TestWithParam<std::string> {
 protected:
  std::unique_ptr<Case> make() { return factories().at(GetParam())(); }
  std::vector<std::string> arg_names() {
    std::vector<std::string> names;
    for (const Arg& a : make()->args()) names.push_back(a.name);
    return names;
  }
  // For each argument: a fresh valid case, `mutate` on that argument, then the call must throw
  // an Error naming it (or naming `expected(arg)` when given).
  void each_arg_names(const std::function<bool(Case&, Arg&)>& mutate,
                      const std::function<std::string(Case&, const Arg&)>& expected = nullptr) {
    for (const std::string& name : arg_names()) {
      SCOPED_TRACE("argument " + name);
      auto c = make();
      Arg a = c->arg(name);
      if (!mutate(*c, a)) continue;  // rule does not apply to this argument
      const std::string want = expected ? expected(*c, a) : a.name;
      EXPECT_TRUE(throws_naming(want.c_str(), c->call()));
    }
  }
};

INSTANTIATE_TEST_SUITE_P(Validation, TensorRules, ::testing::ValuesIn(op_names()),
                         [](const auto& info) { return info.param; });

TEST_P(TensorRules, ValidCallSucceeds) {
  auto c = make();
  EXPECT_NO_THROW(c->run());
}

TEST_P(TensorRules, MissingRequiredTensor) {
  each_arg_names([](Case&, Arg& a) {
    if (a.presence != Presence::kRequired) return false;
    a.view->ndim = -1;
    return true;
  });
}

TEST_P(TensorRules, OptionalTensorMayBeOmitted) {
  for (const std::string& name : arg_names()) {
    auto c = make();
    Arg a = c->arg(name);
    if (a.presence != Presence::kOptional) continue;
    SCOPED_TRACE("argument " + name);
    *a.view = TensorView{};
    EXPECT_NO_THROW(c->run());
  }
}

TEST_P(TensorRules, RankTooHigh) {
  each_arg_names([](Case&, Arg& a) {
    TensorView& t = *a.view;
    t.shape[t.ndim] = 1;
    t.strides[t.ndim] = 1;
    ++t.ndim;
    return true;
  });
}

TEST_P(TensorRules, RankTooLow) {
  each_arg_names([](Case&, Arg& a) {
    --a.view->ndim;
    return true;
  });
}

TEST_P(TensorRules, WrongDtype) {
  each_arg_names([](Case&, Arg& a) {
    a.view->dtype = a.view->dtype == kI32 ? kF32 : kI32;
    return true;
  });
}

TEST_P(TensorRules, UnknownDtype) {
  each_arg_names([](Case&, Arg& a) {
    a.view->dtype = static_cast<DType>(99);
    return true;
  });
}

TEST_P(TensorRules, NegativeSize) {
  each_arg_names([](Case&, Arg& a) {
    a.view->shape[0] = -1;
    return true;
  });
}

TEST_P(TensorRules, SizeOf2To31) {
  each_arg_names([](Case&, Arg& a) {
    a.view->shape[0] = int64_t(1) << 31;
    return true;
  });
}

TEST_P(TensorRules, NegativeStride) {
  each_arg_names([](Case&, Arg& a) {
    a.view->strides[0] = -1;
    return true;
  });
}

TEST_P(TensorRules, ByteExtentOverflowsInt64) {
  each_arg_names([](Case&, Arg& a) {
    TensorView& t = *a.view;
    for (int d = 0; d < t.ndim; ++d)
      if (t.shape[d] >= 2) {
        t.strides[d] = std::numeric_limits<int64_t>::max();
        return true;
      }
    return false;
  });
}

TEST_P(TensorRules, LastDimNotContiguous) {
  each_arg_names([](Case&, Arg& a) {
    TensorView& t = *a.view;
    if (t.shape[t.ndim - 1] < 2) return false;
    t.strides[t.ndim - 1] = 2;
    return true;
  });
}

TEST_P(TensorRules, NullDataWithElements) {
  each_arg_names([](Case&, Arg& a) {
    a.view->data = nullptr;
    return true;
  });
}

TEST_P(TensorRules, DataMisalignedForDtype) {
  each_arg_names([](Case&, Arg& a) {
    if (dtype_size(a.view->dtype) == 1) return false;
    a.view->data = static_cast<char*>(a.view->data) + 1;
    return true;
  });
}

TEST_P(TensorRules, TiedDimMismatch) {
  for (const auto& [name, d] : make()->tied_dims()) {
    SCOPED_TRACE("argument " + name + " dim " + std::to_string(d));
    auto c = make();
    c->view(name).shape[d] += 1;
    EXPECT_TRUE(throws_naming(name.c_str(), c->call()));
  }
}

TEST_P(TensorRules, TensorOnCudaWhilePrimaryOnCpu) {
  each_arg_names([](Case& c, Arg& a) {
    if (a.name == c.primary() || !a.view->present()) return false;
    a.view->device = cuda_device(0);
    return true;
  });
}

TEST_P(TensorRules, PrimaryOnCudaOthersOnCpu) {
  auto c = make();
  c->view(c->primary()).device = cuda_device(0);
  EXPECT_TRUE(throws_naming(c->first_dependent().c_str(), c->call()));
}

TEST_P(TensorRules, TensorOnOtherCudaIndex) {
  each_arg_names(
      [](Case& c, Arg& a) {
        c.all_on(cuda_device(0));
        a.view->device = cuda_device(1);
        return true;
      },
      [](Case& c, const Arg& a) { return a.name == c.primary() ? c.first_dependent() : a.name; });
}

TEST_P(TensorRules, TensorOnCpuIndexOtherThanPrimary) {
  // The index of a CPU device means nothing, but cpu:1 is not the device of cpu:0 tensors.
  each_arg_names(
      [](Case&, Arg& a) {
        a.view->device = Device{DeviceType::kCPU, 1};
        return true;
      },
      [](Case& c, const Arg& a) { return a.name == c.primary() ? c.first_dependent() : a.name; });
}

TEST_P(TensorRules, NegativeCudaIndex) {
  each_arg_names([](Case&, Arg& a) {
    a.view->device = cuda_device(-1);
    return true;
  });
}

TEST_P(TensorRules, UnknownDeviceType) {
  each_arg_names([](Case&, Arg& a) {
    a.view->device = Device{static_cast<DeviceType>(7), 0};
    return true;
  });
}

TEST_P(TensorRules, OutputRepeatsElements) {
  // Stride 0 on a dim of size > 1: several results written to one address.
  each_arg_names([](Case&, Arg& a) {
    if (!a.output) return false;
    TensorView& t = *a.view;
    for (int d = 0; d + 1 < t.ndim; ++d)
      if (t.shape[d] > 1) {
        t.strides[d] = 0;
        return true;
      }
    return false;
  });
}

// Names the output of the pair that is checked last (outputs are checked in argument order,
// each against every input and every earlier output).
std::string blamed(const std::vector<Arg>& args, const std::string& out, const Arg& other) {
  if (!other.output) return out;
  for (const Arg& a : args) {
    if (a.name == out) return other.name;  // `out` comes first: `other` is checked against it
    if (a.name == other.name) return out;
  }
  return out;
}

// Bytes from a tensor's data pointer to one past its last element.
int64_t extent_bytes(const TensorView& t) {
  int64_t last = 0;
  for (int d = 0; d < t.ndim; ++d) last += (t.shape[d] - 1) * t.strides[d];
  return (last + 1) * int64_t(dtype_size(t.dtype));
}

// Moves `other` to the start of a fresh zeroed buffer and `out` to `offset` bytes into it, so
// that the two overlap there and nowhere else (the buffer is large enough for both).
void share_buffer(std::vector<uint8_t>& buf, TensorView& out, TensorView& other, int64_t offset) {
  buf.assign(offset + extent_bytes(out) + extent_bytes(other) + 64, 0);
  other.data = buf.data();
  out.data = buf.data() + offset;
}

TEST_P(TensorRules, OutputSharesDataPointerWithAnotherTensor) {
  const auto proto = make();  // keeps the views `args` points to alive
  const auto args = proto->args();
  for (const Arg& o : args) {
    if (!o.output) continue;
    for (const Arg& other : args) {
      if (other.name == o.name || !other.view->present()) continue;
      SCOPED_TRACE(o.name + " at the data of " + other.name);
      auto c = make();
      std::vector<uint8_t> buf;
      share_buffer(buf, c->view(o.name), c->view(other.name), 0);
      EXPECT_TRUE(throws_naming(blamed(args, o.name, other).c_str(), c->call()));
    }
  }
}

TEST_P(TensorRules, OutputStartsInsideAContiguousTensor) {
  const auto proto = make();  // keeps the views `args` points to alive
  const auto args = proto->args();
  for (const Arg& o : args) {
    if (!o.output) continue;
    for (const Arg& other : args) {
      if (other.name == o.name || !other.view->present() || !other.view->is_contiguous() ||
          extent_bytes(*other.view) <= 16)
        continue;
      SCOPED_TRACE(o.name + " 16 bytes into " + other.name);
      auto c = make();
      std::vector<uint8_t> buf;
      share_buffer(buf, c->view(o.name), c->view(other.name), 16);
      EXPECT_TRUE(throws_naming(blamed(args, o.name, other).c_str(), c->call()));
    }
  }
}

TEST_P(TensorRules, OutputRightAfterAnotherTensorAccepted) {
  // Back to back in one buffer (as engines carve workspaces): adjacent is not overlapping.
  const auto proto = make();  // keeps the views `args` points to alive
  const auto args = proto->args();
  for (const Arg& o : args) {
    if (!o.output) continue;
    for (const Arg& other : args) {
      if (other.name == o.name || !other.view->present()) continue;
      SCOPED_TRACE(o.name + " right after " + other.name);
      auto c = make();
      std::vector<uint8_t> buf;
      // `other` reads zeros now: still valid values (empty sequences, slot 0, page 0).
      share_buffer(buf, c->view(o.name), c->view(other.name),
                   (extent_bytes(*other.view) + 15) / 16 * 16);
      EXPECT_NO_THROW(c->run());
    }
  }
}

TEST_P(TensorRules, HostMemoryMarkedAsCudaIsCaughtBeforeLaunch) {
  // Every shape right, every tensor marked cuda:0 but in host memory: the CUDA build's pointer
  // check (or a CPU-only build's missing backend) names the first tensor; nothing is launched.
  auto c = make();
  std::unique_ptr<DecodePlan> plan;
  std::string want = c->primary();
  if (c->needs_plan()) {
    plan = try_cuda_plan(c->plan_config());
    if (!plan && built_with_cuda()) GTEST_SKIP() << "no CUDA DecodePlan can be made here";
    if (!plan) want = "plan";  // a CPU-only build makes no CUDA plan, so decode stops there
    c->set_plan(plan.get());
  }
  c->all_on(cuda_device(0));
  EXPECT_TRUE(throws_naming(want.c_str(), c->call()));
}

// ---------------------------------------------------------------- messages

TEST(ValidationMessages, RankNamesExpectedLayoutAndGotShape) {
  DenseDecodeCase c;
  c.p.q.ndim = 3;
  const std::string m = error_message(c.call());
  EXPECT_TRUE(contains(m, "openmla: q: expected rank 4 [b, s_q, h_q, d_qk]"));
  EXPECT_TRUE(contains(m, "got bfloat16[2, 2, 4] strides [4608, 2304, 576] on cpu"));
}

TEST(ValidationMessages, DtypeNamesAllowedAndGot) {
  DenseDecodeCase c;
  c.p.block_table.dtype = kF32;
  const std::string m = error_message(c.call());
  EXPECT_TRUE(contains(m, "block_table: expected dtype int32"));
  EXPECT_TRUE(contains(m, "got float32[2, 2]"));
  DenseDecodeCase c2;
  c2.p.q.dtype = kF32;
  EXPECT_TRUE(
      contains(error_message(c2.call()), "expected dtype bfloat16 or float16, got float32"));
}

TEST(ValidationMessages, DimNamesExpectedSizeAndGotShape) {
  DenseDecodeCase c;
  c.p.out.shape[2] = 5;
  const std::string m = error_message(c.call());
  EXPECT_TRUE(contains(m, "out: expected size 4 in dim 2 ([b, s_q, h_q, d_v])"));
  EXPECT_TRUE(contains(m, "got bfloat16[2, 2, 5, 512]"));
}

TEST(ValidationMessages, DeviceNamesBothDevices) {
  DenseDecodeCase c;
  c.p.lse.device = cuda_device(0);
  const std::string m = error_message(c.call());
  EXPECT_TRUE(contains(m, "lse: expected a tensor on cpu (the device of q)"));
  EXPECT_TRUE(contains(m, "on cuda:0"));
}

TEST(ValidationMessages, MissingSaysNothing) {
  SparsePrefillCase c;
  c.p.kv = TensorView{};
  EXPECT_TRUE(contains(error_message(c.call()),
                       "kv: expected a tensor [s_kv, h_kv = 1, d_qk], got nothing"));
}

TEST(ValidationMessages, Fp8CacheNamesFormatAndBytes) {
  SparseDecodeCase c;
  c.p.k_cache.shape[3] = 584;
  const std::string m = error_message(c.call());
  EXPECT_TRUE(contains(m, "k_cache: expected size 656 in dim 3 (bytes per token)"));
  EXPECT_TRUE(contains(m, "got uint8[3, 4, 1, 584]"));
}

TEST(ValidationMessages, ScaleShowsTheValue) {
  DenseDecodeCase c;
  c.p.softmax_scale = -0.5f;
  EXPECT_TRUE(
      contains(error_message(c.call()), "softmax_scale: expected a finite softmax scale >= 0"));
  EXPECT_TRUE(contains(error_message(c.call()), "-0.5"));
}

TEST(ValidationMessages, AliasNamesBothTensors) {
  DenseDecodeCase c;
  c.p.lse.data = c.p.out.data;
  const std::string m = error_message(c.call());
  EXPECT_TRUE(contains(m, "lse: expected an output sharing no memory with the output out"));
  EXPECT_TRUE(contains(m, "bfloat16[2, 2, 4, 512]"));
  EXPECT_TRUE(contains(m, "got float32[2, 4, 2]"));
}

TEST(ValidationMessages, MisalignmentShowsThePointer) {
  DenseDecodeCase c;
  c.p.lse.data = static_cast<char*>(c.p.lse.data) + 2;
  const std::string m = error_message(c.call());
  EXPECT_TRUE(contains(m, "lse: expected a data pointer aligned to 4 bytes (the size of float32)"));
  EXPECT_TRUE(contains(m, "0x"));
}

TEST(ValidationMessages, PlanMismatchListsThePlanShapes) {
  DenseDecodeCase c;
  DecodePlanConfig cfg = c.plan_config();
  cfg.h_q = 8;
  auto plan = try_cuda_plan(cfg);
  SKIP_WITHOUT_CUDA_PLAN(plan);
  c.all_on(cuda_device(0));
  c.p.plan = plan.get();
  EXPECT_TRUE(contains(error_message(c.call()),
                       "plan: plan was made for other shapes (batch <= 2, s_q 2, h_q 8"));
}

// ---------------------------------------------------------------- dense decode

TEST(ValidationDenseDecode, Fp16AndD512AndGqaAccepted) {
  DenseDecodeCase c(kF16, 512, 2);
  EXPECT_NO_THROW(c.run());
}

// DenseDecodeParams::workspace is optional and ignored by the CPU backend, but a given one is
// still checked: rank 1, contiguous, on the device of q, sharing no memory with the outputs.
TEST(ValidationDenseDecode, WorkspaceCheckedAndIgnoredOnTheCpu) {
  DenseDecodeCase c;
  HostTensor ws(DType::kUInt8, {64});
  c.p.workspace = ws.view;
  EXPECT_NO_THROW(c.run());
  c.p.workspace.ndim = 2;
  c.p.workspace.shape[1] = 1;
  c.p.workspace.strides[1] = 1;
  EXPECT_TRUE(throws_naming("workspace", c.call()));
  c.p.workspace = ws.view;
  c.p.workspace.strides[0] = 2;
  EXPECT_TRUE(throws_naming("workspace", c.call()));
  c.p.workspace = ws.view;
  c.p.workspace.device = cuda_device(0);
  EXPECT_TRUE(throws_naming("workspace", c.call()));
  c.p.workspace = ws.view;
  c.p.workspace.data = c.p.out.data;
  EXPECT_TRUE(throws_naming("workspace", c.call()));
}

// A plan serves any batch up to config.batch: update() refuses more requests, naming the lengths.
TEST(ValidationDenseDecode, PlanServesBatchesUpToItsConfig) {
  DenseDecodeCase c;  // b = 2
  DecodePlanConfig cfg = c.plan_config();
  cfg.batch = 1;
  DecodePlan small(Device{}, cfg);
  EXPECT_TRUE(throws_naming("cache_seqlens", [&] { small.update(c.p.cache_seqlens); }));
  cfg.batch = 5;
  DecodePlan big(Device{}, cfg);
  EXPECT_NO_THROW(big.update(c.p.cache_seqlens));
  c.p.plan = &big;
  EXPECT_NO_THROW(c.run());  // (the CPU backend ignores plans)
}

TEST(ValidationDenseDecode, QDtypeFloat32Rejected) {
  DenseDecodeCase c;
  c.p.q.dtype = kF32;
  EXPECT_TRUE(throws_naming("q", c.call()));
}

TEST(ValidationDenseDecode, KCacheDtypeDiffersFromQ) {
  DenseDecodeCase c;
  c.p.k_cache.dtype = kF16;
  EXPECT_TRUE(throws_naming("k_cache", c.call()));
}

TEST(ValidationDenseDecode, OutDtypeDiffersFromQ) {
  DenseDecodeCase c;
  c.p.out.dtype = kF16;
  EXPECT_TRUE(throws_naming("out", c.call()));
}

TEST(ValidationDenseDecode, HeadDimNot576Or512) {
  for (int64_t d : {128, 192, 575, 1024}) {
    DenseDecodeCase c(kBF16, d);
    EXPECT_TRUE(throws_naming("q", c.call())) << "d_qk " << d;
  }
}

TEST(ValidationDenseDecode, SqZero) {
  DenseDecodeCase c;
  c.p.q.shape[1] = 0;
  EXPECT_TRUE(throws_naming("q", c.call()));
}

TEST(ValidationDenseDecode, HqZero) {
  DenseDecodeCase c;
  c.p.q.shape[2] = 0;
  EXPECT_TRUE(throws_naming("q", c.call()));
}

TEST(ValidationDenseDecode, BatchZeroIsANoOpEvenWithNullData) {
  DenseDecodeCase c(kBF16, 576, 1, 0);
  for (TensorView* t : {&c.p.q, &c.p.block_table, &c.p.cache_seqlens, &c.p.out, &c.p.lse})
    t->data = nullptr;
  EXPECT_NO_THROW(c.run());
}

TEST(ValidationDenseDecode, DvNot512) {
  for (int dv : {0, 128, 256, 576, -512}) {
    DenseDecodeCase c;
    c.p.d_v = dv;
    EXPECT_TRUE(throws_naming("d_v", c.call())) << "d_v " << dv;
  }
}

TEST(ValidationDenseDecode, SoftmaxScaleNegative) {
  DenseDecodeCase c;
  c.p.softmax_scale = -0.1f;
  EXPECT_TRUE(throws_naming("softmax_scale", c.call()));
}

TEST(ValidationDenseDecode, SoftmaxScaleNaN) {
  DenseDecodeCase c;
  c.p.softmax_scale = kNaN;
  EXPECT_TRUE(throws_naming("softmax_scale", c.call()));
}

TEST(ValidationDenseDecode, SoftmaxScaleInfinite) {
  for (float s : {kInf, -kInf}) {
    DenseDecodeCase c;
    c.p.softmax_scale = s;
    EXPECT_TRUE(throws_naming("softmax_scale", c.call())) << s;
  }
}

TEST(ValidationDenseDecode, SoftmaxScaleZeroOrPositiveAccepted) {
  for (float s : {0.0f, 0.04f, 3.0f}) {
    DenseDecodeCase c;
    c.p.softmax_scale = s;
    EXPECT_NO_THROW(c.run()) << s;
  }
}

TEST(ValidationDenseDecode, PageSizeZero) {
  DenseDecodeCase c;
  c.p.k_cache.shape[1] = 0;
  EXPECT_TRUE(throws_naming("k_cache", c.call()));
}

TEST(ValidationDenseDecode, HkvZero) {
  DenseDecodeCase c;
  c.p.k_cache.shape[2] = 0;
  EXPECT_TRUE(throws_naming("k_cache", c.call()));
}

TEST(ValidationDenseDecode, HqNotDivisibleByHkv) {
  DenseDecodeCase c(kBF16, 576, 3);  // h_q = 4
  EXPECT_TRUE(throws_naming("k_cache", c.call()));
}

TEST(ValidationDenseDecode, FreeDimsAccepted) {
  // num_pages, the block table's width and every stride but the last are free.
  DenseDecodeCase c;
  HostTensor wide = ints({2, 7}, {0, 1, 2, 3, 4, 0, 0, 2, 3, 4, 0, 1, 0, 0});
  c.p.block_table = wide.view;
  HostTensor q(kBF16, {2, 2, 4, 576}, 8);  // padded rows: non-contiguous outer dims
  c.p.q = q.view;
  HostTensor out(kBF16, {2, 2, 4, 512}, 24);
  c.p.out = out.view;
  HostTensor lse(kF32, {2, 4, 2}, 3);
  c.p.lse = lse.view;
  EXPECT_NO_THROW(c.run());
}

TEST(ValidationDenseDecode, OutAndLseFromOneBufferWithoutOverlapAccepted) {
  DenseDecodeCase c;
  const int64_t out_bytes = 2 * 2 * 4 * 512 * 2, lse_bytes = 2 * 4 * 2 * 4;
  std::vector<uint8_t> buf(out_bytes + lse_bytes + 64);
  uint8_t* base = buf.data() + (16 - reinterpret_cast<uintptr_t>(buf.data()) % 16) % 16;
  c.p.out.data = base;
  c.p.lse.data = base + out_bytes;
  EXPECT_NO_THROW(c.run());
  c.p.lse.data = base + out_bytes - 4;  // one float into out's last element
  EXPECT_TRUE(throws_naming("lse", c.call()));
}

TEST(ValidationDenseDecode, OutAliasingQRejected) {
  // In-place (out written over q) is not supported: q is read by every split of the KV.
  DenseDecodeCase c;
  c.p.out.data = c.p.q.data;
  EXPECT_TRUE(throws_naming("out", c.call()));
}

TEST(ValidationDenseDecode, CudaTensorsWithoutPlan) {
  DenseDecodeCase c;
  c.all_on(cuda_device(0));
  EXPECT_TRUE(throws_naming("plan", c.call()));
}

TEST(ValidationDenseDecode, CudaTensorsWithCpuPlan) {
  DenseDecodeCase c;
  DecodePlan plan(kCPU, c.plan_config());
  c.all_on(cuda_device(0));
  c.p.plan = &plan;
  EXPECT_TRUE(throws_naming("plan", c.call()));
}

TEST(ValidationDenseDecode, CudaTensorsWithMovedFromPlan) {
  DenseDecodeCase c;
  DecodePlan plan(kCPU, c.plan_config());
  DecodePlan other = std::move(plan);
  c.all_on(cuda_device(0));
  c.p.plan = &plan;  // NOLINT(bugprone-use-after-move): that is the point
  EXPECT_TRUE(throws_naming("plan", c.call()));
}

TEST(ValidationDenseDecode, CpuIgnoresThePlan) {
  DenseDecodeCase c;
  DecodePlanConfig cfg = c.plan_config();
  cfg.batch = 7;
  cfg.h_q = 128;
  DecodePlan plan(kCPU, cfg);
  c.p.plan = &plan;
  EXPECT_NO_THROW(c.run());
  DecodePlan other = std::move(plan);
  EXPECT_NO_THROW(c.run());  // even a moved-from one: the CPU reads nothing from it
}

TEST(ValidationDenseDecode, PlanOnOtherCudaIndex) {
  DenseDecodeCase c;
  auto plan = try_cuda_plan(c.plan_config(), 0);
  SKIP_WITHOUT_CUDA_PLAN(plan);
  c.all_on(cuda_device(1));
  c.p.plan = plan.get();
  EXPECT_TRUE(throws_naming("plan", c.call()));
}

TEST(ValidationDenseDecode, PlanForOtherShapes) {
  const std::vector<std::pair<const char*, std::function<void(DecodePlanConfig&)>>> changes = {
      {"batch", [](DecodePlanConfig& c) { c.batch = 3; }},
      {"s_q", [](DecodePlanConfig& c) { c.s_q = 1; }},
      {"h_q", [](DecodePlanConfig& c) { c.h_q = 8; }},
      {"h_kv", [](DecodePlanConfig& c) { c.h_kv = 2; }},
      {"d_qk", [](DecodePlanConfig& c) { c.d_qk = 512; }},
      {"causal", [](DecodePlanConfig& c) { c.causal = true; }},
      {"sparse", [](DecodePlanConfig& c) { c.sparse = true; }},
  };
  for (const auto& [field, change] : changes) {
    SCOPED_TRACE(field);
    DenseDecodeCase c;
    DecodePlanConfig cfg = c.plan_config();
    change(cfg);
    auto plan = try_cuda_plan(cfg);
    SKIP_WITHOUT_CUDA_PLAN(plan);
    c.all_on(cuda_device(0));
    c.p.plan = plan.get();
    EXPECT_TRUE(throws_naming("plan", c.call()));
  }
}

TEST(ValidationDenseDecode, CausalCallNeedsACausalPlan) {
  DenseDecodeCase c;
  auto plan = try_cuda_plan(c.plan_config());  // causal = false
  SKIP_WITHOUT_CUDA_PLAN(plan);
  c.all_on(cuda_device(0));
  c.p.plan = plan.get();
  c.p.causal = true;
  EXPECT_TRUE(throws_naming("plan", c.call()));
}

// ---------------------------------------------------------------- sparse decode

TEST(ValidationSparseDecode, QFp16Rejected) {
  SparseDecodeCase c;
  c.p.q.dtype = kF16;
  EXPECT_TRUE(throws_naming("q", c.call()));
}

TEST(ValidationSparseDecode, OutFp16Rejected) {
  SparseDecodeCase c;
  c.p.out.dtype = kF16;
  EXPECT_TRUE(throws_naming("out", c.call()));
}

TEST(ValidationSparseDecode, HeadDimWithoutFp8Format) {
  for (int64_t d : {128, 192, 511, 577}) {
    SparseDecodeCase c;
    c.p.q.shape[3] = d;
    EXPECT_TRUE(throws_naming("q", c.call())) << "d_qk " << d;
  }
}

TEST(ValidationSparseDecode, SqZero) {
  SparseDecodeCase c;
  c.p.q.shape[1] = 0;
  EXPECT_TRUE(throws_naming("q", c.call()));
}

TEST(ValidationSparseDecode, HqZero) {
  SparseDecodeCase c;
  c.p.q.shape[2] = 0;
  EXPECT_TRUE(throws_naming("q", c.call()));
}

TEST(ValidationSparseDecode, DvNot512) {
  SparseDecodeCase c;
  c.p.d_v = 448;
  EXPECT_TRUE(throws_naming("d_v", c.call()));
}

TEST(ValidationSparseDecode, SoftmaxScaleNegativeNaNInf) {
  for (float s : {-1.0f, kNaN, kInf}) {
    SparseDecodeCase c;
    c.p.softmax_scale = s;
    EXPECT_TRUE(throws_naming("softmax_scale", c.call())) << s;
  }
}

TEST(ValidationSparseDecode, Float8E4M3CacheDtypeAccepted) {
  SparseDecodeCase c;
  c.p.k_cache.dtype = kE4M3;
  c.p.extra_k_cache.dtype = kE4M3;
  EXPECT_NO_THROW(c.run());
}

TEST(ValidationSparseDecode, CacheOfBf16Rejected) {
  SparseDecodeCase c;
  c.p.k_cache.dtype = kBF16;
  EXPECT_TRUE(throws_naming("k_cache", c.call()));
}

// The FP8 cache rules, for the main and the extra pool.
class Fp8CacheRules : public ::testing::TestWithParam<const char*> {
 protected:
  TensorView& cache(SparseDecodeCase& c) {
    return std::string(GetParam()) == "k_cache" ? c.p.k_cache : c.p.extra_k_cache;
  }
};
INSTANTIATE_TEST_SUITE_P(Validation, Fp8CacheRules, ::testing::Values("k_cache", "extra_k_cache"),
                         [](const auto& info) { return std::string(info.param); });

TEST_P(Fp8CacheRules, V32WrongBytesPerToken) {
  SparseDecodeCase c;
  cache(c).shape[3] = 584;
  EXPECT_TRUE(throws_naming(GetParam(), c.call()));
}

TEST_P(Fp8CacheRules, Model1WrongBytesPerToken) {
  SparseDecodeCase c(KVCacheFormat::kFP8Model1);
  cache(c).shape[3] = 656;
  EXPECT_TRUE(throws_naming(GetParam(), c.call()));
}

TEST_P(Fp8CacheRules, HkvNot1) {
  SparseDecodeCase c;
  cache(c).shape[2] = 2;
  EXPECT_TRUE(throws_naming(GetParam(), c.call()));
}

TEST_P(Fp8CacheRules, PageSizeZero) {
  SparseDecodeCase c;
  cache(c).shape[1] = 0;
  EXPECT_TRUE(throws_naming(GetParam(), c.call()));
}

TEST_P(Fp8CacheRules, WrongTokenStride) {
  for (int64_t s : {655, 657, 1312}) {
    SparseDecodeCase c;
    cache(c).strides[1] = s;
    EXPECT_TRUE(throws_naming(GetParam(), c.call())) << "token stride " << s;
  }
}

TEST_P(Fp8CacheRules, PageStrideTooSmall) {
  SparseDecodeCase c;
  TensorView& k = cache(c);
  k.strides[0] = k.shape[1] * 656 - 1;
  EXPECT_TRUE(throws_naming(GetParam(), c.call()));
}

TEST_P(Fp8CacheRules, Model1PageStrideTooSmall) {
  SparseDecodeCase c(KVCacheFormat::kFP8Model1);
  TensorView& k = cache(c);
  k.strides[0] = k.shape[1] * 584 - 1;
  EXPECT_TRUE(throws_naming(GetParam(), c.call()));
}

TEST_P(Fp8CacheRules, LargerPageStrideAccepted) {
  // Engines pad pages (and slice caches out of bigger buffers): any stride >= the page is fine.
  SparseDecodeCase c;
  TensorView& k = cache(c);
  const int64_t pages = k.shape[0], page = k.shape[1];
  HostTensor bigger(kU8, {pages, page, 1, 656}, {page * 656 + 64, 656, 656, 1});
  k = bigger.view;
  EXPECT_NO_THROW(c.run());
}

TEST(ValidationSparseDecode, PageOfOneTokenHasNoTokenStride) {
  SparseDecodeCase c;
  HostTensor one = fp8_cache(KVCacheFormat::kFP8V32, 6, 1, 20);
  one.view.strides[1] = 12345;  // meaningless for a page of one token
  c.p.k_cache = one.view;
  EXPECT_NO_THROW(c.run());
}

TEST(ValidationSparseDecode, ExtraCacheWithoutExtraIndices) {
  SparseDecodeCase c;
  c.p.extra_indices = TensorView{};
  EXPECT_TRUE(throws_naming("extra_indices", c.call()));
}

TEST(ValidationSparseDecode, ExtraIndicesWithoutExtraCache) {
  SparseDecodeCase c;
  c.p.extra_k_cache = TensorView{};
  EXPECT_TRUE(throws_naming("extra_k_cache", c.call()));
}

TEST(ValidationSparseDecode, ExtraTopkLengthWithoutExtraPool) {
  SparseDecodeCase c;
  c.p.extra_k_cache = TensorView{};
  c.p.extra_indices = TensorView{};
  EXPECT_TRUE(throws_naming("extra_topk_length", c.call()));
}

TEST(ValidationSparseDecode, ExtraPoolOmittedEntirely) {
  SparseDecodeCase c;
  c.p.extra_k_cache = TensorView{};
  c.p.extra_indices = TensorView{};
  c.p.extra_topk_length = TensorView{};
  c.p.topk_length = TensorView{};
  c.p.attn_sink = TensorView{};
  EXPECT_NO_THROW(c.run());
}

TEST(ValidationSparseDecode, ExtraCacheOfTheOtherFormat) {
  SparseDecodeCase c;  // V32 (d_qk 576)
  HostTensor m1 = fp8_cache(KVCacheFormat::kFP8Model1, 2, 3, 21);
  c.p.extra_k_cache = m1.view;
  EXPECT_TRUE(throws_naming("extra_k_cache", c.call()));
}

TEST(ValidationSparseDecode, TopkZeroAccepted) {
  // No index selected: every query attends to nothing (out 0, lse +inf); valid.
  SparseDecodeCase c;
  c.p.indices.shape[2] = 0;
  c.p.extra_indices.shape[2] = 0;
  EXPECT_NO_THROW(c.run());
}

TEST(ValidationSparseDecode, CudaTensorsWithoutPlan) {
  SparseDecodeCase c;
  c.all_on(cuda_device(0));
  EXPECT_TRUE(throws_naming("plan", c.call()));
}

TEST(ValidationSparseDecode, CudaTensorsWithCpuPlan) {
  SparseDecodeCase c;
  DecodePlan plan(kCPU, c.plan_config());
  c.all_on(cuda_device(0));
  c.p.plan = &plan;
  EXPECT_TRUE(throws_naming("plan", c.call()));
}

TEST(ValidationSparseDecode, PlanForOtherShapes) {
  const std::vector<std::pair<const char*, std::function<void(DecodePlanConfig&)>>> changes = {
      {"batch", [](DecodePlanConfig& c) { c.batch = 1; }},
      {"s_q", [](DecodePlanConfig& c) { c.s_q = 1; }},
      {"h_q", [](DecodePlanConfig& c) { c.h_q = 64; }},
      {"d_qk", [](DecodePlanConfig& c) { c.d_qk = 512; }},
      {"dense plan", [](DecodePlanConfig& c) { c.sparse = false; }},
      {"topk", [](DecodePlanConfig& c) { c.topk = 2048; }},
      {"extra_topk", [](DecodePlanConfig& c) { c.extra_topk = 0; }},
  };
  for (const auto& [field, change] : changes) {
    SCOPED_TRACE(field);
    SparseDecodeCase c;
    DecodePlanConfig cfg = c.plan_config();
    change(cfg);
    auto plan = try_cuda_plan(cfg);
    SKIP_WITHOUT_CUDA_PLAN(plan);
    c.all_on(cuda_device(0));
    c.p.plan = plan.get();
    EXPECT_TRUE(throws_naming("plan", c.call()));
  }
}

TEST(ValidationSparseDecode, PlanWithExtraTopkButCallWithoutExtraPool) {
  SparseDecodeCase c;
  auto plan = try_cuda_plan(c.plan_config());  // extra_topk 4
  SKIP_WITHOUT_CUDA_PLAN(plan);
  c.p.extra_k_cache = TensorView{};
  c.p.extra_indices = TensorView{};
  c.p.extra_topk_length = TensorView{};
  c.all_on(cuda_device(0));
  c.p.plan = plan.get();
  EXPECT_TRUE(throws_naming("plan", c.call()));
}

// ---------------------------------------------------------------- sparse prefill

TEST(ValidationSparsePrefill, QFp16Rejected) {
  SparsePrefillCase c;
  c.p.q.dtype = kF16;
  EXPECT_TRUE(throws_naming("q", c.call()));
}

TEST(ValidationSparsePrefill, KvFp16Rejected) {
  SparsePrefillCase c;
  c.p.kv.dtype = kF16;
  EXPECT_TRUE(throws_naming("kv", c.call()));
}

TEST(ValidationSparsePrefill, HeadDimNot576Or512) {
  for (int64_t d : {128, 192, 640}) {
    SparsePrefillCase c(d);
    EXPECT_TRUE(throws_naming("q", c.call())) << "d_qk " << d;
  }
}

TEST(ValidationSparsePrefill, HqZero) {
  SparsePrefillCase c;
  c.p.q.shape[1] = 0;
  EXPECT_TRUE(throws_naming("q", c.call()));
}

TEST(ValidationSparsePrefill, SqZeroIsANoOp) {
  SparsePrefillCase c;
  for (TensorView* t :
       {&c.p.q, &c.p.indices, &c.p.topk_length, &c.p.out, &c.p.max_logits, &c.p.lse}) {
    t->shape[0] = 0;
    t->data = nullptr;
  }
  EXPECT_NO_THROW(c.run());
}

TEST(ValidationSparsePrefill, KvWithTwoHeads) {
  SparsePrefillCase c;
  c.p.kv.shape[1] = 2;
  EXPECT_TRUE(throws_naming("kv", c.call()));
}

TEST(ValidationSparsePrefill, IndicesWithTwoHeads) {
  SparsePrefillCase c;
  c.p.indices.shape[1] = 2;
  EXPECT_TRUE(throws_naming("indices", c.call()));
}

TEST(ValidationSparsePrefill, DvNot512) {
  SparsePrefillCase c;
  c.p.d_v = 576;
  EXPECT_TRUE(throws_naming("d_v", c.call()));
}

TEST(ValidationSparsePrefill, SoftmaxScaleNegativeNaNInf) {
  for (float s : {-2.0f, kNaN, -kInf}) {
    SparsePrefillCase c;
    c.p.softmax_scale = s;
    EXPECT_TRUE(throws_naming("softmax_scale", c.call())) << s;
  }
}

TEST(ValidationSparsePrefill, EmptyKvAndTopkZeroAccepted) {
  SparsePrefillCase c;
  c.p.kv.shape[0] = 0;  // every index is then invalid: masked
  EXPECT_NO_THROW(c.run());
  SparsePrefillCase c2;
  c2.p.indices.shape[2] = 0;
  EXPECT_NO_THROW(c2.run());
}

TEST(ValidationSparsePrefill, LseAliasingMaxLogits) {
  SparsePrefillCase c;
  c.p.lse.data = c.p.max_logits.data;
  EXPECT_TRUE(throws_naming("lse", c.call()));
}

// ---------------------------------------------------------------- dense prefill

TEST(ValidationDensePrefill, HeadDimNot192Or128) {
  for (int64_t d : {64, 256, 576}) {
    DenseForwardCase c(d);
    EXPECT_TRUE(throws_naming("q", c.call())) << "d_qk " << d;
  }
}

TEST(ValidationDensePrefill, QFp16Rejected) {
  DenseForwardCase c;
  c.p.q.dtype = kF16;
  EXPECT_TRUE(throws_naming("q", c.call()));
}

TEST(ValidationDensePrefill, HqZero) {
  DenseForwardCase c;
  c.p.q.shape[1] = 0;
  EXPECT_TRUE(throws_naming("q", c.call()));
}

TEST(ValidationDensePrefill, SoftmaxScaleNegativeNaNInf) {
  for (float s : {-1e-3f, kNaN, kInf}) {
    DenseForwardCase c;
    c.p.softmax_scale = s;
    EXPECT_TRUE(throws_naming("softmax_scale", c.call())) << s;
    DenseBackwardCase b;
    b.p.softmax_scale = s;
    EXPECT_TRUE(throws_naming("softmax_scale", b.call())) << s;
  }
}

TEST(ValidationDensePrefill, MaxSeqlenNegative) {
  DenseForwardCase c;
  c.p.max_seqlen_q = -1;
  EXPECT_TRUE(throws_naming("max_seqlen_q", c.call()));
  DenseForwardCase c2;
  c2.p.max_seqlen_k = -1;
  EXPECT_TRUE(throws_naming("max_seqlen_k", c2.call()));
  DenseBackwardCase b;
  b.p.max_seqlen_k = -5;
  EXPECT_TRUE(throws_naming("max_seqlen_k", b.call()));
}

TEST(ValidationDensePrefill, MaxSeqlenGivenAccepted) {
  DenseForwardCase c;
  c.p.max_seqlen_q = 3;
  c.p.max_seqlen_k = 4;
  EXPECT_NO_THROW(c.run());
}

TEST(ValidationDensePrefill, HkvZero) {
  DenseForwardCase c;
  c.p.k.shape[1] = 0;
  EXPECT_TRUE(throws_naming("k", c.call()));
}

TEST(ValidationDensePrefill, HqNotDivisibleByHkv) {
  DenseForwardCase c;
  c.p.k.shape[1] = 3;  // h_q = 4
  EXPECT_TRUE(throws_naming("k", c.call()));
}

TEST(ValidationDensePrefill, DvNot128) {
  DenseForwardCase c;
  c.p.v.shape[2] = 192;
  EXPECT_TRUE(throws_naming("v", c.call()));
}

TEST(ValidationDensePrefill, CuSeqlensQEmpty) {
  DenseForwardCase c;
  c.p.cu_seqlens_q.shape[0] = 0;
  EXPECT_TRUE(throws_naming("cu_seqlens_q", c.call()));
  DenseBackwardCase b;
  b.p.cu_seqlens_q.shape[0] = 0;
  EXPECT_TRUE(throws_naming("cu_seqlens_q", b.call()));
}

TEST(ValidationDensePrefill, CuSeqlensSizesDiffer) {
  for (int64_t n : {2, 4}) {
    DenseForwardCase c;
    c.p.cu_seqlens_k.shape[0] = n;
    EXPECT_TRUE(throws_naming("cu_seqlens_k", c.call())) << n;
  }
  DenseForwardCase c;
  c.p.cu_seqlens_q.shape[0] = 2;  // batch 1 for q, 2 for k: blamed on cu_seqlens_k
  EXPECT_TRUE(throws_naming("cu_seqlens_k", c.call()));
}

TEST(ValidationDensePrefill, EmptyBatchIsANoOp) {
  DenseForwardCase c;
  HostTensor zero = ints({1}, {0});
  for (TensorView* t : {&c.p.q, &c.p.k, &c.p.v, &c.p.out}) {
    t->shape[0] = 0;
    t->data = nullptr;
  }
  c.p.lse.shape[1] = 0;
  c.p.cu_seqlens_q = zero.view;
  c.p.cu_seqlens_k = zero.view;
  EXPECT_NO_THROW(c.run());
}

TEST(ValidationDensePrefill, LseHeadMajor) {
  // lse is [h_q, total_q]; the token-major [total_q, h_q] is rejected.
  DenseForwardCase c;
  c.p.lse.shape[0] = 5;
  c.p.lse.shape[1] = 4;
  c.p.lse.strides[0] = 4;
  EXPECT_TRUE(throws_naming("lse", c.call()));
}

TEST(ValidationDensePrefill, QkvViewsOfOneFusedBufferAccepted) {
  // q, k, v as views of one [total, 3, h, d] buffer (inputs may share memory).
  DenseForwardCase c;
  HostTensor qkv(kBF16, {5, 3, 4, 192});
  c.p.q = TensorView::strided(qkv.view.data, kBF16, kCPU, {5, 4, 192}, {3 * 4 * 192, 192, 1});
  c.p.k = TensorView::strided(static_cast<uint16_t*>(qkv.view.data) + 4 * 192, kBF16, kCPU,
                              {5, 4, 192}, {3 * 4 * 192, 192, 1});
  HostTensor v(kBF16, {5, 4, 128});
  c.p.v = v.view;
  HostTensor cu = ints({3}, {0, 3, 5});
  c.p.cu_seqlens_k = cu.view;
  EXPECT_NO_THROW(c.run());
}

TEST(ValidationDensePrefillBackward, FusedDkDvInterleavedAccepted) {
  // dk and dv as interleaved views of one [total_k, h_kv, 192 + 128] buffer: they share no
  // element (neither is contiguous, their data pointers differ), so they are accepted.
  DenseBackwardCase c;
  HostTensor fused(kBF16, {7, 2, 320});
  auto* base = static_cast<uint16_t*>(fused.view.data);
  c.p.dk = TensorView::strided(base, kBF16, kCPU, {7, 2, 192}, {2 * 320, 320, 1});
  c.p.dv = TensorView::strided(base + 192, kBF16, kCPU, {7, 2, 128}, {2 * 320, 320, 1});
  EXPECT_NO_THROW(c.run());
}

TEST(ValidationDensePrefillBackward, DqAliasingDout) {
  DenseBackwardCase c;
  c.p.dq.data = c.p.dout.data;
  EXPECT_TRUE(throws_naming("dq", c.call()));
}

TEST(ValidationDensePrefillBackward, DvAliasingDk) {
  DenseBackwardCase c;
  c.p.dv.data = c.p.dk.data;
  EXPECT_TRUE(throws_naming("dv", c.call()));
}

TEST(ValidationDensePrefillBackward, OnlyKeysIsStillRun) {
  // total_q = 0 with keys: dk and dv must still be written (zeros), so the call is valid.
  DenseBackwardCase c;
  HostTensor cu_q = ints({3}, {0, 0, 0});
  c.p.cu_seqlens_q = cu_q.view;
  for (TensorView* t : {&c.p.q, &c.p.dout, &c.p.out, &c.p.dq}) t->shape[0] = 0;
  c.p.lse.shape[1] = 0;
  EXPECT_NO_THROW(c.run());
}

// ---------------------------------------------------------------- FP8 KV-cache tools

TEST(ValidationKVCache, UnknownFormat) {
  const auto bad = static_cast<KVCacheFormat>(7);
  QuantizeCase q;
  q.p.format = bad;
  EXPECT_TRUE(throws_naming("format", q.call()));
  DequantizeCase d;
  d.p.format = bad;
  EXPECT_TRUE(throws_naming("format", d.call()));
  AppendCase a;
  a.p.format = bad;
  EXPECT_TRUE(throws_naming("format", a.call()));
}

TEST(ValidationKVCache, QuantizeFormatDoesNotMatchInputHeadDim) {
  QuantizeCase q(KVCacheFormat::kFP8Model1);
  q.p.format = KVCacheFormat::kFP8V32;  // input is 512 wide
  EXPECT_TRUE(throws_naming("input", q.call()));
}

TEST(ValidationKVCache, DequantizeFormatDoesNotMatchCache) {
  DequantizeCase d(KVCacheFormat::kFP8V32);
  d.p.format = KVCacheFormat::kFP8Model1;  // cache is 656 bytes per token
  EXPECT_TRUE(throws_naming("cache", d.call()));
}

TEST(ValidationKVCache, AppendFormatDoesNotMatchInput) {
  AppendCase a(KVCacheFormat::kFP8V32);
  a.p.format = KVCacheFormat::kFP8Model1;
  EXPECT_TRUE(throws_naming("input", a.call()));
}

TEST(ValidationKVCache, QuantizeInputPageSizeZero) {
  QuantizeCase q;
  q.p.input.shape[1] = 0;
  EXPECT_TRUE(throws_naming("input", q.call()));
}

TEST(ValidationKVCache, CachePageSizeZero) {
  DequantizeCase d;
  d.p.cache.shape[1] = 0;
  EXPECT_TRUE(throws_naming("cache", d.call()));
  AppendCase a;
  a.p.cache.shape[1] = 0;
  EXPECT_TRUE(throws_naming("cache", a.call()));
}

TEST(ValidationKVCache, CacheWrongTokenStride) {
  QuantizeCase q;
  q.p.cache.strides[1] = 660;
  EXPECT_TRUE(throws_naming("cache", q.call()));
  AppendCase a(KVCacheFormat::kFP8Model1);
  a.p.cache.strides[1] = 576;
  EXPECT_TRUE(throws_naming("cache", a.call()));
}

TEST(ValidationKVCache, CachePageStrideTooSmall) {
  QuantizeCase q;
  q.p.cache.strides[0] = 4 * 656 - 16;
  EXPECT_TRUE(throws_naming("cache", q.call()));
  DequantizeCase d(KVCacheFormat::kFP8Model1);
  d.p.cache.strides[0] = 4 * 584 - 1;
  EXPECT_TRUE(throws_naming("cache", d.call()));
}

TEST(ValidationKVCache, CacheHkvNot1) {
  AppendCase a;
  a.p.cache.shape[2] = 2;
  EXPECT_TRUE(throws_naming("cache", a.call()));
}

TEST(ValidationKVCache, BfPagesHkvNot1) {
  QuantizeCase q;
  q.p.input.shape[2] = 2;
  EXPECT_TRUE(throws_naming("input", q.call()));
  DequantizeCase d;
  d.p.output.shape[2] = 2;
  EXPECT_TRUE(throws_naming("output", d.call()));
}

TEST(ValidationKVCache, Float8E4M3CacheAccepted) {
  QuantizeCase q;
  q.p.cache.dtype = kE4M3;
  EXPECT_NO_THROW(q.run());
  DequantizeCase d;
  d.p.cache.dtype = kE4M3;
  EXPECT_NO_THROW(d.run());
  AppendCase a;
  a.p.cache.dtype = kE4M3;
  EXPECT_NO_THROW(a.run());
}

TEST(ValidationKVCache, Float32InputRejected) {
  QuantizeCase q;
  q.p.input.dtype = kF32;
  EXPECT_TRUE(throws_naming("input", q.call()));
  AppendCase a;
  a.p.input.dtype = kF16;
  EXPECT_TRUE(throws_naming("input", a.call()));
  DequantizeCase d;
  d.p.output.dtype = kF16;
  EXPECT_TRUE(throws_naming("output", d.call()));
}

TEST(ValidationKVCache, NothingToDoIsANoOp) {
  AppendCase a;
  a.p.input.shape[0] = 0;
  a.p.input.data = nullptr;
  a.p.slots.shape[0] = 0;
  a.p.slots.data = nullptr;
  EXPECT_NO_THROW(a.run());
  QuantizeCase q;
  q.p.input.shape[0] = 0;
  q.p.cache.shape[0] = 0;
  EXPECT_NO_THROW(q.run());
}

TEST(ValidationKVCache, AppendCacheAliasingInput) {
  AppendCase a;
  a.p.cache.data = a.p.input.data;
  EXPECT_TRUE(throws_naming("cache", a.call()));
}

// ---------------------------------------------------------------- DecodePlan

DecodePlanConfig valid_config(bool sparse = false) {
  DecodePlanConfig c;
  c.batch = 2;
  c.s_q = 2;
  c.h_q = 4;
  c.h_kv = 1;
  c.d_qk = 576;
  c.sparse = sparse;
  c.topk = sparse ? 8 : 0;
  return c;
}

TEST(ValidationDecodePlan, ValidCpuPlan) {
  DecodePlan plan(kCPU, valid_config());
  EXPECT_EQ(plan.config().h_q, 4);
  EXPECT_EQ(plan.device(), kCPU);
  HostTensor lens = ints({2}, {3, 9});
  EXPECT_NO_THROW(plan.update(lens.view));
  DecodePlan sparse(kCPU, valid_config(true));
  EXPECT_NO_THROW(sparse.update(TensorView{}));  // sparse: cache_seqlens may be left out
  EXPECT_NO_THROW(sparse.update(lens.view));     // or hold topk_length
}

TEST(ValidationDecodePlan, ConfigBad) {
  const std::vector<std::tuple<const char*, const char*, std::function<void(DecodePlanConfig&)>>>
      cases = {
          {"batch -1", "config.batch", [](DecodePlanConfig& c) { c.batch = -1; }},
          {"s_q 0", "config.s_q", [](DecodePlanConfig& c) { c.s_q = 0; }},
          {"s_q -1", "config.s_q", [](DecodePlanConfig& c) { c.s_q = -1; }},
          {"h_q 0", "config.h_q", [](DecodePlanConfig& c) { c.h_q = 0; }},
          {"h_kv 0", "config.h_kv", [](DecodePlanConfig& c) { c.h_kv = 0; }},
          {"h_q % h_kv", "config.h_kv", [](DecodePlanConfig& c) { c.h_kv = 3; }},
          {"d_qk 128", "config.d_qk", [](DecodePlanConfig& c) { c.d_qk = 128; }},
          {"d_qk 192", "config.d_qk", [](DecodePlanConfig& c) { c.d_qk = 192; }},
          {"num_sms -1", "config.num_sms", [](DecodePlanConfig& c) { c.num_sms = -1; }},
          {"s_q * h_q > 2^31", "config.s_q",
           [](DecodePlanConfig& c) {
             c.s_q = 1 << 16;
             c.h_q = 1 << 16;
           }},
          {"sparse topk -1", "config.topk",
           [](DecodePlanConfig& c) {
             c.sparse = true;
             c.topk = -1;
           }},
          {"sparse extra_topk -1", "config.extra_topk",
           [](DecodePlanConfig& c) {
             c.sparse = true;
             c.extra_topk = -1;
           }},
          {"sparse h_kv 2", "config.h_kv",
           [](DecodePlanConfig& c) {
             c.sparse = true;
             c.h_kv = 2;
           }},
          {"sparse causal", "config.causal",
           [](DecodePlanConfig& c) {
             c.sparse = true;
             c.causal = true;
           }},
      };
  for (const auto& [what, arg, change] : cases) {
    SCOPED_TRACE(what);
    DecodePlanConfig c = valid_config();
    change(c);
    EXPECT_TRUE(throws_naming(arg, [&] { DecodePlan plan(kCPU, c); }));
  }
}

TEST(ValidationDecodePlan, ConfigEdgesAccepted) {
  DecodePlanConfig c = valid_config();
  c.batch = 0;
  EXPECT_NO_THROW({ DecodePlan plan(kCPU, c); });
  c = valid_config();
  c.topk = -1;  // topk means nothing to a dense plan
  c.h_kv = 2;
  c.d_qk = 512;
  c.causal = true;
  c.num_sms = 7;
  EXPECT_NO_THROW({ DecodePlan plan(kCPU, c); });
}

TEST(ValidationDecodePlan, NegativeCudaIndex) {
  EXPECT_TRUE(throws_naming("device", [] { DecodePlan plan(cuda_device(-1), valid_config()); }));
}

TEST(ValidationDecodePlan, UnknownDeviceType) {
  EXPECT_TRUE(throws_naming("device", [] {
    DecodePlan plan(Device{static_cast<DeviceType>(5), 0}, valid_config());
  }));
}

TEST(ValidationDecodePlan, CudaPlanInCpuOnlyBuild) {
  if (built_with_cuda()) GTEST_SKIP() << "this build has the CUDA backend";
  EXPECT_TRUE(throws_naming("device", [] { DecodePlan plan(cuda_device(0), valid_config()); }));
}

TEST(ValidationDecodePlan, UpdateWithoutCacheSeqlens) {
  DecodePlan plan(kCPU, valid_config());
  EXPECT_TRUE(throws_naming("cache_seqlens", [&] { plan.update(TensorView{}); }));
}

TEST(ValidationDecodePlan, UpdateCacheSeqlensWrongRank) {
  DecodePlan plan(kCPU, valid_config());
  HostTensor lens = ints({2, 1}, {3, 9});
  EXPECT_TRUE(throws_naming("cache_seqlens", [&] { plan.update(lens.view); }));
}

TEST(ValidationDecodePlan, UpdateCacheSeqlensWrongDtype) {
  DecodePlan plan(kCPU, valid_config());
  HostTensor lens(kF32, {2});
  EXPECT_TRUE(throws_naming("cache_seqlens", [&] { plan.update(lens.view); }));
}

TEST(ValidationDecodePlan, UpdateCacheSeqlensWrongBatch) {
  DecodePlan plan(kCPU, valid_config());
  HostTensor lens = ints({3}, {3, 9, 1});
  EXPECT_TRUE(throws_naming("cache_seqlens", [&] { plan.update(lens.view); }));
  DecodePlan sparse(kCPU, valid_config(true));
  EXPECT_TRUE(throws_naming("cache_seqlens", [&] { sparse.update(lens.view); }));
}

TEST(ValidationDecodePlan, UpdateCacheSeqlensNotContiguousOrNull) {
  DecodePlan plan(kCPU, valid_config());
  HostTensor lens = ints({2}, {3, 9});
  TensorView t = lens.view;
  t.strides[0] = 2;
  EXPECT_TRUE(throws_naming("cache_seqlens", [&] { plan.update(t); }));
  t = lens.view;
  t.data = nullptr;
  EXPECT_TRUE(throws_naming("cache_seqlens", [&] { plan.update(t); }));
}

TEST(ValidationDecodePlan, UpdateCacheSeqlensOnOtherDevice) {
  DecodePlan plan(kCPU, valid_config());
  HostTensor lens = ints({2}, {3, 9});
  TensorView t = lens.view;
  t.device = cuda_device(0);
  EXPECT_TRUE(throws_naming("cache_seqlens", [&] { plan.update(t); }));
  auto cuda = try_cuda_plan(valid_config(), 0);
  SKIP_WITHOUT_CUDA_PLAN(cuda);
  t.device = cuda_device(1);
  EXPECT_TRUE(throws_naming("cache_seqlens", [&] { cuda->update(t); }));
  t.device = kCPU;
  EXPECT_TRUE(throws_naming("cache_seqlens", [&] { cuda->update(t); }));
}

TEST(ValidationDecodePlan, UpdateWithHostMemoryMarkedCuda) {
  auto cuda = try_cuda_plan(valid_config(), 0);
  SKIP_WITHOUT_CUDA_PLAN(cuda);
  HostTensor lens = ints({2}, {3, 9});
  TensorView t = lens.view;
  t.device = cuda_device(0);
  EXPECT_TRUE(throws_naming("cache_seqlens", [&] { cuda->update(t); }));
}

TEST(ValidationDecodePlan, MovedFromPlan) {
  DecodePlan plan(kCPU, valid_config());
  DecodePlan other = std::move(plan);
  HostTensor lens = ints({2}, {3, 9});
  EXPECT_TRUE(throws_naming("plan", [&] { plan.update(lens.view); }));  // NOLINT
  EXPECT_TRUE(throws_naming("plan", [&] { (void)plan.config(); }));     // NOLINT
  EXPECT_TRUE(throws_naming("plan", [&] { (void)plan.device(); }));     // NOLINT
  EXPECT_NO_THROW(other.update(lens.view));
  plan = std::move(other);  // a moved-from plan can be assigned again
  EXPECT_NO_THROW(plan.update(lens.view));
}

// ---------------------------------------------------------------- TensorView

TEST(ValidationTensorView, StridedValid) {
  float buf[24];
  TensorView t = TensorView::strided(buf, kF32, kCPU, {2, 3}, {8, 1});
  EXPECT_EQ(t.ndim, 2);
  EXPECT_EQ(t.strides[0], 8);
  EXPECT_FALSE(t.is_contiguous());
  EXPECT_EQ(t.numel(), 6);
}

TEST(ValidationTensorView, StridedMoreThanSixDims) {
  float buf[1];
  const std::string m = error_message([&] {
    TensorView::strided(buf, kF32, kCPU, {1, 1, 1, 1, 1, 1, 1}, {1, 1, 1, 1, 1, 1, 1});
  });
  EXPECT_TRUE(throws_naming("shape", [&] {
    TensorView::strided(buf, kF32, kCPU, {1, 1, 1, 1, 1, 1, 1}, {1, 1, 1, 1, 1, 1, 1});
  }));
  EXPECT_TRUE(contains(m, "expected at most 6 dimensions, got 7"));
}

TEST(ValidationTensorView, StridedRankMismatch) {
  float buf[6];
  EXPECT_TRUE(throws_naming("strides", [&] { TensorView::strided(buf, kF32, kCPU, {2, 3}, {3}); }));
  EXPECT_TRUE(throws_naming("strides", [&] {
    TensorView::strided(buf, kF32, kCPU, {2, 3}, {3, 1, 1});
  }));
  EXPECT_TRUE(contains(error_message([&] {
                         TensorView::strided(buf, kF32, kCPU, {2, 3}, {3});
                       }),
                       "expected one stride per dimension of shape (2), got 1"));
}

TEST(ValidationTensorView, ContiguousMoreThanSixDims) {
  float buf[1];
  EXPECT_TRUE(throws_naming("shape", [&] {
    TensorView::contiguous(buf, kF32, kCPU, {1, 1, 1, 1, 1, 1, 1});
  }));
}

TEST(ValidationTensorView, NumelOfEmptyWithHugeDims) {
  TensorView t;
  t.ndim = 6;
  for (int i = 0; i < 5; ++i) t.shape[i] = int64_t(1) << 40;
  t.shape[5] = 0;
  EXPECT_EQ(t.numel(), 0);
}

TEST(ValidationTensorView, DeviceNames) {
  EXPECT_EQ(device_name(kCPU), "cpu");
  EXPECT_EQ(device_name(cuda_device(3)), "cuda:3");
  EXPECT_EQ(device_name(Device{DeviceType::kCPU, 2}), "cpu:2");
}

TEST(ValidationTensorView, BroadcastInputAccepted) {
  SparsePrefillCase s;
  s.p.indices.strides[0] = 0;  // one selection for every query: stride 0 is fine on an input
  EXPECT_NO_THROW(s.run());
  s.p.attn_sink.strides[0] = 0;  // but never on the last dim, which must be contiguous
  EXPECT_TRUE(throws_naming("attn_sink", s.call()));
}

TEST(ValidationTensorView, ElementCountOverflowsInt64) {
  // Stride-0 dims keep the byte extent small, but the element count must still fit in int64.
  DenseDecodeCase c;
  c.p.q.shape[0] = c.p.q.shape[1] = (int64_t(1) << 31) - 1;
  c.p.q.strides[0] = c.p.q.strides[1] = 0;
  EXPECT_TRUE(throws_naming("q", c.call()));
}

}  // namespace
}  // namespace openmla::test
