"""Oracles and builders shared by the tests."""

from __future__ import annotations

import ast
import importlib.metadata
import importlib.util
import json
import os
import re
import subprocess
import sys
import traceback

import numpy as np
import pytest

try:
    import torch
except ImportError:  # the torch-free suite (requirements/test-no-torch.txt): the
    torch = None     # torch oracles below are then absent, and their modules skip

# A test that needs torch, in a module that does not (a module that needs it
# throughout starts with `torch = pytest.importorskip("torch")`).
needs_torch = pytest.mark.skipif(torch is None, reason="needs torch, not installed here")

# Set by scripts/checked_builds.sh: memory figures mean nothing under a
# sanitizer (ASan keeps freed memory in quarantine), so those checks step aside.
SANITIZED = bool(os.environ.get("TENSORBRIDGE_SANITIZE"))

if torch is not None:
    # Every torch dtype to_numpy views, with the NumPy dtype it becomes.
    VIEWED_DTYPES = {
        torch.bool: "bool",
        torch.uint8: "uint8",
        torch.uint16: "uint16",
        torch.uint32: "uint32",
        torch.uint64: "uint64",
        torch.int8: "int8",
        torch.int16: "int16",
        torch.int32: "int32",
        torch.int64: "int64",
        torch.float16: "float16",
        torch.float32: "float32",
        torch.float64: "float64",
        torch.complex64: "complex64",
        torch.complex128: "complex128",
        torch.bfloat16: "bfloat16",
        torch.float8_e4m3fn: "float8_e4m3fn",
        torch.float8_e5m2: "float8_e5m2",
        torch.float8_e4m3fnuz: "float8_e4m3fnuz",
        torch.float8_e5m2fnuz: "float8_e5m2fnuz",
        torch.float8_e8m0fnu: "float8_e8m0fnu",
    }

    EXTENDED_DTYPES = {torch.bfloat16, torch.float8_e4m3fn, torch.float8_e5m2,
                       torch.float8_e4m3fnuz, torch.float8_e5m2fnuz, torch.float8_e8m0fnu}
else:  # (so that a torch-free module can parametrize over them: no cases)
    VIEWED_DTYPES, EXTENDED_DTYPES = {}, set()


def fast_sample(values, keep=1):
    """The parameters, all but the first `keep` marked slow: the fast tier
    (-m "not slow") tries a sample of a big parametrization, the full suite
    every case. Each value is one argument (a tuple for several: unpacked)."""
    return [value if i < keep else
            pytest.param(*(value if isinstance(value, tuple) else (value,)),
                         marks=pytest.mark.slow)
            for i, value in enumerate(values)]


def numpy_dtype(torch_dtype) -> np.dtype:
    import ml_dtypes

    name = VIEWED_DTYPES[torch_dtype]
    return np.dtype(getattr(ml_dtypes, name, None) or name)


def sample(shape, dtype, seed=0) -> torch.Tensor:
    """A tensor of `shape` and `dtype` whose elements differ (so layout bugs show)."""
    g = torch.Generator().manual_seed(seed)
    n = int(np.prod(shape)) if len(shape) else 1
    if dtype == torch.bool:
        flat = torch.rand(n, generator=g) > 0.5
    elif dtype.is_complex:
        real = torch.randn(n, 2, generator=g, dtype=torch.float64)
        flat = torch.view_as_complex(real).to(dtype)
    elif dtype.is_floating_point:
        flat = (torch.randn(n, generator=g, dtype=torch.float64) * 4).to(dtype)
    else:
        info = torch.iinfo(dtype)
        low = max(info.min, -100)
        high = min(info.max, 100)
        flat = torch.randint(low, high + 1, (n,), generator=g, dtype=torch.int64).to(dtype)
    return flat.reshape(shape)


def logical_bytes(t: torch.Tensor) -> np.ndarray:
    """The oracle: the bytes of t's values in row-major order, for every dtype
    (``.numpy(force=True)`` refuses bfloat16 and float8)."""
    t = t.detach().resolve_conj().resolve_neg()
    if t.layout != torch.strided:
        t = t.to_dense()
    dense = torch.empty(t.shape, dtype=t.dtype).copy_(t)  # row-major, even when empty
    return dense.reshape(-1).view(torch.uint8).numpy().copy()


def array_bytes(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a).reshape(-1).view(np.uint8).copy()


