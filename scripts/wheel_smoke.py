"""The smoke test of an installed tensorbridge: what a user gets from a wheel.

Usage: python scripts/wheel_smoke.py [--require-torch]

Run by scripts/build_wheels.sh in a fresh venv of each Python it built a
wheel for, and by cibuildwheel as [tool.cibuildwheel] test-command; run it
from outside the source tree, so that `import tensorbridge` finds the
installed package. Checks that NumPy arrays, buffers and DLPack producers
convert, that cuda_status() explains itself, that the `tensorbridge info`
command answers, and, where torch is installed (--require-torch: it must be),
that a CPU tensor converts on the C fast path without reaching Python.
Prints one line per check; exits 1 at the first that fails.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import pathlib
import subprocess
import sys

import numpy as np

import tensorbridge as tb

SOURCE_TREE = pathlib.Path(__file__).resolve().parents[1] / "src"


def address(a: np.ndarray) -> int:
    return a.__array_interface__["data"][0]


class OnlyDLPack:
    """An array seen through the DLPack protocol alone (no buffer, no __array__)."""

    def __init__(self, array):
        self.array = array

    def __dlpack__(self, **kwargs):
        return self.array.__dlpack__(**kwargs)

    def __dlpack_device__(self):
        return self.array.__dlpack_device__()


def check_installed():
    where = pathlib.Path(tb.__file__).resolve()
    assert SOURCE_TREE not in where.parents, f"imported from the source tree: {where}"
    native = pathlib.Path(tb._core.__file__)
    return f"tensorbridge {tb.__version__} from {where.parent}, core {native.name}"


def check_numpy_arrays():
    a = np.arange(6.0).reshape(2, 3)
    assert tb.to_numpy(a) is a
    copied = tb.to_numpy(a[:, ::2], copy=True)
    assert copied.flags.owndata and copied.tolist() == [[0.0, 2.0], [3.0, 5.0]]
    return "returned as they are; copy=True copies"


def check_buffers():
    memory = bytearray(b"abc")
    view = tb.to_numpy(memoryview(memory))
    assert view.tolist() == [97, 98, 99] and view.flags.writeable
    view[0] = ord("x")
    assert memory == bytearray(b"xbc"), "a buffer's view must share its memory"
    frozen = tb.to_numpy(b"abc")
    assert frozen.dtype == np.uint8 and not frozen.flags.writeable
    return "zero-copy views, bytes read-only"


def check_dlpack_producers():
    source = np.arange(12, dtype=np.float32).reshape(3, 4)[:, 1:]
    result = tb.to_numpy(OnlyDLPack(source))
    assert address(result) == address(source) and result.strides == source.strides
    assert np.array_equal(result, source)
    return "a DLPack-only producer viewed in place, strides kept"


def check_cuda_status():
    status = tb.cuda_status()
    assert sorted(status) == ["available", "device_count", "driver_version", "library", "reason"]
    if status["available"]:
        assert status["device_count"] >= 1 and status["reason"] == ""
        return f"available: {status['device_count']} device(s), driver {status['driver_version']}"
    assert status["reason"], "unavailable CUDA must say why"
    return f"unavailable, and says why: {status['reason']}"


def check_cli():
    # The console script installed beside this interpreter, and `python -m`.
    script = pathlib.Path(sys.executable).with_name("tensorbridge")
    commands = {"python -m tensorbridge info": [sys.executable, "-m", "tensorbridge", "info"]}
    if script.exists():
        commands["tensorbridge info"] = [str(script), "info"]
    for said, command in commands.items():
        result = subprocess.run(command, capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, f"{said} exited {result.returncode}: {result.stderr}"
        assert f"tensorbridge  {tb.__version__}" in result.stdout, result.stdout
        assert "cuda" in result.stdout.lower(), result.stdout
    return " and ".join(sorted(commands)) + " answer"


def check_nothing_heavy_was_imported():
    heavy = sorted({"torch", "sklearn", "scipy", "pandas", "cupy", "jax"} & set(sys.modules))
    assert not heavy, f"converting NumPy, buffers and DLPack imported {heavy}"
    return "torch, scikit-learn, SciPy, pandas, CuPy, JAX: none imported"


def check_torch_fast_path():
    import torch

    from tensorbridge import _convert, _core

    assert _core.exchange_api_usable(torch.Tensor), "torch >= 2.10 publishes the exchange API"

    def fallback(*args, **kwargs):
        raise AssertionError("a plain CPU tensor reached the Python fallback")

    _core.set_fallback(fallback)
    try:
        t = torch.arange(6, dtype=torch.float32).reshape(2, 3).t()
        a = tb.to_numpy(t)
        assert address(a) == t.data_ptr() and a.strides == (4, 12)
        assert a.tolist() == t.tolist()
        b = tb.to_numpy(torch.ones(3, dtype=torch.bfloat16, requires_grad=True))
        assert b.dtype.name == "bfloat16" and b.astype(np.float32).tolist() == [1.0, 1.0, 1.0]
    finally:
        _convert.install()
    return f"torch {torch.__version__}: viewed in C (DLPack C exchange API), never in Python"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--require-torch", action="store_true",
                        help="fail, not skip, where torch is not installed")
    args = parser.parse_args(argv)
    checks = [check_installed, check_numpy_arrays, check_buffers, check_dlpack_producers,
              check_cuda_status, check_cli, check_nothing_heavy_was_imported]
    if importlib.util.find_spec("torch") is not None:
        checks.append(check_torch_fast_path)
    elif args.require_torch:
        print("FAILED torch: not installed, and --require-torch says it must be")
        return 1
    else:
        print("skipped torch: not installed")
    version = ".".join(map(str, sys.version_info[:3]))
    print(f"wheel smoke test on Python {version} ({sys.executable}), cwd {os.getcwd()}")
    for check in checks:
        name = check.__name__.removeprefix("check_")
        try:
            said = check()
        except Exception as error:  # noqa: BLE001 -- every failure is reported the same way
            print(f"FAILED {name}: {type(error).__name__}: {error}")
            return 1
        print(f"ok {name}: {said}")
    print(f"wheel smoke test passed: {len(checks)} checks")
    return 0


if __name__ == "__main__":
    sys.exit(main())
