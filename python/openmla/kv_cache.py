"""FP8 KV-cache helpers (SPEC §2): quantize a bf16 latent cache into the V32 (d_qk 576, 656 B per
token) or MODEL1 (d_qk 512, 584 B per token) layout, dequantize it, append new tokens at slots.

Caches are uint8 arrays [num_pages, page_size, 1, bytes_per_token] whose page stride is
page_bytes(format, page_size) (MODEL1 pages are padded to a multiple of 576 bytes), the shape
FlashMLA's sparse decode takes as k_cache. Arrays may be torch (CPU or CUDA), NumPy or CuPy;
bf16 NumPy arrays use ml_dtypes.bfloat16. The quantized bytes are identical on every backend.
"""

from __future__ import annotations

from . import _C, _native
from ._arrays import error, shape_of

KVCacheFormat = _C.KVCacheFormat
V32 = KVCacheFormat.V32
MODEL1 = KVCacheFormat.MODEL1

__all__ = ["KVCacheFormat", "V32", "MODEL1", "bytes_per_token", "page_bytes", "empty_cache",
           "quantize", "dequantize", "append"]


def bytes_per_token(format) -> int:
    """656 (V32) or 584 (MODEL1)."""
    return _native.format_info(format)["bytes_per_token"]


def page_bytes(format, page_size: int) -> int:
    """Bytes of one page (its stride in the cache)."""
    return _native.fp8_page_bytes(format, page_size)


def empty_cache(num_pages: int, page_size: int, format, like):
    """An uninitialised FP8 cache on the device and in the framework of the array `like`."""
    return _native.empty_fp8_cache(num_pages, page_size, format, like)


def _as_pages(kv):
    shape = getattr(kv, "shape", None)
    if shape is not None and len(shape) == 3:  # [num_pages, page_size, d_qk]
        return kv[:, :, None, :]
    return kv


def quantize(kv, format=None, *, out=None, stream=None):
    """bf16 kv [num_pages, page_size, (1,) d_qk] -> FP8 cache [num_pages, page_size, 1, bpt].

    format: 'v32' | 'model1' | KVCacheFormat | None (from d_qk: 576 -> V32, 512 -> MODEL1).
    """
    return _native.quantize_kv_cache(_as_pages(kv), format=format, out=out, stream=stream)


def dequantize(cache, format=None, *, out=None, stream=None):
    """FP8 cache -> bf16 [num_pages, page_size, 1, d_qk] (format from bytes per token)."""
    return _native.dequantize_kv_cache(cache, format=format, out=out, stream=stream)


def append(cache, kv, slots, format=None, *, stream=None):
    """Quantize new tokens kv [n, (1,) d_qk] bf16 into `cache` at slots [n] int32
    (page * page_size + offset; slots < 0 or past the cache are skipped). Returns the cache."""
    shape = getattr(kv, "shape", None)
    if shape is not None and len(shape) == 3:
        if shape[1] != 1:
            raise error("input", f"expected [n, d_qk] or [n, 1, d_qk], got shape {tuple(shape)}")
        kv = kv[:, 0, :]
    shape_of(cache, "cache", 4, "[num_pages, page_size, 1, bytes_per_token]")
    return _native.append_kv_cache(kv, slots, cache, format=format, stream=stream)
