"""openmla.flash_mla, FlashMLA's interface, on the CPU backend with NumPy arrays and torch CPU
tensors: signatures, results against refs.py and against the native API, metadata semantics."""

import inspect

import numpy as np
import pytest

import openmla
import openmla.flash_mla as flash_mla
import refs
from conftest import HAS_TORCH, requires_torch
from refs import BF16_ROUNDED, LSE, assert_close, randn
from tutils import bits_equal, to_numpy, to_torch

FRAMEWORKS = ["numpy", pytest.param("torch", marks=requires_torch)]


def conv(fw, a):
    if a is None:
        return None
    return to_torch(a) if fw == "torch" else a


E = inspect.Parameter.empty

# FlashMLA's public signatures (flash_mla/flash_mla_interface.py): names and defaults.
FLASHMLA_SIGNATURES = {
    "flash_mla_with_kvcache": [
        ("q", E), ("k_cache", E), ("block_table", E), ("cache_seqlens", E), ("head_dim_v", E),
        ("tile_scheduler_metadata", E), ("num_splits", None), ("softmax_scale", None),
        ("causal", False), ("is_fp8_kvcache", False), ("indices", None), ("attn_sink", None),
        ("extra_k_cache", None), ("extra_indices_in_kvcache", None), ("topk_length", None),
        ("extra_topk_length", None)],
    "flash_mla_sparse_fwd": [
        ("q", E), ("kv", E), ("indices", E), ("sm_scale", E), ("d_v", 512), ("attn_sink", None),
        ("topk_length", None), ("indexer_topk", 0)],
    "flash_attn_varlen_func": [
        ("q", E), ("k", E), ("v", E), ("cu_seqlens_qo", E), ("cu_seqlens_kv", E),
        ("max_seqlen_qo", E), ("max_seqlen_kv", E), ("dropout_p", 0.0), ("softmax_scale", None),
        ("causal", False), ("deterministic", False), ("is_varlen", True)],
    "flash_attn_varlen_qkvpacked_func": [
        ("qkv", E), ("cu_seqlens", E), ("max_seqlen", E), ("head_dim_qk", E), ("dropout_p", 0.0),
        ("softmax_scale", None), ("causal", False), ("deterministic", False),
        ("is_varlen", True)],
    "flash_attn_varlen_kvpacked_func": [
        ("q", E), ("kv", E), ("cu_seqlens_qo", E), ("cu_seqlens_kv", E), ("max_seqlen_qo", E),
        ("max_seqlen_kv", E), ("head_dim_qk", E), ("dropout_p", 0.0), ("softmax_scale", None),
        ("causal", False), ("deterministic", False), ("is_varlen", True)],
}


@pytest.mark.parametrize("name", sorted(FLASHMLA_SIGNATURES))
def test_signature_matches_flashmla(name):
    params = inspect.signature(getattr(flash_mla, name)).parameters
    got = [(p.name, p.default) for p in params.values()]
    assert got == FLASHMLA_SIGNATURES[name]


def test_get_mla_metadata_signature_and_exports():
    kinds = [p.kind for p in inspect.signature(flash_mla.get_mla_metadata).parameters.values()]
    assert kinds == [inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD]
    for name in ("get_mla_metadata", "flash_mla_with_kvcache", "flash_mla_sparse_fwd",
                 "flash_attn_varlen_func", "flash_attn_varlen_qkvpacked_func",
                 "flash_attn_varlen_kvpacked_func"):
        assert name in flash_mla.__all__
    meta, num_splits = flash_mla.get_mla_metadata()
    assert num_splits is None and tuple(meta.shape) == (2,)


def _dense_inputs(rng, fw, b=3, s_q=2, h_q=8, h_kv=1, d_qk=576, page=16, lengths=(0, 33, 70)):
    k_cache, bt = refs.paged_cache(rng, list(lengths)[:b], page, h_kv, d_qk)
    q = randn(rng, (b, s_q, h_q, d_qk))
    cs = np.array(list(lengths)[:b], dtype=np.int32)
    return (q, k_cache, bt, cs), tuple(conv(fw, x) for x in (q, k_cache, bt, cs))


