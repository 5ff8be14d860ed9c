// Scalar conversions shared by the CPU backend, the tests and (host/device) the CUDA kernels:
// bf16, fp16, float8 e4m3fn and UE8M0, all round-to-nearest-even, bit-exact with the hardware.
// Every NaN converts to the canonical positive NaN of the target format: GPU arithmetic does not
// keep NaN signs or payloads, and CPU and GPU must write identical bytes.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#define OPENMLA_HD __host__ __device__ __forceinline__
#else
#define OPENMLA_HD inline
#endif

namespace openmla::num {

OPENMLA_HD uint32_t f32_bits(float f) {
  uint32_t u;
  memcpy(&u, &f, 4);
  return u;
}
OPENMLA_HD float bits_f32(uint32_t u) {
  float f;
  memcpy(&f, &u, 4);
  return f;
}

// ---- bf16 ----
OPENMLA_HD float bf16_to_f32(uint16_t h) { return bits_f32(static_cast<uint32_t>(h) << 16); }
OPENMLA_HD uint16_t f32_to_bf16(float f) {
  uint32_t u = f32_bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return 0x7fc0;  // canonical NaN (see file note)
  u += 0x7fffu + ((u >> 16) & 1u);                     // round to nearest even
  return static_cast<uint16_t>(u >> 16);
}

// ---- fp16 (IEEE binary16) ----
OPENMLA_HD float f16_to_f32(uint16_t h) {
  uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1f, man = h & 0x3ffu;
  if (exp == 0x1f) return bits_f32(sign | 0x7f800000u | (man << 13));
  if (exp == 0) {  // zero or subnormal: man * 2^-24
    float v = static_cast<float>(man) * 5.9604644775390625e-8f;
    return sign ? -v : v;
  }
  return bits_f32(sign | ((exp + 112) << 23) | (man << 13));
}
OPENMLA_HD uint16_t f32_to_f16(float f) {
  uint32_t u = f32_bits(f);
  uint16_t sign = static_cast<uint16_t>((u >> 16) & 0x8000u);
  uint32_t a = u & 0x7fffffffu;
  if (a > 0x7f800000u) return 0x7e00u;          // canonical NaN
  if (a >= 0x477ff000u) return sign | 0x7c00u;  // rounds to >= 65520: inf
  if (a < 0x38800000u) {                        // below 2^-14: subnormal, step 2^-24
    float v = bits_f32(a) * 16777216.0f;        // exact scaling by 2^24
    float r = nearbyintf(v);                    // host default rounding mode: nearest even
    return sign | static_cast<uint16_t>(r);
  }
  uint32_t rounded = a + 0xfffu + ((a >> 13) & 1u);
  return sign | static_cast<uint16_t>((rounded - 0x38000000u) >> 13);
}

// ---- float8 e4m3fn: bias 7, no inf, 0x7f/0xff NaN, max 448 ----
OPENMLA_HD float e4m3_to_f32(uint8_t b) {
  uint32_t exp = (b >> 3) & 0xf, man = b & 7u;
  float v;
  if (exp == 0xf && man == 7) {
    return bits_f32(0x7fc00000u);  // canonical NaN
  } else if (exp == 0) {
    v = static_cast<float>(man) * 0.001953125f;  // man * 2^-9
  } else {
    v = bits_f32(((exp + 120) << 23) | (man << 20));
  }
  return (b & 0x80) ? -v : v;
}
// Round to nearest even; finite values beyond 448 saturate to +-448 (the quantizers never produce
// them: their scale maps amax to <= 448).
OPENMLA_HD uint8_t f32_to_e4m3(float f) {
  uint32_t u = f32_bits(f);
  uint8_t sign = static_cast<uint8_t>((u >> 24) & 0x80u);
  uint32_t a = u & 0x7fffffffu;
  if (a > 0x7f800000u) return 0x7f;          // canonical NaN
  if (a >= 0x43e00000u) return sign | 0x7e;  // >= 448 (and inf): saturate
  if (a < 0x3c800000u) {                     // below 2^-6: subnormal, step 2^-9
    float r = nearbyintf(bits_f32(a) * 512.0f);
    return sign | static_cast<uint8_t>(r);  // r == 8 is the smallest normal, encoded the same
  }
  uint32_t rounded = a + 0x7ffffu + ((a >> 20) & 1u);
  uint32_t code = (rounded - 0x3c000000u) >> 20;  // rebias 127 -> 7, keep 3 mantissa bits
  return sign | static_cast<uint8_t>(code > 0x7e ? 0x7e : code);
}

// ---- UE8M0: a power of two 2^(e - 127) stored as its exponent byte ----
OPENMLA_HD float ue8m0_to_f32(uint8_t e) { return bits_f32(static_cast<uint32_t>(e) << 23); }
// For an exact power of two in the normal range.
OPENMLA_HD uint8_t f32_to_ue8m0(float pow2) {
  return static_cast<uint8_t>((f32_bits(pow2) >> 23) & 0xff);
}

// Tile scale rule of SPEC §2: s = max(amax / 448, 1e-4); scale = 2^ceil(log2(s)).
OPENMLA_HD float fp8_tile_scale(float amax) {
  float s = amax / 448.0f;
  if (!(s >= 1e-4f)) s = 1e-4f;              // also catches NaN amax
  if (s > 1.7014118e38f) s = 1.7014118e38f;  // inf amax: largest power of two, 2^127
  // Exact 2^ceil(log2(s)) from the bits (log2f can round s = 2^k(1 + ulp) down to k).
  uint32_t u = f32_bits(s);
  if (u & 0x7fffffu) u = (u & 0x7f800000u) + 0x800000u;
  return bits_f32(u);
}

}  // namespace openmla::num
