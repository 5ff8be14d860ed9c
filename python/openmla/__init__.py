"""OpenMLA: Multi-head Latent Attention kernels for Hopper (sm_90a) with a CPU reference backend.

    openmla.*            the native API, in the style of the C++ API (include/openmla/*.h):
                         DecodePlan objects, explicit out= buffers, the caller's current stream
    openmla.flash_mla    FlashMLA's Python interface (import openmla.flash_mla as flash_mla)
    openmla.kv_cache     FP8 KV-cache helpers (V32 / MODEL1 layouts)

Arrays: torch tensors (CPU / CUDA), NumPy (bf16 through ml_dtypes), CuPy, JAX, ... through DLPack;
the extension never links libtorch. With torch installed, the operators are also registered as
torch.library ops (namespace "openmla") that torch.compile and CUDA graphs handle. Errors are
OpenMLAError (a ValueError) whose .argument names the argument at fault.
"""

from . import _C
from ._arrays import OpenMLAError
from ._arrays import torch as _torch
from ._native import (DecodePlan, KVCacheFormat, append_kv_cache, dense_decode,
                      dense_prefill_backward, dense_prefill_forward, dequantize_kv_cache,
                      empty_fp8_cache, format_info, fp8_page_bytes, kv_cache_format,
                      quantize_kv_cache, sparse_decode, sparse_prefill)
from . import kv_cache, flash_mla  # noqa: E402

__version__ = "0.1.0"
version_info = tuple(_C.version)


def built_with_cuda() -> bool:
    """True when this build carries the CUDA (sm_90a) backend."""
    return _C.built_with_cuda()


def cuda_operators() -> list:
    """Names of the operators with a GPU kernel in this build (empty without CUDA)."""
    return list(_C.cuda_operators())


if _torch is not None:
    from . import _torch_ops  # noqa: F401,E402  (registers the torch.library ops)

__all__ = [
    "OpenMLAError", "DecodePlan", "KVCacheFormat", "dense_decode", "sparse_decode",
    "sparse_prefill", "dense_prefill_forward", "dense_prefill_backward", "quantize_kv_cache",
    "dequantize_kv_cache", "append_kv_cache", "empty_fp8_cache", "format_info", "fp8_page_bytes",
    "kv_cache_format", "built_with_cuda", "cuda_operators", "kv_cache", "flash_mla",
    "__version__",
]