@pytest.mark.parametrize("fw", FRAMEWORKS)
@pytest.mark.parametrize("causal", [False, True])
def test_dense_decode(rng, fw, causal):
    (q, k, bt, cs), args = _dense_inputs(rng, fw)
    meta, ns = flash_mla.get_mla_metadata()
    out, lse = flash_mla.flash_mla_with_kvcache(*args, 512, meta, ns, causal=causal)
    assert tuple(out.shape) == (3, 2, 8, 512) and tuple(lse.shape) == (3, 8, 2)
    ro, rl = refs.dense_decode(q, k, bt, cs, causal=causal)
    assert_close(to_numpy(out), ro, **BF16_ROUNDED)
    assert_close(to_numpy(lse), rl, **LSE)
    # the native API gives the same bits
    n_out, n_lse = openmla.dense_decode(*args, causal=causal)
    assert bits_equal(out, n_out) and bits_equal(lse, n_lse)


@pytest.mark.parametrize("fw", FRAMEWORKS)
def test_dense_decode_metadata_reused_across_layers(rng, fw):
    (q, k, bt, cs), args = _dense_inputs(rng, fw, h_q=16, s_q=1)
    k2 = conv(fw, refs.paged_cache(rng, [0, 33, 70], 16, 1, 576)[0])
    q2 = conv(fw, randn(rng, (3, 1, 16, 576)))
    meta, _ = flash_mla.get_mla_metadata()
    o1, l1 = flash_mla.flash_mla_with_kvcache(args[0], args[1], args[2], args[3], 512, meta)
    o2, l2 = flash_mla.flash_mla_with_kvcache(q2, k2, args[2], args[3], 512, meta,
                                              softmax_scale=0.05)
    f1 = flash_mla.flash_mla_with_kvcache(q2, k2, args[2], args[3], 512,
                                          flash_mla.get_mla_metadata()[0], softmax_scale=0.05)
    assert bits_equal(o2, f1[0]) and bits_equal(l2, f1[1])


