// Split-KV planner (device-side, no host sync, fixed-size buffers: CUDA-graph safe) and the
// combine kernel that merges split requests by their lse.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <cmath>

#include "cuda/common/cuda_check.h"
#include "cuda/common/launch.h"
#include "cuda/common/ptx.cuh"
#include "cuda/decode_dense/rows.cuh"
#include "cuda/schedule/inline_plan.cuh"
#include "cuda/schedule/plan.h"

namespace openmla::sm90 {

namespace {

// Cost of starting a piece of work (Q load, first K latency, epilogue, a share of the combine),
// in KV blocks, per attention kernel. Main (seesaw) kernel: ~9 us per segment (profile stamps)
// against ~1.5-2.5 us per block; 5 instead of 3 measured (two A/B runs, x3 each): b=8 h_q=128
// s_k=8192 -2.5 %, b=4 s_k=65536 -1.8 %, b=128 cells within noise (2 was worse). Narrow
// kernel: 3 (5 made b=128 h_q=16 s_k=4096 1 % slower).
constexpr int kFixedCostMain = 5;
constexpr int kFixedCostNarrow = 3;

constexpr int kPlannerThreads = 256;
constexpr int kPlannerStaged = 2048;  // batches whose per-request arrays fit in shared memory

// Exclusive prefix sum of one value per thread over the CTA; `total` gets the sum of all.
template <class T>
__device__ T cta_exclusive_scan(T v, T& total) {
  __shared__ T warp_sums[kPlannerThreads / 32];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const T x = warp_inclusive_sum(v);
  if (lane == 31) warp_sums[warp] = x;
  __syncthreads();
  T before = 0;
  total = 0;
  for (int w = 0; w < kPlannerThreads / 32; ++w) {
    if (w < warp) before += warp_sums[w];
    total += warp_sums[w];
  }
  __syncthreads();  // warp_sums is reused by the next scan
  return before + x - v;
}

// The split-KV planner, data-parallel over requests and parts (one CTA). Every request costs its
// blocks plus a fixed cost F (fixed_cost: kFixedCostMain / kFixedCostNarrow); the costs are laid
// end to end on a line of length W, and part p takes the line's [p per, (p+1) per),
// per = ceil(W / parts). A request's fixed cost sits at its start,
// so its blocks fall in parts first..last = (P + F) / per .. (P + cost - 1) / per (P: its prefix,
// F: fixed_cost); each of those parts gets one piece. A piece that continues a request pays its
// fixed cost outside the line, so no part exceeds per + F: the bound of a sequential greedy cut,
// without its O(b + parts) single-thread loop (which took 30-50 us at b=128).
// Batch-invariant plans never cut: request i goes whole to the part its cost midpoint falls in, so
// its bits do not depend on the rest of the batch, and parts stay within one request of `per`.
// Development builds (-DOPENMLA_DECODE_PROFILE): thread 0 stamps clock64 and globaltimer at the
// planner's entry, after each of its three steps and at its exit; planner_prof_print (launched
// right after the planner) prints the step durations.
#if defined(OPENMLA_DECODE_PROFILE)
__device__ unsigned long long g_plan_prof[5][2];
__device__ __forceinline__ void plan_stamp(int k) {
  if (threadIdx.x == 0) {
    unsigned long long t;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
    g_plan_prof[k][0] = static_cast<unsigned long long>(clock64());
    g_plan_prof[k][1] = t;
  }
}
__global__ void planner_prof_print() {
  printf("plan-prof cycles / ns: step1 %llu / %llu, step2 %llu / %llu, step3 %llu / %llu, exit "
         "%llu / %llu\n",
         g_plan_prof[1][0] - g_plan_prof[0][0], g_plan_prof[1][1] - g_plan_prof[0][1],
         g_plan_prof[2][0] - g_plan_prof[1][0], g_plan_prof[2][1] - g_plan_prof[1][1],
         g_plan_prof[3][0] - g_plan_prof[2][0], g_plan_prof[3][1] - g_plan_prof[2][1],
         g_plan_prof[4][0] - g_plan_prof[3][0], g_plan_prof[4][1] - g_plan_prof[3][1]);
}
#define OPENMLA_PLAN_STAMP(k) plan_stamp(k)
#else
#define OPENMLA_PLAN_STAMP(k)
#endif

// Whether a cut request goes on the combine's list: not when the attention kernel merges it
// (two pieces, PlanBuffers::merge_pairs).
__device__ __forceinline__ int listed(int pieces, int merge_pairs) {
  return merge_pairs && pieces == 2 ? 0 : 1;
}

__global__ void __launch_bounds__(kPlannerThreads, 1)
    planner_kernel(const int32_t* __restrict__ seqlens, int64_t seqlens_stride, int batch,
                   int batch_invariant, int fixed_cost, PlanBuffers buf, PlanScratch scratch) {
  __shared__ long long prefix_s[kPlannerStaged];
  __shared__ int first_s[kPlannerStaged], last_s[kPlannerStaged];
  const bool staged = batch <= kPlannerStaged;
  long long* prefix = staged ? prefix_s : scratch.prefix;
  int* first_part = staged ? first_s : scratch.first_part;
  int* last_part = staged ? last_s : scratch.last_part;
  const int parts = buf.num_parts;
  OPENMLA_PLAN_STAMP(0);
  auto nblk_of = [&](int i) {
    return plan_blocks(seqlens[i * seqlens_stride], batch);
  };
  // 1. Prefix of the costs: each thread a contiguous chunk of requests.
  const int chunk = (batch + kPlannerThreads - 1) / kPlannerThreads;
  const int i0 = min(batch, static_cast<int>(threadIdx.x) * chunk), i1 = min(batch, i0 + chunk);
  long long run = 0;
  for (int i = i0; i < i1; ++i) {
    prefix[i] = run;
    run += nblk_of(i) + fixed_cost;
  }
  long long total = 0;
  const long long base = cta_exclusive_scan(run, total);
  for (int i = i0; i < i1; ++i) prefix[i] += base;
  const long long per = max(1ll, (total + parts - 1) / parts);
  auto cost_of = [&](int i) { return (i + 1 < batch ? prefix[i + 1] : total) - prefix[i]; };
  __syncthreads();
  OPENMLA_PLAN_STAMP(1);
  // 2. Each request's parts, its pieces and (cut requests only) accumulator slots.
  int cuts = 0, slots = 0;
  for (int i = i0; i < i1; ++i) {
    const long long P = prefix[i], c = cost_of(i);
    if (batch_invariant) {
      first_part[i] = last_part[i] =
          static_cast<int>(min((P + c / 2) / per, static_cast<long long>(parts - 1)));
    } else {
      request_parts(P, c, per, fixed_cost, parts, first_part[i], last_part[i]);
    }
    const int pieces = last_part[i] - first_part[i] + 1;
    buf.num_splits[i] = pieces;
    if (pieces > 1) {
      cuts += listed(pieces, buf.merge_pairs);
      slots += pieces;
    }
  }
  int n_cut = 0, n_slots = 0;
  int cut_base = cta_exclusive_scan(cuts, n_cut);
  int slot_base = cta_exclusive_scan(slots, n_slots);
  for (int i = i0; i < i1; ++i) {
    const int pieces = last_part[i] - first_part[i] + 1;
    buf.accum_offset[i] = slot_base;
    if (pieces > 1) {
      if (listed(pieces, buf.merge_pairs))
        *reinterpret_cast<int4*>(buf.split_reqs + 4 * cut_base++) =
            make_int4(i, pieces, slot_base, 0);
      slot_base += pieces;
    }
  }
  if (threadIdx.x == 0) *buf.num_split_reqs = n_cut;
  __syncthreads();
  OPENMLA_PLAN_STAMP(2);
  // 3. Each part: its first request is the first whose last part is >= p, its last the last
  // whose first part is <= p (both arrays are non-decreasing); block bounds from the line.
  for (int p = threadIdx.x; p < parts; p += kPlannerThreads) {
    int lo = 0, hi = batch;
    while (lo < hi) {
      const int mid = (lo + hi) / 2;
      if (last_part[mid] < p) lo = mid + 1; else hi = mid;
    }
    const int first = lo;
    lo = first;
    hi = batch;
    while (lo < hi) {
      const int mid = (lo + hi) / 2;
      if (first_part[mid] <= p) lo = mid + 1; else hi = mid;
    }
    const int last = lo - 1;
    int32_t* m = buf.meta + p * kPlanMetaInts;
    m[kBeginReq] = first;
    m[kLastReq] = last;  // < first: an empty part
    if (first > last) {
      m[kBeginBlk] = 0;
      m[kBeginSplit] = 0;
      m[kLastBlkEnd] = 0;
      m[kBeginLen] = 0;
      continue;
    }
    m[kBeginLen] = max(0, seqlens[first * seqlens_stride]);
    const int fp = first_part[first];
    m[kBeginBlk] = part_begin_blk(p, fp, per, prefix[first], fixed_cost);
    m[kBeginSplit] = p - fp;
    m[kLastBlkEnd] = part_end_blk(p, last_part[last], per, prefix[last], fixed_cost);
  }
#if defined(OPENMLA_DECODE_PROFILE)
  __syncthreads();
  OPENMLA_PLAN_STAMP(3);
  __threadfence();
  OPENMLA_PLAN_STAMP(4);
#endif
}

// One warp per (cut request, query row, quarter of the 512 dims), each lane 4 dims; a CTA holds
// 2 rows x 4 quarters (64 registers: 4 CTAs, 32 warps per SM), and grid.x CTAs stride over the
// planner's list of cut requests (fixed grid for CUDA graphs; CTAs with nothing to do return at
// once). Requests cut in up to 64 pieces (every one at b >= 2 on 132 SMs) keep the pieces' lse
// in two registers per lane: one global round trip gives the max, the sum and every weight, and
// the first 4 pieces' partial outputs are loaded together with the lse (they do not depend on
// it), and the cut list holds {request, pieces, accum offset} in one 16-byte entry: two round
// trips per request instead of four (h_q=64 s_k=4096 -2.7 %). More pieces: 4 loads at a time,
// the lse of pieces past 64 reloaded (L2 hits).
constexpr int kCombineThreads = 256;
constexpr int kCombineRows = kCombineThreads / 128;  // rows per CTA
constexpr int kCombineMaxX = 128;                    // CTAs across the cut requests
constexpr int kMaxPieces = 1024;  // >= 2 * parts for any GPU this runs on (checked at plan creation)
constexpr int kCombineBatch = 4;  // partial-output loads in flight per thread

// acc += w x, skipped for w == 0: an empty piece adds nothing, even a non-finite partial.
__device__ __forceinline__ void add_weighted(float (&acc)[4], float w, const float4& x) {
  if (w != 0.0f) {
    acc[0] += w * x.x;
    acc[1] += w * x.y;
    acc[2] += w * x.z;
    acc[3] += w * x.w;
  }
}

// The merged row's 1 / (sum of weights) and lse, for pieces weighted by exp(lse - mx) summing to
// `sum`; mx = -inf: every piece was empty (zeros, lse +inf).
__device__ __forceinline__ void merged_inv_lse(float mx, float sum, float& inv, float& lse) {
  const bool empty = mx == -INFINITY;
  inv = empty ? 0.0f : 1.0f / sum;
  lse = empty ? INFINITY : mx + logf(sum);
}

// Writes dims d0 .. d0+3 of query row q of request req as acc * inv in the output dtype, and the
// row's lse from the thread that `writes_lse`.
__device__ __forceinline__ void store_merged(const DenseDecodeKernelParams& p, int req, QueryRow q,
                                             int d0, const float (&acc)[4], float inv, float lse,
                                             bool writes_lse) {
  uint16_t bits[4];
#pragma unroll
  for (int i = 0; i < 4; ++i)
    bits[i] = p.fp16 ? __half_as_ushort(__float2half_rn(acc[i] * inv))
                     : __bfloat16_as_ushort(__float2bfloat16_rn(acc[i] * inv));
  uint2 packed;
  packed.x = bits[0] | (static_cast<uint32_t>(bits[1]) << 16);
  packed.y = bits[2] | (static_cast<uint32_t>(bits[3]) << 16);
  *reinterpret_cast<uint2*>(out_row<uint16_t>(p, req, q) + d0) = packed;
  if (writes_lse) *lse_at(p, req, q) = lse;
}

// The max over a cut request's pieces' lse for one row: lane l holds pieces l and l + 32 (l0, l1,
// loaded by the caller together with the first partial outputs); pieces past 64 are reloaded.
__device__ __forceinline__ float lse_max(const float* lse_in, int64_t piece_stride, int n,
                                         int lane, float l0, float l1) {
  float mx = fmaxf(l0, l1);
  for (int k = lane + 64; k < n; k += 32) mx = fmaxf(mx, lse_in[k * piece_stride]);
  for (int o = 16; o > 0; o /= 2) mx = fmaxf(mx, __shfl_xor_sync(0xffffffff, mx, o));
  return mx;
}
// The sum over the pieces of exp(lse - mx) (0 for all when mx is -inf: every piece empty);
// `lane_part` is this lane's share of pieces l and l + 32.
__device__ __forceinline__ float weight_sum(const float* lse_in, int64_t piece_stride, int n,
                                            int lane, float lane_part, float mx) {
  float sum = lane_part;
  const bool empty = mx == -INFINITY;
  for (int k = lane + 64; k < n; k += 32) sum += empty ? 0.0f : expf(lse_in[k * piece_stride] - mx);
  for (int o = 16; o > 0; o /= 2) sum += __shfl_xor_sync(0xffffffff, sum, o);
  return sum;
}

// Lane l's weight for the batch of pieces starting at kb (a batch never straddles 32 pieces):
// that of piece kb - kb % 32 + l (w0, w1: pieces l and l + 32; later ones reloaded), for the
// shuffle from lane (kb + k) % 32.
__device__ __forceinline__ float batch_weight(const float* lse_in, int64_t piece_stride, int n,
                                              int kb, int lane, float w0, float w1, float mx,
                                              bool empty) {
  return kb < 32   ? w0
         : kb < 64 ? w1
                   : (kb - kb % 32 + lane < n && !empty
                          ? expf(lse_in[(kb - kb % 32 + lane) * piece_stride] - mx)
                          : 0.0f);
}

__global__ void __launch_bounds__(kCombineThreads) combine_kernel(DenseDecodeKernelParams p) {
  grid_dependency_wait();  // the attention kernel's partial results
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int row = blockIdx.y * kCombineRows + warp / 4, hk = blockIdx.z;
  const int d0 = (warp % 4) * 128 + lane * 4;
  if (row >= p.rows) return;
  const int n_cut = *p.plan.num_split_reqs;
  const QueryRow qr = query_row(p, hk, row);
  const int64_t piece_stride = static_cast<int64_t>(p.h_kv) * p.rows;  // in slots
  // The partial outputs are read once: evict-first.
  const uint64_t drop = l2_policy_evict_first();
  for (int c = blockIdx.x; c < n_cut; c += gridDim.x) {
    const int4 cut = *reinterpret_cast<const int4*>(p.plan.split_reqs + 4 * c);
    const int req = cut.x, n = cut.y;
    const int64_t slot0 = (static_cast<int64_t>(cut.z) * p.h_kv + hk) * p.rows + row;
    const float* lse_in = p.plan.lse_accum + slot0;
    const float* o_in = p.plan.o_accum + slot0 * 512 + d0;
    // The first pieces' partial outputs are loaded together with the lse (they do not depend on
    // it): one round trip for the common request in <= 4 pieces.
    float4 v[kCombineBatch];
#pragma unroll
    for (int k = 0; k < kCombineBatch; ++k)
      v[k] = k < n ? ld_global_hint(o_in + k * piece_stride * 512, drop)
                   : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    // lse of pieces lane and lane + 32 (the common case holds them all).
    const float l0 = lane < n ? lse_in[lane * piece_stride] : -INFINITY;
    const float l1 = lane + 32 < n ? lse_in[(lane + 32) * piece_stride] : -INFINITY;
    const float mx = lse_max(lse_in, piece_stride, n, lane, l0, l1);
    const bool empty = mx == -INFINITY;
    // Unnormalized weights (an empty piece, lse -inf, gets exactly 0).
    const float w0 = empty ? 0.0f : expf(l0 - mx), w1 = empty ? 0.0f : expf(l1 - mx);
    const float sum = weight_sum(lse_in, piece_stride, n, lane, w0 + w1, mx);
    float inv, lse;
    merged_inv_lse(mx, sum, inv, lse);
    float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
#pragma unroll
    for (int k = 0; k < kCombineBatch; ++k)
      add_weighted(acc, __shfl_sync(0xffffffff, w0, k), v[k]);
    // More pieces (small batches cut over many parts): kCombineBatch loads at a time.
    for (int kb = kCombineBatch; kb < n; kb += kCombineBatch) {
      const float w_lane = batch_weight(lse_in, piece_stride, n, kb, lane, w0, w1, mx, empty);
#pragma unroll
      for (int k = 0; k < kCombineBatch; ++k)
        v[k] = kb + k < n ? ld_global_hint(o_in + (kb + k) * piece_stride * 512, drop)
                          : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
#pragma unroll
      for (int k = 0; k < kCombineBatch; ++k)
        add_weighted(acc, __shfl_sync(0xffffffff, w_lane, (kb + k) % 32), v[k]);
    }
    store_merged(p, req, qr, d0, acc, inv, lse, threadIdx.x % 128 == 0);
  }
}

// A warp per (cut request, KV head, query row) -- an "item" -- over all 512 dims: lane l merges
// dims 4 l + 128 j (j < 4, coalesced), so each lane has 2 pieces x 4 x 16 bytes of partial
// outputs in flight, and the warps of a fixed grid (kRowCombineCtasPerSm per SM: one wave)
// stride over the items, the next item's cut entry loaded ahead. (The kernel above, a warp per
// quarter row with 4096 CTAs at b=128, ran ~8 waves of dependent round trips.) The few lines
// that turn the lse into weights repeat the kernel above: folded into one helper (a struct or
// out-parameters) they made ptxas spill here, at the 80-register bound of 3 CTAs per SM.
constexpr int kRowCombineThreads = 256;
constexpr int kRowCombineCtasPerSm = 3;
constexpr int kRowCombineBatch = 2;  // pieces loaded together
// Fewer items than this (e.g. b=32, h_q=16: 512): the quarter-row kernel above, whose 4 warps per
// item were ~2 us faster there (the row kernel then runs few warps); from b=128 h_q=16 (2048
// items) up the row kernel is faster (b=128 h_q=64 s_k=4096: -5 us, h_q=128: -6 us).
constexpr int64_t kRowCombineMinItems = 1024;

__global__ void __launch_bounds__(kRowCombineThreads, kRowCombineCtasPerSm)
    row_combine_kernel(DenseDecodeKernelParams p) {
  grid_dependency_wait();  // the attention kernel's partial results
  const int lane = threadIdx.x % 32;
  const int warps = gridDim.x * (kRowCombineThreads / 32);
  const int n_cut = *p.plan.num_split_reqs;
  const int per_req = p.h_kv * p.rows;  // items per cut request (KV head major, then row)
  const int items = n_cut * per_req;
  const int64_t piece_stride = per_req;  // in slots
  const uint64_t drop = l2_policy_evict_first();  // partial outputs are read once
  int it = blockIdx.x * (kRowCombineThreads / 32) + threadIdx.x / 32;
  int4 cut = it < items ? *reinterpret_cast<const int4*>(p.plan.split_reqs + 4 * (it / per_req))
                        : make_int4(0, 0, 0, 0);
  for (; it < items; it += warps) {
    const int hr = it % per_req;
    const int req = cut.x, n = cut.y;
    const int64_t slot0 = static_cast<int64_t>(cut.z) * piece_stride + hr;
    const float* lse_in = p.plan.lse_accum + slot0;
    const float* o_in = p.plan.o_accum + slot0 * 512 + 4 * lane;
    float4 v[kRowCombineBatch][4];
#pragma unroll
    for (int k = 0; k < kRowCombineBatch; ++k)
#pragma unroll
      for (int j = 0; j < 4; ++j)
        v[k][j] = k < n ? ld_global_hint(o_in + k * piece_stride * 512 + 128 * j, drop)
                        : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    const float l0 = lane < n ? lse_in[lane * piece_stride] : -INFINITY;
    const float l1 = lane + 32 < n ? lse_in[(lane + 32) * piece_stride] : -INFINITY;
    // The next item's cut entry (often the same request), while this one's loads are in flight.
    const int nx = it + warps;
    const int4 cut_next =
        nx < items ? *reinterpret_cast<const int4*>(p.plan.split_reqs + 4 * (nx / per_req))
                   : make_int4(0, 0, 0, 0);
    const float mx = lse_max(lse_in, piece_stride, n, lane, l0, l1);
    const bool empty = mx == -INFINITY;
    // Unnormalized weights (an empty piece, lse -inf, gets exactly 0).
    const float w0 = empty ? 0.0f : expf(l0 - mx), w1 = empty ? 0.0f : expf(l1 - mx);
    const float sum = weight_sum(lse_in, piece_stride, n, lane, w0 + w1, mx);
    float inv, lse;
    merged_inv_lse(mx, sum, inv, lse);
    float acc[4][4] = {};
#pragma unroll
    for (int k = 0; k < kRowCombineBatch; ++k) {
      const float w = __shfl_sync(0xffffffff, w0, k);
#pragma unroll
      for (int j = 0; j < 4; ++j) add_weighted(acc[j], w, v[k][j]);
    }
    for (int kb = kRowCombineBatch; kb < n; kb += kRowCombineBatch) {
      const float w_lane = batch_weight(lse_in, piece_stride, n, kb, lane, w0, w1, mx, empty);
#pragma unroll
      for (int k = 0; k < kRowCombineBatch; ++k)
#pragma unroll
        for (int j = 0; j < 4; ++j)
          v[k][j] = kb + k < n
                        ? ld_global_hint(o_in + (kb + k) * piece_stride * 512 + 128 * j, drop)
                        : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
#pragma unroll
      for (int k = 0; k < kRowCombineBatch; ++k) {
        const float w = __shfl_sync(0xffffffff, w_lane, (kb + k) % 32);
#pragma unroll
        for (int j = 0; j < 4; ++j) add_weighted(acc[j], w, v[k][j]);
      }
    }
    const QueryRow qr = query_row(p, hr / p.rows, hr % p.rows);
#pragma unroll
    for (int j = 0; j < 4; ++j)
      store_merged(p, req, qr, 4 * lane + 128 * j, acc[j], inv, lse, lane == 0 && j == 0);
    cut = cut_next;
  }
}

// Few cut requests in many pieces (small batches: the planner spreads one request over the
// whole GPU): one CTA per (cut request, query row). The pieces' lse are staged in shared memory
// (one round trip); kGroups groups of 128 threads each take every kGroups-th piece, thread t of
// a group dims 4t .. 4t+3 with up to 16 partial-output loads in flight, and group 0 adds the
// other groups' sums in a fixed order. Four groups when the grid is at most one CTA per SM (b=1:
// 23.3 -> 20.0 us per call, one round trip of loads for up to 64 pieces), else one (b=8 with four:
// 43.4 -> 55.2 us, too many threads).
constexpr int kCombineWideMaxReqs = 8;  // cut requests at most for the wide kernel
constexpr int kCombineWideBatch = 16;

template <int kGroups>
__global__ void __launch_bounds__(kGroups * 128) combine_wide_kernel(DenseDecodeKernelParams p) {
  constexpr int kThreads = kGroups * 128, kWarps = kThreads / 32;
  __shared__ float s_w[kMaxPieces];
  __shared__ float s_red[2][kWarps];
  __shared__ float4 s_acc[kGroups > 1 ? kGroups - 1 : 1][128];
  grid_dependency_wait();  // the attention kernel's partial results
  const int t = threadIdx.x, lane = t % 32, warp = t / 32, grp = t / 128, tg = t % 128;
  const int hk = blockIdx.z, c = blockIdx.x;
  // CTA column c merges cut request c: there are at most min(b, num_parts - 1) = gridDim.x of
  // them (a cut request spans at least one boundary between consecutive parts, and no two share
  // one). Inline plans of small batches (no planner ran) take it from the lengths, every warp the
  // same; else from the list (the planner's, or the attention kernel's first CTA's). (Out of the
  // row loop: read there, behind that branch, it made this kernel 16 -> 26 us at b=1, ncu.)
  int4 cut;
  if (p.plan.inline_plan && p.batch <= kInlineSmallBatch) {
    const LanePlan lp = lane_plan(p);
    if (c >= __shfl_sync(0xffffffff, lp.cut_rank, 31)) return;
    const int src = __ffs(__ballot_sync(0xffffffff, lp.cut && lp.cut_rank == c + 1)) - 1;
    cut = make_int4(src, __shfl_sync(0xffffffff, lp.pieces, src),
                    __shfl_sync(0xffffffff, lp.acc0, src), 0);
  } else {
    if (c >= *p.plan.num_split_reqs) return;
    cut = *reinterpret_cast<const int4*>(p.plan.split_reqs + 4 * c);
  }
  const int req = cut.x, n = min(cut.y, kMaxPieces);
  const int64_t piece_stride = static_cast<int64_t>(p.h_kv) * p.rows;  // in slots
  const uint64_t drop = l2_policy_evict_first();  // (see combine_kernel)
  for (int row = blockIdx.y; row < p.rows; row += gridDim.y) {
    const QueryRow qr = query_row(p, hk, row);
    const int64_t slot0 = (static_cast<int64_t>(cut.z) * p.h_kv + hk) * p.rows + row;
    const float* lse_in = p.plan.lse_accum + slot0;
    float mx = -INFINITY;
    for (int k = t; k < n; k += kThreads) {
      const float v = lse_in[k * piece_stride];
      s_w[k] = v;
      mx = fmaxf(mx, v);
    }
    for (int o = 16; o > 0; o /= 2) mx = fmaxf(mx, __shfl_xor_sync(0xffffffff, mx, o));
    if (lane == 0) s_red[0][warp] = mx;
    __syncthreads();
    mx = s_red[0][0];
#pragma unroll
    for (int w = 1; w < kWarps; ++w) mx = fmaxf(mx, s_red[0][w]);
    const bool empty = mx == -INFINITY;
    float sum = 0.0f;
    for (int k = t; k < n; k += kThreads) {
      const float w = empty ? 0.0f : expf(s_w[k] - mx);
      s_w[k] = w;
      sum += w;
    }
    for (int o = 16; o > 0; o /= 2) sum += __shfl_xor_sync(0xffffffff, sum, o);
    if (lane == 0) s_red[1][warp] = sum;
    __syncthreads();
    sum = 0.0f;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) sum += s_red[1][w];
    float inv, lse;
    merged_inv_lse(mx, sum, inv, lse);
    // This group's pieces grp, grp + 4, ...
    const float* o_in = p.plan.o_accum + slot0 * 512 + 4 * tg;
    float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    for (int kb = grp; kb < n; kb += kGroups * kCombineWideBatch) {
      float4 v[kCombineWideBatch];
#pragma unroll
      for (int k = 0; k < kCombineWideBatch; ++k) {
        const int piece = kb + k * kGroups;
        v[k] = piece < n ? ld_global_hint(o_in + piece * piece_stride * 512, drop)
                         : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
      }
#pragma unroll
      for (int k = 0; k < kCombineWideBatch; ++k) {
        const int piece = kb + k * kGroups;
        add_weighted(acc, piece < n ? s_w[piece] : 0.0f, v[k]);
      }
    }
    if (grp > 0) s_acc[grp - 1][tg] = make_float4(acc[0], acc[1], acc[2], acc[3]);
    __syncthreads();
    if (grp == 0) {
#pragma unroll
      for (int g = 0; g < kGroups - 1; ++g) {
        const float4 x = s_acc[g][tg];
        acc[0] += x.x;
        acc[1] += x.y;
        acc[2] += x.z;
        acc[3] += x.w;
      }
      store_merged(p, req, qr, 4 * tg, acc, inv, lse, tg == 0);
    }
    __syncthreads();  // s_w, s_red and s_acc are rewritten for the next row
  }
}

}  // namespace

