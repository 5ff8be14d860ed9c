// OPENMLA_CUDA_CHECK: every CUDA runtime call and launch goes through it; failure throws
// openmla::Error("cuda", ...) naming the call, the file and the line.
#pragma once

#include <cuda_runtime.h>

#include <string>

#include "openmla/error.h"

#define OPENMLA_CUDA_CHECK(expr)                                                                   \
  do {                                                                                             \
    cudaError_t openmla_err_ = (expr);                                                             \
    if (openmla_err_ != cudaSuccess)                                                               \
      throw ::openmla::Error("cuda", std::string(#expr) +                                          \
                                         " failed: " + cudaGetErrorString(openmla_err_) + " at " + \
                                         __FILE__ + ":" + std::to_string(__LINE__));               \
  } while (0)

// After a <<<>>> launch: configuration errors surface here, not at the next sync.
#define OPENMLA_CUDA_CHECK_LAUNCH() OPENMLA_CUDA_CHECK(cudaGetLastError())
