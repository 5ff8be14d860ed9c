// The decode kernels divide token indices by the page size with a multiply-high and a shift
// (FastDiv, src/cuda/params.h). Exact for 0 <= n < 2^31 is the claim; checked here against the
// plain division for every divisor up to 5000 and for large ones, at the edges of each quotient.
#include <gtest/gtest.h>

#include <cstdint>
#include <random>
#include <vector>

#include "cuda/params.h"

namespace {

using openmla::sm90::fast_div_apply;
using openmla::sm90::make_fast_div;

void check_divisor(uint32_t d, std::mt19937& rng) {
  const auto f = make_fast_div(d);
  std::vector<uint32_t> ns = {0, 1, 2, d - 1, d, d + 1, 0x7fffffffu, 0x7ffffffeu, 0x40000000u};
  for (uint32_t k = 1; k < 64; ++k) {
    const uint64_t m = uint64_t(k) * d;
    if (m < 0x80000000ull) {
      ns.push_back(uint32_t(m));
      ns.push_back(uint32_t(m - 1));
    }
  }
  // Multiples of d near the top of the range.
  const uint32_t top = 0x7fffffffu / d * d;
  ns.push_back(top);
  ns.push_back(top - 1);
  std::uniform_int_distribution<uint32_t> any(0, 0x7fffffffu);
  for (int i = 0; i < 64; ++i) ns.push_back(any(rng));
  for (uint32_t n : ns) {
    if (n > 0x7fffffffu) continue;
    ASSERT_EQ(fast_div_apply(f, n), n / d) << "n=" << n << " d=" << d;
  }
}

TEST(FastDiv, MatchesDivisionForSmallDivisors) {
  std::mt19937 rng(7);
  for (uint32_t d = 1; d <= 5000; ++d) check_divisor(d, rng);
}

TEST(FastDiv, MatchesDivisionForLargeDivisors) {
  std::mt19937 rng(11);
  for (uint32_t d : {65535u, 65536u, 65537u, 99991u, 1u << 20, 123456789u, (1u << 30) - 1,
                     1u << 30})
    check_divisor(d, rng);
  std::uniform_int_distribution<uint32_t> any_d(1, 1u << 30);
  for (int i = 0; i < 2000; ++i) check_divisor(any_d(rng), rng);
}

}  // namespace
