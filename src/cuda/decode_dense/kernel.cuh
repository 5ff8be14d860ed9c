// Dense MLA decode kernel for sm_90a: one CTA per (64 query rows, KV head, schedule part).
//
// 256 threads = two warpgroups and no producer warps: a 384-thread CTA caps ptxas at 168
// registers per thread, too few for O (128) plus S of the next block in flight (32). Each
// warpgroup issues the TMA refills of the chunks it has just finished with.
//
// "Seesaw" schedule over pairs of 64-token KV blocks (b0 in stage 0, b1 in stage 1).
// O = [O_L | O_R] (64 x 256 fp32 each) lives in warpgroup 0 / 1. Warpgroup 0 owns b0,
// warpgroup 1 owns b1; each computes S = Q K^T of its own block over all 64 tokens (wgmma
// m64n64k16, operands in shared memory, but for d_qk = 576 Q's RoPE chunk comes from registers,
// as FlashMLA's kernel does). The running row max m is handed along a chain
// m -> m0 (wg 0, after b0) -> m1 (wg 1, after b1) -> next pair, so one warpgroup's softmax runs
// while the other's matrix products do:
//   wg 0: m0 = max(m, rowmax S0); P0 = exp(S0 - m0); O_L = O_L * e^(m - m0) + P0 V0_L (P0 from
//         registers); wait m1; store P0 * e^(m0 - m1) for wg 1; wait P1;
//         O_L = O_L * e^(m0 - m1) + P1 V1_L, with S0 of the next pair issued behind it.
//   wg 1: S1; wait m0; m1 = max(m0, rowmax S1); P1 = exp(S1 - m1);
//         O_R = O_R * e^(m - m1) + P1 V1_R (registers; P1 is stored for wg 0 meanwhile)
//         + P0' V0_R (P0' = P0 scaled to m1).
// The running max moves lazily (lazy_max: only when a block's row max exceeds it by more than
// 2^8 in the exp2 domain), so most blocks skip the O rescales: -5..-7 % time at h_q=128.
// V is the first 512 dims of the same K tile, read MN-major. Each stage's 9 (or 8) 64-dim chunks
// have their own full barrier, so S starts on the first chunk that lands; a stage is released in
// two groups (each warpgroup's V half, the RoPE chunk with one of them), and each group is
// refilled with the stage's next block by the warpgroup that used it last, as soon as its wgmma
// have completed. For d_qk = 576, P0 is written into stage 0's RoPE chunk once S0 is done with it
// and P1 has a tile of its own (the whole budget is 227 KB; see Smem). Measured history, the
// rejected variants and the profile of this schedule: docs/benchmarks.md.
#pragma once

#include <cuda.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "cuda/common/ptx.cuh"
#include "cuda/common/wgmma_gen.cuh"
#include "cuda/decode_dense/rows.cuh"
#include "cuda/params.h"
#include "cuda/schedule/inline_plan.cuh"

