// openmla._C: the nanobind module over the C++ API. Tensors arrive as any DLPack / buffer-protocol
// array (torch, NumPy, CuPy, JAX, ...) and become TensorViews (dtype, device, shape, strides in
// elements), by the cheapest route the type offers: the DLPack C exchange API (torch >= 2.10),
// torch's C-level attributes, or nanobind's ndarray import (__dlpack__ / buffer protocol). No
// libtorch is linked. Shapes, strides and devices are not judged here: the C++ layer validates
// every argument and its openmla::Error becomes openmla.OpenMLAError.
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include <cstring>
#include <string>
#include <vector>

#include "openmla/openmla.h"

#if defined(OPENMLA_WITH_CUDA)
#include <cuda_runtime_api.h>
#endif

namespace nb = nanobind;
using namespace openmla;

namespace {

// ---------------- the exception type ----------------

PyObject* g_error_type = nullptr;  // openmla._C.OpenMLAError (a ValueError), owned by the module

// Raises OpenMLAError(message) with .argument set.
void raise_openmla_error(const Error& e) {
  PyObject* msg = PyUnicode_FromString(e.what());
  PyObject* inst = msg ? PyObject_CallOneArg(g_error_type, msg) : nullptr;
  Py_XDECREF(msg);
  if (!inst) return;  // the failure to build it is the error that is raised
  PyObject* arg = PyUnicode_FromString(e.argument().c_str());
  if (arg) {
    PyObject_SetAttrString(inst, "argument", arg);
    Py_DECREF(arg);
  }
  PyErr_SetObject(g_error_type, inst);
  Py_DECREF(inst);
}

// ---------------- arrays -> TensorView ----------------

// Interned attribute names of the torch fast path.
struct Names {
  PyObject *dtype, *shape, *stride, *data_ptr, *is_cuda, *is_cpu, *get_device, *device;
} g_names;

// Set from Python (openmla._arrays) once torch is imported; null until then.
struct TorchTypes {
  PyTypeObject* tensor = nullptr;
  PyObject* dtypes[6] = {};  // torch dtype object for each DType value
} g_torch;

constexpr DType kAllDTypes[6] = {DType::kBFloat16, DType::kFloat16, DType::kInt32,
                                 DType::kFloat32,  DType::kUInt8,   DType::kFloat8E4M3};

std::string type_name(PyObject* o) { return Py_TYPE(o)->tp_name ? Py_TYPE(o)->tp_name : "?"; }

// A Python error raised while reading `arg` becomes an Error naming the argument.
[[noreturn]] void fail_from_python(const char* arg, const char* what) {
  std::string detail = "?";
  PyObject *type, *value, *tb;
  PyErr_Fetch(&type, &value, &tb);
  if (value) {
    PyObject* s = PyObject_Str(value);
    if (s) {
      const char* c = PyUnicode_AsUTF8(s);
      if (c) detail = c;
      Py_DECREF(s);
    }
  }
  Py_XDECREF(type);
  Py_XDECREF(value);
  Py_XDECREF(tb);
  PyErr_Clear();
  throw Error(arg, std::string(what) + ": " + detail);
}

int64_t read_index_tuple(PyObject* tup, int64_t* out, const char* arg, const char* what) {
  if (!PyTuple_Check(tup)) throw Error(arg, std::string(what) + " is not a tuple");
  const Py_ssize_t n = PyTuple_GET_SIZE(tup);
  if (n > kMaxDims)
    throw Error(arg, "expected at most " + std::to_string(kMaxDims) + " dimensions, got " +
                         std::to_string(n));
  for (Py_ssize_t i = 0; i < n; ++i) {
    out[i] = PyLong_AsLongLong(PyTuple_GET_ITEM(tup, i));
    if (out[i] == -1 && PyErr_Occurred()) fail_from_python(arg, what);
  }
  return n;
}

// torch.Tensor (or a subclass) through its C-level attributes: ~0.3 us instead of several for
// Tensor.__dlpack__ (a Python function with device checks).
TensorView torch_view(PyObject* o, const char* arg) {
  TensorView v;
  nb::object dt = nb::steal(PyObject_GetAttr(o, g_names.dtype));
  if (!dt.is_valid()) fail_from_python(arg, "reading dtype");
  bool found = false;
  for (int i = 0; i < 6; ++i)
    if (dt.ptr() == g_torch.dtypes[i]) {
      v.dtype = kAllDTypes[i];
      found = true;
      break;
    }
  if (!found) {
    nb::str s = nb::str(dt);
    throw Error(arg, std::string("expected a tensor of dtype bfloat16, float16, float32, int32, "
                                 "uint8 or float8_e4m3fn, got ") +
                         s.c_str());
  }
  nb::object is_cuda = nb::steal(PyObject_GetAttr(o, g_names.is_cuda));
  if (!is_cuda.is_valid()) fail_from_python(arg, "reading is_cuda");
  if (is_cuda.ptr() == Py_True) {
    nb::object idx = nb::steal(PyObject_CallMethodNoArgs(o, g_names.get_device));
    if (!idx.is_valid()) fail_from_python(arg, "reading the device index");
    v.device = cuda_device(static_cast<int>(PyLong_AsLong(idx.ptr())));
  } else {
    nb::object is_cpu = nb::steal(PyObject_GetAttr(o, g_names.is_cpu));
    if (!is_cpu.is_valid()) fail_from_python(arg, "reading is_cpu");
    if (is_cpu.ptr() != Py_True) {
      nb::object dev = nb::steal(PyObject_GetAttr(o, g_names.device));
      nb::str s = dev.is_valid() ? nb::str(dev) : nb::str("?");
      PyErr_Clear();
      throw Error(arg, std::string("expected a tensor on cpu or cuda, got one on ") + s.c_str());
    }
    v.device = kCPU;
  }
  nb::object shape = nb::steal(PyObject_GetAttr(o, g_names.shape));
  if (!shape.is_valid()) fail_from_python(arg, "reading shape");
  v.ndim = static_cast<int>(read_index_tuple(shape.ptr(), v.shape, arg, "shape"));
  nb::object strides = nb::steal(PyObject_CallMethodNoArgs(o, g_names.stride));
  if (!strides.is_valid()) fail_from_python(arg, "reading strides");
  read_index_tuple(strides.ptr(), v.strides, arg, "strides");
  nb::object ptr = nb::steal(PyObject_CallMethodNoArgs(o, g_names.data_ptr));
  if (!ptr.is_valid()) fail_from_python(arg, "reading data_ptr");
  v.data = PyLong_AsVoidPtr(ptr.ptr());
  if (PyErr_Occurred()) fail_from_python(arg, "reading data_ptr");
  return v;
}

// ---- DLPack C exchange API (DLPack >= 1.2) ----
// A producer type may carry __dlpack_c_exchange_api__: a capsule "dlpack_exchange_api" holding a
// table of C functions, one of which fills a DLTensor for one of its objects without any Python
// call (torch >= 2.10 has it). Declared here from the DLPack specification (ABI-stable header,
// then function pointers in a fixed order); only the DLTensor filler is used.
struct DlVersion {
  uint32_t major, minor;
};
struct DlExchangeHeader {
  DlVersion version;
  DlExchangeHeader* prev;
};
using DlSetError = void (*)(void* ctx, const char* kind, const char* message);
struct DlExchangeApi {
  DlExchangeHeader header;
  // (prototype: dtype, ndim, shape, device) -> a new owning DLManagedTensorVersioned (opaque here)
  int (*managed_tensor_allocator)(nb::dlpack::dltensor* prototype, void** out, void* error_ctx,
                                  DlSetError set_error);
  void* managed_tensor_from_py_object_no_sync;
  // owning DLManagedTensorVersioned (stolen) -> a new object of the producer's framework
  int (*managed_tensor_to_py_object_no_sync)(void* managed, void** out_py_object);
  int (*dltensor_from_py_object_no_sync)(void* py_object, nb::dlpack::dltensor* out);
  void* current_work_stream;
};

// Per-type cache of the table (nullptr: the type has none). Types are held (never freed), so an
// entry's address cannot be reused by another type.
struct ExchangeCache {
  static constexpr int kSize = 8;
  PyTypeObject* type[kSize] = {};
  const DlExchangeApi* api[kSize] = {};
  int n = 0;

