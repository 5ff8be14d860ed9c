// Dense decode kernels for d_qk = 512 (see instances.h).
#include "cuda/decode_dense/instances.cuh"

namespace openmla::sm90::dense_decode_detail {

OPENMLA_DENSE_DECODE_LAUNCHER(8, false);
OPENMLA_DENSE_DECODE_LAUNCHER(8, true);

}  // namespace openmla::sm90::dense_decode_detail
