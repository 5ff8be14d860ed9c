// Test harness shared by the CPU and GPU suites: owning host tensors with free strides, seeded
// random inputs (randn/10 clamped to [-1, 1]), NaN fill and output poisoning, and the SPEC §6
// comparison (abs/rel element-wise, cosine difference, identical inf/NaN positions).
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "common/numeric.h"
#include "openmla/openmla.h"

namespace openmla::test {

// An owning host buffer and a view of it. `pad` adds elements to every stride but the last, so
// that tensors are non-contiguous while the last dimension stays contiguous.
struct HostTensor {
  std::vector<uint8_t> storage;
  TensorView view;

  HostTensor() = default;
  HostTensor(const HostTensor& o) : storage(o.storage), view(o.view) { view.data = storage.data(); }
  HostTensor& operator=(const HostTensor& o) {
    storage = o.storage;
    view = o.view;
    view.data = storage.data();
    return *this;
  }
  HostTensor(HostTensor&&) noexcept = default;  // a moved vector keeps its buffer
  HostTensor& operator=(HostTensor&&) noexcept = default;
  HostTensor(DType dtype, std::vector<int64_t> shape, int64_t pad = 0) {
    view.dtype = dtype;
    view.device = kCPU;
    view.ndim = static_cast<int>(shape.size());
    for (int i = 0; i < view.ndim; ++i) view.shape[i] = shape[i];
    // Padding lengthens the innermost row (row stride = last dim + pad); the outer strides follow,
    // so with pad > 0 every outer dimension is non-contiguous.
    int64_t s = 1;
    for (int i = view.ndim - 1; i >= 0; --i) {
      view.strides[i] = s;
      s *= shape[i];
      if (i == view.ndim - 1) s += pad;
    }
    const int64_t span = view.ndim == 0 ? 1 : std::max<int64_t>(1, s);
    storage.assign(span * dtype_size(dtype) + 64, 0);
    view.data = storage.data();
  }

  // Explicit strides (elements).
  HostTensor(DType dtype, std::vector<int64_t> shape, std::vector<int64_t> strides) {
    view.dtype = dtype;
    view.device = kCPU;
    view.ndim = static_cast<int>(shape.size());
    int64_t span = 1;
    for (int i = 0; i < view.ndim; ++i) {
      view.shape[i] = shape[i];
      view.strides[i] = strides[i];
      if (shape[i] > 0) span += (shape[i] - 1) * strides[i];
    }
    storage.assign(span * dtype_size(dtype) + 64, 0);
    view.data = storage.data();
  }

  int64_t span_elements() const { return (storage.size() - 64) / dtype_size(view.dtype); }

  template <class T>
  T* ptr() {
    return reinterpret_cast<T*>(storage.data());
  }
  // Element offset of an index tuple.
  int64_t off(std::initializer_list<int64_t> idx) const {
    int64_t o = 0;
    int d = 0;
    for (int64_t i : idx) o += i * view.strides[d++];
    return o;
  }
  double get(std::initializer_list<int64_t> idx) const { return get_flat(off(idx)); }
  void set(std::initializer_list<int64_t> idx, double v) { set_flat(off(idx), v); }

  double get_flat(int64_t o) const {
    const uint8_t* p = storage.data();
    switch (view.dtype) {
      case DType::kBFloat16: {
        uint16_t h;
        memcpy(&h, p + 2 * o, 2);
        return num::bf16_to_f32(h);
      }
      case DType::kFloat16: {
        uint16_t h;
        memcpy(&h, p + 2 * o, 2);
        return num::f16_to_f32(h);
      }
      case DType::kFloat32: {
        float f;
        memcpy(&f, p + 4 * o, 4);
        return f;
      }
      case DType::kInt32: {
        int32_t i;
        memcpy(&i, p + 4 * o, 4);
        return i;
      }
      case DType::kUInt8:
        return p[o];
      case DType::kFloat8E4M3:
        return num::e4m3_to_f32(p[o]);
    }
    return 0;
  }
  void set_flat(int64_t o, double v) {
    uint8_t* p = storage.data();
    switch (view.dtype) {
      case DType::kBFloat16: {
        uint16_t h = num::f32_to_bf16(float(v));
        memcpy(p + 2 * o, &h, 2);
        break;
      }
      case DType::kFloat16: {
        uint16_t h = num::f32_to_f16(float(v));
        memcpy(p + 2 * o, &h, 2);
        break;
      }
      case DType::kFloat32: {
        float f = float(v);
        memcpy(p + 4 * o, &f, 4);
        break;
      }
      case DType::kInt32: {
        int32_t i = int32_t(v);
        memcpy(p + 4 * o, &i, 4);
        break;
      }
      case DType::kUInt8:
        p[o] = uint8_t(v);
        break;
      case DType::kFloat8E4M3:
        p[o] = num::f32_to_e4m3(float(v));
        break;
    }
  }

