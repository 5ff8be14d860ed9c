// Library version and build facts.
#pragma once

namespace openmla {

inline constexpr int kVersionMajor = 0;
inline constexpr int kVersionMinor = 1;
inline constexpr int kVersionPatch = 0;

// True when this build carries the CUDA (sm_90a) backend.
bool built_with_cuda();
// Names of the operators with a GPU kernel in this build, comma-separated ("" when none).
const char* cuda_operators();

}  // namespace openmla
