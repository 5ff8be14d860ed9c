// Query rows of dense decode: row r of KV head hk (rows = s_q * group per KV head) is query
// position r / group of head hk * group + r % group. Where its input, output and lse live, and
// which cache tokens it may see -- shared by the attention kernels and the combine.
#pragma once

#include "cuda/params.h"

namespace openmla::sm90 {

struct QueryRow {
  int s, h;  // query position, query head
};

__device__ __forceinline__ QueryRow query_row(const DenseDecodeKernelParams& p, int hk, int row) {
  return {row / p.group, hk * p.group + row % p.group};
}

// Exclusive token limit of query row `row` in a request of `len` cache tokens: causal rows end
// at their own position (the last query row sees all), rows past p.rows (padding) see all.
__device__ __forceinline__ int row_limit(const DenseDecodeKernelParams& p, int len, int row) {
  return p.causal && row < p.rows ? min(len, max(0, len - p.s_q + row / p.group + 1)) : len;
}

template <class Elem>
__device__ __forceinline__ const Elem* q_row(const DenseDecodeKernelParams& p, int req,
                                             QueryRow q) {
  return static_cast<const Elem*>(p.q) + req * p.q_stride_b + q.s * p.q_stride_s +
         q.h * p.q_stride_h;
}

template <class Elem>
__device__ __forceinline__ Elem* out_row(const DenseDecodeKernelParams& p, int req, QueryRow q) {
  return static_cast<Elem*>(p.out) + req * p.o_stride_b + q.s * p.o_stride_s + q.h * p.o_stride_h;
}

__device__ __forceinline__ float* lse_at(const DenseDecodeKernelParams& p, int req, QueryRow q) {
  return p.lse + req * p.lse_stride_b + q.h * p.lse_stride_h + q.s * p.lse_stride_s;
}

}  // namespace openmla::sm90
