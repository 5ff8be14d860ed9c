// The split-KV planner's arithmetic, shared by the planner kernel (schedule/plan.cu) and the
// inline plans (PlanBuffers::inline_plan, batches of at most kInlinePlanMaxBatch: no planner
// kernel runs). There warp 0 of every attention CTA plans the whole batch (warp_plan: lane l
// holds requests l K .. l K + K - 1, K = ceil(b / 32)) and keeps what its part needs; the wide
// combine of batches of at most kInlineSmallBatch derives its cut request the same way
// (lane_plan: lane i = request i), larger ones read the cut list that the attention kernel's
// first CTA writes.
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

// Cache lengths are planned as at most kPlanMaxLen (negative: 0), so that (len + 63) cannot
// overflow: a plan made from the wrapped value cut requests into more pieces than its buffers
// hold (cut list, partial slots). Longer ones cannot be backed by a block table anyway.
inline constexpr int kPlanMaxLen = 0x7fffffc0;
__device__ __forceinline__ int plan_len(int len) { return min(max(0, len), kPlanMaxLen); }
__device__ __forceinline__ int len_blocks(int len) { return (plan_len(len) + 63) / 64; }

// A request's blocks on the planner's line: its 64-token blocks; in batches over
// kInlineSmallBatch at most kPlanMaxBlocks, so that the line of kInlinePlanMaxBatch requests fits
// in 32 bits. Only the plan's balance depends on it: the part holding a request's end runs to its
// end (part_end_blk).
inline constexpr int kPlanMaxBlocks = 1 << 20;
__device__ __forceinline__ int plan_blocks(int len, int batch) {
  const int n = len_blocks(len);
  return batch > kInlineSmallBatch ? min(n, kPlanMaxBlocks) : n;
}
static_assert(int64_t(kInlinePlanMaxBatch) * (kPlanMaxBlocks + 8) < (int64_t(1) << 30),
              "an inline plan's line must fit in 31 bits with room for (part + 1) * per");
