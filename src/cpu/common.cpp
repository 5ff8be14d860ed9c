// CPU backend helpers (see common.h).
#include "cpu/common.h"

#include <algorithm>
#include <atomic>
#include <thread>

namespace openmla::cpu {

void parallel_for(int64_t n, const std::function<void(int64_t)>& fn) {
  if (n <= 0) return;
  const int64_t threads = std::min<int64_t>(n, std::max(1u, std::thread::hardware_concurrency()));
  if (threads == 1) {
    for (int64_t i = 0; i < n; ++i) fn(i);
    return;
  }
  std::atomic<int64_t> next{0};
  auto worker = [&] {
    for (int64_t i = next++; i < n; i = next++) fn(i);
  };
  std::vector<std::thread> pool;
  for (int64_t t = 1; t < threads; ++t) pool.emplace_back(worker);
  worker();
  for (auto& th : pool) th.join();
}

void load_row(const TensorView& t, int64_t off, int64_t n, double* dst) {
  switch (t.dtype) {
    case DType::kBFloat16: {
      auto* p = static_cast<const uint16_t*>(t.data) + off;
      for (int64_t i = 0; i < n; ++i) dst[i] = num::bf16_to_f32(p[i]);
      break;
    }
    case DType::kFloat16: {
      auto* p = static_cast<const uint16_t*>(t.data) + off;
      for (int64_t i = 0; i < n; ++i) dst[i] = num::f16_to_f32(p[i]);
      break;
    }
    case DType::kFloat32: {
      auto* p = static_cast<const float*>(t.data) + off;
      for (int64_t i = 0; i < n; ++i) dst[i] = p[i];
      break;
    }
    case DType::kInt32: {
      auto* p = static_cast<const int32_t*>(t.data) + off;
      for (int64_t i = 0; i < n; ++i) dst[i] = p[i];
      break;
    }
    case DType::kUInt8: {
      auto* p = static_cast<const uint8_t*>(t.data) + off;
      for (int64_t i = 0; i < n; ++i) dst[i] = p[i];
      break;
    }
    case DType::kFloat8E4M3: {
      auto* p = static_cast<const uint8_t*>(t.data) + off;
      for (int64_t i = 0; i < n; ++i) dst[i] = num::e4m3_to_f32(p[i]);
      break;
    }
  }
}

namespace {
// double -> float rounded to odd: inexact results get an odd last bit. Rounding that float once
// more to bf16/fp16 (nearest even) then equals rounding the double directly, because float keeps at
// least two more significand bits than either (no double rounding).
float to_f32_odd(double d) {
  float f = static_cast<float>(d);
  if (std::isfinite(f) && static_cast<double>(f) != d) {
    uint32_t u = num::f32_bits(f);
    if ((u & 1u) == 0) {
      const bool toward_larger_mag = std::fabs(d) > std::fabs(static_cast<double>(f));
      u += toward_larger_mag
               ? 1
               : -1;  // one ulp toward d (sign-magnitude bits; from 0 it can only grow)
      f = num::bits_f32(u);
    }
  }
  return f;
}
}  // namespace

void store_row(const TensorView& t, int64_t off, int64_t n, const double* src) {
  switch (t.dtype) {
    case DType::kBFloat16: {
      auto* p = static_cast<uint16_t*>(t.data) + off;
      for (int64_t i = 0; i < n; ++i) p[i] = num::f32_to_bf16(to_f32_odd(src[i]));
      break;
    }
    case DType::kFloat16: {
      auto* p = static_cast<uint16_t*>(t.data) + off;
      for (int64_t i = 0; i < n; ++i) p[i] = num::f32_to_f16(to_f32_odd(src[i]));
      break;
    }
    case DType::kFloat32: {
      auto* p = static_cast<float*>(t.data) + off;
      for (int64_t i = 0; i < n; ++i) p[i] = static_cast<float>(src[i]);
      break;
    }
    case DType::kInt32: {
      auto* p = static_cast<int32_t*>(t.data) + off;
      for (int64_t i = 0; i < n; ++i) p[i] = static_cast<int32_t>(src[i]);
      break;
    }
    case DType::kUInt8: {
      auto* p = static_cast<uint8_t*>(t.data) + off;
      for (int64_t i = 0; i < n; ++i) p[i] = static_cast<uint8_t>(src[i]);
      break;
    }
    case DType::kFloat8E4M3: {
      auto* p = static_cast<uint8_t*>(t.data) + off;
      for (int64_t i = 0; i < n; ++i) p[i] = num::f32_to_e4m3(static_cast<float>(src[i]));
      break;
    }
  }
}

double load(const TensorView& t, int64_t off) {
  double v;
  load_row(t, off, 1, &v);
  return v;
}
void store(const TensorView& t, int64_t off, double v) { store_row(t, off, 1, &v); }

AttendResult attend(const double* q, const double* keys, const double* values, int64_t n,
                    int64_t d_qk, int64_t d_v, double scale, double* o) {
  std::fill(o, o + d_v, 0.0);
  if (n == 0) return {kInf, -kInf};
  std::vector<double> logit(n);
  double mx = -kInf;
  for (int64_t j = 0; j < n; ++j) {
    const double* k = keys + j * d_qk;
    double s = 0.0;
    for (int64_t c = 0; c < d_qk; ++c) s += q[c] * k[c];
    logit[j] = s * scale;
    mx = std::max(mx, logit[j]);
  }
  double sum = 0.0;
  for (int64_t j = 0; j < n; ++j) {
    const double p = std::exp(logit[j] - mx);
    sum += p;
    const double* v = values ? values + j * d_v : keys + j * d_qk;
    for (int64_t c = 0; c < d_v; ++c) o[c] += p * v[c];
  }
  for (int64_t c = 0; c < d_v; ++c) o[c] /= sum;
  return {mx + std::log(sum), mx};
}

void apply_sink(double sink, double lse, double* o, int64_t d_v) {
  if (std::isinf(lse)) return;  // no keys: o is already 0
  const double f = 1.0 / (1.0 + std::exp(sink - lse));
  for (int64_t c = 0; c < d_v; ++c) o[c] *= f;
}

}  // namespace openmla::cpu
