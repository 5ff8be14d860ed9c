"""The native API (openmla.*) on NumPy arrays (CPU backend) against the NumPy formulas of
refs.py: every operator, the FP8 tools byte for byte, strided inputs, out= buffers, plans."""

import math
import threading
import time

import numpy as np
import pytest

import openmla
import refs
from refs import BF16, BF16_ROUNDED, LSE, assert_close, randn

# ---------------------------------------------------------------- dense decode


@pytest.mark.parametrize("h_q,h_kv,s_q,causal,d_qk,page,dtype", [
    (16, 1, 1, False, 576, 16, BF16),
    (8, 2, 2, True, 576, 7, BF16),
    (4, 1, 3, True, 512, 64, BF16),
    (6, 3, 1, False, 512, 5, np.float16),
])
def test_dense_decode_matches_formula(rng, h_q, h_kv, s_q, causal, d_qk, page, dtype):
    lengths = [0, 1, 37, 70]
    k_cache, bt = refs.paged_cache(rng, lengths, page, h_kv, d_qk, dtype)
    q = randn(rng, (len(lengths), s_q, h_q, d_qk), dtype)
    cs = np.array(lengths, dtype=np.int32)
    out, lse = openmla.dense_decode(q, k_cache, bt, cs, causal=causal)
    assert out.dtype == dtype and out.shape == (4, s_q, h_q, 512)
    assert lse.dtype == np.float32 and lse.shape == (4, h_q, s_q)
    ro, rl = refs.dense_decode(q, k_cache, bt, cs, causal=causal)
    assert_close(out, ro, **BF16_ROUNDED, what="out")
    assert_close(lse, rl, **LSE, what="lse")
    assert np.all(out[0] == 0) and np.all(np.isinf(lse[0]))  # empty request: out 0, lse +inf


def test_dense_decode_scale_strides_and_out_buffers(rng):
    b, s_q, h_q, d = 2, 1, 4, 576
    k_cache, bt = refs.paged_cache(rng, [20, 9], 8, 1, d)
    # q, out and lse as slices of larger buffers (strides the C++ layer must honour).
    q_big = randn(rng, (b, s_q, h_q + 3, d + 64))
    q = q_big[:, :, 1:h_q + 1, :d]
    out_big = np.full((b, s_q, h_q, 2 * 512), np.nan, dtype=BF16)
    out = out_big[..., 100:612]
    lse_big = np.full((b, h_q, 2 * s_q), np.nan, dtype=np.float32)
    lse = lse_big[:, :, ::2]
    cs = np.array([20, 9], dtype=np.int32)
    r_out, r_lse = openmla.dense_decode(q, k_cache, bt, cs, out=out, lse=lse, softmax_scale=0.07)
    assert r_out is out and r_lse is lse
    ro, rl = refs.dense_decode(q, k_cache, bt, cs, scale=0.07)
    assert_close(out, ro, **BF16_ROUNDED)
    assert_close(lse, rl, **LSE)
    assert np.isnan(out_big[..., :100].astype(np.float32)).all()  # nothing outside the view
    assert np.isnan(lse_big[:, :, 1::2]).all()


def test_decode_plan_on_cpu_is_accepted_and_ignored(rng):
    k_cache, bt = refs.paged_cache(rng, [5, 6], 4, 1, 576)
    q = randn(rng, (2, 1, 8, 576))
    cs = np.array([5, 6], dtype=np.int32)
    plan = openmla.DecodePlan("cpu", batch=2, h_q=8)
    assert plan.config["batch"] == 2 and plan.config["h_q"] == 8 and plan.device == "cpu"
    plan.update(cs)
    a, la = openmla.dense_decode(q, k_cache, bt, cs, plan=plan)
    b, lb = openmla.dense_decode(q, k_cache, bt, cs)
    assert np.array_equal(a.view(np.uint16), b.view(np.uint16)) and np.array_equal(la, lb)
    assert "DecodePlan(cpu" in repr(plan)


def test_cuda_plan_without_cuda_build_or_gpu_raises():
    if openmla.built_with_cuda():
        pytest.skip("this build has the CUDA backend (covered by the GPU tests)")
    with pytest.raises(openmla.OpenMLAError) as e:
        openmla.DecodePlan("cuda:0", batch=1, h_q=16)
    assert e.value.argument == "device"


