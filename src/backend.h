// Backend entry points behind the public API. The api/ layer validates every argument, resolves
// defaults (softmax_scale is never 0 here) and calls exactly one of these.
#pragma once

#include "openmla/decode.h"
#include "openmla/kv_cache.h"
#include "openmla/prefill.h"

namespace openmla {

#define OPENMLA_BACKEND_OPS                                         \
  void dense_decode(const DenseDecodeParams& p);                    \
  void sparse_decode(const SparseDecodeParams& p);                  \
  void sparse_prefill(const SparsePrefillParams& p);                \
  void dense_prefill_forward(const DensePrefillParams& p);          \
  void dense_prefill_backward(const DensePrefillBackwardParams& p); \
  void quantize_kv_cache(const QuantizeKVParams& p);                \
  void dequantize_kv_cache(const DequantizeKVParams& p);            \
  void append_kv_cache(const AppendKVParams& p);

namespace cpu {
OPENMLA_BACKEND_OPS
}  // namespace cpu

#if defined(OPENMLA_WITH_CUDA)
namespace sm90 {
OPENMLA_BACKEND_OPS
// Operators with a GPU kernel in this build (comma-separated), for version.h.
const char* implemented_operators();
// DecodePlan on a CUDA device.
void plan_create(DecodePlan::Impl& impl);
void plan_destroy(DecodePlan::Impl& impl);
void plan_update(DecodePlan::Impl& impl, const TensorView& cache_seqlens, Stream stream);
}  // namespace sm90
#endif

#undef OPENMLA_BACKEND_OPS

struct DecodePlan::Impl {
  Device device;
  DecodePlanConfig config;
  void* state = nullptr;  // the schedule's device buffers (CUDA), fixed size per config
  size_t state_bytes = 0;
  size_t call_workspace_bytes = 0;  // DecodePlan::workspace_bytes()
  int64_t updated_batch = -1;  // the batch of the last update (<= config.batch); -1: none yet
};

}  // namespace openmla