PlanState& plan_state(const DecodePlan& plan) {
  return *static_cast<PlanState*>(plan.impl()->state);
}

size_t partials_offset(size_t slot_rows) { return (slot_rows * 4 + 255) / 256 * 256; }

void set_partials(PlanBuffers& buf, void* base, size_t slot_rows) {
  buf.lse_accum = static_cast<float*>(base);
  buf.o_accum = reinterpret_cast<float*>(static_cast<char*>(base) + partials_offset(slot_rows));
}

// The choices that depend on the batch (PlanBuffers: combine grid, inline plan, pair merge): made
// for config.batch at creation and remade by every update for the batch of its lengths, which may
// be smaller (a plan serves any batch up to config.batch), so a plan behaves -- and rounds -- the
// same whatever batch it was made for.
void set_batch(PlanState& st, const DecodePlanConfig& c, int batch) {
  st.buf.max_split_reqs = std::max(1, std::min(std::max(batch, 1), st.buf.num_parts - 1));
  st.buf.merge_pairs = st.can_merge && batch >= kMergeMinBatch;
  // Batches are planned inside the attention kernel (PlanBuffers::inline_plan): one launch less
  // per call (b=128 s_k=4096: -0.4 to -2 %, b=32 h_q=16: -4 %). Up to kInlinePlanMaxBatch by
  // the builds with the wide table (narrow kernel, main kernel with pair merges), up to
  // kInlineSmallBatch by the others (see kernel.cuh). OPENMLA_DECODE_NO_INLINE_PLAN=1 (at
  // creation) keeps the planner (development A/B).
  const bool wide = wide_plan_table(uses_narrow_kernel(st.rows), st.buf.merge_pairs);
  st.buf.inline_plan = !c.batch_invariant && !st.no_inline &&
                       (batch <= kInlineSmallBatch || (wide && batch <= kInlinePlanMaxBatch));
  // K evict-last (plan_create) only for batches of at least two requests per part: DRAM reads
  // -7 % (ncu) and -0.7 to -1.2 % time at b=128 s_k=16384/32768, but +1.2 to +5.3 % at b=1-32
  // (b=64: within 0.5 %; docs/benchmarks.md, session 19). There requests are cut into many
  // pieces, and evict-last K pushes their evict-last partial results out of L2 (ncu, b=8: the
  // attention kernel writes 23 MB to DRAM instead of 5, and reads no less K).
  st.buf.k_evict_last = st.k_evict_last_ok && batch >= 2 * st.buf.num_parts ? 1 : 0;
}

