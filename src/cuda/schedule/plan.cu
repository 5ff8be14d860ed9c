// Split-KV planner (device-side, no host sync, fixed-size buffers: CUDA-graph safe) and the
// combine kernel that merges split requests by their lse.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <cmath>

#include "cuda/common/cuda_check.h"
#include "cuda/common/launch.h"
#include "cuda/common/ptx.cuh"
#include "cuda/schedule/plan.h"

namespace openmla::sm90 {

namespace {

// Cost of starting a piece of work (Q load, epilogue, a share of the combine), in KV blocks.
constexpr int kFixedCost = 3;

constexpr int kPlannerThreads = 256;
constexpr int kPlannerSmemBatch = 8192;  // requests whose block counts are staged in shared memory

// Block counts are staged in shared memory by all threads (the global loads are the slow part);
// the greedy cut itself is one thread's O(b + parts) loop over shared memory, which keeps the plan
// trivially deterministic.
__global__ void __launch_bounds__(kPlannerThreads)
    planner_kernel(const int32_t* __restrict__ seqlens, int64_t seqlens_stride, int batch,
                   int batch_invariant, PlanBuffers buf) {
  __shared__ int nblk_s[kPlannerSmemBatch];
  __shared__ long long partial[kPlannerThreads / 32];
  const bool staged = batch <= kPlannerSmemBatch;
  auto blocks_of = [&](int i) {
    if (staged) return nblk_s[i];
    return (max(0, seqlens[i * seqlens_stride]) + kBlockTokens - 1) / kBlockTokens;
  };
  long long local = 0;
  for (int i = threadIdx.x; i < batch; i += kPlannerThreads) {
    const int nb = (max(0, seqlens[i * seqlens_stride]) + kBlockTokens - 1) / kBlockTokens;
    if (staged) nblk_s[i] = nb;
    local += nb + kFixedCost;
  }
  for (int o = 16; o > 0; o /= 2) local += __shfl_xor_sync(0xffffffff, local, o);
  if (threadIdx.x % 32 == 0) partial[threadIdx.x / 32] = local;
  __syncthreads();
  if (threadIdx.x != 0) return;
  long long total = 0;
  for (int w = 0; w < kPlannerThreads / 32; ++w) total += partial[w];

  const int parts = buf.num_parts;
  if (batch_invariant) {
    // Requests are never cut: each is computed by one CTA per m-block, blocks in order, so its
    // bits do not depend on the rest of the batch. Request i goes to the part its cost midpoint
    // falls in, so parts stay within one request of the average and nothing piles up at the end.
    for (int p = 0; p < parts; ++p) {
      buf.meta[p * kPlanMetaInts + kBeginReq] = 0;
      buf.meta[p * kPlanMetaInts + kLastReq] = -1;  // empty
    }
    const long long per = max(1ll, (total + parts - 1) / parts);
    long long prefix = 0;
    for (int i = 0; i < batch; ++i) {
      const int nb = blocks_of(i);
      const long long c = nb + kFixedCost;
      const int p =
          static_cast<int>(min(static_cast<long long>(parts - 1), (prefix + c / 2) / per));
      int32_t* m = buf.meta + p * kPlanMetaInts;
      if (m[kLastReq] < 0) {
        m[kBeginReq] = i;
        m[kBeginBlk] = 0;
        m[kBeginSplit] = 0;
      }
      m[kLastReq] = i;
      m[kLastBlkEnd] = nb;
      buf.num_splits[i] = 1;
      buf.accum_offset[i] = 0;
      prefix += c;
    }
    return;
  }
  // Every piece pays the fixed cost, and cutting adds at most one piece per part: budgeting
  // total / parts + kFixedCost per part covers all the work, so the last part never overflows.
  const long long per_part = (total + parts - 1) / parts + kFixedCost;
  int i = 0, blk = 0, split = 0;
  int nblk = batch > 0 ? blocks_of(0) : 0;
  for (int p = 0; p < parts; ++p) {
    int32_t* m = buf.meta + p * kPlanMetaInts;
    m[kBeginReq] = i;
    m[kBeginBlk] = blk;
    m[kBeginSplit] = split;
    m[kLastReq] = i - 1;  // empty unless something is taken below
    m[kLastBlkEnd] = 0;
    long long cap = (p == parts - 1) ? (1ll << 62) : per_part;
    while (i < batch) {
      const int rem = nblk - blk;
      if (rem + kFixedCost <= cap) {  // the rest of request i fits: finish it here
        cap -= rem + kFixedCost;
        m[kLastReq] = i;
        m[kLastBlkEnd] = nblk;
        buf.num_splits[i] = split + 1;
        ++i;
        blk = 0;
        split = 0;
        if (i < batch) nblk = blocks_of(i);
        if (cap <= kFixedCost) break;
      } else {  // take what fits and continue request i in the next part
        const long long take = cap - kFixedCost;
        if (take >= 1) {
          m[kLastReq] = i;
          m[kLastBlkEnd] = blk + static_cast<int>(take);
          blk += static_cast<int>(take);
          ++split;
        }
        break;
      }
    }
  }
  // Accumulator slots, only for requests cut into several pieces.
  int slot = 0;
  for (int r = 0; r < batch; ++r) {
    buf.accum_offset[r] = slot;
    if (buf.num_splits[r] > 1) slot += buf.num_splits[r];
  }
}

// One CTA per (request, query row of a KV head, KV head); 128 threads x 4 dims. The partial lse
// values and their weights go through shared memory so the accumulation loop is just independent
// float4 loads (the first version walked them serially: 38 us for 64 pieces).
constexpr int kCombineThreads = 128;
constexpr int kMaxPieces = 1024;  // >= 2 * parts for any GPU this runs on (checked at launch)

__global__ void __launch_bounds__(kCombineThreads) combine_kernel(DenseDecodeKernelParams p) {
  const int req = blockIdx.x, row = blockIdx.y, hk = blockIdx.z;
  grid_dependency_wait();  // the attention kernel's partial results
  const int n = p.plan.num_splits[req];
  if (n <= 1) return;
  __shared__ float w_s[kMaxPieces];
  __shared__ float red[kCombineThreads / 32];
  const int base = p.plan.accum_offset[req];
  const int s = row / p.group, h = hk * p.group + row % p.group;
  auto slot_index = [&](int k) {
    return (static_cast<int64_t>(base + k) * p.h_kv + hk) * p.rows + row;
  };
  float mx = -INFINITY;
  for (int k = threadIdx.x; k < n; k += kCombineThreads) {
    const float l = p.plan.lse_accum[slot_index(k)];
    w_s[k] = l;
    mx = fmaxf(mx, l);
  }
  for (int o = 16; o > 0; o /= 2) mx = fmaxf(mx, __shfl_xor_sync(0xffffffff, mx, o));
  if (threadIdx.x % 32 == 0) red[threadIdx.x / 32] = mx;
  __syncthreads();
  mx = fmaxf(fmaxf(red[0], red[1]), fmaxf(red[2], red[3]));
  const bool empty = mx == -INFINITY;
  __syncthreads();
  float sum = 0.0f;
  for (int k = threadIdx.x; k < n; k += kCombineThreads) {
    const float e = empty ? 0.0f : expf(w_s[k] - mx);  // exp(-inf) = 0 for empty pieces
    w_s[k] = e;
    sum += e;
  }
  for (int o = 16; o > 0; o /= 2) sum += __shfl_xor_sync(0xffffffff, sum, o);
  if (threadIdx.x % 32 == 0) red[threadIdx.x / 32] = sum;
  __syncthreads();
  sum = red[0] + red[1] + red[2] + red[3];
  const float lse = empty ? INFINITY : mx + logf(sum);
  const float inv = empty ? 0.0f : 1.0f / sum;
  const int d0 = threadIdx.x * 4;
  float acc[4] = {0, 0, 0, 0};
  const float* o_base = p.plan.o_accum + slot_index(0) * 512 + d0;
  const int64_t piece_stride = static_cast<int64_t>(p.h_kv) * p.rows * 512;
#pragma unroll 4
  for (int k = 0; k < n; ++k) {
    const float w = w_s[k] * inv;
    const float4 v = *reinterpret_cast<const float4*>(o_base + k * piece_stride);
    if (w != 0.0f) {  // an empty piece's partial is 0 but skip it anyway (never NaN * 0)
      acc[0] += w * v.x;
      acc[1] += w * v.y;
      acc[2] += w * v.z;
      acc[3] += w * v.w;
    }
  }
  uint16_t* out =
      static_cast<uint16_t*>(p.out) + req * p.o_stride_b + s * p.o_stride_s + h * p.o_stride_h + d0;
  uint16_t bits[4];
#pragma unroll
  for (int c = 0; c < 4; ++c)
    bits[c] = p.fp16 ? __half_as_ushort(__float2half_rn(acc[c]))
                     : __bfloat16_as_ushort(__float2bfloat16_rn(acc[c]));
  uint2 packed;
  packed.x = bits[0] | (static_cast<uint32_t>(bits[1]) << 16);
  packed.y = bits[2] | (static_cast<uint32_t>(bits[3]) << 16);
  *reinterpret_cast<uint2*>(out) = packed;
  if (threadIdx.x == 0) p.lse[req * p.lse_stride_b + h * p.lse_stride_h + s * p.lse_stride_s] = lse;
}

}  // namespace

PlanState& plan_state(const DecodePlan& plan) {
  return *static_cast<PlanState*>(plan.impl()->workspace);
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
  if (2 * st->buf.num_parts > kMaxPieces)
    throw Error("config.num_sms", "more than " + std::to_string(kMaxPieces / 2) +
                                      " schedule parts are not supported");
  const size_t b = static_cast<size_t>(std::max(c.batch, 1));
  const size_t slot_rows = static_cast<size_t>(st->buf.accum_slots) * c.h_kv * st->rows;
  const size_t ints = st->buf.num_parts * kPlanMetaInts + 2 * b;
  const size_t bytes = ints * 4 + 256 + slot_rows * 4 + 256 + slot_rows * 512 * 4;
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
  off = align(off + b * 4);
  st->buf.lse_accum = reinterpret_cast<float*>(base + off);
  off = align(off + slot_rows * 4);
  st->buf.o_accum = reinterpret_cast<float*>(base + off);
  impl.workspace = st;
  impl.workspace_bytes = bytes;
}

void plan_destroy(DecodePlan::Impl& impl) {
  auto* st = static_cast<PlanState*>(impl.workspace);
  if (!st) return;
  cudaFree(st->buf.meta);  // the base of the one allocation; no throw from a destructor
  delete st;
  impl.workspace = nullptr;
}

void plan_update(DecodePlan::Impl& impl, const TensorView& cache_seqlens, Stream stream) {
  auto* st = static_cast<PlanState*>(impl.workspace);
  if (impl.config.sparse)
    throw Error("plan",
                "sparse decode plans are not implemented on CUDA yet (sparse decode issue)");
  if (impl.config.batch == 0) return;
  launch_pdl(false, planner_kernel, dim3(1), dim3(kPlannerThreads), 0, static_cast<cudaStream_t>(stream),
             static_cast<const int32_t*>(cache_seqlens.data), cache_seqlens.strides[0],
             impl.config.batch, impl.config.batch_invariant ? 1 : 0, st->buf);
  st->updated = true;
}

void launch_combine(const DenseDecodeKernelParams& p, cudaStream_t stream) {
  if (p.plan.num_parts <= 1) return;  // nothing is ever split
  dim3 grid(p.batch, p.rows, p.h_kv);
  launch_pdl(true, combine_kernel, grid, dim3(kCombineThreads), 0, stream, p);
}

}  // namespace openmla::sm90