# ---------------------------------------------------------------- FP8 KV cache


@pytest.mark.parametrize("fmt,page", [("v32", 3), ("v32", 64), ("model1", 1), ("model1", 5),
                                      ("model1", 64)])
def test_fp8_quantize_is_bit_exact_and_dequantize_matches(rng, fmt, page):
    f = refs.V32 if fmt == "v32" else refs.MODEL1
    P = 3
    kv = randn(rng, (P, page, 1, f["d_qk"]), scale=0.5)
    kv[0, 0, 0, :5] = 0  # a tile with zeros and a nearly empty one
    kv[P - 1, page - 1, 0, : f["tile"]] = 0
    cache = openmla.quantize_kv_cache(kv, format=fmt)
    assert cache.shape == (P, page, 1, f["bpt"]) and cache.dtype == np.uint8
    assert cache.strides == (refs.page_bytes(f, page), f["bpt"], f["bpt"], 1)
    want = refs.quantize_pages(kv, f)
    got = np.lib.stride_tricks.as_strided(cache, (P * refs.page_bytes(f, page),), (1,))
    if fmt == "model1":  # pad bytes of a page are not specified; compare records and scales
        for p in range(P):
            base = p * refs.page_bytes(f, page)
            n = page * 584
            assert np.array_equal(got[base:base + n], want[base:base + n])
    else:
        assert np.array_equal(got, want)
    deq = openmla.dequantize_kv_cache(cache)
    assert deq.dtype == BF16 and deq.shape == kv.shape
    assert np.array_equal(deq.astype(np.float64), refs.dequantize_pages(want, P, page, f))
    # Round trip: RoPE exact, NoPE within the e4m3 step of its tile.
    err = np.abs(deq.astype(np.float64) - kv.astype(np.float64))
    assert err[..., f["d_nope"]:].max() == 0
    assert err[..., :f["d_nope"]].max() <= 0.5 * 2 ** -3 * np.abs(kv.astype(np.float64)).max() * 2


