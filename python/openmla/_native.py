"""The native API: the C++ API of include/openmla/*.h as Python functions.

Plans are objects (DecodePlan), every output can be passed in (out=, lse=, ...) so that a call
allocates nothing, and CUDA work goes on the caller's current stream (torch / CuPy) unless
stream= names another. Arrays may come from any DLPack / buffer-protocol library; outputs that are
not passed are allocated like the first input (torch, NumPy or CuPy). Every argument is validated
by the C++ layer; its errors are OpenMLAError (a ValueError) with .argument naming the culprit.
Under torch.compile the calls become the torch.library ops of openmla._torch_ops.
"""

from __future__ import annotations

import itertools
import weakref

from . import _C
from ._arrays import (CXX_ALLOC, compiling, current_stream, empty, error, parse_device,
                      shape_of, stream_handle, torch)

KVCacheFormat = _C.KVCacheFormat

__all__ = [
    "DecodePlan", "dense_decode", "sparse_decode", "sparse_prefill", "dense_prefill_forward",
    "dense_prefill_backward", "quantize_kv_cache", "dequantize_kv_cache", "append_kv_cache",
    "KVCacheFormat", "kv_cache_format", "format_info", "fp8_page_bytes", "empty_fp8_cache",
]

# ---------------------------------------------------------------- plans

_PLANS: dict[int, weakref.ref] = {}  # key -> plan (for the torch.library ops, which take ints)
_plan_keys = itertools.count(1)


class DecodePlan:
    """Split-KV schedule of one decode step (C++ openmla::DecodePlan).

    DecodePlan(device, batch, h_q, s_q=1, h_kv=1, d_qk=576, causal=False, sparse=False, topk=0,
               extra_topk=0, num_sms=0, batch_invariant=False, external_workspace=False)

    device: 'cpu', 'cuda', 'cuda:N', a torch.device or an array whose device to use. One plan
    serves every layer of a step; call update(cache_seqlens) once per step (no host sync, CUDA
    graph safe). batch is the largest batch: update() takes any batch up to it, and the calls
    until the next update have that batch. Keep a plan alive as long as any CUDA graph that uses it. Calls that use one plan
    must not overlap on the GPU (its buffers hold their partial results and merge flags): issue
    them on one stream, and use one plan per concurrent stream. On the CPU a plan is accepted and
    ignored.

    external_workspace=True: the plan holds no partial results of its own (its largest buffer,
    ~34 MB at h_q=128 on 132 SMs, the same for every batch size); each dense_decode call then
    passes workspace= (at least workspace_bytes bytes), e.g. one shared by the plans of every
    captured batch size, or a fresh tensor from the framework's allocator per call.
    """

    __slots__ = ("_plan", "_key", "__weakref__")

    def __init__(self, device, batch: int, h_q: int, s_q: int = 1, h_kv: int = 1, d_qk: int = 576,
                 causal: bool = False, sparse: bool = False, topk: int = 0, extra_topk: int = 0,
                 num_sms: int = 0, batch_invariant: bool = False,
                 external_workspace: bool = False):
        kind, index = parse_device(device)
        self._plan = _C.DecodePlan(kind, index, int(batch), int(s_q), int(h_q), int(h_kv),
                                   int(d_qk), bool(causal), bool(sparse), int(topk),
                                   int(extra_topk), int(num_sms), bool(batch_invariant),
                                   bool(external_workspace))
        self._key = next(_plan_keys)
        _PLANS[self._key] = weakref.ref(self)
        weakref.finalize(self, _PLANS.pop, self._key, None)

    def update(self, cache_seqlens, stream=None) -> None:
        """Recompute the schedule from cache_seqlens [batch] int32 (on the plan's device)."""
        if compiling():
            raise error("plan", "DecodePlan.update cannot run inside torch.compile: call it before "
                                "the compiled step (or use openmla.flash_mla, whose metadata plans "
                                "on first use)")
        s = stream_handle(stream) if stream is not None else (
            current_stream(cache_seqlens) if cache_seqlens is not None else 0)
        self._plan.update(cache_seqlens, s)

    @property
    def config(self) -> dict:
        return self._plan.config

    @property
    def device(self) -> str:
        return self._plan.device

    @property
    def workspace_bytes(self) -> int:
        """Bytes of dense_decode's workspace= for calls with this plan (0 on the CPU, for sparse
        plans, and when no request is ever split)."""
        return self._plan.workspace_bytes

    def __repr__(self) -> str:
        c = self._plan.config
        return (f"DecodePlan({self._plan.device}, batch={c['batch']}, s_q={c['s_q']}, "
                f"h_q={c['h_q']}, h_kv={c['h_kv']}, d_qk={c['d_qk']}, causal={c['causal']}, "
                f"sparse={c['sparse']})")


