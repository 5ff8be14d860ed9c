"""Bad arguments: every entry point raises OpenMLAError (a ValueError) whose .argument names the
argument at fault and whose message says what was expected; wrong call forms raise TypeError."""

import numpy as np
import pytest

import openmla
import openmla.flash_mla as flash_mla
import refs
from conftest import requires_torch
from refs import BF16, randn


def raises(argument, fn, *args, match=None, **kwargs):
    with pytest.raises(openmla.OpenMLAError) as e:
        fn(*args, **kwargs)
    assert isinstance(e.value, ValueError)
    assert e.value.argument == argument, f"argument {e.value.argument!r}: {e.value}"
    assert str(e.value).startswith(f"openmla: {argument}: ")
    if match:
        assert match in str(e.value), str(e.value)
    return e.value


@pytest.fixture
def dense(rng):
    k_cache, bt = refs.paged_cache(rng, [5, 9], 4, 1, 576)
    q = randn(rng, (2, 1, 8, 576))
    cs = np.array([5, 9], dtype=np.int32)
    return q, k_cache, bt, cs


def test_dense_decode_arguments(dense):
    q, k, bt, cs = dense
    f = openmla.dense_decode
    raises("q", f, q[0], k, bt, cs, match="rank 4")
    raises("q", f, q.astype(np.float32), k, bt, cs, match="dtype bfloat16 or float16")
    raises("q", f, q[..., :100], k, bt, cs, match="576 or 512")
    raises("k_cache", f, q, k.astype(np.float16), bt, cs, match="that of q")
    raises("block_table", f, q, k, bt.astype(np.int64), cs)  # int64 is not a supported dtype
    raises("block_table", f, q, k, bt.astype(np.float32), cs, match="dtype int32")
    raises("cache_seqlens", f, q, k, bt, cs[:1], match="batch of q")
    raises("d_v", f, q, k, bt, cs, d_v=256, match="expected 512")
    raises("softmax_scale", f, q, k, bt, cs, softmax_scale=-1.0)
    raises("out", f, q, k, bt, cs, out=np.empty((2, 1, 8, 256), BF16))
    raises("lse", f, q, k, bt, cs, lse=np.empty((2, 8, 1), np.float16))
    raises("q", f, q[:, :, :, ::-1], k, bt, cs, match="non-negative strides")
    raises("q", f, np.asfortranarray(q), k, bt, cs, match="last dimension contiguous")
    raises("q", f, [[1.0]], k, bt, cs, match="list")
    raises("q", f, [[1.0]], k, bt, cs, out=np.empty((2, 1, 8, 512), BF16),
           lse=np.empty((2, 8, 1), np.float32), match="DLPack")
    raises("k_cache", f, q, None, bt, cs, match="got nothing")
    raises("plan", f, q, k, bt, cs, plan="not a plan")
    out = np.empty((2, 1, 8, 512), BF16)
    raises("lse", f, q, k, bt, cs, out=out,
           lse=np.broadcast_to(np.empty(1, np.float32), (2, 8, 1)), match="distinct")
    qq = q.copy()
    raises("out", f, qq, k, bt, cs, out=qq.reshape(-1)[: 2 * 8 * 512].reshape(2, 1, 8, 512),
           match="sharing no memory with q")


def test_sparse_decode_arguments(rng):
    cache = openmla.quantize_kv_cache(randn(rng, (2, 4, 1, 576)))
    q = randn(rng, (1, 1, 4, 576))
    idx = np.zeros((1, 1, 64), np.int32)
    f = openmla.sparse_decode
    raises("k_cache", f, q, np.zeros((2, 4, 1, 584), np.uint8), idx, match="656")
    raises("indices", f, q, cache, np.zeros((2, 1, 64), np.int32), match="batch of q")
    raises("topk_length", f, q, cache, idx, topk_length=np.zeros(3, np.int32))
    raises("attn_sink", f, q, cache, idx, attn_sink=np.zeros(4, np.float64))
    raises("extra_k_cache", f, q, cache, idx, extra_indices=idx)
    raises("extra_topk_length", f, q, cache, idx, extra_topk_length=np.zeros(1, np.int32))
    raises("q", f, q.astype(np.float16), cache, idx)


