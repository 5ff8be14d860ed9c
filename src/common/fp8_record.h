// Byte layout of one token in the FP8 KV-cache formats of SPEC §2 (host and device).
// Both CPU and CUDA quantize/dequantize go through these functions, so the layout lives in one
// place.
#pragma once

#include <cstdint>

#include "common/numeric.h"

namespace openmla::fp8 {

// V32: record of 656 bytes at page_base + offset * 656.
inline constexpr int kV32Bytes = 656, kV32Nope = 512, kV32Tile = 128, kV32Tiles = 4;
inline constexpr int kV32ScaleOff = 512, kV32RopeOff = 528, kRope = 64;
// MODEL1: records of 576 bytes [448 e4m3 | 64 bf16] at page_base + offset * 576, then 8 scale
// bytes per token (7 UE8M0 + 1 pad) at page_base + page_size * 576 + offset * 8.
inline constexpr int kM1Bytes = 584, kM1Nope = 448, kM1Tile = 64, kM1Tiles = 7, kM1Record = 576;

struct TokenPtrs {
  uint8_t* nope;    // e4m3 values
  uint8_t* scales;  // V32: 4 x fp32 (unaligned-safe access); MODEL1: 7 UE8M0 bytes + pad
  uint8_t* rope;    // 64 x bf16
};

OPENMLA_HD TokenPtrs token_ptrs(uint8_t* page_base, int64_t offset, int64_t page_size,
                                bool model1) {
  TokenPtrs t;
  if (!model1) {
    uint8_t* r = page_base + offset * kV32Bytes;
    t.nope = r;
    t.scales = r + kV32ScaleOff;
    t.rope = r + kV32RopeOff;
  } else {
    uint8_t* r = page_base + offset * kM1Record;
    t.nope = r;
    t.rope = r + kM1Nope;
    t.scales = page_base + page_size * kM1Record + offset * 8;
  }
  return t;
}

OPENMLA_HD float tile_scale(const TokenPtrs& t, int tile, bool model1) {
  if (model1) return num::ue8m0_to_f32(t.scales[tile]);
  float s;
  memcpy(&s, t.scales + 4 * tile, 4);
  return s;
}

// Quantize one token: src = d_qk bf16 bit patterns (contiguous).
OPENMLA_HD void quantize_token(const uint16_t* src, uint8_t* page_base, int64_t offset,
                               int64_t page_size, bool model1) {
  TokenPtrs t = token_ptrs(page_base, offset, page_size, model1);
  const int tiles = model1 ? kM1Tiles : kV32Tiles, tile = model1 ? kM1Tile : kV32Tile;
  const int nope = tiles * tile;
  for (int k = 0; k < tiles; ++k) {
    float amax = 0.0f;
    for (int j = 0; j < tile; ++j) {
      float a = fabsf(num::bf16_to_f32(src[k * tile + j]));
      amax = a > amax ? a : amax;  // NaN elements do not raise the scale
    }
    const float scale = num::fp8_tile_scale(amax);
    for (int j = 0; j < tile; ++j)
      t.nope[k * tile + j] = num::f32_to_e4m3(num::bf16_to_f32(src[k * tile + j]) / scale);
    if (model1) {
      t.scales[k] = num::f32_to_ue8m0(scale);
    } else {
      memcpy(t.scales + 4 * k, &scale, 4);
    }
  }
  if (model1) t.scales[kM1Tiles] = 0;  // pad byte
  for (int j = 0; j < kRope; ++j) memcpy(t.rope + 2 * j, src + nope + j, 2);
}

// Dequantize one token into d_qk bf16 bit patterns: x' = bf16(float(q) * scale); RoPE copied.
OPENMLA_HD void dequantize_token(const uint8_t* page_base, int64_t offset, int64_t page_size,
                                 bool model1, uint16_t* dst) {
  TokenPtrs t = token_ptrs(const_cast<uint8_t*>(page_base), offset, page_size, model1);
  const int tiles = model1 ? kM1Tiles : kV32Tiles, tile = model1 ? kM1Tile : kV32Tile;
  const int nope = tiles * tile;
  for (int k = 0; k < tiles; ++k) {
    const float scale = tile_scale(t, k, model1);
    for (int j = 0; j < tile; ++j)
      dst[k * tile + j] = num::f32_to_bf16(num::e4m3_to_f32(t.nope[k * tile + j]) * scale);
  }
  for (int j = 0; j < kRope; ++j) memcpy(dst + nope + j, t.rope + 2 * j, 2);
}

}  // namespace openmla::fp8
