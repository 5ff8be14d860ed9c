"""torch.library custom ops (namespace "openmla"), registered when torch is importable.

Every op has a fake (meta) implementation, so torch.compile(fullgraph=True) traces OpenMLA calls
without graph breaks; the real implementations only enqueue work on the current stream (no host
sync), so compiled code can be captured in CUDA graphs. The Python API (openmla.*,
openmla.flash_mla) switches to these ops while dynamo traces; eagerly it calls the extension
directly, which costs less per call.

    out= ops (mutate their outputs): dense_decode, sparse_decode, sparse_prefill,
        dense_prefill_forward, dense_prefill_backward, quantize_kv_cache, dequantize_kv_cache,
        append_kv_cache. Plans are passed as DecodePlan keys (0 = none).
    functional ops of openmla.flash_mla: flash_mla_decode, flash_mla_sparse_decode (the metadata
        handle is a tensor input), dense_prefill_fwd (differentiable) and dense_prefill_bwd.
"""

from typing import Optional

import torch
from torch import Tensor

from . import _C, _native, flash_mla
from ._arrays import current_stream

_custom_op = torch.library.custom_op


def _fmt(f: int):
    return _C.KVCacheFormat(f)


# ---------------------------------------------------------------- out= ops (native API)


@_custom_op("openmla::dense_decode", mutates_args=("out", "lse", "workspace"))
def dense_decode(q: Tensor, k_cache: Tensor, block_table: Tensor, cache_seqlens: Tensor,
                 out: Tensor, lse: Tensor, plan_key: int, d_v: int, softmax_scale: float,
                 causal: bool, workspace: Optional[Tensor]) -> None:
    _C.dense_decode(q, k_cache, block_table, cache_seqlens, out, lse, _native.plan_by_key(plan_key),
                    d_v, softmax_scale, causal, current_stream(q), workspace)


@dense_decode.register_fake
def _(q, k_cache, block_table, cache_seqlens, out, lse, plan_key, d_v, softmax_scale, causal,
      workspace):
    return None


@_custom_op("openmla::sparse_decode", mutates_args=("out", "lse"))
def sparse_decode(q: Tensor, k_cache: Tensor, indices: Tensor, topk_length: Optional[Tensor],
                  attn_sink: Optional[Tensor], extra_k_cache: Optional[Tensor],
                  extra_indices: Optional[Tensor], extra_topk_length: Optional[Tensor],
                  out: Tensor, lse: Tensor, plan_key: int, d_v: int,
                  softmax_scale: float) -> None:
    _C.sparse_decode(q, k_cache, indices, topk_length, attn_sink, extra_k_cache, extra_indices,
                     extra_topk_length, out, lse, _native.plan_by_key(plan_key), d_v,
                     softmax_scale, current_stream(q))


@sparse_decode.register_fake
def _(q, k_cache, indices, topk_length, attn_sink, extra_k_cache, extra_indices,
      extra_topk_length, out, lse, plan_key, d_v, softmax_scale):
    return None


@_custom_op("openmla::sparse_prefill", mutates_args=("out", "max_logits", "lse"))
def sparse_prefill(q: Tensor, kv: Tensor, indices: Tensor, attn_sink: Optional[Tensor],
                   topk_length: Optional[Tensor], out: Tensor, max_logits: Tensor, lse: Tensor,
                   d_v: int, softmax_scale: float) -> None:
    _C.sparse_prefill(q, kv, indices, attn_sink, topk_length, out, max_logits, lse, d_v,
                      softmax_scale, current_stream(q))


@sparse_prefill.register_fake
def _(q, kv, indices, attn_sink, topk_length, out, max_logits, lse, d_v, softmax_scale):
    return None


@_custom_op("openmla::dense_prefill_forward", mutates_args=("out", "lse"))
def dense_prefill_forward(q: Tensor, k: Tensor, v: Tensor, cu_seqlens_q: Tensor,
                          cu_seqlens_k: Tensor, out: Tensor, lse: Tensor, max_seqlen_q: int,
                          max_seqlen_k: int, softmax_scale: float, causal: bool) -> None:
    _C.dense_prefill_forward(q, k, v, cu_seqlens_q, cu_seqlens_k, out, lse, max_seqlen_q,
                             max_seqlen_k, softmax_scale, causal, current_stream(q))


@dense_prefill_forward.register_fake
def _(q, k, v, cu_seqlens_q, cu_seqlens_k, out, lse, max_seqlen_q, max_seqlen_k, softmax_scale,
      causal):
    return None


@_custom_op("openmla::dense_prefill_backward", mutates_args=("dq", "dk", "dv"))
def dense_prefill_backward(dout: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor,
                           lse: Tensor, cu_seqlens_q: Tensor, cu_seqlens_k: Tensor, dq: Tensor,
                           dk: Tensor, dv: Tensor, max_seqlen_q: int, max_seqlen_k: int,
                           softmax_scale: float, causal: bool) -> None:
    _C.dense_prefill_backward(dout, q, k, v, out, lse, cu_seqlens_q, cu_seqlens_k, dq, dk, dv,
                              max_seqlen_q, max_seqlen_k, softmax_scale, causal,
                              current_stream(q))


@dense_prefill_backward.register_fake
def _(dout, q, k, v, out, lse, cu_seqlens_q, cu_seqlens_k, dq, dk, dv, max_seqlen_q, max_seqlen_k,
      softmax_scale, causal):
    return None


@_custom_op("openmla::quantize_kv_cache", mutates_args=("cache",))
def quantize_kv_cache(input: Tensor, cache: Tensor, format: int) -> None:
    _C.quantize_kv_cache(input, cache, _fmt(format), current_stream(input))


@quantize_kv_cache.register_fake
def _(input, cache, format):
    return None


