// GPU test harness: DeviceTensor (a HostTensor's exact layout mirrored on the GPU: same shape,
// strides and span, padding included), the skip-without-GPU fixture, and the helpers every GPU
// test uses: run an operator on host copies (CPU reference) and on the GPU, then compare with the
// SPEC §6 close() or byte for byte.
//
// Typical use (see test_dense_decode_graph.cpp):
//   TwinSet t;
//   fill_randn(t.add("q", HostTensor(DType::kBFloat16, {b, s_q, h_q, d}, /*pad=*/8)).host, rng);
//   ...
//   t.add("out", HostTensor(...)); t.add("lse", HostTensor(...));
//   t.upload_all();
//   auto make = [&](Side s) { DenseDecodeParams p; p.q = t.view("q", s); ...; return p; };
//   EXPECT_TRUE(run_and_compare(t, make, [](const DenseDecodeParams& p) { dense_decode(p); },
//                               {{"out", kDecodeOut}, {"lse", kLse}}));
#pragma once

#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <cstdio>
#include <functional>
#include <map>
#include <memory>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "common/harness.h"
#include "cuda/common/cuda_check.h"  // OPENMLA_CUDA_CHECK: throws openmla::Error("cuda", ...)

namespace openmla::test {

// ---------------- GPU presence ----------------

// True when a CUDA device the sm_90a kernels can run on is present (result cached). `why` gets
// the reason when not: no driver, no device, or another architecture.
inline bool gpu_available(std::string* why = nullptr) {
  static const std::pair<bool, std::string> state = [] {
    int n = 0;
    const cudaError_t err = cudaGetDeviceCount(&n);
    if (err != cudaSuccess) {
      (void)cudaGetLastError();  // a missing driver is not an error of the test
      return std::pair<bool, std::string>{
          false, std::string("cudaGetDeviceCount: ") + cudaGetErrorString(err)};
    }
    if (n == 0) return std::pair<bool, std::string>{false, "no CUDA device"};
    cudaDeviceProp prop{};
    if (cudaGetDeviceProperties(&prop, 0) != cudaSuccess) {
      (void)cudaGetLastError();
      return std::pair<bool, std::string>{false, "cudaGetDeviceProperties failed"};
    }
    if (prop.major != 9 || prop.minor != 0)
      return std::pair<bool, std::string>{
          false, std::string(prop.name) + " is sm_" + std::to_string(prop.major) +
                     std::to_string(prop.minor) + "; the kernels are built for sm_90a"};
    return std::pair<bool, std::string>{true, prop.name};
  }();
  if (why) *why = state.second;
  return state.first;
}

// Skips the current test when there is no usable GPU (use at the top of a TEST body or SetUp).
#define OPENMLA_SKIP_WITHOUT_GPU()                              \
  do {                                                          \
    std::string openmla_why_;                                   \
    if (!::openmla::test::gpu_available(&openmla_why_))         \
      GTEST_SKIP() << "no usable GPU (" << openmla_why_ << ")"; \
  } while (0)

// Fixtures whose tests skip without a GPU.
class GpuTest : public ::testing::Test {
 protected:
  void SetUp() override { OPENMLA_SKIP_WITHOUT_GPU(); }
};
template <class P>
class GpuTestWithParam : public ::testing::TestWithParam<P> {
 protected:
  void SetUp() override { OPENMLA_SKIP_WITHOUT_GPU(); }
};

// True when this build has a CUDA kernel for `op` (openmla::cuda_operators()).
inline bool has_cuda_kernel(const std::string& op) {
  const std::string list = std::string(",") + cuda_operators() + ",";
  return list.find("," + op + ",") != std::string::npos;
}

// Waits for the device and surfaces any kernel fault as an openmla::Error.
inline void sync_device() { OPENMLA_CUDA_CHECK(cudaDeviceSynchronize()); }

// ---------------- DeviceTensor ----------------

// A device allocation with exactly the layout of a HostTensor: the whole host storage span
// (padding between rows included) is mirrored, so copies in both directions are one memcpy and
// bytes outside the logical elements can be checked too ("untouched" tests).
class DeviceTensor {
 public:
  DeviceTensor() = default;
  // Allocates the layout of `like` on cuda:0; contents are unspecified until upload/fill.
  explicit DeviceTensor(const HostTensor& like, int device = 0) : bytes_(like.storage.size()) {
    OPENMLA_CUDA_CHECK(cudaSetDevice(device));
    OPENMLA_CUDA_CHECK(cudaMalloc(&ptr_, bytes_ > 0 ? bytes_ : 1));
    view = like.view;
    view.data = ptr_;
    view.device = cuda_device(device);
  }
  ~DeviceTensor() {
    if (ptr_ != nullptr) (void)cudaFree(ptr_);  // no throwing from a destructor
  }
  DeviceTensor(DeviceTensor&& o) noexcept : view(o.view), ptr_(o.ptr_), bytes_(o.bytes_) {
    o.ptr_ = nullptr;
    o.bytes_ = 0;
  }
  DeviceTensor& operator=(DeviceTensor&& o) noexcept {
    if (this != &o) {
      if (ptr_ != nullptr) (void)cudaFree(ptr_);
      view = o.view;
      ptr_ = o.ptr_;
      bytes_ = o.bytes_;
      o.ptr_ = nullptr;
      o.bytes_ = 0;
    }
    return *this;
  }
  DeviceTensor(const DeviceTensor&) = delete;
  DeviceTensor& operator=(const DeviceTensor&) = delete;

