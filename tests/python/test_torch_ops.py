"""torch integration on the CPU: the torch.library ops (schema, fake implementations, autograd
registration through torch.library.opcheck) and torch.compile(fullgraph=True) of every API."""

import numpy as np
import pytest

import openmla
import openmla.flash_mla as flash_mla
import refs
from conftest import HAS_TORCH
from refs import randn
from tutils import to_torch

pytestmark = pytest.mark.skipif(not HAS_TORCH, reason="torch is not installed")

if HAS_TORCH:
    import torch
    import torch._dynamo

OPS = ["dense_decode", "sparse_decode", "sparse_prefill", "dense_prefill_forward",
       "dense_prefill_backward", "quantize_kv_cache", "dequantize_kv_cache", "append_kv_cache",
       "flash_mla_decode", "flash_mla_sparse_decode", "dense_prefill_fwd", "dense_prefill_bwd"]


def test_ops_are_registered():
    for name in OPS:
        assert hasattr(torch.ops.openmla, name), name


@pytest.fixture
def decode_case(rng):
    k_cache, bt = refs.paged_cache(rng, [7, 40], 16, 1, 576)
    q = randn(rng, (2, 1, 8, 576))
    cs = np.array([7, 40], dtype=np.int32)
    return tuple(to_torch(x) for x in (q, k_cache, bt, cs))


@pytest.fixture
def sparse_case(rng):
    kv = randn(rng, (3, 8, 1, 576))
    cache = to_torch(openmla.quantize_kv_cache(kv))
    q = to_torch(randn(rng, (2, 1, 4, 576)))
    idx = to_torch(rng.integers(-1, 24, size=(2, 1, 64)).astype(np.int32))
    return q, cache, idx


@pytest.fixture
def prefill_case(rng):
    q = to_torch(randn(rng, (7, 4, 192), scale=0.5))
    k = to_torch(randn(rng, (9, 2, 192), scale=0.5))
    v = to_torch(randn(rng, (9, 2, 128), scale=0.5))
    cu_q = torch.tensor([0, 3, 7], dtype=torch.int32)
    cu_k = torch.tensor([0, 4, 9], dtype=torch.int32)
    return q, k, v, cu_q, cu_k


# ---------------------------------------------------------------- opcheck

# opcheck runs each op for real, with fake tensors, through AOT dispatch (static and dynamic
# shapes) and checks the schema (declared mutations) and the autograd registration.


def test_opcheck_decode_ops(decode_case, sparse_case):
    q, k, bt, cs = decode_case
    out = torch.empty(2, 1, 8, 512, dtype=torch.bfloat16)
    lse = torch.empty(2, 8, 1)
    torch.library.opcheck(torch.ops.openmla.dense_decode.default,
                          (q, k, bt, cs, out, lse, 0, 512, 0.0, False, None))
    # with a workspace (mutated; the CPU backend checks it and leaves it alone)
    torch.library.opcheck(torch.ops.openmla.dense_decode.default,
                          (q, k, bt, cs, out, lse, 0, 512, 0.0, False,
                           torch.empty(256, dtype=torch.uint8)))
    meta, _ = flash_mla.get_mla_metadata()
    torch.library.opcheck(torch.ops.openmla.flash_mla_decode.default,
                          (q, k, bt, cs, meta, 512, 0.0, True))
    sq, cache, idx = sparse_case
    sink = torch.zeros(4)
    out = torch.empty(2, 1, 4, 512, dtype=torch.bfloat16)
    lse = torch.empty(2, 4, 1)
    torch.library.opcheck(torch.ops.openmla.sparse_decode.default,
                          (sq, cache, idx, None, sink, None, None, None, out, lse, 0, 512, 0.0))
    meta, _ = flash_mla.get_mla_metadata()
    torch.library.opcheck(torch.ops.openmla.flash_mla_sparse_decode.default,
                          (sq, cache, idx, meta, None, sink, None, None, None, 512, 0.0))