namespace openmla::sm90::dense_decode_detail {

// Phase timers for development builds (-DOPENMLA_DECODE_PROFILE): thread 0 of each consumer
// warpgroup of CTA (0, 0, 0) sums clock64 cycles per phase and prints them once per launch.
#if defined(OPENMLA_DECODE_PROFILE)
#define OPENMLA_PROF_INIT                    \
  long long prof_acc[8] = {};                \
  long long prof_pairs = 0;                  \
  long long prof_t = clock64();              \
  const long long prof_t0 = prof_t;          \
  __shared__ unsigned long long prof_ns[kProfStamps]; \
  if (tid == 0)                                       \
    for (int k_ = 0; k_ < kProfStamps; ++k_) prof_ns[k_] = k_ == 0 ? global_ns() : 0
#define OPENMLA_PROF_MARK(k)                 \
  do {                                       \
    const long long t_ = clock64();          \
    prof_acc[k] += t_ - prof_t;              \
    prof_t = t_;                             \
  } while (0)
#define OPENMLA_PROF_PAIR() ++prof_pairs
// globaltimer stamps of thread 0 (first segment / last segment): 1 segment start, 2 Q copies
// issued, 3 first K loads issued, 4 Q tile in, 5 first S done, 6 last pair done, 7 row sums
// exchanged, 8 end; 9 / 10 first segment's stores begin / end.
constexpr int kProfStamps = 11;
constexpr int kProfEnd = 8;
#define OPENMLA_PROF_STAMP_FIRST(i) \
  if (tid == 0 && prof_ns[i] == 0) prof_ns[i] = global_ns()
#define OPENMLA_PROF_STAMP(i) \
  if (tid == 0) prof_ns[i] = global_ns()
// (printf inside the kernel would make ptxas serialize its wgmma: the counters go to a global
// array, printed by dense_decode_prof_print launched right after the kernel.)
static __device__ long long g_decode_prof[2][10];
// Start and end (globaltimer, ns) of every CTA of the launch, for the spread of finish times.
// (These and the print kernel are static: each translation unit that instantiates kernels has
// its own, read by the print launched from the same unit.)
static __device__ unsigned long long g_decode_cta_ns[4096][kProfStamps];
static __device__ int g_decode_ctas;
__device__ __forceinline__ unsigned long long global_ns() {
  unsigned long long t;
  asm volatile("mov.u64 %0, %globaltimer;" : "=l"(t));
  return t;
}
#define OPENMLA_PROF_PRINT()                                                            \
  if (tid == 0) {                                                                       \
    const int slot_ = atomicAdd(&g_decode_ctas, 1);                                     \
    if (slot_ < 4096) {                                                                 \
      prof_ns[kProfEnd] = global_ns();                                                  \
      for (int k_ = 0; k_ < kProfStamps; ++k_) g_decode_cta_ns[slot_][k_] = prof_ns[k_]; \
    }                                                                                   \
  }                                                                                     \
  if (wl == 0 && blockIdx.x == 0 && blockIdx.y == 0 && blockIdx.z == 0) {               \
    for (int k_ = 0; k_ < 8; ++k_) g_decode_prof[wg][k_] = prof_acc[k_];               \
    g_decode_prof[wg][8] = prof_pairs;                                                  \
    g_decode_prof[wg][9] = clock64() - prof_t0;                                         \
  }
static __global__ void dense_decode_prof_print() {
  const int n = min(g_decode_ctas, 4096);
  unsigned long long t0 = ~0ull, s_max = 0, e_min = ~0ull, e_max = 0;
  double e_sum = 0;
  for (int i = 0; i < n; ++i) t0 = min(t0, g_decode_cta_ns[i][0]);
  for (int i = 0; i < n; ++i) {
    s_max = max(s_max, g_decode_cta_ns[i][0] - t0);
    const unsigned long long e = g_decode_cta_ns[i][kProfEnd] - t0;
    e_min = min(e_min, e);
    e_max = max(e_max, e);
    e_sum += double(e);
  }
  if (n > 0)
    printf("decode-prof ctas %d: last start %.1f us, end min %.1f mean %.1f max %.1f us\n", n,
           s_max * 1e-3, e_min * 1e-3, e_sum / n * 1e-3, e_max * 1e-3);
  // Phases of CTAs that had work (every stamp set), see kProfStamps; and the first segment's
  // stores in CTAs with more than one segment (they end before the last pair).
  double ph_sum[kProfEnd] = {}, ph_max[kProfEnd] = {}, st_sum = 0, st_max = 0;
  int nw = 0, ns = 0;
  for (int i = 0; i < n; ++i) {
    const unsigned long long* t = g_decode_cta_ns[i];
    bool all = true;
    for (int k = 1; k < kProfStamps; ++k) all = all && t[k] != 0;
    if (!all) continue;
    ++nw;
    for (int k = 0; k < kProfEnd; ++k) {
      const double d = (double(t[k + 1]) - double(t[k])) * 1e-3;
      ph_sum[k] += d;
      ph_max[k] = fmax(ph_max[k], d);
    }
    if (t[10] < t[6]) {
      ++ns;
      const double d = (double(t[10]) - double(t[9])) * 1e-3;
      st_sum += d;
      st_max = fmax(st_max, d);
    }
  }
  if (nw > 0) {
    printf("decode-prof phases (%d CTAs) mean/max us:", nw);
    for (int k = 0; k < kProfEnd; ++k) printf(" %.2f/%.2f", ph_sum[k] / nw, ph_max[k]);
    printf(" first-stores (%d) %.2f/%.2f\n", ns, ns ? st_sum / ns : 0.0, st_max);
  }
  g_decode_ctas = 0;
  for (int w = 0; w < 2; ++w) {
    const long long* a = g_decode_prof[w];
    printf("decode-prof wg %d pairs %lld cycles %lld | %lld %lld(+%lld) %lld %lld %lld"
           " | s-waits %lld\n",
           w, a[8], a[9], a[0], a[6], a[1], a[2], a[3], a[4], a[5]);
  }
}
#define OPENMLA_PROF_WAIT_BEGIN const long long tw_ = clock64()
#define OPENMLA_PROF_WAIT_END prof_acc[5] += clock64() - tw_
#else
#define OPENMLA_PROF_INIT
#define OPENMLA_PROF_MARK(k)
#define OPENMLA_PROF_PAIR()
#define OPENMLA_PROF_STAMP_FIRST(i)
#define OPENMLA_PROF_STAMP(i)
#define OPENMLA_PROF_PRINT()
#define OPENMLA_PROF_WAIT_BEGIN
#define OPENMLA_PROF_WAIT_END
#endif

inline constexpr int kThreads = 256;  // 2 warpgroups
inline constexpr int kChunkBytes = 64 * 128;  // 64 rows x 64 elements x 2 bytes, one swizzle tile
// Named barriers (id 0 is __syncthreads, used where the whole CTA meets).
enum : int {
  kBarM0 = 2,         // wg 0 -> wg 1: m0 published
  kBarP0 = 3,         // wg 0 -> wg 1: scaled P0 stored
  kBarM1 = 4,         // wg 1 -> wg 0: m1 published
  kBarP1 = 7,         // wg 1 -> wg 0: P1 stored
  kBarWg0 = 5,        // the 128 threads of one warpgroup (zeroed V rows before its own wgmma)
  kBarWg1 = 6,
};

// P tiles (the A operand of the other warpgroup's P V). d_qk = 576: P0 is written into stage 0's
// RoPE chunk once S0 is done with it, and P1 has a tile of its own (the budget has room for one),
// so stage 1's RoPE chunk is free right after S1 and is refilled together with warpgroup 1's V
// half (after P1 V1_R) instead of with warpgroup 0's (after P1 V1_L, the stage's last reader).
// d_qk = 512: two tiles of their own.
template <int kChunks>
struct Smem {
  static constexpr bool kRope = kChunks == 9;
  static constexpr int kQ = 0;
  static constexpr int kK = kChunks * kChunkBytes;
  static constexpr int kStage = kChunks * kChunkBytes;
  static constexpr int kPSep = kK + 2 * kStage;  // P tiles of their own
  static constexpr int kPSepTiles = kRope ? 1 : 2;
  static constexpr int kRed = kPSep + kPSepTiles * kChunkBytes;
  static constexpr int kM0 = kRed;           // float [2][64] (by pair parity)
  static constexpr int kM1 = kRed + 512;     // float [2][64]
  static constexpr int kSum = kRed + 1024;   // float [2][64]
  static constexpr int kBars = kRed + 1536;  // uint64 full[2][9], then the Q tile's barrier
  static constexpr int kTab = kBars + 19 * 8;  // int [16]: an inline plan's table
  static constexpr int kTicket = kTab + 64;  // int [3]: pair merge ticket, pending, sync index
  static constexpr int kBytes = kTicket + 16;
  static constexpr int kAlloc = kBytes + 1024;  // + alignment slack for the 1024-B atoms
  static_assert(kAlloc <= 227 * 1024, "shared memory budget");
  static_assert(64 * (2048 + 16) <= kRed - kK, "a pair merge's partial tile (pair_merge)");
  __host__ __device__ static constexpr int p_tile(int stage) {
    return !kRope ? kPSep + stage * kChunkBytes : stage == 0 ? kK + 8 * kChunkBytes : kPSep;
  }
  // Stage 1's chunks in load order: warpgroup 1's refill group first (V_R, + RoPE), then
  // warpgroup 0's (V_L). kG1: the first group's size.
  static constexpr int kG1 = kRope ? 5 : 4;
};

// Order in which stage `stage`'s chunks are loaded and consumed by S: the group refilled first
// (stage 0: V_L, by warpgroup 0 after P0 V0_L; stage 1: V_R + RoPE, by warpgroup 1 after P1 V1_R),
// then the other.
template <int kChunks>
__device__ __forceinline__ int chunk_at(int stage, int i) {
  if (stage == 0) return i;
  if (i < 4) return i + 4;
  if (Smem<kChunks>::kRope) return i == 4 ? 8 : i - 5;
  return i - 4;
}

struct Segment {
  int req, blk_lo, blk_hi, split, len;
  bool last;  // the part's last segment
};

// Inline plans (PlanBuffers::inline_plan): warp 0 of each CTA computes its part's schedule at the
// kernel's start into a 16-int table in shared memory, lane k entry k: entries 0-5 the
// planner's meta for the part (PlanMeta order), then split entries (pieces << 16 | first
// accumulator slot, both < 2^16). Two forms (kWide, a template parameter of the kernels):
// - batches of at most 8 (inline_plan_table, one lane per request): entry kTableSplit + i is
//   request i's;
// - up to kInlinePlanMaxBatch (warp_plan_table, up to 16 requests per lane; the narrow kernel and
//   the main kernel's pair-merge build): entries kTableFirst / kTableLast are the part's first
//   and last request's (any request between them has one piece), and the grid's first CTA also
//   writes the combine's cut list.
// The main kernel's other build keeps the first form: with the second, ptxas rescheduled its
// pair loop, and s_q = 2 long contexts ran 1-3.5 % slower (unrolled form), b <= 8 1-4 % slower
// (rolled form; session 17). The two forms' table switches look alike on purpose: one helper for
// both left this build's SASS alone but rescheduled the wide builds' pair loops.
constexpr int kTableSplit = 8;

__device__ __forceinline__ int inline_plan_table(const DenseDecodeKernelParams& p, int part) {
  const int lane = threadIdx.x % 32, b = p.batch, fc = p.plan.fixed_cost;
  const LanePlan r = lane_plan(p);
  // First request whose last part is >= part, last whose first part is <= part (both
  // non-decreasing over the requests).
  const unsigned ge = __ballot_sync(0xffffffff, r.own && r.l >= part);
  const unsigned le = __ballot_sync(0xffffffff, r.own && r.f <= part);
  const int first = ge ? __ffs(ge) - 1 : b;
  const int last = max(first, le ? 32 - __clz(le) : 0) - 1;
  const int src = min(first, b - 1), dst = max(last, 0);
  const int first_len = __shfl_sync(0xffffffff, r.len, src);
  const int first_prefix = __shfl_sync(0xffffffff, r.prefix, src);
  const int first_fp = __shfl_sync(0xffffffff, r.f, src);
  const int last_prefix = __shfl_sync(0xffffffff, r.prefix, dst);
  const int last_cost = __shfl_sync(0xffffffff, r.cost, dst);
  const int last_lp = __shfl_sync(0xffffffff, r.l, dst);
  const int info = __shfl_sync(0xffffffff, (r.pieces << 16) | r.acc0, lane & 7);
  const bool empty = first > last;
  const int per = r.per;
  switch (lane) {
    case kBeginReq: return first;
    case kLastReq: return last;
    case kBeginLen: return empty ? 0 : first_len;
    case kBeginBlk: return empty ? 0 : part_begin_blk(part, first_fp, per, first_prefix, fc);
    case kBeginSplit: return empty ? 0 : part - first_fp;
    case kLastBlkEnd:  // (where the request ends: its end, like part_end_blk's kToEnd)
      return empty ? 0
             : part == last_lp ? last_cost - fc
                               : (part + 1) * per - last_prefix - fc;
    default: return lane >= kTableSplit && lane < kTableSplit + 8 ? info : 0;
  }
}

// Warp 0 of an inline-plan CTA fills its table (the caller then syncs the CTA).
template <bool kWide>
__device__ __forceinline__ void fill_plan_table(const DenseDecodeKernelParams& p, int part,
                                                int* s_tab) {
  if (p.plan.inline_plan && threadIdx.x < 32) {
    int t;
    if constexpr (kWide)
      t = warp_plan_table(p, part, (blockIdx.x | blockIdx.y | blockIdx.z) == 0);
    else
      t = inline_plan_table(p, part);
    if (threadIdx.x < 16) s_tab[threadIdx.x] = t;
  }
}

// The split entries of request `req` of this part for the epilogue: pieces and first
// accumulator slot.
template <bool kWide>
__device__ __forceinline__ int plan_split_info(const int* s_tab, int req) {
  if constexpr (kWide)
    return req == s_tab[kBeginReq] ? s_tab[kTableFirst]
           : req == s_tab[kLastReq] ? s_tab[kTableLast]
                                    : 1 << 16;
  else
    return s_tab[kTableSplit + req];
}
template <bool kWide>
__device__ __forceinline__ int plan_num_splits(const DenseDecodeKernelParams& p, const int* s_tab,
                                               int req) {
  return p.plan.inline_plan ? plan_split_info<kWide>(s_tab, req) >> 16 : p.plan.num_splits[req];
}
template <bool kWide>
__device__ __forceinline__ int plan_accum_offset(const DenseDecodeKernelParams& p,
                                                 const int* s_tab, int req) {
  return p.plan.inline_plan ? plan_split_info<kWide>(s_tab, req) & 0xffff
                            : p.plan.accum_offset[req];
}

// Walks the segments (one per request touched) of schedule part `part` (its meta: the planner's
// in global memory, or an inline plan's table in shared memory).
template <class F>
__device__ __forceinline__ void for_each_segment(const DenseDecodeKernelParams& p, int part,
                                                 const int* s_tab, F&& f) {
  const int32_t* m = p.plan.inline_plan ? s_tab : p.plan.meta + part * kPlanMetaInts;
  const int begin_req = m[kBeginReq], last_req = m[kLastReq];
  for (int req = begin_req; req <= last_req && req < p.batch; ++req) {
    const int len = req == begin_req ? m[kBeginLen] : max(0, p.seqlens[req * p.seqlens_stride]);
    const int nblk = (len + 63) / 64;
    Segment s;
    s.req = req;
    s.len = len;
    s.blk_lo = req == begin_req ? m[kBeginBlk] : 0;
    s.blk_hi = req == last_req ? min(m[kLastBlkEnd], nblk) : nblk;
    s.split = req == begin_req ? m[kBeginSplit] : 0;
    s.last = req == last_req || req + 1 >= p.batch;
    f(s);
  }
}

// The segment's fields broadcast from lane 0: values loaded from memory are not known to be
// warp-uniform, and ptxas serializes wgmma under branches it cannot prove uniform.
__device__ __forceinline__ Segment uniform_segment(const Segment& seg) {
  Segment s;
  s.req = __shfl_sync(0xffffffff, seg.req, 0);
  s.len = __shfl_sync(0xffffffff, seg.len, 0);
  s.blk_lo = __shfl_sync(0xffffffff, seg.blk_lo, 0);
  s.blk_hi = __shfl_sync(0xffffffff, seg.blk_hi, 0);
  s.split = __shfl_sync(0xffffffff, seg.split, 0);
  s.last = __shfl_sync(0xffffffff, seg.last ? 1 : 0, 0) != 0;
  return s;
}

// Piece index (o_accum's outer dimension: slots x KV heads) of KV head `hk` for this segment's
// piece of a cut request whose first accumulator slot is `acc0` (p.plan.accum_offset[s.req]),
// and the accumulator row of its query row `row`.
__device__ __forceinline__ int accum_piece(const DenseDecodeKernelParams& p, int acc0,
                                           const Segment& s, int hk) {
  return (acc0 + s.split) * p.h_kv + hk;
}
__device__ __forceinline__ int64_t accum_slot(const DenseDecodeKernelParams& p, int acc0,
                                              const Segment& s, int hk, int row) {
  return static_cast<int64_t>(accum_piece(p, acc0, s, hk)) * p.rows + row;
}

// Issues the copy-engine loads of a Q tile (p.q_tma): query rows row0 .. of KV head hk, one box
// of the q map per 64-dim chunk (chunk c at dst + c * chunk_bytes), completing on `bar`; only
// where `pred` holds (one thread), predicated (no branch next to the wgmma).
template <int kChunks>
__device__ __forceinline__ void issue_q_tile(const DenseDecodeKernelParams& p,
                                             const CUtensorMap* qmap, uint8_t* dst,
                                             int chunk_bytes, uint64_t* bar, int req, int hk,
                                             int row0, uint64_t policy, bool pred) {
  const QueryRow q0 = query_row(p, hk, row0);  // the box's first head and position
  mbar_arrive_expect_tx_pred(bar, kChunks * chunk_bytes, pred);
#pragma unroll
  for (int c = 0; c < kChunks; ++c)
    tma_load_4d_pred(dst + c * chunk_bytes, qmap, bar, c * 64, q0.h, q0.s, req, policy, pred);
}

// Copies query rows [row0, row0 + tile_rows) of KV head hk into a Q tile of 128B-swizzled
// 64-element chunks (chunk c of tile row r at c * chunk_bytes + r * 128), zero-filling rows past
// p.rows; thread t of `nthreads` issues every nthreads-th 16-byte copy. cp.async: all of a
// thread's copies are in flight at once (a load-then-store loop waited one global latency per
// row group: ncu showed it among the top stalls). The caller waits for them and synchronizes.
template <class Elem, int kChunks>
__device__ __forceinline__ void copy_q_tile(const DenseDecodeKernelParams& p, int req, int hk,
                                            int row0, int tile_rows, uint8_t* dst,
                                            int chunk_bytes, int t, int nthreads) {
  constexpr int kUnitsPerRow = kChunks * 8;  // 16-byte units
#pragma unroll 1
  for (int u = t; u < tile_rows * kUnitsPerRow; u += nthreads) {
    const int r = u / kUnitsPerRow, cu = u % kUnitsPerRow;
    const int rg = row0 + r;
    const bool valid = rg < p.rows;
    const Elem* src = q_row<Elem>(p, req, valid ? query_row(p, hk, rg) : QueryRow{0, 0}) + cu * 8;
    const int chunk = cu / 8, unit = cu % 8;
    cp_async_16(dst + chunk * chunk_bytes + r * 128 + ((unit ^ (r & 7)) << 4), src,
                valid ? 16 : 0);
  }
}

template <class T>
__device__ __forceinline__ uint32_t pack2(float a, float b);
template <>
__device__ __forceinline__ uint32_t pack2<__nv_bfloat16>(float a, float b) {
  __nv_bfloat162 v = __floats2bfloat162_rn(a, b);
  return *reinterpret_cast<uint32_t*>(&v);
}
template <>
__device__ __forceinline__ uint32_t pack2<__half>(float a, float b) {
  __half2 v = __floats2half2_rn(a, b);
  return *reinterpret_cast<uint32_t*>(&v);
}

template <bool kFp16>
__device__ __forceinline__ void mma_s(float (&d)[32], uint64_t a, uint64_t b, int scale_d) {
  if constexpr (kFp16)
    wgmma_m64n64k16_f16_ss(d, a, b, scale_d);
  else
    wgmma_m64n64k16_bf16_ss(d, a, b, scale_d);
}
// S of the RoPE chunk with Q's chunk from registers (a: the k16 step's A fragment).
template <bool kFp16>
__device__ __forceinline__ void mma_s_rs(float (&d)[32], const uint32_t (&a)[4], uint64_t b,
                                         int scale_d) {
  if constexpr (kFp16)
    wgmma_m64n64k16_f16_rs(d, a, b, scale_d);
  else
    wgmma_m64n64k16_bf16_rs(d, a, b, scale_d);
}
template <bool kFp16>
__device__ __forceinline__ void mma_pv(float (&d)[128], uint64_t a, uint64_t b) {
  if constexpr (kFp16)
    wgmma_m64n256k16_f16_ss_tb(d, a, b, 1);
  else
    wgmma_m64n256k16_bf16_ss_tb(d, a, b, 1);
}
template <bool kFp16>
__device__ __forceinline__ void mma_pv_rs(float (&d)[128], const uint32_t (&a)[4], uint64_t b) {
  if constexpr (kFp16)
    wgmma_m64n256k16_f16_rs_tb(d, a, b, 1);
  else
    wgmma_m64n256k16_bf16_rs_tb(d, a, b, 1);
}

// Per-thread view of the accumulator rows of a 64-row wgmma tile: rows r0 and r0 + 8 (i = 0, 1);
// element e of n8-group j holds column 8 j + cq + (e & 1) of row i = e / 2.
struct Rows {
  int r0, cq;
};

// Masks S (tokens at or past each row's limit become -inf) and returns the row maxima, reduced
// over the 4 threads that share a row.
__device__ __forceinline__ void mask_rowmax(float (&sc)[32], const Rows& rw, int tok0,
                                            const int (&limit)[2], float (&mx)[2]) {
  mx[0] = mx[1] = -INFINITY;
  // Only a block that reaches past some row's limit (the last of a request, causal rows) needs
  // the mask; the others take the row maxima alone (a warp-uniform branch).
  if (!__any_sync(0xffffffff, tok0 + 64 > min(limit[0], limit[1]))) {
#pragma unroll
    for (int j = 0; j < 8; ++j) {
#pragma unroll
      for (int e = 0; e < 4; ++e) mx[e / 2] = fmaxf(mx[e / 2], sc[4 * j + e]);
    }
  } else {
#pragma unroll
    for (int j = 0; j < 8; ++j) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int i = e / 2;
        const int tok = tok0 + 8 * j + rw.cq + (e & 1);
        const float v = tok < limit[i] ? sc[4 * j + e] : -INFINITY;
        sc[4 * j + e] = v;
        mx[i] = fmaxf(mx[i], v);
      }
    }
  }
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    mx[i] = fmaxf(mx[i], __shfl_xor_sync(0xffffffff, mx[i], 1));
    mx[i] = fmaxf(mx[i], __shfl_xor_sync(0xffffffff, mx[i], 2));
  }
}

