// Build facts (version.h).
#include "openmla/version.h"

#include "backend.h"

namespace openmla {

bool built_with_cuda() {
#if defined(OPENMLA_WITH_CUDA)
  return true;
#else
  return false;
#endif
}

const char* cuda_operators() {
#if defined(OPENMLA_WITH_CUDA)
  return sm90::implemented_operators();
#else
  return "";
#endif
}

}  // namespace openmla
