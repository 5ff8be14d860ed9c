// CUDA FP8 KV-cache tools: quantize, dequantize, append (one thread per token; the byte layout is
// shared with the CPU backend through common/fp8_record.h, so both produce identical bytes).
#include <cuda_runtime.h>

#include "backend.h"
#include "common/fp8_record.h"
#include "cuda/common/cuda_check.h"

namespace openmla::sm90 {

namespace {

constexpr int kThreads = 128;

__global__ void quantize_kernel(const uint16_t* __restrict__ in, int64_t in_page_stride,
                                int64_t in_token_stride, uint8_t* __restrict__ cache,
                                int64_t page_stride, int64_t pages, int64_t page_size,
                                bool model1) {
  const int64_t tok = blockIdx.x * int64_t(kThreads) + threadIdx.x;
  if (tok >= pages * page_size) return;
  const int64_t pg = tok / page_size, off = tok % page_size;
  fp8::quantize_token(in + pg * in_page_stride + off * in_token_stride, cache + pg * page_stride,
                      off, page_size, model1);
}

__global__ void dequantize_kernel(const uint8_t* __restrict__ cache, int64_t page_stride,
                                  int64_t pages, int64_t page_size, bool model1,
                                  uint16_t* __restrict__ out, int64_t out_page_stride,
                                  int64_t out_token_stride) {
  const int64_t tok = blockIdx.x * int64_t(kThreads) + threadIdx.x;
  if (tok >= pages * page_size) return;
  const int64_t pg = tok / page_size, off = tok % page_size;
  fp8::dequantize_token(cache + pg * page_stride, off, page_size, model1,
                        out + pg * out_page_stride + off * out_token_stride);
}

__global__ void append_kernel(const uint16_t* __restrict__ in, int64_t in_stride,
                              const int32_t* __restrict__ slots, int64_t slot_stride, int64_t n,
                              uint8_t* __restrict__ cache, int64_t page_stride, int64_t num_pages,
                              int64_t page_size, bool model1) {
  const int64_t i = blockIdx.x * int64_t(kThreads) + threadIdx.x;
  if (i >= n) return;
  const int64_t slot = slots[i * slot_stride];
  if (slot < 0 || slot >= num_pages * page_size) return;  // masked, never written
  fp8::quantize_token(in + i * in_stride, cache + (slot / page_size) * page_stride,
                      slot % page_size, page_size, model1);
}

unsigned blocks_for(int64_t n) { return static_cast<unsigned>((n + kThreads - 1) / kThreads); }

}  // namespace

void quantize_kv_cache(const QuantizeKVParams& p) {
  const int64_t pages = p.input.shape[0], ps = p.input.shape[1];
  quantize_kernel<<<blocks_for(pages * ps), kThreads, 0, static_cast<cudaStream_t>(p.stream)>>>(
      static_cast<const uint16_t*>(p.input.data), p.input.strides[0], p.input.strides[1],
      static_cast<uint8_t*>(p.cache.data), p.cache.strides[0], pages, ps,
      p.format == KVCacheFormat::kFP8Model1);
  OPENMLA_CUDA_CHECK_LAUNCH();
}

void dequantize_kv_cache(const DequantizeKVParams& p) {
  const int64_t pages = p.cache.shape[0], ps = p.cache.shape[1];
  dequantize_kernel<<<blocks_for(pages * ps), kThreads, 0, static_cast<cudaStream_t>(p.stream)>>>(
      static_cast<const uint8_t*>(p.cache.data), p.cache.strides[0], pages, ps,
      p.format == KVCacheFormat::kFP8Model1, static_cast<uint16_t*>(p.output.data),
      p.output.strides[0], p.output.strides[1]);
  OPENMLA_CUDA_CHECK_LAUNCH();
}

void append_kv_cache(const AppendKVParams& p) {
  const int64_t n = p.input.shape[0];
  append_kernel<<<blocks_for(n), kThreads, 0, static_cast<cudaStream_t>(p.stream)>>>(
      static_cast<const uint16_t*>(p.input.data), p.input.strides[0],
      static_cast<const int32_t*>(p.slots.data), p.slots.strides[0], n,
      static_cast<uint8_t*>(p.cache.data), p.cache.strides[0], p.cache.shape[0], p.cache.shape[1],
      p.format == KVCacheFormat::kFP8Model1);
  OPENMLA_CUDA_CHECK_LAUNCH();
}

}  // namespace openmla::sm90
