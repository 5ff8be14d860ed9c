// openmla-bench: the two ceilings every GPU result is compared with, measured on the spot:
// device-to-device copy bandwidth (bytes read + written) and bf16 GEMM 8192^3 through cuBLAS.
#if defined(OPENMLA_WITH_CUDA)

#include <cublas_v2.h>

#include <algorithm>
#include <iostream>
#include <vector>

#include "bench.h"
#include "gpu.h"

#define BENCH_CUBLAS_CHECK(expr)                                                                \
  do {                                                                                          \
    cublasStatus_t bench_st_ = (expr);                                                          \
    if (bench_st_ != CUBLAS_STATUS_SUCCESS)                                                     \
      throw ::openmla::Error("cublas", std::string(#expr) +                                     \
                                           " failed: " + cublasGetStatusString(bench_st_) +     \
                                           " at " + __FILE__ + ":" + std::to_string(__LINE__)); \
  } while (0)

namespace openmla::bench {

namespace {

// Median of `reps` timings (ms) of `body` on `stream`, each between its own pair of events.
template <class F>
double median_ms(cudaStream_t stream, int warmup, int reps, F&& body) {
  for (int i = 0; i < warmup; ++i) body();
  OPENMLA_CUDA_CHECK(cudaStreamSynchronize(stream));
  std::vector<cudaEvent_t> ev(reps + 1);
  for (auto& e : ev) OPENMLA_CUDA_CHECK(cudaEventCreate(&e));
  std::vector<float> ms(reps);
  try {
    OPENMLA_CUDA_CHECK(cudaEventRecord(ev[0], stream));
    for (int i = 0; i < reps; ++i) {
      body();
      OPENMLA_CUDA_CHECK(cudaEventRecord(ev[i + 1], stream));
    }
    OPENMLA_CUDA_CHECK(cudaStreamSynchronize(stream));
    for (int i = 0; i < reps; ++i)
      OPENMLA_CUDA_CHECK(cudaEventElapsedTime(&ms[i], ev[i], ev[i + 1]));
  } catch (...) {
    for (auto& e : ev) (void)cudaEventDestroy(e);
    throw;
  }
  for (auto& e : ev) OPENMLA_CUDA_CHECK(cudaEventDestroy(e));
  return median(ms);
}

}  // namespace

void measure_copy_ceiling(bool quick, Ceilings& ceil) {
  size_t free_b = 0, total_b = 0;
  OPENMLA_CUDA_CHECK(cudaMemGetInfo(&free_b, &total_b));
  size_t bytes = size_t(quick ? 1 : 4) << 30;  // large enough that the 60 MB L2 plays no part
  while (bytes > (size_t(64) << 20) && 2 * bytes > free_b / 2) bytes /= 2;
  BenchStream stream;
  DeviceBuffer src(bytes), dst(bytes);
  OPENMLA_CUDA_CHECK(cudaMemsetAsync(src.get(), 0x5a, bytes, stream.get()));
  OPENMLA_CUDA_CHECK(cudaMemsetAsync(dst.get(), 0, bytes, stream.get()));
  const int reps = quick ? 5 : 20;
  const double ms = median_ms(stream.get(), 2, reps, [&] {
    OPENMLA_CUDA_CHECK(
        cudaMemcpyAsync(dst.get(), src.get(), bytes, cudaMemcpyDeviceToDevice, stream.get()));
  });
  ceil.copy_gbps = 2.0 * double(bytes) / (ms * 1e-3) * 1e-9;
  ceil.copy_note = "cudaMemcpyAsync device-to-device of " + std::to_string(bytes >> 20) +
                   " MiB, bytes read + written, median of " + std::to_string(reps) +
                   " (CUDA events)";
}

void measure_gemm_ceiling(bool quick, Ceilings& ceil) {
  constexpr int n = 8192;
  const size_t elems = size_t(n) * n;
  BenchStream stream;
  DeviceBuffer a(elems * 2), b(elems * 2), c(elems * 2);
  fill_normal_bf16(a.get(), elems, 0x1111, 1.0f, stream.get());
  fill_normal_bf16(b.get(), elems, 0x2222, 1.0f, stream.get());
  OPENMLA_CUDA_CHECK(cudaMemsetAsync(c.get(), 0, elems * 2, stream.get()));
  cublasHandle_t handle = nullptr;
  BENCH_CUBLAS_CHECK(cublasCreate(&handle));
  const int reps = quick ? 5 : 20;
  double ms = 0;
  try {
    BENCH_CUBLAS_CHECK(cublasSetStream(handle, stream.get()));
    const float alpha = 1.0f, beta = 0.0f;
    ms = median_ms(stream.get(), 3, reps, [&] {
      BENCH_CUBLAS_CHECK(cublasGemmEx(handle, CUBLAS_OP_N, CUBLAS_OP_N, n, n, n, &alpha, a.get(),
                                      CUDA_R_16BF, n, b.get(), CUDA_R_16BF, n, &beta, c.get(),
                                      CUDA_R_16BF, n, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
    });
  } catch (...) {
    (void)cublasDestroy(handle);
    throw;
  }
  BENCH_CUBLAS_CHECK(cublasDestroy(handle));
  ceil.gemm_tflops = 2.0 * double(n) * n * n / (ms * 1e-3) * 1e-12;
  ceil.gemm_note =
      "cublasGemmEx bf16 in/out, fp32 compute, 8192^3, random N(0,1) inputs, "
      "median of " +
      std::to_string(reps) + " after 3 warm-ups (CUDA events)";
}

}  // namespace openmla::bench

#endif  // OPENMLA_WITH_CUDA
