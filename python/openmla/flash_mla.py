"""FlashMLA's Python interface on OpenMLA: ``import openmla.flash_mla as flash_mla``.

The functions of FlashMLA's ``flash_mla`` package, with the same names, argument names, defaults,
shapes and return values:

    get_mla_metadata(*args, **kwargs) -> (metadata, None)
    flash_mla_with_kvcache(q, k_cache, block_table, cache_seqlens, head_dim_v,
                           tile_scheduler_metadata, num_splits=None, softmax_scale=None,
                           causal=False, is_fp8_kvcache=False, indices=None, attn_sink=None,
                           extra_k_cache=None, extra_indices_in_kvcache=None, topk_length=None,
                           extra_topk_length=None) -> (out, softmax_lse)
    flash_mla_sparse_fwd(q, kv, indices, sm_scale, d_v=512, attn_sink=None, topk_length=None,
                         indexer_topk=0) -> (out, max_logits, lse[, lse_indexer])
    flash_attn_varlen_func / flash_attn_varlen_qkvpacked_func / flash_attn_varlen_kvpacked_func
                         -> (out, lse), differentiable (torch.autograd)

Metadata. get_mla_metadata() returns an opaque handle (a small CPU int64 tensor; a NumPy array
without torch) plus None, accepting FlashMLA's old arguments (cache_seqlens,
num_q_tokens_per_head_k, num_heads_k, num_heads_q=None, is_fp8_kvcache=False, topk=None) too.
As in FlashMLA, the split-KV schedule is made on the first flash_mla_with_kvcache call that uses
the handle (a DecodePlan, updated on the current stream: no host sync, so a captured step
re-plans on every replay) and reused by later calls, which must have the same shapes and lengths
(one handle per decode step; a new step calls get_mla_metadata() again). Call get_mla_metadata()
outside torch.compile regions; flash_mla_with_kvcache itself compiles (fullgraph) through the
torch.library ops of openmla._torch_ops. A schedule made while a CUDA graph is captured is kept
for the life of the process (graph replays read it); release_captured_plans() frees them once
those graphs are gone. On CUDA with torch, plans hold no partial results: like FlashMLA's o_accum
they live in the caching allocator (one workspace per stream for eager calls, the graph's pool
for captured ones), so pinned plans cost kilobytes.

Operators without a GPU kernel in this build (openmla.cuda_operators()) raise OpenMLAError naming
the operator when given CUDA tensors; the CPU backend computes everything.
"""

from __future__ import annotations

import collections
import inspect
import itertools
import weakref
from typing import Optional

import numpy as np

from . import _C, _native
from ._arrays import (CXX_ALLOC, OpenMLAError, capturing, compiling, current_stream, device_of,
                      empty, error, is_torch, shape_of, torch)

__all__ = [
    "get_mla_metadata",
    "flash_mla_with_kvcache",
    "flash_mla_sparse_fwd",
    "flash_attn_varlen_func",
    "flash_attn_varlen_qkvpacked_func",
    "flash_attn_varlen_kvpacked_func",
    "release_captured_plans",
]

_MAGIC = 0x4F4D4C41  # "OMLA": element 1 of every metadata handle

# ---------------------------------------------------------------- metadata


class _SchedState:
    """What a metadata handle stands for: hints from get_mla_metadata's old-style arguments, the
    configuration of its first use, the DecodePlan made then (CUDA only), and whether a CUDA
    graph captured a call with it (then the plan lives as long as the process)."""

    __slots__ = ("key", "hints", "config", "plan", "pool_key", "pinned", "ref")

    def __init__(self, key, hints):
        self.key = key
        self.hints = hints
        self.config = None
        self.plan = None
        self.pool_key = None
        self.pinned = False
        self.ref = None


_STATES: dict = {}   # key -> _SchedState
_BY_ID: dict = {}    # id(handle) -> _SchedState, while the handle object lives
_keys = itertools.count(1)
_PINNED: list = []   # plans a captured CUDA graph reads: kept until release_captured_plans()

# Plans of released metadata, ready for the next metadata of the same shapes on the same stream
# (engines make a new metadata every decode step; a plan costs a device allocation). Reuse is
# stream-ordered like PyTorch's caching allocator: the next step's planner runs after the work
# that read the plan. At most _POOL_MAX idle plans are kept; evictions free device memory, which
# never happens while a CUDA graph is being captured.
_POOL: "collections.OrderedDict" = collections.OrderedDict()
_POOL_MAX = 4
_pool_size = 0


def _cuda_capture_active() -> bool:
    return (torch is not None and torch.cuda.is_initialized()
            and torch.cuda.is_current_stream_capturing())


