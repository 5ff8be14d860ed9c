// The split-KV planner's arithmetic, shared by the planner kernel (schedule/plan.cu) and the
// inline plans of small batches (PlanBuffers::inline_plan: one warp, lane i = request i, from
// which the attention kernel derives its part's segments and the combine its cut requests, so no
// planner kernel runs for batches of at most kInlinePlanMaxBatch).
#pragma once

#include <cuda_runtime.h>

#include "cuda/params.h"

namespace openmla::sm90 {

// Inclusive sum over the 32 lanes of the warp (all lanes call it).
template <class T>
__device__ __forceinline__ T warp_inclusive_sum(T v) {
  const int lane = threadIdx.x % 32;
#pragma unroll
  for (int o = 1; o < 32; o *= 2) {
    const T y = __shfl_up_sync(0xffffffff, v, o);
    if (lane >= o) v += y;
  }
  return v;
}

// First and last part (f, l, clamped to the last part) of a request at `prefix` on the line with
// `cost` (its blocks + the fixed cost fc; not batch-invariant): its blocks fall in parts
// (prefix + fc) / per .. (prefix + cost - 1) / per; an empty request gets one (empty) piece where
// it starts.
template <class T>
__device__ __forceinline__ void request_parts(T prefix, T cost, T per, int fc, int parts, int& f,
                                              int& l) {
  const bool empty = cost == fc;
  const T first = empty ? prefix / per : (prefix + fc) / per;
  const T last = empty ? first : (prefix + cost - 1) / per;
  const T cap = parts - 1;
  f = static_cast<int>(first < cap ? first : cap);
  l = static_cast<int>(last < cap ? last : cap);
}

// Block bounds of part `part` in its first request (prefix first_prefix, first part fp) and its
// last request (prefix last_prefix, cost last_cost, last part lp).
template <class T>
__device__ __forceinline__ int part_begin_blk(int part, int fp, T per, T first_prefix, int fc) {
  return part == fp ? 0 : static_cast<int>(part * per - first_prefix - fc);
}
template <class T>
__device__ __forceinline__ int part_end_blk(int part, int lp, T per, T last_prefix, T last_cost,
                                            int fc) {
  return part == lp ? static_cast<int>(last_cost - fc)
                    : static_cast<int>((part + 1) * per - last_prefix - fc);
}

// What the planner decides for request `lane` (own: lane < batch), in the planner's names: its
// cost on the line (blocks + fixed cost), prefix, the line's part length `per`, its first and
// last part f..l, pieces, first accumulator slot (cut requests) and, for cut requests, its rank
// among them (1-based inclusive count).
struct LanePlan {
  bool own, cut;
  int len, cost, prefix, per, f, l, pieces, acc0, cut_rank;
};

__device__ __forceinline__ LanePlan lane_plan(const DenseDecodeKernelParams& p) {
  LanePlan r;
  const int lane = threadIdx.x % 32, parts = p.plan.num_parts, fc = p.plan.fixed_cost;
  r.own = lane < p.batch;
  r.len = r.own ? max(0, p.seqlens[lane * p.seqlens_stride]) : 0;
  r.cost = r.own ? (r.len + 63) / 64 + fc : 0;
  const int incl = warp_inclusive_sum(r.cost);
  r.prefix = incl - r.cost;
  const int total = __shfl_sync(0xffffffff, incl, 31);
  r.per = max(1, (total + parts - 1) / parts);
  request_parts(r.prefix, r.cost, r.per, fc, parts, r.f, r.l);
  r.pieces = r.l - r.f + 1;
  r.cut = r.own && r.pieces > 1;
  const int slots = r.cut ? r.pieces : 0;
  r.acc0 = warp_inclusive_sum(slots) - slots;
  r.cut_rank = warp_inclusive_sum(r.cut ? 1 : 0);
  return r;
}

}  // namespace openmla::sm90
