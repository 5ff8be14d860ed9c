// CUDA operators whose sm90a kernels have not landed yet: each raises a clear error instead of
// doing anything. A kernel's landing moves its definition out of this file.
#include "backend.h"
#include "openmla/error.h"

namespace openmla::sm90 {

namespace {
[[noreturn]] void not_implemented(const char* op, const char* issue) {
  throw Error(op, std::string("not implemented on this device (CUDA sm90a) yet; the CPU backend "
                              "has it (pass CPU tensors). Tracked in ") +
                      issue);
}
}  // namespace

const char* implemented_operators() {
  return "dense_decode,quantize_kv_cache,dequantize_kv_cache,append_kv_cache";
}

void sparse_decode(const SparseDecodeParams&) {
  not_implemented("sparse_decode", "the sparse decode issue");
}
void sparse_prefill(const SparsePrefillParams&) {
  not_implemented("sparse_prefill", "the sparse prefill issue");
}
void dense_prefill_forward(const DensePrefillParams&) {
  not_implemented("dense_prefill_forward", "the dense prefill issue");
}
void dense_prefill_backward(const DensePrefillBackwardParams&) {
  not_implemented("dense_prefill_backward", "the dense prefill issue");
}

}  // namespace openmla::sm90
