// Development probe (not built by CMake, session 18): do lines loaded with an L2 evict_last
// policy (no persisting-L2 set-aside) outlive other traffic, and can they be demoted afterwards?
// Per scenario, 20 rounds of: load X (24 MB) with a policy; optionally demote X (a bulk L2
// prefetch with an evict_first policy, or applypriority evict_normal per line); stream Y
// (512 MB) with plain loads; read X with plain loads (timed by events: L2 hits are fast). Then
// X (normal / evict_last / demoted) against a 40 MB buffer Z read twice, the second read timed.
//   nvcc -std=c++17 -O2 -arch=sm_90a -o l2prio_probe scripts/dev/l2prio_probe.cu && ./l2prio_probe
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <vector>

#include "probe_read.cuh"

__device__ uint64_t make_policy(int kind) {
  uint64_t p;
  if (kind == 0)
    asm volatile("createpolicy.fractional.L2::evict_normal.b64 %0, 1.0;" : "=l"(p));
  else if (kind == 1)
    asm volatile("createpolicy.fractional.L2::evict_last.b64 %0, 1.0;" : "=l"(p));
  else
    asm volatile("createpolicy.fractional.L2::evict_first.b64 %0, 1.0;" : "=l"(p));
  return p;
}

__global__ void load_x(const uint4* x, size_t n, int kind, unsigned* sink) {
  const uint64_t pol = make_policy(kind);
  unsigned acc = 0;
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n;
       i += size_t(gridDim.x) * blockDim.x) {
    uint4 v;
    asm volatile("ld.global.L2::cache_hint.v4.u32 {%0,%1,%2,%3}, [%4], %5;"
                 : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
                 : "l"(x + i), "l"(pol));
    acc ^= v.x ^ v.w;
  }
  if (acc == 0x12345678) *sink = acc;
}

// Demotion: mode 1 = bulk prefetch with an evict_first policy (4 KB per request); mode 2 =
// applypriority evict_normal per 128-byte line.
__global__ void demote_x(const char* x, size_t bytes, int mode) {
  const uint64_t pol = make_policy(2);
  if (mode == 1) {
    for (size_t off = (blockIdx.x * size_t(blockDim.x) + threadIdx.x) * 4096; off < bytes;
         off += size_t(gridDim.x) * blockDim.x * 4096)
      asm volatile("cp.async.bulk.prefetch.L2.global.L2::cache_hint [%0], 4096, %1;" ::"l"(x + off),
                   "l"(pol)
                   : "memory");
  } else {
    for (size_t off = (blockIdx.x * size_t(blockDim.x) + threadIdx.x) * 128; off < bytes;
         off += size_t(gridDim.x) * blockDim.x * 128)
      asm volatile("applypriority.global.L2::evict_normal [%0], 128;" ::"l"(x + off) : "memory");
  }
}

int main() {
  const size_t xb = size_t(24) << 20, yb = size_t(512) << 20;
  uint4 *x, *y;
  unsigned* sink;
  cudaMalloc(&x, xb);
  cudaMalloc(&y, yb);
  cudaMalloc(&sink, 4);
  cudaMemset(x, 1, xb);
  cudaMemset(y, 2, yb);
  const int grid = 132 * 8, block = 256;
  cudaEvent_t a, b;
  cudaEventCreate(&a);
  cudaEventCreate(&b);
  struct Sc {
    const char* name;
    int kind, demote, stream;
  };
  const Sc scs[] = {{"X normal, no Y (L2-resident reference)", 0, 0, 0},
                    {"X normal, then Y", 0, 0, 1},
                    {"X evict_first, then Y", 2, 0, 1},
                    {"X evict_last, then Y", 1, 0, 1},
                    {"X evict_last, bulk prefetch evict_first, then Y", 1, 1, 1},
                    {"X evict_last, applypriority evict_normal, then Y", 1, 2, 1},
                    {"X evict_last, no Y", 1, 0, 0}};
  // Median event time of read_all over `buf` after setup(), `reps` rounds (the first dropped).
  auto timed_read = [&](int reps, const uint4* buf, size_t bytes, const auto& setup) {
    std::vector<float> t;
    for (int r = 0; r < reps; ++r) {
      read_all<<<grid, block>>>(y, yb / 16, sink);  // X out of L2 first: plain loads of Y
      setup();
      cudaEventRecord(a);
      read_all<<<grid, block>>>(buf, bytes / 16, sink);
      cudaEventRecord(b);
      cudaEventSynchronize(b);
      float ms;
      cudaEventElapsedTime(&ms, a, b);
      if (r > 0) t.push_back(ms * 1000);
    }
    std::sort(t.begin(), t.end());
    return t[t.size() / 2];
  };
  auto load_and_demote = [&](int kind, int demote) {
    load_x<<<grid, block>>>(x, xb / 16, kind, sink);
    if (demote) demote_x<<<132, 256>>>(reinterpret_cast<const char*>(x), xb, demote);
  };
  for (const Sc& sc : scs)
    printf("%-52s read X: %6.1f us\n", sc.name, timed_read(21, x, xb, [&] {
             load_and_demote(sc.kind, sc.demote);
             if (sc.stream) read_all<<<grid, block>>>(y, yb / 16, sink);
           }));
  // Does X still hold L2 against a later working set that fits, Z = 40 MB read twice with
  // plain loads (the second read timed)?
  uint4* z;
  const size_t zb = size_t(40) << 20;
  cudaMalloc(&z, zb);
  cudaMemset(z, 3, zb);
  const char* names[] = {"normal", "evict_last", "evict_last + bulk prefetch evict_first",
                         "evict_last + applypriority evict_normal"};
  for (int mode : {0, 1, 2, 3})
    printf("X %-40s before, Z (40 MB) second read: %6.1f us\n", names[mode],
           timed_read(11, z, zb, [&] {
             load_and_demote(mode == 0 ? 0 : 1, mode >= 2 ? mode - 1 : 0);
             read_all<<<grid, block>>>(z, zb / 16, sink);
           }));
  printf("%s\n", cudaGetErrorString(cudaGetLastError()));
  return 0;
}
