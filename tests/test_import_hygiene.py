"""`import tensorbridge` pulls in nothing heavy, and CPU work never loads CUDA."""

import json
import subprocess
import sys

from helpers import needs_torch

HEAVY = ("torch", "sklearn", "cupy", "jax", "scipy", "pandas", "ml_dtypes", "matplotlib")

PROBE = """
import json, sys
import tensorbridge as tb
{work}
heavy = sorted(m for m in sys.modules if m.split(".")[0] in {heavy!r})
with open("/proc/self/maps") as maps:
    cuda = sorted({{line.split()[-1] for line in maps if "libcuda" in line}})
print(json.dumps({{"heavy": heavy, "cuda": cuda}}))
"""


def run_probe(work=""):
    code = PROBE.format(work=work, heavy=HEAVY)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def test_import_pulls_in_nothing_heavy():
    assert run_probe() == {"heavy": [], "cuda": []}


def test_converting_numpy_and_buffers_imports_nothing_heavy():
    work = "import numpy as np\ntb.to_numpy(np.ones(3)); tb.to_numpy(memoryview(b'ab'))"
    assert run_probe(work) == {"heavy": [], "cuda": []}


@needs_torch
def test_converting_cpu_tensors_does_not_load_cuda():
    work = ("import torch\ntb.to_numpy(torch.ones(3, dtype=torch.bfloat16))\n"
            "tb.to_numpy(torch.ones(3).conj())")
    result = run_probe(work)
    assert result["cuda"] == []
    assert "ml_dtypes" in result["heavy"]  # imported on first use, not before