def test_prefill_arguments(rng):
    q, kv = randn(rng, (3, 4, 576)), randn(rng, (10, 1, 576))
    idx = np.zeros((3, 1, 128), np.int32)
    raises("kv", openmla.sparse_prefill, q, kv[..., :512], idx, match="d_qk of q")
    raises("indices", openmla.sparse_prefill, q, kv, idx[:2])
    raises("topk_length", openmla.sparse_prefill, q, kv, idx, topk_length=np.zeros(2, np.int32))
    q, k, v = randn(rng, (5, 2, 192)), randn(rng, (6, 2, 192)), randn(rng, (6, 2, 128))
    cu_q, cu_k = np.array([0, 5], np.int32), np.array([0, 6], np.int32)
    f = openmla.dense_prefill_forward
    raises("q", f, q[..., :100], k[..., :100], v, cu_q, cu_k)
    raises("v", f, q, k, v[:5], cu_q, cu_k)
    raises("cu_seqlens_k", f, q, k, v, cu_q, np.array([0, 3, 6], np.int32))
    raises("k", f, randn(rng, (5, 3, 192)), k, v, cu_q, cu_k, match="h_kv")
    out, lse = f(q, k, v, cu_q, cu_k)
    raises("dout", openmla.dense_prefill_backward, out[:4], q, k, v, out, lse, cu_q, cu_k)
    raises("lse", openmla.dense_prefill_backward, out, q, k, v, out, lse.T, cu_q, cu_k)


def test_fp8_tool_arguments(rng):
    raises("input", openmla.quantize_kv_cache, randn(rng, (2, 3, 1, 100)))
    raises("input", openmla.quantize_kv_cache, randn(rng, (2, 3, 1, 576)).astype(np.float32))
    raises("format", openmla.quantize_kv_cache, randn(rng, (2, 3, 1, 576)), format="fp4")
    raises("input", openmla.quantize_kv_cache, randn(rng, (2, 3, 1, 576)), format="model1")
    raises("cache", openmla.dequantize_kv_cache, np.zeros((2, 3, 1, 600), np.uint8))
    cache = openmla.quantize_kv_cache(randn(rng, (2, 3, 1, 576)))
    raises("slots", openmla.append_kv_cache, randn(rng, (2, 576)), np.zeros(3, np.int32), cache)
    raises("input", openmla.append_kv_cache, randn(rng, (2, 512)), np.zeros(2, np.int32), cache)
    raises("input", openmla.kv_cache.append, cache, randn(rng, (2, 2, 576)),
           np.zeros(2, np.int32))


def test_plan_arguments():
    raises("config.h_kv", openmla.DecodePlan, "cpu", batch=1, h_q=6, h_kv=4)
    raises("config.d_qk", openmla.DecodePlan, "cpu", batch=1, h_q=8, d_qk=100)
    raises("config.h_kv", openmla.DecodePlan, "cpu", batch=1, h_q=8, h_kv=2, sparse=True)
    raises("device", openmla.DecodePlan, "tpu", batch=1, h_q=8)
    raises("device", openmla.DecodePlan, 3.5, batch=1, h_q=8)
    plan = openmla.DecodePlan("cpu", batch=2, h_q=8)
    raises("cache_seqlens", plan.update, np.zeros(3, np.int32), match="config.batch")
    raises("stream", openmla.dense_decode, np.zeros(1), None, None, None, out=1, lse=1,
           stream=object())


def test_flash_mla_arguments(dense, rng):
    q, k, bt, cs = dense
    meta, _ = flash_mla.get_mla_metadata()
    f = flash_mla.flash_mla_with_kvcache
    raises("num_splits", f, q, k, bt, cs, 512, meta, np.zeros(3, np.int32))
    raises("tile_scheduler_metadata", f, q, k, bt, cs, 512, None)
    raises("tile_scheduler_metadata", f, q, k, bt, cs, 512, np.zeros(2, np.int64))
    raises("head_dim_v", f, q, k, bt, cs, 512.0, meta)
    raises("d_v", f, q, k, bt, cs, 256, meta)
    raises("is_fp8_kvcache", f, q, k, bt, cs, 512, meta, is_fp8_kvcache=True,
           match="not implemented")
    raises("attn_sink", f, q, k, bt, cs, 512, meta, attn_sink=np.zeros(8, np.float32))
    raises("topk_length", f, q, k, bt, cs, 512, meta, topk_length=cs)
    raises("cache_seqlens", f, q, k, bt, None, 512, meta)
    idx = np.zeros((2, 1, 64), np.int32)
    raises("causal", f, q, k, None, None, 512, meta, causal=True, is_fp8_kvcache=True,
           indices=idx)
    raises("is_fp8_kvcache", f, q, k, None, None, 512, meta, indices=idx)
    raises("extra_indices_in_kvcache", f, q, k, None, None, 512, meta, is_fp8_kvcache=True,
           indices=idx, extra_k_cache=k)
    raises("extra_topk_length", f, q, k, None, None, 512, meta, is_fp8_kvcache=True,
           indices=idx, extra_topk_length=cs)
    # the operator's own checks name the argument at fault on a metadata's first use
    raises("k_cache", f, q, k, None, None, 512, meta, is_fp8_kvcache=True, indices=idx)
    raises("q", f, q[..., :100], k, bt, cs, 512, flash_mla.get_mla_metadata()[0])
    raises("q", f, q[0], k, bt, cs, 512, flash_mla.get_mla_metadata()[0])
    with pytest.raises(TypeError, match="unexpected keyword"):
        f(q, k, bt, cs, 512, meta, num_split=None)
    with pytest.raises(TypeError, match="get_mla_metadata"):
        flash_mla.get_mla_metadata(cs, 8, 1, cache_seqlen=cs)
    with pytest.raises(TypeError, match="get_mla_metadata"):
        flash_mla.get_mla_metadata(cs)
    raises("num_heads_k", flash_mla.get_mla_metadata, cs, 8, 0)
    raises("cache_seqlens", flash_mla.get_mla_metadata, np.zeros((2, 2), np.int32), 8, 1)