def test_opcheck_prefill_ops(rng, prefill_case):
    q, k, v, cu_q, cu_k = prefill_case
    torch.library.opcheck(torch.ops.openmla.dense_prefill_fwd.default,
                          (q, k, v, cu_q, cu_k, 4, 5, 0.0, True))
    qg, kg, vg = (x.clone().requires_grad_() for x in (q, k, v))
    torch.library.opcheck(torch.ops.openmla.dense_prefill_fwd.default,
                          (qg, kg, vg, cu_q, cu_k, 4, 5, 0.0, False))
    out, lse = torch.ops.openmla.dense_prefill_fwd(q, k, v, cu_q, cu_k, 4, 5, 0.0, False)
    dout = torch.randn_like(out)
    torch.library.opcheck(torch.ops.openmla.dense_prefill_bwd.default,
                          (dout, q, k, v, out, lse, cu_q, cu_k, 4, 5, 0.0, False))
    torch.library.opcheck(torch.ops.openmla.dense_prefill_forward.default,
                          (q, k, v, cu_q, cu_k, torch.empty_like(out), torch.empty_like(lse), 4,
                           5, 0.0, False))
    torch.library.opcheck(torch.ops.openmla.dense_prefill_backward.default,
                          (dout, q, k, v, out, lse, cu_q, cu_k, torch.empty_like(q),
                           torch.empty_like(k), torch.empty_like(v), 4, 5, 0.0, False))
    sq = to_torch(randn(rng, (3, 4, 512)))
    kv = to_torch(randn(rng, (16, 1, 512)))
    idx = torch.randint(-1, 16, (3, 1, 128), dtype=torch.int32)
    torch.library.opcheck(torch.ops.openmla.sparse_prefill.default,
                          (sq, kv, idx, None, None, torch.empty(3, 4, 512, dtype=torch.bfloat16),
                           torch.empty(3, 4), torch.empty(3, 4), 512, 0.1))


def test_opcheck_kv_cache_ops(rng):
    kv = to_torch(randn(rng, (2, 4, 1, 512)))
    cache = openmla.empty_fp8_cache(2, 4, "model1", kv)
    fmt = int(openmla.KVCacheFormat.MODEL1)
    torch.library.opcheck(torch.ops.openmla.quantize_kv_cache.default, (kv, cache, fmt))
    torch.library.opcheck(torch.ops.openmla.dequantize_kv_cache.default,
                          (cache, torch.empty_like(kv), fmt))
    torch.library.opcheck(torch.ops.openmla.append_kv_cache.default,
                          (kv[0, :3, 0], torch.tensor([0, 5, -1], dtype=torch.int32), cache, fmt))


# ---------------------------------------------------------------- torch.compile(fullgraph=True)

# aot_eager runs dynamo + AOTAutograd (functionalization, fake tensors): graph breaks and fake
# implementation errors show up exactly as with inductor, at a fraction of the compile time.
# test_compile_inductor_decode and the GPU tests use inductor.


def compiled(fn, backend="aot_eager"):
    torch._dynamo.reset()
    return torch.compile(fn, fullgraph=True, backend=backend)


def test_compile_flash_mla_decode_no_recompile_per_step(decode_case):
    q, k, bt, cs = decode_case

    def step(q, k, bt, cs, meta):
        o1, l1 = flash_mla.flash_mla_with_kvcache(q, k, bt, cs, 512, meta, None, causal=False)
        o2, l2 = flash_mla.flash_mla_with_kvcache(q * 2, k, bt, cs, 512, meta, None)
        return o1.float().sum(dim=-1) + o2.float().sum(dim=-1), l1 + l2

    c = compiled(step)
    from torch._dynamo.utils import counters
    counters.clear()
    for _ in range(3):  # a new metadata per step, as engines do
        meta, _ = flash_mla.get_mla_metadata()
        got = c(q, k, bt, cs, meta)
        want = step(q, k, bt, cs, flash_mla.get_mla_metadata()[0])
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    assert counters["stats"]["unique_graphs"] == 1


def test_compile_native_dense_decode_with_out(decode_case):
    q, k, bt, cs = decode_case
    plan = openmla.DecodePlan("cpu", batch=2, h_q=8)
    out = torch.empty(2, 1, 8, 512, dtype=torch.bfloat16)
    lse = torch.empty(2, 8, 1)

    def fn(q, k, bt, cs, out, lse):
        openmla.dense_decode(q, k, bt, cs, plan=plan, out=out, lse=lse, causal=True)
        return out.float().mean()

    got = compiled(fn)(q, k, bt, cs, out, lse)
    o2, l2 = openmla.dense_decode(q, k, bt, cs, causal=True)
    assert torch.equal(out, o2) and torch.equal(lse, l2)
    assert torch.allclose(got, o2.float().mean())
    # functional form (outputs allocated inside the compiled region)
    f2 = compiled(lambda q, k, bt, cs: openmla.dense_decode(q, k, bt, cs, causal=True))
    o3, l3 = f2(q, k, bt, cs)
    assert torch.equal(o3, o2) and torch.equal(l3, l2)


