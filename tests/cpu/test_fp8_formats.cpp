// FP8 KV-cache formats (SPEC §2) and the scalar conversions of common/numeric.h, checked against
// naive definitions written here: values decoded from the bit fields by formula, encoders that
// search the ordered code table for the nearest value (ties to the even code), the tile-scale rule
// in exact arithmetic, and hand-built tokens whose every byte is known in advance.
#include <gtest/gtest.h>

#include <climits>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <tuple>
#include <vector>

#include "common/harness.h"
#include "common/numeric.h"
#include "openmla/openmla.h"

namespace openmla::test {
namespace {

using ld = long double;
constexpr ld kInfL = std::numeric_limits<ld>::infinity();

// ---------------------------------------------------------------------------------------------
// Naive decoders (from the bit fields, by formula).

// float8 e4m3fn: 1 sign, 4 exponent (bias 7), 3 mantissa; no inf; S.1111.111 is NaN.
ld e4m3_value(uint8_t b) {
  const int s = b >> 7, e = (b >> 3) & 15, m = b & 7;
  if (e == 15 && m == 7) return std::numeric_limits<ld>::quiet_NaN();
  const ld v = e == 0 ? std::ldexp(ld(m) / 8, -6) : std::ldexp(1 + ld(m) / 8, e - 7);
  return s ? -v : v;
}
// bf16: 1 sign, 8 exponent (bias 127), 7 mantissa.
ld bf16_value(uint16_t h) {
  const int s = h >> 15, e = (h >> 7) & 0xff, m = h & 0x7f;
  ld v;
  if (e == 0xff)
    v = m ? std::numeric_limits<ld>::quiet_NaN() : kInfL;
  else if (e == 0)
    v = std::ldexp(ld(m) / 128, -126);
  else
    v = std::ldexp(1 + ld(m) / 128, e - 127);
  return s ? -v : v;
}
// IEEE binary16: 1 sign, 5 exponent (bias 15), 10 mantissa.
ld f16_value(uint16_t h) {
  const int s = h >> 15, e = (h >> 10) & 0x1f, m = h & 0x3ff;
  ld v;
  if (e == 0x1f)
    v = m ? std::numeric_limits<ld>::quiet_NaN() : kInfL;
  else if (e == 0)
    v = std::ldexp(ld(m) / 1024, -14);
  else
    v = std::ldexp(1 + ld(m) / 1024, e - 15);
  return s ? -v : v;
}

// Round-to-nearest-even encoder by search: codes 0..top (positive, ordered by value) with
// value(code); `a` >= 0. A value at or beyond value(top) gives top (callers choose what `top`
// means: the saturation code, or the inf code valued as the next power of two).
template <class V>
uint32_t rne_search(ld a, uint32_t top, V value) {
  if (a >= value(top)) return top;
  uint32_t lo = 0, hi = top;  // value(lo) <= a < value(hi)
  while (hi - lo > 1) {
    const uint32_t mid = (lo + hi) / 2;
    (value(mid) <= a ? lo : hi) = mid;
  }
  const ld dl = a - value(lo), dh = value(hi) - a;
  if (dl < dh) return lo;
  if (dh < dl) return hi;
  return (lo & 1) ? hi : lo;  // tie: the even code
}

uint8_t naive_e4m3(ld x) {  // saturating (satfinite), as the quantizers use it
  const uint8_t sign = std::signbit(x) ? 0x80 : 0;
  if (std::isnan(x)) return sign | 0x7f;
  return sign | uint8_t(rne_search(std::fabs(x), 0x7e, [](uint32_t c) { return e4m3_value(c); }));
}
uint16_t naive_bf16(ld x) {  // overflow rounds to inf: the inf code stands for 2^128
  const uint16_t sign = std::signbit(x) ? 0x8000 : 0;
  return sign | uint16_t(rne_search(std::fabs(x), 0x7f80, [](uint32_t c) {
           return c == 0x7f80 ? std::ldexp(ld(1), 128) : bf16_value(c);
         }));
}
uint16_t naive_f16(ld x) {  // overflow to inf: the inf code stands for 2^16
  const uint16_t sign = std::signbit(x) ? 0x8000 : 0;
  return sign | uint16_t(rne_search(std::fabs(x), 0x7c00, [](uint32_t c) {
           return c == 0x7c00 ? ld(65536) : f16_value(c);
         }));
}

// Tile scale of SPEC §2 in exact arithmetic: the smallest power of two >= max(amax / 448, 1e-4).
ld naive_tile_scale(ld amax) {
  const ld s = std::max(amax / 448, ld(1e-4));
  ld p = std::ldexp(ld(1), -40);
  while (p < s) p *= 2;
  return p;
}

float f32_from_bits(uint32_t u) {
  float f;
  memcpy(&f, &u, 4);
  return f;
}
uint32_t bits_of(float f) {
  uint32_t u;
  memcpy(&u, &f, 4);
  return u;
}

// ---------------------------------------------------------------------------------------------
// FP8 cache helpers.

struct Fmt {
  KVCacheFormat format;
  bool model1;
  int d_qk, nope, tile, tiles, bpt;
};
Fmt fmt(bool model1) {
  return model1 ? Fmt{KVCacheFormat::kFP8Model1, true, 512, 448, 64, 7, 584}
                : Fmt{KVCacheFormat::kFP8V32, false, 576, 512, 128, 4, 656};
}

// Cache tensor [pages, ps, 1, bpt] with page stride = fp8_page_bytes + extra, every byte 0xff.
HostTensor make_cache(const Fmt& f, int64_t pages, int64_t ps, int64_t extra_stride) {
  const int64_t stride = fp8_page_bytes(f.format, ps) + extra_stride;
  HostTensor c(DType::kUInt8, {pages, ps, 1, f.bpt}, {stride, f.bpt, f.bpt, 1});
  c.fill_nan();
  return c;
}

// The byte ranges token (page, off) occupies, per the layout written out in SPEC §2.
struct TokenBytes {
  int64_t nope, scales, rope;  // byte offsets into the cache storage
};
TokenBytes token_bytes(const Fmt& f, const HostTensor& c, int64_t page, int64_t off) {
  const int64_t base = page * c.view.strides[0], ps = c.view.shape[1];
  if (!f.model1) return {base + off * 656, base + off * 656 + 512, base + off * 656 + 528};
  return {base + off * 576, base + ps * 576 + off * 8, base + off * 576 + 448};
}

// Bytes `tok` writes: nope, scales (V32: 16, MODEL1: 8 incl. pad), rope (128).
std::vector<int64_t> token_byte_list(const Fmt& f, const HostTensor& c, int64_t page, int64_t off) {
  const TokenBytes t = token_bytes(f, c, page, off);
  std::vector<int64_t> v;
  for (int i = 0; i < f.nope; ++i) v.push_back(t.nope + i);
  for (int i = 0; i < (f.model1 ? 8 : 16); ++i) v.push_back(t.scales + i);
  for (int i = 0; i < 128; ++i) v.push_back(t.rope + i);
  return v;
}

ld tile_scale_of(const Fmt& f, const HostTensor& c, const TokenBytes& t, int k) {
  if (f.model1) return std::ldexp(ld(1), int(c.storage[t.scales + k]) - 127);
  float s;
  memcpy(&s, &c.storage[t.scales + 4 * k], 4);
  return s;
}

// Naive decode of one token into d_qk values: e4m3 * tile scale, bf16 RoPE.
std::vector<ld> naive_decode(const Fmt& f, const HostTensor& c, int64_t page, int64_t off) {
  const TokenBytes t = token_bytes(f, c, page, off);
  std::vector<ld> v(f.d_qk);
  for (int k = 0; k < f.tiles; ++k) {
    const ld s = tile_scale_of(f, c, t, k);
    for (int j = 0; j < f.tile; ++j)
      v[k * f.tile + j] = e4m3_value(c.storage[t.nope + k * f.tile + j]) * s;
  }
  for (int j = 0; j < 64; ++j) {
    uint16_t h;
    memcpy(&h, &c.storage[t.rope + 2 * j], 2);
    v[f.nope + j] = bf16_value(h);
  }
  return v;
}

uint16_t bf16_bits_at(const HostTensor& t, int64_t elem_off) {
  uint16_t h;
  memcpy(&h, &t.storage[2 * elem_off], 2);
  return h;
}

// Naive quantization of one token (d_qk bf16 bit patterns) into the bytes it must occupy, in the
// order of token_byte_list.
std::vector<uint8_t> naive_quantize(const Fmt& f, const std::vector<uint16_t>& x) {
  std::vector<uint8_t> nope(f.nope), scales(f.model1 ? 8 : 16, 0), rope(128);
  for (int k = 0; k < f.tiles; ++k) {
    ld amax = 0;
    for (int j = 0; j < f.tile; ++j)
      amax = std::max(amax, std::fabs(bf16_value(x[k * f.tile + j])));
    const ld s = naive_tile_scale(amax);
    for (int j = 0; j < f.tile; ++j)
      nope[k * f.tile + j] = naive_e4m3(bf16_value(x[k * f.tile + j]) / s);
    const int e = std::ilogb(s);  // s = 2^e exactly
    if (f.model1) {
      scales[k] = uint8_t(e + 127);
    } else {
      const uint32_t u = uint32_t(e + 127) << 23;
      memcpy(&scales[4 * k], &u, 4);
    }
  }
  for (int j = 0; j < 64; ++j) memcpy(&rope[2 * j], &x[f.nope + j], 2);
  std::vector<uint8_t> out = nope;
  out.insert(out.end(), scales.begin(), scales.end());
  out.insert(out.end(), rope.begin(), rope.end());
  return out;
}

// Random bf16 pages whose tiles span many magnitudes (and some all-zero tiles).
HostTensor random_pages(const Fmt& f, int64_t pages, int64_t ps, std::mt19937_64& rng,
                        int64_t pad = 0) {
  HostTensor in(DType::kBFloat16, {pages, ps, 1, f.d_qk}, pad);
  in.fill_nan();
  fill_randn(in, rng);
  std::uniform_int_distribution<int> ex(-16, 12), pick(0, 9);
  for (int64_t p = 0; p < pages; ++p)
    for (int64_t t = 0; t < ps; ++t)
      for (int k = 0; k < f.tiles; ++k) {
        const int kind = pick(rng);
        const ld mul = kind == 0 ? 0 : std::ldexp(ld(1), ex(rng));
        for (int j = 0; j < f.tile; ++j) {
          const int64_t c = k * f.tile + j;
          in.set({p, t, 0, c}, double(in.get({p, t, 0, c}) * mul));
        }
        // Now and then make the tile's amax exactly 448 * 2^k (the scale-rule boundary).
        if (kind == 1) in.set({p, t, 0, k * f.tile + 5}, std::ldexp(448.0, ex(rng)));
      }
  return in;
}

std::vector<uint16_t> token_of(const HostTensor& in, int64_t p, int64_t t, int d) {
  std::vector<uint16_t> x(d);
  for (int c = 0; c < d; ++c) x[c] = bf16_bits_at(in, in.off({p, t, 0, c}));
  return x;
}

void quantize(const Fmt& f, const HostTensor& in, HostTensor& cache) {
  QuantizeKVParams qp;
  qp.input = in.view;
  qp.cache = cache.view;
  qp.format = f.format;
  quantize_kv_cache(qp);
}

// ---------------------------------------------------------------------------------------------
// The naive helpers themselves, on values whose encodings are known by hand (so that a mistake in
// a helper cannot hide a mistake in the library).

TEST(Fp8NaiveHelpers, KnownEncodings) {
  EXPECT_EQ(naive_e4m3(448), 0x7e);
  EXPECT_EQ(naive_e4m3(1.0625L), 0x38);
  EXPECT_EQ(naive_e4m3(1.1875L), 0x3a);
  EXPECT_EQ(naive_e4m3(-0.0L), 0x80);
  EXPECT_EQ(naive_bf16(1.0L), 0x3f80);
  EXPECT_EQ(naive_bf16(-2.5L), 0xc020);
  EXPECT_EQ(naive_f16(1.0L), 0x3c00);
  EXPECT_EQ(naive_f16(65520.0L), 0x7c00);
  EXPECT_EQ(naive_tile_scale(0), std::ldexp(ld(1), -13));
  EXPECT_EQ(naive_tile_scale(448), 1);
}

// ---------------------------------------------------------------------------------------------
// Scalar conversions (num::*), hand-picked values.

TEST(Fp8Scalar, E4M3HandPicked) {
  struct Case {
    float x;
    uint8_t want;
  };
  const Case cases[] = {
      {0.0f, 0x00},
      {-0.0f, 0x80},
      {1.0f, 0x38},
      {-1.0f, 0xb8},
      {0.5f, 0x30},
      {2.0f, 0x40},
      {448.0f, 0x7e},
      {-448.0f, 0xfe},
      {240.0f, 0x77},
      {256.0f, 0x78},
      {192.0f, 0x74},
      {-16.0f, 0xd8},
      {1.0625f, 0x38},  // tie between 1 (m=0) and 1.125 (m=1): even
      {1.1875f, 0x3a},  // tie between 1.125 (m=1) and 1.25 (m=2): even
      {1.0625001f, 0x39},
      {1.0624999f, 0x38},
      {1.9375f, 0x40},  // tie between 1.875 and 2: even = next binade
      {400.0f, 0x7c},   // tie between 384 (m=4) and 416 (m=5)
      {432.0f, 0x7e},   // tie between 416 (m=5) and 448 (m=6)
      {255.0f, 0x78},
      // Subnormals: step 2^-9.
      {0x1p-9f, 0x01},
      {0x1p-10f, 0x00},   // tie between 0 and 2^-9: even (0)
      {0x1.8p-9f, 0x02},  // 1.5 steps: tie between 1 and 2 -> 2
      {0x1.4p-8f, 0x02},  // 2.5 steps: tie -> 2
      {0x1.cp-8f, 0x04},  // 3.5 steps: tie -> 4
      {0x1.ep-7f, 0x08},  // 7.5 steps: tie between 7 (0x07) and 2^-6 (0x08) -> 0x08
      {0x1.cp-7f, 0x07},
      {0x1p-6f, 0x08},
      {0x1p-11f, 0x00},
      {-0x1p-11f, 0x80},
      {0x1.000002p-10f, 0x01},  // just above the 0/1 tie
      {0.001f, 0x01},
      // Saturation (e4m3fn has no inf): finite values beyond 448 and inf give +-448.
      {449.0f, 0x7e},
      {464.0f, 0x7e},
      {1000.0f, 0x7e},
      {-1e30f, 0xfe},
      {std::numeric_limits<float>::infinity(), 0x7e},
      {-std::numeric_limits<float>::infinity(), 0xfe},
  };
  for (const Case& c : cases) {
    EXPECT_EQ(num::f32_to_e4m3(c.x), c.want) << "x = " << c.x;
    EXPECT_EQ(naive_e4m3(c.x), c.want) << "naive helper, x = " << c.x;
  }
  EXPECT_EQ(num::f32_to_e4m3(std::numeric_limits<float>::quiet_NaN()) & 0x7f, 0x7f);
}

TEST(Fp8Scalar, E4M3AllCodes) {
  for (int b = 0; b < 256; ++b) {
    const ld want = e4m3_value(uint8_t(b));
    const float got = num::e4m3_to_f32(uint8_t(b));
    if (std::isnan(want)) {
      EXPECT_TRUE(std::isnan(got)) << "code " << b;
      continue;
    }
    EXPECT_EQ(ld(got), want) << "code " << b;
    EXPECT_EQ(std::signbit(got), (b & 0x80) != 0) << "code " << b;
    EXPECT_EQ(num::f32_to_e4m3(got), uint8_t(b)) << "round trip of code " << b;
  }
}

TEST(Fp8Scalar, E4M3MatchesNearestEvenSearch) {
  std::mt19937_64 rng(11);
  std::uniform_real_distribution<double> mant(1.0, 2.0);
  std::uniform_int_distribution<int> ex(-13, 9);
  std::uniform_int_distribution<int> code(0, 0x7d);
  for (int i = 0; i < 20000; ++i) {
    float x;
    if (i % 3 == 0) {  // exact midpoint between two adjacent codes
      const int c = code(rng);
      x = float((e4m3_value(uint8_t(c)) + e4m3_value(uint8_t(c + 1))) / 2);
    } else {
      x = float(std::ldexp(mant(rng), ex(rng)));
    }
    if (i % 2) x = -x;
    ASSERT_EQ(num::f32_to_e4m3(x), naive_e4m3(x)) << "x = " << x;
  }
}

TEST(Fp8Scalar, Bf16HandPicked) {
  struct Case {
    uint32_t f32;
    uint16_t want;
  };
  const Case cases[] = {
      {0x3f800000u, 0x3f80},                         // 1
      {0xc0200000u, 0xc020},                         // -2.5
      {0x80000000u, 0x8000},                         // -0
      {0x3f808000u, 0x3f80},                         // 1 + 2^-8: tie, even stays
      {0x3f818000u, 0x3f82},                         // 1 + 3*2^-8: tie, odd rounds up
      {0x3f808001u, 0x3f81},                         // just above the tie
      {0x3f807fffu, 0x3f80},                         // just below the tie
      {0x7f800000u, 0x7f80},                         // inf
      {0xff800000u, 0xff80},                         // -inf
      {0x7f7fffffu, 0x7f80},                         // FLT_MAX rounds to inf
      {0x7f7f8000u, 0x7f80},                         // tie at the top, odd: to inf
      {0x7f7effffu, 0x7f7f}, {0x00080000u, 0x0008},  // float subnormal 2^-130: exact in bf16
      {0x00008000u, 0x0000},  // tie between 0 and the smallest bf16 subnormal: even (0)
      {0x00018000u, 0x0002},  // tie between 1 and 2 subnormal steps: 2
      {0x3dcccccdu, 0x3dcd},  // 0.1
  };
  for (const Case& c : cases) {
    const float x = f32_from_bits(c.f32);
    EXPECT_EQ(num::f32_to_bf16(x), c.want) << std::hex << "bits 0x" << c.f32;
    EXPECT_EQ(naive_bf16(x), c.want) << std::hex << "naive helper, bits 0x" << c.f32;
  }
  const uint16_t n = num::f32_to_bf16(std::numeric_limits<float>::quiet_NaN());
  EXPECT_TRUE(std::isnan(bf16_value(n)));
  // A signalling NaN whose payload sits only in the low 16 bits must stay NaN (not become inf).
  EXPECT_TRUE(std::isnan(bf16_value(num::f32_to_bf16(f32_from_bits(0x7f800001u)))));
  for (uint32_t h = 0; h < 0x10000; ++h) {
    const ld want = bf16_value(uint16_t(h));
    const float got = num::bf16_to_f32(uint16_t(h));
    if (std::isnan(want)) {
      ASSERT_TRUE(std::isnan(got)) << h;
      continue;
    }
    ASSERT_EQ(ld(got), want) << h;
    ASSERT_EQ(num::f32_to_bf16(got), h) << h;
  }
}

TEST(Fp8Scalar, Bf16MatchesNearestEvenSearch) {
  std::mt19937_64 rng(12);
  std::uniform_int_distribution<uint32_t> bits(0, 0x7f7fffffu);
  for (int i = 0; i < 20000; ++i) {
    uint32_t u = bits(rng);
    if (i % 4 == 0) u = (u & 0xffff0000u) | 0x8000u;  // an exact tie
    const float x = f32_from_bits(u | (i % 2 ? 0x80000000u : 0));
    ASSERT_EQ(num::f32_to_bf16(x), naive_bf16(x)) << std::hex << bits_of(x);
  }
}

TEST(Fp8Scalar, Fp16HandPicked) {
  struct Case {
    float x;
    uint16_t want;
  };
  const Case cases[] = {
      {1.0f, 0x3c00},
      {-2.0f, 0xc000},
      {-0.0f, 0x8000},
      {0.5f, 0x3800},
      {65504.0f, 0x7bff},
      {65519.99f, 0x7bff},
      {65520.0f, 0x7c00},  // tie at the top: inf
      {1e6f, 0x7c00},
      {-1e6f, 0xfc00},
      {0x1p-14f, 0x0400},    // smallest normal
      {0x1p-24f, 0x0001},    // smallest subnormal
      {0x1p-25f, 0x0000},    // tie between 0 and 2^-24: even (0)
      {0x1.8p-24f, 0x0002},  // tie between 1 and 2 steps: 2
      {0x1.4p-23f, 0x0002},  // 2.5 steps: 2
      {0x1.000002p-25f, 0x0001},
      {0x1.ffcp-15f, 0x0400},    // 1023.5 subnormal steps: tie -> 1024 = smallest normal
      {1.00048828125f, 0x3c00},  // 1 + 2^-11: tie, even
      {1.00146484375f, 0x3c02},  // 1 + 3*2^-11: tie, odd rounds up
      {0.1f, 0x2e66},
      {std::numeric_limits<float>::infinity(), 0x7c00},
  };
  for (const Case& c : cases) {
    EXPECT_EQ(num::f32_to_f16(c.x), c.want) << "x = " << c.x;
    EXPECT_EQ(naive_f16(c.x), c.want) << "naive helper, x = " << c.x;
  }
  EXPECT_TRUE(std::isnan(f16_value(num::f32_to_f16(std::numeric_limits<float>::quiet_NaN()))));
  for (uint32_t h = 0; h < 0x10000; ++h) {
    const ld want = f16_value(uint16_t(h));
    const float got = num::f16_to_f32(uint16_t(h));
    if (std::isnan(want)) {
      ASSERT_TRUE(std::isnan(got)) << h;
      continue;
    }
    ASSERT_EQ(ld(got), want) << h;
    ASSERT_EQ(num::f32_to_f16(got), h) << h;
  }
}

TEST(Fp8Scalar, Fp16MatchesNearestEvenSearch) {
  std::mt19937_64 rng(13);
  std::uniform_real_distribution<double> mant(1.0, 2.0);
  std::uniform_int_distribution<int> ex(-27, 16);
  std::uniform_int_distribution<int> code(0, 0x7bfe);
  for (int i = 0; i < 20000; ++i) {
    float x;
    if (i % 3 == 0) {
      const int c = code(rng);
      x = float((f16_value(uint16_t(c)) + f16_value(uint16_t(c + 1))) / 2);
    } else {
      x = float(std::ldexp(mant(rng), ex(rng)));
    }
    if (i % 2) x = -x;
    ASSERT_EQ(num::f32_to_f16(x), naive_f16(x)) << "x = " << x;
  }
}

// ---------------------------------------------------------------------------------------------
// Scale rule: s = max(amax / 448, 1e-4), scale = 2^ceil(log2 s).

TEST(Fp8Scale, TileScaleRule) {
  EXPECT_EQ(num::fp8_tile_scale(0.0f), 0x1p-13f);  // 1e-4 -> 2^-13 (1.22e-4)
  EXPECT_EQ(num::fp8_tile_scale(1e-6f), 0x1p-13f);
  EXPECT_EQ(num::fp8_tile_scale(0.0448f), 0x1p-13f);            // s ~ 1e-4
  EXPECT_EQ(num::fp8_tile_scale(448.0f * 0x1p-14f), 0x1p-13f);  // s = 2^-14 < 1e-4
  for (int k = -13; k <= 20; ++k) {
    const float a = std::ldexp(448.0f, k);
    EXPECT_EQ(num::fp8_tile_scale(a), std::ldexp(1.0f, k)) << "amax = 448 * 2^" << k;
    EXPECT_EQ(num::fp8_tile_scale(std::nextafter(a, 1e30f)), std::ldexp(1.0f, k + 1)) << k;
    EXPECT_EQ(num::fp8_tile_scale(std::nextafter(a, 0.0f)), std::ldexp(1.0f, k)) << k;
    EXPECT_EQ(num::fp8_tile_scale(a * 1.5f), std::ldexp(1.0f, k + 1)) << k;
  }
  std::mt19937_64 rng(14);
  std::uniform_real_distribution<double> mant(1.0, 2.0);
  std::uniform_int_distribution<int> ex(-30, 30);
  for (int i = 0; i < 5000; ++i) {
    const float a = float(std::ldexp(mant(rng), ex(rng)));
    const float s = num::fp8_tile_scale(a);
    ASSERT_EQ(bits_of(s) & 0x807fffffu, 0u) << "not a positive power of two: " << s;
    // Exact rule on the float quotient the formula computes.
    ld want = std::ldexp(ld(1), -40);
    while (want < std::max(ld(a / 448.0f), ld(1e-4))) want *= 2;
    ASSERT_EQ(ld(s), want) << "amax = " << a;
  }
}

// The scale the quantizer stores for a tile whose amax is A (through the public API).
TEST(Fp8Scale, StoredScaleFollowsRule) {
  for (bool model1 : {false, true}) {
    const Fmt f = fmt(model1);
    std::vector<float> amaxes = {0.0f, 1e-6f, 0.0448f, 0.5f, 1.0f, 3.5f, 100.0f, 1792.0f};
    for (int k = -16; k <= 12; k += 2) {
      amaxes.push_back(std::ldexp(448.0f, k));
      amaxes.push_back(std::ldexp(450.0f, k));  // next bf16 above 448 * 2^k
      amaxes.push_back(std::ldexp(446.0f, k));  // next bf16 below
    }
    const int64_t n = int64_t(amaxes.size());
    HostTensor in(DType::kBFloat16, {1, n, 1, f.d_qk});
    std::mt19937_64 rng(15);
    for (int64_t t = 0; t < n; ++t) {
      for (int c = 0; c < f.d_qk; ++c) in.set({0, t, 0, c}, 0.0);
      // Tile 1 holds A (negative, at a position inside the tile) and smaller values.
      const int64_t pos = f.tile + 7;
      in.set({0, t, 0, pos}, -double(amaxes[t]));
      in.set({0, t, 0, pos + 1}, double(amaxes[t]) / 3);
    }
    HostTensor cache = make_cache(f, 1, n, 0);
    quantize(f, in, cache);
    for (int64_t t = 0; t < n; ++t) {
      const ld a = std::fabs(in.get({0, t, 0, f.tile + 7}));
      const TokenBytes tb = token_bytes(f, cache, 0, t);
      const ld s = tile_scale_of(f, cache, tb, 1);
      EXPECT_EQ(s, naive_tile_scale(a)) << format_name(f.format) << " amax " << double(a);
      EXPECT_EQ(tile_scale_of(f, cache, tb, 0), std::ldexp(ld(1), -13)) << "all-zero tile";
      const uint8_t code = cache.storage[tb.nope + f.tile + 7];
      if (a == 448 * s) {
        EXPECT_EQ(code, 0xfe) << "amax 448 * scale must map to -448";
      }
      EXPECT_LE(std::fabs(e4m3_value(code)), 448);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Exact bytes of hand-built tokens.

// Values of the NoPE tiles used by both formats; returns them and checks none needs rounding to
// bf16. V32 tiles are 128 wide, MODEL1 tiles 64 wide: the pattern is placed at each tile start.
struct HandTile {
  std::vector<std::pair<int, float>> values;   // (position in tile, value)
  std::vector<std::pair<int, uint8_t>> codes;  // (position in tile, e4m3 byte)
  int scale_exp;                               // log2 of the tile scale
};
std::vector<HandTile> hand_tiles() {
  return {
      // amax 448 -> scale 1; ties to even; -0; subnormals.
      {{{0, 448.0f},
        {1, 1.0f},
        {2, -2.0f},
        {3, 0.5f},
        {4, 1.0625f},
        {5, 1.1875f},
        {6, -0.0f},
        {7, 0x1p-9f},
        {8, 0x1.8p-9f}},
       {{0, 0x7e},
        {1, 0x38},
        {2, 0xc0},
        {3, 0x30},
        {4, 0x38},
        {5, 0x3a},
        {6, 0x80},
        {7, 0x01},
        {8, 0x02},
        {9, 0x00}},
       0},
      // All zero: s = 1e-4 -> 2^-13.
      {{}, {{0, 0x00}, {1, 0x00}}, -13},
      // amax 3.5: s = 2^-7 exactly.
      {{{0, 3.5f}, {1, 0x1p-6f}, {2, -3.5f}}, {{0, 0x7e}, {1, 0x40}, {2, 0xfe}}, -7},
      // amax 1: s = 1/448 -> 2^-8.
      {{{0, 1.0f}, {1, 0.75f}, {2, -0.0625f}, {3, 0.99609375f}},
       {{0, 0x78}, {1, 0x74}, {2, 0xd8}, {3, 0x78}},
       -8},
      // amax 1792 = 448 * 4: s = 4.
      {{{0, 1792.0f}, {1, 4.0f}, {2, -8.0f}}, {{0, 0x7e}, {1, 0x38}, {2, 0xc0}}, 2},
      // amax 0.5: s = 0.5 / 448 -> 2^-9.
      {{{0, 0.5f}}, {{0, 0x78}}, -9},
      // amax 100: s -> 0.25; 100 / 0.25 = 400 is a tie between 384 and 416 -> 384 (0x7c).
      {{{0, 100.0f}, {1, -100.0f}}, {{0, 0x7c}, {1, 0xfc}}, -2},
  };
}

// RoPE values and their bf16 bytes (little endian).
const std::vector<std::tuple<int, float, uint8_t, uint8_t>>& hand_rope() {
  static const std::vector<std::tuple<int, float, uint8_t, uint8_t>> r = {
      {0, 1.0f, 0x80, 0x3f}, {1, -2.5f, 0x20, 0xc0}, {2, 0.5f, 0x00, 0x3f},
      {3, 3.0f, 0x40, 0x40}, {17, 0.0f, 0x00, 0x00}, {63, -0.0f, 0x00, 0x80}};
  return r;
}

void check_hand_token(bool model1) {
  const Fmt f = fmt(model1);
  const int64_t pages = 2, ps = 3, pg = 1, tok = 1;
  std::mt19937_64 rng(16);
  HostTensor in(DType::kBFloat16, {pages, ps, 1, f.d_qk});
  fill_randn(in, rng);  // the other tokens: random
  const std::vector<HandTile> tiles = hand_tiles();
  for (int c = 0; c < f.d_qk; ++c) in.set({pg, tok, 0, c}, 0.0);
  for (int k = 0; k < f.tiles; ++k)
    for (auto [pos, v] : tiles[k].values) {
      in.set({pg, tok, 0, k * f.tile + pos}, v);
      ASSERT_EQ(in.get({pg, tok, 0, k * f.tile + pos}), double(v)) << "not a bf16 value";
    }
  for (auto [j, v, lo, hi] : hand_rope()) in.set({pg, tok, 0, f.nope + j}, v);

  HostTensor cache = make_cache(f, pages, ps, 40);  // page stride padded by 40 bytes of 0xff
  quantize(f, in, cache);
  const uint8_t* page = cache.storage.data() + pg * cache.view.strides[0];
  SCOPED_TRACE(format_name(f.format));

  // Literal offsets from SPEC §2 (not from the library's layout header).
  const int64_t rec = model1 ? tok * 576 : tok * 656;
  for (int k = 0; k < f.tiles; ++k) {
    for (auto [pos, code] : tiles[k].codes)
      EXPECT_EQ(int(page[rec + k * f.tile + pos]), int(code)) << "tile " << k << " pos " << pos;
    if (model1) {
      EXPECT_EQ(int(page[ps * 576 + tok * 8 + k]), 127 + tiles[k].scale_exp) << "UE8M0 tile " << k;
    } else {
      const uint32_t u = uint32_t(127 + tiles[k].scale_exp) << 23;  // fp32 2^e, little endian
      for (int i = 0; i < 4; ++i)
        EXPECT_EQ(int(page[rec + 512 + 4 * k + i]), int((u >> (8 * i)) & 0xff))
            << "fp32 scale of tile " << k << " byte " << i;
    }
  }
  if (model1) {
    EXPECT_EQ(int(page[ps * 576 + tok * 8 + 7]), 0) << "MODEL1 scale pad byte";
  }
  // Every other NoPE byte of the token is a zero value under its tile scale.
  for (int k = 0; k < f.tiles; ++k)
    for (int j = 0; j < f.tile; ++j) {
      bool listed = false;
      for (auto [pos, code] : tiles[k].codes) listed |= pos == j;
      for (auto [pos, v] : tiles[k].values) listed |= pos == j;
      if (!listed) {
        EXPECT_EQ(int(page[rec + k * f.tile + j]), 0) << "tile " << k << " pos " << j;
      }
    }
  const int64_t rope = model1 ? rec + 448 : rec + 528;
  for (int j = 0; j < 64; ++j) {
    uint8_t lo = 0, hi = 0;
    for (auto [jj, v, l, h] : hand_rope())
      if (jj == j) lo = l, hi = h;
    EXPECT_EQ(int(page[rope + 2 * j]), int(lo)) << "rope " << j;
    EXPECT_EQ(int(page[rope + 2 * j + 1]), int(hi)) << "rope " << j;
  }
  // Bytes that belong to no token (page padding, MODEL1's round-up to 576) are never written.
  std::vector<bool> owned(cache.storage.size(), false);
  for (int64_t p = 0; p < pages; ++p)
    for (int64_t t = 0; t < ps; ++t)
      for (int64_t b : token_byte_list(f, cache, p, t)) owned[b] = true;
  for (size_t i = 0; i < owned.size(); ++i)
    if (!owned[i]) {
      EXPECT_EQ(int(cache.storage[i]), 0xff) << "byte " << i << " of no token";
    }

  // Dequantize gives code * scale back exactly.
  HostTensor out(DType::kBFloat16, {pages, ps, 1, f.d_qk});
  out.poison();
  DequantizeKVParams dp;
  dp.cache = cache.view;
  dp.output = out.view;
  dp.format = f.format;
  dequantize_kv_cache(dp);
  for (int k = 0; k < f.tiles; ++k)
    for (auto [pos, code] : tiles[k].codes) {
      const double want = double(std::ldexp(e4m3_value(code), tiles[k].scale_exp));
      EXPECT_EQ(out.get({pg, tok, 0, k * f.tile + pos}), want) << "tile " << k << " pos " << pos;
    }
  for (auto [j, v, lo, hi] : hand_rope())
    EXPECT_EQ(bf16_bits_at(out, out.off({pg, tok, 0, f.nope + j})), uint16_t(lo | (hi << 8)));
}

TEST(Fp8Layout, HandBuiltTokenV32) { check_hand_token(false); }
TEST(Fp8Layout, HandBuiltTokenModel1) { check_hand_token(true); }

TEST(Fp8Layout, FormatInfo) {
  const KVCacheFormatInfo v = format_info(KVCacheFormat::kFP8V32);
  EXPECT_EQ(v.d_qk, 576);
  EXPECT_EQ(v.d_nope, 512);
  EXPECT_EQ(v.tile, 128);
  EXPECT_EQ(v.num_tiles, 4);
  EXPECT_EQ(v.bytes_per_token, 656);
  const KVCacheFormatInfo m = format_info(KVCacheFormat::kFP8Model1);
  EXPECT_EQ(m.d_qk, 512);
  EXPECT_EQ(m.d_nope, 448);
  EXPECT_EQ(m.tile, 64);
  EXPECT_EQ(m.num_tiles, 7);
  EXPECT_EQ(m.bytes_per_token, 584);
  EXPECT_EQ(fp8_page_bytes(KVCacheFormat::kFP8V32, 64), 64 * 656);
  EXPECT_EQ(fp8_page_bytes(KVCacheFormat::kFP8Model1, 64), 65 * 576);  // 37376 -> 37440
  EXPECT_EQ(fp8_page_bytes(KVCacheFormat::kFP8Model1, 2), 3 * 576);    // 1168 -> 1728
  EXPECT_EQ(fp8_page_bytes(KVCacheFormat::kFP8Model1, 72), 73 * 576);  // 42048 = 73 * 576
  EXPECT_EQ(format_for_head_dim(576), KVCacheFormat::kFP8V32);
  EXPECT_EQ(format_for_head_dim(512), KVCacheFormat::kFP8Model1);
}

// ---------------------------------------------------------------------------------------------
// Random caches: quantize equals the naive quantizer byte for byte; round-trip error bounds;
// dequantize equals the naive decode; scales are powers of two.

class Fp8RoundTrip : public ::testing::TestWithParam<std::tuple<bool, int>> {};

TEST_P(Fp8RoundTrip, QuantizeDequantize) {
  const auto [model1, ps] = GetParam();
  const Fmt f = fmt(model1);
  const int64_t pages = 3;
  std::mt19937_64 rng(100 + ps + model1);
  HostTensor in = random_pages(f, pages, ps, rng, /*pad=*/5);  // non-contiguous input
  HostTensor cache = make_cache(f, pages, ps, 24);
  const std::vector<uint8_t> before = cache.storage;
  quantize(f, in, cache);

  std::vector<bool> written(cache.storage.size(), false);
  for (int64_t p = 0; p < pages; ++p)
    for (int64_t t = 0; t < ps; ++t) {
      const std::vector<uint16_t> x = token_of(in, p, t, f.d_qk);
      const std::vector<uint8_t> want = naive_quantize(f, x);
      const std::vector<int64_t> where = token_byte_list(f, cache, p, t);
      for (size_t i = 0; i < where.size(); ++i) {
        written[where[i]] = true;
        ASSERT_EQ(int(cache.storage[where[i]]), int(want[i]))
            << "page " << p << " token " << t << " byte " << i << " of the token";
      }
    }
  for (size_t i = 0; i < written.size(); ++i)
    if (!written[i]) {
      ASSERT_EQ(cache.storage[i], before[i]) << "byte " << i << " outside all tokens";
    }

  // Round trip through the library's dequantize (into a non-contiguous output).
  HostTensor out(DType::kBFloat16, {pages, ps, 1, f.d_qk}, 3);
  out.poison();
  DequantizeKVParams dp;
  dp.cache = cache.view;
  dp.output = out.view;
  dp.format = f.format;
  dequantize_kv_cache(dp);
  for (int64_t p = 0; p < pages; ++p)
    for (int64_t t = 0; t < ps; ++t) {
      const std::vector<ld> dec = naive_decode(f, cache, p, t);
      const TokenBytes tb = token_bytes(f, cache, p, t);
      for (int k = 0; k < f.tiles; ++k) {
        const ld s = tile_scale_of(f, cache, tb, k);
        ASSERT_EQ(s, std::ldexp(ld(1), std::ilogb(s))) << "scale not a power of two: " << double(s);
        ASSERT_GE(s, std::ldexp(ld(1), -13));
        for (int j = 0; j < f.tile; ++j) {
          const int c = k * f.tile + j;
          const ld x = in.get({p, t, 0, c}), y = out.get({p, t, 0, c});
          ASSERT_EQ(y, dec[c]) << "dequantize vs naive decode at " << c;
          ASSERT_LE(std::fabs(x - y), std::fabs(x) * 0x1p-4L + s * 0x1p-10L)
              << "page " << p << " token " << t << " dim " << c << ": x " << double(x) << " -> "
              << double(y) << " (scale " << double(s) << ")";
        }
      }
      for (int j = f.nope; j < f.d_qk; ++j)
        ASSERT_EQ(bf16_bits_at(out, out.off({p, t, 0, j})), bf16_bits_at(in, in.off({p, t, 0, j})))
            << "RoPE must round-trip bit-exactly, dim " << j;
    }
  // The output's row padding is not written.
  std::vector<bool> logical(out.storage.size(), false);
  out.for_each([&](int64_t o) { logical[2 * o] = logical[2 * o + 1] = true; });
  for (size_t i = 0; i < logical.size(); ++i)
    if (!logical[i]) {
      ASSERT_EQ(out.storage[i], i % 2 ? 0x7f : 0xc0) << "output padding byte " << i;
    }
}

INSTANTIATE_TEST_SUITE_P(Formats, Fp8RoundTrip,
                         ::testing::Combine(::testing::Bool(), ::testing::Values(1, 2, 53, 64)),
                         [](const auto& info) {
                           return std::string(std::get<0>(info.param) ? "MODEL1" : "V32") + "_ps" +
                                  std::to_string(std::get<1>(info.param));
                         });

// The e4m3 dtype is accepted for the cache bytes and gives the same bytes as uint8.
TEST(Fp8Cache, E4M3DtypeCache) {
  for (bool model1 : {false, true}) {
    const Fmt f = fmt(model1);
    std::mt19937_64 rng(17);
    HostTensor in = random_pages(f, 2, 4, rng);
    HostTensor a = make_cache(f, 2, 4, 0), b = make_cache(f, 2, 4, 0);
    b.view.dtype = DType::kFloat8E4M3;
    quantize(f, in, a);
    quantize(f, in, b);
    EXPECT_EQ(a.storage, b.storage);
  }
}

// ---------------------------------------------------------------------------------------------
// append_kv_cache.

void check_append(bool model1, int64_t pages, int64_t ps, int64_t extra_stride) {
  const Fmt f = fmt(model1);
  SCOPED_TRACE(std::string(format_name(f.format)) + " page_size " + std::to_string(ps));
  std::mt19937_64 rng(200 + ps);
  HostTensor cache = make_cache(f, pages, ps, extra_stride);
  std::uniform_int_distribution<int> byte(0, 255);
  for (auto& b : cache.storage) b = uint8_t(byte(rng));  // arbitrary prior content, padding too
  const std::vector<uint8_t> before = cache.storage;

  const int64_t num_slots = pages * ps;
  std::vector<int32_t> slots = {int32_t(num_slots - 1),
                                -1,
                                0,
                                int32_t(num_slots),
                                INT_MAX,
                                int32_t(ps),
                                INT_MIN,
                                int32_t(ps / 2 + ps * (pages / 2)),
                                -7,
                                int32_t(num_slots + ps)};
  if (ps > 2) slots.push_back(int32_t(ps + 1));
  const int64_t n = int64_t(slots.size());
  HostTensor in(DType::kBFloat16, {n, f.d_qk}, 6);  // non-contiguous input rows
  in.fill_nan();
  fill_randn(in, rng);
  for (int64_t i = 0; i < n; ++i)  // vary the tile magnitudes
    for (int c = 0; c < f.nope; ++c)
      in.set({i, c}, in.get({i, c}) * std::ldexp(1.0, int(i % 7) * 3 - 9 + c / f.tile));
  HostTensor sl(DType::kInt32, {n});
  for (int64_t i = 0; i < n; ++i) sl.set({i}, slots[i]);

  AppendKVParams ap;
  ap.input = in.view;
  ap.slots = sl.view;
  ap.cache = cache.view;
  ap.format = f.format;
  append_kv_cache(ap);

  std::vector<uint8_t> want = before;
  for (int64_t i = 0; i < n; ++i) {
    const int64_t s = slots[i];
    if (s < 0 || s >= num_slots) continue;
    std::vector<uint16_t> x(f.d_qk);
    for (int c = 0; c < f.d_qk; ++c) x[c] = bf16_bits_at(in, in.off({i, c}));
    const std::vector<uint8_t> bytes = naive_quantize(f, x);
    const std::vector<int64_t> where = token_byte_list(f, cache, s / ps, s % ps);
    for (size_t k = 0; k < where.size(); ++k) want[where[k]] = bytes[k];

    // The same token through quantize_kv_cache (a one-page cache with the token at the same
    // offset) gives the same bytes.
    HostTensor page_in(DType::kBFloat16, {1, ps, 1, f.d_qk});
    for (int c = 0; c < f.d_qk; ++c) page_in.set({0, s % ps, 0, c}, in.get({i, c}));
    HostTensor one = make_cache(f, 1, ps, 0);
    quantize(f, page_in, one);
    const std::vector<int64_t> w1 = token_byte_list(f, one, 0, s % ps);
    for (size_t k = 0; k < where.size(); ++k)
      ASSERT_EQ(int(one.storage[w1[k]]), int(bytes[k])) << "quantize, slot " << s << " byte " << k;
  }
  for (size_t k = 0; k < want.size(); ++k)
    ASSERT_EQ(int(cache.storage[k]), int(want[k])) << "cache byte " << k;
}

TEST(Fp8Append, V32) {
  check_append(false, 4, 3, 16);
  check_append(false, 2, 64, 0);
  check_append(false, 5, 1, 0);
}
TEST(Fp8Append, Model1) {
  check_append(true, 4, 3, 16);
  check_append(true, 2, 64, 0);
  check_append(true, 3, 2, 100);
}

TEST(Fp8Append, EmptyAndAllInvalid) {
  for (bool model1 : {false, true}) {
    const Fmt f = fmt(model1);
    HostTensor cache = make_cache(f, 2, 4, 0);
    const std::vector<uint8_t> before = cache.storage;
    HostTensor in(DType::kBFloat16, {3, f.d_qk});
    HostTensor sl(DType::kInt32, {3});
    sl.set({0}, -1);
    sl.set({1}, 8);
    sl.set({2}, INT_MIN);
    AppendKVParams ap;
    ap.input = in.view;
    ap.slots = sl.view;
    ap.cache = cache.view;
    ap.format = f.format;
    append_kv_cache(ap);
    EXPECT_EQ(cache.storage, before);
    HostTensor in0(DType::kBFloat16, {0, f.d_qk});
    HostTensor sl0(DType::kInt32, {0});
    ap.input = in0.view;
    ap.slots = sl0.view;
    append_kv_cache(ap);
    EXPECT_EQ(cache.storage, before);
  }
}

}  // namespace
}  // namespace openmla::test
