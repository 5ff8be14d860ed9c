// Development probe (not built by CMake): the GPU-time floor of a single-launch split-KV decode
// call at b=1, h_q=128, d_qk=576, s_k=4096 (64 blocks of 64 tokens, pages of 64), without the
// attention math. 128 CTAs (64 pieces x 2 m blocks of 64 query rows, one CTA per SM) each do
// what such a kernel cannot avoid:
//   chain : thread 0 loads the request's length, then its block's page from the block table,
//           then bulk-copies that K page (72 KB) into shared memory; the Q tile (72 KB) is copied
//           at the start alongside;
//   store : + the piece's 64 x 512 fp32 partial (128 KB) and 64 lse values, made from the K tile;
//   barrier: + a grid barrier (one atomic per CTA, thread 0 spins on the count);
//   full  : + the combine: CTA r merges query row r over the 64 pieces (weights from the lse,
//           64 x 2 KB of partial rows read through L2, all of a thread's loads in flight) and
//           writes the bf16 output row.
// The store, barrier and full variants also run with bf16 partials (half the bytes).
// Timed two ways: back to back (200 launches, events around them: GPU time per call, launch
// overhead hidden) and eager (event, one launch, event, after a 1 ms idle: what an eager call
// costs on this host), each against an empty kernel. Inputs rotate over 24 sets (~120 MB, more
// than L2) so that K, Q and the metadata come from DRAM; `hot` keeps the length and block table
// of set 0 (an engine writes them just before the call, so they sit in L2) and rotates K and Q.
// Build and run:
//   nvcc -std=c++17 -O3 -arch=sm_90a -o b1_floor_probe scripts/dev/b1_floor_probe.cu && ./b1_floor_probe
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <vector>

#define CK(x)                                                                  \
  do {                                                                         \
    cudaError_t e_ = (x);                                                      \
    if (e_ != cudaSuccess) {                                                   \
      std::printf("%s:%d %s\n", __FILE__, __LINE__, cudaGetErrorString(e_)); \
      std::exit(1);                                                            \
    }                                                                          \
  } while (0)

constexpr int kThreads = 256;
constexpr int kPieces = 64, kMBlocks = 2, kRows = 64, kDv = 512, kDqk = 576;
constexpr int kTileBytes = 64 * kDqk * 2;  // 73728: one K page or one Q tile
constexpr int kSets = 24;
constexpr int kGrid = kPieces * kMBlocks;

struct Set {
  const int* seqlens;
  const int* block_table;  // [kPieces]
  const __nv_bfloat16* k;  // [kPieces pages][64][576]
  const __nv_bfloat16* q;  // [128][576]
  __nv_bfloat16* out;      // [128][512]
};

__device__ __forceinline__ unsigned smem_u32(const void* p) {
  return static_cast<unsigned>(__cvta_generic_to_shared(p));
}
__device__ __forceinline__ void bulk_load(void* dst, const void* src, unsigned bytes,
                                          unsigned long long* bar) {
  asm volatile(
      "cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];" ::
          "r"(smem_u32(dst)),
      "l"(src), "r"(bytes), "r"(smem_u32(bar))
      : "memory");
}
__device__ __forceinline__ void wait_bar(unsigned long long* bar) {
  asm volatile(
      "{\n.reg .pred p;\nW: mbarrier.try_wait.parity.shared::cta.b64 p, [%0], 0;\n@!p bra W;\n}" ::
          "r"(smem_u32(bar))
      : "memory");
}

