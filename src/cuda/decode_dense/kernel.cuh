// Dense MLA decode kernel for sm_90a: one CTA per (64 query rows, KV head, schedule part).
//
// Warp roles (384 threads): warps 0-3 = warpgroup 0, warps 4-7 = warpgroup 1 (consumers); warps 8
// and 9 are the TMA producers of K stage 0 and stage 1 (warps 10-11 only give their registers
// away: setmaxnreg works per warpgroup).
//
// "Seesaw" schedule over pairs of 64-token KV blocks (b0 in stage 0, b1 in stage 1). O = [O_L | O_R]
// (64 x 256 fp32 each) lives in warpgroup 0 / 1. Warpgroup 0 owns b0, warpgroup 1 owns b1; each
// computes S = Q K^T of its own block over all 64 tokens (wgmma m64n64k16, operands in shared
// memory). The running row max m is handed along a chain m -> m0 (wg 0, after b0) -> m1 (wg 1,
// after b1) -> next pair, so one warpgroup's softmax runs while the other's matrix products do:
//   wg 0: S0; m0 = max(m, rowmax S0); P0 = exp(S0 - m0); O_L = O_L * e^(m - m0) + P0 V0_L (P0 from
//         registers); wait m1; store P0 * e^(m0 - m1) for wg 1; O_L = O_L * e^(m0 - m1) + P1 V1_L.
//   wg 1: S1; wait m0; m1 = max(m0, rowmax S1); P1 = exp(S1 - m1), store it for wg 0;
//         O_R = O_R * e^(m - m1) + P1 V1_R (registers) + P0' V0_R (P0' = P0 scaled to m1).
// V is the first 512 dims of the same K tile, read MN-major. Each stage's 9 (or 8) 64-dim chunks
// have their own full barrier, so S starts on the first chunk that lands; a stage is released in
// two groups (each warpgroup's V half, the other half together with the RoPE chunk), and the
// producers refill each group as soon as it is free. For d_qk = 576 the P tile of a block is
// written into the block's RoPE chunk once S is done with it (the whole budget is 227 KB).
#pragma once

#include <cuda.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "cuda/common/ptx.cuh"
#include "cuda/common/wgmma_gen.cuh"
#include "cuda/params.h"