def _release(key, handle_id):
    st = _STATES.pop(key, None)
    if _BY_ID.get(handle_id) is st:
        _BY_ID.pop(handle_id, None)
    if st is None or st.plan is None or st.pinned:
        return
    plan, st.plan = st.plan, None
    _give_back(plan, st.pool_key)


def _give_back(plan, pool_key):
    """Returns a plan to the pool (freeing the oldest idle ones beyond _POOL_MAX)."""
    global _pool_size
    _POOL.setdefault(pool_key, []).append(plan)
    _POOL.move_to_end(pool_key)
    _pool_size += 1
    if _pool_size > _POOL_MAX and not _cuda_capture_active():
        _trim_pool(_POOL_MAX)


def _trim_pool(keep: int) -> int:
    global _pool_size
    freed = 0
    while _pool_size > keep and _POOL:
        k, plans = next(iter(_POOL.items()))  # least recently released first
        plans.pop(0)
        if not plans:
            del _POOL[k]
        _pool_size -= 1
        freed += 1
    return freed


def _take_plan(pool_key):
    global _pool_size
    plans = _POOL.get(pool_key)
    if not plans:
        return None
    plan = plans.pop()
    if not plans:
        del _POOL[pool_key]
    _pool_size -= 1
    return plan


def release_captured_plans() -> int:
    """Free the schedules kept for captured CUDA graphs and the idle ones kept for reuse (call
    once those graphs are destroyed, outside any capture). Returns how many were released."""
    n = len(_PINNED) + _trim_pool(0)
    _PINNED.clear()
    return n


_LEGACY = inspect.Signature([
    inspect.Parameter("cache_seqlens", inspect.Parameter.POSITIONAL_OR_KEYWORD),
    inspect.Parameter("num_q_tokens_per_head_k", inspect.Parameter.POSITIONAL_OR_KEYWORD),
    inspect.Parameter("num_heads_k", inspect.Parameter.POSITIONAL_OR_KEYWORD),
    inspect.Parameter("num_heads_q", inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None),
    inspect.Parameter("is_fp8_kvcache", inspect.Parameter.POSITIONAL_OR_KEYWORD, default=False),
    inspect.Parameter("topk", inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None),
])


def _legacy_hints(args, kwargs):
    if not args and not kwargs:
        return None
    try:
        bound = _LEGACY.bind(*args, **kwargs)
    except TypeError as e:
        raise TypeError(
            f"get_mla_metadata: {e}. Expected get_mla_metadata() or FlashMLA's older form "
            "get_mla_metadata(cache_seqlens, num_q_tokens_per_head_k, num_heads_k, "
            "num_heads_q=None, is_fp8_kvcache=False, topk=None)") from None
    a = bound.arguments
    (b,) = shape_of(a["cache_seqlens"], "cache_seqlens", 1, "[batch]")

    def pos_int(name, optional=False):
        v = a.get(name)
        if v is None and optional:
            return None
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v <= 0:
            raise error(name, f"expected a positive int{' or None' if optional else ''}, got {v!r}")
        return int(v)

    return {
        "batch": int(b),
        "num_q_tokens_per_head_k": pos_int("num_q_tokens_per_head_k"),
        "num_heads_k": pos_int("num_heads_k"),
        "num_heads_q": pos_int("num_heads_q", optional=True),
        "is_fp8_kvcache": bool(a.get("is_fp8_kvcache", False)),
        "topk": pos_int("topk", optional=True),
    }


def get_mla_metadata(*args, **kwargs):
    """Returns (metadata, None): an opaque handle for flash_mla_with_kvcache, whose first call
    with it makes the split-KV schedule. Arguments are optional, as in FlashMLA; FlashMLA's older
    arguments (cache_seqlens, num_q_tokens_per_head_k, num_heads_k, num_heads_q=None,
    is_fp8_kvcache=False, topk=None) are accepted and checked against that first call."""
    if compiling():
        raise error("get_mla_metadata", "call it outside torch.compile regions and pass the "
                                        "handle in (flash_mla_with_kvcache itself compiles)")
    hints = _legacy_hints(args, kwargs) if (args or kwargs) else None
    key = next(_keys)
    st = _SchedState(key, hints)
    meta = np.array((key, _MAGIC), dtype=np.int64)
    if torch is not None:
        meta = torch.from_numpy(meta)
    hid = id(meta)
    st.ref = weakref.ref(meta, lambda _, key=key, hid=hid: _release(key, hid))
    _STATES[key] = st
    _BY_ID[hid] = st
    return meta, None