void plan_create(DecodePlan::Impl& impl) {
  const DecodePlanConfig& c = impl.config;
  OPENMLA_CUDA_CHECK(cudaSetDevice(impl.device.index));
  int sms = c.num_sms;
  if (sms == 0)
    OPENMLA_CUDA_CHECK(
        cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, impl.device.index));
  auto* st = new PlanState();
  st->rows = c.s_q * (c.h_q / c.h_kv);
  st->m_blocks = (st->rows + 63) / 64;
  const int ctas_per_part = st->m_blocks * c.h_kv;
  st->buf.num_parts = std::max(1, sms / ctas_per_part);
  st->buf.accum_slots = 2 * (st->buf.num_parts - 1);
  st->buf.fixed_cost = uses_narrow_kernel(st->rows) ? kFixedCostNarrow : kFixedCostMain;
  st->no_inline = env_flag("OPENMLA_DECODE_NO_INLINE_PLAN");
  // Two-piece requests merged in the attention kernel: not for batches under kMergeMinBatch
  // (their cut requests are few and the wide combine derives them from the lengths) nor more
  // than two m blocks (s_q = 2 at h_q = 128: that kernel build was 1.5-3 % slower on long
  // contexts, merging or not, and the combine it saves is ~0.5 % there).
  // OPENMLA_DECODE_NO_PAIR_MERGE=1: development A/B.
  st->can_merge = !c.batch_invariant && c.batch >= kMergeMinBatch &&
                  !uses_narrow_kernel(st->rows) && st->m_blocks <= 2 &&
                  !env_flag("OPENMLA_DECODE_NO_PAIR_MERGE");
  // K evict-last where more than two m-block CTAs read each block (s_q = 2 at h_q = 128; batches:
  // set_batch). OPENMLA_DECODE_K_EVICT_FIRST=1 (at creation) keeps evict-first (development A/B).
  st->k_evict_last_ok = !uses_narrow_kernel(st->rows) && st->m_blocks > 2 &&
                        !env_flag("OPENMLA_DECODE_K_EVICT_FIRST");
  set_batch(*st, c, c.batch);
  if (2 * st->buf.num_parts > kMaxPieces)
    throw Error("config.num_sms", "more than " + std::to_string(kMaxPieces / 2) +
                                      " schedule parts are not supported");
  const size_t b = static_cast<size_t>(std::max(c.batch, 1));
  const size_t slot_rows = static_cast<size_t>(st->buf.accum_slots) * c.h_kv * st->rows;
  st->slot_rows = slot_rows;
  const size_t ints = st->buf.num_parts * kPlanMetaInts + 2 * b + 4 * st->buf.max_split_reqs + 1;
  const size_t sync_ints = st->can_merge ? 2 * b * st->m_blocks * c.h_kv : 0;
  // The partial results (lse, then o, each 256-byte aligned): in the plan's allocation, or in
  // the caller's per-call workspace (config.external_workspace).
  const size_t partial_bytes =
      slot_rows == 0 ? 0 : partials_offset(slot_rows) + slot_rows * 512 * 4;
  const size_t own_partials = c.external_workspace ? 0 : partial_bytes;
  const size_t bytes = ints * 4 + 16 + 256 + own_partials + 256 + b * 16 + 256 + sync_ints * 4;
  char* base = nullptr;
  try {
    OPENMLA_CUDA_CHECK(cudaMalloc(&base, bytes));
  } catch (...) {
    delete st;
    throw;
  }
  auto align = [](size_t x) { return (x + 255) / 256 * 256; };
  size_t off = 0;
  st->buf.meta = reinterpret_cast<int32_t*>(base + off);
  off += st->buf.num_parts * kPlanMetaInts * 4;
  st->buf.num_splits = reinterpret_cast<int32_t*>(base + off);
  off += b * 4;
  st->buf.accum_offset = reinterpret_cast<int32_t*>(base + off);
  off += b * 4;
  off = (off + 15) / 16 * 16;  // int4 loads
  st->buf.split_reqs = reinterpret_cast<int32_t*>(base + off);
  off += st->buf.max_split_reqs * 16;
  st->buf.num_split_reqs = reinterpret_cast<int32_t*>(base + off);
  off = align(off + 4);
  if (own_partials > 0) {
    set_partials(st->buf, base + off, slot_rows);
    off = align(off + own_partials);
  }
  st->scratch.prefix = reinterpret_cast<long long*>(base + off);
  st->scratch.first_part = reinterpret_cast<int*>(base + off + b * 8);
  st->scratch.last_part = reinterpret_cast<int*>(base + off + b * 12);
  off = align(off + b * 16);
  st->buf.merge_sync = sync_ints > 0 ? reinterpret_cast<int32_t*>(base + off) : nullptr;
  if (sync_ints > 0) {
    const cudaError_t e = cudaMemset(st->buf.merge_sync, 0, sync_ints * 4);
    if (e != cudaSuccess) {
      cudaFree(base);
      delete st;
      OPENMLA_CUDA_CHECK(e);
    }
  }
  impl.state = st;
  impl.state_bytes = bytes;
  impl.call_workspace_bytes = partial_bytes;
}