def test_compile_sparse_paths(sparse_case):
    q, cache, idx = sparse_case
    sink = torch.tensor([0.0, 1.0, -float("inf"), 2.0])

    def fn(q, cache, idx, meta):
        a = flash_mla.flash_mla_with_kvcache(q, cache, None, None, 512, meta, None,
                                             is_fp8_kvcache=True, indices=idx, attn_sink=sink)
        b = openmla.sparse_decode(q, cache, idx, attn_sink=sink)
        return a[0], a[1], b[0]

    meta, _ = flash_mla.get_mla_metadata()
    a0, a1, b0 = compiled(fn)(q, cache, idx, meta)
    r0, r1 = openmla.sparse_decode(q, cache, idx, attn_sink=sink)
    assert torch.equal(a0, r0) and torch.equal(a1, r1) and torch.equal(b0, r0)


def test_compile_sparse_prefill(rng):
    q = to_torch(randn(rng, (3, 4, 576)))
    kv = to_torch(randn(rng, (20, 1, 576)))
    idx = torch.randint(-1, 20, (3, 1, 128), dtype=torch.int32)

    def fn(q, kv, idx):
        return flash_mla.flash_mla_sparse_fwd(q, kv, idx, 0.05, indexer_topk=64)

    got = compiled(fn)(q, kv, idx)
    want = fn(q, kv, idx)
    assert len(got) == 4 and all(torch.equal(a, b) for a, b in zip(got, want))


def test_compile_varlen_forward_backward(prefill_case):
    q, k, v, cu_q, cu_k = prefill_case

    def loss(q, k, v):
        out, lse = flash_mla.flash_attn_varlen_func(q, k, v, cu_q, cu_k, 4, 5, causal=True)
        return out.float().square().sum() + lse.sum() * 0

    grads = []
    for fn in (loss, compiled(loss)):
        qs, ks, vs = (x.clone().requires_grad_() for x in (q, k, v))
        fn(qs, ks, vs).backward()
        grads.append((qs.grad, ks.grad, vs.grad))
    for a, b in zip(*grads):
        assert torch.equal(a, b)


def test_compile_native_prefill_and_kv_cache(prefill_case, rng):
    q, k, v, cu_q, cu_k = prefill_case

    def fwd_bwd(q, k, v):
        out, lse = openmla.dense_prefill_forward(q, k, v, cu_q, cu_k)
        return openmla.dense_prefill_backward(torch.ones_like(out), q, k, v, out, lse, cu_q, cu_k)

    for a, b in zip(compiled(fwd_bwd)(q, k, v), fwd_bwd(q, k, v)):
        assert torch.equal(a, b)

    kv = to_torch(randn(rng, (2, 3, 1, 576)))
    new = to_torch(randn(rng, (2, 576)))
    slots = torch.tensor([1, 4], dtype=torch.int32)

    def kvfn(kv, new, slots):
        cache = openmla.quantize_kv_cache(kv)
        openmla.append_kv_cache(new, slots, cache)
        return cache, openmla.dequantize_kv_cache(cache)

    c1, d1 = compiled(kvfn)(kv, new, slots)
    c2, d2 = kvfn(kv, new, slots)
    assert torch.equal(c1, c2) and torch.equal(d1, d2)


def test_compile_inductor_decode(decode_case):
    """The default backend (inductor) on the CPU: fake implementations drive its codegen."""
    q, k, bt, cs = decode_case

    def step(q, k, bt, cs, meta):
        o, lse = flash_mla.flash_mla_with_kvcache(q, k, bt, cs, 512, meta, None, causal=True)
        return (o.float() * 2).sum(dim=-1), lse

    meta, _ = flash_mla.get_mla_metadata()
    got = compiled(step, backend="inductor")(q, k, bt, cs, meta)
    want = step(q, k, bt, cs, flash_mla.get_mla_metadata()[0])
    assert torch.allclose(got[0], want[0]) and torch.equal(got[1], want[1])


def test_get_mla_metadata_refuses_to_be_compiled():
    with pytest.raises(Exception, match="get_mla_metadata"):
        compiled(lambda x: flash_mla.get_mla_metadata()[0] + x)(torch.zeros(2, dtype=torch.int64))


def test_plan_update_refuses_to_be_compiled(decode_case):
    q, k, bt, cs = decode_case
    plan = openmla.DecodePlan("cpu", batch=2, h_q=8)
    with pytest.raises(Exception, match="DecodePlan.update"):
        compiled(lambda cs: plan.update(cs))(cs)


# ---------------------------------------------------------------- conversion routes