def _state(meta) -> _SchedState:
    st = _BY_ID.get(id(meta))
    if st is not None:
        return st
    # Another object with the handle's contents (torch.compile passes its own view of it).
    try:
        if is_torch(meta):
            vals = meta.reshape(-1).tolist() if meta.numel() == 2 else None
        else:
            vals = np.asarray(meta).reshape(-1).tolist() if np.size(meta) == 2 else None
    except Exception:
        vals = None
    if not vals or int(vals[1]) != _MAGIC:
        raise error("tile_scheduler_metadata",
                    "expected the metadata returned by openmla.flash_mla.get_mla_metadata() "
                    f"(its first element), got {type(meta).__name__} "
                    f"{getattr(meta, 'shape', '')}")
    st = _STATES.get(int(vals[0]))
    if st is None:
        raise error("tile_scheduler_metadata", "this metadata was released (its handle was "
                                               "garbage-collected); call get_mla_metadata() again")
    return st


_CONFIG_FIELDS = ("sparse", "q.shape", "page_block_size", "num_heads_k", "causal", "device",
                  "topk", "extra_page_block_size", "extra_topk")


def _mismatch(old, new) -> OpenMLAError:
    diffs = [f"{name} {a!r} -> {b!r}" for name, a, b in zip(_CONFIG_FIELDS, old, new) if a != b]
    return error("tile_scheduler_metadata",
                 "inconsistent with the first call that used this metadata (" + ", ".join(diffs) +
                 "). One metadata serves one decode step of one shape: call get_mla_metadata() "
                 "again for another step or shape")


def _check_hints(h, b, s_q, h_q, h_kv, fp8, topk):
    if h is None:
        return
    want = {"batch": b, "num_q_tokens_per_head_k": s_q * h_q // h_kv, "num_heads_k": h_kv,
            "is_fp8_kvcache": fp8, "topk": topk}
    if h["num_heads_q"] is not None:
        want["num_heads_q"] = h_q
    bad = [f"{k}={h[k]!r} but this call has {v!r}" for k, v in want.items() if h[k] != v]
    if bad:
        raise error("tile_scheduler_metadata",
                    "get_mla_metadata was called with " + "; ".join(bad) +
                    " (batch from cache_seqlens, num_q_tokens_per_head_k = s_q * h_q / h_kv)")


def _batch_bucket(b: int) -> int:
    """The batch a pooled plan is made for: a plan serves every batch up to its own, with the
    schedule (and bits) of a plan made for that batch, so steps whose batch varies (continuous
    batching) reuse plans of a few sizes: 8, 16, 32, ..."""
    n = 8
    while n < b:
        n *= 2
    return n


def _get_plan(dev, stream, b, s_q, h_q, h_kv, d_qk, causal, sparse, topk, extra_topk,
              validate, external=False):
    """(plan, pool key): a released plan of the same configuration and stream, or a new one.
    `external`: a plan without partial-result buffers of its own (each call passes a workspace)."""
    nb = _batch_bucket(b)
    pool_key = (dev, stream, nb, s_q, h_q, h_kv, d_qk, causal, sparse, topk, extra_topk, external)
    plan = _take_plan(pool_key)
    if plan is not None:
        return plan, pool_key
    try:
        return _C.DecodePlan(dev[0], dev[1], nb, s_q, h_q, h_kv, d_qk, causal, sparse, topk,
                             extra_topk, 0, False, external), pool_key
    except OpenMLAError:
        validate()  # the operator's own checks name the argument at fault (q, k_cache, ...)
        raise


def _pin(st):
    # A CUDA graph captured a call with this metadata: its replays read the plan, which must
    # outlive the metadata (and never be freed during a capture) until release_captured_plans().
    if st.plan is not None and not st.pinned:
        st.pinned = True
        _PINNED.append(st.plan)


def _commit(st, cfg, plan, pool_key):
    st.plan = plan
    st.pool_key = pool_key
    st.config = cfg


# ---------------------------------------------------------------- decode

_F32 = torch.float32 if torch is not None else None
_U8 = torch.uint8 if torch is not None else None
_torch_capturing = torch.cuda.is_current_stream_capturing if torch is not None else None
# (CUDA device index, stream) -> the eager torch path's workspace, for the _WS_MAX streams used
# last. Dropping one is safe while work that uses it is in flight: the caching allocator hands
# its block out again only to allocations on the same stream, ordered after that work.
_WS: "collections.OrderedDict" = collections.OrderedDict()
_WS_MAX = 4


def _eager_workspace(q, index, stream, nbytes):
    """The workspace of eager torch-path calls on `stream` (grown when a plan needs more; calls
    on one stream are ordered, so they can share it like they share a plan)."""
    key = (index, stream)
    ws = _WS.get(key)
    if ws is None or ws.numel() < nbytes:
        ws = _WS[key] = q.new_empty((nbytes,), dtype=_U8)
    _WS.move_to_end(key)  # the streams used last stay
    while len(_WS) > _WS_MAX:
        _WS.popitem(last=False)
    return ws