def _plan_obj(plan):
    if plan is None:
        return None
    if isinstance(plan, DecodePlan):
        return plan._plan
    if isinstance(plan, _C.DecodePlan):
        return plan
    raise error("plan", f"expected an openmla.DecodePlan or None, got {type(plan).__name__}")


def _plan_key(plan) -> int:
    if plan is None:
        return 0
    if isinstance(plan, DecodePlan):
        return plan._key
    raise error("plan", f"expected an openmla.DecodePlan or None, got {type(plan).__name__}")


def plan_by_key(key: int):
    """The C++ plan of a DecodePlan key (0: None); used by the torch.library ops."""
    if key == 0:
        return None
    ref = _PLANS.get(key)
    plan = ref() if ref is not None else None
    if plan is None:
        raise error("plan", f"the DecodePlan (key {key}) was released; keep plans alive while "
                            "compiled code uses them")
    return plan._plan


def _scale(softmax_scale) -> float:
    if softmax_scale is None:
        return 0.0
    return float(softmax_scale)


def _stream(x, stream) -> int:
    return current_stream(x) if stream is None else stream_handle(stream)


def _no_stream_when_compiling(stream):
    if stream is not None:
        raise error("stream", "stream= is not supported under torch.compile: the op runs on the "
                              "current stream")


def _ops():
    return torch.ops.openmla


# ---------------------------------------------------------------- decode


def _decode_outputs(q, d_v, out, lse):
    """out [b, s_q, h_q, d_v] and lse [b, h_q, s_q] where not given, unless the extension
    allocates them itself (DLPack exchange allocator, outside torch.compile)."""
    if (out is None or lse is None) and (type(q) not in CXX_ALLOC or compiling()):
        b, s_q, h_q, _ = shape_of(q, "q", 4, "[b, s_q, h_q, d_qk]")
        if out is None:
            out = empty(q, (b, s_q, h_q, d_v))
        if lse is None:
            lse = empty(q, (b, h_q, s_q), "float32", "lse")
    return out, lse


def dense_decode(q, k_cache, block_table, cache_seqlens, *, plan=None, out=None, lse=None,
                 d_v: int = 512, softmax_scale=None, causal: bool = False, stream=None,
                 workspace=None):
    """Dense MLA decode over a paged cache (SPEC §1). Returns (out, lse).

    q [b, s_q, h_q, d_qk] bf16|fp16; k_cache [num_pages, page_size, h_kv, d_qk]; block_table
    [b, max_pages] int32; cache_seqlens [b] int32; out [b, s_q, h_q, d_v]; lse [b, h_q, s_q] fp32.
    plan: a DecodePlan updated for this step (required on CUDA).
    workspace: scratch for the partial results of split requests, a contiguous 1-D array of any
    dtype, >= plan.workspace_bytes bytes, 256-byte aligned (required for plans made with
    external_workspace=True; else it replaces the plan's own buffer for this call).
    """
    out, lse = _decode_outputs(q, d_v, out, lse)
    if compiling():
        _no_stream_when_compiling(stream)
        _ops().dense_decode(q, k_cache, block_table, cache_seqlens, out, lse, _plan_key(plan), d_v,
                            _scale(softmax_scale), causal, workspace)
        return out, lse
    return _C.dense_decode(q, k_cache, block_table, cache_seqlens, out, lse, _plan_obj(plan), d_v,
                           _scale(softmax_scale), causal, _stream(q, stream), workspace)


