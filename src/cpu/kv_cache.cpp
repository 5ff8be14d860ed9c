// CPU reference: FP8 KV-cache quantize, dequantize and append (layout in common/fp8_record.h).
#include <vector>

#include "backend.h"
#include "common/fp8_record.h"
#include "cpu/common.h"

namespace openmla::cpu {

namespace {
uint8_t* page_ptr(const TensorView& cache, int64_t page) {
  return static_cast<uint8_t*>(cache.data) + page * cache.strides[0];
}
}  // namespace

void quantize_kv_cache(const QuantizeKVParams& p) {
  const int64_t pages = p.input.shape[0], ps = p.input.shape[1], d = p.input.shape[3];
  const bool model1 = p.format == KVCacheFormat::kFP8Model1;
  parallel_for(pages, [&](int64_t pg) {
    for (int64_t t = 0; t < ps; ++t) {
      const auto* src = static_cast<const uint16_t*>(p.input.data) + offset(p.input, {pg, t, 0, 0});
      (void)d;
      fp8::quantize_token(src, page_ptr(p.cache, pg), t, ps, model1);
    }
  });
}

void dequantize_kv_cache(const DequantizeKVParams& p) {
  const int64_t pages = p.cache.shape[0], ps = p.cache.shape[1];
  const bool model1 = p.format == KVCacheFormat::kFP8Model1;
  parallel_for(pages, [&](int64_t pg) {
    for (int64_t t = 0; t < ps; ++t) {
      auto* dst = static_cast<uint16_t*>(p.output.data) + offset(p.output, {pg, t, 0, 0});
      fp8::dequantize_token(page_ptr(p.cache, pg), t, ps, model1, dst);
    }
  });
}

void append_kv_cache(const AppendKVParams& p) {
  const int64_t n = p.input.shape[0], ps = p.cache.shape[1];
  const int64_t num_slots = p.cache.shape[0] * ps;
  const bool model1 = p.format == KVCacheFormat::kFP8Model1;
  // Serial: if two entries name the same slot the later one wins here (on the GPU: unspecified).
  for (int64_t i = 0; i < n; ++i) {
    const int64_t slot = load_i32(p.slots, i * p.slots.strides[0]);
    if (slot < 0 || slot >= num_slots) continue;
    const auto* src = static_cast<const uint16_t*>(p.input.data) + offset(p.input, {i, 0});
    fp8::quantize_token(src, page_ptr(p.cache, slot / ps), slot % ps, ps, model1);
  }
}

}  // namespace openmla::cpu