namespace openmla::sm90::dense_decode_detail {

inline constexpr int kThreads = 384;  // 2 consumer warpgroups + 1 producer warpgroup
inline constexpr int kConsumerThreads = 256;
inline constexpr int kChunkBytes = 64 * 128;  // 64 rows x 64 elements x 2 bytes, one swizzle tile
// Named barriers (id 0 is __syncthreads).
enum : int {
  kBarConsumers = 1,  // all 256 consumer threads
  kBarM0 = 2,         // wg 0 -> wg 1: m0 published
  kBarP0 = 3,         // wg 0 -> wg 1: scaled P0 stored
  kBarM1 = 4,         // wg 1 -> wg 0: m1 published and P1 stored
  kBarWg0 = 5,        // the 128 threads of one warpgroup (zeroed V rows before its own wgmma)
  kBarWg1 = 6,
};

template <int kChunks>
struct Smem {
  static constexpr bool kPInRope = kChunks == 9;  // P tiles live in the stages' RoPE chunks
  static constexpr int kQ = 0;
  static constexpr int kK = kChunks * kChunkBytes;
  static constexpr int kStage = kChunks * kChunkBytes;
  static constexpr int kPSep = kK + 2 * kStage;  // separate P tiles [2] (d_qk = 512 only)
  static constexpr int kRed = kPSep + (kPInRope ? 0 : 2 * kChunkBytes);
  static constexpr int kM0 = kRed;          // float [64]
  static constexpr int kM1 = kRed + 256;    // float [64]
  static constexpr int kSum = kRed + 512;   // float [2][64]
  static constexpr int kBars = kRed + 1024;  // uint64 full[2][9], empty[4]
  static constexpr int kBytes = kBars + 24 * 8;
  static constexpr int kAlloc = kBytes + 1024;  // + alignment slack for the 1024-B atoms
  static_assert(kAlloc <= 227 * 1024, "shared memory budget");
  __host__ __device__ static constexpr int p_tile(int stage) {
    return kPInRope ? kK + stage * kStage + 8 * kChunkBytes : kPSep + stage * kChunkBytes;
  }
};

// Order in which stage `stage`'s chunks are loaded and consumed by S: the owner's V half first
// (freed earliest), then the other half, then the RoPE chunk.
__device__ __forceinline__ int chunk_at(int stage, int i) {
  return (stage == 0 || i >= 8) ? i : (i < 4 ? i + 4 : i - 4);
}

struct Segment {
  int req, blk_lo, blk_hi, split, len;
};

// Walks the segments (one per request touched) of schedule part `part`.
template <class F>
__device__ __forceinline__ void for_each_segment(const DenseDecodeKernelParams& p, int part,
                                                 F&& f) {
  const int32_t* m = p.plan.meta + part * kPlanMetaInts;
  const int begin_req = m[kBeginReq], last_req = m[kLastReq];
  for (int req = begin_req; req <= last_req && req < p.batch; ++req) {
    const int len = max(0, p.seqlens[req * p.seqlens_stride]);
    const int nblk = (len + 63) / 64;
    Segment s;
    s.req = req;
    s.len = len;
    s.blk_lo = req == begin_req ? m[kBeginBlk] : 0;
    s.blk_hi = req == last_req ? min(m[kLastBlkEnd], nblk) : nblk;
    s.split = req == begin_req ? m[kBeginSplit] : 0;
    f(s);
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
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    mx[i] = fmaxf(mx[i], __shfl_xor_sync(0xffffffff, mx[i], 1));
    mx[i] = fmaxf(mx[i], __shfl_xor_sync(0xffffffff, mx[i], 2));
  }
}

// exp(a - b) in the log2 domain for running maxima that may still be -inf (then 1: nothing to
// rescale yet).
__device__ __forceinline__ float rescale(float m_old, float m_new, float sl2) {
  return m_new == -INFINITY ? 1.0f : exp2f((m_old - m_new) * sl2);
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
    sc[k] = exp2f(sc[k] * sl2 - base[i]);
    rs[i] += sc[k];
  }
}

// The S accumulator tile (64 x 64) re-packed as the A operand of four k16 steps of P V.
template <class Elem>
__device__ __forceinline__ void pack_a(const float (&sc)[32], uint32_t (&pa)[16]) {
#pragma unroll
  for (int k = 0; k < 16; ++k) pa[k] = pack2<Elem>(sc[2 * k], sc[2 * k + 1]);
}

// Writes P * f (per row) as a 64 x 64 K-major, 128B-swizzled tile (the A operand of P V).
template <class Elem>
__device__ __forceinline__ void store_p(uint8_t* tile, const float (&sc)[32], const float (&f)[2],
                                        const Rows& rw) {
#pragma unroll
  for (int j = 0; j < 8; ++j) {
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      const int r = rw.r0 + 8 * i, col = 8 * j + rw.cq;
      *reinterpret_cast<uint32_t*>(tile + sw128_offset(r, col * 2)) =
          pack2<Elem>(sc[4 * j + 2 * i] * f[i], sc[4 * j + 2 * i + 1] * f[i]);
    }
  }
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

