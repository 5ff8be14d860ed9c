// Dense MLA decode for few query rows per KV head (rows = s_q * h_q / h_kv <= 32: h_q 16 or 32 at
// s_q 1, the tensor-parallel shards of DeepSeek-class models), sm_90a.
//
// The main kernel (kernel.cuh) multiplies 64 query rows per wgmma; with 16 real rows three quarters
// of its tensor and shared-memory work is padding, and its Q tile (72 KB) leaves room for only two
// 72 KB K stages, too little in flight to stream the cache at full bandwidth. Here the products are
// transposed so the tokens are the M = 64 side and the query rows the narrow N side:
//   S^T = K Q^T   (wgmma m64nNk16: A = a 64x64 chunk of K, B = the Q tile, both K-major)
//   O^T += V^T P^T (A = the same chunk read MN-major (transposed), B = P^T, K-major)
// so a chunk of K costs 2 KB of A per k16 step and Q only N x 32 bytes; O^T (512 x N) lives in one
// warpgroup's registers (4 N per thread). The K cache streams through a ring of 8 KB chunk slots
// (~25 for N = 16, ~22 for N = 32: about three blocks) filled by one producer warp with TMA; a slot
// is released as soon as its last reader is done (the RoPE chunk after S, V chunks after P V), so
// loads for later blocks are in flight while a block is computed.
//
// One consumer warpgroup: per block j, S^T(j) -> column (= query row) maxima over the 64 tokens
// (shuffles + one exchange through shared memory) -> P^T(j) -> O^T rescaled and O^T += V^T P^T,
// with S^T(j+1) issued right behind P V(j). Any page size: a chunk is one TMA box when the page
// size is a multiple of 64, else 64 / gcd(page size, 64) boxes issued by the lanes of four
// producer warps (every fourth chunk each), or, for pages of 1 (p.k_gather), 16-byte cp.async
// gathers by the lanes of one.
#pragma once

#include "cuda/decode_dense/kernel.cuh"