  // Allocates and uploads.
  static DeviceTensor from(const HostTensor& h) {
    DeviceTensor d(h);
    d.upload(h);
    return d;
  }

  // Host -> device, the whole span (h must have this tensor's layout).
  void upload(const HostTensor& h) {
    check_same_span(h);
    OPENMLA_CUDA_CHECK(cudaMemcpy(ptr_, h.storage.data(), bytes_, cudaMemcpyHostToDevice));
    // A pageable upload may still be in flight when cudaMemcpy returns, and kernels on
    // non-blocking streams do not wait for the legacy stream: finish it here.
    sync();
  }
  // Device -> host, the whole span.
  void download(HostTensor& h) const {
    check_same_span(h);
    OPENMLA_CUDA_CHECK(cudaMemcpy(h.storage.data(), ptr_, bytes_, cudaMemcpyDeviceToHost));
  }
  // A copy of `like` (same layout) holding this tensor's device contents.
  HostTensor to_host(const HostTensor& like) const {
    HostTensor h = like;
    download(h);
    return h;
  }
  // Every byte of the span set to `value`.
  void fill_bytes(uint8_t value) {
    OPENMLA_CUDA_CHECK(cudaMemset(ptr_, value, bytes_));
    sync();  // cudaMemset is asynchronous to the host and to non-blocking streams
  }
  // 0xff everywhere: NaN for bf16/fp16/fp32, -1 for int32, 0xff (e4m3 NaN) for bytes, so an
  // element a kernel fails to write cannot pass a comparison.
  void poison() { fill_bytes(0xff); }

  void* data() const { return ptr_; }
  size_t bytes() const { return bytes_; }

  TensorView view;  // same dtype, shape and strides as the host tensor; device cuda:N

