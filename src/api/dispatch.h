// Backend choice: the device of the first tensor argument picks the backend.
#pragma once

#include <type_traits>

#include "backend.h"
#include "openmla/error.h"

namespace openmla::detail {

// Calls cpu::op or sm90::op for `device`; `arg` is named in the error of a build without CUDA.
// (cuda_op is not deduced: a CPU-only build passes nullptr for it.)
template <class Params>
void dispatch(Device device, const char* arg, const Params& p, void (*cpu_op)(const Params&),
              std::type_identity_t<void (*)(const Params&)> cuda_op) {
  if (device.type == DeviceType::kCPU) {
    cpu_op(p);
    return;
  }
#if defined(OPENMLA_WITH_CUDA)
  (void)arg;
  cuda_op(p);
#else
  (void)cuda_op;
  throw Error(arg, "tensor is on " + device_name(device) +
                       " but this build of OpenMLA has no CUDA backend (built without a CUDA "
                       "toolkit)");
#endif
}

#if defined(OPENMLA_WITH_CUDA)
#define OPENMLA_CUDA_OP(name) (&::openmla::sm90::name)
#else
#define OPENMLA_CUDA_OP(name) (nullptr)
#endif

}  // namespace openmla::detail