  const DlExchangeApi* lookup(PyTypeObject* tp) {
    for (int i = 0; i < n; ++i)
      if (type[i] == tp) return api[i];
    const DlExchangeApi* found = nullptr;
    PyObject* cap =
        PyObject_GetAttrString(reinterpret_cast<PyObject*>(tp), "__dlpack_c_exchange_api__");
    if (cap && PyCapsule_CheckExact(cap) && PyCapsule_IsValid(cap, "dlpack_exchange_api")) {
      auto* a = static_cast<const DlExchangeApi*>(PyCapsule_GetPointer(cap, "dlpack_exchange_api"));
      if (a && a->header.version.major == 1 && a->header.version.minor >= 2 &&
          a->dltensor_from_py_object_no_sync)
        found = a;
    }
    Py_XDECREF(cap);  // the table itself lives as long as the process (DLPack contract)
    PyErr_Clear();
    if (n < kSize) {
      Py_INCREF(tp);
      type[n] = tp;
      api[n] = found;
      ++n;
    }
    return found;
  }
} g_exchange;

bool dlpack_dtype(nb::dlpack::dtype t, DType& out);
TensorView dltensor_view(const nb::dlpack::dltensor& t, const char* arg);

// Outputs allocated in the framework of an input through the exchange API (an allocation from C,
// no Python call: for torch, the caching allocator on the current stream), when the type offers
// it. Returns an invalid object when it does not.
nb::object allocate_like(nb::handle like, DType dtype, Device device,
                         std::initializer_list<int64_t> shape, const char* arg) {
  const DlExchangeApi* api = g_exchange.lookup(Py_TYPE(like.ptr()));
  if (!api || !api->managed_tensor_allocator || !api->managed_tensor_to_py_object_no_sync)
    return nb::object();
  int64_t dims[kMaxDims];
  int ndim = 0;
  for (int64_t d : shape) dims[ndim++] = d;
  nb::dlpack::dltensor proto{};
  proto.device.device_type =
      device.type == DeviceType::kCUDA ? nb::device::cuda::value : nb::device::cpu::value;
  proto.device.device_id = device.type == DeviceType::kCUDA ? device.index : 0;
  proto.ndim = ndim;
  switch (dtype) {
    case DType::kBFloat16:
      proto.dtype = {uint8_t(nb::dlpack::dtype_code::Bfloat), 16, 1};
      break;
    case DType::kFloat16:
      proto.dtype = {uint8_t(nb::dlpack::dtype_code::Float), 16, 1};
      break;
    case DType::kFloat32:
      proto.dtype = {uint8_t(nb::dlpack::dtype_code::Float), 32, 1};
      break;
    default:
      return nb::object();
  }
  proto.shape = dims;
  std::string err;
  void* managed = nullptr;
  const DlSetError set_error = [](void* ctx, const char* kind, const char* message) {
    *static_cast<std::string*>(ctx) =
        std::string(kind ? kind : "") + ": " + (message ? message : "");
  };
  if (api->managed_tensor_allocator(&proto, &managed, &err, set_error) != 0 || !managed) {
    PyErr_Clear();
    throw Error(arg, "could not allocate the output (" + err + ")");
  }
  void* obj = nullptr;
  if (api->managed_tensor_to_py_object_no_sync(managed, &obj) != 0 || !obj)
    fail_from_python(arg, "could not wrap the allocated output");
  return nb::steal(static_cast<PyObject*>(obj));
}

bool dlpack_dtype(nb::dlpack::dtype t, DType& out) {
  using nb::dlpack::dtype_code;
  if (t.lanes != 1) return false;
  const auto code = static_cast<dtype_code>(t.code);
  if (code == dtype_code::Bfloat && t.bits == 16)
    out = DType::kBFloat16;
  else if (code == dtype_code::Float && t.bits == 16)
    out = DType::kFloat16;
  else if (code == dtype_code::Float && t.bits == 32)
    out = DType::kFloat32;
  else if (code == dtype_code::Int && t.bits == 32)
    out = DType::kInt32;
  else if (code == dtype_code::UInt && t.bits == 8)
    out = DType::kUInt8;
  else if (code == dtype_code::Float8_E4M3FN && t.bits == 8)
    out = DType::kFloat8E4M3;
  else
    return false;
  return true;
}

std::string dlpack_dtype_str(nb::dlpack::dtype t) {
  return "DLPack dtype (code " + std::to_string(t.code) + ", " + std::to_string(t.bits) +
         " bits, " + std::to_string(t.lanes) + " lanes)";
}

std::string dlpack_dtype_str(nb::dlpack::dtype t);

TensorView dltensor_view(const nb::dlpack::dltensor& t, const char* arg) {
  TensorView v;
  if (!dlpack_dtype(t.dtype, v.dtype))
    throw Error(arg,
                "expected an array of dtype bfloat16, float16, float32, int32, uint8 or "
                "float8_e4m3fn, got " +
                    dlpack_dtype_str(t.dtype));
  switch (t.device.device_type) {
    case nb::device::cpu::value:
    case nb::device::cuda_host::value:
      v.device = kCPU;
      break;
    case nb::device::cuda::value:
    case nb::device::cuda_managed::value:
      v.device = cuda_device(t.device.device_id);
      break;
    default:
      throw Error(arg, "expected an array on cpu or cuda, got DLPack device type " +
                           std::to_string(t.device.device_type));
  }
  if (t.ndim < 0 || t.ndim > kMaxDims)
    throw Error(arg, "expected at most " + std::to_string(kMaxDims) + " dimensions, got " +
                         std::to_string(t.ndim));
  v.ndim = t.ndim;
  int64_t compact = 1;
  for (int i = v.ndim - 1; i >= 0; --i) {
    v.shape[i] = t.shape[i];
    v.strides[i] = t.strides ? t.strides[i] : compact;  // null strides: compact row-major
    compact *= t.shape[i];
  }
  v.data = static_cast<char*>(t.data) + t.byte_offset;
  return v;
}

using Array = nb::ndarray<nb::ro>;  // read-only accepted: outputs are checked by the C++ layer

TensorView array_view(const Array& a, const char* arg, const DType* dtype_override) {
  TensorView v;
  if (dtype_override) {
    v.dtype = *dtype_override;
  } else if (!dlpack_dtype(a.dtype(), v.dtype)) {
    throw Error(arg,
                "expected an array of dtype bfloat16, float16, float32, int32, uint8 or "
                "float8_e4m3fn, got " +
                    dlpack_dtype_str(a.dtype()));
  }
  switch (a.device_type()) {
    case nb::device::cpu::value:
    case nb::device::cuda_host::value:  // pinned host memory: the CPU backend reads it directly
      v.device = kCPU;
      break;
    case nb::device::cuda::value:
    case nb::device::cuda_managed::value:
      v.device = cuda_device(a.device_id());
      break;
    default:
      throw Error(arg, "expected an array on cpu or cuda, got DLPack device type " +
                           std::to_string(a.device_type()));
  }
  if (a.ndim() > static_cast<size_t>(kMaxDims))
    throw Error(arg, "expected at most " + std::to_string(kMaxDims) + " dimensions, got " +
                         std::to_string(a.ndim()));
  v.ndim = static_cast<int>(a.ndim());
  for (int i = 0; i < v.ndim; ++i) {
    v.shape[i] = a.shape(i);
    v.strides[i] = a.stride(i);
  }
  v.data = const_cast<void*>(a.data());
  return v;
}

// One call's arguments: converts each and keeps imported arrays alive until the call returns.
class Args {
 public:
  TensorView operator()(nb::handle h, const char* arg) {
    if (!h.is_valid() || h.is_none()) return TensorView{};  // an optional argument left out
    PyObject* o = h.ptr();
    if (const DlExchangeApi* api = g_exchange.lookup(Py_TYPE(o))) {
      nb::dlpack::dltensor t{};
      if (api->dltensor_from_py_object_no_sync(o, &t) == 0) return dltensor_view(t, arg);
      PyErr_Clear();  // e.g. a layout DLPack cannot describe: try the other routes
    }
    if (g_torch.tensor && PyObject_TypeCheck(o, g_torch.tensor)) return torch_view(o, arg);
    return import(h, arg);
  }

