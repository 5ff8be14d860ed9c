// Shared pieces of the CPU reference backend: a thread pool loop, strided element access, and the
// fp64 softmax-attention of one query over gathered keys.
#pragma once

#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <vector>

#include "common/numeric.h"
#include "openmla/tensor.h"

namespace openmla::cpu {

inline constexpr double kInf = std::numeric_limits<double>::infinity();

// Runs fn(i) for i in [0, n) on all hardware threads (dynamic scheduling).
void parallel_for(int64_t n, const std::function<void(int64_t)>& fn);

// Element offset of an index tuple.
inline int64_t offset(const TensorView& t, std::initializer_list<int64_t> idx) {
  int64_t off = 0;
  int d = 0;
  for (int64_t i : idx) off += i * t.strides[d++];
  return off;
}

// Loads n consecutive elements (last dim contiguous) starting at element offset `off` as double.
void load_row(const TensorView& t, int64_t off, int64_t n, double* dst);
// Stores n doubles (rounded to t's dtype, nearest-even) at element offset `off`.
void store_row(const TensorView& t, int64_t off, int64_t n, const double* src);
double load(const TensorView& t, int64_t off);
void store(const TensorView& t, int64_t off, double v);
// Reads an int32 element.
inline int32_t load_i32(const TensorView& t, int64_t off) {
  return static_cast<const int32_t*>(t.data)[off];
}

// One query over n keys (rows of `keys`, row stride d_qk; values = first d_v of each key row
// unless `values` is given with row stride d_v). Computes o (d_v), lse and the max logit.
// n == 0: o = 0, lse = +inf, max = -inf.
struct AttendResult {
  double lse;
  double max_logit;
};
AttendResult attend(const double* q, const double* keys, const double* values, int64_t n,
                    int64_t d_qk, int64_t d_v, double scale, double* o);

// attn_sink: o *= 1 / (1 + exp(sink - lse)); sink=-inf: unchanged; +inf: 0.
void apply_sink(double sink, double lse, double* o, int64_t d_v);

}  // namespace openmla::cpu
