// TMA tensor-map encoding (tma.h).
#include "cuda/common/tma.h"

#include <cudaTypedefs.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <string>

#include "cuda/common/cuda_check.h"
#include "cuda/common/launch.h"
#include "openmla/error.h"

namespace openmla::sm90 {

namespace {
PFN_cuTensorMapEncodeTiled_v12000 encode_fn() {
  static PFN_cuTensorMapEncodeTiled_v12000 fn = [] {
    void* ptr = nullptr;
    cudaDriverEntryPointQueryResult q{};
    OPENMLA_CUDA_CHECK(cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &ptr, 12000,
                                                        cudaEnableDefault, &q));
    if (q != cudaDriverEntryPointSuccess || ptr == nullptr)
      throw Error("cuda", "the driver has no cuTensorMapEncodeTiled (needs CUDA 12+ driver)");
    return reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(ptr);
  }();
  return fn;
}

// L2 promotion of the maps' requests. Development knob OPENMLA_TMA_L2_PROMOTION (0, 64, 128 or
// 256 bytes; default 256) for A/B measurements.
CUtensorMapL2promotion l2_promotion() {
  static const CUtensorMapL2promotion v = [] {
    const int b = env_int("OPENMLA_TMA_L2_PROMOTION", 256);
    return b == 0     ? CU_TENSOR_MAP_L2_PROMOTION_NONE
           : b == 64  ? CU_TENSOR_MAP_L2_PROMOTION_L2_64B
           : b == 128 ? CU_TENSOR_MAP_L2_PROMOTION_L2_128B
                      : CU_TENSOR_MAP_L2_PROMOTION_L2_256B;
  }();
  return v;
}
}  // namespace

CUtensorMap make_tensor_map_4d(const char* arg, const void* base, CUtensorMapDataType dtype,
                               const uint64_t dims[4], const uint64_t strides_bytes[3],
                               const uint32_t box[4]) {
  // A decode step encodes each layer's cache map once per step: the maps are kept per thread,
  // direct-mapped by base address (a 61-layer model has 61 caches), keyed by every argument (the
  // encoding is pure host work on the latency path of an eager call).
  struct Entry {
    const void* base = nullptr;
    CUtensorMapDataType dtype{};
    uint64_t dims[4] = {}, strides[3] = {};
    uint32_t box[4] = {};
    CUtensorMap map{};
  };
  constexpr int kEntries = 128;
  thread_local Entry cache[kEntries];
  const auto addr = reinterpret_cast<uintptr_t>(base);
  Entry& e = cache[((addr >> 8) ^ (addr >> 20)) % kEntries];
  if (e.base == base && base != nullptr && e.dtype == dtype && std::equal(dims, dims + 4, e.dims) &&
      std::equal(strides_bytes, strides_bytes + 3, e.strides) && std::equal(box, box + 4, e.box))
    return e.map;
  CUtensorMap map;
  const cuuint32_t elem_strides[4] = {1, 1, 1, 1};
  cuuint64_t d[4] = {dims[0], dims[1], dims[2], dims[3]};
  cuuint64_t s[3] = {strides_bytes[0], strides_bytes[1], strides_bytes[2]};
  cuuint32_t b[4] = {box[0], box[1], box[2], box[3]};
  CUresult r = encode_fn()(&map, dtype, 4, const_cast<void*>(base), d, s, b, elem_strides,
                           CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
                           l2_promotion(), CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  if (r != CUDA_SUCCESS)
    throw Error(arg,
                "cannot describe this tensor to the TMA engine (cuTensorMapEncodeTiled error " +
                    std::to_string(static_cast<int>(r)) +
                    "): base must be 16-byte aligned and strides multiples of 16 bytes");
  e.base = base;
  e.dtype = dtype;
  std::copy(dims, dims + 4, e.dims);
  std::copy(strides_bytes, strides_bytes + 3, e.strides);
  std::copy(box, box + 4, e.box);
  e.map = map;
  return map;
}

}  // namespace openmla::sm90
