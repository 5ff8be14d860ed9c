// GPU FP8 KV-cache tools (quantize, dequantize, append) against the CPU backend: both formats,
// page sizes 1, 2, 53, 64, 69, tight / format / odd-padded page strides, padded bf16 rows.
// The bytes must be identical to the CPU's, including every byte the operator must not touch.
#include <gtest/gtest.h>

#include <algorithm>
#include <climits>
#include <cstring>
#include <numeric>
#include <random>

#include "gpu/device_tensor.h"

namespace openmla::test {
namespace {

enum class Stride { kTight, kFormat, kOddPadded };

struct Fp8Case {
  KVCacheFormat format;
  int page_size;
  Stride stride;
};

std::string case_name(const ::testing::TestParamInfo<Fp8Case>& info) {
  const Fp8Case& c = info.param;
  std::string s = c.format == KVCacheFormat::kFP8V32 ? "V32" : "MODEL1";
  s += "_page" + std::to_string(c.page_size);
  s += c.stride == Stride::kTight ? "_tight" : c.stride == Stride::kFormat ? "_format" : "_oddpad";
  return s;
}

int64_t page_stride(const Fp8Case& c) {
  const int64_t bpt = format_info(c.format).bytes_per_token;
  switch (c.stride) {
    case Stride::kTight:
      return c.page_size * bpt;
    case Stride::kFormat:
      return fp8_page_bytes(c.format, c.page_size);
    case Stride::kOddPadded:
      return fp8_page_bytes(c.format, c.page_size) + 13;
  }
  return 0;
}

int pages_for(int page_size) { return std::clamp(200 / page_size, 3, 7); }

// [num_pages, page_size, 1, bytes_per_token] bytes with the case's page stride, every byte of
// the span random (stands for whatever an engine's cache held before).
HostTensor garbage_cache(const Fp8Case& c, int64_t num_pages, std::mt19937_64& rng) {
  const int64_t bpt = format_info(c.format).bytes_per_token;
  HostTensor t(DType::kUInt8, {num_pages, c.page_size, 1, bpt}, {page_stride(c), bpt, bpt, 1});
  for (auto& b : t.storage) b = uint8_t(rng());
  return t;
}

// Random bf16 tokens spanning the scale range: each page draws with its own sigma, so tiles land
// below the 1e-4 scale floor, in the usual range and far above it.
void fill_tokens(HostTensor& t, std::mt19937_64& rng) {
  static const double sigmas[] = {0.1, 1e-5, 30.0, 3000.0, 1.0};
  std::normal_distribution<double> nd(0.0, 1.0);
  const int64_t rows = t.view.shape[0];
  for (int64_t p = 0; p < rows; ++p) {
    const double sigma = sigmas[p % 5];
    // Every element of this page (or row, for [n, d] inputs).
    std::vector<int64_t> idx(t.view.ndim, 0);
    idx[0] = p;
    int64_t per = 1;
    for (int d = 1; d < t.view.ndim; ++d) per *= t.view.shape[d];
    for (int64_t k = 0; k < per; ++k) {
      int64_t rem = k, off = p * t.view.strides[0];
      for (int d = t.view.ndim - 1; d >= 1; --d) {
        off += (rem % t.view.shape[d]) * t.view.strides[d];
        rem /= t.view.shape[d];
      }
      t.set_flat(off, sigma * nd(rng));
    }
  }
}

HostTensor bf16_pages(const Fp8Case& c, int64_t num_pages) {
  return HostTensor(DType::kBFloat16, {num_pages, c.page_size, 1, format_info(c.format).d_qk},
                    /*pad=*/8);
}

class Fp8KvGpu : public GpuTestWithParam<Fp8Case> {};

TEST_P(Fp8KvGpu, QuantizeBitIdentical) {
  const Fp8Case c = GetParam();
  std::mt19937_64 rng(1000 + c.page_size);
  const int64_t np = pages_for(c.page_size);
  Twin input(bf16_pages(c, np));
  fill_tokens(input.host, rng);
  Twin cache(garbage_cache(c, np, rng));
  input.upload();
  cache.upload();
  auto make = [&](Side s) {
    QuantizeKVParams p;
    p.input = input.view(s);
    p.cache = cache.view(s);
    p.format = c.format;
    return p;
  };
  quantize_kv_cache(make(Side::kHost));
  quantize_kv_cache(make(Side::kDevice));
  sync_device();
  EXPECT_TRUE(bytes_equal("cache", cache.fetch(), cache.host));
}

TEST_P(Fp8KvGpu, DequantizeBitIdentical) {
  const Fp8Case c = GetParam();
  std::mt19937_64 rng(2000 + c.page_size);
  const int64_t np = pages_for(c.page_size);
  // A valid cache: CPU-quantized random tokens over garbage padding.
  HostTensor src = bf16_pages(c, np);
  fill_tokens(src, rng);
  Twin cache(garbage_cache(c, np, rng));
  QuantizeKVParams qp;
  qp.input = src.view;
  qp.cache = cache.host.view;
  qp.format = c.format;
  quantize_kv_cache(qp);
  cache.upload();
  Twin out(bf16_pages(c, np));
  out.poison_both();  // padding must stay poisoned on both sides
  auto make = [&](Side s) {
    DequantizeKVParams p;
    p.cache = cache.view(s);
    p.output = out.view(s);
    p.format = c.format;
    return p;
  };
  dequantize_kv_cache(make(Side::kHost));
  dequantize_kv_cache(make(Side::kDevice));
  sync_device();
  EXPECT_TRUE(bytes_equal("output", out.fetch(), out.host));
  EXPECT_TRUE(bytes_equal("cache (input, unchanged)", cache.fetch(), cache.host));
}

// Distinct valid slots (a random half of the cache) mixed with invalid ones, shuffled.
std::vector<int32_t> make_slots(int64_t num_slots, std::mt19937_64& rng) {
  std::vector<int32_t> all(num_slots);
  std::iota(all.begin(), all.end(), 0);
  std::shuffle(all.begin(), all.end(), rng);
  std::vector<int32_t> slots(all.begin(), all.begin() + std::max<int64_t>(1, num_slots / 2));
  const int64_t invalid[] = {-1, -2, -1000, num_slots, num_slots + 1, INT32_MAX, INT32_MIN};
  for (int64_t v : invalid) slots.push_back(int32_t(v));
  std::shuffle(slots.begin(), slots.end(), rng);
  return slots;
}

TEST_P(Fp8KvGpu, AppendBitIdenticalAndSkipsInvalidSlots) {
  const Fp8Case c = GetParam();
  std::mt19937_64 rng(3000 + c.page_size);
  const int64_t np = pages_for(c.page_size);
  const std::vector<int32_t> slots = make_slots(np * c.page_size, rng);
  const int64_t n = int64_t(slots.size());
  Twin input(HostTensor(DType::kBFloat16, {n, format_info(c.format).d_qk}, /*pad=*/24));
  fill_tokens(input.host, rng);
  Twin slot_t(HostTensor(DType::kInt32, {n}));
  for (int64_t i = 0; i < n; ++i) slot_t.host.set({i}, slots[i]);
  Twin cache(garbage_cache(c, np, rng));
  const HostTensor before = cache.host;
  input.upload();
  slot_t.upload();
  cache.upload();
  auto make = [&](Side s) {
    AppendKVParams p;
    p.input = input.view(s);
    p.slots = slot_t.view(s);
    p.cache = cache.view(s);
    p.format = c.format;
    return p;
  };
  append_kv_cache(make(Side::kHost));
  append_kv_cache(make(Side::kDevice));
  sync_device();
  EXPECT_TRUE(bytes_equal("cache", cache.fetch(), cache.host));
  // The reference itself wrote something (else the comparison above proves little).
  EXPECT_FALSE(bytes_equal("cache vs before", cache.host, before));
}

std::vector<Fp8Case> all_cases() {
  std::vector<Fp8Case> v;
  for (KVCacheFormat f : {KVCacheFormat::kFP8V32, KVCacheFormat::kFP8Model1})
    for (int ps : {1, 2, 53, 64, 69})
      for (Stride s : {Stride::kTight, Stride::kFormat, Stride::kOddPadded}) {
        if (s == Stride::kFormat &&
            fp8_page_bytes(f, ps) == int64_t(ps) * format_info(f).bytes_per_token)
          continue;  // same as tight
        v.push_back({f, ps, s});
      }
  return v;
}

INSTANTIATE_TEST_SUITE_P(Formats, Fp8KvGpu, ::testing::ValuesIn(all_cases()), case_name);

// ---------------- special values and sizes ----------------

class Fp8KvGpuSpecial : public GpuTestWithParam<KVCacheFormat> {};

// Quantizes `input` (pages of 16 tokens, both sides), checks the cache bytes, dequantizes it
// again (both sides) and checks the output bytes.
void quantize_dequantize_bit_identical(const Fp8Case& c, Twin& input, std::mt19937_64& rng) {
  const int64_t np = input.host.view.shape[0];
  Twin cache(garbage_cache(c, np, rng));
  input.upload();
  cache.upload();
  for (Side s : {Side::kHost, Side::kDevice}) {
    QuantizeKVParams p;
    p.input = input.view(s);
    p.cache = cache.view(s);
    p.format = c.format;
    quantize_kv_cache(p);
  }
  sync_device();
  EXPECT_TRUE(bytes_equal("cache", cache.fetch(), cache.host));
  cache.upload();  // both sides dequantize the CPU's bytes
  Twin out(bf16_pages(c, np));
  out.poison_both();
  for (Side s : {Side::kHost, Side::kDevice}) {
    DequantizeKVParams p;
    p.cache = cache.view(s);
    p.output = out.view(s);
    p.format = c.format;
    dequantize_kv_cache(p);
  }
  sync_device();
  EXPECT_TRUE(bytes_equal("output", out.fetch(), out.host));
}

void put_bits(HostTensor& t, int64_t page, int64_t tok, int64_t col, uint16_t bits) {
  const int64_t o = t.off({page, tok, 0, col});
  std::memcpy(t.storage.data() + 2 * o, &bits, 2);
}

// Tiles of zeros, +-inf, bf16 subnormals, the largest bf16 and values at the e4m3 rounding and
// saturation boundaries: both backends run the same record code, so these agree bit for bit.
TEST_P(Fp8KvGpuSpecial, SpecialValuesBitIdentical) {
  const KVCacheFormatInfo info = format_info(GetParam());
  const Fp8Case c{GetParam(), 16, Stride::kFormat};
  std::mt19937_64 rng(77);
  Twin input(bf16_pages(c, 2));
  fill_tokens(input.host, rng);
  for (int64_t t = 0; t < c.page_size; ++t)
    for (int64_t col = 0; col < info.d_qk; ++col) {
      const int tile = int(col / info.tile);
      uint16_t bits = 0;
      switch ((t + tile) % 7) {
        case 0:
          bits = 0x0000;
          break;  // zero tile
        case 1:
          bits = col % 5 == 0 ? 0x7f80 : 0xbf00;
          break;  // +inf among -0.5
        case 2:
          bits = col % 3 == 0 ? 0xff80 : 0x4000;
          break;  // -inf among 2
        case 3:
          bits = uint16_t(0x0001 + (col % 0x7f));
          break;  // bf16 subnormals
        case 4:
          bits = col % 2 ? 0x7f7f : 0xff7f;
          break;  // +-largest bf16
        case 5:
          bits = uint16_t(0x43e0 + (col % 32));
          break;  // around 448
        default:
          continue;  // random
      }
      put_bits(input.host, t % 2, t, col, bits);
    }
  quantize_dequantize_bit_identical(c, input, rng);
}

// NaN inputs (both signs, several payloads) in the NoPE and RoPE parts. Float arithmetic on the
// GPU returns the canonical NaN 0x7fffffff while x86 keeps the operand's sign and payload, so the
// record code must canonicalize NaN in its conversions (f32_to_e4m3, f32_to_bf16) for the
// backends to agree: negative NaN inputs give e4m3 0xff on the CPU and 0x7f on the GPU, and a NaN
// code dequantizes to bf16 0x7fc0 on the CPU and 0x7fff on the GPU, unless canonicalized.
TEST_P(Fp8KvGpuSpecial, NaNInputsBitIdentical) {
  const KVCacheFormatInfo info = format_info(GetParam());
  const Fp8Case c{GetParam(), 16, Stride::kFormat};
  std::mt19937_64 rng(78);
  Twin input(bf16_pages(c, 2));
  fill_tokens(input.host, rng);
  const uint16_t nans[] = {0x7fc0, 0xffc0, 0x7f81, 0xff81, 0x7fff};
  for (int64_t t = 0; t < c.page_size; ++t)
    for (int64_t col = (t * 11) % 13; col < info.d_qk; col += 13)
      put_bits(input.host, t % 2, t, col, nans[(t + col) % 5]);
  quantize_dequantize_bit_identical(c, input, rng);
}

// Many pages (over 1000 thread blocks) on a stream, all three tools in a row.
TEST_P(Fp8KvGpuSpecial, ManyPagesOnAStream) {
  const KVCacheFormat f = GetParam();
  const Fp8Case c{f, 64, Stride::kFormat};
  const int64_t np = 2100;
  std::mt19937_64 rng(99);
  Twin input(bf16_pages(c, np));
  fill_tokens(input.host, rng);
  Twin cache(garbage_cache(c, np, rng));
  Twin out(bf16_pages(c, np));
  input.upload();
  cache.upload();
  out.poison_both();
  const std::vector<int32_t> slots = make_slots(np * c.page_size, rng);
  const int64_t n = int64_t(slots.size());
  Twin fresh(HostTensor(DType::kBFloat16, {n, format_info(f).d_qk}));
  fill_tokens(fresh.host, rng);
  Twin slot_t(HostTensor(DType::kInt32, {n}));
  for (int64_t i = 0; i < n; ++i) slot_t.host.set({i}, slots[i]);
  fresh.upload();
  slot_t.upload();

  cudaStream_t stream = nullptr;
  OPENMLA_CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  for (Side s : {Side::kHost, Side::kDevice}) {
    QuantizeKVParams qp;
    qp.input = input.view(s);
    qp.cache = cache.view(s);
    qp.format = f;
    AppendKVParams ap;
    ap.input = fresh.view(s);
    ap.slots = slot_t.view(s);
    ap.cache = cache.view(s);
    ap.format = f;
    DequantizeKVParams dp;
    dp.cache = cache.view(s);
    dp.output = out.view(s);
    dp.format = f;
    if (s == Side::kDevice) qp.stream = ap.stream = dp.stream = stream;
    quantize_kv_cache(qp);
    append_kv_cache(ap);
    dequantize_kv_cache(dp);
  }
  OPENMLA_CUDA_CHECK(cudaStreamSynchronize(stream));
  OPENMLA_CUDA_CHECK(cudaStreamDestroy(stream));
  EXPECT_TRUE(bytes_equal("cache", cache.fetch(), cache.host));
  EXPECT_TRUE(bytes_equal("output", out.fetch(), out.host));
}

INSTANTIATE_TEST_SUITE_P(Formats, Fp8KvGpuSpecial,
                         ::testing::Values(KVCacheFormat::kFP8V32, KVCacheFormat::kFP8Model1),
                         [](const ::testing::TestParamInfo<KVCacheFormat>& i) {
                           return std::string(i.param == KVCacheFormat::kFP8V32 ? "V32" : "MODEL1");
                         });

// ---------------- validation on the GPU path ----------------

class Fp8KvGpuValidation : public GpuTest {};

TEST_F(Fp8KvGpuValidation, MixedDevicesNameTheArgument) {
  const Fp8Case c{KVCacheFormat::kFP8V32, 64, Stride::kTight};
  std::mt19937_64 rng(5);
  Twin input(bf16_pages(c, 2));
  Twin cache(garbage_cache(c, 2, rng));
  QuantizeKVParams qp;
  qp.input = input.dev.view;
  qp.cache = cache.host.view;  // on the CPU
  EXPECT_TRUE(throws_naming("cache", [&] { quantize_kv_cache(qp); }));

  Twin fresh(HostTensor(DType::kBFloat16, {4, 576}));
  Twin slots(HostTensor(DType::kInt32, {4}));
  AppendKVParams ap;
  ap.input = fresh.dev.view;
  ap.slots = slots.host.view;  // on the CPU
  ap.cache = cache.dev.view;
  EXPECT_TRUE(throws_naming("slots", [&] { append_kv_cache(ap); }));
  sync_device();  // nothing was launched, nothing broke
}

}  // namespace
}  // namespace openmla::test
