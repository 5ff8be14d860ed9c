// Development probe (not built by CMake): how fast can the CTAs of a thread-block cluster move a
// 64 x 512 fp32 tile (128 KB, one split-KV partial) through distributed shared memory, against
// storing it to global memory? Each CTA (one per SM: 200 KB of shared memory) sends its peers
// the slices they own (a reduce-scatter's traffic: 128 KB x (C - 1) / C out, as much in) and
// adds the C slices it receives; the global variant stores the whole tile. globaltimer around the
// transfers, mean over the CTAs. Build and run:
//   nvcc -std=c++17 -O3 -arch=sm_90a -o dsmem_probe scripts/dev/dsmem_probe.cu && ./dsmem_probe
#include <cooperative_groups.h>
#include <cuda_runtime.h>

#include <cstdio>
#include <vector>

namespace cg = cooperative_groups;

constexpr int kThreads = 256;
constexpr int kTileFloats = 64 * 512;   // 128 KB
constexpr int kSmemBytes = 200 * 1024;  // one CTA per SM

__device__ unsigned long long now_ns() {
  unsigned long long t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  return t;
}

// Shared memory: [0, 64 KB) the source of the CTA's own tile (in registers in the real kernel;
// read modulo 64 KB here), then the receive area: C slices of 128 KB / C.
constexpr int kOwn4 = 64 * 1024 / 16;  // float4s of the source area
__global__ void dsmem_kernel(int c, unsigned long long* ns, float* sink) {
  extern __shared__ float4 sm[];
  cg::cluster_group cluster = cg::this_cluster();
  const int rank = static_cast<int>(cluster.block_rank());
  float4* own = sm;
  float4* recv = sm + kOwn4;
  const int slice4 = kTileFloats / 4 / c;  // float4s per slice
  for (int i = threadIdx.x; i < kOwn4; i += kThreads) own[i] = make_float4(rank, i, 1.0f, 2.0f);
  cluster.sync();
  const unsigned long long t0 = now_ns();
  // Slice j of my tile goes to rank j's receive area, at my rank's position.
  for (int j = 1; j < c; ++j) {
    const int dst = (rank + j) % c;
    float4* remote = cluster.map_shared_rank(recv, dst);
    for (int i = threadIdx.x; i < slice4; i += kThreads)
      remote[rank * slice4 + i] = own[(dst * slice4 + i) % kOwn4];
  }
  cluster.sync();
  const unsigned long long t1 = now_ns();
  // Sum the received slices (and my own) into my slice.
  float4 acc = make_float4(0, 0, 0, 0);
  for (int i = threadIdx.x; i < slice4; i += kThreads) {
    for (int s = 0; s < c; ++s) {
      const float4 v = s == rank ? own[(rank * slice4 + i) % kOwn4] : recv[s * slice4 + i];
      acc.x += v.x; acc.y += v.y; acc.z += v.z; acc.w += v.w;
    }
  }
  __syncthreads();
  const unsigned long long t2 = now_ns();
  if (acc.x == -1.0f) sink[0] = acc.y;
  if (threadIdx.x == 0) {
    ns[2 * blockIdx.x] = t1 - t0;
    ns[2 * blockIdx.x + 1] = t2 - t1;
  }
}

__global__ void global_kernel(float4* out, unsigned long long* ns) {
  const unsigned long long t0 = now_ns();
  float4* dst = out + static_cast<size_t>(blockIdx.x) * (kTileFloats / 4);
  for (int i = threadIdx.x; i < kTileFloats / 4; i += kThreads)
    dst[i] = make_float4(blockIdx.x, i, 1.0f, 2.0f);
  __threadfence();
  __syncthreads();
  if (threadIdx.x == 0) ns[2 * blockIdx.x] = now_ns() - t0;
}

int main() {
  unsigned long long* ns;
  float* sink;
  float4* gout;
  cudaMalloc(&ns, 2 * 1024 * sizeof(unsigned long long));
  cudaMalloc(&sink, 16);
  cudaMalloc(&gout, size_t(132) * kTileFloats * 4);
  cudaFuncSetAttribute(dsmem_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kSmemBytes);
  cudaFuncSetAttribute(dsmem_kernel, cudaFuncAttributeNonPortableClusterSizeAllowed, 1);
  cudaFuncSetAttribute(global_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kSmemBytes);
  std::vector<unsigned long long> h(2 * 1024);
  for (int c : {2, 4, 8, 16}) {
    for (int grid : {c, 2 * c, 64}) {
      if (grid % c) continue;
      cudaLaunchConfig_t cfg = {};
      cfg.gridDim = dim3(grid);
      cfg.blockDim = dim3(kThreads);
      cfg.dynamicSmemBytes = kSmemBytes;
      cudaLaunchAttribute attr[1];
      attr[0].id = cudaLaunchAttributeClusterDimension;
      attr[0].val.clusterDim.x = c;
      attr[0].val.clusterDim.y = 1;
      attr[0].val.clusterDim.z = 1;
      cfg.attrs = attr;
      cfg.numAttrs = 1;
      double xfer = 0, sum = 0;
      const int reps = 5;
      bool ok = true;
      for (int r = 0; r < reps; ++r) {
        if (cudaLaunchKernelEx(&cfg, dsmem_kernel, c, ns, sink) != cudaSuccess ||
            cudaDeviceSynchronize() != cudaSuccess) {
          printf("cluster %d grid %d: launch failed: %s\n", c, grid,
                 cudaGetErrorString(cudaGetLastError()));
          ok = false;
          break;
        }
        cudaMemcpy(h.data(), ns, 2 * grid * sizeof(unsigned long long), cudaMemcpyDeviceToHost);
        for (int b = 0; b < grid; ++b) {
          xfer += h[2 * b];
          sum += h[2 * b + 1];
        }
      }
      if (!ok) continue;
      xfer /= reps * grid;
      sum /= reps * grid;
      const double bytes = 131072.0 * (c - 1) / c;
      printf("cluster %2d grid %3d: send %6.0f KB per CTA in %6.2f us (%5.1f GB/s per SM), "
             "sum of %d slices %5.2f us\n",
             c, grid, bytes / 1024, xfer / 1e3, bytes / xfer, c, sum / 1e3);
    }
  }
  for (int grid : {1, 16, 64, 132}) {
    double t = 0;
    for (int r = 0; r < 5; ++r) {
      global_kernel<<<grid, kThreads, kSmemBytes>>>(gout, ns);
      cudaDeviceSynchronize();
      cudaMemcpy(h.data(), ns, 2 * grid * sizeof(unsigned long long), cudaMemcpyDeviceToHost);
      for (int b = 0; b < grid; ++b) t += h[2 * b];
    }
    t /= 5 * grid;
    printf("global store of 128 KB, grid %3d: %6.2f us (%5.1f GB/s per SM)\n", grid, t / 1e3,
           131072.0 / t);
  }
  return 0;
}
