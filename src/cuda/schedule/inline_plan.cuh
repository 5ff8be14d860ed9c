// The split-KV planner's arithmetic for small batches, one warp, lane i = request i
// (PlanBuffers::inline_plan): the attention kernel derives its part's segments from it and the
// combine its cut requests, so no planner kernel runs for batches of at most
// kInlinePlanMaxBatch. Must match planner_kernel (schedule/plan.cu, not batch-invariant).
#pragma once

#include <cuda_runtime.h>

#include "cuda/params.h"

namespace openmla::sm90 {

// Inclusive sum over the 32 lanes of the warp (all lanes call it).
__device__ __forceinline__ int warp_inclusive_sum(int v) {
  const int lane = threadIdx.x % 32;
#pragma unroll
  for (int o = 1; o < 32; o *= 2) {
    const int y = __shfl_up_sync(0xffffffff, v, o);
    if (lane >= o) v += y;
  }
  return v;
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
  const bool empty = r.cost == fc;  // an empty request: one (empty) piece where it starts
  r.f = min(empty ? r.prefix / r.per : (r.prefix + fc) / r.per, parts - 1);
  r.l = min(empty ? r.prefix / r.per : (r.prefix + r.cost - 1) / r.per, parts - 1);
  r.pieces = r.l - r.f + 1;
  r.cut = r.own && r.pieces > 1;
  const int slots = r.cut ? r.pieces : 0;
  r.acc0 = warp_inclusive_sum(slots) - slots;
  r.cut_rank = warp_inclusive_sum(r.cut ? 1 : 0);
  return r;
}

}  // namespace openmla::sm90
