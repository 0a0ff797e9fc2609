"""The README stays true: its example runs, and CI runs its test command."""

import pathlib
import re
import subprocess
import sys

import pytest
from helpers import missing_modules

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


BLOCKS = re.findall(r"```python\n(.*?)```", README, re.S)
CPU_BLOCKS = [b for b in BLOCKS if "cuda" not in b]
GPU_BLOCKS = [b for b in BLOCKS if "cuda" in b]


def run_block(block):
    """A README example as a user runs it: a fresh interpreter (an example may
    set the environment before its imports), warnings as errors."""
    missing = missing_modules(block)
    if missing:
        pytest.skip(f"this example needs {', '.join(missing)}, not installed here")
    result = subprocess.run([sys.executable, "-W", "error", "-c", block], capture_output=True,
                            text=True, timeout=300, cwd=ROOT)
    assert result.returncode == 0, f"README example failed:\n{block}\n{result.stderr}"


def test_the_readme_has_cpu_and_gpu_examples():
    assert len(CPU_BLOCKS) >= 5 and GPU_BLOCKS


@pytest.mark.slow  # each a fresh interpreter, most importing torch
@pytest.mark.parametrize("block", CPU_BLOCKS, ids=lambda b: b.splitlines()[0][:40])
def test_readme_cpu_examples_run(block):
    run_block(block)


@pytest.mark.gpu
@pytest.mark.parametrize("block", GPU_BLOCKS, ids=lambda b: b.splitlines()[0][:40])
def test_readme_gpu_examples_run(block):
    run_block(block)


def test_an_example_needing_a_missing_module_is_skipped_by_name():
    assert missing_modules("import numpy as np, tensorbridge_absent_extra.sub as x\n"
                           "from os import path\nfrom . import local\n") == [
        "tensorbridge_absent_extra"]
    with pytest.raises(pytest.skip.Exception, match="needs tensorbridge_absent_extra, not "):
        run_block("import tensorbridge_absent_extra\n")


def test_ci_runs_the_readme_test_command():
    commands = re.findall(r"```sh\n(.*?)\n```", README, re.S)
    test_command = next(c for c in commands if "pytest" in c and "requirements/test.txt" in c)
    assert test_command in (ROOT / ".ci" / "run").read_text()