// 2^x with the hardware approximation (flush-to-zero: the results feed bf16/fp16 P and fp32 sums).
__device__ __forceinline__ float fast_exp2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}

// exp(a - b) in the log2 domain for running maxima that may still be -inf (then 1: nothing to
// rescale yet).
__device__ __forceinline__ float rescale(float m_old, float m_new, float sl2) {
  return m_new == -INFINITY ? 1.0f : fast_exp2((m_old - m_new) * sl2);
}

// The running max only moves when a block's row max exceeds it by more than 2^kLazyLog2 in the
// exp2 domain: below that, P = exp2((S - m) sl2) <= 2^8 stays well inside bf16/fp16 and the fp32
// sums, and the O rescale (128 multiplies per thread) is skipped (scale_o_if).
inline constexpr float kLazyLog2 = 8.0f;
__device__ __forceinline__ float lazy_max(float m_old, float mx, float sl2) {
  return (m_old != -INFINITY && (mx - m_old) * sl2 <= kLazyLog2) ? m_old : fmaxf(m_old, mx);
}

// P = exp2(S * sl2 - m * sl2) in place; returns the row sums (full rows: reduced over 4 threads
// only at the end, in the epilogue).
__device__ __forceinline__ void exponentiate(float (&sc)[32], const float (&m)[2], float sl2,
                                             float (&rs)[2]) {
  float base[2];
#pragma unroll
  for (int i = 0; i < 2; ++i) base[i] = m[i] == -INFINITY ? 0.0f : m[i] * sl2;
  rs[0] = rs[1] = 0.0f;
#pragma unroll
  for (int k = 0; k < 32; ++k) {
    const int i = (k % 4) / 2;
    sc[k] = fast_exp2(fmaf(sc[k], sl2, -base[i]));
    rs[i] += sc[k];
  }
}

