"""The package without PyTorch: the NumPy test files run again in a subprocess in which
`import torch` fails (where torch is installed; without torch the main run already is that)."""

import os
import subprocess
import sys

import pytest

from conftest import HAS_TORCH

HERE = os.path.dirname(os.path.abspath(__file__))

_RUNNER = r"""
import sys
sys.modules["torch"] = None  # `import torch` raises ImportError from here on
import openmla, openmla.flash_mla as fm
assert openmla._arrays.torch is None and not hasattr(fm, "FlashAttnVarlenFunc")
meta, none = fm.get_mla_metadata()
assert none is None and type(meta).__module__ == "numpy"
import pytest
sys.exit(pytest.main(sys.argv[1:]))
"""


@pytest.mark.skipif(not HAS_TORCH, reason="torch is not installed: the whole run is without it")
def test_numpy_suites_without_torch():
    files = ["test_native_numpy.py", "test_flash_mla.py", "test_validation.py"]
    # The child runs in this folder: a relative PYTHONPATH (PYTHONPATH=.carry/py312) must keep
    # naming what it named here.
    env = dict(os.environ)
    if env.get("PYTHONPATH"):
        env["PYTHONPATH"] = os.pathsep.join(
            os.path.abspath(p) for p in env["PYTHONPATH"].split(os.pathsep) if p)
    r = subprocess.run([sys.executable, "-c", _RUNNER, "-q", "-p", "no:cacheprovider",
                        *[os.path.join(HERE, f) for f in files]],
                       cwd=HERE, env=env, capture_output=True, text=True, timeout=600)
    tail = (r.stdout + r.stderr)[-3000:]
    assert r.returncode == 0, tail
    assert " passed" in r.stdout and "skipped" in r.stdout, tail  # torch-only tests skip