_TorchTensor = torch.Tensor if torch is not None else ()
_raw_stream = getattr(torch._C, "_cuda_getCurrentRawStream", None) if torch is not None else None


def _dense_impl(q, k_cache, block_table, cache_seqlens, meta, head_dim_v, scale, causal):
    """Eager dense decode (also the body of the torch.library op openmla::flash_mla_decode)."""
    st = _BY_ID.get(id(meta)) or _state(meta)
    if type(q) is _TorchTensor and _raw_stream is not None:
        # torch fast path: what follows costs ~2 us of Python per call
        shape = q.shape
        cuda = q.is_cuda
        dev = ("cuda", q.get_device()) if cuda else ("cpu", 0)
        stream = _raw_stream(dev[1]) if cuda else 0
        cfg, plan, pool_key, first = _dense_plan(st, q, k_cache, block_table, cache_seqlens,
                                                 head_dim_v, scale, causal, shape, dev, stream,
                                                 cuda)
        out = lse = None  # allocated by the extension (DLPack exchange API) or just below
        if type(q) not in CXX_ALLOC:
            b, s_q, h_q = shape[0], shape[1], shape[2]
            out = q.new_empty((b, s_q, h_q, head_dim_v))
            lse = q.new_empty((b, h_q, s_q), dtype=_F32)
        # CUDA plans of the torch path hold no partial results (so the plans that captured
        # graphs pin do not each keep ~34 MB): inside a capture each call takes a workspace from
        # the caching allocator, i.e. the graph's pool, as FlashMLA does with its o_accum; eager
        # calls reuse one per stream (stream-ordered, like the plans; saves ~2.5 us per call).
        ws = None
        cap = False
        if plan is not None:
            cap = _torch_capturing()
            nbytes = plan.workspace_bytes
            if nbytes:
                ws = q.new_empty((nbytes,), dtype=_U8) if cap else _eager_workspace(
                    q, dev[1], stream, nbytes)
    else:
        dev = device_of(q)
        stream = current_stream(q)
        cfg, plan, pool_key, first = _dense_plan(st, q, k_cache, block_table, cache_seqlens,
                                                 head_dim_v, scale, causal, tuple(q.shape), dev,
                                                 stream)
        b, s_q, h_q, _ = q.shape
        out = empty(q, (b, s_q, h_q, head_dim_v))
        lse = empty(q, (b, h_q, s_q), "float32", "lse")
        ws = None  # plans made on this path keep their own partial-result buffers; one made on
        if plan is not None and plan.config["external_workspace"]:  # the torch path needs one
            ws = empty(q, (plan.workspace_bytes,), "uint8", "workspace")
        cap = plan is not None and capturing(q)
    try:
        out, lse = _C.dense_decode(q, k_cache, block_table, cache_seqlens, out, lse, plan,
                                   head_dim_v, scale, causal, stream, ws)
    except BaseException:
        if first and plan is not None:  # never freed here: we may be inside a capture
            _give_back(plan, pool_key)
        raise
    if first:  # the metadata is set by its first successful call
        _commit(st, cfg, plan, pool_key)
    if plan is not None and not st.pinned and cap:
        _pin(st)
    return out, lse


def _dense_plan(st, q, k_cache, block_table, cache_seqlens, head_dim_v, scale, causal, shape, dev,
                stream, external=False):
    """(cfg, plan, pool_key, first): the metadata's plan for this call; `first` when the metadata
    is set up by this call (then pool_key says where the new plan came from). `external`: a new
    plan is made without partial-result buffers (the caller passes a workspace per call)."""
    try:
        ks = k_cache.shape
        cfg = (False, shape, ks[1], ks[2], causal, dev, None, None, None)
    except (AttributeError, IndexError, TypeError):
        cfg = None
    if cfg is not None and st.config == cfg:
        return cfg, st.plan, None, False
    if cfg is not None and st.config is not None:
        raise _mismatch(st.config, cfg)
    plan, pool_key = _first_dense(st, q, k_cache, block_table, cache_seqlens, head_dim_v, scale,
                                  causal, dev, stream, external)
    return cfg, plan, pool_key, True


