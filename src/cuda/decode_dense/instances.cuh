// Definitions behind instances.h, included by the two instantiating translation units only.
#pragma once

#include <atomic>
#include <cstdint>

#include "cuda/common/cuda_check.h"
#include "cuda/common/launch.h"
#include "cuda/decode_dense/instances.h"
#include "cuda/decode_dense/kernel.cuh"
#include "cuda/decode_dense/narrow.cuh"

namespace openmla::sm90::dense_decode_detail {

// Opts `kernel` in to `bytes` of dynamic shared memory on the current device, once per device:
// the attribute belongs to the device's context, so a process driving several GPUs needs it on
// each (setting it twice from racing threads is harmless).
template <class Kernel>
void allow_smem(Kernel kernel, int bytes, std::atomic<uint64_t>& configured) {
  int dev = 0;
  OPENMLA_CUDA_CHECK(cudaGetDevice(&dev));
  const uint64_t bit = dev < 64 ? (uint64_t(1) << dev) : 0;
  if (bit != 0 && (configured.load(std::memory_order_acquire) & bit) != 0) return;
  OPENMLA_CUDA_CHECK(
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes));
  configured.fetch_or(bit, std::memory_order_release);
}

template <int kChunks, bool kFp16, bool kMerge, bool kBox64>
void launch(const Maps& m, const DenseDecodeKernelParams& kp, dim3 grid, cudaStream_t stream) {
  auto kernel = dense_decode_kernel<kChunks, kFp16, kMerge, kBox64>;
  static std::atomic<uint64_t> configured{0};  // per instantiation: a bit per device
  allow_smem(kernel, Smem<kChunks>::kAlloc, configured);
  launch_pdl(false, kernel, grid, dim3(kThreads), Smem<kChunks>::kAlloc, stream, m.k, m.q, m.out,
             m.accum, kp);
#if defined(OPENMLA_DECODE_PROFILE)
  dense_decode_prof_print<<<1, 1, 0, stream>>>();
#endif
}

template <int kChunks, bool kFp16, int kN>
void launch_narrow(const Maps& m, const DenseDecodeKernelParams& kp, dim3 grid,
                   cudaStream_t stream) {
  auto kernel = narrow_decode_kernel<kChunks, kFp16, kN>;
  using L = NarrowSmem<kChunks, kN>;
  static std::atomic<uint64_t> configured{0};  // per instantiation: a bit per device
  allow_smem(kernel, L::kAlloc, configured);
  launch_pdl(false, kernel, grid, dim3(kNarrowThreads), L::kAlloc, stream, m.k, m.q, kp);
}

// The main kernel's variant for this call: pair merge or not (the plan), and whether a block is
// one copy box (pages of 64 and multiples).
template <int kChunks, bool kFp16, bool kMerge>
void launch_main(const Maps& m, const DenseDecodeKernelParams& kp, dim3 grid,
                 cudaStream_t stream) {
  if (kp.box_tokens == 64)
    launch<kChunks, kFp16, kMerge, true>(m, kp, grid, stream);
  else
    launch<kChunks, kFp16, kMerge, false>(m, kp, grid, stream);
}

template <int kChunks, bool kFp16>
void launch_any(const Maps& m, const DenseDecodeKernelParams& kp, dim3 grid, bool narrow,
                cudaStream_t stream) {
  if (!narrow && kp.plan.merge_pairs)
    launch_main<kChunks, kFp16, true>(m, kp, grid, stream);
  else if (!narrow)
    launch_main<kChunks, kFp16, false>(m, kp, grid, stream);
  else if (kp.rows <= 16)
    launch_narrow<kChunks, kFp16, 16>(m, kp, grid, stream);
  else
    launch_narrow<kChunks, kFp16, 32>(m, kp, grid, stream);
}

}  // namespace openmla::sm90::dense_decode_detail
