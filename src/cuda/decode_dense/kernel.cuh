// Dense MLA decode kernel for sm_90a: one CTA per (64 query rows, KV head, schedule part).
//
// Warp roles (384 threads): warps 0-3 = warpgroup 0, warps 4-7 = warpgroup 1 (consumers), warp 8 =
// producer (TMA; warps 9-11 only give their registers away: setmaxnreg works per warpgroup). Per
// 64-token KV block: each consumer warpgroup computes S = Q K^T for its 32 tokens (wgmma m64n32k16,
// Q and K from shared memory), the two exchange row maxima through shared memory (online softmax),
// write P (bf16/fp16) to shared memory, then each computes its half of O += P V (wgmma m64n256k16;
// V is the first 512 dims of the same K tile, read MN-major). K tiles are double-buffered;
// full/empty mbarriers hand them between producer and consumers.
#pragma once

#include <cuda.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "cuda/common/ptx.cuh"
#include "cuda/common/wgmma_gen.cuh"
#include "cuda/params.h"

namespace openmla::sm90::dense_decode_detail {

// Phase timers for development builds (-DOPENMLA_DECODE_PROFILE): thread 0 of CTA (0, 0, 0) sums
// clock64 cycles per phase and prints them once per launch; compiled out otherwise.
#if defined(OPENMLA_DECODE_PROFILE)
#define OPENMLA_PROF_DECL(p) long long p[7] = {0, 0, 0, 0, 0, 0, 0}
#define OPENMLA_PROF(t) const long long t = clock64()
#define OPENMLA_PROF_ADD(acc, a, b) acc += (b) - (a)
#define OPENMLA_PROF_COUNT(acc) ++acc
#define OPENMLA_PROF_PRINT(p, t0, t1)                                                           \
  if (threadIdx.x == 0 && blockIdx.x == 0 && blockIdx.y == 0 && blockIdx.z == 0)                \
  printf(                                                                                       \
      "decode-prof blocks %lld cycles %lld | wait_full %lld  S+mask+max %lld  barrier_A %lld  " \
      "softmax+P %lld  barrier_B %lld  PV %lld\n",                                              \
      p[6], (t1) - (t0), p[0], p[1], p[2], p[3], p[4], p[5])
#else
#define OPENMLA_PROF_DECL(p)
#define OPENMLA_PROF(t)
#define OPENMLA_PROF_ADD(acc, a, b)
#define OPENMLA_PROF_COUNT(acc)
#define OPENMLA_PROF_PRINT(p, t0, t1)
#endif

inline constexpr int kThreads = 384;  // 2 consumer warpgroups + 1 producer warpgroup
inline constexpr int kConsumerThreads = 256;
inline constexpr int kChunkBytes = 64 * 128;  // 64 rows x 64 elements x 2 bytes, one swizzle tile
inline constexpr int kBarConsumers = 1;       // named barrier id for the 256 consumer threads

template <int kChunks>
struct Smem {
  static constexpr int kQ = 0;
  static constexpr int kK = kChunks * kChunkBytes;
  static constexpr int kStage = kChunks * kChunkBytes;
  static constexpr int kP = kK + 2 * kStage;
  static constexpr int kRedMax = kP + kChunkBytes;  // float [2][64]
  static constexpr int kRedSum = kRedMax + 512;     // float [2][64]
  static constexpr int kBars = kRedSum + 512;       // uint64 full[2], empty[2]
  static constexpr int kBytes = kBars + 64;
  static constexpr int kAlloc = kBytes + 1024;  // + alignment slack for the 1024-B atoms
};

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
__device__ __forceinline__ void mma_s(float (&d)[16], uint64_t a, uint64_t b, int scale_d) {
  if constexpr (kFp16)
    wgmma_m64n32k16_f16_ss(d, a, b, scale_d);
  else
    wgmma_m64n32k16_bf16_ss(d, a, b, scale_d);
}
template <bool kFp16>
__device__ __forceinline__ void mma_pv(float (&d)[128], uint64_t a, uint64_t b) {
  if constexpr (kFp16)
    wgmma_m64n256k16_f16_ss_tb(d, a, b, 1);
  else
    wgmma_m64n256k16_bf16_ss_tb(d, a, b, 1);
}

template <int kChunks, bool kFp16>
__global__ void __launch_bounds__(kThreads, 1)
    dense_decode_kernel(const __grid_constant__ CUtensorMap kmap, const DenseDecodeKernelParams p) {
  using Elem = std::conditional_t<kFp16, __half, __nv_bfloat16>;
  using L = Smem<kChunks>;
  extern __shared__ uint8_t smem_raw[];
  uint8_t* smem =
      reinterpret_cast<uint8_t*>((reinterpret_cast<uintptr_t>(smem_raw) + 1023) & ~uintptr_t(1023));
  uint64_t* full = reinterpret_cast<uint64_t*>(smem + L::kBars);
  uint64_t* empty = full + 2;
  float* red_max = reinterpret_cast<float*>(smem + L::kRedMax);
  float* red_sum = reinterpret_cast<float*>(smem + L::kRedSum);

  const int m_block = blockIdx.x, hk = blockIdx.y, part = blockIdx.z;
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;

  if (tid == 0) {
    mbar_init(&full[0], 1);
    mbar_init(&full[1], 1);
    mbar_init(&empty[0], 8);  // one arrival per consumer warp
    mbar_init(&empty[1], 8);
    mbar_fence_init();
  }
  __syncthreads();

  if (warp >= 8) {
    // ------------------------------- producer -------------------------------
    asm volatile("setmaxnreg.dec.sync.aligned.u32 40;\n" ::: "memory");
    if (warp != 8) return;
    if (lane == 0) tma_prefetch_desc(&kmap);
    const int box = p.box_tokens;
    int it = 0;
    for_each_segment(p, part, [&](const Segment& s) {
      const int32_t* bt = p.block_table + static_cast<int64_t>(s.req) * p.bt_stride;
      for (int blk = s.blk_lo; blk < s.blk_hi; ++blk, ++it) {
        const int stage = it & 1;
        if (it >= 2) mbar_wait(&empty[stage], ((it >> 1) - 1) & 1);
        const int tok0 = blk * 64;
        const int valid = min(64, s.len - tok0);
        const int nbox = (valid + box - 1) / box;
        if (lane == 0)
          mbar_arrive_expect_tx(&full[stage], static_cast<uint32_t>(nbox * kChunks * box * 128));
        __syncwarp();
        uint8_t* dst = smem + L::kK + stage * L::kStage;
        for (int j = lane; j < nbox * kChunks; j += 32) {
          const int bi = j / kChunks, c = j % kChunks;
          const int t = tok0 + bi * box;
          // Only entries of tokens < len are read; an index past the table, or a page out of
          // range, becomes an out-of-bounds TMA box, which the copy engine fills with zeros.
          const int page_idx = t / p.page_size;
          const int page = page_idx < p.max_pages ? bt[page_idx] : -1;
          tma_load_4d(dst + c * kChunkBytes + bi * box * 128, &kmap, &full[stage], c * 64, hk,
                      t % p.page_size, page);
        }
      }
    });
  } else {
    // ------------------------------- consumers -------------------------------
    asm volatile("setmaxnreg.inc.sync.aligned.u32 232;\n" ::: "memory");
    const int wg = warp / 4;                   // 0 or 1
    const int wl = tid % 128;                  // thread within warpgroup
    const int r0 = (wl / 32) * 16 + lane / 4;  // local rows r0 and r0 + 8
    const int cq = 2 * (lane % 4);             // column pair base inside an 8-column group
    const uint32_t s_q_addr = smem_addr(smem + L::kQ);
    const uint32_t s_k_addr = smem_addr(smem + L::kK);
    const uint32_t s_p_addr = smem_addr(smem + L::kP);
    const float sl2 = p.scale_log2;

    int it = 0;
    OPENMLA_PROF_DECL(prof);
    OPENMLA_PROF(t_start);
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
        const int rg = m_block * 64 + r0 + 8 * i;
        int lim = s.len;
        if (p.causal && rg < p.rows) lim = min(s.len, max(0, s.len - p.s_q + rg / p.group + 1));
        limit[i] = lim;
      }

      float o[128];
#pragma unroll
      for (int i = 0; i < 128; ++i) o[i] = 0.0f;
      float row_max[2] = {-INFINITY, -INFINITY};
      float row_sum[2] = {0.0f, 0.0f};

      for (int blk = s.blk_lo; blk < s.blk_hi; ++blk, ++it) {
        const int stage = it & 1;
        OPENMLA_PROF(t_w0);
        mbar_wait(&full[stage], (it >> 1) & 1);
        OPENMLA_PROF(t_s0);
        OPENMLA_PROF_ADD(prof[0], t_w0, t_s0);
        OPENMLA_PROF_COUNT(prof[6]);
        const uint32_t k_base = s_k_addr + stage * L::kStage;

        // ---- S = Q K^T over this warpgroup's 32 tokens ----
        float sc[16];
        wgmma_fence();
#pragma unroll
        for (int c = 0; c < kChunks; ++c) {
#pragma unroll
          for (int kk = 0; kk < 4; ++kk) {
            const uint64_t da = make_desc_sw128(s_q_addr + c * kChunkBytes + kk * 32, 16, 1024);
            const uint64_t db =
                make_desc_sw128(k_base + c * kChunkBytes + wg * 32 * 128 + kk * 32, 16, 1024);
            mma_s<kFp16>(sc, da, db, (c | kk) != 0);
          }
        }
        wgmma_commit();
        wgmma_wait<0>();
        fence_regs(sc);

        // ---- mask, row max across both warpgroups ----
        const int tok0 = blk * 64;
        float mx[2] = {-INFINITY, -INFINITY};
#pragma unroll
        for (int j = 0; j < 4; ++j) {
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            const int i = e / 2;
            const int tok = tok0 + wg * 32 + 8 * j + cq + (e & 1);
            float v = sc[4 * j + e];
            v = tok < limit[i] ? v : -INFINITY;
            sc[4 * j + e] = v;
            mx[i] = fmaxf(mx[i], v);
          }
        }
#pragma unroll
        for (int i = 0; i < 2; ++i) {
          mx[i] = fmaxf(mx[i], __shfl_xor_sync(0xffffffff, mx[i], 1));
          mx[i] = fmaxf(mx[i], __shfl_xor_sync(0xffffffff, mx[i], 2));
        }
        if (lane % 4 == 0) {
          red_max[wg * 64 + r0] = mx[0];
          red_max[wg * 64 + r0 + 8] = mx[1];
        }
        OPENMLA_PROF(t_a1);
        OPENMLA_PROF_ADD(prof[1], t_s0, t_a1);
        named_barrier(kBarConsumers, kConsumerThreads);
        OPENMLA_PROF(t_a2);
        OPENMLA_PROF_ADD(prof[2], t_a1, t_a2);
        float alpha[2], mbase[2];
#pragma unroll
        for (int i = 0; i < 2; ++i) {
          const int r = r0 + 8 * i;
          const float m_new = fmaxf(row_max[i], fmaxf(red_max[r], red_max[64 + r]));
          alpha[i] = m_new == -INFINITY ? 1.0f : exp2f((row_max[i] - m_new) * sl2);
          row_max[i] = m_new;
          mbase[i] = m_new == -INFINITY ? 0.0f : m_new * sl2;
        }

        // ---- P = exp2(S * scale_log2 - m), to shared memory as this warpgroup's 32 columns ----
#pragma unroll
        for (int j = 0; j < 4; ++j) {
#pragma unroll
          for (int i = 0; i < 2; ++i) {
            const float p0 = exp2f(sc[4 * j + 2 * i] * sl2 - mbase[i]);
            const float p1 = exp2f(sc[4 * j + 2 * i + 1] * sl2 - mbase[i]);
            row_sum[i] = row_sum[i] * (j == 0 ? alpha[i] : 1.0f) + p0 + p1;
            const int r = r0 + 8 * i, col = wg * 32 + 8 * j + cq;
            *reinterpret_cast<uint32_t*>(smem + L::kP + sw128_offset(r, col * 2)) =
                pack2<Elem>(p0, p1);
          }
        }
#pragma unroll
        for (int j = 0; j < 32; ++j) {
          o[4 * j + 0] *= alpha[0];
          o[4 * j + 1] *= alpha[0];
          o[4 * j + 2] *= alpha[1];
          o[4 * j + 3] *= alpha[1];
        }
        // Tokens past the end of the cache in this block: V rows must be finite zeros (P is 0
        // there, but 0 * NaN garbage would poison O). Each warpgroup clears its own 4 V chunks.
        const int valid = min(64, s.len - tok0);
        if (valid < 64) {
          const int n16 = (64 - valid) * 4 * 8;
          uint8_t* kst = smem + L::kK + stage * L::kStage;
          for (int u = wl; u < n16; u += 128) {
            const int row = valid + u / 32, chunk = wg * 4 + (u / 8) % 4, unit = u % 8;
            *reinterpret_cast<uint4*>(kst + chunk * kChunkBytes + row * 128 + (unit << 4)) =
                make_uint4(0, 0, 0, 0);
          }
        }
        fence_proxy_async();
        OPENMLA_PROF(t_b1);
        OPENMLA_PROF_ADD(prof[3], t_a2, t_b1);
        named_barrier(kBarConsumers, kConsumerThreads);
        OPENMLA_PROF(t_b2);
        OPENMLA_PROF_ADD(prof[4], t_b1, t_b2);

        // ---- O[:, 256 wg : 256 wg + 256] += P V ----
        fence_regs(o);
        wgmma_fence();
#pragma unroll
        for (int kk = 0; kk < 4; ++kk) {
          const uint64_t da = make_desc_sw128(s_p_addr + kk * 32, 16, 1024);
          const uint64_t db =
              make_desc_sw128(k_base + wg * 4 * kChunkBytes + kk * 16 * 128, kChunkBytes, 1024);
          mma_pv<kFp16>(o, da, db);
        }
        wgmma_commit();
        wgmma_wait<0>();
        fence_regs(o);
        if (lane == 0) mbar_arrive(&empty[stage]);
        OPENMLA_PROF(t_pv_end);
        OPENMLA_PROF_ADD(prof[5], t_b2, t_pv_end);
      }

