// Launchers of the dense decode attention kernels, one per (d_qk, dtype): the kernels are
// instantiated in two translation units (instance_d576.cu, instance_d512.cu: 8 main + 4 narrow
// kernels each) so that they compile in parallel; launch.cu holds the host logic.
#pragma once

#include <cuda.h>
#include <cuda_runtime.h>

#include "cuda/params.h"

namespace openmla::sm90::dense_decode_detail {

// Tensor maps passed to the kernels (q, out, accum: each unused unless its flag in the params is
// set).
struct Maps {
  CUtensorMap k, q, out, accum;
};

// Launches the main kernel (`narrow` false: 64 query rows per CTA, the variant picked by the
// plan's pair merge and whether a block is one copy box) or the narrow one (16 or 32 rows) for
// d_qk = 64 * kChunks.
template <int kChunks, bool kFp16>
void launch_any(const Maps& m, const DenseDecodeKernelParams& kp, dim3 grid, bool narrow,
                cudaStream_t stream);

// The explicit instantiation of one launcher: `extern` here, defined in instance_d576.cu /
// instance_d512.cu.
#define OPENMLA_DENSE_DECODE_LAUNCHER(kChunks, kFp16)                                        \
  template void launch_any<kChunks, kFp16>(const Maps&, const DenseDecodeKernelParams&, dim3, \
                                           bool, cudaStream_t)
extern OPENMLA_DENSE_DECODE_LAUNCHER(9, false);
extern OPENMLA_DENSE_DECODE_LAUNCHER(9, true);
extern OPENMLA_DENSE_DECODE_LAUNCHER(8, false);
extern OPENMLA_DENSE_DECODE_LAUNCHER(8, true);

}  // namespace openmla::sm90::dense_decode_detail