def sparse_decode(q, k_cache, indices, *, topk_length=None, attn_sink=None, extra_k_cache=None,
                  extra_indices=None, extra_topk_length=None, plan=None, out=None, lse=None,
                  d_v: int = 512, softmax_scale=None, stream=None):
    """Sparse MLA decode over an FP8 cache (SPEC §3). Returns (out, lse).

    q [b, s_q, h_q, d_qk] bf16 (576: V32 cache, 512: MODEL1 cache); k_cache
    [num_pages, page_size, 1, bytes_per_token] uint8|float8_e4m3fn; indices [b, s_q, topk] int32
    cache slots; topk_length [b]; attn_sink [h_q] fp32; extra_*: a second pool.
    """
    out, lse = _decode_outputs(q, d_v, out, lse)
    if compiling():
        _no_stream_when_compiling(stream)
        _ops().sparse_decode(q, k_cache, indices, topk_length, attn_sink, extra_k_cache,
                             extra_indices, extra_topk_length, out, lse, _plan_key(plan), d_v,
                             _scale(softmax_scale))
        return out, lse
    c_plan = _plan_obj(plan)
    if c_plan is not None and c_plan.device.startswith("cuda") \
            and "sparse_decode" not in _C.cuda_operators():
        raise error("sparse_decode", f"not implemented on this device ({c_plan.device}, CUDA "
                                     "sm90a) yet in this build of OpenMLA; the CPU backend has it "
                                     "(pass CPU tensors)")
    return _C.sparse_decode(q, k_cache, indices, topk_length, attn_sink, extra_k_cache,
                            extra_indices, extra_topk_length, out, lse, c_plan, d_v,
                            _scale(softmax_scale), _stream(q, stream))


# ---------------------------------------------------------------- prefill


def sparse_prefill(q, kv, indices, *, attn_sink=None, topk_length=None, out=None,
                   max_logits=None, lse=None, d_v: int = 512, softmax_scale=None, stream=None):
    """Sparse MLA prefill (SPEC §4). Returns (out, max_logits, lse).

    q [s_q, h_q, d_qk] bf16; kv [s_kv, 1, d_qk] bf16; indices [s_q, 1, topk] int32;
    out [s_q, h_q, d_v] bf16; max_logits, lse [s_q, h_q] fp32 (natural log).
    """
    if out is None or max_logits is None or lse is None:
        s_q, h_q, _ = shape_of(q, "q", 3, "[s_q, h_q, d_qk]")
        if out is None:
            out = empty(q, (s_q, h_q, d_v))
        if max_logits is None:
            max_logits = empty(q, (s_q, h_q), "float32", "max_logits")
        if lse is None:
            lse = empty(q, (s_q, h_q), "float32", "lse")
    if compiling():
        _no_stream_when_compiling(stream)
        _ops().sparse_prefill(q, kv, indices, attn_sink, topk_length, out, max_logits, lse, d_v,
                              _scale(softmax_scale))
        return out, max_logits, lse
    _C.sparse_prefill(q, kv, indices, attn_sink, topk_length, out, max_logits, lse, d_v,
                      _scale(softmax_scale), _stream(q, stream))
    return out, max_logits, lse


def dense_prefill_forward(q, k, v, cu_seqlens_q, cu_seqlens_k, *, max_seqlen_q: int = 0,
                          max_seqlen_k: int = 0, out=None, lse=None, softmax_scale=None,
                          causal: bool = False, stream=None):
    """Dense MHA prefill, varlen (SPEC §5). Returns (out, lse) with lse [h_q, total_q] fp32.

    q [total_q, h_q, d_qk]; k [total_k, h_kv, d_qk]; v [total_k, h_kv, d_v] bf16;
    cu_seqlens_q / cu_seqlens_k [batch + 1] int32; causal is bottom-right aligned.
    """
    if out is None or lse is None:
        total_q, h_q, _ = shape_of(q, "q", 3, "[total_q, h_q, d_qk]")
        if out is None:
            d_v = shape_of(v, "v", 3, "[total_k, h_kv, d_v]")[2]
            out = empty(q, (total_q, h_q, d_v))
        if lse is None:
            lse = empty(q, (h_q, total_q), "float32", "lse")
    if compiling():
        _no_stream_when_compiling(stream)
        _ops().dense_prefill_forward(q, k, v, cu_seqlens_q, cu_seqlens_k, out, lse,
                                     int(max_seqlen_q), int(max_seqlen_k), _scale(softmax_scale),
                                     causal)
        return out, lse
    _C.dense_prefill_forward(q, k, v, cu_seqlens_q, cu_seqlens_k, out, lse, int(max_seqlen_q),
                             int(max_seqlen_k), _scale(softmax_scale), causal, _stream(q, stream))
    return out, lse


