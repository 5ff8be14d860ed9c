"""A script written the way a FlashMLA user writes one (torch tensors, FlashMLA's calls and
argument names, a torch reference to check against), with one change: the import line.

    python tests/python/flashmla_user_script.py --device cuda --tests dense_decode
    python tests/python/flashmla_user_script.py --device cpu        # every test, CPU backend

Exits non-zero when a check fails.
"""

import argparse
import math
import random
import sys

import torch

import openmla.flash_mla as flash_mla  # with FlashMLA: import flash_mla


def cal_diff(x: torch.Tensor, y: torch.Tensor, name: str, tol: float = 1e-5) -> None:
    x, y = x.double(), y.double()
    finite = torch.isfinite(y)
    assert torch.equal(finite, torch.isfinite(x)), f"{name}: inf/NaN at other places"
    x, y = x[finite], y[finite]
    if x.numel() == 0:
        return
    cos_diff = 1 - 2 * (x * y).sum().item() / max((x * x + y * y).sum().item(), 1e-12)
    amax = (x - y).abs().max().item()
    print(f"  {name}: cos_diff={cos_diff:.2e} max_abs_diff={amax:.2e}")
    assert cos_diff < tol, f"{name}: cos_diff {cos_diff}"


# ------------------------------------------------------------------ references


def ref_attention(q, kv, dv, scale, mask=None):
    """q [h, s_q, d], kv [s_k, d] (float32) -> out [h, s_q, dv], lse [h, s_q]."""
    s = (q.float() @ kv.float().T) * scale
    if mask is not None:
        s = s.masked_fill(~mask, float("-inf"))
    lse = s.logsumexp(dim=-1)
    p = torch.exp(s - lse.unsqueeze(-1)).nan_to_num(0.0)
    out = p @ kv[:, :dv].float()
    lse = torch.where(torch.isneginf(lse), torch.full_like(lse, float("inf")), lse)
    return out, lse


def ref_mla_decode(q, blocked_k, block_table, cache_seqlens, dv, causal):
    b, s_q, h_q, d = q.shape
    page, h_kv = blocked_k.shape[1], blocked_k.shape[2]
    out = torch.empty(b, s_q, h_q, dv, dtype=torch.float32)
    lse = torch.empty(b, h_q, s_q, dtype=torch.float32)
    for i in range(b):
        n = int(cache_seqlens[i])
        pages = block_table[i, : math.ceil(n / page)].long()
        k = blocked_k[pages].reshape(-1, h_kv, d)[:n]
        mask = None
        if causal:
            mask = torch.arange(n)[None, :] <= (n - s_q + torch.arange(s_q))[:, None]
        for hk in range(h_kv):
            g = h_q // h_kv
            o, l = ref_attention(q[i, :, hk * g:(hk + 1) * g].transpose(0, 1), k[:, hk], dv,
                                 d ** -0.5, mask)
            out[i, :, hk * g:(hk + 1) * g] = o.transpose(0, 1)
            lse[i, hk * g:(hk + 1) * g] = l
    return out, lse


# ------------------------------------------------------------------ dense decode


