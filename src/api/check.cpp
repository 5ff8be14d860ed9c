// Argument validation helpers (see check.h).
#include "api/check.h"

#include <cmath>
#include <sstream>

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

void tensor(const TensorView& t, const char* arg, int ndim, const char* layout) {
  if (!t.present()) fail(arg, std::string("a tensor ") + layout + ", got nothing");
  if (t.ndim != ndim)
    fail(arg, "rank " + std::to_string(ndim) + " " + layout, t);
  for (int i = 0; i < ndim; ++i) {
    if (t.shape[i] < 0) fail(arg, std::string("non-negative sizes ") + layout, t);
    if (t.strides[i] < 0) fail(arg, "non-negative strides", t);
  }
  if (t.numel() > 0) {
    if (t.data == nullptr) fail(arg, "a non-null data pointer", t);
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
    fail(arg, "size " + std::to_string(expected) + " in dim " + std::to_string(d) + " (" + what +
                  ")", t);
}

void same_device(const TensorView& t, const char* arg, Device device) {
  if (t.present() && t.device != device)
    fail(arg, "a tensor on " + device_name(device) + " (the device of q)", t);
}

void positive(int64_t v, const char* arg, const char* what) {
  if (v <= 0)
    throw Error(arg, std::string("expected ") + what + " > 0, got " + std::to_string(v));
}

void scale(float softmax_scale, const char* arg) {
  if (!std::isfinite(softmax_scale) || softmax_scale < 0.0f)
    throw Error(arg, "expected a finite softmax scale >= 0 (0 = 1/sqrt(d_qk)), got " +
                         std::to_string(softmax_scale));
}

float resolve_scale(float softmax_scale, int64_t d_qk) {
  return softmax_scale > 0.0f ? softmax_scale : static_cast<float>(1.0 / std::sqrt(double(d_qk)));
}

}  // namespace openmla::check
