"""Framework plumbing: which library an array comes from, allocating outputs like it, streams.

The extension takes any DLPack / buffer-protocol array; only allocation and the "current stream"
need to know the framework. PyTorch is used when it is installed, never required.
"""

from __future__ import annotations

import os
import sys

import numpy as np

from . import _C

OpenMLAError = _C.OpenMLAError

# ---------------------------------------------------------------- torch (optional)

torch = None
if os.environ.get("OPENMLA_NO_TORCH", "") not in ("1", "true", "yes"):
    try:
        import torch  # noqa: F811
    except ImportError:  # NumPy-only installation
        torch = None

_TorchTensor = torch.Tensor if torch is not None else ()
_cuda_raw_stream = None
if torch is not None:
    # Same dtype order as the extension's table (kAllDTypes in python/src/module.cpp).
    _C._set_torch(
        torch.Tensor,
        [torch.bfloat16, torch.float16, torch.int32, torch.float32, torch.uint8,
         torch.float8_e4m3fn],
    )
    _cuda_raw_stream = getattr(torch._C, "_cuda_getCurrentRawStream", None)

# Array types whose decode outputs the extension allocates itself (DLPack exchange API: torch
# >= 2.10), saving a Python-level allocation per output.
CXX_ALLOC = frozenset((torch.Tensor,) if torch is not None and
                      _C.can_allocate_like(torch.empty(0)) else ())


def error(argument: str, message: str) -> OpenMLAError:
    """An OpenMLAError in the format of the C++ layer ("openmla: <argument>: <message>")."""
    e = OpenMLAError(f"openmla: {argument}: {message}")
    e.argument = argument
    return e


def is_torch(x) -> bool:
    return isinstance(x, _TorchTensor)


def compiling() -> bool:
    """True while torch.compile (dynamo) traces the caller."""
    return torch is not None and torch.compiler.is_compiling()


# ---------------------------------------------------------------- dtypes

_ml_dtypes = None


def _ml():
    global _ml_dtypes
    if _ml_dtypes is None:
        try:
            import ml_dtypes
        except ImportError as e:  # pragma: no cover - ml_dtypes is a dependency
            raise error("dtype", "bfloat16 / float8 NumPy arrays need the package ml_dtypes") from e
        _ml_dtypes = ml_dtypes
    return _ml_dtypes


def numpy_dtype(name: str):
    if name == "bfloat16":
        return _ml().bfloat16
    if name == "float8_e4m3fn":
        return _ml().float8_e4m3fn
    return np.dtype(name)


def torch_dtype(name: str):
    return getattr(torch, name)


def dtype_name(x) -> str:
    """'bfloat16', 'float16', 'float32', 'int32', 'uint8', 'float8_e4m3fn', ... of an array."""
    dt = x.dtype
    if is_torch(x):
        return str(dt).rpartition(".")[2]
    return getattr(dt, "name", str(dt))


# ---------------------------------------------------------------- allocation


def _cupy(x):
    mod = type(x).__module__
    if mod.startswith("cupy"):
        return sys.modules.get("cupy")
    return None


def empty(like, shape, dtype: str | None = None, argument: str = "out"):
    """An uninitialised array of `shape` on the device and in the framework of `like`.

    dtype: a name ('float32', 'bfloat16', ...); None = the dtype of `like`.
    """
    if is_torch(like):
        return torch.empty(shape, dtype=like.dtype if dtype is None else torch_dtype(dtype),
                           device=like.device)
    if isinstance(like, np.ndarray):
        return np.empty(shape, dtype=like.dtype if dtype is None else numpy_dtype(dtype))
    cp = _cupy(like)
    if cp is not None:
        with cp.cuda.Device(like.device.id):
            return cp.empty(shape, dtype=like.dtype if dtype is None else numpy_dtype(dtype))
    raise error(argument, f"cannot allocate an output for arrays of type {type(like).__name__}: "
                          f"pass {argument}= (a writable array), or use torch / NumPy / CuPy "
                          "arrays")


def shape_of(x, argument: str, ndim: int, layout: str):
    """x.shape as a tuple of `ndim` ints, or an OpenMLAError naming the argument."""
    if x is None:
        raise error(argument, f"expected a tensor {layout}, got None")
    shape = getattr(x, "shape", None)
    if shape is None:
        raise error(argument, f"expected a tensor {layout}, got an object of type "
                              f"{type(x).__name__}")
    if len(shape) != ndim:
        raise error(argument, f"expected rank {ndim} {layout}, got shape {tuple(shape)}")
    return tuple(shape)


# ---------------------------------------------------------------- devices and streams


def device_of(x):
    """('cpu' | 'cuda', index) of an array."""
    if is_torch(x):
        if x.is_cuda:
            return ("cuda", x.get_device())
        return ("cpu", 0)
    d = _C.describe(x)["device"]
    kind, _, idx = d.partition(":")
    return (kind, int(idx) if idx else 0)


def parse_device(device):
    """Device from 'cpu', 'cuda', 'cuda:1', ('cuda', 1), a torch.device or an array."""
    if isinstance(device, tuple) and len(device) == 2:
        kind, idx = device
        return (str(kind), int(idx))
    if isinstance(device, str):
        kind, _, idx = device.partition(":")
        if kind == "cuda" and not idx and torch is not None and torch.cuda.is_available():
            return ("cuda", torch.cuda.current_device())
        return (kind, int(idx) if idx else 0)
    if torch is not None and isinstance(device, torch.device):
        idx = device.index
        if device.type == "cuda" and idx is None:
            idx = torch.cuda.current_device()
        return (device.type, idx or 0)
    if hasattr(device, "shape"):
        return device_of(device)
    raise error("device", "expected 'cpu', 'cuda', 'cuda:N', a torch.device or an array, got "
                          f"{device!r}")


def stream_handle(stream) -> int:
    """An integer cudaStream_t from an int, a torch / CuPy stream or anything with .cuda_stream."""
    if stream is None:
        return 0
    if isinstance(stream, int):
        return stream
    for attr in ("cuda_stream", "ptr"):
        h = getattr(stream, attr, None)
        if isinstance(h, int):
            return h
    raise error("stream", "expected an integer cudaStream_t, a torch.cuda.Stream or a CuPy "
                          f"stream, got {type(stream).__name__}")


def current_stream(x) -> int:
    """The caller's current CUDA stream for the device of `x` (0 for CPU arrays).

    torch: torch.cuda.current_stream(x.device); CuPy: its current stream; else the legacy default.
    """
    if is_torch(x):
        if not x.is_cuda:
            return 0
        if _cuda_raw_stream is not None:
            return _cuda_raw_stream(x.get_device())
        return torch.cuda.current_stream(x.device).cuda_stream
    cp = _cupy(x)
    if cp is not None:
        return cp.cuda.get_current_stream().ptr
    return 0


def capturing(x) -> bool:
    """True while the current stream of `x`'s framework is being captured into a CUDA graph."""
    if is_torch(x) and x.is_cuda:
        return torch.cuda.is_current_stream_capturing()
    cp = _cupy(x)
    if cp is not None:
        try:
            return cp.cuda.get_current_stream().is_capturing()
        except Exception:  # pragma: no cover - older CuPy
            return False
    return False
