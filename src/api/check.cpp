// Argument validation helpers (see check.h).
#include "api/check.h"

#include <cinttypes>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <sstream>

#if defined(OPENMLA_WITH_CUDA)
#include <cuda_runtime_api.h>
#endif

namespace openmla::check {

void fail(const char* arg, const std::string& expected, const TensorView& got) {
  throw Error(arg, "expected " + expected + ", got " + got.describe());
}
void fail(const char* arg, const std::string& message) { throw Error(arg, message); }

std::string shape_str(const TensorView& t) {
  std::ostringstream os;
  os << "[";
  for (int i = 0; i < t.ndim; ++i) os << (i ? ", " : "") << t.shape[i];
  os << "]";
  return os.str();
}

static std::string pointer_str(const void* p) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "0x%" PRIxPTR, reinterpret_cast<uintptr_t>(p));
  return buf;
}

// Offset in bytes one past the last element (sizes and strides already non-negative); false when
// it or the element count does not fit in int64.
static bool byte_extent(const TensorView& t, int64_t& extent) {
  for (int i = 0; i < t.ndim; ++i)
    if (t.shape[i] == 0) {  // no elements: nothing is addressed
      extent = 0;
      return true;
    }
  int64_t last = 0, n = 1;
  for (int i = 0; i < t.ndim; ++i) {
    int64_t span;
    if (t.shape[i] > 0 && (__builtin_mul_overflow(t.shape[i] - 1, t.strides[i], &span) ||
                           __builtin_add_overflow(last, span, &last)))
      return false;
    if (__builtin_mul_overflow(n, t.shape[i], &n)) return false;
  }
  const int64_t es = static_cast<int64_t>(dtype_size(t.dtype));
  if (__builtin_add_overflow(last, 1, &last) || __builtin_mul_overflow(last, es, &extent))
    return false;
  return true;
}

void tensor(const TensorView& t, const char* arg, int ndim, const char* layout) {
  if (!t.present()) fail(arg, std::string("expected a tensor ") + layout + ", got nothing");
  if (t.ndim != ndim) fail(arg, "rank " + std::to_string(ndim) + " " + layout, t);
  if (dtype_size(t.dtype) == 0)
    fail(arg, "a known dtype (got DType " + std::to_string(int(t.dtype)) + ")", t);
  if (t.device.type != DeviceType::kCPU && t.device.type != DeviceType::kCUDA)
    fail(arg, "device type cpu or cuda (got DeviceType " + std::to_string(int(t.device.type)) + ")",
         t);
  if (t.device.type == DeviceType::kCUDA && t.device.index < 0)
    fail(arg, "a CUDA device index >= 0", t);
  for (int i = 0; i < ndim; ++i) {
    if (t.shape[i] < 0) fail(arg, std::string("non-negative sizes ") + layout, t);
    if (t.shape[i] > kMaxDimSize)
      fail(arg, std::string("sizes <= 2^31 - 1 in every dim ") + layout, t);
    if (t.strides[i] < 0) fail(arg, "non-negative strides", t);
  }
  int64_t extent = 0;
  if (!byte_extent(t, extent))
    fail(arg, "sizes and strides whose element count and byte extent fit in 64 bits", t);
  if (t.numel() > 0) {
    if (t.data == nullptr) fail(arg, "a non-null data pointer", t);
    const size_t es = dtype_size(t.dtype);
    if (reinterpret_cast<uintptr_t>(t.data) % es != 0)
      fail(arg, "expected a data pointer aligned to " + std::to_string(es) +
                    " bytes (the size of " + dtype_name(t.dtype) + "), got " + pointer_str(t.data) +
                    " for " + t.describe());
    if (t.shape[ndim - 1] > 1 && t.strides[ndim - 1] != 1)
      fail(arg, "the last dimension contiguous (stride 1)", t);
  }
}

void optional_tensor(const TensorView& t, const char* arg, int ndim, const char* layout) {
  if (t.present()) tensor(t, arg, ndim, layout);
}

void dtype(const TensorView& t, const char* arg, std::initializer_list<DType> allowed) {
  for (DType d : allowed)
    if (t.dtype == d) return;
  std::string names;
  for (DType d : allowed) names += (names.empty() ? "" : " or ") + std::string(dtype_name(d));
  fail(arg, "dtype " + names, t);
}

void dim(const TensorView& t, const char* arg, int d, int64_t expected, const char* what) {
  if (t.shape[d] != expected)
    fail(arg,
         "size " + std::to_string(expected) + " in dim " + std::to_string(d) + " (" + what + ")",
         t);
}

void same_device(const TensorView& t, const char* arg, Device device) {
  if (t.present() && t.device != device)
    fail(arg, "a tensor on " + device_name(device) + " (the device of q)", t);
}

void positive(int64_t v, const char* arg, const char* what) {
  if (v <= 0) throw Error(arg, std::string("expected ") + what + " > 0, got " + std::to_string(v));
}

void scale(float softmax_scale, const char* arg) {
  if (!std::isfinite(softmax_scale) || softmax_scale < 0.0f)
    throw Error(arg, "expected a finite softmax scale >= 0 (0 = 1/sqrt(d_qk)), got " +
                         std::to_string(softmax_scale));
}

