// openmla-bench GPU helpers: checked CUDA/cuBLAS calls, an owning device buffer, device-side random
// fill (bench/device_fill.cu). Only compiled into a build with the CUDA backend.
#pragma once

#if defined(OPENMLA_WITH_CUDA)

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>

#include "cuda/common/cuda_check.h"  // OPENMLA_CUDA_CHECK: throws openmla::Error("cuda", ...)

namespace openmla::bench {

// A cudaMalloc'd buffer, freed when it goes out of scope (so each configuration gives its memory
// back before the next one is built).
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  explicit DeviceBuffer(size_t bytes);
  ~DeviceBuffer();
  DeviceBuffer(DeviceBuffer&& o) noexcept : ptr_(o.ptr_), bytes_(o.bytes_) {
    o.ptr_ = nullptr;
    o.bytes_ = 0;
  }
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept;
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;

  void* get() const { return ptr_; }
  size_t bytes() const { return bytes_; }
  template <class T>
  T* as() const {
    return static_cast<T*>(ptr_);
  }

 private:
  void* ptr_ = nullptr;
  size_t bytes_ = 0;
};

// dst[i] = bf16(sigma * N(0, 1)) from a counter-based hash of (seed, i): no curand, no state.
void fill_normal_bf16(void* dst, size_t count, uint64_t seed, float sigma, cudaStream_t stream);

// The SM clock in MHz now: a one-thread kernel counts clock64 cycles over ~50 us of globaltimer,
// queued on `stream` (so it runs right after the work queued before it); waits for the stream.
// `while_waiting` (if set) runs on the host once the probe is queued, before the wait.
double sm_clock_mhz(cudaStream_t stream, const std::function<void()>& while_waiting = {});

// The board's average power (W) while the work before `done` runs: the host polls NVML's
// energy counter of the current CUDA device (it moves in steps of ~100 ms) until `done` has
// completed, and divides the energy between the first and the last step it saw by the time
// between them. NaN without NVML or when those steps span under 250 ms (replay windows under
// ~0.35 s, e.g. --quick). Expect +-5 % over ~1 s: the board's power swings within the cap.
double gpu_power_until(cudaEvent_t done);

// A one-thread kernel that keeps `stream` busy for `us` microseconds (work queued behind it is
// issued by the host meanwhile, so events around that work time the GPU alone).
void hold_stream(cudaStream_t stream, double us);
// An empty 32-thread kernel (the floor of an eager launch).
void launch_empty(cudaStream_t stream);

// A non-blocking stream owned for the lifetime of a measurement.
class BenchStream {
 public:
  BenchStream() { OPENMLA_CUDA_CHECK(cudaStreamCreateWithFlags(&s_, cudaStreamNonBlocking)); }
  ~BenchStream() { (void)cudaStreamDestroy(s_); }
  BenchStream(const BenchStream&) = delete;
  BenchStream& operator=(const BenchStream&) = delete;
  cudaStream_t get() const { return s_; }

 private:
  cudaStream_t s_ = nullptr;
};

}  // namespace openmla::bench

#endif  // OPENMLA_WITH_CUDA
