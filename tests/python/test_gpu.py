"""GPU tests (skipped without a CUDA GPU, torch with CUDA and a CUDA build of openmla): every
function on CUDA tensors — dense decode against the CPU backend (SPEC §6 tolerances), the FP8
tools bit for bit, operators without a GPU kernel raising an error that names them — plus
torch.compile(fullgraph=True) with inductor, CUDA-graph capture and replay of decode steps, the
caller's stream, CuPy arrays, the FlashMLA user script and the overhead benchmark."""

import os
import subprocess
import sys

import numpy as np
import pytest

import openmla
import openmla.flash_mla as flash_mla
import refs
from conftest import HAS_CUDA
from refs import BF16, DECODE_OUT, LSE, assert_close, randn
from tutils import bits_equal, to_numpy, to_torch

pytestmark = pytest.mark.skipif(
    not HAS_CUDA, reason="needs a CUDA GPU, torch with CUDA and a CUDA build of openmla")

if HAS_CUDA:
    import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))


def gpu_has(op):
    return op in openmla.cuda_operators()


def expect_not_implemented(op, fn, *args, **kwargs):
    with pytest.raises(openmla.OpenMLAError) as e:
        fn(*args, **kwargs)
    assert e.value.argument == op, str(e.value)
    assert "not implemented on this device" in str(e.value)


def test_build_has_the_cuda_backend():
    assert openmla.built_with_cuda()
    ops = openmla.cuda_operators()
    for op in ("dense_decode", "quantize_kv_cache", "dequantize_kv_cache", "append_kv_cache"):
        assert op in ops


# ---------------------------------------------------------------- dense decode vs the CPU

CASES = {
    # name: (b, s_q, h_q, h_kv, d_qk, page, causal, dtype, s_k)
    "h128_sq1": (4, 1, 128, 1, 576, 64, False, BF16, 300),
    "h128_sq2_causal": (3, 2, 128, 1, 576, 64, True, BF16, 700),
    "h64_sq1": (5, 1, 64, 1, 576, 64, False, BF16, 1000),
    "h16_sq1": (5, 1, 16, 1, 576, 64, False, BF16, 2000),
    "h128_long_splitkv": (2, 1, 128, 1, 576, 64, False, BF16, 6000),
    "h32_hkv2_fp16_page32": (3, 1, 32, 2, 576, 32, False, np.float16, 500),
    "d512_page16": (3, 1, 16, 1, 512, 16, False, BF16, 400),
}