@_custom_op("openmla::dequantize_kv_cache", mutates_args=("output",))
def dequantize_kv_cache(cache: Tensor, output: Tensor, format: int) -> None:
    _C.dequantize_kv_cache(cache, output, _fmt(format), current_stream(cache))


@dequantize_kv_cache.register_fake
def _(cache, output, format):
    return None


@_custom_op("openmla::append_kv_cache", mutates_args=("cache",))
def append_kv_cache(input: Tensor, slots: Tensor, cache: Tensor, format: int) -> None:
    _C.append_kv_cache(input, slots, cache, _fmt(format), current_stream(input))


@append_kv_cache.register_fake
def _(input, slots, cache, format):
    return None


# ---------------------------------------------------------------- functional ops (flash_mla)


@_custom_op("openmla::flash_mla_decode", mutates_args=())
def flash_mla_decode(q: Tensor, k_cache: Tensor, block_table: Tensor, cache_seqlens: Tensor,
                     metadata: Tensor, head_dim_v: int, softmax_scale: float,
                     causal: bool) -> tuple[Tensor, Tensor]:
    return flash_mla._dense_impl(q, k_cache, block_table, cache_seqlens, metadata, head_dim_v,
                                 softmax_scale, causal)


@flash_mla_decode.register_fake
def _(q, k_cache, block_table, cache_seqlens, metadata, head_dim_v, softmax_scale, causal):
    b, s_q, h_q, _ = q.shape
    return q.new_empty((b, s_q, h_q, head_dim_v)), q.new_empty((b, h_q, s_q), dtype=torch.float32)


@_custom_op("openmla::flash_mla_sparse_decode", mutates_args=())
def flash_mla_sparse_decode(q: Tensor, k_cache: Tensor, indices: Tensor, metadata: Tensor,
                            topk_length: Optional[Tensor], attn_sink: Optional[Tensor],
                            extra_k_cache: Optional[Tensor], extra_indices: Optional[Tensor],
                            extra_topk_length: Optional[Tensor], head_dim_v: int,
                            softmax_scale: float) -> tuple[Tensor, Tensor]:
    return flash_mla._sparse_impl(q, k_cache, indices, metadata, topk_length, attn_sink,
                                  extra_k_cache, extra_indices, extra_topk_length, head_dim_v,
                                  softmax_scale)


@flash_mla_sparse_decode.register_fake
def _(q, k_cache, indices, metadata, topk_length, attn_sink, extra_k_cache, extra_indices,
      extra_topk_length, head_dim_v, softmax_scale):
    b, s_q, h_q, _ = q.shape
    return q.new_empty((b, s_q, h_q, head_dim_v)), q.new_empty((b, h_q, s_q), dtype=torch.float32)


@_custom_op("openmla::dense_prefill_fwd", mutates_args=())
def dense_prefill_fwd(q: Tensor, k: Tensor, v: Tensor, cu_seqlens_q: Tensor,
                      cu_seqlens_k: Tensor, max_seqlen_q: int, max_seqlen_k: int,
                      softmax_scale: float, causal: bool) -> tuple[Tensor, Tensor]:
    """Returns out [total_q, h_q, d_v] and lse [h_q, total_q] (head-major, as the kernels
    write it; flash_mla hands out its transpose)."""
    total_q, h_q, _ = q.shape
    out = q.new_empty((total_q, h_q, v.shape[-1]))
    lse = q.new_empty((h_q, total_q), dtype=torch.float32)
    _C.dense_prefill_forward(q, k, v, cu_seqlens_q, cu_seqlens_k, out, lse, max_seqlen_q,
                             max_seqlen_k, softmax_scale, causal, current_stream(q))
    return out, lse


@dense_prefill_fwd.register_fake
def _(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, softmax_scale, causal):
    total_q, h_q, _ = q.shape
    return (q.new_empty((total_q, h_q, v.shape[-1])),
            q.new_empty((h_q, total_q), dtype=torch.float32))


@_custom_op("openmla::dense_prefill_bwd", mutates_args=())
def dense_prefill_bwd(dout: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor,
                      cu_seqlens_q: Tensor, cu_seqlens_k: Tensor, max_seqlen_q: int,
                      max_seqlen_k: int, softmax_scale: float,
                      causal: bool) -> tuple[Tensor, Tensor, Tensor]:
    dq = q.new_empty(q.shape)
    dk = k.new_empty(k.shape)
    dv = v.new_empty(v.shape)
    _C.dense_prefill_backward(dout, q, k, v, out, lse, cu_seqlens_q, cu_seqlens_k, dq, dk, dv,
                              max_seqlen_q, max_seqlen_k, softmax_scale, causal,
                              current_stream(q))
    return dq, dk, dv


@dense_prefill_bwd.register_fake
def _(dout, q, k, v, out, lse, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
      softmax_scale, causal):
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)


def _prefill_setup_context(ctx, inputs, output):
    q, k, v, cu_q, cu_k, max_q, max_k, scale, causal = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse, cu_q, cu_k)
    ctx.args = (max_q, max_k, scale, causal)


def _prefill_backward(ctx, dout, dlse):
    # lse is not differentiated (as in FlashMLA): dlse is ignored.
    q, k, v, out, lse, cu_q, cu_k = ctx.saved_tensors
    if dout.stride(-1) != 1:  # e.g. the expanded gradient of a sum()
        dout = dout.contiguous()
    dq, dk, dv = torch.ops.openmla.dense_prefill_bwd(dout, q, k, v, out, lse, cu_q, cu_k,
                                                     *ctx.args)
    return dq, dk, dv, None, None, None, None, None, None


dense_prefill_fwd.register_autograd(_prefill_backward, setup_context=_prefill_setup_context)
