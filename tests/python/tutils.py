"""Conversions between NumPy (ml_dtypes bf16) arrays and torch tensors for the tests."""

import numpy as np

import refs

try:
    import torch
except ImportError:
    torch = None


def to_torch(a, device="cpu"):
    """NumPy array -> torch tensor with the same dtype (bf16 / fp8 through their bits)."""
    a = np.ascontiguousarray(a)
    if a.dtype == refs.BF16:
        t = torch.from_numpy(a.view(np.int16)).view(torch.bfloat16)
    elif a.dtype == refs.E4M3:
        t = torch.from_numpy(a.view(np.uint8)).view(torch.float8_e4m3fn)
    else:
        t = torch.from_numpy(a)
    return t.to(device)


def to_numpy(t):
    """torch tensor (any device) or NumPy array -> NumPy array (bf16 as ml_dtypes)."""
    if isinstance(t, np.ndarray):
        return t
    t = t.detach().cpu()
    if t.dtype == torch.bfloat16:
        return t.contiguous().view(torch.int16).numpy().view(refs.BF16)
    if t.dtype == torch.float8_e4m3fn:
        return t.contiguous().view(torch.uint8).numpy().view(refs.E4M3)
    return t.numpy()


def bits_equal(a, b):
    """Bitwise equality of two arrays of the same dtype (NaNs included)."""
    a, b = to_numpy(a), to_numpy(b)
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    return np.array_equal(np.ascontiguousarray(a).view(np.uint8),
                          np.ascontiguousarray(b).view(np.uint8))