def wide_values(shape, dtype, seed=0):
    """Values spread over most of `dtype`'s range (capped at 1e10 so that the
    draw itself stays finite), where layout or width bugs would show."""
    g = torch.Generator().manual_seed(seed)
    shape = (shape,) if isinstance(shape, int) else shape
    if dtype.is_floating_point:
        info = torch.finfo(dtype)
        low, high = max(info.min, -1e10), min(info.max, 1e10)
        t = torch.empty(shape, dtype=torch.float64).uniform_(low, high, generator=g)
    else:
        info = torch.iinfo(dtype)
        low, high = max(info.min, -10**10), min(info.max, 10**10)
        t = torch.randint(low, high, shape, generator=g, dtype=torch.int64)
    return t.to(dtype)


def assert_same_values(a, t):
    """Element by element, against torch's own reading of `t`."""
    assert a.shape == tuple(t.shape)
    np.testing.assert_array_equal(array_bytes(a), logical_bytes(t))


def data_address(a: np.ndarray) -> int:
    return a.__array_interface__["data"][0]


def is_view_of(a: np.ndarray, t: torch.Tensor) -> bool:
    """True when `a` reads t's memory in place (empty tensors: vacuously)."""
    if t.numel() == 0:
        return True
    return data_address(a) == t.data_ptr()


def reference_numpy(t: torch.Tensor) -> np.ndarray:
    """What ``t.numpy()`` gives, or would give if it took every dtype."""
    t = t.detach()
    if t.dtype in EXTENDED_DTYPES:
        dtype = numpy_dtype(t.dtype)
        return t.view(torch.int16 if dtype.itemsize == 2 else torch.int8).numpy().view(dtype)
    return t.numpy()




class OnlyDLPack:
    """Exposes an array through DLPack alone, so that to_numpy takes that route."""

    def __init__(self, array):
        self.array = array

    def __dlpack__(self, **kwargs):
        return self.array.__dlpack__(**kwargs)

    def __dlpack_device__(self):
        return self.array.__dlpack_device__()


def missing_modules(source: str) -> list[str]:
    """The top-level modules `source` imports that this interpreter lacks: an
    example of an optional extra is skipped by name where the extra is not
    installed (the GPU machines have no skorch or dask, the torch-free suite
    no torch, for two)."""
    imported = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            imported.add(node.module.split(".")[0])
    return sorted(name for name in imported if importlib.util.find_spec(name) is None)


def report_from_a_forked_child(child) -> str:
    """Forks; the child runs ``child()`` and leaves at once (``os._exit``: no
    cleanup, no atexit) after handing the string it returned to the parent,
    which returns it. A child that raises fails the test with its traceback."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        status = 1
        try:
            os.write(write, child().encode())
            status = 0
        except BaseException:  # noqa: BLE001 - handed to the parent below
            os.write(write, traceback.format_exc().encode())
        finally:
            os._exit(status)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        report = pipe.read().decode()
    _, status = os.waitpid(pid, 0)
    assert status == 0, f"the forked child failed:\n{report}"
    return report


def refusal(call) -> str:
    """`` refused:<where>`` when ``call()`` raises RuntimeError, with ``<where>``
    the part of its message before the first colon (the function that refused);
    empty when it does not."""
    try:
        call()
    except RuntimeError as error:
        return " refused:" + str(error).split(":")[0]
    return ""


def passed_with_scipy_array_api(test_file: str) -> int:
    """Runs `test_file` again in a fresh interpreter with SCIPY_ARRAY_API=1 (which
    scikit-learn's array API dispatch needs set before SciPy is first imported,
    long before this module loads in the suite); asserts that nothing in it
    failed and returns how many tests passed."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(test_file)))
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs", test_file],
        capture_output=True, text=True, env=dict(os.environ, SCIPY_ARRAY_API="1"),
        timeout=600, cwd=root)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
    summary = result.stdout.strip().splitlines()[-1]
    assert "failed" not in summary, result.stdout[-3000:]
    return int(re.search(r"(\d+) passed", summary).group(1))


def installed_editable() -> bool:
    """Whether tensorbridge was installed with ``pip install -e`` (the inner loop of
    docs/development.rst): the package is then imported from src/."""
    direct_url = importlib.metadata.distribution("tensorbridge").read_text("direct_url.json")
    return bool(direct_url and json.loads(direct_url).get("dir_info", {}).get("editable"))


def features(n=12, d=3, seed=0):
    """A small float32 X and a binary y that follows its first column."""
    X = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return X, (X[:, 0] > 0).astype(int)