def _first_dense(st, q, k_cache, block_table, cache_seqlens, head_dim_v, scale, causal, dev,
                 stream, external=False):
    """Checks the first use of a metadata and gets its plan (CUDA; None on the CPU)."""
    b, s_q, h_q, d_qk = shape_of(q, "q", 4, "[batch_size, seq_len_q, num_heads_q, head_dim]")
    h_kv = shape_of(k_cache, "k_cache", 4,
                    "[num_blocks, page_block_size, num_heads_k, head_dim]")[2]

    def validate():  # the C++ checks of every argument (launches nothing: they fail first)
        _C.dense_decode(q, k_cache, block_table, cache_seqlens,
                        empty(q, (b, s_q, h_q, head_dim_v)), empty(q, (b, h_q, s_q), "float32"),
                        None, head_dim_v, scale, causal, 0)

    if h_kv <= 0 or h_q % h_kv:
        validate()
    _check_hints(st.hints, b, s_q, h_q, h_kv, False, None)
    if dev[0] != "cuda":
        return None, None
    plan, pool_key = _get_plan(dev, stream, b, s_q, h_q, h_kv, d_qk, causal, False, 0, 0,
                               validate, external)
    _update(plan, pool_key, cache_seqlens, stream)
    return plan, pool_key


def _update(plan, pool_key, lengths, stream):
    try:
        plan.update(lengths, stream)
    except BaseException:
        _give_back(plan, pool_key)
        raise


def _sparse_impl(q, k_cache, indices, meta, topk_length, attn_sink, extra_k_cache, extra_indices,
                 extra_topk_length, head_dim_v, scale):
    """Eager sparse decode (also the body of openmla::flash_mla_sparse_decode)."""
    st = _BY_ID.get(id(meta)) or _state(meta)
    dev = device_of(q)
    stream = current_stream(q)
    try:
        cfg = (True, tuple(q.shape), k_cache.shape[1], k_cache.shape[2], False, dev,
               indices.shape[-1], None if extra_k_cache is None else extra_k_cache.shape[1],
               None if extra_indices is None else extra_indices.shape[-1])
    except (AttributeError, IndexError, TypeError):
        cfg = None
    plan, pool_key = st.plan, None
    first = cfg is None or st.config != cfg
    if first:
        if cfg is not None and st.config is not None:
            raise _mismatch(st.config, cfg)
        plan, pool_key = _first_sparse(st, cfg, q, k_cache, indices, topk_length, attn_sink,
                                       extra_k_cache, extra_indices, extra_topk_length,
                                       head_dim_v, scale, dev, stream)
    out = lse = None
    if type(q) not in CXX_ALLOC:
        b, s_q, h_q, _ = q.shape
        out = empty(q, (b, s_q, h_q, head_dim_v))
        lse = empty(q, (b, h_q, s_q), "float32", "lse")
    try:
        out, lse = _C.sparse_decode(q, k_cache, indices, topk_length, attn_sink, extra_k_cache,
                                    extra_indices, extra_topk_length, out, lse, plan, head_dim_v,
                                    scale, stream)
    except BaseException:
        if first and plan is not None:
            _give_back(plan, pool_key)
        raise
    if first:
        _commit(st, cfg, plan, pool_key)
    if plan is not None and not st.pinned and capturing(q):
        _pin(st)
    return out, lse


def not_implemented_on_cuda(op: str, dev) -> OpenMLAError:
    ops = ", ".join(_C.cuda_operators()) or "none"
    return error(op, f"not implemented on this device ({dev[0]}:{dev[1]}, CUDA sm90a) yet in this "
                     f"build of OpenMLA (GPU operators: {ops}); the CPU backend has it (pass CPU "
                     "tensors)")


def _first_sparse(st, cfg, q, k_cache, indices, topk_length, attn_sink, extra_k_cache,
                  extra_indices, extra_topk_length, head_dim_v, scale, dev, stream):
    b, s_q, h_q, d_qk = shape_of(q, "q", 4, "[batch_size, seq_len_q, num_heads_q, head_dim]")

    def validate():
        _C.sparse_decode(q, k_cache, indices, topk_length, attn_sink, extra_k_cache,
                         extra_indices, extra_topk_length, empty(q, (b, s_q, h_q, head_dim_v)),
                         empty(q, (b, h_q, s_q), "float32"), None, head_dim_v, scale, 0)

    if cfg is None:
        validate()
    topk = int(cfg[6])
    _check_hints(st.hints, b, s_q, h_q, 1, True, topk)
    if dev[0] != "cuda":
        return None, None
    if "sparse_decode" not in _C.cuda_operators():
        raise not_implemented_on_cuda("sparse_decode", dev)
    extra_topk = 0 if cfg[8] is None else int(cfg[8])
    plan, pool_key = _get_plan(dev, stream, b, s_q, h_q, 1, d_qk, False, True, topk, extra_topk,
                               validate)
    _update(plan, pool_key, topk_length, stream)
    return plan, pool_key


