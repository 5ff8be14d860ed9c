// Where the block dispatcher puts the CTAs of a one-CTA-per-SM grid (what the dense decode
// kernel's grid gets), and which SMs share a GPC. Development probe for docs/design.md
// ("Placement"); not part of the build:
//   nvcc -arch=sm_90a -o placement_probe scripts/dev/placement_probe.cu && ./placement_probe
// Prints GPC groups (SMs that cluster launches put together; a group can come out split where
// clusters did not fit) and, for grids (m_blocks, 1, parts) and the same part-major, the SMs of
// each part's CTAs and how many of them share a TPC (SMs 2k, 2k+1).
#include <cstdio>
#include <functional>
#include <map>
#include <numeric>
#include <vector>

__global__ void probe(int* out) {
  extern __shared__ char smem[];
  if (threadIdx.x == 0) {
    unsigned smid;
    asm volatile("mov.u32 %0, %%smid;" : "=r"(smid));
    out[blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z)] = static_cast<int>(smid);
    smem[0] = 1;
  }
  const long long t0 = clock64();  // hold the SM so that every CTA is resident at once
  while (clock64() - t0 < 2000000) {
  }
}

int main() {
  constexpr int kSmem = 200 * 1024;  // one CTA per SM
  int sms = 0;
  cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0);
  int* d = nullptr;
  cudaMalloc(&d, 4096 * sizeof(int));
  cudaFuncSetAttribute(probe, cudaFuncAttributeMaxDynamicSharedMemorySize, kSmem);
  cudaFuncSetAttribute(probe, cudaFuncAttributeNonPortableClusterSizeAllowed, 1);
  std::vector<int> parent(sms);
  std::iota(parent.begin(), parent.end(), 0);
  std::function<int(int)> find = [&](int x) {
    return parent[x] == x ? x : parent[x] = find(parent[x]);
  };
  for (int cs : {16, 8, 4, 2}) {
    for (int rep = 0; rep < 3; ++rep) {
      const int n = (sms / cs) * cs;
      cudaLaunchConfig_t cfg{};
      cfg.gridDim = dim3(n);
      cfg.blockDim = dim3(128);
      cfg.dynamicSmemBytes = kSmem;
      cudaLaunchAttribute at[1];
      at[0].id = cudaLaunchAttributeClusterDimension;
      at[0].val.clusterDim.x = cs;
      at[0].val.clusterDim.y = 1;
      at[0].val.clusterDim.z = 1;
      cfg.attrs = at;
      cfg.numAttrs = 1;
      if (cudaLaunchKernelEx(&cfg, probe, d) != cudaSuccess ||
          cudaDeviceSynchronize() != cudaSuccess) {
        (void)cudaGetLastError();
        continue;
      }
      std::vector<int> h(n);
      cudaMemcpy(h.data(), d, n * sizeof(int), cudaMemcpyDeviceToHost);
      for (int c = 0; c < n / cs; ++c)
        for (int i = 1; i < cs; ++i) parent[find(h[c * cs + i])] = find(h[c * cs]);
    }
  }
  std::map<int, std::vector<int>> groups;
  for (int s = 0; s < sms; ++s) groups[find(s)].push_back(s);
  for (auto& [root, v] : groups) {
    printf("GPC group (%zu SMs):", v.size());
    for (int s : v) printf(" %d", s);
    printf("\n");
  }
  struct Grid { int m, parts; bool part_major; };
  for (Grid g : {Grid{2, sms / 2, false}, Grid{4, sms / 4, false}, Grid{2, sms / 2, true}}) {
    const dim3 grid = g.part_major ? dim3(g.parts, 1, g.m) : dim3(g.m, 1, g.parts);
    probe<<<grid, 128, kSmem>>>(d);
    cudaDeviceSynchronize();
    std::vector<int> h(g.m * g.parts);
    cudaMemcpy(h.data(), d, h.size() * sizeof(int), cudaMemcpyDeviceToHost);
    int shared_tpc = 0;
    printf("%d m-blocks x %d parts, %s:", g.m, g.parts,
           g.part_major ? "part-major" : "m-block-major");
    for (int p = 0; p < g.parts; ++p) {
      std::map<int, int> tpcs;
      printf(" [");
      for (int m = 0; m < g.m; ++m) {
        const int s = g.part_major ? h[p + g.parts * m] : h[m + g.m * p];
        printf(m ? " %d" : "%d", s);
        tpcs[s / 2]++;
      }
      printf("]");
      shared_tpc += g.m - static_cast<int>(tpcs.size());
    }
    printf("\n  CTAs sharing a TPC with another CTA of their part: %d of %d\n", 2 * shared_tpc,
           g.m * g.parts);
  }
  return 0;
}
