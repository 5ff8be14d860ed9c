// openmla-bench device-side helpers: the fill (normally distributed bf16 values from a
// counter-based hash, so multi-GiB caches are filled in milliseconds without curand or host
// copies), the DeviceBuffer, and the SM clock probe.
#include <cuda_bf16.h>

#include "gpu.h"

namespace openmla::bench {

namespace {

__device__ __forceinline__ uint64_t mix64(uint64_t z) {  // splitmix64 finalizer
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

__global__ void fill_normal_bf16_kernel(__nv_bfloat16* __restrict__ dst, size_t count,
                                        uint64_t seed, float sigma) {
  const size_t stride = size_t(gridDim.x) * blockDim.x;
  for (size_t i = size_t(blockIdx.x) * blockDim.x + threadIdx.x; i < count; i += stride) {
    const uint64_t h = mix64(seed + 0x9e3779b97f4a7c15ull * (i + 1));
    // Box-Muller from two 24-bit uniforms; u1 in (0, 1] keeps the log finite.
    const float u1 = (float((h >> 40) & 0xffffff) + 1.0f) * (1.0f / 16777216.0f);
    const float u2 = float((h >> 8) & 0xffffff) * (1.0f / 16777216.0f);
    const float z = sqrtf(-2.0f * logf(u1)) * cospif(2.0f * u2);
    dst[i] = __float2bfloat16_rn(sigma * z);
  }
}

__global__ void clock_probe_kernel(unsigned long long* out) {
  unsigned long long t0, t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t0));
  const long long c0 = clock64();
  do {
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  } while (t - t0 < 50000);
  out[0] = static_cast<unsigned long long>(clock64() - c0);
  out[1] = t - t0;
}

// Holds the GPU for `ns` nanoseconds of globaltimer (one thread).
__global__ void hold_kernel(unsigned long long ns) {
  unsigned long long t0, t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t0));
  do {
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  } while (t - t0 < ns);
}

__global__ void empty_kernel() {}

}  // namespace

void hold_stream(cudaStream_t stream, double us) {
  hold_kernel<<<1, 1, 0, stream>>>(static_cast<unsigned long long>(us * 1e3));
  OPENMLA_CUDA_CHECK(cudaGetLastError());
}

void launch_empty(cudaStream_t stream) {
  empty_kernel<<<1, 32, 0, stream>>>();
  OPENMLA_CUDA_CHECK(cudaGetLastError());
}

double sm_clock_mhz(cudaStream_t stream, const std::function<void()>& while_waiting) {
  static DeviceBuffer buf(2 * sizeof(unsigned long long));
  unsigned long long h[2] = {0, 0};
  clock_probe_kernel<<<1, 1, 0, stream>>>(static_cast<unsigned long long*>(buf.get()));
  OPENMLA_CUDA_CHECK(cudaGetLastError());
  if (while_waiting) while_waiting();  // (before the copy: into pageable memory it blocks)
  OPENMLA_CUDA_CHECK(cudaMemcpyAsync(h, buf.get(), sizeof h, cudaMemcpyDeviceToHost, stream));
  OPENMLA_CUDA_CHECK(cudaStreamSynchronize(stream));
  return h[1] > 0 ? double(h[0]) / double(h[1]) * 1e3 : 0.0;
}

DeviceBuffer::DeviceBuffer(size_t bytes) : bytes_(bytes) {
  if (bytes > 0) OPENMLA_CUDA_CHECK(cudaMalloc(&ptr_, bytes));
}

DeviceBuffer::~DeviceBuffer() {
  // A destructor must not throw; a failed free here means the context is already broken, which
  // the next checked call reports.
  if (ptr_ != nullptr) (void)cudaFree(ptr_);
}

DeviceBuffer& DeviceBuffer::operator=(DeviceBuffer&& o) noexcept {
  if (this != &o) {
    if (ptr_ != nullptr) (void)cudaFree(ptr_);
    ptr_ = o.ptr_;
    bytes_ = o.bytes_;
    o.ptr_ = nullptr;
    o.bytes_ = 0;
  }
  return *this;
}

void fill_normal_bf16(void* dst, size_t count, uint64_t seed, float sigma, cudaStream_t stream) {
  if (count == 0) return;
  constexpr int kThreads = 256;
  const size_t want = (count + kThreads - 1) / kThreads;
  const unsigned blocks = unsigned(want < 8192 ? want : 8192);
  fill_normal_bf16_kernel<<<blocks, kThreads, 0, stream>>>(static_cast<__nv_bfloat16*>(dst), count,
                                                           seed, sigma);
  OPENMLA_CUDA_CHECK_LAUNCH();
}

}  // namespace openmla::bench
