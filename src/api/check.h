// Argument validation helpers: every failure throws openmla::Error naming the argument, what was
// expected and what was given. Host-side only; nothing here touches device memory.
#pragma once

#include <initializer_list>
#include <string>

#include "openmla/error.h"
#include "openmla/tensor.h"

namespace openmla::check {

[[noreturn]] void fail(const char* arg, const std::string& expected, const TensorView& got);
[[noreturn]] void fail(const char* arg, const std::string& message);

// Present, rank `ndim`, data non-null when non-empty, non-negative strides, last dim contiguous.
// `layout` names the dims for messages, e.g. "[b, s_q, h_q, d_qk]".
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

}  // namespace openmla::check