def dense_prefill_backward(dout, q, k, v, out, lse, cu_seqlens_q, cu_seqlens_k, *,
                           max_seqlen_q: int = 0, max_seqlen_k: int = 0, dq=None, dk=None,
                           dv=None, softmax_scale=None, causal: bool = False, stream=None):
    """Backward of dense_prefill_forward. Returns (dq, dk, dv); lse is [h_q, total_q]."""
    if dq is None:
        dq = empty(q, tuple(shape_of(q, "q", 3, "[total_q, h_q, d_qk]")), argument="dq")
    if dk is None:
        dk = empty(k, tuple(shape_of(k, "k", 3, "[total_k, h_kv, d_qk]")), argument="dk")
    if dv is None:
        dv = empty(v, tuple(shape_of(v, "v", 3, "[total_k, h_kv, d_v]")), argument="dv")
    if compiling():
        _no_stream_when_compiling(stream)
        _ops().dense_prefill_backward(dout, q, k, v, out, lse, cu_seqlens_q, cu_seqlens_k, dq, dk,
                                      dv, int(max_seqlen_q), int(max_seqlen_k),
                                      _scale(softmax_scale), causal)
        return dq, dk, dv
    _C.dense_prefill_backward(dout, q, k, v, out, lse, cu_seqlens_q, cu_seqlens_k, dq, dk, dv,
                              int(max_seqlen_q), int(max_seqlen_k), _scale(softmax_scale), causal,
                              _stream(q, stream))
    return dq, dk, dv


# ---------------------------------------------------------------- FP8 KV cache

_FORMAT_NAMES = {"v32": KVCacheFormat.V32, "model1": KVCacheFormat.MODEL1}
_BY_HEAD_DIM = {576: KVCacheFormat.V32, 512: KVCacheFormat.MODEL1}
_BY_TOKEN_BYTES = {656: KVCacheFormat.V32, 584: KVCacheFormat.MODEL1}


def kv_cache_format(format=None, *, head_dim=None, bytes_per_token=None) -> KVCacheFormat:
    """A KVCacheFormat from a name ('v32', 'model1'), a KVCacheFormat, or inferred (None) from the
    head dim (576 -> V32, 512 -> MODEL1) or the bytes per token (656 / 584)."""
    if isinstance(format, KVCacheFormat):
        return format
    if isinstance(format, str):
        f = _FORMAT_NAMES.get(format.lower())
        if f is None:
            raise error("format", f"expected 'v32' or 'model1', got {format!r}")
        return f
    if format is not None:
        raise error("format", f"expected 'v32', 'model1', an openmla.KVCacheFormat or None, "
                              f"got {format!r}")
    if head_dim is not None:
        f = _BY_HEAD_DIM.get(int(head_dim))
        if f is None:
            raise error("input", f"expected head dim 576 (V32) or 512 (MODEL1) in the last dim, "
                                 f"got {head_dim}")
        return f
    if bytes_per_token is not None:
        f = _BY_TOKEN_BYTES.get(int(bytes_per_token))
        if f is None:
            raise error("cache", f"expected 656 (V32) or 584 (MODEL1) bytes per token in the last "
                                 f"dim, got {bytes_per_token}")
        return f
    raise error("format", "expected a format or an array to infer it from")


# Read once from the extension, so that code traced by torch.compile needs no extension call.
_INFO = {f: dict(_C.format_info(f)) for f in (KVCacheFormat.V32, KVCacheFormat.MODEL1)}


