// Shared by the L2 dev probes (scripts/dev/l2_after_probe.cu, l2prio_probe.cu): a grid-stride
// read of n 16-byte words, kept alive by a sink store that never happens in practice. Found
// through the probes' quoted include, so their one-line nvcc commands build as before.
#pragma once
#include <cuda_runtime.h>

#include <cstddef>

__global__ void read_all(const uint4* y, size_t n, unsigned* sink) {
  unsigned acc = 0;
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n;
       i += size_t(gridDim.x) * blockDim.x) {
    const uint4 v = y[i];
    acc ^= v.x ^ v.w;
  }
  if (acc == 0x12345678) *sink = acc;
}
