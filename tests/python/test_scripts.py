"""The FlashMLA user script (tests/python/flashmla_user_script.py) and the overhead benchmark
(bench/python_overhead.py) run on the CPU backend; test_gpu.py runs them on the GPU."""

import os
import subprocess
import sys

from conftest import requires_torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))


def run(*args, timeout=900):
    r = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    return r.stdout


@requires_torch
def test_flashmla_user_script_on_cpu():
    out = run(os.path.join(HERE, "flashmla_user_script.py"), "--device", "cpu")
    assert "7 scenarios OK on cpu" in out, out[-2000:]


@requires_torch
def test_overhead_benchmark_on_cpu(tmp_path):
    out = run(os.path.join(ROOT, "bench", "python_overhead.py"), "--iters", "50", "--json",
              str(tmp_path / "o.json"))
    assert "flash_mla layer" in out and (tmp_path / "o.json").exists()