// kMode 0: chain, 1: + store, 2: + grid barrier, 3: + combine. kBf16: partials stored and read
// as bf16 (half the bytes; timing only: the values are not meaningful).
template <int kMode, bool kBf16>
__global__ void __launch_bounds__(kThreads, 1)
    floor_kernel(Set s, float* partial, float* lse, unsigned* counter, unsigned target) {
  extern __shared__ __align__(1024) unsigned char sm[];
  unsigned long long* bar = reinterpret_cast<unsigned long long*>(sm + 2 * kTileBytes);
  float* red = reinterpret_cast<float*>(sm + 2 * kTileBytes + 64);
  const int cta = blockIdx.x, piece = cta / kMBlocks, m = cta % kMBlocks, t = threadIdx.x;
  if (t == 0) {
    asm volatile("mbarrier.init.shared::cta.b64 [%0], 1;" ::"r"(smem_u32(&bar[0])));
    asm volatile("mbarrier.init.shared::cta.b64 [%0], 1;" ::"r"(smem_u32(&bar[1])));
    asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(smem_u32(&bar[1])),
                 "r"(kTileBytes));
    bulk_load(sm + kTileBytes, s.q + m * 64 * kDqk, kTileBytes, &bar[1]);
    const int len = s.seqlens[0];
    const int nblk = (len + 63) / 64;
    const int page = piece < nblk ? s.block_table[piece] : 0;
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(smem_u32(&bar[0])),
                 "r"(kTileBytes));
    bulk_load(sm, s.k + static_cast<size_t>(page) * 64 * kDqk, kTileBytes, &bar[0]);
  }
  __syncthreads();
  wait_bar(&bar[0]);
  wait_bar(&bar[1]);
  const float4* k4 = reinterpret_cast<const float4*>(sm);
  const float4* q4 = reinterpret_cast<const float4*>(sm + kTileBytes);
  if constexpr (kMode == 0) {
    if (t == 0) partial[cta] = k4[t].x + q4[t].y;  // depend on both tiles
    return;
  }
  // The partial: 64 rows x 512 fp32 (or bf16), coalesced (a warp writes 512 contiguous bytes per
  // store). Row pitch kRowBytes.
  constexpr int kRowBytes = kBf16 ? kDv * 2 : kDv * 4;
  char* part = reinterpret_cast<char*>(partial) +
               static_cast<size_t>(piece * kMBlocks + m) * kRows * kRowBytes;
  float4* part4 = reinterpret_cast<float4*>(part);
#pragma unroll 4
  for (int i = 0; i < kRows * kRowBytes / 16 / kThreads; ++i) {
    const int idx = i * kThreads + t;
    const float4 a = k4[idx % (kTileBytes / 16)], b = q4[idx % (kTileBytes / 16)];
    part4[idx] = make_float4(a.x * 1e-30f + b.y * 1e-30f, a.y * 1e-30f, a.z * 1e-30f, 1.0f);
  }
  if (t < kRows) lse[(piece * kMBlocks + m) * kRows + t] = 0.25f * (piece % 7) + 1e-30f * k4[t].x;
  if constexpr (kMode == 1) return;

  // Grid barrier: every piece's partial is visible before any CTA combines.
  __syncthreads();
  if (t == 0) {
    __threadfence();
    atomicAdd(counter, 1u);
    unsigned v;
    do {
      asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(v) : "l"(counter) : "memory");
    } while (static_cast<int>(v - target) < 0);
  }
  __syncthreads();
  if constexpr (kMode == 2) return;

  // Combine: CTA c merges query row c (m block c / 64, row c % 64) over the pieces.
  const int cm = cta / kRows, row = cta % kRows;
  float my_lse = -INFINITY;
  if (t < kPieces) my_lse = __ldcg(&lse[(t * kMBlocks + cm) * kRows + row]);
  float mx = my_lse;
  for (int o = 16; o > 0; o /= 2) mx = fmaxf(mx, __shfl_xor_sync(0xffffffff, mx, o));
  if (t % 32 == 0 && t < kPieces) red[t / 32] = mx;
  __syncthreads();
  mx = fmaxf(red[0], red[1]);
  float w = t < kPieces ? exp2f(my_lse - mx) : 0.0f;
  float sum = w;
  for (int o = 16; o > 0; o /= 2) sum += __shfl_xor_sync(0xffffffff, sum, o);
  __syncthreads();
  if (t % 32 == 0 && t < kPieces) red[t / 32] = sum;
  if (t < kPieces) red[8 + t] = w;
  __syncthreads();
  const float inv = 1.0f / (red[0] + red[1]);
  // Float4 columns of a row: 128 (fp32) or 64 (bf16, 8 values each); kGroups thread groups take
  // every kGroups-th piece, all loads of a thread in flight.
  constexpr int kCols4 = kRowBytes / 16, kGroups = kThreads / kCols4;
  const int c4 = t % kCols4, grp = t / kCols4;
  float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  const char* rows = reinterpret_cast<const char*>(partial) + static_cast<size_t>(row) * kRowBytes;
  float4 v[kPieces / kGroups];