 private:
  static void sync() { OPENMLA_CUDA_CHECK(cudaDeviceSynchronize()); }
  void check_same_span(const HostTensor& h) const {
    if (h.storage.size() != bytes_)
      throw Error("DeviceTensor", "host tensor span (" + std::to_string(h.storage.size()) +
                                      " bytes) differs from the device span (" +
                                      std::to_string(bytes_) + " bytes)");
  }
  void* ptr_ = nullptr;
  size_t bytes_ = 0;
};

// ---------------- host / device pairs ----------------

enum class Side { kHost, kDevice };

// A tensor on both sides: `host` is the CPU reference's copy (inputs, then reference outputs),
// `dev` the GPU copy with the same layout.
struct Twin {
  HostTensor host;
  DeviceTensor dev;
  explicit Twin(HostTensor h) : host(std::move(h)), dev(host) {}
  void upload() { dev.upload(host); }
  HostTensor fetch() const { return dev.to_host(host); }  // the device contents, host layout
  const TensorView& view(Side s) const { return s == Side::kHost ? host.view : dev.view; }
  // The same poison on both sides (host NaN patterns copied up), so that the padding bytes of
  // outputs compare equal byte for byte when neither side touches them.
  void poison_both() {
    host.poison();
    dev.upload(host);
  }
};

// Named Twins. Optional arguments that are absent are simply not added (view() of an unknown
// name returns an absent TensorView).
class TwinSet {
 public:
  Twin& add(const std::string& name, HostTensor h) {
    auto [it, inserted] = twins_.insert_or_assign(name, std::make_unique<Twin>(std::move(h)));
    (void)inserted;
    return *it->second;
  }
  Twin& operator[](const std::string& name) {
    auto it = twins_.find(name);
    if (it == twins_.end()) throw Error("TwinSet", "no tensor named '" + name + "'");
    return *it->second;
  }
  bool has(const std::string& name) const { return twins_.count(name) != 0; }
  TensorView view(const std::string& name, Side s) const {
    auto it = twins_.find(name);
    return it == twins_.end() ? TensorView{} : it->second->view(s);
  }
  void upload_all() {
    for (auto& [name, t] : twins_) t->upload();
  }

 private:
  std::map<std::string, std::unique_ptr<Twin>> twins_;
};

// Byte-for-byte equality of two host tensors' whole storage (padding included).
inline ::testing::AssertionResult bytes_equal(const char* name, const HostTensor& got,
                                              const HostTensor& want) {
  if (got.storage.size() != want.storage.size())
    return ::testing::AssertionFailure() << name << ": spans differ (" << got.storage.size()
                                         << " vs " << want.storage.size() << " bytes)";
  int64_t bad = 0, first = -1;
  for (size_t i = 0; i < got.storage.size(); ++i)
    if (got.storage[i] != want.storage[i]) {
      if (bad++ == 0) first = int64_t(i);
    }
  if (bad == 0) return ::testing::AssertionSuccess();
  // (AssertionResult formats each << separately, so std::hex would not stick: format here.)
  char bytes[64];
  std::snprintf(bytes, sizeof bytes, "got 0x%02x, want 0x%02x", unsigned(got.storage[first]),
                unsigned(want.storage[first]));
  return ::testing::AssertionFailure() << name << ": " << bad << " of " << got.storage.size()
                                       << " bytes differ; first at byte " << first << ": " << bytes;
}

struct OutputCheck {
  std::string name;
  Tolerance tol;
  bool bitwise = false;  // compare the whole storage byte for byte instead of close()
};

// Poisons the named outputs on both sides, runs `op(make(Side::kHost))` (the CPU reference on the
// host copies) and `op(make(Side::kDevice))`, waits for the device, and compares every output:
// close() with its tolerance over the logical elements, or bytes_equal() when bitwise.
template <class Make, class Op>
::testing::AssertionResult run_and_compare(TwinSet& t, Make&& make, Op&& op,
                                           const std::vector<OutputCheck>& outputs) {
  for (const OutputCheck& o : outputs) t[o.name].poison_both();
  op(make(Side::kHost));
  op(make(Side::kDevice));
  sync_device();
  ::testing::AssertionResult all = ::testing::AssertionSuccess();
  bool failed = false;
  std::ostringstream msg;
  for (const OutputCheck& o : outputs) {
    Twin& tw = t[o.name];
    const HostTensor got = tw.fetch();
    ::testing::AssertionResult r = o.bitwise ? bytes_equal(o.name.c_str(), got, tw.host)
                                             : close(o.name.c_str(), got, tw.host, o.tol);
    if (!r) {
      failed = true;
      msg << r.message() << "\n";
    }
  }
  if (failed) return ::testing::AssertionFailure() << msg.str();
  return all;
}

}  // namespace openmla::test