def flash_mla_with_kvcache(
    q,
    k_cache,
    block_table,
    cache_seqlens,
    head_dim_v: int,
    tile_scheduler_metadata,
    num_splits=None,
    softmax_scale: Optional[float] = None,
    causal: bool = False,
    is_fp8_kvcache: bool = False,
    indices=None,
    attn_sink=None,
    extra_k_cache=None,
    extra_indices_in_kvcache=None,
    topk_length=None,
    extra_topk_length=None,
):
    """MLA decode over a paged KV cache (FlashMLA's flash_mla_with_kvcache).

    q: (batch_size, seq_len_q, num_heads_q, head_dim); k_cache: (num_blocks, page_block_size,
    num_heads_k, head_dim), bf16/fp16 for dense attention, FP8 bytes (656 per token for head_dim
    576, 584 for 512) with indices; block_table: (batch_size, max_num_blocks_per_seq) int32 and
    cache_seqlens: (batch_size,) int32 (dense; may be None when sparse); head_dim_v: 512;
    tile_scheduler_metadata: from get_mla_metadata(); num_splits: None. Sparse attention
    (indices: (batch_size, seq_len_q, topk) int32 cache slots, -1 = none) needs
    is_fp8_kvcache=True and causal=False, and takes attn_sink (num_heads_q,) fp32, topk_length
    (batch_size,) int32 and a second pool extra_k_cache / extra_indices_in_kvcache /
    extra_topk_length.

    Returns out (batch_size, seq_len_q, num_heads_q, head_dim_v) and softmax_lse
    (batch_size, num_heads_q, seq_len_q) float32.
    """
    if num_splits is not None:
        raise error("num_splits", "expected None: the split schedule lives in the metadata "
                                  "returned by get_mla_metadata (its second value is None)")
    if tile_scheduler_metadata is None:
        raise error("tile_scheduler_metadata", "expected the metadata returned by "
                                               "get_mla_metadata(), got None")
    if isinstance(head_dim_v, bool) or not isinstance(head_dim_v, (int, np.integer)):
        raise error("head_dim_v", f"expected an int (512), got {head_dim_v!r}")
    scale = 0.0 if softmax_scale is None else float(softmax_scale)
    if indices is None:
        for name, v in (("attn_sink", attn_sink), ("extra_k_cache", extra_k_cache),
                        ("extra_indices_in_kvcache", extra_indices_in_kvcache),
                        ("topk_length", topk_length), ("extra_topk_length", extra_topk_length)):
            if v is not None:
                raise error(name, "expected None without indices: it belongs to sparse attention "
                                  "(pass indices); dense decode takes block_table and "
                                  "cache_seqlens")
        if is_fp8_kvcache:
            raise error("is_fp8_kvcache", "an FP8 cache without indices (FP8 dense decode) is not "
                                          "implemented yet; FP8 caches are read by sparse decode "
                                          "(pass indices)")
        if block_table is None or cache_seqlens is None:
            raise error("block_table" if block_table is None else "cache_seqlens",
                        "expected a tensor: dense decode needs block_table and cache_seqlens")
        if compiling():
            return torch.ops.openmla.flash_mla_decode(q, k_cache, block_table, cache_seqlens,
                                                      tile_scheduler_metadata, int(head_dim_v),
                                                      scale, bool(causal))
        return _dense_impl(q, k_cache, block_table, cache_seqlens, tile_scheduler_metadata,
                           int(head_dim_v), scale, bool(causal))

    if causal:
        raise error("causal", "expected False with indices: sparse attention has no causal mask "
                              "(the indices select the keys)")
    if not is_fp8_kvcache:
        raise error("is_fp8_kvcache", "expected True with indices: sparse decode reads an FP8 "
                                      "cache (V32 layout for head_dim 576, MODEL1 for 512)")
    if (extra_k_cache is None) != (extra_indices_in_kvcache is None):
        raise error("extra_k_cache" if extra_k_cache is None else "extra_indices_in_kvcache",
                    "expected extra_k_cache and extra_indices_in_kvcache together")
    if extra_topk_length is not None and extra_k_cache is None:
        raise error("extra_topk_length", "expected None without extra_k_cache")
    if compiling():
        return torch.ops.openmla.flash_mla_sparse_decode(
            q, k_cache, indices, tile_scheduler_metadata, topk_length, attn_sink, extra_k_cache,
            extra_indices_in_kvcache, extra_topk_length, int(head_dim_v), scale)
    return _sparse_impl(q, k_cache, indices, tile_scheduler_metadata, topk_length, attn_sink,
                        extra_k_cache, extra_indices_in_kvcache, extra_topk_length,
                        int(head_dim_v), scale)


