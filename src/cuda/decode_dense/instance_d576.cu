// Dense decode kernels for d_qk = 576 (see instances.h).
#include "cuda/decode_dense/instances.cuh"

namespace openmla::sm90::dense_decode_detail {

template void launch_any<9, false>(const Maps&, const DenseDecodeKernelParams&, dim3, bool,
                                   cudaStream_t);
template void launch_any<9, true>(const Maps&, const DenseDecodeKernelParams&, dim3, bool,
                                  cudaStream_t);

}  // namespace openmla::sm90::dense_decode_detail