// The S accumulator tile (64 x 64) re-packed as the A operand of four k16 steps of P V.
template <class Elem>
__device__ __forceinline__ void pack_a(const float (&sc)[32], uint32_t (&pa)[16]) {
#pragma unroll
  for (int k = 0; k < 16; ++k) pa[k] = pack2<Elem>(sc[2 * k], sc[2 * k + 1]);
}

// This lane's stmatrix / ldmatrix address for q = 0 in a warpgroup's P-layout tile (see store_pa).
__device__ __forceinline__ uint32_t pa_lane_base(const uint8_t* tile) {
  const int lane = threadIdx.x % 32, warp = (threadIdx.x / 32) % 4;
  const uint32_t row = 16 * warp + 8 * ((lane / 8) % 2) + lane % 8;
  return smem_addr(tile) + row * 128 + ((((lane / 16) ^ lane) & 7) << 4);
}

// Writes the packed P tile (pack_a's registers: element pair 2 k of pa[k] holds row r0 + 8 (k % 2),
// columns 8 (k / 2) + cq, +1) as a 64 x 64 K-major, 128B-swizzled tile: four stmatrix.x4 of
// matrices (n8 group j, row half i) = pa[2 j + i], j = 2q, 2q + 1; lane l addresses row l % 8 of
// matrix l / 8 = (j = 2q + l / 16, i = (l / 8) % 2). The tile is 1024-byte aligned, so the swizzled
// 16-byte unit j ^ (row & 7) is the lane's base XOR 32 q. (16 scalar stores and their address
// arithmetic before: -0.3 to -0.7 % at h_q=128.)
__device__ __forceinline__ void store_pa(uint8_t* tile, const uint32_t (&pa)[16]) {
  const uint32_t base = pa_lane_base(tile);
#pragma unroll
  for (int q = 0; q < 4; ++q)
    stmatrix_x4(base ^ (32u * q), pa[4 * q], pa[4 * q + 1], pa[4 * q + 2], pa[4 * q + 3]);
}

// The inverse of store_pa: a 64 x 64 K-major, 128B-swizzled tile (of the warpgroup's 64 rows) into
// the A-operand registers of four k16 steps (pack_a's layout).
__device__ __forceinline__ void load_pa(const uint8_t* tile, uint32_t (&pa)[16]) {
  const uint32_t base = pa_lane_base(tile);
#pragma unroll
  for (int q = 0; q < 4; ++q)
    ldmatrix_x4(base ^ (32u * q), pa[4 * q], pa[4 * q + 1], pa[4 * q + 2], pa[4 * q + 3]);
}

// Writes P * f (per row) as a 64 x 64 K-major, 128B-swizzled tile (the A operand of P V).
template <class Elem>
__device__ __forceinline__ void store_p(uint8_t* tile, const float (&sc)[32],
                                        const float (&f)[2]) {
  uint32_t pa[16];
#pragma unroll
  for (int k = 0; k < 16; ++k) pa[k] = pack2<Elem>(sc[2 * k] * f[k % 2], sc[2 * k + 1] * f[k % 2]);
  store_pa(tile, pa);
}

__device__ __forceinline__ void scale_o(float (&o)[128], const float (&f)[2]) {
#pragma unroll
  for (int j = 0; j < 32; ++j) {
    o[4 * j + 0] *= f[0];
    o[4 * j + 1] *= f[0];
    o[4 * j + 2] *= f[1];
    o[4 * j + 3] *= f[1];
  }
}

// Whether some row of the warp has a rescale factor other than 1 (a warp-uniform answer: with the
// lazy max, most blocks have none).
__device__ __forceinline__ bool any_rescale(const float (&f)[2]) {
  return __any_sync(0xffffffff, f[0] != 1.0f || f[1] != 1.0f);
}

// scale_o unless every factor of the warp is 1.
__device__ __forceinline__ void scale_o_if(float (&o)[128], const float (&f)[2]) {
  if (any_rescale(f)) scale_o(o, f);
}

// Tokens past the end of the cache in a block: V rows must be finite zeros (P is 0 there, but
// 0 * NaN garbage would poison O). Clears rows [valid, 64) of the stage's 8 V chunks.
__device__ __forceinline__ void zero_v_tail(uint8_t* stage_base, int valid, int wl) {
  const int n16 = (64 - valid) * 8 * 8;  // 16-byte units: rows x chunks x units per row
  for (int u = wl; u < n16; u += 128) {
    const int row = valid + u / 64, chunk = (u / 8) % 8, unit = u % 8;
    *reinterpret_cast<uint4*>(stage_base + chunk * kChunkBytes + row * 128 + (unit << 4)) =
        make_uint4(0, 0, 0, 0);
  }
  fence_proxy_async();
}

// ---- requests cut in two pieces, merged by the attention kernel (PlanBuffers::merge_pairs) ----
// Each piece's CTA takes a ticket (sync word 0) when its tile is final. The first stores its
// partial and lse as any piece does and then sets sync word 1 (release); the second waits for it
// (it is past that piece's compute, so it only waits for stores: no progress depends on CTAs
// that are not resident), loads the other partial through the copy engine, merges the two in
// piece order with the combine's weights and writes out/lse, and resets both words for the next
// launch. The merge is the same arithmetic whichever piece performs it (explicitly rounded
// products and sum), so the bits do not depend on which CTA finished second.

// Row pitch of the other piece's partial tile in shared memory (2 KB + 16 B: a warp's float2
// reads of 8 rows hit every bank twice). 64 rows: 129 KB, in the free K stages and P tiles.
constexpr int kMergePitch = 2048 + 16;

// The partial lse of a piece (natural log; -inf: nothing attended), as stored for the combine.
__device__ __forceinline__ float piece_lse(float m, float scale, float lt) {
  return lt == 0.0f ? -INFINITY : fmaf(m, scale, logf(lt));
}

// The sync words of a pair, from its index + 1 as kept in s_ticket[1] and [2] (0: none).
__device__ __forceinline__ int32_t* pair_sync_words(const DenseDecodeKernelParams& p, int tag) {
  return p.plan.merge_sync + 2 * (tag - 1);
}

// Thread 0 of the first piece, after a barrier that follows every thread's fenced stores; `bulk`:
// its tile went through the copy engine (wait for those writes to complete).
__device__ __forceinline__ void signal_pair_done(int32_t* sync, bool bulk) {
  if (bulk) {
    bulk_wait_all();
    fence_proxy_async_global();
  }
  __threadfence();
  atomicExch(sync + 1, 1);
}

// The second piece: merges the other piece's partial (slot acc0 + 1 - s.split) with its own tile
// (o, row sums s_sum, running max m) into out and lse. `tile`: the free K stages (and P tiles).
template <class Elem>
__device__ __forceinline__ void pair_merge(const DenseDecodeKernelParams& p, const Segment& s,
                                           const Rows& rw, const float (&m)[2],
                                           const float* s_sum, int acc0, int m_block, int hk,
                                           int wg, int tid, const float (&o)[128], uint8_t* tile,
                                           uint64_t* bar, uint32_t& bar_par, int32_t* sync) {
  const int lane = tid % 32;
  const int other = (acc0 + 1 - s.split) * p.h_kv + hk;  // its piece index (accum_piece)
  // Its 64 rows (fewer in the last m block) are contiguous in o_accum: warp 0 copies one row of
  // 2 KB per lane and bulk copy into rows of kMergePitch bytes (conflict-free float2 reads below).
  if (tid < 32) {
    while (ld_acquire_gpu(sync + 1) == 0) __nanosleep(64);
    fence_proxy_async_global();  // the copy engine reads after the acquire
    const int rows = min(64, p.rows - m_block * 64);
    if (lane == 0) mbar_arrive_expect_tx_pred(bar, rows * 2048, true);
    const float* src = p.plan.o_accum + (static_cast<int64_t>(other) * p.rows + m_block * 64) * 512;
#pragma unroll
    for (int h = 0; h < 2; ++h)
      if (lane + 32 * h < rows)
        bulk_load(tile + (lane + 32 * h) * kMergePitch, src + (lane + 32 * h) * 512, 2048, bar);
  }
  __syncthreads();  // every thread after warp 0's acquire
  float lo[2];
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    const int rg = m_block * 64 + rw.r0 + 8 * i;
    lo[i] = rg < p.rows ? __ldcg(p.plan.lse_accum + static_cast<int64_t>(other) * p.rows + rg)
                        : -INFINITY;
  }
  // Per row: this piece's normalization and both weights over the merged sum (the weights of
  // pieces 0 and 1 computed in that order; fadd commutes exactly, so either CTA gets the same
  // bits).
  float inv[2], c_own[2], c_other[2], lse[2];
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    const int r = rw.r0 + 8 * i;
    const float lt = s_sum[r] + s_sum[64 + r];
    inv[i] = lt == 0.0f ? 0.0f : 1.0f / lt;
    const float own = piece_lse(m[i], p.scale, lt);
    const bool first = s.split == 0;
    const float l0 = first ? own : lo[i], l1 = first ? lo[i] : own;
    const float mx = fmaxf(l0, l1);
    const bool none = mx == -INFINITY;
    const float w0 = none ? 0.0f : expf(l0 - mx), w1 = none ? 0.0f : expf(l1 - mx);
    const float sum = w0 + w1;
    const float inv_m = none ? 0.0f : 1.0f / sum;
    c_own[i] = __fmul_rn(first ? w0 : w1, inv_m);
    c_other[i] = __fmul_rn(first ? w1 : w0, inv_m);
    lse[i] = none ? INFINITY : mx + logf(sum);
  }
  mbar_wait(bar, bar_par);
  bar_par ^= 1;
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    const int r = rw.r0 + 8 * i, rg = m_block * 64 + r;
    if (rg >= p.rows) continue;
    const QueryRow qr = query_row(p, hk, rg);
    Elem* out = out_row<Elem>(p, s.req, qr) + wg * 256 + rw.cq;
    const float* row = reinterpret_cast<const float*>(tile + r * kMergePitch) + wg * 256 + rw.cq;