  // Always through DLPack / the buffer protocol (tests compare both routes).
  TensorView import(nb::handle h, const char* arg) {
    if (n_ == kMax) throw Error(arg, "too many tensor arguments");
    Array& a = keep_[n_++];
    if (nb::try_cast(h, a, /*convert=*/false)) return array_view(a, arg, nullptr);
    PyErr_Clear();
    // NumPy arrays of ml_dtypes' bfloat16 / float8_e4m3fn export neither DLPack nor a buffer:
    // reinterpret their bits as uint16 / uint8 and keep the dtype.
    nb::object dt = nb::steal(PyObject_GetAttr(h.ptr(), g_names.dtype));
    if (dt.is_valid()) {
      nb::object name = nb::steal(PyObject_GetAttrString(dt.ptr(), "name"));
      const char* s =
          name.is_valid() && PyUnicode_Check(name.ptr()) ? PyUnicode_AsUTF8(name.ptr()) : nullptr;
      DType d{};
      const char* as = nullptr;
      if (s && std::strcmp(s, "bfloat16") == 0) {
        d = DType::kBFloat16;
        as = "uint16";
      } else if (s && std::strcmp(s, "float8_e4m3fn") == 0) {
        d = DType::kFloat8E4M3;
        as = "uint8";
      }
      if (as) {
        nb::object bits = nb::steal(PyObject_CallMethod(h.ptr(), "view", "s", as));
        if (bits.is_valid() && nb::try_cast(bits, a, false)) {
          views_[n_ - 1] = bits;
          return array_view(a, arg, &d);
        }
      }
    }
    PyErr_Clear();
    throw Error(arg,
                "expected an array supporting DLPack or the buffer protocol (torch, NumPy, "
                "CuPy, JAX, ...) or None, got an object of type " +
                    type_name(h.ptr()));
  }

