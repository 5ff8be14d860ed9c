"""pytest set-up for the Python package tests (tests/python): CPU backend everywhere (NumPy
arrays, and torch CPU tensors when torch is installed), CUDA tests only where torch sees a GPU and
the package carries the CUDA backend."""

import numpy as np
import pytest

import openmla

try:
    import torch
except ImportError:  # NumPy-only installation
    torch = None

HAS_TORCH = torch is not None and openmla._arrays.torch is not None
HAS_CUDA = HAS_TORCH and torch.cuda.is_available() and openmla.built_with_cuda()

requires_torch = pytest.mark.skipif(not HAS_TORCH, reason="torch is not installed")
requires_cuda = pytest.mark.skipif(
    not HAS_CUDA, reason="needs a CUDA GPU, torch with CUDA and a CUDA build of openmla")


@pytest.fixture
def rng():
    return np.random.default_rng(20251129)


def pytest_report_header(config):
    return (f"openmla {openmla.__version__}: CUDA backend {openmla.built_with_cuda()} "
            f"(GPU operators: {', '.join(openmla.cuda_operators()) or 'none'}); torch "
            f"{torch.__version__ if torch is not None else 'not installed'}; GPU tests "
            f"{'on' if HAS_CUDA else 'skipped'}")
