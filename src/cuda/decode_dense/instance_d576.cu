// Dense decode kernels for d_qk = 576 (see instances.h).
#include "cuda/decode_dense/instances.cuh"

namespace openmla::sm90::dense_decode_detail {

OPENMLA_DENSE_DECODE_LAUNCHER(9, false);
OPENMLA_DENSE_DECODE_LAUNCHER(9, true);

}  // namespace openmla::sm90::dense_decode_detail
