"""The public API carries real types: mypy, reading the installed package
(py.typed, _core.pyi), infers them for a user's code."""

import pathlib
import shutil
import subprocess
import sys
import textwrap

import pytest

import tensorbridge as tb

pytest.importorskip("mypy")

USER_CODE = textwrap.dedent("""
    import numpy as np
    import tensorbridge as tb

    a = tb.to_numpy(np.ones(3))
    reveal_type(a)
    reveal_type(tb.to_numpy_async(a))
    reveal_type(tb.to_numpy_async(a).wait(timeout=1.0))
    reveal_type(tb.collect([a, a]))
    reveal_type(tb.cuda_status()["reason"])
    reveal_type(tb.cuda_available())
    reveal_type(tb.pinned_memory_stats())
    tb.to_numpy(a, copy="yes")  # a str is no copy=
""")


def test_the_package_ships_its_types():
    package = tb.__file__.rsplit("/", 1)[0]
    assert shutil.os.path.exists(f"{package}/py.typed")
    assert shutil.os.path.exists(f"{package}/_core.pyi")


@pytest.mark.slow  # mypy
def test_mypy_sees_the_public_types(tmp_path):
    (tmp_path / "user.py").write_text(USER_CODE)
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--no-incremental", "--follow-imports=silent",
         "--python-version", f"{sys.version_info.major}.{sys.version_info.minor}", "user.py"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300)
    revealed = [line.split("Revealed type is ", 1)[1].strip('"').replace("builtins.", "")
                for line in result.stdout.splitlines() if "Revealed type is" in line]
    assert len(revealed) == 7, result.stdout + result.stderr
    ndarray = revealed[0]
    assert ndarray.startswith("numpy.ndarray["), revealed
    assert revealed[1] == "tensorbridge._transfer.Transfer"
    assert revealed[2].startswith("numpy.ndarray[") and revealed[3].startswith("numpy.ndarray[")
    assert revealed[4] == "str" and revealed[5] == "bool"
    assert revealed[6] == "dict[str, int]"
    errors = [line for line in result.stdout.splitlines() if ": error:" in line]
    assert len(errors) == 1 and "copy" in errors[0] and "user.py:13" in errors[0], result.stdout


@pytest.mark.slow  # stubtest
def test_the_stub_matches_the_native_module():
    # Every name, signature and default of _core.pyi against the built module.
    here = pathlib.Path(__file__).parent
    allowlists = ["stubtest_allowlist.txt"]
    if sys.version_info < (3, 12):
        allowlists.append("stubtest_allowlist_before_3_12.txt")
    result = subprocess.run(
        [sys.executable, "-m", "mypy.stubtest", "tensorbridge._core",
         *(arg for name in allowlists for arg in ("--allowlist", str(here / name)))],
        capture_output=True, text=True, timeout=300, cwd=here.parent)
    assert result.returncode == 0, result.stdout + result.stderr
