"""The README stays true: its example runs, and CI runs its test command."""

import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_readme_cpu_examples_run():
    blocks = [b for b in re.findall(r"```python\n(.*?)```", README, re.S) if "cuda" not in b]
    assert blocks
    for block in blocks:
        exec(compile(block, "README.md", "exec"), {})


@pytest.mark.gpu
def test_readme_gpu_examples_run():
    blocks = [b for b in re.findall(r"```python\n(.*?)```", README, re.S) if "cuda" in b]
    assert blocks
    for block in blocks:
        exec(compile(block, "README.md", "exec"), {})


def test_ci_runs_the_readme_test_command():
    commands = re.findall(r"```sh\n(.*?)\n```", README, re.S)
    test_command = next(c for c in commands if "pytest" in c and "requirements/test.txt" in c)
    assert test_command in (ROOT / ".ci" / "run").read_text()