void plan_destroy(DecodePlan::Impl& impl) {
  auto* st = static_cast<PlanState*>(impl.state);
  if (!st) return;
  cudaFree(st->buf.meta);  // the base of the one allocation; no throw from a destructor
  delete st;
  impl.state = nullptr;
}

void plan_update(DecodePlan::Impl& impl, const TensorView& cache_seqlens, Stream stream) {
  auto* st = static_cast<PlanState*>(impl.state);
  if (impl.config.sparse)
    throw Error("plan",
                "sparse decode plans are not implemented on CUDA yet (sparse decode issue)");
  // This step's batch (<= config.batch, checked by the API layer).
  const int batch = static_cast<int>(cache_seqlens.shape[0]);
  set_batch(*st, impl.config, batch);
  if (batch == 0 || st->buf.inline_plan) return;  // inline: the attention kernel plans
  launch_pdl(false, planner_kernel, dim3(1), dim3(kPlannerThreads), 0,
             static_cast<cudaStream_t>(stream), static_cast<const int32_t*>(cache_seqlens.data),
             cache_seqlens.strides[0], batch, impl.config.batch_invariant ? 1 : 0,
             st->buf.fixed_cost, st->buf, st->scratch);
#if defined(OPENMLA_DECODE_PROFILE)
  planner_prof_print<<<1, 1, 0, static_cast<cudaStream_t>(stream)>>>();
#endif
}