@pytest.mark.parametrize("fw", FRAMEWORKS)
def test_dense_decode_old_style_metadata(rng, fw):
    (q, k, bt, cs), (tq, tk, tbt, tcs) = _dense_inputs(rng, fw, s_q=2, h_q=8)
    s_q, h_q, h_kv = 2, 8, 1
    tile_scheduler_metadata, num_splits = flash_mla.get_mla_metadata(tcs, s_q * h_q // h_kv, h_kv)
    out, lse = flash_mla.flash_mla_with_kvcache(tq, tk, tbt, tcs, 512, tile_scheduler_metadata,
                                                num_splits, causal=True)
    ro, rl = refs.dense_decode(q, k, bt, cs, causal=True)
    assert_close(to_numpy(out), ro, **BF16_ROUNDED)
    # hints inconsistent with the call
    meta, _ = flash_mla.get_mla_metadata(tcs, 64, 1)
    with pytest.raises(openmla.OpenMLAError) as e:
        flash_mla.flash_mla_with_kvcache(tq, tk, tbt, tcs, 512, meta, None)
    assert e.value.argument == "tile_scheduler_metadata"
    assert "num_q_tokens_per_head_k=64" in str(e.value)


@pytest.mark.parametrize("fw", FRAMEWORKS)
def test_metadata_consistency_is_checked(rng, fw):
    (_, _, _, _), (q, k, bt, cs) = _dense_inputs(rng, fw)
    meta, _ = flash_mla.get_mla_metadata()
    flash_mla.flash_mla_with_kvcache(q, k, bt, cs, 512, meta)
    with pytest.raises(openmla.OpenMLAError) as e:
        flash_mla.flash_mla_with_kvcache(q, k, bt, cs, 512, meta, causal=True)
    assert e.value.argument == "tile_scheduler_metadata" and "causal False -> True" in str(e.value)
    with pytest.raises(openmla.OpenMLAError) as e:
        flash_mla.flash_mla_with_kvcache(q[:2], k, bt[:2], cs[:2], 512, meta)
    assert "q.shape" in str(e.value)


def test_metadata_handle_forms():
    meta, _ = flash_mla.get_mla_metadata()
    st = flash_mla._state(meta)
    # a copy of the handle (as torch.compile passes it) finds the same state
    copy = meta.clone() if HAS_TORCH else meta.copy()
    assert flash_mla._state(copy) is st
    for bad in (np.zeros(2, np.int64), np.zeros(3), "x"):
        with pytest.raises(openmla.OpenMLAError) as e:
            flash_mla._state(bad)
        assert e.value.argument == "tile_scheduler_metadata"
    key = int(meta[0])
    del meta, st
    import gc
    gc.collect()
    assert key not in flash_mla._STATES
    with pytest.raises(openmla.OpenMLAError) as e:
        flash_mla._state(copy)
    assert "released" in str(e.value)


def _sparse_inputs(rng, fw, d_qk, b=2, s_q=2, h_q=8, topk=64, P=5, page=6, extra=True):
    f = refs.fmt_of(d_qk)
    kv = randn(rng, (P, page, 1, d_qk), scale=0.3)
    cache = openmla.quantize_kv_cache(kv)
    flat = np.array(np.lib.stride_tricks.as_strided(cache, (P * refs.page_bytes(f, page),), (1,)))
    q = randn(rng, (b, s_q, h_q, d_qk))
    idx = rng.integers(-1, P * page + 2, size=(b, s_q, topk)).astype(np.int32)
    tl = np.array([topk, 7][:b], dtype=np.int32)
    sink = rng.standard_normal(h_q).astype(np.float32)
    ex = None
    if extra:
        ekv = randn(rng, (2, 3, 1, d_qk), scale=0.3)
        ecache = openmla.quantize_kv_cache(ekv)
        eflat = np.array(np.lib.stride_tricks.as_strided(ecache, (2 * refs.page_bytes(f, 3),),
                                                         (1,)))
        eidx = rng.integers(-1, 6, size=(b, s_q, 64)).astype(np.int32)
        elen = np.array([64, 2][:b], dtype=np.int32)
        ex = (ecache, eflat, eidx, elen)
    return dict(q=q, cache=cache, flat=flat, idx=idx, tl=tl, sink=sink, ex=ex, P=P, page=page)


@pytest.mark.parametrize("fw", FRAMEWORKS)
@pytest.mark.parametrize("d_qk", [576, 512])
def test_sparse_decode(rng, fw, d_qk):
    t = _sparse_inputs(rng, fw, d_qk)
    c = lambda a: conv(fw, a)  # noqa: E731
    ecache, eflat, eidx, elen = t["ex"]
    meta, _ = flash_mla.get_mla_metadata()
    out, lse = flash_mla.flash_mla_with_kvcache(
        c(t["q"]), c(t["cache"]), None, None, 512, meta, None, softmax_scale=0.06,
        is_fp8_kvcache=True, indices=c(t["idx"]), attn_sink=c(t["sink"]),
        extra_k_cache=c(ecache), extra_indices_in_kvcache=c(eidx), topk_length=c(t["tl"]),
        extra_topk_length=c(elen))
    ro, rl = refs.sparse_decode(t["q"], t["flat"], t["P"], t["page"], t["idx"], t["tl"],
                                t["sink"], (eflat, 2, 3, eidx, elen), scale=0.06)
    assert_close(to_numpy(out), ro, **BF16_ROUNDED)
    assert_close(to_numpy(lse), rl, **LSE)
    # the same metadata again (next layer), and a mismatch in topk
    flash_mla.flash_mla_with_kvcache(
        c(t["q"]), c(t["cache"]), None, None, 512, meta, None, softmax_scale=0.06,
        is_fp8_kvcache=True, indices=c(t["idx"]), extra_k_cache=c(ecache),
        extra_indices_in_kvcache=c(eidx))
    with pytest.raises(openmla.OpenMLAError) as e:
        flash_mla.flash_mla_with_kvcache(c(t["q"]), c(t["cache"]), None, None, 512, meta,
                                         is_fp8_kvcache=True, indices=c(t["idx"][:, :, :32]))
    assert "topk 64 -> 32" in str(e.value)


@pytest.mark.parametrize("fw", FRAMEWORKS)
def test_sparse_decode_old_style_metadata(rng, fw):
    t = _sparse_inputs(rng, fw, 576, extra=False)
    c = lambda a: conv(fw, a)  # noqa: E731
    b, s_q, h_q, topk = 2, 2, 8, 64
    cs = c(np.zeros(b, np.int32))
    meta, ns = flash_mla.get_mla_metadata(cs, s_q * h_q, 1, h_q, True, topk)
    out, _ = flash_mla.flash_mla_with_kvcache(c(t["q"]), c(t["cache"]), None, None, 512, meta, ns,
                                              is_fp8_kvcache=True, indices=c(t["idx"]))
    ro, _ = refs.sparse_decode(t["q"], t["flat"], t["P"], t["page"], t["idx"])
    assert_close(to_numpy(out), ro, **BF16_ROUNDED)


@pytest.mark.parametrize("fw", FRAMEWORKS)
def test_sparse_prefill(rng, fw):
    s_q, s_kv, h_q, topk = 4, 30, 4, 128
    q, kv = randn(rng, (s_q, h_q, 512)), randn(rng, (s_kv, 1, 512))
    idx = rng.integers(-1, s_kv + 1, size=(s_q, 1, topk)).astype(np.int32)
    sink = np.array([0.1, -np.inf, 2.0, 0.0], dtype=np.float32)
    tl = np.array([128, 64, 0, 5], dtype=np.int32)
    c = lambda a: conv(fw, a)  # noqa: E731
    res = flash_mla.flash_mla_sparse_fwd(c(q), c(kv), c(idx), 0.05, attn_sink=c(sink),
                                         topk_length=c(tl))
    assert len(res) == 3
    ro, rm, rl = refs.sparse_prefill(q, kv, idx, 0.05, attn_sink=sink, topk_length=tl)
    assert_close(to_numpy(res[0]), ro, **BF16_ROUNDED)
    assert_close(to_numpy(res[1]), rm, **LSE)
    assert_close(to_numpy(res[2]), rl, **LSE)
    res4 = flash_mla.flash_mla_sparse_fwd(c(q), c(kv), c(idx), 0.05, 512, c(sink), c(tl), 64)
    assert len(res4) == 4 and bits_equal(res4[0], res[0])
    _, _, rl_idx = refs.sparse_prefill(q, kv, idx[:, :, :64], 0.05, topk_length=tl)
    assert_close(to_numpy(res4[3]), rl_idx, **LSE)


def _varlen_inputs(rng, h_q=4, h_kv=2, d_qk=192, d_v=128):
    cu_q = np.array([0, 4, 9], dtype=np.int32)
    cu_k = np.array([0, 6, 13], dtype=np.int32)
    q = randn(rng, (9, h_q, d_qk), scale=0.5)
    k = randn(rng, (13, h_kv, d_qk), scale=0.5)
    v = randn(rng, (13, h_kv, d_v), scale=0.5)
    return q, k, v, cu_q, cu_k


@pytest.mark.parametrize("fw", FRAMEWORKS)
@pytest.mark.parametrize("causal", [False, True])
def test_varlen_forward_and_packed_variants(rng, fw, causal):
    q, k, v, cu_q, cu_k = _varlen_inputs(rng)
    c = lambda a: conv(fw, a)  # noqa: E731
    out, lse = flash_mla.flash_attn_varlen_func(c(q), c(k), c(v), c(cu_q), c(cu_k), 5, 7,
                                                causal=causal)
    assert tuple(out.shape) == (9, 4, 128) and tuple(lse.shape) == (9, 4)
    ro, rl = refs.dense_prefill(q, k, v, cu_q, cu_k, causal=causal)
    assert_close(to_numpy(out), ro, **BF16_ROUNDED)
    assert_close(to_numpy(lse), rl.T, **LSE)
    # qkv packed (h_q == h_kv) and kv packed give the same as the unpacked call
    q2, k2, v2, cu, _ = _varlen_inputs(rng, h_q=2, h_kv=2)
    cu = np.array([0, 4, 9], dtype=np.int32)
    k2, v2 = k2[:9], v2[:9]
    qkv = np.concatenate([q2, k2, v2], axis=-1)
    a = flash_mla.flash_attn_varlen_qkvpacked_func(c(qkv), c(cu), 5, 192, causal=causal)
    b = flash_mla.flash_attn_varlen_func(c(q2), c(k2), c(v2), c(cu), c(cu), 5, 5, causal=causal)
    assert bits_equal(a[0], b[0]) and bits_equal(np.ascontiguousarray(to_numpy(a[1])),
                                                 np.ascontiguousarray(to_numpy(b[1])))
    kv = np.concatenate([k, v], axis=-1)
    a = flash_mla.flash_attn_varlen_kvpacked_func(c(q), c(kv), c(cu_q), c(cu_k), 5, 7, 192,
                                                  causal=causal)
    assert bits_equal(a[0], out)


@requires_torch
@pytest.mark.parametrize("causal", [False, True])
def test_varlen_autograd(rng, causal):
    import torch
    q, k, v, cu_q, cu_k = _varlen_inputs(rng)
    tq, tk, tv = (to_torch(x).requires_grad_() for x in (q, k, v))
    out, lse = flash_mla.flash_attn_varlen_func(tq, tk, tv, to_torch(cu_q), to_torch(cu_k), 5, 7,
                                                causal=causal, softmax_scale=0.1)
    dout = randn(rng, (9, 4, 128), scale=1.0)
    (out.float() * to_torch(dout).float()).sum().backward()
    rdq, rdk, rdv = refs.dense_prefill_backward(dout, q, k, v, cu_q, cu_k, scale=0.1,
                                                causal=causal)
    for t, want, name in ((tq, rdq, "dq"), (tk, rdk, "dk"), (tv, rdv, "dv")):
        assert t.grad is not None and t.grad.dtype == torch.bfloat16
        assert_close(to_numpy(t.grad), want, abs_tol=2e-2, rel_tol=3.01 / 128, what=name)
    # FlashMLA's autograd Function gives the same gradients
    g = [x.grad.clone() for x in (tq, tk, tv)]
    for x in (tq, tk, tv):
        x.grad = None
    out2, lse2 = flash_mla.FlashAttnVarlenFunc.apply(tq, tk, tv, to_torch(cu_q), to_torch(cu_k),
                                                     5, 7, causal, 0.1)
    assert torch.equal(out2, out) and torch.equal(lse2, lse)
    (out2.float() * to_torch(dout).float()).sum().backward()
    for x, gx in zip((tq, tk, tv), g):
        assert torch.equal(x.grad, gx)


@requires_torch
def test_qkvpacked_autograd_reaches_the_packed_tensor(rng):
    q, k, v, cu, _ = _varlen_inputs(rng, h_q=2, h_kv=2)
    cu = np.array([0, 4, 9], dtype=np.int32)
    qkv = to_torch(np.concatenate([q, k[:9], v[:9]], axis=-1)).requires_grad_()
    out, _ = flash_mla.flash_attn_varlen_qkvpacked_func(qkv, to_torch(cu), 5, 192, causal=True)
    out.float().sum().backward()  # an expanded (stride 0) gradient
    assert qkv.grad is not None and qkv.grad.shape == qkv.shape
    assert qkv.grad.float().abs().sum() > 0


@requires_torch
def test_private_varlen_helpers(rng):
    import torch
    q, k, v, cu_q, cu_k = (to_torch(x) for x in _varlen_inputs(rng))
    out = torch.empty(9, 4, 128, dtype=torch.bfloat16)
    lse = torch.empty(4, 9).t()
    o, l = flash_mla._flash_attn_varlen_forward(q, k, v, cu_q, cu_k, 5, 7, out=out, lse=lse)
    assert o is out and l.data_ptr() == lse.data_ptr()
    ref_o, ref_l = flash_mla.flash_attn_varlen_func(q, k, v, cu_q, cu_k, 5, 7)
    assert torch.equal(o, ref_o) and torch.equal(l, ref_l)
    dq, dk, dv = flash_mla._flash_attn_varlen_backward(torch.ones_like(o), q, k, v, o, l, cu_q,
                                                       cu_k, 5, 7)
    assert dq.shape == q.shape and dk.shape == k.shape and dv.shape == v.shape
