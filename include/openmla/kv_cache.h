// FP8 KV-cache formats (SPEC §2): quantize, dequantize, append new tokens into a paged cache.
#pragma once

#include "openmla/tensor.h"

namespace openmla {

enum class KVCacheFormat : uint8_t {
  // d_qk 576; 656 B/token: 512 e4m3 | 4 fp32 scales (tiles of 128) | 64 bf16 RoPE.
  kFP8V32,
  // d_qk 512; 584 B/token nominal. Per page: page_size records of [448 e4m3 | 64 bf16 RoPE]
  // (576 B), then page_size records of 8 scale bytes (7 UE8M0 scales for tiles of 64, 1 pad);
  // a page occupies at least page_size * 584 bytes (engines pad it to a multiple of 576).
  kFP8Model1,
};

struct KVCacheFormatInfo {
  int d_qk;             // 576 | 512
  int d_nope;           // 512 | 448
  int d_rope;           // 64
  int tile;             // 128 | 64
  int num_tiles;        // 4 | 7
  int bytes_per_token;  // 656 | 584
};

KVCacheFormatInfo format_info(KVCacheFormat format);
const char* format_name(KVCacheFormat format);
// Format for a sparse-decode head dim: 576 -> V32, 512 -> MODEL1; throws Error("q") otherwise.
KVCacheFormat format_for_head_dim(int d_qk);
// Bytes one page of `page_size` tokens needs (MODEL1: page_size * 584 rounded up to 576).
int64_t fp8_page_bytes(KVCacheFormat format, int64_t page_size);

// input [num_pages, page_size, 1, d_qk] bf16 -> cache [num_pages, page_size, 1, bytes_per_token]
// uint8 (cache stride[0] = page stride in bytes, >= fp8_page_bytes; stride[1] = bytes_per_token).
struct QuantizeKVParams {
  TensorView input;
  TensorView cache;
  KVCacheFormat format = KVCacheFormat::kFP8V32;
  Stream stream = nullptr;
};
void quantize_kv_cache(const QuantizeKVParams& params);

// cache (as above) -> output [num_pages, page_size, 1, d_qk] bf16.
struct DequantizeKVParams {
  TensorView cache;
  TensorView output;
  KVCacheFormat format = KVCacheFormat::kFP8V32;
  Stream stream = nullptr;
};
void dequantize_kv_cache(const DequantizeKVParams& params);

// Quantize new tokens `input` [n, d_qk] bf16 into `cache` at `slots` [n] int32
// (slot = page * page_size + offset); a slot < 0 or >= num_pages * page_size is skipped.
struct AppendKVParams {
  TensorView input;
  TensorView slots;
  TensorView cache;
  KVCacheFormat format = KVCacheFormat::kFP8V32;
  Stream stream = nullptr;
};
void append_kv_cache(const AppendKVParams& params);

}  // namespace openmla