  // Visits every logical element's flat offset.
  template <class F>
  void for_each(F&& f) const {
    std::vector<int64_t> idx(view.ndim, 0);
    const int64_t n = view.numel();
    for (int64_t k = 0; k < n; ++k) {
      int64_t o = 0;
      for (int d = 0; d < view.ndim; ++d) o += idx[d] * view.strides[d];
      f(o);
      for (int d = view.ndim - 1; d >= 0; --d) {
        if (++idx[d] < view.shape[d]) break;
        idx[d] = 0;
      }
    }
  }

  // Every byte of storage (logical or padding) set to a NaN pattern (bf16/fp16/fp32) or 0xff.
  void fill_nan() {
    const size_t es = dtype_size(view.dtype);
    for (size_t i = 0; i + es <= storage.size(); i += es) {
      if (view.dtype == DType::kBFloat16) {
        uint16_t h = 0x7fc0;
        memcpy(&storage[i], &h, 2);
      } else if (view.dtype == DType::kFloat16) {
        uint16_t h = 0x7e00;
        memcpy(&storage[i], &h, 2);
      } else if (view.dtype == DType::kFloat32) {
        uint32_t u = 0x7fc00000u;
        memcpy(&storage[i], &u, 4);
      } else
        memset(&storage[i], 0xff, es);
    }
  }
  // Poison: a value no correct output equals (NaN for floats), so an unwritten element fails.
  void poison() { fill_nan(); }
};

// randn / 10 clamped to [-1, 1], then rounded to the tensor's dtype (SPEC §6 test inputs).
inline void fill_randn(HostTensor& t, std::mt19937_64& rng, double sigma = 0.1) {
  std::normal_distribution<double> nd(0.0, sigma);
  t.for_each([&](int64_t o) { t.set_flat(o, std::clamp(nd(rng), -1.0, 1.0)); });
}

inline void fill_uniform_int(HostTensor& t, std::mt19937_64& rng, int64_t lo, int64_t hi) {
  std::uniform_int_distribution<int64_t> ud(lo, hi);
  t.for_each([&](int64_t o) { t.set_flat(o, double(ud(rng))); });
}

struct Tolerance {
  double abs_tol, rel_tol, cos_diff;  // cos_diff < 0: not checked
};
inline constexpr Tolerance kDecodeOut{1e-3, 2.01 / 128, 5e-6};
inline constexpr Tolerance kPrefillOut{8e-4, 3.01 / 128, 7e-6};
inline constexpr Tolerance kLse{1e-6, 8.01 / 65536, -1};

// SPEC §6 comparison over the logical elements of two same-shaped tensors.
inline ::testing::AssertionResult close(const char* name, const HostTensor& a, const HostTensor& r,
                                        Tolerance tol) {
  if (a.view.ndim != r.view.ndim) return ::testing::AssertionFailure() << name << ": rank differs";
  for (int d = 0; d < a.view.ndim; ++d)
    if (a.view.shape[d] != r.view.shape[d])
      return ::testing::AssertionFailure() << name << ": shape differs in dim " << d;
  std::vector<double> av, rv;
  a.for_each([&](int64_t o) { av.push_back(a.get_flat(o)); });
  r.for_each([&](int64_t o) { rv.push_back(r.get_flat(o)); });
  double dot = 0, na = 0, nr = 0;
  int64_t bad = 0;
  std::ostringstream first;
  for (size_t i = 0; i < av.size(); ++i) {
    const double x = av[i], y = rv[i];
    const bool special = std::isnan(x) || std::isnan(y) || std::isinf(x) || std::isinf(y);
    bool ok;
    if (special) {
      ok = (std::isnan(x) && std::isnan(y)) ||
           (std::isinf(x) && std::isinf(y) && (x > 0) == (y > 0));
    } else {
      const double e = std::fabs(x - y);
      ok = e <= tol.abs_tol || e <= tol.rel_tol * std::fabs(y);
      dot += x * y;
      na += x * x;
      nr += y * y;
    }
    if (!ok && bad++ == 0)
      first << " first at flat element " << i << ": got " << x << ", want " << y;
  }
  if (bad)
    return ::testing::AssertionFailure() << name << ": " << bad << " of " << av.size()
                                         << " elements out of tolerance;" << first.str();
  if (tol.cos_diff >= 0 && (na + nr) > 0) {
    const double cd = 1.0 - 2.0 * dot / (na + nr);
    if (cd > tol.cos_diff)
      return ::testing::AssertionFailure()
             << name << ": cosine difference " << cd << " > " << tol.cos_diff;
  }
  return ::testing::AssertionSuccess();
}

// The message of the openmla::Error `f` throws names `arg` (and Error::argument() is `arg`).
template <class F>
::testing::AssertionResult throws_naming(const char* arg, F&& f) {
  try {
    f();
  } catch (const Error& e) {
    if (e.argument() == arg && std::string(e.what()).find(arg) != std::string::npos)
      return ::testing::AssertionSuccess();
    return ::testing::AssertionFailure()
           << "expected an error naming '" << arg << "', got: " << e.what();
  } catch (const std::exception& e) {
    return ::testing::AssertionFailure() << "expected openmla::Error, got: " << e.what();
  }
  return ::testing::AssertionFailure() << "expected an error naming '" << arg << "', none thrown";
}

}  // namespace openmla::test