#pragma unroll
  for (int k = 0; k < kPieces / kGroups; ++k) {
    const int p = grp + k * kGroups;
    v[k] = __ldcg(reinterpret_cast<const float4*>(
                      rows + static_cast<size_t>(p * kMBlocks + cm) * kRows * kRowBytes) +
                  c4);
  }
#pragma unroll
  for (int k = 0; k < kPieces / kGroups; ++k) {
    const float wp = red[8 + grp + k * kGroups];
    if constexpr (kBf16) {
      const __nv_bfloat162* h = reinterpret_cast<const __nv_bfloat162*>(&v[k]);
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const float2 f = __bfloat1622float2(h[j]);
        acc[2 * j] += wp * f.x;
        acc[2 * j + 1] += wp * f.y;
      }
    } else {
      acc[0] += wp * v[k].x;
      acc[1] += wp * v[k].y;
      acc[2] += wp * v[k].z;
      acc[3] += wp * v[k].w;
    }
  }
  constexpr int kVals = kBf16 ? 8 : 4;
  float* red_acc = red + 128;  // [kGroups][kCols4 * kVals] = 512 floats x kGroups
  __syncthreads();
#pragma unroll
  for (int j = 0; j < kVals; ++j) red_acc[grp * 512 + c4 * kVals + j] = acc[j];
  __syncthreads();
  if (t < 128) {  // thread t writes output columns 4t .. 4t + 3
    float o[4] = {0, 0, 0, 0};
    for (int g = 0; g < kGroups; ++g)
      for (int j = 0; j < 4; ++j) o[j] += red_acc[g * 512 + 4 * t + j];
    __nv_bfloat16* dst = s.out + static_cast<size_t>(cta) * kDv + 4 * t;
    for (int j = 0; j < 4; ++j) dst[j] = __float2bfloat16(o[j] * inv);
  }
}

__global__ void empty_kernel() {}

