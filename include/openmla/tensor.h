// TensorView: a non-owning, framework-free description of a strided tensor (strides in elements).
#pragma once

#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <string>

namespace openmla {

enum class DType : uint8_t {
  kBFloat16,
  kFloat16,
  kFloat32,
  kInt32,
  kUInt8,       // raw bytes: FP8 KV-cache records (see kv_cache.h)
  kFloat8E4M3,  // float8 e4m3fn, accepted wherever raw FP8 cache bytes are
};

enum class DeviceType : uint8_t { kCPU, kCUDA };

struct Device {
  DeviceType type = DeviceType::kCPU;
  int index = 0;
  bool operator==(const Device& o) const { return type == o.type && index == o.index; }
  bool operator!=(const Device& o) const { return !(*this == o); }
};

inline constexpr Device kCPU{DeviceType::kCPU, 0};
inline Device cuda_device(int index = 0) { return Device{DeviceType::kCUDA, index}; }

// Opaque stream handle (a cudaStream_t on CUDA; ignored on the CPU). nullptr = legacy default.
using Stream = void*;

size_t dtype_size(DType dtype);
const char* dtype_name(DType dtype);
std::string device_name(Device device);

inline constexpr int kMaxDims = 6;

struct TensorView {
  void* data = nullptr;
  DType dtype = DType::kFloat32;
  Device device{};
  int ndim = -1;  // -1: "no tensor" (an optional argument left out)
  int64_t shape[kMaxDims] = {};
  int64_t strides[kMaxDims] = {};

  bool present() const { return ndim >= 0; }
  int64_t numel() const;
  // Shape given; strides row-major contiguous.
  static TensorView contiguous(void* data, DType dtype, Device device,
                               std::initializer_list<int64_t> shape);
  // Shape and strides (elements) given.
  static TensorView strided(void* data, DType dtype, Device device,
                            std::initializer_list<int64_t> shape,
                            std::initializer_list<int64_t> strides);
  bool is_contiguous() const;
  std::string describe() const;  // "bf16[2, 3, 4] strides [12, 4, 1] on cuda:0"
};

}  // namespace openmla