static_assert(int64_t(kInlineSmallBatch) * ((int64_t(1) << 25) + 8) < (int64_t(1) << 30),
              "unclamped lines of small batches must fit in 31 bits");

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
// last request (prefix last_prefix, last part lp); the part that holds a request's end gets
// kToEnd (the walk takes min(kToEnd, the request's blocks)).
inline constexpr int kToEnd = 1 << 30;
template <class T>
__device__ __forceinline__ int part_begin_blk(int part, int fp, T per, T first_prefix, int fc) {
  return part == fp ? 0 : static_cast<int>(part * per - first_prefix - fc);
}
template <class T>
__device__ __forceinline__ int part_end_blk(int part, int lp, T per, T last_prefix, int fc) {
  return part == lp ? kToEnd : static_cast<int>((part + 1) * per - last_prefix - fc);
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
  // (len_blocks written out: its unsigned first form made ptxas reschedule the main kernel's
  // build that uses this; no cap on the blocks for small batches, see plan_blocks.)
  r.len = r.own ? plan_len(p.seqlens[lane * p.seqlens_stride]) : 0;
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

// An inline plan's table (16 ints in the attention kernel's shared memory): entries 0-5 the
// part's meta (PlanMeta order), then the split entries (pieces << 16 | first accumulator slot)
// of its first and its last request; any request between them lies in this part alone (one
// piece).
inline constexpr int kTableFirst = 8, kTableLast = 9;

// The planner's decisions for the whole batch, computed by one warp (all lanes call it; lane l
// holds requests l K .. l K + K - 1, K = ceil(b / 32) <= 16); lane k returns entry k of
// part `part`'s table. With `write_list` (one warp of the grid) and a batch over
// kInlineSmallBatch it also writes the combine's cut list (split_reqs, num_split_reqs), as
// the planner kernel does. Rolled loops that reload the lengths (L1 hits) instead of keeping
// per-request arrays: unrolled, this was ~1000 instructions in each attention kernel and ptxas
// rescheduled their main loops around it.
__device__ __forceinline__ int warp_plan_table(const DenseDecodeKernelParams& p, int part,
                                               bool write_list) {
  const int lane = threadIdx.x % 32, b = p.batch, parts = p.plan.num_parts;
  const int fc = p.plan.fixed_cost;
  const int K = (b + 31) / 32, i0 = lane * K, i1 = min(b, i0 + K);
  auto len_of = [&](int i) {
    return max(0, p.seqlens[static_cast<int64_t>(i) * p.seqlens_stride]);
  };
  int run = 0;
#pragma unroll 1
  for (int i = i0; i < i1; ++i) run += plan_blocks(len_of(i), b) + fc;
  const int incl = warp_inclusive_sum(run);
  const int total = __shfl_sync(0xffffffff, incl, 31);
  const int per = max(1, (total + parts - 1) / parts);
  // This lane's requests in order: their parts, pieces and slots (relative to the lane's first
  // slot); the first whose last part is >= part and the last whose first part is <= part, with
  // what the table needs of them (both conditions are monotone over the requests).
  int slots = 0, listed = 0, first = b, last = -1;
  int first_len = 0, first_prefix = 0, first_fp = 0, first_info = 0;
  int last_prefix = 0, last_lp = 0, last_info = 0;
  int pre = incl - run;
#pragma unroll 1
  for (int i = i0; i < i1; ++i) {
    const int len = len_of(i), cost = plan_blocks(len, b) + fc;
    int f, l;
    request_parts(pre, cost, per, fc, parts, f, l);
    const int pieces = l - f + 1, info = (pieces << 16) | slots;
    if (l >= part && first == b) {
      first = i;
      first_len = len;
      first_prefix = pre;
      first_fp = f;
      first_info = info;
    }
    if (f <= part) {
      last = i;
      last_prefix = pre;
      last_lp = l;
      last_info = info;
    }
    if (pieces > 1) {
      slots += pieces;
      listed += p.plan.merge_pairs && pieces == 2 ? 0 : 1;
    }
    pre += cost;
  }
  const int slot_base = warp_inclusive_sum(slots) - slots;
  if (write_list && b > kInlineSmallBatch) {
    const int incl_listed = warp_inclusive_sum(listed);
    int r = incl_listed - listed, slot = slot_base;
    pre = incl - run;
#pragma unroll 1
    for (int i = i0; i < i1; ++i) {
      const int cost = plan_blocks(len_of(i), b) + fc;
      int f, l;
      request_parts(pre, cost, per, fc, parts, f, l);
      const int pieces = l - f + 1;
      if (pieces > 1) {
        if (!(p.plan.merge_pairs && pieces == 2))
          *reinterpret_cast<int4*>(p.plan.split_reqs + 4 * r++) = make_int4(i, pieces, slot, 0);
        slot += pieces;
      }
      pre += cost;
    }
    if (lane == 31) *p.plan.num_split_reqs = incl_listed;
  }
  // Across the lanes: the first lane with a match holds the part's first request, the last lane
  // with a match its last.
  const unsigned ge = __ballot_sync(0xffffffff, first < b);
  const unsigned le = __ballot_sync(0xffffffff, last >= 0);
  const int fsrc = ge ? __ffs(ge) - 1 : 0, lsrc = le ? 31 - __clz(le) : 0;
  first = ge ? __shfl_sync(0xffffffff, first, fsrc) : b;
  last = max(first - 1, le ? __shfl_sync(0xffffffff, last, lsrc) : -1);
  first_len = __shfl_sync(0xffffffff, first_len, fsrc);
  first_prefix = __shfl_sync(0xffffffff, first_prefix, fsrc);
  first_fp = __shfl_sync(0xffffffff, first_fp, fsrc);
  first_info = __shfl_sync(0xffffffff, first_info + slot_base, fsrc);
  last_prefix = __shfl_sync(0xffffffff, last_prefix, lsrc);
  last_lp = __shfl_sync(0xffffffff, last_lp, lsrc);
  last_info = __shfl_sync(0xffffffff, last_info + slot_base, lsrc);
  const bool empty = first > last;
  switch (lane) {
    case kBeginReq: return first;
    case kLastReq: return last;
    case kBeginLen: return empty ? 0 : first_len;
    case kBeginBlk: return empty ? 0 : part_begin_blk(part, first_fp, per, first_prefix, fc);
    case kBeginSplit: return empty ? 0 : part - first_fp;
    case kLastBlkEnd: return empty ? 0 : part_end_blk(part, last_lp, per, last_prefix, fc);
    case kTableFirst: return empty ? 0 : first_info;
    case kTableLast: return empty ? 0 : last_info;
    default: return 0;
  }
}

}  // namespace openmla::sm90
