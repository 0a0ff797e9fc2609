"""JAX arrays (a DLPack producer of legacy capsules only) through to_numpy,
checked in a process of its own: see tests/jax_checks.py."""

import importlib.util
import os
import pathlib
import re
import subprocess
import sys

import pytest
from helpers import SANITIZED

pytestmark = [
    pytest.mark.skipif(importlib.util.find_spec("jax") is None, reason="JAX is not installed"),
    pytest.mark.skipif(SANITIZED, reason="jaxlib's own C++ under a sanitizer is not "
                       "tensorbridge's to check; the plain run covers JAX"),
]

CHECKS = pathlib.Path(__file__).with_name("jax_checks.py")


def test_jax_arrays():
    names = re.findall(r"^def (check_\w+)\(", CHECKS.read_text(), re.MULTILINE)
    result = subprocess.run([sys.executable, str(CHECKS)], capture_output=True, text=True,
                            timeout=300, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.split() == [word for name in names for word in ("passed:", name)]