@pytest.mark.parametrize("fmt", ["v32", "model1"])
def test_fp8_append_at_slots(rng, fmt):
    f = refs.V32 if fmt == "v32" else refs.MODEL1
    P, page = 4, 5
    kv = randn(rng, (P, page, 1, f["d_qk"]))
    cache = openmla.kv_cache.quantize(kv)
    new = randn(rng, (5, f["d_qk"]))
    slots = np.array([3, -1, 17, P * page, 0], dtype=np.int32)  # -1 and past the end: skipped
    before = cache.copy()
    assert openmla.append_kv_cache(new, slots, cache) is cache
    kv2 = kv.copy()
    for j, s in enumerate(slots):
        if 0 <= s < P * page:
            kv2[s // page, s % page, 0] = new[j]
    expect = openmla.kv_cache.quantize(kv2)
    assert np.array_equal(openmla.kv_cache.dequantize(cache).view(np.uint16),
                          openmla.kv_cache.dequantize(expect).view(np.uint16))
    assert not np.array_equal(before, cache)
    # [n, 1, d] is accepted too
    openmla.kv_cache.append(cache, new[:, None, :], slots)


def test_fp8_helpers_and_formats(rng):
    assert openmla.kv_cache.bytes_per_token("v32") == 656
    assert openmla.kv_cache.bytes_per_token(openmla.KVCacheFormat.MODEL1) == 584
    assert openmla.kv_cache.page_bytes("model1", 64) == -(-64 * 584 // 576) * 576
    assert openmla.kv_cache.page_bytes("v32", 64) == 64 * 656
    assert openmla.fp8_page_bytes("MODEL1", 1) == 1152
    info = openmla.format_info("v32")
    assert (info["d_qk"], info["d_nope"], info["tile"], info["num_tiles"]) == (576, 512, 128, 4)
    assert openmla.kv_cache_format(head_dim=512) == openmla.KVCacheFormat.MODEL1
    assert openmla.kv_cache_format(bytes_per_token=656) == openmla.KVCacheFormat.V32
    like = np.zeros(1, np.float32)
    c = openmla.kv_cache.empty_cache(2, 3, "model1", like)
    assert c.shape == (2, 3, 1, 584) and c.strides[0] == 2304
    # 3-D input [num_pages, page_size, d_qk] is accepted by the helper
    kv = randn(rng, (2, 3, 576))
    assert openmla.kv_cache.quantize(kv).shape == (2, 3, 1, 656)
    for bad in ("v33", 3.5):
        with pytest.raises(openmla.OpenMLAError) as e:
            openmla.kv_cache_format(bad)
        assert e.value.argument == "format"


# ---------------------------------------------------------------- sparse decode


def _fp8_pool(rng, f, P, page):
    kv = randn(rng, (P, page, 1, f["d_qk"]), scale=0.3)
    cache = openmla.quantize_kv_cache(kv)
    flat = np.lib.stride_tricks.as_strided(cache, (P * refs.page_bytes(f, page),), (1,))
    return cache, np.array(flat)


@pytest.mark.parametrize("d_qk", [576, 512])
def test_sparse_decode_matches_formula(rng, d_qk):
    f = refs.fmt_of(d_qk)
    b, s_q, h_q, topk = 3, 2, 8, 64
    P, page = 6, 7
    cache, flat = _fp8_pool(rng, f, P, page)
    q = randn(rng, (b, s_q, h_q, d_qk))
    idx = rng.integers(-3, P * page + 5, size=(b, s_q, topk)).astype(np.int32)
    topk_length = np.array([topk, 10, 0], dtype=np.int32)
    sink = rng.standard_normal(h_q).astype(np.float32)
    sink[0], sink[1] = -np.inf, np.inf
    eP, epage, etopk = 3, 2, 64
    ecache, eflat = _fp8_pool(rng, f, eP, epage)
    eidx = rng.integers(-1, eP * epage, size=(b, s_q, etopk)).astype(np.int32)
    elen = np.array([5, 64, 0], dtype=np.int32)
    out, lse = openmla.sparse_decode(q, cache, idx, topk_length=topk_length, attn_sink=sink,
                                     extra_k_cache=ecache, extra_indices=eidx,
                                     extra_topk_length=elen, softmax_scale=0.05)
    ro, rl = refs.sparse_decode(q, flat, P, page, idx, topk_length, sink,
                                (eflat, eP, epage, eidx, elen), scale=0.05)
    assert_close(out, ro, **BF16_ROUNDED, what="out")
    assert_close(lse, rl, **LSE, what="lse")
    assert np.all(out[:, :, 1] == 0)  # attn_sink +inf
    assert np.all(np.isinf(lse[2]))  # request 2 attends to nothing


def test_sparse_decode_plain(rng):
    f = refs.V32
    cache, flat = _fp8_pool(rng, f, 4, 16)
    q = randn(rng, (2, 1, 4, 576))
    idx = rng.integers(0, 64, size=(2, 1, 64)).astype(np.int32)
    out, lse = openmla.sparse_decode(q, cache, idx)
    ro, rl = refs.sparse_decode(q, flat, 4, 16, idx)
    assert_close(out, ro, **BF16_ROUNDED)
    assert_close(lse, rl, **LSE)


# ---------------------------------------------------------------- sparse prefill


@pytest.mark.parametrize("d_qk", [576, 512])
def test_sparse_prefill_matches_formula(rng, d_qk):
    s_q, s_kv, h_q, topk = 5, 40, 4, 128
    q = randn(rng, (s_q, h_q, d_qk))
    kv = randn(rng, (s_kv, 1, d_qk))
    idx = rng.integers(-2, s_kv + 3, size=(s_q, 1, topk)).astype(np.int32)
    idx[3] = -1  # a row attending to nothing
    sink = np.array([0.5, -np.inf, np.inf, -1.0], dtype=np.float32)
    tl = np.array([128, 3, 0, 50, 128], dtype=np.int32)
    out, mx, lse = openmla.sparse_prefill(q, kv, idx, attn_sink=sink, topk_length=tl,
                                          softmax_scale=0.04)
    ro, rm, rl = refs.sparse_prefill(q, kv, idx, 0.04, attn_sink=sink, topk_length=tl)
    assert_close(out, ro, **BF16_ROUNDED, what="out")
    assert_close(mx, rm, **LSE, what="max_logits")
    assert_close(lse, rl, **LSE, what="lse")
    assert np.isneginf(mx[3]).all() and np.isposinf(lse[3]).all()


# ---------------------------------------------------------------- dense prefill


@pytest.mark.parametrize("d_qk,h_q,h_kv,causal", [(192, 4, 2, True), (128, 2, 2, False),
                                                  (192, 3, 1, False)])
def test_dense_prefill_forward_backward(rng, d_qk, h_q, h_kv, causal):
    cu_q = np.array([0, 3, 3, 9], dtype=np.int32)   # the middle sequence has no queries
    cu_k = np.array([0, 5, 7, 11], dtype=np.int32)
    q = randn(rng, (9, h_q, d_qk), scale=0.5)
    k = randn(rng, (11, h_kv, d_qk), scale=0.5)
    v = randn(rng, (11, h_kv, 128), scale=0.5)
    out, lse = openmla.dense_prefill_forward(q, k, v, cu_q, cu_k, max_seqlen_q=6, max_seqlen_k=5,
                                             causal=causal)
    assert out.shape == (9, h_q, 128) and lse.shape == (h_q, 9)
    ro, rl = refs.dense_prefill(q, k, v, cu_q, cu_k, causal=causal)
    assert_close(out, ro, **BF16_ROUNDED, what="out")
    assert_close(lse, rl, **LSE, what="lse")
    dout = randn(rng, out.shape, scale=1.0)
    dq, dk, dv = openmla.dense_prefill_backward(dout, q, k, v, out, lse, cu_q, cu_k,
                                                causal=causal)
    # The backend differentiates its own (bf16-rounded) out; the formula uses fp64 out: compare
    # with the prefill tolerance.
    rdq, rdk, rdv = refs.dense_prefill_backward(dout, q, k, v, cu_q, cu_k, causal=causal)
    for got, want, name in ((dq, rdq, "dq"), (dk, rdk, "dk"), (dv, rdv, "dv")):
        assert got.dtype == BF16
        assert_close(got, want, abs_tol=2e-2, rel_tol=3.01 / 128, what=name)


# ---------------------------------------------------------------- misc


def test_build_facts():
    assert isinstance(openmla.built_with_cuda(), bool)
    ops = openmla.cuda_operators()
    assert isinstance(ops, list)
    if openmla.built_with_cuda():
        assert "dense_decode" in ops
    else:
        assert ops == []
    assert openmla.__version__ == ".".join(map(str, openmla.version_info))


def test_describe_routes_agree(rng):
    a = randn(rng, (3, 4, 8))[:, 1:, ::2]
    d = openmla._C.describe(a)
    assert d["dtype"] == "bfloat16" and d["shape"] == (3, 3, 4) and d["strides"] == (32, 8, 2)
    assert d == openmla._C.describe(a, "dlpack")
    f8 = np.zeros((2, 3), dtype=refs.E4M3)
    assert openmla._C.describe(f8)["dtype"] == "float8_e4m3fn"
    ro = np.broadcast_to(np.zeros(4, np.float32), (2, 4))  # read-only, stride 0
    assert openmla._C.describe(ro)["strides"] == (0, 1)
    with pytest.raises(openmla.OpenMLAError):
        openmla._C.describe(np.zeros(3, np.float64))


def test_cpu_work_releases_the_gil(rng):
    """A long CPU call in a thread must not stop the interpreter (the GIL is released)."""
    s_q, s_kv, h_q, topk = 192, 1024, 16, 256
    q = randn(rng, (s_q, h_q, 576))
    kv = randn(rng, (s_kv, 1, 576))
    idx = rng.integers(0, s_kv, size=(s_q, 1, topk)).astype(np.int32)
    t0 = time.perf_counter()
    openmla.sparse_prefill(q, kv, idx)
    single = time.perf_counter() - t0
    worker = threading.Thread(target=openmla.sparse_prefill, args=(q, kv, idx))
    stamps = [time.perf_counter()]
    worker.start()
    while worker.is_alive():
        time.sleep(0.001)
        stamps.append(time.perf_counter())
    worker.join()
    gap = max(np.diff(stamps)) if len(stamps) > 1 else math.inf
    assert gap < max(0.5 * single, 0.05), f"main thread stalled {gap:.3f}s (call {single:.3f}s)"


def test_python_format_tables_match_the_extension():
    for f in (openmla.KVCacheFormat.V32, openmla.KVCacheFormat.MODEL1):
        assert openmla.format_info(f) == openmla._C.format_info(f)
        for page in (1, 2, 3, 53, 61, 64, 69, 576):
            assert openmla.fp8_page_bytes(f, page) == openmla._C.fp8_page_bytes(f, page)
