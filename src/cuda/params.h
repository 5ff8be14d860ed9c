// POD parameters of the CUDA kernels (host-visible; no CUDA types). Strides are in elements.
#pragma once

#include <cstdint>

namespace openmla::sm90 {

// Split-KV schedule of one decode step (filled on the device by the planner).
// Work is cut into "parts"; grid = (m_blocks, h_kv, num_parts). Part p covers requests
// [begin_req, last_req] with block ranges [begin_blk, ...) for the first and [..., last_blk_end)
// for the last (blocks of 64 tokens); begin_split is the split index of its first request.
inline constexpr int kPlanMetaInts = 8;
// kBeginLen: cache length of the first request (saves the kernel a dependent load at its start).
enum PlanMeta : int { kBeginReq = 0, kBeginBlk, kLastReq, kLastBlkEnd, kBeginSplit, kBeginLen };

struct PlanBuffers {
  int32_t* meta;          // [num_parts][kPlanMetaInts]
  int32_t* num_splits;    // [b]: pieces request i is cut into (1 = written directly to out)
  int32_t* accum_offset;  // [b]: first accumulator slot of request i (only when num_splits > 1)
  float* o_accum;         // [accum_slots][h_kv][rows][512]: normalized partial outputs
  float* lse_accum;       // [accum_slots][h_kv][rows]: partial lse (natural log; -inf = empty)
  int32_t* split_reqs;    // [max_split_reqs][4]: the requests cut into pieces, in order, as
                          // {request, pieces, accum_offset, 0} (one 16-byte load each)
  int32_t* num_split_reqs;  // [1]: how many entries of split_reqs are valid
  int num_parts;
  int max_split_reqs;  // min(b, num_parts - 1), at least 1: grid.x of the combine
  int accum_slots;  // 2 * (num_parts - 1): bound on the pieces of split requests
  // Batches of at most kInlinePlanMaxBatch (plan.cu; up to kInlineSmallBatch for the main
  // kernel without pair merges): no planner launch; warp 0 of every
  // attention CTA computes its part's schedule from the lengths (the planner's arithmetic with
  // fixed cost fixed_cost, schedule/inline_plan.cuh), and the combine its cut requests the same
  // way (batches of at most kInlineSmallBatch) or from the cut list that the attention
  // kernel's first CTA writes. meta, num_splits and accum_offset are then unused.
  int inline_plan;
  int fixed_cost;
  // Requests cut in exactly two pieces are merged by the attention kernel (its kMerge build;
  // main kernel, batches of at least kMergeMinBatch, at most two m blocks) and left off
  // split_reqs: merge_sync holds two ints per (request, m block, KV head), zero between launches
  // (a ticket and the first piece's signal).
  int merge_pairs;
  int32_t* merge_sync;
  // The main kernel's K loads: evict-first, or evict-last where more than two m-block CTAs read
  // each block (s_q = 2 at h_q = 128) and the batch has at least two requests per part (set_batch,
  // schedule/plan.cu): the CTAs past the first pair then re-read less from DRAM
  // (docs/benchmarks.md, session 19).
  int k_evict_last;
};
// Largest batch planned inside the attention kernel (warp 0 of each CTA, up to 16 requests per
// lane; kernel.cuh). Up to kInlineSmallBatch (one lane per request) every kernel build plans
// inline and the wide combine derives its cut request from the lengths too; larger batches
// leave the combine a cut list written by the attention kernel's first CTA.
inline constexpr int kInlinePlanMaxBatch = 512;
inline constexpr int kInlineSmallBatch = 8;
// Requests cut in two pieces are merged by the attention kernel in batches of at least this.
inline constexpr int kMergeMinBatch = 9;

// n / d for 0 <= n < 2^31 and a divisor d >= 1 fixed per launch, as a multiply-high and a
// shift (round-up reciprocal: mul = ceil(2^(31 + l) / d), l = ceil(log2 d), shr = l - 1; d = 1
// is passed through). The integer division it replaces took ~20 dependent instructions per use in
// the decode kernel's per-pair block-table math.
struct FastDiv {
  uint32_t d, mul, shr;
};

// ceil(log2 d) for d >= 1 (host).
inline uint32_t ceil_log2(uint32_t d) {
  uint32_t l = 0;
  while ((uint64_t(1) << l) < d) ++l;
  return l;
}

// The FastDiv of a divisor d >= 1 (host), and n / d by it: the kernels call fast_div_apply
// (constexpr, so device code may), the CPU tests check it against the plain division.
inline FastDiv make_fast_div(uint32_t d) {
  FastDiv f{d, 0, 0};
  if (d > 1) {
    const uint32_t l = ceil_log2(d);
    f.mul = static_cast<uint32_t>(((uint64_t(1) << (31 + l)) + d - 1) / d);
    f.shr = l - 1;
  }
  return f;
}
constexpr uint32_t fast_div_apply(const FastDiv& f, uint32_t n) {
  return f.d == 1 ? n : static_cast<uint32_t>((uint64_t(n) * f.mul) >> 32) >> f.shr;
}

struct DenseDecodeKernelParams {
  const void* q;  // [b, s_q, h_q, d_qk]
  int64_t q_stride_b, q_stride_s, q_stride_h;
  void* out;  // [b, s_q, h_q, 512]
  int64_t o_stride_b, o_stride_s, o_stride_h;
  float* lse;  // [b, h_q, s_q]
  int64_t lse_stride_b, lse_stride_h, lse_stride_s;
  const int32_t* block_table;  // [b, max_pages]
  int64_t bt_stride;
  int max_pages;
  const int32_t* seqlens;  // [b]
  int64_t seqlens_stride;
  // The cache itself, for the narrow kernel's gathers (k_gather): strides in bytes.
  const void* k;
  int64_t k_stride_page, k_stride_tok, k_stride_h;
  // Pages of 1 token (narrow kernel): 16-byte cp.async gathers by the producer's lanes instead
  // of one copy-engine request per token and 64 dims.
  int k_gather;
  int num_pages, page_size, box_tokens;
  FastDiv page_div;  // division by page_size
  int box_shift;     // log2(box_tokens) (box_tokens = gcd(page_size, 64), a power of two)
  int batch, s_q, h_q, h_kv, group, rows;  // rows = s_q * group (query rows per KV head)
  int m_blocks;                            // ceil(rows / 64)
  float scale, scale_log2;
  int causal;
  int fp16;  // q/k_cache/out are fp16 (else bf16)
  // The main kernel loads its Q tiles through the q tensor map (one copy-engine request per
  // 64-dim chunk) when a tile of 64 query rows is one TMA box: group % 64 == 0 (64 heads of one
  // query position) or 64 % group == 0 (all heads of 64 / group positions; past s_q the copy
  // engine fills zeros). Else (e.g. group 3, 9, 63, 126) 16-byte cp.async copies.
  int q_tma;
  // The main kernel stores its out tiles through an out tensor map under the same condition
  // (o_tma), and its partial-result tiles through a map over the plan's o_accum (a_tma).
  int o_tma, a_tma;
  PlanBuffers plan;
};

}  // namespace openmla::sm90
