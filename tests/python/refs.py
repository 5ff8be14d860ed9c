"""NumPy reference formulas (float64) for the tests: the operator contract of SPEC.md written
independently of the C++ backend, plus input builders shared by the test files."""

from __future__ import annotations

import math

import ml_dtypes
import numpy as np

BF16 = ml_dtypes.bfloat16
E4M3 = ml_dtypes.float8_e4m3fn

# ---------------------------------------------------------------- inputs


def randn(rng, shape, dtype=BF16, scale=0.1):
    """randn * scale clamped to [-1, 1] (SPEC §6), rounded to dtype."""
    return np.clip(rng.standard_normal(shape) * scale, -1, 1).astype(dtype)


def f64(x):
    return np.asarray(x).astype(np.float64)


def paged_cache(rng, lengths, page_size, h_kv, d_qk, dtype=BF16, extra_pages=2):
    """A paged cache holding randn tokens for each request, NaN elsewhere; permuted block table
    with garbage past each request's pages. Returns (k_cache, block_table)."""
    pages = [max(1, -(-int(n) // page_size)) for n in lengths]
    num_pages = sum(pages) + extra_pages
    k = np.full((num_pages, page_size, h_kv, d_qk), np.nan, dtype=np.float32)
    perm = rng.permutation(num_pages)
    max_pages = max(pages) + 1
    bt = rng.integers(-(1 << 30), 1 << 30, size=(len(lengths), max_pages)).astype(np.int32)
    nxt = 0
    for i, n in enumerate(lengths):
        for j in range(-(-int(n) // page_size)):
            bt[i, j] = perm[nxt]
            nxt += 1
        for t in range(int(n)):
            k[bt[i, t // page_size], t % page_size] = np.clip(
                rng.standard_normal((h_kv, d_qk)) * 0.1, -1, 1)
    return k.astype(dtype), bt


# ---------------------------------------------------------------- attention core


def attend(q, keys, values, scale):
    """q [h, d], keys [n, d], values [n, d_v] (float64) -> out [h, d_v], lse [h], max [h]."""
    h = q.shape[0]
    if keys.shape[0] == 0:
        return (np.zeros((h, values.shape[1])), np.full(h, np.inf), np.full(h, -np.inf))
    x = scale * (q @ keys.T)
    m = x.max(axis=1)
    p = np.exp(x - m[:, None])
    s = p.sum(axis=1)
    return (p @ values) / s[:, None], m + np.log(s), m


def apply_sink(out, lse, sink):
    """out *= 1 / (1 + exp(sink - lse)) per head (sink=+inf -> 0, -inf -> unchanged)."""
    with np.errstate(over="ignore", invalid="ignore"):
        f = 1.0 / (1.0 + np.exp(f64(sink) - lse))
    f = np.where(np.isnan(f), 0.0, f)
    return out * f[:, None]


# ---------------------------------------------------------------- dense decode (SPEC §1)


def dense_decode(q, k_cache, block_table, cache_seqlens, d_v=512, scale=None, causal=False):
    q, k = f64(q), f64(k_cache)
    b, s_q, h_q, d = q.shape
    num_pages, page, h_kv, _ = k.shape
    g = h_q // h_kv
    scale = scale or 1 / math.sqrt(d)
    out = np.zeros((b, s_q, h_q, d_v))
    lse = np.full((b, h_q, s_q), np.inf)
    for i in range(b):
        n = max(0, int(cache_seqlens[i]))
        for r in range(s_q):
            vis = max(0, min(n, n - s_q + r + 1)) if causal else n
            rows = []
            for t in range(vis):
                slot = t // page
                if slot >= block_table.shape[1]:
                    break
                p = int(block_table[i, slot])
                if 0 <= p < num_pages:
                    rows.append(k[p, t % page])
            keys = np.stack(rows) if rows else np.zeros((0, h_kv, d))
            for hk in range(h_kv):
                o, l, _ = attend(q[i, r, hk * g:(hk + 1) * g], keys[:, hk], keys[:, hk, :d_v],
                                 scale)
                out[i, r, hk * g:(hk + 1) * g] = o
                lse[i, hk * g:(hk + 1) * g, r] = l
    return out, lse


# ---------------------------------------------------------------- FP8 formats (SPEC §2)

V32 = dict(d_qk=576, d_nope=512, tile=128, tiles=4, bpt=656)
MODEL1 = dict(d_qk=512, d_nope=448, tile=64, tiles=7, bpt=584)


def fmt_of(d_qk):
    return V32 if d_qk == 576 else MODEL1


def page_bytes(f, page_size):
    raw = page_size * f["bpt"]
    return raw if f is V32 else -(-raw // 576) * 576


def tile_scale(tile):
    """2^ceil(log2(max(amax / 448, 1e-4))), computed exactly in float32."""
    s = np.float32(max(np.float32(np.abs(tile.astype(np.float32)).max()) / np.float32(448.0),
                       np.float32(1e-4)))
    m, e = np.frexp(s)  # s = m * 2^e, m in [0.5, 1)
    return np.float32(2.0) ** (e - 1 if m == 0.5 else e)


def quantize_token(x, f):
    """One bf16 token [d_qk] -> (fp8 bytes [d_nope], scales [tiles] float32, rope bytes [128])."""
    nope = x[:f["d_nope"]].astype(np.float32)
    q = np.empty(f["d_nope"], dtype=np.uint8)
    scales = np.empty(f["tiles"], dtype=np.float32)
    for t in range(f["tiles"]):
        sl = slice(t * f["tile"], (t + 1) * f["tile"])
        s = tile_scale(nope[sl])
        scales[t] = s
        q[sl] = (nope[sl] / s).astype(E4M3).view(np.uint8)
    rope = np.ascontiguousarray(x[f["d_nope"]:]).astype(BF16).view(np.uint8)
    return q, scales, rope


def quantize_pages(kv, f):
    """bf16 [P, ps, 1, d_qk] -> the flat cache bytes [P * page_bytes] (SPEC §2 layouts)."""
    P, ps = kv.shape[0], kv.shape[1]
    pb = page_bytes(f, ps)
    buf = np.zeros(P * pb, dtype=np.uint8)
    for p in range(P):
        base = p * pb
        for t in range(ps):
            q, s, rope = quantize_token(kv[p, t, 0], f)
            if f is V32:
                o = base + t * 656
                buf[o:o + 512] = q
                buf[o + 512:o + 528] = s.view(np.uint8)
                buf[o + 528:o + 656] = rope
            else:
                o = base + t * 576
                buf[o:o + 448] = q
                buf[o + 448:o + 576] = rope
                so = base + ps * 576 + t * 8
                e = np.frexp(s)[1] - 1  # s = 2^e exactly
                buf[so:so + 7] = (e + 127).astype(np.uint8)
                buf[so + 7] = 0
    return buf


def dequantize_token(buf, base, t, ps, f):
    """float64 [d_qk] of token t of the page at byte `base` (values rounded to bf16)."""
    if f is V32:
        o = base + t * 656
        q = buf[o:o + 512].view(E4M3).astype(np.float32)
        s = buf[o + 512:o + 528].view(np.float32)
        rope = buf[o + 528:o + 656].view(BF16).astype(np.float64)
    else:
        o = base + t * 576
        q = buf[o:o + 448].view(E4M3).astype(np.float32)
        so = base + ps * 576 + t * 8
        s = np.float32(2.0) ** (buf[so:so + 7].astype(np.int32) - 127).astype(np.float32)
        rope = buf[o + 448:o + 576].view(BF16).astype(np.float64)
    nope = (q * np.repeat(s, f["tile"])).astype(BF16).astype(np.float64)
    return np.concatenate([nope, rope])


def dequantize_pages(buf, P, ps, f):
    pb = page_bytes(f, ps)
    out = np.empty((P, ps, 1, f["d_qk"]))
    for p in range(P):
        for t in range(ps):
            out[p, t, 0] = dequantize_token(buf, p * pb, t, ps, f)
    return out


def cache_view(buf, P, ps, f):
    """The [P, ps, 1, bpt] uint8 view FlashMLA / OpenMLA take (page stride page_bytes)."""
    return np.lib.stride_tricks.as_strided(buf, (P, ps, 1, f["bpt"]),
                                           (page_bytes(f, ps), f["bpt"], f["bpt"], 1))


# ---------------------------------------------------------------- sparse decode (SPEC §3)


def _gather(buf, P, ps, f, idx, n_valid):
    rows = []
    for k in range(min(len(idx), n_valid)):
        slot = int(idx[k])
        if 0 <= slot < P * ps:
            rows.append(dequantize_token(buf, (slot // ps) * page_bytes(f, ps), slot % ps, ps, f))
    return rows


def sparse_decode(q, buf, P, ps, indices, topk_length=None, attn_sink=None, extra=None,
                  d_v=512, scale=None):
    """extra: (buf, P, ps, indices, extra_topk_length) of a second pool or None."""
    q = f64(q)
    b, s_q, h_q, d = q.shape
    f = fmt_of(d)
    scale = scale or 1 / math.sqrt(d)
    out = np.zeros((b, s_q, h_q, d_v))
    lse = np.full((b, h_q, s_q), np.inf)
    for i in range(b):
        for r in range(s_q):
            n = indices.shape[2] if topk_length is None else max(0, int(topk_length[i]))
            rows = _gather(buf, P, ps, f, indices[i, r], n)
            if extra is not None:
                ebuf, eP, eps, eidx, elen = extra
                en = eidx.shape[2] if elen is None else max(0, int(elen[i]))
                rows += _gather(ebuf, eP, eps, f, eidx[i, r], en)
            keys = np.stack(rows) if rows else np.zeros((0, d))
            o, l, _ = attend(q[i, r], keys, keys[:, :d_v], scale)
            if attn_sink is not None:
                o = apply_sink(o, l, attn_sink)
            out[i, r] = o
            lse[i, :, r] = l
    return out, lse


# ---------------------------------------------------------------- sparse prefill (SPEC §4)


def sparse_prefill(q, kv, indices, scale, d_v=512, attn_sink=None, topk_length=None):
    q, kv = f64(q), f64(kv)
    s_q, h_q, d = q.shape
    s_kv = kv.shape[0]
    out = np.zeros((s_q, h_q, d_v))
    mx = np.full((s_q, h_q), -np.inf)
    lse = np.full((s_q, h_q), np.inf)
    for r in range(s_q):
        n = indices.shape[2] if topk_length is None else max(0, int(topk_length[r]))
        rows = [kv[int(j), 0] for j in indices[r, 0, :n] if 0 <= int(j) < s_kv]
        keys = np.stack(rows) if rows else np.zeros((0, d))
        o, l, m = attend(q[r], keys, keys[:, :d_v], scale)
        if attn_sink is not None:
            o = apply_sink(o, l, attn_sink)
        out[r], lse[r], mx[r] = o, l, m
    return out, mx, lse


# ---------------------------------------------------------------- dense prefill (SPEC §5)


def _seq_masks(cu_q, cu_k, causal):
    for i in range(len(cu_q) - 1):
        qa, qe, ka, ke = int(cu_q[i]), int(cu_q[i + 1]), int(cu_k[i]), int(cu_k[i + 1])
        lq, lk = qe - qa, ke - ka
        mask = np.ones((lq, lk), dtype=bool)
        if causal:
            mask = np.arange(lk)[None, :] <= (lk - lq + np.arange(lq))[:, None]
        yield qa, qe, ka, ke, mask


def dense_prefill(q, k, v, cu_q, cu_k, scale=None, causal=False):
    """Returns out [total_q, h_q, d_v], lse [h_q, total_q] (float64)."""
    q, k, v = f64(q), f64(k), f64(v)
    tq, h_q, d = q.shape
    h_kv = k.shape[1]
    g = h_q // h_kv
    scale = scale or 1 / math.sqrt(d)
    out = np.zeros((tq, h_q, v.shape[2]))
    lse = np.full((h_q, tq), np.inf)
    for qa, qe, ka, ke, mask in _seq_masks(cu_q, cu_k, causal):
        for h in range(h_q):
            hk = h // g
            x = scale * q[qa:qe, h] @ k[ka:ke, hk].T
            x = np.where(mask, x, -np.inf)
            m = x.max(axis=1, initial=-np.inf)
            ok = np.isfinite(m)
            p = np.where(ok[:, None], np.exp(x - np.where(ok, m, 0)[:, None]), 0.0)
            s = p.sum(axis=1)
            out[qa:qe, h] = np.where(ok[:, None], (p @ v[ka:ke, hk]) / np.where(ok, s, 1)[:, None],
                                     0.0)
            lse[h, qa:qe] = np.where(ok, m + np.log(np.where(ok, s, 1)), np.inf)
    return out, lse


def dense_prefill_backward(dout, q, k, v, cu_q, cu_k, scale=None, causal=False):
    """Gradients of sum(dout * out) w.r.t. q, k, v (float64), dk/dv summed over GQA groups."""
    dout, q, k, v = f64(dout), f64(q), f64(k), f64(v)
    tq, h_q, d = q.shape
    h_kv = k.shape[1]
    g = h_q // h_kv
    scale = scale or 1 / math.sqrt(d)
    dq, dk, dv = np.zeros_like(q), np.zeros_like(k), np.zeros_like(v)
    for qa, qe, ka, ke, mask in _seq_masks(cu_q, cu_k, causal):
        for h in range(h_q):
            hk = h // g
            x = np.where(mask, scale * q[qa:qe, h] @ k[ka:ke, hk].T, -np.inf)
            m = x.max(axis=1, initial=-np.inf)
            ok = np.isfinite(m)
            p = np.where(ok[:, None], np.exp(x - np.where(ok, m, 0)[:, None]), 0.0)
            p /= np.where(ok, p.sum(axis=1), 1)[:, None]
            o = p @ v[ka:ke, hk]
            do = dout[qa:qe, h]
            dv[ka:ke, hk] += p.T @ do
            dp = do @ v[ka:ke, hk].T
            ds = p * (dp - (do * o).sum(axis=1, keepdims=True))
            dq[qa:qe, h] += scale * ds @ k[ka:ke, hk]
            dk[ka:ke, hk] += scale * ds.T @ q[qa:qe, h]
    return dq, dk, dv


# ---------------------------------------------------------------- comparison (SPEC §6)


def assert_close(got, want, abs_tol, rel_tol, cos_tol=None, what=""):
    """SPEC §6: |a - r| <= abs or <= rel * |r| element-wise, inf/NaN at the same places, and the
    cosine difference below cos_tol."""
    a = f64(got)
    r = f64(want)
    assert a.shape == r.shape, f"{what}: shape {a.shape} != {r.shape}"
    fin = np.isfinite(r)
    assert np.array_equal(np.isnan(a), np.isnan(r)), f"{what}: NaN placement differs"
    assert np.array_equal(a[~fin], r[~fin]), f"{what}: inf placement differs"
    err = np.abs(a[fin] - r[fin])
    bad = (err > abs_tol) & (err > rel_tol * np.abs(r[fin]))
    assert not bad.any(), (f"{what}: {bad.sum()} of {bad.size} elements off, worst "
                           f"{err.max():.3g} (abs_tol {abs_tol}, rel_tol {rel_tol})")
    if cos_tol is not None and fin.any():
        den = (a[fin] ** 2).sum() + (r[fin] ** 2).sum()
        if den > 0:
            cos = 1 - 2 * (a[fin] * r[fin]).sum() / den
            assert cos < cos_tol, f"{what}: cosine difference {cos:.3g} >= {cos_tol}"


DECODE_OUT = dict(abs_tol=1e-3, rel_tol=2.01 / 128, cos_tol=5e-6)
PREFILL_OUT = dict(abs_tol=8e-4, rel_tol=3.01 / 128, cos_tol=7e-6)
LSE = dict(abs_tol=1e-6, rel_tol=8.01 / 65536)
# Outputs of the CPU backend are fp64 results rounded once to bf16: half an ulp of bf16.
BF16_ROUNDED = dict(abs_tol=1e-6, rel_tol=1.01 / 256)