# ---------------------------------------------------------------- sparse prefill


def flash_mla_sparse_fwd(q, kv, indices, sm_scale: float, d_v: int = 512, attn_sink=None,
                         topk_length=None, indexer_topk: int = 0):
    """Sparse attention prefill (FlashMLA's flash_mla_sparse_fwd).

    q: [s_q, h_q, d_qk] bf16; kv: [s_kv, h_kv, d_qk] bf16; indices: [s_q, h_kv, topk] int32
    (invalid: -1 or >= s_kv); sm_scale: float; d_v: 512; attn_sink: optional [h_q] fp32;
    topk_length: optional [s_q] int32; indexer_topk: when > 0, also the lse over the first
    indexer_topk indices.

    Returns (output [s_q, h_q, d_v] bf16, max_logits [s_q, h_q] fp32, lse [s_q, h_q] fp32 natural
    log), plus lse_indexer [s_q, h_q] when indexer_topk > 0.
    """
    if sm_scale is None:
        raise error("sm_scale", "expected a float (FlashMLA's sm_scale has no default)")
    out, max_logits, lse = _native.sparse_prefill(q, kv, indices, attn_sink=attn_sink,
                                                  topk_length=topk_length, d_v=d_v,
                                                  softmax_scale=sm_scale)
    if isinstance(indexer_topk, bool) or not isinstance(indexer_topk, (int, np.integer)) \
            or indexer_topk < 0:
        raise error("indexer_topk", f"expected an int >= 0, got {indexer_topk!r}")
    if indexer_topk == 0:
        return out, max_logits, lse
    topk = indices.shape[-1]
    if indexer_topk > topk:
        raise error("indexer_topk", f"expected <= topk ({topk}, dim 2 of indices), got "
                                    f"{indexer_topk}")
    _, _, lse_indexer = _native.sparse_prefill(q, kv, indices[:, :, :int(indexer_topk)],
                                               topk_length=topk_length, d_v=d_v,
                                               softmax_scale=sm_scale)
    return out, max_logits, lse, lse_indexer


# ---------------------------------------------------------------- dense prefill (MHA mode)


def _check_varlen_flags(dropout_p, deterministic):
    if dropout_p != 0.0:
        raise error("dropout_p", f"expected 0.0 (no dropout in the kernels), got {dropout_p!r}")
    if deterministic:
        raise error("deterministic", "expected False (as in FlashMLA, no deterministic backward "
                                     "is offered)")


def _varlen(q, k, v, cu_seqlens_qo, cu_seqlens_kv, max_seqlen_qo, max_seqlen_kv, causal,
            softmax_scale):
    scale = 0.0 if softmax_scale is None else float(softmax_scale)
    if is_torch(q):
        out, lse = torch.ops.openmla.dense_prefill_fwd(q, k, v, cu_seqlens_qo, cu_seqlens_kv,
                                                       int(max_seqlen_qo), int(max_seqlen_kv),
                                                       scale, bool(causal))
        return out, lse.t()
    out, lse = _native.dense_prefill_forward(q, k, v, cu_seqlens_qo, cu_seqlens_kv,
                                             max_seqlen_q=max_seqlen_qo,
                                             max_seqlen_k=max_seqlen_kv, softmax_scale=scale,
                                             causal=causal)
    return out, lse.T


def _flash_attn_varlen_forward(q, k, v, cu_seqlens_qo, cu_seqlens_kv, max_seqlen_qo: int,
                               max_seqlen_kv: int, out=None, lse=None, causal: bool = False,
                               softmax_scale: Optional[float] = None, is_varlen: bool = True):
    """Forward without autograd into optional out [total_q, h_q, d_v] and lse [total_q, h_q]
    (a view of an [h_q, total_q] buffer, as FlashMLA allocates it). Returns (out, lse)."""
    lse_h = None
    if lse is not None:
        lse_h = lse.T if not is_torch(lse) else lse.t()
    out, lse_h = _native.dense_prefill_forward(
        q, k, v, cu_seqlens_qo, cu_seqlens_kv, max_seqlen_q=max_seqlen_qo,
        max_seqlen_k=max_seqlen_kv, out=out, lse=lse_h, softmax_scale=softmax_scale,
        causal=causal)
    return out, (lse_h.t() if is_torch(lse_h) else lse_h.T)