#pragma unroll
    for (int j = 0; j < 32; ++j) {
      const float2 x = *reinterpret_cast<const float2*>(row + 8 * j);
      const float a0 = o[4 * j + 2 * i] * inv[i], a1 = o[4 * j + 2 * i + 1] * inv[i];  // as stored
      const float v0 = __fadd_rn(__fmul_rn(c_own[i], a0), __fmul_rn(c_other[i], x.x));
      const float v1 = __fadd_rn(__fmul_rn(c_own[i], a1), __fmul_rn(c_other[i], x.y));
      *reinterpret_cast<uint32_t*>(out + 8 * j) = pack2<Elem>(v0, v1);
      if (j % 8 == 7) asm volatile("" ::: "memory");  // (few loads in flight: registers)
    }
    if (wg == 0 && lane % 4 == 0) *lse_at(p, s.req, qr) = lse[i];
  }
  if (tid == 0) {  // nothing else reads or writes them in this launch
    sync[0] = 0;
    sync[1] = 0;
  }
  __syncthreads();  // the stages are refilled by the next segment
}

// n / page_size for 0 <= n < 2^31 (FastDiv, params.h).
__device__ __forceinline__ int page_of(const DenseDecodeKernelParams& p, int n) {
  return static_cast<int>(fast_div_apply(p.page_div, static_cast<uint32_t>(n)));
}

// Boxes of block `blk` that hold tokens below `len` (boxes of p.box_tokens, a power of two).
__device__ __forceinline__ int block_boxes(const DenseDecodeKernelParams& p, int len, int blk) {
  return (min(64, len - blk * 64) + p.box_tokens - 1) >> p.box_shift;
}

// The box of a block that thread `wl` (0..127) of a warpgroup copies: box j goes to lane j / 4 of
// warp j % 4, so the boxes of small pages are spread over the four warps (a copy-engine request
// with per-thread coordinates is a ~16-instruction loop over the warp's active lanes: pages of 1
// issue 16 boxes per warp and chunk instead of 32 in two warps).
__device__ __forceinline__ int box_of(int wl) { return (wl % 32) * 4 + wl / 32; }

// The page holding box box_of(wl) of block `blk` of segment `s` (one box per run of
// gcd(page_size, 64) tokens of one page), or -1. Only block-table entries of tokens < len are
// read; an index past the table becomes -1, and a page out of range (or -1) an out-of-bounds TMA
// box, which the copy engine fills with zeros. The load is issued a pair before the refill that
// uses it. With kBox64 (page_size % 64 == 0: one box per block, every thread reads box 0's entry)
// ptxas moves the same-address load's value into a uniform register right after it, so the
// thread waits for the load there: the loads are placed where the warpgroups wait anyway
// (next_pages in the kernel; at the top of the pair they held 2 % of ncu's stall samples, ahead
// of warpgroup 0's softmax; loading in lane 0 only, which defers that move to the refill, was
// slower: docs/benchmarks.md, session 14).
template <bool kBox64>
__device__ __forceinline__ int box_page(const DenseDecodeKernelParams& p, const Segment& s,
                                        int blk, int wl) {
  const int box = p.box_tokens;
  const int tok0 = blk * 64;
  const int nbox = block_boxes(p, s.len, blk);
  const int j = kBox64 ? 0 : box_of(wl);
  const int page_idx = page_of(p, tok0 + j * box);
  const bool in_table = j < nbox && page_idx < p.max_pages;
  const int32_t* entry = p.block_table + static_cast<int64_t>(s.req) * p.bt_stride +
                         (in_table ? page_idx : 0);
  return ld_pred(entry, in_table, -1);
}

// Issues the TMA loads of chunks [i0, i1) (load order) of block `blk` of segment `s` into
// `stage`, each chunk completing on its own full barrier; `page` is box_page(blk) of this
// thread. Called by all 128 threads of a warpgroup without branching (predicated instructions
// only: a divergent path next to wgmma makes ptxas serialize them): thread 0 arms the barriers,
// thread wl issues box box_of(wl). The transaction count may briefly go negative when a box
// lands before its barrier is armed, which mbarriers allow.
//
// kBox64 (page_size % 64 == 0, so a block is one box of one page): the warpgroup's thread 0
// issues every chunk, and all operands are warp-uniform (the page broadcast from lane 0, box 0's
// coordinates), so ptxas moves them to uniform registers once instead of running a per-lane
// copy-issue loop (ELECT, R2UR of each coordinate, VOTEU) per chunk in each of the four warps.
template <int kChunks, bool kBox64>
__device__ __forceinline__ void load_chunks(const DenseDecodeKernelParams& p,
                                            const CUtensorMap* kmap, uint8_t* stage_base,
                                            uint64_t* stage_full, int stage, const Segment& s,
                                            int blk, int page, int i0, int i1, int hk, int wl,
                                            uint64_t policy) {
  if constexpr (kBox64) {
    const int tok0 = blk * 64;
    const int pg = __shfl_sync(0xffffffff, page, 0);
    const int in_page = tok0 - page_of(p, tok0) * p.page_size;
#pragma unroll
    for (int i = 0; i < kChunks; ++i) {
      if (i < i0 || i >= i1) continue;
      const int c = chunk_at<kChunks>(stage, i);
      mbar_arrive_expect_tx_pred(&stage_full[c], 64 * 128, wl == 0);
      tma_load_4d_pred(stage_base + c * kChunkBytes, kmap, &stage_full[c], c * 64, hk, in_page,
                       pg, policy, wl == 0);
    }
    return;
  }
  const int box = p.box_tokens;
  const int tok0 = blk * 64;
  const int nbox = block_boxes(p, s.len, blk);
  const int j = box_of(wl);
  const int t = tok0 + j * box;
  const bool issue = j < nbox;
  const int in_page = t - page_of(p, t) * p.page_size;
  const uint32_t bytes = static_cast<uint32_t>(nbox * box * 128);
#pragma unroll
  for (int i = 0; i < kChunks; ++i) {
    if (i < i0 || i >= i1) continue;
    const int c = chunk_at<kChunks>(stage, i);
    mbar_arrive_expect_tx_pred(&stage_full[c], bytes, wl == 0);
    tma_load_4d_pred(stage_base + c * kChunkBytes + j * box * 128, kmap, &stage_full[c], c * 64,
                     hk, in_page, page, policy, issue);
  }
}