 private:
  static constexpr int kMax = 16;
  Array keep_[kMax];
  nb::object views_[kMax];
  int n_ = 0;
};

Stream as_stream(uintptr_t s) { return reinterpret_cast<Stream>(s); }

// The CPU backend computes for a while: let other Python threads run meanwhile. CUDA calls only
// enqueue work, cheaper than a GIL round trip.
struct ReleaseForCpu {
  explicit ReleaseForCpu(const TensorView& t)
      : state_(t.device.type == DeviceType::kCPU ? PyEval_SaveThread() : nullptr) {}
  ~ReleaseForCpu() {
    if (state_) PyEval_RestoreThread(state_);
  }
  ReleaseForCpu(const ReleaseForCpu&) = delete;
  ReleaseForCpu& operator=(const ReleaseForCpu&) = delete;

 private:
  PyThreadState* state_;
};

// Device buffers of a plan may be allocated while the caller captures a CUDA graph (FlashMLA's
// metadata is built on first use, inside the captured step): allow that allocation in any capture
// mode. cudaMalloc enqueues nothing, so the graph is unaffected.
struct RelaxedCapture {
#if defined(OPENMLA_WITH_CUDA)
  RelaxedCapture() { cudaThreadExchangeStreamCaptureMode(&mode_); }
  ~RelaxedCapture() { cudaThreadExchangeStreamCaptureMode(&mode_); }
  cudaStreamCaptureMode mode_ = cudaStreamCaptureModeRelaxed;
#endif
};

Device parse_device(const std::string& type, int index) {
  if (type == "cpu") return kCPU;
  if (type == "cuda") return cuda_device(index);
  throw Error("device", "expected 'cpu' or 'cuda', got '" + type + "'");
}

nb::dict config_dict(const DecodePlanConfig& c) {
  nb::dict d;
  d["batch"] = c.batch;
  d["s_q"] = c.s_q;
  d["h_q"] = c.h_q;
  d["h_kv"] = c.h_kv;
  d["d_qk"] = c.d_qk;
  d["causal"] = c.causal;
  d["sparse"] = c.sparse;
  d["topk"] = c.topk;
  d["extra_topk"] = c.extra_topk;
  d["num_sms"] = c.num_sms;
  d["batch_invariant"] = c.batch_invariant;
  d["external_workspace"] = c.external_workspace;
  return d;
}

nb::dict view_dict(const TensorView& v) {
  nb::dict d;
  d["dtype"] = dtype_name(v.dtype);
  d["device"] = device_name(v.device);
  nb::list shape, strides;
  for (int i = 0; i < v.ndim; ++i) {
    shape.append(v.shape[i]);
    strides.append(v.strides[i]);
  }
  d["shape"] = nb::tuple(shape);
  d["strides"] = nb::tuple(strides);
  d["data"] = reinterpret_cast<uintptr_t>(v.data);
  d["describe"] = v.describe();
  return d;
}

std::vector<std::string> split_ops(const char* s) {
  std::vector<std::string> out;
  std::string cur;
  for (const char* p = s; *p; ++p) {
    if (*p == ',') {
      if (!cur.empty()) out.push_back(cur);
      cur.clear();
    } else {
      cur += *p;
    }
  }
  if (!cur.empty()) out.push_back(cur);
  return out;
}

// Decode outputs left out (None) are allocated like q when its framework can (see
// allocate_like): out [b, s_q, h_q, d_v] of q's dtype, lse [b, h_q, s_q] fp32. A q that is not a
// rank-4 tensor allocates nothing (its validation error comes first).
void allocate_decode_outputs(nb::handle q, const TensorView& qv, int d_v, nb::object& out,
                             nb::object& lse) {
  if (qv.ndim != 4 || d_v < 0) return;
  const int64_t b = qv.shape[0], s_q = qv.shape[1], h_q = qv.shape[2];
  if (out.is_none()) {
    nb::object o = allocate_like(q, qv.dtype, qv.device, {b, s_q, h_q, d_v}, "out");
    if (o.is_valid()) out = std::move(o);
  }
  if (lse.is_none()) {
    nb::object o = allocate_like(q, DType::kFloat32, qv.device, {b, h_q, s_q}, "lse");
    if (o.is_valid()) lse = std::move(o);
  }
}

bool can_allocate_like(nb::handle x) {
  const DlExchangeApi* api = g_exchange.lookup(Py_TYPE(x.ptr()));
  return api && api->managed_tensor_allocator && api->managed_tensor_to_py_object_no_sync;
}

}  // namespace