float resolve_scale(float softmax_scale, int64_t d_qk) {
  return softmax_scale > 0.0f ? softmax_scale : static_cast<float>(1.0 / std::sqrt(double(d_qk)));
}

// ---------------- outputs: self-overlap and aliasing ----------------

namespace {

struct Bytes {
  uintptr_t lo, hi;  // [lo, hi)
};

// Byte range from the first to one past the last element (tensor validated, non-empty).
Bytes range(const TensorView& t) {
  int64_t last = 0;
  for (int i = 0; i < t.ndim; ++i) last += (t.shape[i] - 1) * t.strides[i];
  const uintptr_t lo = reinterpret_cast<uintptr_t>(t.data);
  return {lo, lo + static_cast<uintptr_t>(last + 1) * dtype_size(t.dtype)};
}

bool intersect(Bytes a, Bytes b) { return a.lo < b.hi && b.lo < a.hi; }

// True only when `a` and `b` certainly share a byte.
bool overlap(const TensorView& a, const TensorView& b) {
  if (!a.present() || !b.present() || a.numel() == 0 || b.numel() == 0) return false;
  if (a.data == b.data) return true;
  const Bytes ra = range(a), rb = range(b);
  if (!intersect(ra, rb)) return false;
  const bool da = a.is_contiguous(), db = b.is_contiguous();
  if (da && db) return true;  // both fill their ranges
  // A contiguous tensor fills its range: any element of the other inside it is shared. The
  // first and last elements of a tensor are elements at the ends of its range.
  const auto ends_inside = [](const TensorView& t, Bytes rt, Bytes dense) {
    const uintptr_t es = dtype_size(t.dtype);
    return intersect({rt.lo, rt.lo + es}, dense) || intersect({rt.hi - es, rt.hi}, dense);
  };
  return (da && ends_inside(b, rb, ra)) || (db && ends_inside(a, ra, rb));
}

}  // namespace

void outputs(std::initializer_list<Named> outs, std::initializer_list<Named> ins) {
  for (auto o = outs.begin(); o != outs.end(); ++o) {
    const TensorView& t = o->t;
    if (!t.present() || t.numel() == 0) continue;
    for (int i = 0; i + 1 < t.ndim; ++i)
      if (t.shape[i] > 1 && t.strides[i] == 0)
        fail(o->arg, "an output whose elements are distinct (stride 0 only on dims of size 1)", t);
    for (const Named& in : ins)
      if (overlap(t, in.t))
        fail(o->arg,
             std::string("an output sharing no memory with ") + in.arg + " (" + in.t.describe() +
                 ")",
             t);
    for (auto e = outs.begin(); e != o; ++e)
      if (overlap(t, e->t))
        fail(o->arg,
             std::string("an output sharing no memory with the output ") + e->arg + " (" +
                 e->t.describe() + ")",
             t);
  }
}

// ---------------- device pointers ----------------

void device_pointers(std::initializer_list<Named> tensors) {
#if defined(OPENMLA_WITH_CUDA)
  // Pointers that passed recently (per thread, direct-mapped by address): a decode step passes
  // the same buffers step after step (a 61-layer model: 61 caches and their block tables), and
  // each cudaPointerGetAttributes is host time on the latency path of an eager call.
  struct Seen {
    const void* data = nullptr;
    int device = -1;
  };
  constexpr int kSeen = 512;
  thread_local Seen seen[kSeen];
  for (const Named& n : tensors) {
    const TensorView& t = n.t;
    if (!t.present() || t.device.type != DeviceType::kCUDA || t.numel() == 0) continue;
    const auto addr = reinterpret_cast<uintptr_t>(t.data);
    Seen& slot = seen[((addr >> 8) ^ (addr >> 20)) % kSeen];
    if (slot.data == t.data && slot.device == t.device.index) continue;
    cudaPointerAttributes a{};
    const cudaError_t e = cudaPointerGetAttributes(&a, t.data);
    if (e != cudaSuccess) {
      (void)cudaGetLastError();  // not sticky: clear it so that later calls do not see it
      fail(n.arg, "expected a pointer to memory of " + device_name(t.device) +
                      ", CUDA could not check " + pointer_str(t.data) + " (" +
                      cudaGetErrorString(e) + ") for " + t.describe());
    }
    if (a.type == cudaMemoryTypeUnregistered)
      fail(n.arg, "expected a pointer to memory of " + device_name(t.device) +
                      ", got host memory unknown to CUDA at " + pointer_str(t.data) + " for " +
                      t.describe());
    if (a.type == cudaMemoryTypeDevice && a.device != t.device.index)
      fail(n.arg, "expected a pointer to memory of " + device_name(t.device) +
                      ", got memory of cuda:" + std::to_string(a.device) + " at " +
                      pointer_str(t.data) + " for " + t.describe());
    slot.data = t.data;
    slot.device = t.device.index;
  }
#else
  (void)tensors;
#endif
}

void device_pointers(std::initializer_list<Named> ins, std::initializer_list<Named> outs) {
  device_pointers(ins);
  device_pointers(outs);
}

}  // namespace openmla::check
