// Kernel launch with programmatic dependent launch (PDL): the kernel may be scheduled while the
// previous kernel in the stream is still finishing, so its launch latency and prologue overlap
// that kernel's tail. Used for the combine kernel; the planner and the attention kernel are
// launched plainly (`pdl` false): PDL on the attention kernel gained nothing, and with the
// planner triggering early the attention CTAs were placed differently and ran 3-15 % slower at
// h_q = 128 (docs/benchmarks.md, session 16). Every kernel launched this way calls
// grid_dependency_wait() (ptx.cuh) before touching global memory another kernel writes or reads.
// Works under CUDA-graph capture.
// OPENMLA_DISABLE_PDL=1 in the environment launches them as plain stream-ordered kernels (for
// debugging and A/B timing).
#pragma once

#include <cuda_runtime.h>

#include <cstdlib>
#include <cstring>
#include <utility>

#include "cuda/common/cuda_check.h"

namespace openmla::sm90 {

// Whether the environment variable `name` is "1" (the development switches).
inline bool env_flag(const char* name) {
  const char* v = std::getenv(name);
  return v != nullptr && std::strcmp(v, "1") == 0;
}

// The integer value of the environment variable `name`, or `fallback` when it is not set.
inline int env_int(const char* name, int fallback) {
  const char* v = std::getenv(name);
  return v != nullptr ? std::atoi(v) : fallback;
}

inline bool pdl_enabled() {
  static const bool enabled = !env_flag("OPENMLA_DISABLE_PDL");
  return enabled;
}

// `pdl` false: a plain launch (the kernel's grid_dependency_wait is then a no-op).
template <class... KernelArgs, class... Args>
void launch_pdl(bool pdl, void (*kernel)(KernelArgs...), dim3 grid, dim3 block, size_t smem,
                cudaStream_t stream, Args&&... args) {
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr[0].val.programmaticStreamSerializationAllowed = 1;
  cudaLaunchConfig_t config{};
  config.gridDim = grid;
  config.blockDim = block;
  config.dynamicSmemBytes = smem;
  config.stream = stream;
  config.attrs = attr;
  config.numAttrs = pdl && pdl_enabled() ? 1 : 0;
  OPENMLA_CUDA_CHECK(cudaLaunchKernelEx(&config, kernel, std::forward<Args>(args)...));
}

}  // namespace openmla::sm90