template <int kChunks, bool kFp16, bool kMerge, bool kBox64>
__global__ void __launch_bounds__(kThreads, 1)
    dense_decode_kernel(const __grid_constant__ CUtensorMap kmap,
                        const __grid_constant__ CUtensorMap qmap,
                        const __grid_constant__ CUtensorMap omap,
                        const __grid_constant__ CUtensorMap amap, const DenseDecodeKernelParams p) {
  using Elem = std::conditional_t<kFp16, __half, __nv_bfloat16>;
  using L = Smem<kChunks>;
  extern __shared__ uint8_t smem_raw[];
  // Aligned by an offset from the __shared__ array itself (not through an integer round trip), so
  // the compiler keeps the shared address space: LDS/STS instead of generic LD/ST, which ncu
  // showed among the top stalls.
  uint8_t* smem = smem_raw + ((1024u - (smem_addr(smem_raw) & 1023u)) & 1023u);
  uint64_t* full = reinterpret_cast<uint64_t*>(smem + L::kBars);  // [2][9]
  uint64_t* q_full = full + 18;  // the Q tile (TMA path)
  float* s_m0 = reinterpret_cast<float*>(smem + L::kM0);
  float* s_m1 = reinterpret_cast<float*>(smem + L::kM1);
  float* s_sum = reinterpret_cast<float*>(smem + L::kSum);
  int* s_tab = reinterpret_cast<int*>(smem + L::kTab);
  int* s_ticket = reinterpret_cast<int*>(smem + L::kTicket);

  const int m_block = blockIdx.x, hk = blockIdx.y, part = blockIdx.z;
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  // Warpgroup index broadcast from lane 0: ptxas then knows the wgmma branches below are uniform.
  const int wg = __shfl_sync(0xffffffff, warp / 4, 0);
  const int wl = tid % 128;  // thread within warpgroup

  if (tid == 0) {
    tma_prefetch_desc(&kmap);
    if (p.q_tma) tma_prefetch_desc(&qmap);
    for (int i = 0; i < 19; ++i) mbar_init(&full[i], 1);
    mbar_fence_init();
    if (kMerge) s_ticket[1] = 0;
  }
  fill_plan_table<kMerge>(p, part, s_tab);
  __syncthreads();

  // Each block is read by the m_blocks CTAs of its request at about the same time, then never
  // again: let L2 evict it first; but evict-last with more than two m blocks in large batches
  // (PlanBuffers::k_evict_last; never with pair merges, so those builds compile it out).
  const uint64_t policy =
      !kMerge && p.plan.k_evict_last ? l2_policy_evict_last() : l2_policy_evict_first();
  const uint64_t policy_q = l2_policy_evict_last();  // Q tiles: read by every part of a request
  Rows rw;
  rw.r0 = (wl / 32) * 16 + lane / 4;
  rw.cq = 2 * (lane % 4);
  const uint32_t s_q_addr = smem_addr(smem + L::kQ);
  const uint32_t s_k_addr = smem_addr(smem + L::kK);
  const float sl2 = p.scale_log2;
  auto load = [&](int stage, const Segment& s, int blk, int page, int i0, int i1) {
    load_chunks<kChunks, kBox64>(p, &kmap, smem + L::kK + stage * L::kStage, full + stage * 9,
                                 stage, s, blk, page, i0, i1, hk, wl, policy);
  };
  // Descriptors are a base plus a constant byte offset, rebuilt where used (desc_at: one 32-bit
  // add on the low word) instead of ~50 loop-invariant 64-bit values kept live.
  const uint64_t q_base = make_desc_sw128(s_q_addr, 16, 1024);
  const uint64_t k_base = make_desc_sw128(s_k_addr, 16, 1024);
  const uint64_t v_base = make_desc_sw128(s_k_addr, kChunkBytes, 1024);
  const uint64_t p_base = make_desc_sw128(smem_addr(smem + L::p_tile(0)), 16, 1024);
  auto at = [](uint64_t base, uint32_t bytes) { return desc_at(base, bytes); };
  auto k_desc = [&](int stage, int c, int kk) {  // S operand B: K rows, K-major
    return at(k_base, stage * L::kStage + c * kChunkBytes + kk * 32);
  };
  auto v_desc = [&](int stage, int half, int kk) {  // P V operand B: V, MN-major, 256 columns
    return at(v_base, stage * L::kStage + half * 4 * kChunkBytes + kk * 16 * 128);
  };
  auto p_desc = [&](int stage, int kk) {
    return at(p_base, L::p_tile(stage) - L::p_tile(0) + kk * 32);
  };
  // O[:, 256 half .. +256] += P V of the block in `stage`, with its P from this warpgroup's
  // registers (pv_rs: pa is the block's P tile re-packed) or from the stage's P tile (pv_ss).
  auto pv_rs = [&](float(&o)[128], const uint32_t(&pa)[16], int stage, int half) {
#pragma unroll
    for (int kk = 0; kk < 4; ++kk) {
      const uint32_t(&a)[4] = *reinterpret_cast<const uint32_t(*)[4]>(&pa[4 * kk]);
      mma_pv_rs<kFp16>(o, a, v_desc(stage, half, kk));
    }
  };
  auto pv_ss = [&](float(&o)[128], int stage, int half) {
#pragma unroll
    for (int kk = 0; kk < 4; ++kk) mma_pv<kFp16>(o, p_desc(stage, kk), v_desc(stage, half, kk));
  };
  OPENMLA_PROF_INIT;
  // d_qk = 576: Q's RoPE chunk is held in registers for the whole segment and its S steps take A
  // from there (RS), reading only K from shared memory (an m64n64k16 with both operands there
  // needs the port's full 128 B per cycle). h_q = 128: -2 to -3 % rested, -1.5 % sustained at
  // s_q = 1. (d_qk = 512 would spill 4 bytes in two variants with its chunk 7 there.)
  constexpr bool kQReg = L::kRope;
  constexpr int kQLast = kChunks - 1;
  uint32_t q_last[16];  // that chunk as the A operand of four k16 steps (pack_a's layout)
  // S = Q K^T of the block in `stage`: issues the wgmma of chunks [i0, i1) (load order), each once
  // its TMA has landed; the caller fences, commits and waits.
  // Waits until chunks [i0, i1) (load order) of `stage` have landed (counted as S waits).
  auto wait_chunks = [&](int stage, uint32_t parity, int i0, int i1) {
    OPENMLA_PROF_WAIT_BEGIN;
#pragma unroll
    for (int i = 0; i < kChunks; ++i)
      if (i >= i0 && i < i1) mbar_wait(&full[stage * 9 + chunk_at<kChunks>(stage, i)], parity);
    OPENMLA_PROF_WAIT_END;
  };
  // `wait` false: no chunk waits (the caller has waited, or discards S: see the next S0 at
  // warpgroup 0's tail).
  auto issue_s = [&](float(&sc)[32], int stage, uint32_t parity, int i0, int i1,
                     bool wait = true) {
#pragma unroll
    for (int i = 0; i < kChunks; ++i) {
      if (i < i0 || i >= i1) continue;
      const int c = chunk_at<kChunks>(stage, i);
      if (wait) wait_chunks(stage, parity, i, i + 1);
#pragma unroll
      for (int kk = 0; kk < 4; ++kk) {
        if (kQReg && c == kQLast) {
          const uint32_t(&a)[4] = *reinterpret_cast<const uint32_t(*)[4]>(&q_last[4 * kk]);
          mma_s_rs<kFp16>(sc, a, k_desc(stage, c, kk), (i | kk) != 0);
        } else {
          mma_s<kFp16>(sc, at(q_base, c * kChunkBytes + kk * 32), k_desc(stage, c, kk),
                       (i | kk) != 0);
        }
      }
    }
  };
  auto compute_s = [&](float(&sc)[32], int stage, uint32_t parity) {
    wgmma_fence();
    issue_s(sc, stage, parity, 0, kChunks);
    wgmma_commit();
    wgmma_wait<0>();
    fence_regs(sc);
    if constexpr (kQReg) fence_regs(q_last);
  };

  int fills0 = 0, fills1 = 0;  // completed fills of each stage (full-barrier parities)
  uint32_t q_par = 0;          // the Q barrier's parity (TMA path)
  for_each_segment(p, part, s_tab, [&](const Segment& seg) {
    const Segment s = uniform_segment(seg);
    OPENMLA_PROF_STAMP_FIRST(1);
    // The block-table entry of this warpgroup's first block is requested before the Q copies are
    // issued and used after them. (With kBox64 ptxas waits for it before the Q copies, see
    // box_page; loading it after them would not bring the first S earlier, since the block's
    // copies need the page either way.)
    const bool has_first = s.blk_lo + wg < s.blk_hi;
    const int first_page = box_page<kBox64>(p, s, has_first ? s.blk_lo + wg : s.blk_lo, wl);
    // Pages of the blocks that a pair's refills load (blk + 2, blk + 3), each looked up during
    // the pair before (see next_pages).
    int page0n = box_page<kBox64>(p, s, s.blk_lo + 2 < s.blk_hi ? s.blk_lo + 2 : s.blk_lo, wl);
    int page1n = box_page<kBox64>(p, s, s.blk_lo + 3 < s.blk_hi ? s.blk_lo + 3 : s.blk_lo, wl);
    // ---- Q tile: rows (s, g) of this KV head, zero-padded to 64, into swizzled chunks ----
    {
      if (p.q_tma) {
        issue_q_tile<kChunks>(p, &qmap, smem + L::kQ, kChunkBytes, q_full, s.req, hk,
                              m_block * 64, policy_q, tid == 0);
      } else {
        copy_q_tile<Elem, kChunks>(p, s.req, hk, m_block * 64, 64, smem + L::kQ, kChunkBytes, tid,
                                   kThreads);
      }
      OPENMLA_PROF_STAMP_FIRST(2);
      // First pair of this segment: both stages are free (end-of-segment barrier below).
      if (has_first) {
        if (wg == 0)
          load(0, s, s.blk_lo, first_page, 0, kChunks);
        else
          load(1, s, s.blk_lo + 1, first_page, 0, kChunks);
      }
      OPENMLA_PROF_STAMP_FIRST(3);
      // A pair merge's first piece stored through the copy engine (s_ticket[1] = 1 + its sync
      // index, thread 0's): signalled once those stores are complete, behind these loads.
      if (kMerge && tid == 0 && s_ticket[1] != 0) {
        signal_pair_done(pair_sync_words(p, s_ticket[1]), true);
        s_ticket[1] = 0;
      }
      if (p.q_tma) {
        mbar_wait(q_full, q_par);
        q_par ^= 1;
      } else {
        cp_async_wait_all();
        fence_proxy_async();
      }
      __syncthreads();
      if constexpr (kQReg) load_pa(smem + L::kQ + kQLast * kChunkBytes, q_last);
      OPENMLA_PROF_STAMP_FIRST(4);
    }

    // Per-row token limits (exclusive) for rows r0 and r0 + 8.
    int limit[2];
#pragma unroll
    for (int i = 0; i < 2; ++i) limit[i] = row_limit(p, s.len, m_block * 64 + rw.r0 + 8 * i);

    float o[128];
#pragma unroll
    for (int i = 0; i < 128; ++i) o[i] = 0.0f;
    float m[2] = {-INFINITY, -INFINITY};  // running max (raw scores), the same in both warpgroups
    float l[2] = {0.0f, 0.0f};            // this warpgroup's share of the row sums, at max m
    float sc[32];  // S of this warpgroup's block (warpgroup 0: issued during the previous pair)

    for (int blk = s.blk_lo; blk < s.blk_hi; blk += 2) {
      // Row maxima are handed over in buffers that alternate by pair, so a value is never
      // rewritten while the previous pair's reader may still be reading it.
      float* m0_buf = s_m0 + 64 * (fills0 & 1);
      float* m1_buf = s_m1 + 64 * (fills0 & 1);
      const bool has1 = blk + 1 < s.blk_hi;
      const bool next0 = blk + 2 < s.blk_hi, next1 = blk + 3 < s.blk_hi;
      const uint32_t par0 = fills0 & 1, par1 = fills1 & 1;
      // The next pair's refill pages, looked up where each warpgroup waits anyway: warpgroup 0
      // behind the next S0, warpgroup 1 after its last refill (box_page: the thread waits for the
      // load right after it with kBox64; at the top of the pair that wait held up warpgroup 0's
      // softmax, and m0). The clamps to the segment here and at its start are not needed for
      // bounds (box_page reads only entries of tokens below the length), but without them ptxas
      // schedules the pair differently: 0.8-3.5 % slower at s_q = 2 (docs/benchmarks.md, session
      // 16), so they stay.
      auto next_pages = [&]() {
        page0n = box_page<kBox64>(p, s, blk + 4 < s.blk_hi ? blk + 4 : blk, wl);
        page1n = box_page<kBox64>(p, s, blk + 5 < s.blk_hi ? blk + 5 : blk, wl);
      };
      uint32_t pa[16];
      float mx[2], rs[2], m0[2], m1[2], f0[2], f1[2];
      if (wg == 0) {
        // ===== warpgroup 0: block b0 = blk (stage 0) =====
        const int tok0 = blk * 64;
        OPENMLA_PROF_MARK(4);
        OPENMLA_PROF_PAIR();
        // Later pairs' S0 was issued behind the previous pair's P V (end of this branch).
        if (blk == s.blk_lo) compute_s(sc, 0, par0);
        OPENMLA_PROF_STAMP_FIRST(5);
        OPENMLA_PROF_MARK(0);
        mask_rowmax(sc, rw, tok0, limit, mx);
#pragma unroll
        for (int i = 0; i < 2; ++i) m0[i] = lazy_max(m[i], mx[i], sl2);
        if (lane % 4 == 0) {
          m0_buf[rw.r0] = m0[0];
          m0_buf[rw.r0 + 8] = m0[1];
        }
        named_barrier_arrive(kBarM0, kThreads);
        exponentiate(sc, m0, sl2, rs);
#pragma unroll
        for (int i = 0; i < 2; ++i) {
          f0[i] = rescale(m[i], m0[i], sl2);
          l[i] = l[i] * f0[i] + rs[i];
        }
        pack_a<Elem>(sc, pa);
        // (pa may not be read once it is a wgmma operand: stored here, before the P V.)
        store_pa(smem + L::p_tile(0), pa);
        scale_o_if(o, f0);
        const int valid0 = min(64, s.len - tok0);
        if (valid0 < 64) {
          zero_v_tail(smem + L::kK, valid0, wl);
          named_barrier(kBarWg0, 128);
        }
        OPENMLA_PROF_MARK(6);
        // O_L += P0 V0_L, P0 from registers
        wgmma_fence();
        pv_rs(o, pa, 0, 0);
        wgmma_commit();
        OPENMLA_PROF_MARK(1);
        // wait for m1, hand P0 (scaled to m1) to warpgroup 1
        named_barrier(kBarM1, kThreads);
        OPENMLA_PROF_MARK(2);
#pragma unroll
        for (int i = 0; i < 2; ++i) {
          m1[i] = m1_buf[rw.r0 + 8 * i];
          f1[i] = rescale(m0[i], m1[i], sl2);
          l[i] *= f1[i];
          m[i] = m1[i];
        }
        // P0 was stored as packed before its P V (below); with the lazy max it rarely needs the
        // rescale to m1, then it is stored again from the fp32 values.
        if (any_rescale(f1)) store_p<Elem>(smem + L::p_tile(0), sc, f1);
        fence_proxy_async();
        named_barrier_arrive(kBarP0, kThreads);
        wgmma_wait<0>();
        fence_regs(o);
        fence_regs(pa);
        if (next0) load(0, s, blk + 2, page0n, 0, 4);  // V0_L is free: refill it
        OPENMLA_PROF_MARK(3);
        // O_L = O_L * e^(m0 - m1) + P1 V1_L, and behind it the next pair's S0: chunks 0-3 (refilled
        // after P0 V0_L) are issued while P1 V1_L runs, chunks 4-8 once V1_L is refilled.
        // Commits and waits are unconditional (empty groups where there is nothing to do): with
        // waits under runtime branches ptxas cannot follow the wgmma pipeline and serializes
        // every wgmma of the kernel (C7515).
        const uint32_t par0n = (fills0 + 1) & 1;
        named_barrier(kBarP1, kThreads);
        if (has1) {
          scale_o_if(o, f1);
#pragma unroll
          for (int c = 0; c < 4; ++c) mbar_wait(&full[9 + c], par1);
        }
        wgmma_fence();
        if (has1) {
          pv_ss(o, 1, 0);
        }
        wgmma_commit();  // group A: P1 V1_L
        // Group B is issued whatever next0 says (without it, on the stage's current block: S is
        // then discarded), and after all four of its chunk waits: ptxas closes a wgmma group at
        // every branch, and turns wait<1> into "at most one of its own groups pending" (a
        // conditional group B ends with an extra empty one, a wait per chunk makes one per
        // chunk), so wait<1> waited for most or all of B, the V1_L refill was issued and chunks
        // 4-8 queued only once B was done (SASS: WARPGROUP.DEPBAR.LE gsb0, 0x1 after a dummy
        // HGMMA.64x8x16). One group: h_q = 128 s_q = 2 -5 to -7 % sustained.
        if (next0) wait_chunks(0, par0n, 0, 4);
        issue_s(sc, 0, par0n, 0, 4, false);
        wgmma_commit();  // group B: next S0, chunks 0-3
        wgmma_wait<1>();  // A done: V1_L is free (and the RoPE chunk, when P1 lives there)
        if (has1 && next1) load(1, s, blk + 3, page1n, L::kG1, kChunks);
        if (next0) issue_s(sc, 0, par0n, 4, kChunks);
        wgmma_commit();  // group C: next S0, chunks 4-8
        next_pages();
        wgmma_wait<0>();
        fence_regs(o);
        fence_regs(sc);
        if constexpr (kQReg) fence_regs(q_last);
      } else {
        // ===== warpgroup 1: block b1 = blk + 1 (stage 1), if any =====
        const int tok1 = (blk + 1) * 64;
        mx[0] = mx[1] = -INFINITY;
        OPENMLA_PROF_MARK(4);
        OPENMLA_PROF_PAIR();
        if (has1) {
          compute_s(sc, 1, par1);
          mask_rowmax(sc, rw, tok1, limit, mx);
        }
        OPENMLA_PROF_MARK(0);
        named_barrier(kBarM0, kThreads);
        OPENMLA_PROF_MARK(1);
#pragma unroll
        for (int i = 0; i < 2; ++i) {
          m0[i] = m0_buf[rw.r0 + 8 * i];
          m1[i] = lazy_max(m0[i], mx[i], sl2);
          f0[i] = rescale(m[i], m0[i], sl2) * rescale(m0[i], m1[i], sl2);  // e^(m - m1)
          m[i] = m1[i];
        }
        if (lane % 4 == 0) {
          m1_buf[rw.r0] = m1[0];
          m1_buf[rw.r0 + 8] = m1[1];
        }
        named_barrier_arrive(kBarM1, kThreads);  // warpgroup 0 can rescale and store P0
        rs[0] = rs[1] = 0.0f;
#pragma unroll
        for (int k = 0; k < 16; ++k) pa[k] = 0u;
        const int valid1 = min(64, s.len - tok1);
        if (has1) {
          exponentiate(sc, m1, sl2, rs);
          pack_a<Elem>(sc, pa);
          store_pa(smem + L::p_tile(1), pa);  // P1 for warpgroup 0 (before pa is an operand)
        }
#pragma unroll
        for (int i = 0; i < 2; ++i) l[i] = l[i] * f0[i] + rs[i];
        scale_o_if(o, f0);
        if (has1) {
          if (valid1 < 64) {
            zero_v_tail(smem + L::kK + L::kStage, valid1, wl);
            named_barrier(kBarWg1, 128);
          }
          OPENMLA_PROF_MARK(6);
        }
        // O_R += P1 V1_R, P1 from registers (its copy for warpgroup 0 was stored above).
        // (Unconditional commits and waits, see warpgroup 0's tail.)
        wgmma_fence();
        if (has1) {
          pv_rs(o, pa, 1, 1);
        }
        wgmma_commit();  // group A: P1 V1_R
        if (has1) fence_proxy_async();  // P1 (stored above) to the async proxy
        OPENMLA_PROF_MARK(2);
        // O_R += P0' V0_R (P0 already scaled to m1 by warpgroup 0)
        named_barrier(kBarP0, kThreads);
        OPENMLA_PROF_MARK(3);
#pragma unroll
        for (int c = 4; c < 8; ++c) mbar_wait(&full[c], par0);
        pv_ss(o, 0, 1);
        wgmma_commit();  // group B: P0 V0_R
        // P1 is handed over only now: warpgroup 0's P1 V1_L then queues behind P0 V0_R, so stage
        // 0's second half (V0_R) is free, and refilled, earlier (A/B: -0.2 to -0.7 %).
        named_barrier_arrive(kBarP1, kThreads);
        wgmma_wait<1>();  // A done: V1_R (+ RoPE) is free, refill it with stage 1's next block
        if (has1 && next1) load(1, s, blk + 3, page1n, 0, L::kG1);
        wgmma_wait<0>();
        fence_regs(o);
        fence_regs(pa);
        // V0_R and P0 (RoPE chunk) are free
        if (next0) load(0, s, blk + 2, page0n, 4, kChunks);
        next_pages();
      }
      ++fills0;
      if (has1) ++fills1;
    }
    OPENMLA_PROF_STAMP(6);
    // ---- epilogue: total row sums across both warpgroups, normalize, store ----
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      l[i] += __shfl_xor_sync(0xffffffff, l[i], 1);
      l[i] += __shfl_xor_sync(0xffffffff, l[i], 2);
    }
    if (lane % 4 == 0) {
      s_sum[wg * 64 + rw.r0] = l[0];
      s_sum[wg * 64 + rw.r0 + 8] = l[1];
    }
    const int nsplit = plan_num_splits<kMerge>(p, s_tab, s.req);
    // kMerge (PlanBuffers::merge_pairs): of a request cut in two pieces, the piece that finishes
    // second merges both (pair_merge) and the combine kernel skips the request; the first stores
    // its partial as any piece does and then signals its sync word. The ticket is taken now, read
    // after the barrier.
    // (Ticket and sync index go through shared memory, s_ticket[0] and [2], read where needed:
    // kept in registers across the stores below they made ptxas spill.)
    if (kMerge && tid == 0) {
      const int pair_index = (s.req * p.m_blocks + m_block) * p.h_kv + hk;
      const bool pair = nsplit == 2;
      s_ticket[0] = pair ? atomicAdd(p.plan.merge_sync + 2 * pair_index, 1) : 0;
      s_ticket[2] = pair ? 1 + pair_index : 0;
    }
    __syncthreads();
    OPENMLA_PROF_STAMP(7);
    OPENMLA_PROF_STAMP_FIRST(9);
    // Tiles of segments that another segment follows go through the copy engine (p.o_tma /
    // p.a_tma): staged in the K stages (free here: every wgmma is done and the last pair issued
    // no refills) as 128B-swizzled boxes of 64 rows, the out tile as 8 boxes of 64 bf16/fp16,
    // the partial tile as 16 boxes of 32 fp32. The next segment's loads then do not queue behind
    // 64-128 KB of thread stores (b=128 h_q=128 s_q=2 s_k=4096: -2 %); the part's last segment
    // stores from registers (staging would only lengthen the kernel's end: b=8 +1.3 us).
    const bool direct = nsplit <= 1;
    const int acc0 = direct ? 0 : plan_accum_offset<kMerge>(p, s_tab, s.req);  // first slot
    uint8_t* tile = smem + L::kK;
    if (kMerge && s_ticket[0] != 0) {  // the second piece of a pair
      pair_merge<Elem>(p, s, rw, m, s_sum, acc0, m_block, hk, wg, tid, o, tile, q_full, q_par,
                       pair_sync_words(p, s_ticket[2]));
    } else {
      const bool via_tma = !s.last && (direct ? p.o_tma != 0 : p.a_tma != 0);
#pragma unroll
      for (int i = 0; i < 2; ++i) {
        const int r = rw.r0 + 8 * i, rg = m_block * 64 + r;
        const float lt = s_sum[r] + s_sum[64 + r];
        const bool empty_row = lt == 0.0f;
        const float inv = empty_row ? 0.0f : 1.0f / lt;
        const float lse = empty_row ? INFINITY : piece_lse(m[i], p.scale, lt);
        if (via_tma) {
          // (rows past p.rows are written to shared memory too; the copy engine clips them)
          const uint32_t sw = static_cast<uint32_t>(r & 7);
          if (direct) {
#pragma unroll
            for (int j = 0; j < 32; ++j) {
              const int box = wg * 4 + j / 8;
              *reinterpret_cast<uint32_t*>(tile + box * kChunkBytes + r * 128 +
                                           (((j % 8) ^ sw) << 4) + 2 * rw.cq) =
                  pack2<Elem>(o[4 * j + 2 * i] * inv, o[4 * j + 2 * i + 1] * inv);
            }
          } else {
#pragma unroll
            for (int j = 0; j < 32; ++j) {
              const int box = wg * 8 + j / 4;
              const uint32_t unit = 2 * (j % 4) + rw.cq / 4;
              *reinterpret_cast<float2*>(tile + box * kChunkBytes + r * 128 + ((unit ^ sw) << 4) +
                                         4 * (rw.cq % 4)) =
                  make_float2(o[4 * j + 2 * i] * inv, o[4 * j + 2 * i + 1] * inv);
            }
          }
        }
        if (rg >= p.rows) continue;
        const QueryRow qr = query_row(p, hk, rg);
        if (direct) {
          if (!via_tma) {
            Elem* out = out_row<Elem>(p, s.req, qr) + wg * 256 + rw.cq;
#pragma unroll
            for (int j = 0; j < 32; ++j)
              *reinterpret_cast<uint32_t*>(out + 8 * j) =
                  pack2<Elem>(o[4 * j + 2 * i] * inv, o[4 * j + 2 * i + 1] * inv);
          }
          if (wg == 0 && lane % 4 == 0) *lse_at(p, s.req, qr) = lse;
        } else {
          // Partial results: L2 evict-last (read by the combine right after; see ptx.cuh).
          const uint64_t keep = l2_policy_evict_last();
          const int64_t slot = accum_slot(p, acc0, s, hk, rg);
          if (!via_tma) {
            float* acc = p.plan.o_accum + slot * 512 + wg * 256 + rw.cq;
#pragma unroll
            for (int j = 0; j < 32; ++j)
              st_global_hint(acc + 8 * j, o[4 * j + 2 * i] * inv, o[4 * j + 2 * i + 1] * inv, keep);
          }
          if (wg == 0 && lane % 4 == 0)
            st_global_hint(p.plan.lse_accum + slot, empty_row ? -INFINITY : lse, keep);
        }
      }
      if (via_tma) {
        fence_proxy_async();
        __syncthreads();
        const uint64_t keep = l2_policy_evict_last();
        const int r0 = m_block * 64;
        if (direct) {
          const QueryRow q0 = query_row(p, hk, r0);  // the box's first head and position
#pragma unroll
          for (int c = 0; c < 8; ++c)
            tma_store_4d_pred(&omap, tile + c * kChunkBytes, c * 64, q0.h, q0.s, s.req, keep,
                              tid == 0);
        } else {
          const int piece = accum_piece(p, acc0, s, hk);
#pragma unroll
          for (int c = 0; c < 16; ++c)
            tma_store_4d_pred(&amap, tile + c * kChunkBytes, c * 32, r0, piece, 0, keep, tid == 0);
        }
        // (every thread commits and waits: only thread 0's groups are non-empty)
        bulk_commit();
        bulk_wait_read();  // the stages may be refilled once the engine has read them
      }
      // A pair merge's first piece: every thread's stores (partials, lse) ordered before the
      // signal (below, or at the next segment's start when the copy engine stored the tile).
      if (kMerge && s_ticket[2] != 0) __threadfence();
      // s_sum is rewritten by the next segment's epilogue only after its own barriers; the Q tile
      // is rewritten only after this barrier, when both warpgroups are done with all wgmma.
      __syncthreads();
      if (kMerge && tid == 0 && s_ticket[2] != 0) {
        if (via_tma)
          s_ticket[1] = s_ticket[2];  // (thread 0 signals at the next segment's start)
        else
          signal_pair_done(pair_sync_words(p, s_ticket[2]), false);
      }
    }
    OPENMLA_PROF_STAMP_FIRST(10);
  });
  if (kMerge && tid == 0 && s_ticket[1] != 0)
    signal_pair_done(pair_sync_words(p, s_ticket[1]), true);
  // The combine kernel (PDL) may be scheduled from here on; it waits for this grid to finish.
  grid_launch_dependents();
  OPENMLA_PROF_PRINT();
}

}  // namespace openmla::sm90::dense_decode_detail