def test_dense_decode(b, s_q, h_q, h_kv, d, dv, mean_sk, causal, device, page=64):
    print(f"dense decode: b={b} s_q={s_q} h_q={h_q} h_kv={h_kv} d={d} s_k~{mean_sk} "
          f"causal={causal}")
    cache_seqlens = torch.tensor([max(s_q, int(random.gauss(mean_sk, mean_sk / 2)))
                                  for _ in range(b)], dtype=torch.int32, device=device)
    max_seqlen_pad = math.ceil(int(cache_seqlens.max()) / 256) * 256
    q = torch.randn(b, s_q, h_q, d, dtype=torch.bfloat16, device=device) / 10
    block_table = torch.arange(b * max_seqlen_pad // page, dtype=torch.int32,
                               device=device).view(b, -1)
    block_table = block_table.flatten()[torch.randperm(block_table.numel())].view(b, -1)
    blocked_k = torch.randn(block_table.numel(), page, h_kv, d, dtype=torch.bfloat16,
                            device=device) / 10
    for i in range(b):  # garbage past each sequence's end
        t = torch.arange(int(cache_seqlens[i]), max_seqlen_pad, device=device)
        blocked_k[block_table[i, t // page].long(), t % page] = float("nan")

    tile_scheduler_metadata, num_splits = flash_mla.get_mla_metadata(
        cache_seqlens, s_q * h_q // h_kv, h_kv)
    out, lse = flash_mla.flash_mla_with_kvcache(q, blocked_k, block_table, cache_seqlens, dv,
                                                tile_scheduler_metadata, num_splits,
                                                causal=causal)
    ref_out, ref_lse = ref_mla_decode(q.cpu(), blocked_k.cpu(), block_table.cpu(),
                                      cache_seqlens.cpu(), dv, causal)
    cal_diff(out.cpu(), ref_out, "out")
    cal_diff(lse.cpu(), ref_lse, "lse", tol=1e-8)

    # New-style metadata, reused by every layer of a step.
    sched_meta, _ = flash_mla.get_mla_metadata()
    for layer in range(3):
        out2, lse2 = flash_mla.flash_mla_with_kvcache(q, blocked_k, block_table, cache_seqlens,
                                                      dv, sched_meta, None, causal=causal)
        assert torch.equal(out2, out) and torch.equal(lse2, lse), f"layer {layer} differs"

    if device == "cuda":  # as serving engines run decode: one CUDA graph per batch size
        graph = torch.cuda.CUDAGraph()
        sched_meta, _ = flash_mla.get_mla_metadata()
        with torch.cuda.graph(graph):
            g_out, g_lse = flash_mla.flash_mla_with_kvcache(
                q, blocked_k, block_table, cache_seqlens, dv, sched_meta, None, causal=causal)
        graph.replay()
        torch.cuda.synchronize()
        assert torch.equal(g_out, out) and torch.equal(g_lse, lse), "graph replay differs"
        cache_seqlens.copy_(torch.clamp(cache_seqlens - 17, min=s_q))
        graph.replay()
        torch.cuda.synchronize()
        ref_out, ref_lse = ref_mla_decode(q.cpu(), blocked_k.cpu(), block_table.cpu(),
                                          cache_seqlens.cpu(), dv, causal)
        cal_diff(g_out.cpu(), ref_out, "out (graph, new lengths)")


# ------------------------------------------------------------------ sparse decode (FP8)


def quantize_k_cache(k: torch.Tensor) -> torch.Tensor:
    """bf16 [num_blocks, block_size, 1, 576] -> FP8 V32 cache [num_blocks, block_size, 1, 656]:
    512 e4m3 values, 4 fp32 power-of-two scales (tiles of 128), 64 bf16 RoPE values."""
    nb, bs = k.shape[:2]
    nope = k[..., :512].float().view(nb, bs, 4, 128)
    s = (nope.abs().amax(-1) / 448).clamp(min=1e-4)
    scale = torch.exp2(torch.ceil(torch.log2(s)))
    fp8 = (nope / scale.unsqueeze(-1)).to(torch.float8_e4m3fn).view(nb, bs, 512)
    out = torch.empty(nb, bs, 1, 656, dtype=torch.uint8, device=k.device)
    out[..., 0, :512] = fp8.view(torch.uint8)
    out[..., 0, 512:528] = scale.contiguous().view(torch.uint8).view(nb, bs, 16)
    out[..., 0, 528:] = k[..., 0, 512:].contiguous().view(torch.uint8).view(nb, bs, 128)
    return out


def dequantize_k_cache(c: torch.Tensor) -> torch.Tensor:
    nb, bs = c.shape[:2]
    fp8 = c[..., 0, :512].contiguous().view(torch.float8_e4m3fn).float().view(nb, bs, 4, 128)
    scale = c[..., 0, 512:528].contiguous().view(torch.float32).view(nb, bs, 4, 1)
    nope = (fp8 * scale).to(torch.bfloat16).view(nb, bs, 512)
    rope = c[..., 0, 528:].contiguous().view(torch.bfloat16)
    return torch.cat([nope, rope], dim=-1).view(nb, bs, 1, 576)


def test_sparse_decode(b, s_q, h_q, topk, s_kv, device, page=64):
    print(f"sparse decode: b={b} s_q={s_q} h_q={h_q} topk={topk} s_kv={s_kv}")
    num_blocks = b * s_kv // page
    k = torch.randn(num_blocks, page, 1, 576, dtype=torch.bfloat16, device=device) / 10
    k_cache = quantize_k_cache(k)
    q = torch.randn(b, s_q, h_q, 576, dtype=torch.bfloat16, device=device) / 10
    indices = torch.randint(0, num_blocks * page, (b, s_q, topk), dtype=torch.int32,
                            device=device)
    indices[:, :, -7:] = -1
    attn_sink = torch.randn(h_q, dtype=torch.float32, device=device)
    topk_length = torch.randint(1, topk + 1, (b,), dtype=torch.int32, device=device)
    sched_meta, _ = flash_mla.get_mla_metadata()
    out, lse = flash_mla.flash_mla_with_kvcache(
        q, k_cache, None, None, 512, sched_meta, None, is_fp8_kvcache=True, indices=indices,
        attn_sink=attn_sink, topk_length=topk_length)
    kd = dequantize_k_cache(k_cache.cpu()).view(-1, 576)
    ref_out = torch.empty(b, s_q, h_q, 512)
    ref_lse = torch.empty(b, h_q, s_q)
    for i in range(b):
        for r in range(s_q):
            idx = indices[i, r, : int(topk_length[i])].cpu().long()
            idx = idx[idx >= 0]
            o, l = ref_attention(q[i, r].cpu().unsqueeze(1), kd[idx], 512, 576 ** -0.5)
            o = o[:, 0] / (1 + torch.exp(attn_sink.cpu() - l[:, 0])).unsqueeze(-1)
            ref_out[i, r], ref_lse[i, :, r] = o, l[:, 0]
    cal_diff(out.cpu(), ref_out, "out")
    cal_diff(lse.cpu(), ref_lse, "lse", tol=1e-8)


# ------------------------------------------------------------------ prefill


def test_sparse_prefill(s_q, s_kv, h_q, topk, device):
    print(f"sparse prefill: s_q={s_q} s_kv={s_kv} h_q={h_q} topk={topk}")
    q = torch.randn(s_q, h_q, 576, dtype=torch.bfloat16, device=device) / 10
    kv = torch.randn(s_kv, 1, 576, dtype=torch.bfloat16, device=device) / 10
    indices = torch.randint(0, s_kv, (s_q, 1, topk), dtype=torch.int32, device=device)
    sm_scale = 576 ** -0.5
    out, max_logits, lse = flash_mla.flash_mla_sparse_fwd(q, kv, indices, sm_scale)
    for r in range(s_q):
        keys = kv[indices[r, 0].long(), 0].cpu()
        o, l = ref_attention(q[r].cpu().unsqueeze(1), keys, 512, sm_scale)
        cal_diff(out[r].cpu(), o[:, 0], f"out[{r}]")
        cal_diff(lse[r].cpu(), l[:, 0], f"lse[{r}]", tol=1e-8)
        m = (q[r].cpu().float() @ keys.float().T * sm_scale).amax(-1)
        cal_diff(max_logits[r].cpu(), m, f"max_logits[{r}]", tol=1e-8)


def test_dense_prefill(seqlens, h, d_qk, d_v, causal, device):
    print(f"dense prefill: seqlens={seqlens} h={h} d_qk={d_qk} causal={causal}")
    total = sum(seqlens)
    cu_seqlens = torch.tensor([0] + list(torch.tensor(seqlens).cumsum(0)), dtype=torch.int32,
                              device=device)
    q = (torch.randn(total, h, d_qk, device=device) / 2).bfloat16().requires_grad_()
    k = (torch.randn(total, h, d_qk, device=device) / 2).bfloat16().requires_grad_()
    v = (torch.randn(total, h, d_v, device=device) / 2).bfloat16().requires_grad_()
    out, lse = flash_mla.flash_attn_varlen_func(q, k, v, cu_seqlens, cu_seqlens, max(seqlens),
                                                max(seqlens), causal=causal)
    do = torch.randn_like(out)
    (out * do).sum().backward()
    qr, kr, vr = (x.detach().cpu().float().requires_grad_() for x in (q, k, v))
    outs = []
    for i, n in enumerate(seqlens):
        a, e = int(cu_seqlens[i]), int(cu_seqlens[i + 1])
        s = torch.einsum("qhd,khd->hqk", qr[a:e], kr[a:e]) * d_qk ** -0.5
        if causal:
            s = s.masked_fill(torch.ones(n, n, dtype=torch.bool).triu(1), float("-inf"))
        outs.append(torch.einsum("hqk,khd->qhd", s.softmax(-1), vr[a:e]))
    ref = torch.cat(outs)
    (ref * do.cpu().float()).sum().backward()
    cal_diff(out.cpu(), ref, "out")
    for name, x, xr in (("dq", q, qr), ("dk", k, kr), ("dv", v, vr)):
        cal_diff(x.grad.cpu(), xr.grad, name, tol=1e-4)
    qkv = torch.cat([q, k, v], dim=-1).detach()
    out2, _ = flash_mla.flash_attn_varlen_qkvpacked_func(qkv, cu_seqlens, max(seqlens), d_qk,
                                                         causal=causal)
    assert torch.equal(out2, out.detach()), "qkvpacked differs"


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--device", default="cuda")
    p.add_argument("--tests", default="dense_decode,sparse_decode,sparse_prefill,dense_prefill")
    args = p.parse_args()
    torch.manual_seed(0)
    random.seed(0)
    tests = args.tests.split(",")
    dev = args.device
    n = 0
    if "dense_decode" in tests:
        cases = [(2, 1, 128, 1, 576, 512, 1024, False), (3, 2, 64, 1, 576, 512, 513, True),
                 (4, 1, 16, 1, 576, 512, 300, False)]
        if dev == "cuda":
            cases += [(1, 1, 128, 1, 576, 512, 4096, False), (128, 1, 128, 1, 576, 512, 2048,
                                                               False)]
        for c in cases:
            test_dense_decode(*c, device=dev)
            n += 1
    if "sparse_decode" in tests:
        test_sparse_decode(2, 2, 64, 128, 512, device=dev)
        n += 1
    if "sparse_prefill" in tests:
        test_sparse_prefill(3, 300, 64, 128, device=dev)
        n += 1
    if "dense_prefill" in tests:
        test_dense_prefill([5, 9, 1], 2, 192, 128, True, device=dev)
        test_dense_prefill([7], 1, 128, 128, False, device=dev)
        n += 2
    print(f"flashmla_user_script: {n} scenarios OK on {dev}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
