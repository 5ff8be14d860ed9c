// Helpers of the CPU tests' naive references: correct rounding of long-double results to the output
// dtypes, ulp distances, and checks that padding bytes were left alone.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#include "common/harness.h"

namespace openmla::test {

using ld = long double;

// Correct rounding of the long double result to the output dtypes. Going through fp32 with
// round-to-nearest twice (long double -> float -> bf16) can land on a bf16 tie that the exact
// value was not on; rounding to fp32 "to odd" first (p = 24 >= 8 + 2 and >= 11 + 2 bits) makes the
// second, nearest-even rounding to bf16/fp16 equal the single correct rounding.
inline float round_to_odd_f32(ld v) {
  float f = float(v);
  uint32_t u;
  memcpy(&u, &f, 4);
  if (ld(f) != v && (u & 1) == 0 && std::isfinite(v))
    f = std::nextafter(f, v > ld(f) ? std::numeric_limits<float>::infinity()
                                    : -std::numeric_limits<float>::infinity());
  return f;
}

inline void set_f32(HostTensor& t, std::initializer_list<int64_t> idx, ld v) {
  const float f = float(v);  // one rounding, long double -> fp32
  memcpy(&t.storage[4 * t.off(idx)], &f, 4);
}

// Largest distance in units in the last place between two same-shaped float tensors (bit
// patterns ordered as integers); NaN anywhere, or infinities that differ, count as "huge".
inline int64_t max_ulp(const HostTensor& a, const HostTensor& r) {
  std::vector<int64_t> ao, ro;
  a.for_each([&](int64_t o) { ao.push_back(o); });
  r.for_each([&](int64_t o) { ro.push_back(o); });
  const size_t es = dtype_size(a.view.dtype);
  auto ordered = [&](const HostTensor& t, int64_t o) -> int64_t {
    if (es == 2) {
      uint16_t h;
      memcpy(&h, &t.storage[2 * o], 2);
      return (h & 0x8000) ? -int64_t(h & 0x7fff) : int64_t(h);
    }
    uint32_t u;
    memcpy(&u, &t.storage[4 * o], 4);
    return (u & 0x80000000u) ? -int64_t(u & 0x7fffffffu) : int64_t(u);
  };
  int64_t worst = 0;
  for (size_t k = 0; k < ao.size(); ++k) {
    const double x = a.get_flat(ao[k]), y = r.get_flat(ro[k]);
    if (std::isnan(x) || std::isnan(y)) return INT64_MAX;
    worst = std::max(worst, std::abs(ordered(a, ao[k]) - ordered(r, ro[k])));
  }
  return worst;
}

// Bytes of t's storage that are not part of a logical element are as in `before`.
inline ::testing::AssertionResult padding_untouched(const HostTensor& t,
                                                    const std::vector<uint8_t>& before) {
  std::vector<bool> logical(t.storage.size(), false);
  const size_t es = dtype_size(t.view.dtype);
  t.for_each([&](int64_t o) {
    for (size_t k = 0; k < es; ++k) logical[o * es + k] = true;
  });
  for (size_t k = 0; k < logical.size(); ++k)
    if (!logical[k] && t.storage[k] != before[k])
      return ::testing::AssertionFailure()
             << "byte " << k << " outside the logical elements written";
  return ::testing::AssertionSuccess();
}

// A contiguous fp32 tensor holding `v` (for harness close()).
inline HostTensor as_tensor(std::vector<int64_t> shape, const std::vector<ld>& v) {
  HostTensor t(DType::kFloat32, std::move(shape));
  size_t i = 0;
  t.for_each([&](int64_t o) { t.set_flat(o, double(v.at(i++))); });
  return t;
}

// Bytes of `after` outside its logical elements equal those of `before` (the poisoned copy).
inline ::testing::AssertionResult padding_untouched(const char* name, const HostTensor& before,
                                                    const HostTensor& after) {
  const size_t es = dtype_size(after.view.dtype);
  std::vector<char> logical(after.storage.size() / es + 1, 0);
  after.for_each([&](int64_t o) { logical[o] = 1; });
  for (size_t e = 0; e * es + es <= after.storage.size(); ++e)
    if (!logical[e] && memcmp(&before.storage[e * es], &after.storage[e * es], es) != 0)
      return ::testing::AssertionFailure()
             << name << ": element at flat offset " << e << " outside the view was written";
  return ::testing::AssertionSuccess();
}

}  // namespace openmla::test
