// Argument validation helpers: every failure throws openmla::Error naming the argument, what was
// expected and what was given. Host-side only; nothing here touches device memory.
#pragma once

#include <initializer_list>
#include <string>

#include "openmla/error.h"
#include "openmla/tensor.h"

namespace openmla::check {

// Largest size accepted in any one dimension: device tensors of lengths, slots and offsets are
// int32, and the plan's shapes are int.
inline constexpr int64_t kMaxDimSize = 2147483647;  // 2^31 - 1

[[noreturn]] void fail(const char* arg, const std::string& expected, const TensorView& got);
[[noreturn]] void fail(const char* arg, const std::string& message);

// Present, rank `ndim`, a known dtype and device, sizes in [0, 2^31), non-negative strides, byte
// extent and element count within 64 bits, data non-null and aligned to the dtype size when
// non-empty, last dim contiguous. `layout` names the dims for messages, e.g. "[b, s_q, h_q, d_qk]".
void tensor(const TensorView& t, const char* arg, int ndim, const char* layout);
// Same, for an optional argument (skipped when absent).
void optional_tensor(const TensorView& t, const char* arg, int ndim, const char* layout);
void dtype(const TensorView& t, const char* arg, std::initializer_list<DType> allowed);
void dim(const TensorView& t, const char* arg, int d, int64_t expected, const char* what);
void same_device(const TensorView& t, const char* arg, Device device);
void positive(int64_t v, const char* arg, const char* what);
void scale(float softmax_scale, const char* arg);
// Resolved softmax scale: the given one, or 1/sqrt(d_qk) when 0.
float resolve_scale(float softmax_scale, int64_t d_qk);
std::string shape_str(const TensorView& t);

// A tensor argument and its public name.
struct Named {
  const TensorView& t;
  const char* arg;
};

// Outputs are written, so none may repeat an element (stride 0 on a dimension of size > 1), and
// none may share memory with an input or with another output. Each output is checked in order
// against every input and every earlier output; the error names the output being checked. Only
// certain overlap is reported (same data pointer, or an element of one inside the byte range of
// a contiguous other), so interleaved views of one buffer (a fused dqkv, say) stay accepted.
void outputs(std::initializer_list<Named> outs, std::initializer_list<Named> ins);

// CUDA tensors only (CPU tensors are left alone): the data pointer must be memory CUDA knows
// (device or managed memory of the tensor's device, or pinned host memory), so that a host
// pointer or memory of another GPU marked as this device is reported instead of faulting in a
// kernel. Costs one cudaPointerGetAttributes per tensor (no sync). No-op in a CPU-only build.
void device_pointers(std::initializer_list<Named> tensors);
// The same over an operator's inputs, then its outputs (the lists given to `outputs`).
void device_pointers(std::initializer_list<Named> ins, std::initializer_list<Named> outs);

}  // namespace openmla::check