namespace openmla::sm90::dense_decode_detail {

inline constexpr int kNarrowThreads = 256;  // warpgroup 0: consumer; warp 4: producer
inline constexpr int kNarrowBar = 1;        // named barrier of the consumer warpgroup
inline constexpr int kGatherDepth = 8;      // gathered chunks in flight before one is signalled
// Warps issuing the copy-engine boxes of pages smaller than 64 tokens (each box with per-thread
// coordinates is a ~16-instruction loop over the warp's active lanes).
inline constexpr int kSmallPageWarps = 4;
static_assert((kSmallPageWarps & (kSmallPageWarps - 1)) == 0, "chunks are dealt by a mask");

__host__ __device__ constexpr int align_up(int x, int a) { return (x + a - 1) / a * a; }

template <int kChunks, int kN>
struct NarrowSmem {
  static constexpr int kQChunk = kN * 128;  // one 64-dim chunk of an N-row K-major tile
  static constexpr int kQ = 0;              // Q tile [kChunks][kN rows][64], swizzled
  static constexpr int kP = align_up(kChunks * kQChunk, 1024);  // P^T tiles [2][kN][64 tokens]
  static constexpr int kRed = kP + 2 * kQChunk;  // float [2][4 warps][kN]: column maxima
  static constexpr int kSum = kRed + 2 * 4 * kN * 4;  // float [4][kN]: row sums (epilogue)
  static constexpr int kRing = align_up(kSum + 4 * kN * 4, 1024);
  static constexpr int kBudget = 227 * 1024 - 1024;  // minus the alignment slack
  static constexpr int kSlots = (kBudget - 8 - 64 - kRing) / (kChunkBytes + 16);
  // uint64 full[kSlots], empty[kSlots], then the Q tile's barrier (TMA path)
  static constexpr int kBars = kRing + kSlots * kChunkBytes;
  static constexpr int kTab = kBars + 2 * kSlots * 8 + 8;  // int [16]: an inline plan's table
  static constexpr int kBytes = kTab + 64;
  static constexpr int kAlloc = kBytes + 1024;
  static_assert(kAlloc <= 227 * 1024, "shared memory budget");
  static_assert(kSlots >= 2 * kChunks, "the ring must hold two blocks");
};

template <bool kFp16, int kN>
__device__ __forceinline__ void mma_st(float (&d)[kN / 2], uint64_t a, uint64_t b, int scale_d) {
  if constexpr (kN == 16) {
    if constexpr (kFp16)
      wgmma_m64n16k16_f16_ss(d, a, b, scale_d);
    else
      wgmma_m64n16k16_bf16_ss(d, a, b, scale_d);
  } else {
    if constexpr (kFp16)
      wgmma_m64n32k16_f16_ss(d, a, b, scale_d);
    else
      wgmma_m64n32k16_bf16_ss(d, a, b, scale_d);
  }
}
template <bool kFp16, int kN>
__device__ __forceinline__ void mma_ot(float (&d)[kN / 2], uint64_t a, uint64_t b) {
  if constexpr (kN == 16) {
    if constexpr (kFp16)
      wgmma_m64n16k16_f16_ss_ta(d, a, b, 1);
    else
      wgmma_m64n16k16_bf16_ss_ta(d, a, b, 1);
  } else {
    if constexpr (kFp16)
      wgmma_m64n32k16_f16_ss_ta(d, a, b, 1);
    else
      wgmma_m64n32k16_bf16_ss_ta(d, a, b, 1);
  }
}

template <int kChunks, bool kFp16, int kN>
__global__ void __launch_bounds__(kNarrowThreads, 1)
    narrow_decode_kernel(const __grid_constant__ CUtensorMap kmap,
                         const __grid_constant__ CUtensorMap qmap,
                         const DenseDecodeKernelParams p) {
  using Elem = std::conditional_t<kFp16, __half, __nv_bfloat16>;
  using L = NarrowSmem<kChunks, kN>;
  constexpr int kCols = kN / 4;        // query rows (S^T columns) held per thread
  constexpr int kAcc = kN / 2;         // accumulator registers of one m64nN tile
  constexpr int kVChunks = 8;          // chunks 0-7 are V (512 dims); chunk 8 is RoPE only
  extern __shared__ uint8_t smem_raw[];
  uint8_t* smem = smem_raw + ((1024u - (smem_addr(smem_raw) & 1023u)) & 1023u);
  uint64_t* full = reinterpret_cast<uint64_t*>(smem + L::kBars);
  uint64_t* empty = full + L::kSlots;
  uint64_t* q_full = empty + L::kSlots;
  int* s_tab = reinterpret_cast<int*>(smem + L::kTab);
  const int hk = blockIdx.y, part = blockIdx.z;
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int wg = __shfl_sync(0xffffffff, warp / 4, 0);
  if (tid == 0) {
    tma_prefetch_desc(&kmap);
    if (p.q_tma) tma_prefetch_desc(&qmap);
    for (int i = 0; i < L::kSlots; ++i) {
      mbar_init(&full[i], p.k_gather ? 32 : 1);  // gathers: every producer lane arrives
      mbar_init(&empty[i], 1);
    }
    mbar_init(q_full, 1);
    mbar_fence_init();
  }
  fill_plan_table<true>(p, part, s_tab);
  __syncthreads();
  // The ring slot of chunk number n (both sides count the chunks of the part in the same order).
  auto slot_of = [](uint32_t n) { return static_cast<int>(n % L::kSlots); };

  if (wg == 1) {
    // ===== producer: warp 4 streams every chunk of every block of this part into the ring =====
    // (Boxes of fewer than 64 tokens: warps 4-7, each issuing every fourth chunk.)
    const int pw = p.box_tokens < 64 && !p.k_gather ? kSmallPageWarps : 1, wi = warp - 4;
    if (wi >= pw) return;
    const uint64_t policy = l2_policy_evict_first();
    uint32_t count = 0;
    uint8_t* ring = smem + L::kRing;
    // The parity of the next slot's release by the readers.
    auto empty_parity = [&] { return ((count / L::kSlots) & 1) ^ 1; };
    // The next ring slot, once its readers have released it, armed for `bytes` (lane 0).
    auto acquire_slot = [&](uint32_t bytes) {
      const int slot = slot_of(count);
      mbar_wait(&empty[slot], empty_parity());
      mbar_arrive_expect_tx_pred(&full[slot], bytes, lane == 0);
      ++count;
      return slot;
    };
    // Gathers (p.k_gather): chunks issued but not yet signalled full. Each lane waits for its own
    // copies of a chunk, fences them for the tensor cores (async proxy) and arrives on the
    // chunk's full barrier; up to kGatherDepth chunks stay in flight, and all of them are
    // signalled before the producer blocks on a slot (the consumer may be waiting for them).
    // (A second or fourth gathering warp, or 16 chunks in flight, were no faster: the SM's
    // outstanding 16-byte copies are the limit, ~16 GB/s per SM. Neither was splitting each
    // block's chunks between this warp and a warp issuing boxes, beyond ~10 % at pages of 4.)
    uint32_t signalled = 0;
    auto signal_oldest = [&] {  // (its copies complete and fenced)
      mbar_arrive_pred(&full[signalled % L::kSlots], true);
      ++signalled;
    };
    auto signal_all = [&] {
      cp_async_wait_all();
      fence_proxy_async();
      while (signalled < count) signal_oldest();
    };
    auto acquire_gather_slot = [&] {
      const int slot = slot_of(count);
      const uint32_t parity = empty_parity();
      if (!__all_sync(0xffffffff, mbar_test_wait(&empty[slot], parity))) {
        signal_all();
        mbar_wait(&empty[slot], parity);
      }
      ++count;
      return slot;
    };
    for_each_segment(p, part, s_tab, [&](const Segment& seg) {
      const Segment s = uniform_segment(seg);
      const int req = s.req, len = s.len, blk_lo = s.blk_lo, blk_hi = s.blk_hi;
      const int32_t* table = p.block_table + static_cast<int64_t>(req) * p.bt_stride;
      if (p.k_gather) {
        // 16-byte cp.async copies into the swizzled chunk layout: lane l moves 16-byte unit
        // l % 8 of tokens 4 i + l / 8 (i < 16) of every chunk. Tokens at or past the length, and
        // block-table entries outside the cache, are zero-filled without a read.
        const uint8_t* kb = static_cast<const uint8_t*>(p.k) + hk * p.k_stride_h;
        const int unit = lane & 7;
        for (int blk = blk_lo; blk < blk_hi; ++blk) {
          const int tok0 = blk * 64;
          const uint8_t* src[16];
          int ok_bits = 0;
#pragma unroll
          for (int i = 0; i < 16; ++i) {
            const int t = tok0 + 4 * i + (lane >> 3);
            const int page_idx = page_of(p, t);
            const bool in_table = t < len && page_idx < p.max_pages;
            const int page = ld_pred(table + (in_table ? page_idx : 0), in_table, -1);
            const bool ok = page >= 0 && page < p.num_pages;
            ok_bits |= ok ? 1 << i : 0;
            src[i] = kb + (ok ? page * p.k_stride_page +
                                    (t - page_idx * p.page_size) * p.k_stride_tok : 0) +
                     unit * 16;
          }
          for (int c = 0; c < kChunks; ++c) {
            uint8_t* dst = ring + acquire_gather_slot() * kChunkBytes;
#pragma unroll
            for (int i = 0; i < 16; ++i) {
              const int r = 4 * i + (lane >> 3);
              cp_async_16(dst + r * 128 + ((unit ^ (r & 7)) << 4), src[i] + c * 128,
                          (ok_bits >> i) & 1 ? 16 : 0);
            }
            cp_async_commit();
            if (count - signalled > kGatherDepth) {
              cp_async_wait_group<kGatherDepth>();
              fence_proxy_async();
              signal_oldest();
            }
          }
        }
      } else if (p.box_tokens == 64) {
        // Pages of 64k tokens: one box per chunk; lane l looks up block base + l's page.
        for (int base = blk_lo; base < blk_hi; base += 32) {
          const int nb = min(32, blk_hi - base);
          const int page_idx = (base + lane) * 64 / p.page_size;
          const bool in_table = lane < nb && page_idx < p.max_pages;
          const int page_l = ld_pred(table + (in_table ? page_idx : 0), in_table, -1);
          for (int k = 0; k < nb; ++k) {
            const int page = __shfl_sync(0xffffffff, page_l, k);
            const int in_page = ((base + k) * 64) % p.page_size;
            for (int c = 0; c < kChunks; ++c) {
              const int slot = acquire_slot(kChunkBytes);
              tma_load_4d_pred(ring + slot * kChunkBytes, &kmap, &full[slot], c * 64, hk,
                               in_page, page, policy, lane == 0);
            }
          }
        }
      } else {
        // Smaller pages: a chunk is 64 / box boxes of `box` tokens (box = the page size when it
        // divides 64, else gcd(page size, 64)), lane l issuing boxes l and l + 32. Only boxes
        // of tokens below the length are loaded (the rest of the block stays stale: S masks it,
        // the consumer zeroes those V rows).
        const int box = p.box_tokens;
        for (int blk = blk_lo; blk < blk_hi; ++blk) {
          const int tok0 = blk * 64;
          const int nbox = (min(64, len - tok0) + box - 1) / box;
          int page[2], in_page[2];
#pragma unroll
          for (int h = 0; h < 2; ++h) {
            const int bx = lane + 32 * h;
            const int t = tok0 + bx * box;
            const int page_idx = page_of(p, t);
            const bool in_table = bx < nbox && page_idx < p.max_pages;
            page[h] = ld_pred(table + (in_table ? page_idx : 0), in_table, -1);
            in_page[h] = t - page_idx * p.page_size;
          }
          const uint32_t bytes = static_cast<uint32_t>(nbox * box * 128);
          for (int c = 0; c < kChunks; ++c) {
            if (static_cast<int>(count & (pw - 1)) != wi) {  // another warp's chunk
              ++count;
              continue;
            }
            const int slot = acquire_slot(bytes);
#pragma unroll
            for (int h = 0; h < 2; ++h) {
              const int bx = lane + 32 * h;
              tma_load_4d_pred(ring + slot * kChunkBytes + bx * box * 128, &kmap, &full[slot],
                               c * 64, hk, in_page[h], page[h], policy, bx < nbox);
            }
          }
        }
      }
    });
    if (p.k_gather) signal_all();
    return;
  }

  // ===== consumer: warpgroup 0 =====
  const int wl = tid;  // 0..127
  const int r0 = (warp % 4) * 16 + lane / 4;  // token rows r0, r0 + 8 of an S^T tile
  const int cq = 2 * (lane % 4);              // query-row columns 8 j + cq + {0, 1}
  const float sl2 = p.scale_log2;
  const uint32_t ring_addr = smem_addr(smem + L::kRing);
  const uint64_t k_base = make_desc_sw128(ring_addr, 16, 1024);           // K chunk as A
  const uint64_t v_base = make_desc_sw128(ring_addr, kChunkBytes, 1024);  // V^T chunk as A
  const uint64_t q_base = make_desc_sw128(smem_addr(smem + L::kQ), 16, 1024);
  const uint64_t p_base = make_desc_sw128(smem_addr(smem + L::kP), 16, 1024);
  auto at = [](uint64_t base, uint32_t bytes) { return desc_at(base, bytes); };
  float* red = reinterpret_cast<float*>(smem + L::kRed);
  float* sums = reinterpret_cast<float*>(smem + L::kSum);
  // Releases chunk slot n once its last reader is done (thread 0 only, predicated: no branch next
  // to the wgmma).
  auto release = [&](uint32_t n) { mbar_arrive_pred(&empty[slot_of(n)], wl == 0); };
  // S^T of the block whose chunks start at count n0 (waits for each chunk's TMA).
  auto issue_s = [&](float(&sc)[kAcc], uint32_t n0) {
#pragma unroll
    for (int c = 0; c < kChunks; ++c) {
      const uint32_t n = n0 + c;
      mbar_wait(&full[slot_of(n)], (n / L::kSlots) & 1);
#pragma unroll
      for (int kk = 0; kk < 4; ++kk)
        mma_st<kFp16, kN>(sc, at(k_base, slot_of(n) * kChunkBytes + kk * 32),
                          at(q_base, c * L::kQChunk + kk * 32), (c | kk) != 0);
    }
  };

  uint32_t count = 0;  // chunks consumed so far (the producer's sequence)
  uint32_t q_par = 0;  // the Q barrier's parity (TMA path)
  const uint64_t policy_q = l2_policy_evict_last();
  for_each_segment(p, part, s_tab, [&](const Segment& seg) {
    const Segment s = uniform_segment(seg);
    // The epilogue's plan entries, loaded now (their latency was on the epilogue's path).
    const int nsplit = plan_num_splits<true>(p, s_tab, s.req);
    const int acc0 = plan_accum_offset<true>(p, s_tab, s.req);
    // ---- Q tile: the kN query rows of this KV head (zero rows past p.rows) ----
    {
      if (p.q_tma) {
        // (boxes of kN rows: the copy engine zero-fills positions past s_q)
        issue_q_tile<kChunks>(p, &qmap, smem + L::kQ, L::kQChunk, q_full, s.req, hk, 0, policy_q,
                              wl == 0);
        mbar_wait(q_full, q_par);
        q_par ^= 1;
      } else {
        copy_q_tile<Elem, kChunks>(p, s.req, hk, 0, kN, smem + L::kQ, L::kQChunk, wl, 128);
        cp_async_wait_all();
        fence_proxy_async();
      }
      named_barrier(kNarrowBar, 128);
    }
    // Token limit (exclusive) of each query-row column this thread holds.
    int limit[kCols];
#pragma unroll
    for (int k = 0; k < kCols; ++k) limit[k] = row_limit(p, s.len, 8 * (k / 2) + cq + (k & 1));
    float o[8][kAcc];  // O^T: 8 tiles of 64 dims x kN
#pragma unroll
    for (int t = 0; t < 8; ++t)
#pragma unroll
      for (int i = 0; i < kAcc; ++i) o[t][i] = 0.0f;
    float m[kCols], l[kCols];
#pragma unroll
    for (int k = 0; k < kCols; ++k) {
      m[k] = -INFINITY;
      l[k] = 0.0f;
    }
    float sc[kAcc];
    const int nblk = s.blk_hi - s.blk_lo;
    wgmma_fence();
    if (nblk > 0) issue_s(sc, count);
    wgmma_commit();
    for (int j = 0; j < nblk; ++j) {
      const uint32_t n0 = count + j * kChunks;
      const int blk = s.blk_lo + j;
      wgmma_wait<0>();  // S^T(j) (and everything before it) is done
      fence_regs(sc);
      if constexpr (kChunks > kVChunks) release(n0 + kVChunks);  // the RoPE chunk: S only
      // ---- column maxima over the block's 64 tokens ----
      float cm[kCols];
#pragma unroll
      for (int k = 0; k < kCols; ++k) cm[k] = -INFINITY;
#pragma unroll
      for (int jj = 0; jj < kN / 8; ++jj)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int k = 2 * jj + (e & 1);
          const int tok = blk * 64 + r0 + 8 * (e / 2);
          const float v = tok < limit[k] ? sc[4 * jj + e] : -INFINITY;
          sc[4 * jj + e] = v;
          cm[k] = fmaxf(cm[k], v);
        }
#pragma unroll
      for (int k = 0; k < kCols; ++k) {
        cm[k] = fmaxf(cm[k], __shfl_xor_sync(0xffffffff, cm[k], 4));
        cm[k] = fmaxf(cm[k], __shfl_xor_sync(0xffffffff, cm[k], 8));
        cm[k] = fmaxf(cm[k], __shfl_xor_sync(0xffffffff, cm[k], 16));
      }
      float* red_j = red + (j & 1) * 4 * kN;  // double-buffered by block parity
      if (lane < 4) {
#pragma unroll
        for (int k = 0; k < kCols; ++k) red_j[(warp % 4) * kN + 8 * (k / 2) + cq + (k & 1)] = cm[k];
      }
      // V rows past the end of the cache must be finite zeros (P is 0 there, 0 * NaN is not).
      // All chunks of block j have landed (S^T waited for them).
      const int valid = min(64, s.len - blk * 64);
      if (valid < 64) {
        const int n16 = (64 - valid) * kVChunks * 8;
        for (int u = wl; u < n16; u += 128) {
          const int row = valid + u / 64, chunk = (u / 8) % 8, unit = u % 8;
          *reinterpret_cast<uint4*>(smem + L::kRing + slot_of(n0 + chunk) * kChunkBytes +
                                    row * 128 + (unit << 4)) = make_uint4(0, 0, 0, 0);
        }
        fence_proxy_async();
      }
      named_barrier(kNarrowBar, 128);
      float f[kCols], base[kCols];
#pragma unroll
      for (int k = 0; k < kCols; ++k) {
        const int col = 8 * (k / 2) + cq + (k & 1);
        float mx = cm[k];
#pragma unroll
        for (int w = 0; w < 4; ++w) mx = fmaxf(mx, red_j[w * kN + col]);
        const float m_new = fmaxf(m[k], mx);
        f[k] = rescale(m[k], m_new, sl2);
        base[k] = m_new == -INFINITY ? 0.0f : m_new * sl2;
        m[k] = m_new;
        l[k] *= f[k];
      }
      // ---- P^T = exp(S^T - m) into the block's P^T tile (rows = query rows, K-major) ----
      uint8_t* pt = smem + L::kP + (j & 1) * L::kQChunk;
#pragma unroll
      for (int jj = 0; jj < kN / 8; ++jj)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int k = 2 * jj + (e & 1);
          const float pv = fast_exp2(fmaf(sc[4 * jj + e], sl2, -base[k]));
          l[k] += pv;
          const int col = 8 * jj + cq + (e & 1), tok = r0 + 8 * (e / 2);
          *reinterpret_cast<Elem*>(pt + sw128_offset(col, tok * 2)) = Elem(pv);
        }
#pragma unroll
      for (int t = 0; t < 8; ++t)
#pragma unroll
        for (int i = 0; i < kAcc; ++i) o[t][i] *= f[(i / 4) * 2 + (i & 1)];
      fence_proxy_async();
      named_barrier(kNarrowBar, 128);
      // ---- O^T += V^T P^T (group A), then S^T(j + 1) (group B) ----
      wgmma_fence();
#pragma unroll
      for (int t = 0; t < kVChunks; ++t)
#pragma unroll
        for (int kk = 0; kk < 4; ++kk)
          mma_ot<kFp16, kN>(o[t], at(v_base, slot_of(n0 + t) * kChunkBytes + kk * 2048),
                            at(p_base, (j & 1) * L::kQChunk + kk * 32));
      wgmma_commit();
      if (j + 1 < nblk) issue_s(sc, n0 + kChunks);
      wgmma_commit();
      wgmma_wait<1>();  // P V(j) done: its V chunks are free
#pragma unroll
      for (int t = 0; t < kVChunks; ++t) release(n0 + t);
    }
    wgmma_wait<0>();
#pragma unroll
    for (int t = 0; t < 8; ++t) fence_regs(o[t]);
    count += nblk * kChunks;

    // ---- epilogue: column sums across the warpgroup, normalize, store ----
#pragma unroll
    for (int k = 0; k < kCols; ++k) {
      l[k] += __shfl_xor_sync(0xffffffff, l[k], 4);
      l[k] += __shfl_xor_sync(0xffffffff, l[k], 8);
      l[k] += __shfl_xor_sync(0xffffffff, l[k], 16);
    }
    if (lane < 4) {
#pragma unroll
      for (int k = 0; k < kCols; ++k) sums[(warp % 4) * kN + 8 * (k / 2) + cq + (k & 1)] = l[k];
    }
    named_barrier(kNarrowBar, 128);
#pragma unroll
    for (int k = 0; k < kCols; ++k) {
      const int col = 8 * (k / 2) + cq + (k & 1);
      const float lt = sums[col] + sums[kN + col] + sums[2 * kN + col] + sums[3 * kN + col];
      const bool empty_row = lt == 0.0f;
      const float inv = empty_row ? 0.0f : 1.0f / lt;
      const float lse = empty_row ? INFINITY : m[k] * p.scale + logf(lt);
      if (col >= p.rows) continue;
      const QueryRow qr = query_row(p, hk, col);
      if (nsplit <= 1) {
        Elem* out = out_row<Elem>(p, s.req, qr);
#pragma unroll
        for (int t = 0; t < 8; ++t) {
          const int i = (k / 2) * 4 + (k & 1);
          out[64 * t + r0] = Elem(o[t][i] * inv);
          out[64 * t + r0 + 8] = Elem(o[t][i + 2] * inv);
        }
        if (warp == 0 && lane < 4) *lse_at(p, s.req, qr) = lse;
      } else {
        // Partial results: L2 evict-last (read by the combine right after; see ptx.cuh).
        const uint64_t keep = l2_policy_evict_last();
        const int64_t slot = accum_slot(p, acc0, s, hk, col);
        float* acc = p.plan.o_accum + slot * 512;
#pragma unroll
        for (int t = 0; t < 8; ++t) {
          const int i = (k / 2) * 4 + (k & 1);
          st_global_hint(acc + 64 * t + r0, o[t][i] * inv, keep);
          st_global_hint(acc + 64 * t + r0 + 8, o[t][i + 2] * inv, keep);
        }
        if (warp == 0 && lane < 4)
          st_global_hint(p.plan.lse_accum + slot, empty_row ? -INFINITY : lse, keep);
      }
    }
    // Q, P^T and the sums are rewritten by the next segment only after every thread is here.
    named_barrier(kNarrowBar, 128);
  });
  // The combine kernel (PDL) may be scheduled from here on; it waits for this grid to finish.
  grid_launch_dependents();
}

}  // namespace openmla::sm90::dense_decode_detail