int main() {
  CK(cudaSetDevice(0));
  // Tiles, barriers, reductions (up to 4 groups x 512 floats).
  const size_t smem = 2 * kTileBytes + 64 + (128 + 4 * 512) * 4;
  using Kernel = void (*)(Set, float*, float*, unsigned*, unsigned);
  const Kernel kernels[2][4] = {
      {floor_kernel<0, false>, floor_kernel<1, false>, floor_kernel<2, false>,
       floor_kernel<3, false>},
      {floor_kernel<0, true>, floor_kernel<1, true>, floor_kernel<2, true>, floor_kernel<3, true>}};
  for (auto& row : kernels)
    for (Kernel k : row)
      CK(cudaFuncSetAttribute(k, cudaFuncAttributeMaxDynamicSharedMemorySize,
                              static_cast<int>(smem)));
  std::vector<Set> sets(kSets);
  for (int i = 0; i < kSets; ++i) {
    int *sl, *bt;
    __nv_bfloat16 *k, *q, *o;
    CK(cudaMalloc(&sl, 256));
    CK(cudaMalloc(&bt, kPieces * 4));
    CK(cudaMalloc(&k, static_cast<size_t>(kPieces) * kTileBytes));
    CK(cudaMalloc(&q, 2 * kTileBytes));
    CK(cudaMalloc(&o, 128 * kDv * 2));
    const int len = 4096;
    CK(cudaMemcpy(sl, &len, 4, cudaMemcpyHostToDevice));
    std::vector<int> pages(kPieces);
    for (int p = 0; p < kPieces; ++p) pages[p] = (p * 37 + i) % kPieces;  // scattered pages
    CK(cudaMemcpy(bt, pages.data(), kPieces * 4, cudaMemcpyHostToDevice));
    CK(cudaMemset(k, 0x3c, static_cast<size_t>(kPieces) * kTileBytes));
    CK(cudaMemset(q, 0x3c, 2 * kTileBytes));
    sets[i] = {sl, bt, k, q, o};
  }
  float *partial, *lse;
  unsigned* counter;
  CK(cudaMalloc(&partial, static_cast<size_t>(kGrid) * kRows * kDv * 4));
  CK(cudaMalloc(&lse, kGrid * kRows * 4));
  CK(cudaMalloc(&counter, 4));
  CK(cudaMemset(counter, 0, 4));
  unsigned barrier_launches = 0;  // launches that arrive at the grid barrier (modes 2, 3)
  cudaStream_t st;
  CK(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
  cudaEvent_t e0, e1;
  CK(cudaEventCreate(&e0));
  CK(cudaEventCreate(&e1));
  auto set_for = [&](int i, bool hot) {
    Set s = sets[i % kSets];
    if (hot) {
      s.seqlens = sets[0].seqlens;
      s.block_table = sets[0].block_table;
    }
    return s;
  };
  int bf16 = 0;
  auto launch = [&](int mode, int i, bool hot) {
    if (mode < 0) {
      empty_kernel<<<1, 32, 0, st>>>();
      return;
    }
    if (mode >= 2) ++barrier_launches;
    kernels[bf16][mode]<<<kGrid, kThreads, smem, st>>>(set_for(i, hot), partial, lse, counter,
                                                       barrier_launches * kGrid);
  };
  const char* names[] = {"empty kernel", "chain", "+ store", "+ store, barrier",
                         "full (+ combine)"};
  std::printf("%-20s %-9s %-5s %15s %17s\n", "variant", "partials", "meta", "back-to-back us",
              "eager us (median)");
  for (int mode = -1; mode <= 3; ++mode) {
    for (int combo = 0; combo < (mode < 0 ? 1 : mode == 0 ? 2 : 4); ++combo) {
      const int hot = combo % 2;
      bf16 = combo / 2;
      for (int i = 0; i < 50; ++i) launch(mode, i, hot);  // warm-up
      CK(cudaStreamSynchronize(st));
      const int n = 200;
      CK(cudaEventRecord(e0, st));
      for (int i = 0; i < n; ++i) launch(mode, i, hot);
      CK(cudaEventRecord(e1, st));
      CK(cudaEventSynchronize(e1));
      float ms = 0;
      CK(cudaEventElapsedTime(&ms, e0, e1));
      const float b2b = ms * 1000 / n;
      std::vector<float> eager;
      for (int i = 0; i < 40; ++i) {
        CK(cudaStreamSynchronize(st));
        const auto until = clock() + CLOCKS_PER_SEC / 1000;  // ~1 ms idle
        while (clock() < until) {
        }
        CK(cudaEventRecord(e0, st));
        launch(mode, i, hot);
        CK(cudaEventRecord(e1, st));
        CK(cudaEventSynchronize(e1));
        CK(cudaEventElapsedTime(&ms, e0, e1));
        eager.push_back(ms * 1000);
      }
      std::sort(eager.begin(), eager.end());
      std::printf("%-20s %-9s %-5s %15.2f %17.2f\n", names[mode + 1],
                  mode < 1 ? "-" : bf16 ? "bf16" : "fp32", mode < 0 ? "-" : hot ? "hot" : "cold",
                  b2b, eager[eager.size() / 2]);
    }
  }
  CK(cudaGetLastError());
  CK(cudaDeviceSynchronize());
  return 0;
}