def test_flash_mla_prefill_arguments(rng):
    q, kv = randn(rng, (2, 4, 576)), randn(rng, (8, 1, 576))
    idx = np.zeros((2, 1, 128), np.int32)
    f = flash_mla.flash_mla_sparse_fwd
    raises("sm_scale", f, q, kv, idx, None)
    raises("indexer_topk", f, q, kv, idx, 0.1, indexer_topk=256, match="<= topk")
    raises("indexer_topk", f, q, kv, idx, 0.1, indexer_topk=-1)
    raises("d_v", f, q, kv, idx, 0.1, d_v=128)
    q, k, v = randn(rng, (5, 2, 192)), randn(rng, (6, 2, 192)), randn(rng, (6, 2, 128))
    cu_q, cu_k = np.array([0, 5], np.int32), np.array([0, 6], np.int32)
    g = flash_mla.flash_attn_varlen_func
    raises("dropout_p", g, q, k, v, cu_q, cu_k, 5, 6, dropout_p=0.1)
    raises("deterministic", g, q, k, v, cu_q, cu_k, 5, 6, deterministic=True)
    raises("dropout_p", flash_mla.flash_attn_varlen_qkvpacked_func, q, cu_q, 5, 64, 0.5)
    raises("deterministic", flash_mla.flash_attn_varlen_kvpacked_func, q, k, cu_q, cu_k, 5, 6,
           192, deterministic=True)
    with pytest.raises(TypeError):
        g(q, k, v, cu_q, cu_k, 5)


@requires_torch
def test_torch_specific_arguments(dense):
    import torch
    from tutils import to_torch
    q, k, bt, cs = (to_torch(x) for x in dense)
    raises("q", openmla.dense_decode, q.to(torch.float64), k, bt, cs, match="dtype")
    raises("block_table", openmla.dense_decode, q, k, bt.long(), cs)
    raises("q", openmla.dense_decode, q.to_sparse(), k, bt, cs)
    raises("q", openmla.dense_decode, torch.empty(2, 1, 8, 576, device="meta",
                                                  dtype=torch.bfloat16), k, bt, cs,
           match="cpu or cuda")
    # requires_grad inputs are read as they are (decode has no backward)
    out, _ = openmla.dense_decode(q.clone().requires_grad_(), k, bt, cs)
    assert out.shape == (2, 1, 8, 512)


@requires_torch
def test_errors_cross_the_torch_ops_unchanged():
    """An OpenMLAError raised inside a torch.library op reaches the caller as itself."""
    import torch
    q = torch.randn(5, 2, 192).bfloat16().requires_grad_()
    k = torch.randn(6, 2, 192).bfloat16()
    v = torch.randn(5, 2, 128).bfloat16()
    cu_q, cu_k = torch.tensor([0, 5], dtype=torch.int32), torch.tensor([0, 6], dtype=torch.int32)
    raises("v", flash_mla.flash_attn_varlen_func, q, k, v, cu_q, cu_k, 5, 6, match="total_k")
    raises("q", torch.ops.openmla.flash_mla_decode, q, k, cu_q, cu_q,
           flash_mla.get_mla_metadata()[0], 512, 0.0, False)