def _flash_attn_varlen_backward(do, q, k, v, out, lse, cu_seqlens_qo, cu_seqlens_kv,
                                max_seqlen_qo: int, max_seqlen_kv: int, dq=None, dk=None,
                                dv=None, causal: bool = False,
                                softmax_scale: Optional[float] = None, is_varlen: bool = True):
    """Backward without autograd; lse as the forward returned it ([total_q, h_q])."""
    lse_h = lse.t() if is_torch(lse) else lse.T
    return _native.dense_prefill_backward(
        do, q, k, v, out, lse_h, cu_seqlens_qo, cu_seqlens_kv, max_seqlen_q=max_seqlen_qo,
        max_seqlen_k=max_seqlen_kv, dq=dq, dk=dk, dv=dv, softmax_scale=softmax_scale,
        causal=causal)


def flash_attn_varlen_func(q, k, v, cu_seqlens_qo, cu_seqlens_kv, max_seqlen_qo: int,
                           max_seqlen_kv: int, dropout_p: float = 0.0,
                           softmax_scale: Optional[float] = None, causal: bool = False,
                           deterministic: bool = False, is_varlen: bool = True):
    """Dense varlen prefill (MHA mode): q [total_q, h_q, d_qk], k [total_k, h_kv, d_qk],
    v [total_k, h_kv, d_v] bf16, cu_seqlens_* [batch + 1] int32. Returns out [total_q, h_q, d_v]
    and lse [total_q, h_q] fp32 (a transposed view). Differentiable w.r.t. q, k, v (torch)."""
    _check_varlen_flags(dropout_p, deterministic)
    return _varlen(q, k, v, cu_seqlens_qo, cu_seqlens_kv, max_seqlen_qo, max_seqlen_kv, causal,
                   softmax_scale)


def flash_attn_varlen_qkvpacked_func(qkv, cu_seqlens, max_seqlen: int, head_dim_qk: int,
                                     dropout_p: float = 0.0,
                                     softmax_scale: Optional[float] = None, causal: bool = False,
                                     deterministic: bool = False, is_varlen: bool = True):
    """flash_attn_varlen_func with qkv [total, h, 2 * head_dim_qk + d_v] packed on the last dim."""
    _check_varlen_flags(dropout_p, deterministic)
    d = int(head_dim_qk)
    return _varlen(qkv[:, :, :d], qkv[:, :, d:2 * d], qkv[:, :, 2 * d:], cu_seqlens, cu_seqlens,
                   max_seqlen, max_seqlen, causal, softmax_scale)


def flash_attn_varlen_kvpacked_func(q, kv, cu_seqlens_qo, cu_seqlens_kv, max_seqlen_qo: int,
                                    max_seqlen_kv: int, head_dim_qk: int, dropout_p: float = 0.0,
                                    softmax_scale: Optional[float] = None, causal: bool = False,
                                    deterministic: bool = False, is_varlen: bool = True):
    """flash_attn_varlen_func with kv [total_k, h_kv, head_dim_qk + d_v] packed on the last dim."""
    _check_varlen_flags(dropout_p, deterministic)
    d = int(head_dim_qk)
    return _varlen(q, kv[:, :, :d], kv[:, :, d:], cu_seqlens_qo, cu_seqlens_kv, max_seqlen_qo,
                   max_seqlen_kv, causal, softmax_scale)


if torch is not None:

    class FlashAttnVarlenFunc(torch.autograd.Function):
        """FlashMLA's autograd Function: apply(q, k, v, cu_seqlens_qo, cu_seqlens_kv,
        max_seqlen_qo, max_seqlen_kv, causal=False, softmax_scale=None, is_varlen=True)."""

        @staticmethod
        def forward(ctx, q, k, v, cu_seqlens_qo, cu_seqlens_kv, max_seqlen_qo, max_seqlen_kv,
                    causal=False, softmax_scale=None, is_varlen=True):
            scale = 0.0 if softmax_scale is None else float(softmax_scale)
            out, lse = torch.ops.openmla.dense_prefill_fwd(q, k, v, cu_seqlens_qo, cu_seqlens_kv,
                                                           int(max_seqlen_qo), int(max_seqlen_kv),
                                                           scale, bool(causal))
            ctx.save_for_backward(q, k, v, out, lse, cu_seqlens_qo, cu_seqlens_kv)
            ctx.args = (int(max_seqlen_qo), int(max_seqlen_kv), scale, bool(causal))
            return out, lse.t()

        @staticmethod
        def backward(ctx, do, dlse):
            q, k, v, out, lse, cu_q, cu_k = ctx.saved_tensors
            if do.stride(-1) != 1:
                do = do.contiguous()
            dq, dk, dv = torch.ops.openmla.dense_prefill_bwd(do, q, k, v, out, lse, cu_q, cu_k,
                                                             *ctx.args)
            return dq, dk, dv, None, None, None, None, None, None, None

    __all__.append("FlashAttnVarlenFunc")