def lengths_for(rng, b, s_q, s_k, page):
    base = [s_k, 0, max(1, (s_k // page) * page), 1, max(0, s_q - 1)]
    return [base[i] if i < len(base) else int(rng.integers(1, s_k + 1)) for i in range(b)]


def decode_inputs(rng, b, s_q, h_q, h_kv, d_qk, page, dtype, lengths):
    k_cache, bt = refs.paged_cache(rng, lengths, page, h_kv, d_qk, dtype)
    q = randn(rng, (b, s_q, h_q, d_qk), dtype)
    cs = np.array(lengths, dtype=np.int32)
    return q, k_cache, bt, cs


@pytest.mark.parametrize("name", sorted(CASES))
def test_flash_mla_dense_decode_matches_cpu(rng, name):
    b, s_q, h_q, h_kv, d_qk, page, causal, dtype, s_k = CASES[name]
    lengths = lengths_for(rng, b, s_q, s_k, page)
    host = decode_inputs(rng, b, s_q, h_q, h_kv, d_qk, page, dtype, lengths)
    q, k, bt, cs = (to_torch(x, "cuda") for x in host)
    meta, num_splits = flash_mla.get_mla_metadata(cs, s_q * h_q // h_kv, h_kv)
    out, lse = flash_mla.flash_mla_with_kvcache(q, k, bt, cs, 512, meta, num_splits,
                                                causal=causal)
    assert out.is_cuda and out.dtype == q.dtype and lse.dtype == torch.float32
    ref_out, ref_lse = openmla.dense_decode(*host, causal=causal)  # CPU backend (NumPy)
    torch.cuda.synchronize()
    assert_close(to_numpy(out), ref_out, **DECODE_OUT, what="out")
    assert_close(to_numpy(lse), ref_lse, **LSE, what="lse")
    # a second layer with the same metadata (no re-planning), other q
    q2 = to_torch(randn(rng, host[0].shape, dtype), "cuda")
    out2, _ = flash_mla.flash_mla_with_kvcache(q2, k, bt, cs, 512, meta, None, causal=causal)
    ref2, _ = openmla.dense_decode(to_numpy(q2), *host[1:], causal=causal)
    assert_close(to_numpy(out2), ref2, **DECODE_OUT, what="out (layer 2)")


def test_native_dense_decode_plan_strides_and_side_stream(rng):
    b, s_q, h_q, d = 3, 1, 64, 576
    host = decode_inputs(rng, b, s_q, h_q, 1, d, 64, BF16, [1000, 17, 0])
    q_big = torch.zeros(b, s_q, h_q + 2, d + 64, dtype=torch.bfloat16, device="cuda")
    q = q_big[:, :, 1:h_q + 1, :d]
    q.copy_(to_torch(host[0], "cuda"))
    k, bt, cs = (to_torch(x, "cuda") for x in host[1:])
    out_big = torch.full((b, s_q, h_q, 512 + 64), float("nan"), dtype=torch.bfloat16,
                         device="cuda")
    out = out_big[..., 64:]
    lse = torch.full((b, h_q, 2 * s_q), float("nan"), device="cuda")[:, :, ::2]
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # the work goes on the caller's current stream
        plan = openmla.DecodePlan(q, batch=b, h_q=h_q)
        plan.update(cs)
        r = openmla.dense_decode(q, k, bt, cs, plan=plan, out=out, lse=lse, softmax_scale=0.05)
        assert r[0] is out and r[1] is lse
    side.synchronize()
    ref_out, ref_lse = openmla.dense_decode(*host, softmax_scale=0.05)
    assert_close(to_numpy(out), ref_out, **DECODE_OUT)
    assert_close(to_numpy(lse), ref_lse, **LSE)
    assert torch.isnan(out_big[..., :64].float()).all()
    # explicit stream= handle
    out.fill_(float("nan"))
    side.wait_stream(torch.cuda.current_stream())
    openmla.dense_decode(q, k, bt, cs, plan=plan, out=out, lse=lse, softmax_scale=0.05,
                         stream=side.cuda_stream)
    side.synchronize()
    assert_close(to_numpy(out), ref_out, **DECODE_OUT)


def test_external_workspace_plans(rng):
    """A plan made with external_workspace=True holds no partial results: each call passes a
    workspace (any dtype, >= workspace_bytes), and gets the plan-owned result bit for bit; the
    size does not depend on the batch; a missing or short workspace names the argument."""
    b, h_q = 3, 128
    host = decode_inputs(rng, b, 1, h_q, 1, 576, 64, BF16, [6000, 300, 4000])
    q, k, bt, cs = (to_torch(x, "cuda") for x in host)
    own = openmla.DecodePlan(q, batch=b, h_q=h_q)
    ext = openmla.DecodePlan(q, batch=b, h_q=h_q, external_workspace=True)
    n = ext.workspace_bytes
    assert n > 0 and n == own.workspace_bytes
    assert openmla.DecodePlan(q, batch=64, h_q=h_q, external_workspace=True).workspace_bytes == n
    assert openmla.DecodePlan("cpu", batch=b, h_q=h_q).workspace_bytes == 0
    assert ext.config["external_workspace"] and not own.config["external_workspace"]
    own.update(cs)
    ext.update(cs)
    o1, l1 = openmla.dense_decode(q, k, bt, cs, plan=own)
    ws = torch.full((n // 4 + 1,), float("nan"), device="cuda")  # float32 works too
    o2, l2 = openmla.dense_decode(q, k, bt, cs, plan=ext, workspace=ws)
    torch.cuda.synchronize()
    assert torch.equal(o1, o2) and torch.equal(l1, l2)
    for bad in (None, torch.empty(n - 1, dtype=torch.uint8, device="cuda")):
        with pytest.raises(openmla.OpenMLAError) as e:
            openmla.dense_decode(q, k, bt, cs, plan=ext, workspace=bad)
        assert e.value.argument == "workspace", str(e.value)
    # The FlashMLA interface keeps no partial results in its plans: eager calls share one
    # workspace per stream, captured calls take theirs from the graph's pool (the CUDA-graph
    # tests below replay such steps).
    meta, _ = flash_mla.get_mla_metadata()
    o3, l3 = flash_mla.flash_mla_with_kvcache(q, k, bt, cs, 512, meta, None)
    torch.cuda.synchronize()
    assert torch.equal(o1, o3) and torch.equal(l1, l3)
    st = flash_mla._BY_ID[id(meta)]
    assert st.plan.config["external_workspace"]
    stream = torch.cuda.current_stream().cuda_stream
    assert flash_mla._WS[(q.get_device(), stream)].numel() >= n


def test_plan_validation_on_cuda(rng):
    host = decode_inputs(rng, 2, 1, 16, 1, 576, 64, BF16, [10, 20])
    q, k, bt, cs = (to_torch(x, "cuda") for x in host)
    with pytest.raises(openmla.OpenMLAError) as e:
        openmla.dense_decode(q, k, bt, cs)  # no plan on CUDA
    assert e.value.argument == "plan"
    plan = openmla.DecodePlan("cuda", batch=3, h_q=16)
    with pytest.raises(openmla.OpenMLAError) as e:
        openmla.dense_decode(q, k, bt, cs, plan=plan)
    assert e.value.argument == "plan"
    with pytest.raises(openmla.OpenMLAError) as e:
        openmla.dense_decode(q, k.cpu(), bt, cs, plan=plan)
    assert e.value.argument == "k_cache"


# ---------------------------------------------------------------- CUDA graphs


def test_cuda_graph_capture_and_replay_flash_mla(rng):
    """A decode step as engines capture it: metadata made before the capture, first used (so
    planned) inside it; two layers; replays with new lengths and new queries."""
    b, s_q, h_q, d, page, s_k = 4, 1, 128, 576, 64, 3000
    lengths0 = [3000, 1, 700, 64]
    host = decode_inputs(rng, b, s_q, h_q, 1, d, page, BF16, [s_k] * b)  # pages for s_k tokens
    q, k, bt, cs = (to_torch(x, "cuda") for x in host)
    k2_host = randn(rng, host[1].shape)  # a second layer's cache, same page layout
    k2 = to_torch(k2_host, "cuda")
    q2 = torch.empty_like(q)
    cs.copy_(torch.tensor(lengths0, dtype=torch.int32))
    # warm up on a side stream (kernel attributes, allocator), as torch recommends
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        flash_mla.flash_mla_with_kvcache(q, k, bt, cs, 512, flash_mla.get_mla_metadata()[0])
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    meta, _ = flash_mla.get_mla_metadata()
    with torch.cuda.graph(g):
        o1, l1 = flash_mla.flash_mla_with_kvcache(q, k, bt, cs, 512, meta, None)
        o2, l2 = flash_mla.flash_mla_with_kvcache(q2, k2, bt, cs, 512, meta, None)
    for lengths in ([3000, 1, 700, 64], [5, 2999, 0, 1500], [128, 128, 128, 3000]):
        qa, qb = randn(rng, host[0].shape), randn(rng, host[0].shape)
        q.copy_(to_torch(qa, "cuda"))
        q2.copy_(to_torch(qb, "cuda"))
        cs.copy_(torch.tensor(lengths, dtype=torch.int32))
        g.replay()
        torch.cuda.synchronize()
        cs_h = np.array(lengths, dtype=np.int32)
        r1 = openmla.dense_decode(qa, host[1], host[2], cs_h)
        r2 = openmla.dense_decode(qb, k2_host, host[2], cs_h)
        assert_close(to_numpy(o1), r1[0], **DECODE_OUT, what=f"layer 1 {lengths}")
        assert_close(to_numpy(l1), r1[1], **LSE, what=f"lse 1 {lengths}")
        assert_close(to_numpy(o2), r2[0], **DECODE_OUT, what=f"layer 2 {lengths}")
    del g
    assert flash_mla.release_captured_plans() >= 1


def test_cuda_graph_native_plan_update_inside(rng):
    b, h_q = 2, 64
    host = decode_inputs(rng, b, 2, h_q, 1, 576, 64, BF16, [2000, 2000])
    q, k, bt, cs = (to_torch(x, "cuda") for x in host)
    plan = openmla.DecodePlan("cuda", batch=b, h_q=h_q, s_q=2, causal=True)
    out = torch.empty(b, 2, h_q, 512, dtype=torch.bfloat16, device="cuda")
    lse = torch.empty(b, h_q, 2, device="cuda")
    plan.update(cs)
    openmla.dense_decode(q, k, bt, cs, plan=plan, out=out, lse=lse, causal=True)  # warm-up
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        plan.update(cs)
        openmla.dense_decode(q, k, bt, cs, plan=plan, out=out, lse=lse, causal=True)
    for lengths in ([2000, 3], [1, 1999]):
        cs.copy_(torch.tensor(lengths, dtype=torch.int32))
        g.replay()
        torch.cuda.synchronize()
        ro, rl = openmla.dense_decode(host[0], host[1], host[2], np.array(lengths, np.int32),
                                      causal=True)
        assert_close(to_numpy(out), ro, **DECODE_OUT)
        assert_close(to_numpy(lse), rl, **LSE)


def test_plans_are_reused_across_steps_and_never_freed_in_a_capture(rng):
    host = decode_inputs(rng, 2, 1, 64, 1, 576, 64, BF16, [300, 40])
    q, k, bt, cs = (to_torch(x, "cuda") for x in host)
    flash_mla.release_captured_plans()

    def step():
        meta, _ = flash_mla.get_mla_metadata()
        flash_mla.flash_mla_with_kvcache(q, k, bt, cs, 512, meta, None)
        return meta

    meta = step()
    first_plan = flash_mla._state(meta).plan
    del meta  # the plan goes back to the pool ...
    meta = step()  # ... and serves the next step (no new device allocation)
    assert flash_mla._state(meta).plan is first_plan
    # ... also when the batch changes within its size class (plans serve smaller batches)
    del meta
    meta, _ = flash_mla.get_mla_metadata()
    o1, _ = flash_mla.flash_mla_with_kvcache(q[:1], k, bt[:1], cs[:1], 512, meta, None)
    assert flash_mla._state(meta).plan is first_plan
    r1, _ = openmla.dense_decode(host[0][:1], host[1], host[2][:1], host[3][:1])
    torch.cuda.synchronize()
    assert_close(to_numpy(o1), r1, **DECODE_OUT)
    del meta
    # Metadata released while a graph is captured: nothing is freed (cudaFree would break the
    # capture); the pool may exceed its size until the capture ends.
    metas = [step() for _ in range(flash_mla._POOL_MAX + 2)]
    g = torch.cuda.CUDAGraph()
    m2, _ = flash_mla.get_mla_metadata()
    with torch.cuda.graph(g):
        o, _ = flash_mla.flash_mla_with_kvcache(q, k, bt, cs, 512, m2, None)
        del metas
    assert flash_mla._pool_size > flash_mla._POOL_MAX
    g.replay()
    torch.cuda.synchronize()
    ro, _ = openmla.dense_decode(*host)
    assert_close(to_numpy(o), ro, **DECODE_OUT)
    del g
    assert flash_mla.release_captured_plans() >= 1 and flash_mla._pool_size == 0


# ---------------------------------------------------------------- torch.compile


def test_compile_fullgraph_inductor_decode_and_graph_capture(rng):
    import torch._dynamo
    torch._dynamo.reset()
    b, h_q = 3, 128
    host = decode_inputs(rng, b, 1, h_q, 1, 576, 64, BF16, [900, 900, 900])
    q, k, bt, cs = (to_torch(x, "cuda") for x in host)
    cs.copy_(torch.tensor([900, 10, 400], dtype=torch.int32))

    def step(q, k, bt, cs, meta):
        o, lse = flash_mla.flash_mla_with_kvcache(q, k, bt, cs, 512, meta, None)
        return (o.float() * 0.5).to(torch.bfloat16), lse * 2

    c = torch.compile(step, fullgraph=True)
    got = c(q, k, bt, cs, flash_mla.get_mla_metadata()[0])
    want = step(q, k, bt, cs, flash_mla.get_mla_metadata()[0])
    torch.cuda.synchronize()
    assert_close(to_numpy(got[0]), to_numpy(want[0]), **DECODE_OUT)
    assert_close(to_numpy(got[1]), to_numpy(want[1]), **LSE)
    # the compiled step captured in a CUDA graph and replayed with new lengths
    g = torch.cuda.CUDAGraph()
    meta, _ = flash_mla.get_mla_metadata()
    with torch.cuda.graph(g):
        go, gl = c(q, k, bt, cs, meta)
    cs.copy_(torch.tensor([5, 900, 1], dtype=torch.int32))
    g.replay()
    torch.cuda.synchronize()
    ro, rl = openmla.dense_decode(*host[:3], np.array([5, 900, 1], np.int32))
    assert_close(to_numpy(go).astype(np.float64) * 2, ro.astype(np.float64), **DECODE_OUT)
    assert_close(to_numpy(gl) / 2, rl, **LSE)
    # the native API with out= inside a compiled function
    plan = openmla.DecodePlan("cuda", batch=b, h_q=h_q)
    plan.update(cs)
    out = torch.empty(b, 1, h_q, 512, dtype=torch.bfloat16, device="cuda")
    lse = torch.empty(b, h_q, 1, device="cuda")

    def native(q, k, bt, cs, out, lse):
        openmla.dense_decode(q, k, bt, cs, plan=plan, out=out, lse=lse)
        return out.float().sum()

    torch.compile(native, fullgraph=True)(q, k, bt, cs, out, lse)
    torch.cuda.synchronize()
    assert_close(to_numpy(out), ro, **DECODE_OUT)


# ---------------------------------------------------------------- FP8 tools


@pytest.mark.parametrize("fmt,page", [("v32", 64), ("v32", 53), ("model1", 61), ("model1", 2)])
def test_fp8_tools_bit_identical_to_cpu(rng, fmt, page):
    f = refs.V32 if fmt == "v32" else refs.MODEL1
    kv = randn(rng, (5, page, 1, f["d_qk"]), scale=0.5)
    cpu_cache = openmla.kv_cache.quantize(kv)
    gpu_cache = openmla.kv_cache.quantize(to_torch(kv, "cuda"))
    assert gpu_cache.is_cuda and gpu_cache.stride() == cpu_cache.strides
    n = page * f["bpt"]
    for p in range(5):  # records and scales (MODEL1 page padding is unspecified)
        a = gpu_cache.as_strided((n,), (1,), p * gpu_cache.stride(0)).cpu().numpy()
        b = np.lib.stride_tricks.as_strided(cpu_cache[p], (n,), (1,))
        assert np.array_equal(a, b), f"page {p}"
    assert bits_equal(openmla.kv_cache.dequantize(gpu_cache),
                      openmla.kv_cache.dequantize(cpu_cache))
    fresh = openmla.kv_cache.dequantize(openmla.kv_cache.quantize(kv))
    new = randn(rng, (7, f["d_qk"]))
    # Distinct valid slots: with duplicates which token lands is unspecified on the GPU (it was 9
    # twice for page 2, the one failure of the first H200 run).
    slots = np.array([0, 3, -1, 5 * page - 1, 5 * page, 2 * page + 1, 1], np.int32)
    openmla.kv_cache.append(cpu_cache, new, slots)
    openmla.kv_cache.append(gpu_cache, to_torch(new, "cuda"), to_torch(slots, "cuda"))
    assert bits_equal(openmla.kv_cache.dequantize(gpu_cache),
                      openmla.kv_cache.dequantize(cpu_cache))
    # the same under torch.compile (inductor)
    c = torch.compile(lambda x: openmla.dequantize_kv_cache(openmla.quantize_kv_cache(x)),
                      fullgraph=True)
    assert bits_equal(c(to_torch(kv, "cuda")), fresh)


# ---------------------------------------------------------------- operators without kernels


def test_sparse_decode_on_cuda(rng):
    kv = randn(rng, (3, 64, 1, 576))
    cache = openmla.kv_cache.quantize(to_torch(kv, "cuda"))
    q = to_torch(randn(rng, (2, 2, 64, 576)), "cuda")
    idx = torch.randint(-1, 192, (2, 2, 128), dtype=torch.int32, device="cuda")
    sink = torch.zeros(64, device="cuda")
    meta, _ = flash_mla.get_mla_metadata()
    call = lambda: flash_mla.flash_mla_with_kvcache(  # noqa: E731
        q, cache, None, None, 512, meta, None, is_fp8_kvcache=True, indices=idx, attn_sink=sink)
    plan = openmla.DecodePlan("cuda", batch=2, h_q=64, s_q=2, sparse=True, topk=128)
    if not gpu_has("sparse_decode"):
        expect_not_implemented("sparse_decode", call)
        expect_not_implemented("sparse_decode", openmla.sparse_decode, q, cache, idx, plan=plan)
        return
    out, lse = call()
    ref = openmla.sparse_decode(*(to_numpy(x) for x in (q, cache, idx)),
                                attn_sink=np.zeros(64, np.float32))
    assert_close(to_numpy(out), ref[0], **DECODE_OUT)
    assert_close(to_numpy(lse), ref[1], **LSE)


def test_sparse_prefill_on_cuda(rng):
    q = to_torch(randn(rng, (4, 64, 576)), "cuda")
    kv = to_torch(randn(rng, (300, 1, 576)), "cuda")
    idx = torch.randint(-1, 300, (4, 1, 128), dtype=torch.int32, device="cuda")
    if not gpu_has("sparse_prefill"):
        expect_not_implemented("sparse_prefill", flash_mla.flash_mla_sparse_fwd, q, kv, idx, 0.05)
        expect_not_implemented("sparse_prefill", openmla.sparse_prefill, q, kv, idx)
        return
    got = flash_mla.flash_mla_sparse_fwd(q, kv, idx, 0.05)
    want = openmla.sparse_prefill(*(to_numpy(x) for x in (q, kv, idx)), softmax_scale=0.05)
    assert_close(to_numpy(got[0]), want[0], **refs.PREFILL_OUT)
    assert_close(to_numpy(got[2]), want[2], **LSE)


def test_dense_prefill_on_cuda(rng):
    q = to_torch(randn(rng, (9, 4, 192)), "cuda").requires_grad_()
    k = to_torch(randn(rng, (13, 2, 192)), "cuda").requires_grad_()
    v = to_torch(randn(rng, (13, 2, 128)), "cuda").requires_grad_()
    cu_q = torch.tensor([0, 4, 9], dtype=torch.int32, device="cuda")
    cu_k = torch.tensor([0, 6, 13], dtype=torch.int32, device="cuda")
    if not gpu_has("dense_prefill_forward"):
        expect_not_implemented("dense_prefill_forward", flash_mla.flash_attn_varlen_func,
                               q, k, v, cu_q, cu_k, 5, 7)
        qkv = torch.cat([q[:, :2], k[:9], v[:9]], dim=-1).detach()
        expect_not_implemented("dense_prefill_forward",
                               flash_mla.flash_attn_varlen_qkvpacked_func, qkv, cu_q, 5, 192)
        expect_not_implemented("dense_prefill_forward", openmla.dense_prefill_forward,
                               q.detach(), k.detach(), v.detach(), cu_q, cu_k)
    else:
        out, lse = flash_mla.flash_attn_varlen_func(q, k, v, cu_q, cu_k, 5, 7, causal=True)
        ro, rl = openmla.dense_prefill_forward(*(to_numpy(x) for x in (q, k, v, cu_q, cu_k)),
                                               causal=True)
        assert_close(to_numpy(out), ro, **refs.PREFILL_OUT)
        out.float().sum().backward()
    qd, kd, vd = (x.detach() for x in (q, k, v))
    if not gpu_has("dense_prefill_backward"):
        o = torch.zeros(9, 4, 128, dtype=torch.bfloat16, device="cuda")
        lse = torch.zeros(4, 9, device="cuda")
        expect_not_implemented("dense_prefill_backward", openmla.dense_prefill_backward,
                               torch.ones_like(o), qd, kd, vd, o, lse, cu_q, cu_k)


# ---------------------------------------------------------------- other array libraries


def test_cupy_arrays(rng):
    cp = pytest.importorskip("cupy")
    host = decode_inputs(rng, 2, 1, 16, 1, 576, 64, np.float16, [300, 77])
    q, k, bt, cs = (cp.asarray(x) for x in host)
    plan = openmla.DecodePlan("cuda", batch=2, h_q=16)
    plan.update(cs)
    out, lse = openmla.dense_decode(q, k, bt, cs, plan=plan)
    assert isinstance(out, cp.ndarray) and out.dtype == np.float16
    cp.cuda.get_current_stream().synchronize()
    ro, rl = openmla.dense_decode(*host)
    assert_close(cp.asnumpy(out), ro, **DECODE_OUT)
    assert_close(cp.asnumpy(lse), rl, **LSE)


# ---------------------------------------------------------------- scripts


def test_flashmla_user_script_on_cuda():
    r = subprocess.run([sys.executable, os.path.join(HERE, "flashmla_user_script.py"),
                        "--device", "cuda", "--tests", "dense_decode"],
                       capture_output=True, text=True, timeout=900)
    print(r.stdout[-3000:])
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]


def test_overhead_benchmark_runs():
    r = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "python_overhead.py"),
                        "--iters", "200"], capture_output=True, text=True, timeout=600)
    print(r.stdout[-3000:])
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
