// Host-side TMA tensor-map encoding through the driver entry point (no libcuda link needed).
#pragma once

#include <cuda.h>

#include <cstdint>

namespace openmla::sm90 {

// 4-D bf16/fp16 tile map with 128-byte swizzle. dims/strides innermost first; strides in bytes
// for dims 1..3 (dim 0 is contiguous). Throws openmla::Error on failure, naming `arg`.
CUtensorMap make_tensor_map_4d(const char* arg, const void* base, CUtensorMapDataType dtype,
                               const uint64_t dims[4], const uint64_t strides_bytes[3],
                               const uint32_t box[4]);

}  // namespace openmla::sm90