      // ---- epilogue: total row sums across both warpgroups, normalize, store ----
#pragma unroll
      for (int i = 0; i < 2; ++i) {
        row_sum[i] += __shfl_xor_sync(0xffffffff, row_sum[i], 1);
        row_sum[i] += __shfl_xor_sync(0xffffffff, row_sum[i], 2);
      }
      if (lane % 4 == 0) {
        red_sum[wg * 64 + r0] = row_sum[0];
        red_sum[wg * 64 + r0 + 8] = row_sum[1];
      }
      named_barrier(kBarConsumers, kConsumerThreads);
      const int nsplit = p.plan.num_splits[s.req];
#pragma unroll
      for (int i = 0; i < 2; ++i) {
        const int r = r0 + 8 * i, rg = m_block * 64 + r;
        const float l = red_sum[r] + red_sum[64 + r];
        const bool empty_row = l == 0.0f;
        const float inv = empty_row ? 0.0f : 1.0f / l;
        const float lse = empty_row ? INFINITY : row_max[i] * p.scale + logf(l);
        if (rg >= p.rows) continue;
        const int sq = rg / p.group, h = hk * p.group + rg % p.group;
        if (nsplit <= 1) {
          Elem* out = static_cast<Elem*>(p.out) + s.req * p.o_stride_b + sq * p.o_stride_s +
                      h * p.o_stride_h + wg * 256 + cq;
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
          float* acc = p.plan.o_accum + slot * 512 + wg * 256 + cq;
#pragma unroll
          for (int j = 0; j < 32; ++j)
            *reinterpret_cast<float2*>(acc + 8 * j) =
                make_float2(o[4 * j + 2 * i] * inv, o[4 * j + 2 * i + 1] * inv);
          if (wg == 0 && lane % 4 == 0) p.plan.lse_accum[slot] = empty_row ? -INFINITY : lse;
        }
      }
      // red_sum is rewritten by the next segment's epilogue only after its own barriers; the Q
      // tile is rewritten only after this barrier, when both warpgroups are done with all wgmma.
      named_barrier(kBarConsumers, kConsumerThreads);
    });
    OPENMLA_PROF(t_end);
    OPENMLA_PROF_PRINT(prof, t_start, t_end);
  }
}

}  // namespace openmla::sm90::dense_decode_detail
