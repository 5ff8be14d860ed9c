// openmla-bench: the GPU's energy counter, through NVML loaded at run time (libnvidia-ml.so.1
// comes with the driver). The bench needs no NVML to build; without it the energy figures are NaN.
#if defined(OPENMLA_WITH_CUDA)

#include <dlfcn.h>

#include <chrono>
#include <cmath>
#include <limits>

#include "gpu.h"

namespace openmla::bench {

namespace {

// The few NVML entry points used, declared as the NVML headers do (return 0 = NVML_SUCCESS).
struct NvmlDevice;
using NvmlInit = int (*)();
using NvmlByPciBusId = int (*)(const char*, NvmlDevice**);
using NvmlTotalEnergy = int (*)(NvmlDevice*, unsigned long long*);

struct EnergyCounter {
  NvmlTotalEnergy read = nullptr;
  NvmlDevice* device = nullptr;
  int cuda_device = -1;
};

// The counter of CUDA device `dev`, looked up by PCI bus id; read == nullptr when unavailable.
EnergyCounter open_counter(int dev) {
  EnergyCounter c;
  c.cuda_device = dev;
  void* lib = dlopen("libnvidia-ml.so.1", RTLD_NOW | RTLD_LOCAL);
  if (lib == nullptr) return c;  // (kept loaded for the process's lifetime once found)
  auto init = reinterpret_cast<NvmlInit>(dlsym(lib, "nvmlInit_v2"));
  auto by_pci = reinterpret_cast<NvmlByPciBusId>(dlsym(lib, "nvmlDeviceGetHandleByPciBusId_v2"));
  auto energy =
      reinterpret_cast<NvmlTotalEnergy>(dlsym(lib, "nvmlDeviceGetTotalEnergyConsumption"));
  char bus_id[32] = {};
  if (init == nullptr || by_pci == nullptr || energy == nullptr || init() != 0 ||
      cudaDeviceGetPCIBusId(bus_id, sizeof bus_id, dev) != cudaSuccess ||
      by_pci(bus_id, &c.device) != 0) {
    (void)cudaGetLastError();
    return c;
  }
  unsigned long long mj = 0;
  if (energy(c.device, &mj) == 0) c.read = energy;
  return c;
}

// NVML's total energy (mJ) of the current CUDA device, NaN when it cannot be read.
double gpu_energy_mj() {
  int dev = 0;
  if (cudaGetDevice(&dev) != cudaSuccess) return std::numeric_limits<double>::quiet_NaN();
  static EnergyCounter counter = open_counter(dev);
  if (counter.cuda_device != dev) counter = open_counter(dev);
  unsigned long long mj = 0;
  if (counter.read == nullptr || counter.read(counter.device, &mj) != 0)
    return std::numeric_limits<double>::quiet_NaN();
  return static_cast<double>(mj);
}

}  // namespace

double gpu_power_until(cudaEvent_t done) {
  using Clock = std::chrono::steady_clock;
  const double nan = std::numeric_limits<double>::quiet_NaN();
  double prev = gpu_energy_mj();
  if (std::isnan(prev)) return nan;
  double first_mj = nan, last_mj = nan;
  Clock::time_point first_t, last_t;
  cudaError_t q;
  while ((q = cudaEventQuery(done)) == cudaErrorNotReady) {
    const double e = gpu_energy_mj();  // (~1-3 ms per read: no sleep needed)
    if (std::isnan(e)) return nan;
    if (e == prev) continue;
    prev = e;
    if (std::isnan(first_mj)) {
      first_mj = e;
      first_t = Clock::now();
    } else {
      last_mj = e;
      last_t = Clock::now();
    }
  }
  if (q != cudaSuccess) return nan;  // (the caller's next checked call reports the error)
  if (std::isnan(last_mj)) return nan;
  // Single 100 ms steps vary by +-15 % under the power cap (H200, 534-774 W around 690 W):
  // below three steps the average says little.
  const double ms = std::chrono::duration<double, std::milli>(last_t - first_t).count();
  return ms >= 250 ? (last_mj - first_mj) / ms : nan;
}

}  // namespace openmla::bench

#endif  // OPENMLA_WITH_CUDA