def test_tensor_routes_agree_and_outputs_are_allocated_in_cxx(decode_case):
    q, k, bt, cs = decode_case
    views = [q[:, :, 1:5, :512], k.transpose(0, 1), cs, torch.zeros(3, dtype=torch.float8_e4m3fn)]
    for t in views:
        want = openmla._C.describe(t, "torch")
        assert openmla._C.describe(t) == want
        assert openmla._C.describe(t, "dlpack") == want
        if torch.Tensor in openmla._arrays.CXX_ALLOC:
            assert openmla._C.describe(t, "exchange") == want
    # torch >= 2.10 offers the DLPack exchange API: decode outputs come from the extension
    if hasattr(torch.Tensor, "__dlpack_c_exchange_api__"):
        assert torch.Tensor in openmla._arrays.CXX_ALLOC
    out, lse = openmla._C.dense_decode(q, k, bt, cs, None, None, None, 512, 0.0, False, 0)
    assert isinstance(out, torch.Tensor) and out.dtype == torch.bfloat16 and out.is_contiguous()
    assert lse.dtype == torch.float32 and tuple(lse.shape) == (2, 8, 1)
    # a subclass (no exchange API lookup hit) takes the Python allocation
    qp = torch.nn.Parameter(q, requires_grad=False)
    o2, l2 = openmla.dense_decode(qp, k, bt, cs)
    assert torch.equal(o2, out) and torch.equal(l2, lse)
    o3, _ = flash_mla.flash_mla_with_kvcache(qp, k, bt, cs, 512, flash_mla.get_mla_metadata()[0])
    assert torch.equal(o3, out)


def test_native_api_on_torch_cpu_tensors_matches_numpy(rng):
    """Every native function on torch CPU tensors gives the bits it gives on NumPy arrays."""
    from tutils import bits_equal
    T = to_torch
    k_cache, bt = refs.paged_cache(rng, [9, 30], 16, 2, 512)
    q = randn(rng, (2, 2, 8, 512))
    cs = np.array([9, 30], dtype=np.int32)
    for a, b in zip(openmla.dense_decode(q, k_cache, bt, cs, causal=True),
                    openmla.dense_decode(T(q), T(k_cache), T(bt), T(cs), causal=True)):
        assert bits_equal(a, b)
    kv = randn(rng, (3, 8, 1, 576))
    cache = openmla.quantize_kv_cache(kv)
    tcache = openmla.quantize_kv_cache(T(kv))
    assert isinstance(tcache, torch.Tensor) and tcache.stride() == cache.strides
    assert bits_equal(openmla.dequantize_kv_cache(cache), openmla.dequantize_kv_cache(tcache))
    new, slots = randn(rng, (3, 576)), np.array([1, 30, -1], np.int32)
    openmla.append_kv_cache(new, slots, cache)
    openmla.append_kv_cache(T(new), T(slots), tcache)
    assert bits_equal(openmla.dequantize_kv_cache(cache), openmla.dequantize_kv_cache(tcache))
    sq = randn(rng, (2, 1, 4, 576))
    idx = rng.integers(-1, 24, size=(2, 1, 64)).astype(np.int32)
    sink = np.array([0.0, 1.0, -np.inf, np.inf], np.float32)
    for a, b in zip(openmla.sparse_decode(sq, cache, idx, attn_sink=sink),
                    openmla.sparse_decode(T(sq), tcache, T(idx), attn_sink=T(sink))):
        assert bits_equal(a, b)
    pq, pkv = randn(rng, (3, 4, 576)), randn(rng, (20, 1, 576))
    pidx = rng.integers(-1, 20, size=(3, 1, 128)).astype(np.int32)
    for a, b in zip(openmla.sparse_prefill(pq, pkv, pidx),
                    openmla.sparse_prefill(T(pq), T(pkv), T(pidx))):
        assert bits_equal(a, b)
    q3, k3, v3 = randn(rng, (7, 4, 192)), randn(rng, (9, 2, 192)), randn(rng, (9, 2, 128))
    cu_q, cu_k = np.array([0, 3, 7], np.int32), np.array([0, 4, 9], np.int32)
    fa = openmla.dense_prefill_forward(q3, k3, v3, cu_q, cu_k, causal=True)
    fb = openmla.dense_prefill_forward(T(q3), T(k3), T(v3), T(cu_q), T(cu_k), causal=True)
    assert all(bits_equal(a, b) for a, b in zip(fa, fb))
    dout = randn(rng, (7, 4, 128))
    ga = openmla.dense_prefill_backward(dout, q3, k3, v3, *fa, cu_q, cu_k, causal=True)
    gb = openmla.dense_prefill_backward(T(dout), T(q3), T(k3), T(v3), *fb, T(cu_q), T(cu_k),
                                        causal=True)
    assert all(bits_equal(a, b) for a, b in zip(ga, gb))