def format_info(format) -> dict:
    """d_qk, d_nope, d_rope, tile, num_tiles, bytes_per_token of a format."""
    return dict(_INFO[kv_cache_format(format)])


def fp8_page_bytes(format, page_size: int) -> int:
    """Bytes one page of `page_size` tokens occupies (MODEL1: rounded up to a multiple of 576,
    as _C.fp8_page_bytes computes it)."""
    f = kv_cache_format(format)
    raw = int(page_size) * _INFO[f]["bytes_per_token"]
    return raw if f == KVCacheFormat.V32 else -(-raw // 576) * 576


def empty_fp8_cache(num_pages: int, page_size: int, format, like):
    """An uninitialised FP8 cache [num_pages, page_size, 1, bytes_per_token] of uint8 on the device
    and in the framework of `like`, with the page stride of the format (fp8_page_bytes)."""
    f = kv_cache_format(format)
    bpt = _INFO[f]["bytes_per_token"]
    pb = fp8_page_bytes(f, page_size)
    shape = (int(num_pages), int(page_size), 1, bpt)
    if pb == page_size * bpt:
        return empty(like, shape, "uint8", "cache")
    flat = empty(like, (int(num_pages) * pb,), "uint8", "cache")
    strides = (pb, bpt, bpt, 1)
    if torch is not None and isinstance(flat, torch.Tensor):
        return flat.as_strided(shape, strides)
    import numpy as np
    if isinstance(flat, np.ndarray):
        return np.lib.stride_tricks.as_strided(flat, shape, strides)
    import cupy  # the only other framework empty() allocates for
    return cupy.lib.stride_tricks.as_strided(flat, shape, strides)


def quantize_kv_cache(input, *, format=None, out=None, stream=None):
    """Quantize a bf16 cache [num_pages, page_size, 1, d_qk] into an FP8 cache (SPEC §2).

    format: 'v32' | 'model1' | KVCacheFormat | None (from d_qk). out: the FP8 cache to write
    (default: a new one from empty_fp8_cache). Returns the cache.
    """
    shape = shape_of(input, "input", 4, "[num_pages, page_size, 1, d_qk]")
    f = kv_cache_format(format, head_dim=shape[3]) if format is None else kv_cache_format(format)
    if out is None:
        out = empty_fp8_cache(shape[0], shape[1], f, input)
    if compiling():
        _no_stream_when_compiling(stream)
        _ops().quantize_kv_cache(input, out, int(f))
        return out
    _C.quantize_kv_cache(input, out, f, _stream(input, stream))
    return out


def dequantize_kv_cache(cache, *, format=None, out=None, stream=None):
    """FP8 cache [num_pages, page_size, 1, bytes_per_token] -> bf16
    [num_pages, page_size, 1, d_qk]."""
    shape = shape_of(cache, "cache", 4, "[num_pages, page_size, 1, bytes_per_token]")
    f = (kv_cache_format(format, bytes_per_token=shape[3]) if format is None
         else kv_cache_format(format))
    if out is None:
        out = empty(cache, (shape[0], shape[1], 1, _INFO[f]["d_qk"]), "bfloat16", "output")
    if compiling():
        _no_stream_when_compiling(stream)
        _ops().dequantize_kv_cache(cache, out, int(f))
        return out
    _C.dequantize_kv_cache(cache, out, f, _stream(cache, stream))
    return out


def append_kv_cache(input, slots, cache, *, format=None, stream=None):
    """Quantize new tokens input [n, d_qk] bf16 into `cache` at slots [n] int32
    (page * page_size + offset; out-of-range slots are skipped). Returns the cache."""
    shape = shape_of(cache, "cache", 4, "[num_pages, page_size, 1, bytes_per_token]")
    f = (kv_cache_format(format, bytes_per_token=shape[3]) if format is None
         else kv_cache_format(format))
    if compiling():
        _no_stream_when_compiling(stream)
        _ops().append_kv_cache(input, slots, cache, int(f))
        return cache
    _C.append_kv_cache(input, slots, cache, f, _stream(input, stream))
    return cache