template <int kChunks, bool kFp16>
__global__ void __launch_bounds__(kThreads, 1)
    dense_decode_kernel(const __grid_constant__ CUtensorMap kmap, const DenseDecodeKernelParams p) {
  using Elem = std::conditional_t<kFp16, __half, __nv_bfloat16>;
  using L = Smem<kChunks>;
  extern __shared__ uint8_t smem_raw[];
  uint8_t* smem =
      reinterpret_cast<uint8_t*>((reinterpret_cast<uintptr_t>(smem_raw) + 1023) & ~uintptr_t(1023));
  uint64_t* full = reinterpret_cast<uint64_t*>(smem + L::kBars);  // [2][9]
  uint64_t* empty_own = full + 18;                                 // [2]: owner's V half
  uint64_t* empty_oth = full + 20;                                 // [2]: other half + RoPE
  float* s_m0 = reinterpret_cast<float*>(smem + L::kM0);
  float* s_m1 = reinterpret_cast<float*>(smem + L::kM1);
  float* s_sum = reinterpret_cast<float*>(smem + L::kSum);

  const int m_block = blockIdx.x, hk = blockIdx.y, part = blockIdx.z;
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;

  if (tid == 0) {
    for (int i = 0; i < 18; ++i) mbar_init(&full[i], 1);
    for (int i = 0; i < 4; ++i) mbar_init(&empty_own[i], 4);  // one arrival per releasing warp
    mbar_fence_init();
  }
  __syncthreads();

  if (warp >= 8) {
    // ------------------------------- producers -------------------------------
    asm volatile("setmaxnreg.dec.sync.aligned.u32 40;\n" ::: "memory");
    if (warp > 9) return;
    const int stage = warp - 8;
    if (lane == 0) tma_prefetch_desc(&kmap);
    const int box = p.box_tokens;
    int fills = 0;
    for_each_segment(p, part, [&](const Segment& s) {
      const int32_t* bt = p.block_table + static_cast<int64_t>(s.req) * p.bt_stride;
      for (int blk = s.blk_lo + stage; blk < s.blk_hi; blk += 2, ++fills) {
        const int tok0 = blk * 64;
        const int valid = min(64, s.len - tok0);
        const int nbox = (valid + box - 1) / box;
        uint8_t* dst = smem + L::kK + stage * L::kStage;
#pragma unroll 1
        for (int i = 0; i < kChunks; ++i) {
          const int c = chunk_at(stage, i);
          if (fills > 0 && (i == 0 || i == 4))
            mbar_wait(i == 0 ? &empty_own[stage] : &empty_oth[stage], (fills - 1) & 1);
          uint64_t* bar = &full[stage * 9 + c];
          if (lane == 0) mbar_arrive_expect_tx(bar, static_cast<uint32_t>(nbox * box * 128));
          __syncwarp();
#pragma unroll 1
          for (int j = lane; j < nbox; j += 32) {
            const int t = tok0 + j * box;
            // Only entries of tokens < len are read; an index past the table, or a page out of
            // range, becomes an out-of-bounds TMA box, which the copy engine fills with zeros.
            const int page_idx = t / p.page_size;
            const int page = page_idx < p.max_pages ? bt[page_idx] : -1;
            tma_load_4d(dst + c * kChunkBytes + j * box * 128, &kmap, bar, c * 64, hk,
                        t % p.page_size, page);
          }
        }
      }
    });
    return;
  }

  // ------------------------------- consumers -------------------------------
  asm volatile("setmaxnreg.inc.sync.aligned.u32 232;\n" ::: "memory");
  // Warpgroup index broadcast from lane 0: ptxas then knows the wgmma branches below are uniform.
  const int wg = __shfl_sync(0xffffffff, warp / 4, 0);
  const int wl = tid % 128;  // thread within warpgroup
  Rows rw;
  rw.r0 = (wl / 32) * 16 + lane / 4;
  rw.cq = 2 * (lane % 4);
  const uint32_t s_q_addr = smem_addr(smem + L::kQ);
  const uint32_t s_k_addr = smem_addr(smem + L::kK);
  const float sl2 = p.scale_log2;
  auto k_desc = [&](int stage, int c, int kk) {  // S operand B: K rows, K-major
    return make_desc_sw128(s_k_addr + stage * L::kStage + c * kChunkBytes + kk * 32, 16, 1024);
  };
  auto v_desc = [&](int stage, int half, int kk) {  // P V operand B: V, MN-major, 256 columns
    return make_desc_sw128(s_k_addr + stage * L::kStage + half * 4 * kChunkBytes + kk * 16 * 128,
                           kChunkBytes, 1024);
  };
  auto p_desc = [&](int stage, int kk) {
    return make_desc_sw128(smem_addr(smem + L::p_tile(stage)) + kk * 32, 16, 1024);
  };
  // S = Q K^T of the block in `stage` (all 64 tokens), chunks in load order.
  auto compute_s = [&](float(&sc)[32], int stage, uint32_t parity) {
    wgmma_fence();
#pragma unroll
    for (int i = 0; i < kChunks; ++i) {
      const int c = chunk_at(stage, i);
      mbar_wait(&full[stage * 9 + c], parity);
#pragma unroll
      for (int kk = 0; kk < 4; ++kk)
        mma_s<kFp16>(sc, make_desc_sw128(s_q_addr + c * kChunkBytes + kk * 32, 16, 1024),
                     k_desc(stage, c, kk), (i | kk) != 0);
    }
    wgmma_commit();
    wgmma_wait<0>();
    fence_regs(sc);
  };

  int fills0 = 0, fills1 = 0;
  for_each_segment(p, part, [&](const Segment& s) {
    // ---- Q tile: rows (s, g) of this KV head, zero-padded to 64, into swizzled chunks ----
    {
      const Elem* q = static_cast<const Elem*>(p.q);
      constexpr int kUnitsPerRow = kChunks * 8;  // 16-byte units
      for (int u = tid; u < 64 * kUnitsPerRow; u += kConsumerThreads) {
        const int r = u / kUnitsPerRow, cu = u % kUnitsPerRow;
        const int rg = m_block * 64 + r;
        uint4 v = make_uint4(0, 0, 0, 0);
        if (rg < p.rows) {
          const int sq = rg / p.group, h = hk * p.group + rg % p.group;
          const Elem* src =
              q + s.req * p.q_stride_b + sq * p.q_stride_s + h * p.q_stride_h + cu * 8;
          v = *reinterpret_cast<const uint4*>(src);
        }
        const int chunk = cu / 8, unit = cu % 8;
        *reinterpret_cast<uint4*>(smem + L::kQ + chunk * kChunkBytes + r * 128 +
                                  ((unit ^ (r & 7)) << 4)) = v;
      }
      fence_proxy_async();
      named_barrier(kBarConsumers, kConsumerThreads);
    }

    // Per-row token limits (exclusive) for rows r0 and r0 + 8.
    int limit[2];
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      const int rg = m_block * 64 + rw.r0 + 8 * i;
      int lim = s.len;
      if (p.causal && rg < p.rows) lim = min(s.len, max(0, s.len - p.s_q + rg / p.group + 1));
      limit[i] = lim;
    }

    float o[128];
#pragma unroll
    for (int i = 0; i < 128; ++i) o[i] = 0.0f;
    float m[2] = {-INFINITY, -INFINITY};  // running max (raw scores), the same in both warpgroups
    float l[2] = {0.0f, 0.0f};            // this warpgroup's share of the row sums, at max m

    for (int blk = s.blk_lo; blk < s.blk_hi; blk += 2) {
      const bool has1 = blk + 1 < s.blk_hi;
      const uint32_t par0 = fills0 & 1, par1 = fills1 & 1;
      float sc[32];
      uint32_t pa[16];
      float mx[2], rs[2], m0[2], m1[2], f0[2], f1[2];
      if (wg == 0) {
        // ===== warpgroup 0: block b0 (stage 0) =====
        const int tok0 = blk * 64;
        compute_s(sc, 0, par0);
        mask_rowmax(sc, rw, tok0, limit, mx);
#pragma unroll
        for (int i = 0; i < 2; ++i) m0[i] = fmaxf(m[i], mx[i]);
        if (lane % 4 == 0) {
          s_m0[rw.r0] = m0[0];
          s_m0[rw.r0 + 8] = m0[1];
        }
        named_barrier_arrive(kBarM0, kConsumerThreads);
        exponentiate(sc, m0, sl2, rs);
#pragma unroll
        for (int i = 0; i < 2; ++i) {
          f0[i] = rescale(m[i], m0[i], sl2);
          l[i] = l[i] * f0[i] + rs[i];
        }
        pack_a<Elem>(sc, pa);
        scale_o(o, f0);
        const int valid0 = min(64, s.len - tok0);
        if (valid0 < 64) {
          zero_v_tail(smem + L::kK, valid0, wl);
          named_barrier(kBarWg0, 128);
        }
        // O_L += P0 V0_L, P0 from registers
        wgmma_fence();
#pragma unroll
        for (int kk = 0; kk < 4; ++kk) {
          const uint32_t(&a)[4] = *reinterpret_cast<const uint32_t(*)[4]>(&pa[4 * kk]);
          mma_pv_rs<kFp16>(o, a, v_desc(0, 0, kk));
        }
        wgmma_commit();
        // wait for m1 (and P1), hand P0 (scaled to m1) to warpgroup 1
        named_barrier(kBarM1, kConsumerThreads);
#pragma unroll
        for (int i = 0; i < 2; ++i) {
          m1[i] = s_m1[rw.r0 + 8 * i];
          f1[i] = rescale(m0[i], m1[i], sl2);
          l[i] *= f1[i];
          m[i] = m1[i];
        }
        store_p<Elem>(smem + L::p_tile(0), sc, f1, rw);
        fence_proxy_async();
        named_barrier_arrive(kBarP0, kConsumerThreads);
        wgmma_wait<0>();
        fence_regs(o);
        fence_regs(pa);
        if (lane == 0) mbar_arrive(&empty_own[0]);
        if (has1) {
          // O_L = O_L * e^(m0 - m1) + P1 V1_L
          scale_o(o, f1);
#pragma unroll
          for (int c = 0; c < 4; ++c) mbar_wait(&full[9 + c], par1);
          wgmma_fence();
#pragma unroll
          for (int kk = 0; kk < 4; ++kk) mma_pv<kFp16>(o, p_desc(1, kk), v_desc(1, 0, kk));
          wgmma_commit();
          wgmma_wait<0>();
          fence_regs(o);
          if (lane == 0) mbar_arrive(&empty_oth[1]);
        }
      } else {
        // ===== warpgroup 1: block b1 (stage 1), if any =====
        const int tok1 = (blk + 1) * 64;
        mx[0] = mx[1] = -INFINITY;
        if (has1) {
          compute_s(sc, 1, par1);
          mask_rowmax(sc, rw, tok1, limit, mx);
        }
        named_barrier(kBarM0, kConsumerThreads);
#pragma unroll
        for (int i = 0; i < 2; ++i) {
          m0[i] = s_m0[rw.r0 + 8 * i];
          m1[i] = fmaxf(m0[i], mx[i]);
          f0[i] = rescale(m[i], m0[i], sl2) * rescale(m0[i], m1[i], sl2);  // e^(m - m1)
          m[i] = m1[i];
        }
        if (lane % 4 == 0) {
          s_m1[rw.r0] = m1[0];
          s_m1[rw.r0 + 8] = m1[1];
        }
        rs[0] = rs[1] = 0.0f;
#pragma unroll
        for (int k = 0; k < 16; ++k) pa[k] = 0u;
        const int valid1 = min(64, s.len - tok1);
        if (has1) {
          exponentiate(sc, m1, sl2, rs);
          const float one[2] = {1.0f, 1.0f};
          store_p<Elem>(smem + L::p_tile(1), sc, one, rw);
          pack_a<Elem>(sc, pa);
          if (valid1 < 64) zero_v_tail(smem + L::kK + L::kStage, valid1, wl);
          fence_proxy_async();
        }
        named_barrier_arrive(kBarM1, kConsumerThreads);
#pragma unroll
        for (int i = 0; i < 2; ++i) l[i] = l[i] * f0[i] + rs[i];
        scale_o(o, f0);
        if (has1) {
          if (valid1 < 64) named_barrier(kBarWg1, 128);
          // O_R += P1 V1_R, P1 from registers
          wgmma_fence();
#pragma unroll
          for (int kk = 0; kk < 4; ++kk) {
            const uint32_t(&a)[4] = *reinterpret_cast<const uint32_t(*)[4]>(&pa[4 * kk]);
            mma_pv_rs<kFp16>(o, a, v_desc(1, 1, kk));
          }
          wgmma_commit();
        }
        // O_R += P0' V0_R (P0 already scaled to m1 by warpgroup 0)
        named_barrier(kBarP0, kConsumerThreads);
#pragma unroll
        for (int c = 4; c < 8; ++c) mbar_wait(&full[c], par0);
        wgmma_fence();
#pragma unroll
        for (int kk = 0; kk < 4; ++kk) mma_pv<kFp16>(o, p_desc(0, kk), v_desc(0, 1, kk));
        wgmma_commit();
        wgmma_wait<0>();
        fence_regs(o);
        fence_regs(pa);
        if (lane == 0) {
          mbar_arrive(&empty_oth[0]);
          if (has1) mbar_arrive(&empty_own[1]);
        }
      }
      ++fills0;
      if (has1) ++fills1;
    }

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
    named_barrier(kBarConsumers, kConsumerThreads);
    const int nsplit = p.plan.num_splits[s.req];
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      const int r = rw.r0 + 8 * i, rg = m_block * 64 + r;
      const float lt = s_sum[r] + s_sum[64 + r];
      const bool empty_row = lt == 0.0f;
      const float inv = empty_row ? 0.0f : 1.0f / lt;
      const float lse = empty_row ? INFINITY : m[i] * p.scale + logf(lt);
      if (rg >= p.rows) continue;
      const int sq = rg / p.group, h = hk * p.group + rg % p.group;
      if (nsplit <= 1) {
        Elem* out = static_cast<Elem*>(p.out) + s.req * p.o_stride_b + sq * p.o_stride_s +
                    h * p.o_stride_h + wg * 256 + rw.cq;
#pragma unroll
        for (int j = 0; j < 32; ++j)
          *reinterpret_cast<uint32_t*>(out + 8 * j) =
              pack2<Elem>(o[4 * j + 2 * i] * inv, o[4 * j + 2 * i + 1] * inv);
        if (wg == 0 && lane % 4 == 0)
          p.lse[s.req * p.lse_stride_b + h * p.lse_stride_h + sq * p.lse_stride_s] = lse;
      } else {
        const int64_t slot =
            (static_cast<int64_t>(p.plan.accum_offset[s.req] + s.split) * p.h_kv + hk) * p.rows +
            rg;
        float* acc = p.plan.o_accum + slot * 512 + wg * 256 + rw.cq;
#pragma unroll
        for (int j = 0; j < 32; ++j)
          *reinterpret_cast<float2*>(acc + 8 * j) =
              make_float2(o[4 * j + 2 * i] * inv, o[4 * j + 2 * i + 1] * inv);
        if (wg == 0 && lane % 4 == 0) p.plan.lse_accum[slot] = empty_row ? -INFINITY : lse;
      }
    }
    // s_sum is rewritten by the next segment's epilogue only after its own barriers; the Q tile
    // is rewritten only after this barrier, when both warpgroups are done with all wgmma.
    named_barrier(kBarConsumers, kConsumerThreads);
  });
}

}  // namespace openmla::sm90::dense_decode_detail
