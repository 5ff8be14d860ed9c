// TensorView helpers and dtype/device names.
#include "openmla/tensor.h"

#include <sstream>

#include "openmla/error.h"

namespace openmla {

size_t dtype_size(DType dtype) {
  switch (dtype) {
    case DType::kBFloat16:
    case DType::kFloat16:
      return 2;
    case DType::kFloat32:
    case DType::kInt32:
      return 4;
    case DType::kUInt8:
    case DType::kFloat8E4M3:
      return 1;
  }
  return 0;
}

const char* dtype_name(DType dtype) {
  switch (dtype) {
    case DType::kBFloat16:
      return "bfloat16";
    case DType::kFloat16:
      return "float16";
    case DType::kFloat32:
      return "float32";
    case DType::kInt32:
      return "int32";
    case DType::kUInt8:
      return "uint8";
    case DType::kFloat8E4M3:
      return "float8_e4m3fn";
  }
  return "?";
}

std::string device_name(Device device) {
  switch (device.type) {
    case DeviceType::kCPU:  // the index of a CPU device means nothing; shown when it is not 0
      return device.index == 0 ? std::string("cpu") : "cpu:" + std::to_string(device.index);
    case DeviceType::kCUDA:
      return "cuda:" + std::to_string(device.index);
  }
  return "unknown device type " + std::to_string(int(device.type));
}

int64_t TensorView::numel() const {
  if (ndim < 0) return 0;
  for (int i = 0; i < ndim; ++i)
    if (shape[i] == 0) return 0;
  int64_t n = 1;
  for (int i = 0; i < ndim; ++i) n *= shape[i];
  return n;
}

static void fill(TensorView& t, std::initializer_list<int64_t> shape) {
  if (shape.size() > static_cast<size_t>(kMaxDims))
    throw Error("shape", "expected at most " + std::to_string(kMaxDims) + " dimensions, got " +
                             std::to_string(shape.size()));
  t.ndim = static_cast<int>(shape.size());
  int i = 0;
  for (int64_t s : shape) t.shape[i++] = s;
}

TensorView TensorView::contiguous(void* data, DType dtype, Device device,
                                  std::initializer_list<int64_t> shape) {
  TensorView t;
  t.data = data;
  t.dtype = dtype;
  t.device = device;
  fill(t, shape);
  int64_t s = 1;
  for (int i = t.ndim - 1; i >= 0; --i) {
    t.strides[i] = s;
    s *= t.shape[i];
  }
  return t;
}

TensorView TensorView::strided(void* data, DType dtype, Device device,
                               std::initializer_list<int64_t> shape,
                               std::initializer_list<int64_t> strides) {
  TensorView t;
  t.data = data;
  t.dtype = dtype;
  t.device = device;
  fill(t, shape);
  if (strides.size() != shape.size())
    throw Error("strides", "expected one stride per dimension of shape (" +
                               std::to_string(shape.size()) + "), got " +
                               std::to_string(strides.size()));
  int i = 0;
  for (int64_t s : strides) t.strides[i++] = s;
  return t;
}

bool TensorView::is_contiguous() const {
  int64_t s = 1;
  for (int i = ndim - 1; i >= 0; --i) {
    if (shape[i] != 1 && strides[i] != s) return false;
    s *= shape[i];
  }
  return true;
}

std::string TensorView::describe() const {
  if (!present()) return "nothing";
  std::ostringstream os;
  os << dtype_name(dtype) << "[";
  for (int i = 0; i < ndim; ++i) os << (i ? ", " : "") << shape[i];
  os << "] strides [";
  for (int i = 0; i < ndim; ++i) os << (i ? ", " : "") << strides[i];
  os << "] on " << device_name(device);
  return os.str();
}

}  // namespace openmla