void launch_combine(const DenseDecodeKernelParams& p, cudaStream_t stream) {
  if (p.plan.num_parts <= 1) return;  // nothing is ever split
  static_assert(kInlineSmallBatch <= kCombineWideMaxReqs,
                "inline plans without a cut list are merged by the wide kernel");
  if (p.plan.max_split_reqs <= kCombineWideMaxReqs) {
    dim3 grid(p.plan.max_split_reqs, std::min(p.rows, 65535), p.h_kv);
    const int64_t ctas = int64_t(grid.x) * grid.y * grid.z;
    if (ctas <= int64_t(p.plan.num_parts) * p.m_blocks * p.h_kv)  // <= the attention grid
      launch_pdl(true, combine_wide_kernel<4>, grid, dim3(4 * 128), 0, stream, p);
    else
      launch_pdl(true, combine_wide_kernel<1>, grid, dim3(128), 0, stream, p);
    return;
  }
  const int64_t items_max = int64_t(p.plan.max_split_reqs) * p.h_kv * p.rows;
  if (items_max < kRowCombineMinItems) {
    dim3 grid(std::min(p.plan.max_split_reqs, kCombineMaxX),
              (p.rows + kCombineRows - 1) / kCombineRows, p.h_kv);
    launch_pdl(true, combine_kernel, grid, dim3(kCombineThreads), 0, stream, p);
    return;
  }
  // One wave: the attention grid has about one CTA per SM.
  const int64_t sms = int64_t(p.plan.num_parts) * p.m_blocks * p.h_kv;
  const int64_t ctas = std::min<int64_t>(kRowCombineCtasPerSm * sms,
                                         (items_max + kRowCombineThreads / 32 - 1) /
                                             (kRowCombineThreads / 32));
  launch_pdl(true, row_combine_kernel, dim3(static_cast<unsigned>(std::max<int64_t>(ctas, 1))),
             dim3(kRowCombineThreads), 0, stream, p);
}

}  // namespace openmla::sm90