NB_MODULE(_C, m) {
  m.doc() = "OpenMLA C++ API (framework-free; arrays through DLPack). Use the openmla package.";

  g_names = {PyUnicode_InternFromString("dtype"),      PyUnicode_InternFromString("shape"),
             PyUnicode_InternFromString("stride"),     PyUnicode_InternFromString("data_ptr"),
             PyUnicode_InternFromString("is_cuda"),    PyUnicode_InternFromString("is_cpu"),
             PyUnicode_InternFromString("get_device"), PyUnicode_InternFromString("device")};

  g_error_type = PyErr_NewExceptionWithDoc(
      "openmla.OpenMLAError",
      "Invalid argument or unsupported operation; .argument names the argument at fault "
      "('q', 'k_cache', ...) or the subsystem ('cuda', 'plan', an operator name).",
      PyExc_ValueError, nullptr);
  m.attr("OpenMLAError") = nb::handle(g_error_type);
  nb::register_exception_translator([](const std::exception_ptr& p, void*) {
    try {
      std::rethrow_exception(p);
    } catch (const Error& e) {
      raise_openmla_error(e);
    }
  });

  m.attr("version") = nb::make_tuple(kVersionMajor, kVersionMinor, kVersionPatch);
  m.def("built_with_cuda", &built_with_cuda, "True when this build carries the CUDA backend.");
  m.def(
      "cuda_operators", [] { return split_ops(cuda_operators()); },
      "Operators with a GPU kernel in this build.");

  m.def(
      "_set_torch",
      [](nb::handle tensor_type, nb::list dtypes) {
        // dtypes: torch dtype objects in the order of kAllDTypes.
        if (!PyType_Check(tensor_type.ptr()) || nb::len(dtypes) != 6)
          throw Error("_set_torch", "expected torch.Tensor and 6 dtypes");
        Py_INCREF(tensor_type.ptr());  // kept for the life of the process
        g_torch.tensor = reinterpret_cast<PyTypeObject*>(tensor_type.ptr());
        for (int i = 0; i < 6; ++i) {
          g_torch.dtypes[i] = dtypes[i].ptr();
          Py_INCREF(g_torch.dtypes[i]);
        }
      },
      "Enable the torch.Tensor attribute route (called by openmla when torch is imported).");

  m.def(
      "describe",
      [](nb::handle x, const std::string& route) {
        Args a;
        TensorView v;
        if (route == "auto") {
          v = a(x, "x");
        } else if (route == "dlpack") {
          v = a.import(x, "x");
        } else if (route == "exchange") {
          const DlExchangeApi* api = g_exchange.lookup(Py_TYPE(x.ptr()));
          if (!api) throw Error("route", "this type has no DLPack C exchange API");
          nb::dlpack::dltensor t{};
          if (api->dltensor_from_py_object_no_sync(x.ptr(), &t) != 0) throw nb::python_error();
          v = dltensor_view(t, "x");
        } else if (route == "torch") {
          if (!g_torch.tensor || !PyObject_TypeCheck(x.ptr(), g_torch.tensor))
            throw Error("route", "not a torch.Tensor (or torch support not initialised)");
          v = torch_view(x.ptr(), "x");
        } else {
          throw Error("route",
                      "expected 'auto', 'dlpack', 'exchange' or 'torch', got '" + route + "'");
        }
        return view_dict(v);
      },
      nb::arg("x"), nb::arg("route") = "auto",
      "The TensorView an array becomes, by the default route or a given one ('dlpack': "
      "__dlpack__ / buffer protocol, 'exchange': DLPack C exchange API, 'torch': torch "
      "attributes). For tests.");

  m.def("can_allocate_like", &can_allocate_like, nb::arg("x"),
        "True when decode outputs can be allocated like x in C++ (DLPack exchange API).");

  m.def(
      "_convert",
      [](nb::args xs) {
        Args a;
        int64_t n = 0;
        for (nb::handle x : xs) n += a(x, "x").present();
        return n;
      },
      "Converts each argument to a TensorView and drops it (bench/python_overhead.py).");

  // ---------------- FP8 KV-cache formats ----------------
  nb::enum_<KVCacheFormat>(m, "KVCacheFormat", nb::is_arithmetic())
      .value("V32", KVCacheFormat::kFP8V32, "d_qk 576: 656 B/token")
      .value("MODEL1", KVCacheFormat::kFP8Model1, "d_qk 512: 584 B/token");
  m.def("format_info", [](KVCacheFormat f) {
    const KVCacheFormatInfo i = format_info(f);
    nb::dict d;
    d["d_qk"] = i.d_qk;
    d["d_nope"] = i.d_nope;
    d["d_rope"] = i.d_rope;
    d["tile"] = i.tile;
    d["num_tiles"] = i.num_tiles;
    d["bytes_per_token"] = i.bytes_per_token;
    return d;
  });
  m.def("format_name", [](KVCacheFormat f) { return std::string(format_name(f)); });
  m.def("format_for_head_dim", &format_for_head_dim, nb::arg("d_qk"));
  m.def("fp8_page_bytes", &fp8_page_bytes, nb::arg("format"), nb::arg("page_size"));

  // ---------------- DecodePlan ----------------
  nb::class_<DecodePlan>(m, "DecodePlan",
                         "Split-KV schedule of one decode step (fixed-size device buffers).")
      .def(
          "__init__",
          [](DecodePlan* self, const std::string& device_type, int device_index, int batch, int s_q,
             int h_q, int h_kv, int d_qk, bool causal, bool sparse, int topk, int extra_topk,
             int num_sms, bool batch_invariant, bool external_workspace) {
            DecodePlanConfig c;
            c.batch = batch;
            c.s_q = s_q;
            c.h_q = h_q;
            c.h_kv = h_kv;
            c.d_qk = d_qk;
            c.causal = causal;
            c.sparse = sparse;
            c.topk = topk;
            c.extra_topk = extra_topk;
            c.num_sms = num_sms;
            c.batch_invariant = batch_invariant;
            c.external_workspace = external_workspace;
            const Device dev = parse_device(device_type, device_index);
            RelaxedCapture relaxed;
            new (self) DecodePlan(dev, c);
          },
          nb::arg("device_type"), nb::arg("device_index"), nb::arg("batch"), nb::arg("s_q"),
          nb::arg("h_q"), nb::arg("h_kv"), nb::arg("d_qk"), nb::arg("causal"), nb::arg("sparse"),
          nb::arg("topk"), nb::arg("extra_topk"), nb::arg("num_sms"), nb::arg("batch_invariant"),
          nb::arg("external_workspace") = false)
      .def(
          "update",
          [](DecodePlan& p, nb::handle cache_seqlens, uintptr_t stream) {
            Args a;
            p.update(a(cache_seqlens, "cache_seqlens"), as_stream(stream));
          },
          nb::arg("cache_seqlens").none(), nb::arg("stream") = 0)
      .def_prop_ro("config", [](const DecodePlan& p) { return config_dict(p.config()); })
      .def_prop_ro("device", [](const DecodePlan& p) { return device_name(p.device()); })
      .def_prop_ro("workspace_bytes", [](const DecodePlan& p) { return p.workspace_bytes(); });

  // ---------------- operators (positional, as openmla/_native.py calls them) ----------------
  m.def(
      "dense_decode",
      [](nb::handle q, nb::handle k_cache, nb::handle block_table, nb::handle cache_seqlens,
         nb::handle out, nb::handle lse, const DecodePlan* plan, int d_v, float softmax_scale,
         bool causal, uintptr_t stream, nb::handle workspace) {
        Args a;
        DenseDecodeParams p;
        p.q = a(q, "q");
        nb::object out_o = nb::borrow(out), lse_o = nb::borrow(lse);
        allocate_decode_outputs(q, p.q, d_v, out_o, lse_o);
        p.k_cache = a(k_cache, "k_cache");
        p.block_table = a(block_table, "block_table");
        p.cache_seqlens = a(cache_seqlens, "cache_seqlens");
        p.out = a(out_o, "out");
        p.lse = a(lse_o, "lse");
        p.plan = plan;
        p.d_v = d_v;
        p.softmax_scale = softmax_scale;
        p.causal = causal;
        p.stream = as_stream(stream);
        p.workspace = a(workspace, "workspace");
        {
          ReleaseForCpu gil(p.q);
          dense_decode(p);
        }
        return nb::make_tuple(out_o, lse_o);
      },
      nb::arg("q").none(), nb::arg("k_cache").none(), nb::arg("block_table").none(),
      nb::arg("cache_seqlens").none(), nb::arg("out").none(), nb::arg("lse").none(),
      nb::arg("plan").none(), nb::arg("d_v"), nb::arg("softmax_scale"), nb::arg("causal"),
      nb::arg("stream"), nb::arg("workspace").none() = nb::none(),
      "Returns (out, lse); outputs passed as None are allocated like q where its framework "
      "offers the DLPack exchange allocator (torch), else they must be given.");

  m.def(
      "sparse_decode",
      [](nb::handle q, nb::handle k_cache, nb::handle indices, nb::handle topk_length,
         nb::handle attn_sink, nb::handle extra_k_cache, nb::handle extra_indices,
         nb::handle extra_topk_length, nb::handle out, nb::handle lse, const DecodePlan* plan,
         int d_v, float softmax_scale, uintptr_t stream) {
        Args a;
        SparseDecodeParams p;
        p.q = a(q, "q");
        nb::object out_o = nb::borrow(out), lse_o = nb::borrow(lse);
        allocate_decode_outputs(q, p.q, d_v, out_o, lse_o);
        p.k_cache = a(k_cache, "k_cache");
        p.indices = a(indices, "indices");
        p.topk_length = a(topk_length, "topk_length");
        p.attn_sink = a(attn_sink, "attn_sink");
        p.extra_k_cache = a(extra_k_cache, "extra_k_cache");
        p.extra_indices = a(extra_indices, "extra_indices");
        p.extra_topk_length = a(extra_topk_length, "extra_topk_length");
        p.out = a(out_o, "out");
        p.lse = a(lse_o, "lse");
        p.plan = plan;
        p.d_v = d_v;
        p.softmax_scale = softmax_scale;
        p.stream = as_stream(stream);
        {
          ReleaseForCpu gil(p.q);
          sparse_decode(p);
        }
        return nb::make_tuple(out_o, lse_o);
      },
      nb::arg("q").none(), nb::arg("k_cache").none(), nb::arg("indices").none(),
      nb::arg("topk_length").none(), nb::arg("attn_sink").none(), nb::arg("extra_k_cache").none(),
      nb::arg("extra_indices").none(), nb::arg("extra_topk_length").none(), nb::arg("out").none(),
      nb::arg("lse").none(), nb::arg("plan").none(), nb::arg("d_v"), nb::arg("softmax_scale"),
      nb::arg("stream"),
      "Returns (out, lse), allocating outputs passed as None as dense_decode does.");

  m.def(
      "sparse_prefill",
      [](nb::handle q, nb::handle kv, nb::handle indices, nb::handle attn_sink,
         nb::handle topk_length, nb::handle out, nb::handle max_logits, nb::handle lse, int d_v,
         float softmax_scale, uintptr_t stream) {
        Args a;
        SparsePrefillParams p;
        p.q = a(q, "q");
        p.kv = a(kv, "kv");
        p.indices = a(indices, "indices");
        p.attn_sink = a(attn_sink, "attn_sink");
        p.topk_length = a(topk_length, "topk_length");
        p.out = a(out, "out");
        p.max_logits = a(max_logits, "max_logits");
        p.lse = a(lse, "lse");
        p.d_v = d_v;
        p.softmax_scale = softmax_scale;
        p.stream = as_stream(stream);
        ReleaseForCpu gil(p.q);
        sparse_prefill(p);
      },
      nb::arg("q").none(), nb::arg("kv").none(), nb::arg("indices").none(),
      nb::arg("attn_sink").none(), nb::arg("topk_length").none(), nb::arg("out").none(),
      nb::arg("max_logits").none(), nb::arg("lse").none(), nb::arg("d_v"), nb::arg("softmax_scale"),
      nb::arg("stream"));

  m.def(
      "dense_prefill_forward",
      [](nb::handle q, nb::handle k, nb::handle v, nb::handle cu_seqlens_q, nb::handle cu_seqlens_k,
         nb::handle out, nb::handle lse, int max_seqlen_q, int max_seqlen_k, float softmax_scale,
         bool causal, uintptr_t stream) {
        Args a;
        DensePrefillParams p;
        p.q = a(q, "q");
        p.k = a(k, "k");
        p.v = a(v, "v");
        p.cu_seqlens_q = a(cu_seqlens_q, "cu_seqlens_q");
        p.cu_seqlens_k = a(cu_seqlens_k, "cu_seqlens_k");
        p.out = a(out, "out");
        p.lse = a(lse, "lse");
        p.max_seqlen_q = max_seqlen_q;
        p.max_seqlen_k = max_seqlen_k;
        p.softmax_scale = softmax_scale;
        p.causal = causal;
        p.stream = as_stream(stream);
        ReleaseForCpu gil(p.q);
        dense_prefill_forward(p);
      },
      nb::arg("q").none(), nb::arg("k").none(), nb::arg("v").none(), nb::arg("cu_seqlens_q").none(),
      nb::arg("cu_seqlens_k").none(), nb::arg("out").none(), nb::arg("lse").none(),
      nb::arg("max_seqlen_q"), nb::arg("max_seqlen_k"), nb::arg("softmax_scale"), nb::arg("causal"),
      nb::arg("stream"));

  m.def(
      "dense_prefill_backward",
      [](nb::handle dout, nb::handle q, nb::handle k, nb::handle v, nb::handle out, nb::handle lse,
         nb::handle cu_seqlens_q, nb::handle cu_seqlens_k, nb::handle dq, nb::handle dk,
         nb::handle dv, int max_seqlen_q, int max_seqlen_k, float softmax_scale, bool causal,
         uintptr_t stream) {
        Args a;
        DensePrefillBackwardParams p;
        p.dout = a(dout, "dout");
        p.q = a(q, "q");
        p.k = a(k, "k");
        p.v = a(v, "v");
        p.out = a(out, "out");
        p.lse = a(lse, "lse");
        p.cu_seqlens_q = a(cu_seqlens_q, "cu_seqlens_q");
        p.cu_seqlens_k = a(cu_seqlens_k, "cu_seqlens_k");
        p.dq = a(dq, "dq");
        p.dk = a(dk, "dk");
        p.dv = a(dv, "dv");
        p.max_seqlen_q = max_seqlen_q;
        p.max_seqlen_k = max_seqlen_k;
        p.softmax_scale = softmax_scale;
        p.causal = causal;
        p.stream = as_stream(stream);
        ReleaseForCpu gil(p.q);
        dense_prefill_backward(p);
      },
      nb::arg("dout").none(), nb::arg("q").none(), nb::arg("k").none(), nb::arg("v").none(),
      nb::arg("out").none(), nb::arg("lse").none(), nb::arg("cu_seqlens_q").none(),
      nb::arg("cu_seqlens_k").none(), nb::arg("dq").none(), nb::arg("dk").none(),
      nb::arg("dv").none(), nb::arg("max_seqlen_q"), nb::arg("max_seqlen_k"),
      nb::arg("softmax_scale"), nb::arg("causal"), nb::arg("stream"));

  m.def(
      "quantize_kv_cache",
      [](nb::handle input, nb::handle cache, KVCacheFormat format, uintptr_t stream) {
        Args a;
        QuantizeKVParams p;
        p.input = a(input, "input");
        p.cache = a(cache, "cache");
        p.format = format;
        p.stream = as_stream(stream);
        ReleaseForCpu gil(p.input);
        quantize_kv_cache(p);
      },
      nb::arg("input").none(), nb::arg("cache").none(), nb::arg("format"), nb::arg("stream"));

  m.def(
      "dequantize_kv_cache",
      [](nb::handle cache, nb::handle output, KVCacheFormat format, uintptr_t stream) {
        Args a;
        DequantizeKVParams p;
        p.cache = a(cache, "cache");
        p.output = a(output, "output");
        p.format = format;
        p.stream = as_stream(stream);
        ReleaseForCpu gil(p.cache);
        dequantize_kv_cache(p);
      },
      nb::arg("cache").none(), nb::arg("output").none(), nb::arg("format"), nb::arg("stream"));

  m.def(
      "append_kv_cache",
      [](nb::handle input, nb::handle slots, nb::handle cache, KVCacheFormat format,
         uintptr_t stream) {
        Args a;
        AppendKVParams p;
        p.input = a(input, "input");
        p.slots = a(slots, "slots");
        p.cache = a(cache, "cache");
        p.format = format;
        p.stream = as_stream(stream);
        ReleaseForCpu gil(p.input);
        append_kv_cache(p);
      },
      nb::arg("input").none(), nb::arg("slots").none(), nb::arg("cache").none(), nb::arg("format"),
      nb::arg("stream"));
}
