"""The wheel tooling's logic: which Pythons get wheels (scripts/pythons.py, read
from [tool.cibuildwheel]), how each is found on a machine, and the smoke test's
verdicts (scripts/wheel_smoke.py). The wheels themselves are built, installed
without a compiler and smoke-tested by scripts/build_wheels.sh in CI."""

import importlib.metadata
import importlib.util
import pathlib
import re
import subprocess
import sys

import pytest
from helpers import installed_editable

ROOT = pathlib.Path(__file__).resolve().parents[1]
META = importlib.metadata.metadata("tensorbridge")
THIS = f"{sys.version_info.major}.{sys.version_info.minor}"


def load_script(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


pythons = load_script("pythons")


def test_wheels_are_built_for_exactly_the_supported_pythons():
    versions = pythons.versions()
    classified = [c.rsplit(" ", 1)[1] for c in META.get_all("Classifier")
                  if re.fullmatch(r"Programming Language :: Python :: 3\.\d+", c)]
    assert versions == sorted(classified, key=lambda v: int(v.split(".")[1]))
    assert META["Requires-Python"] == f">={versions[0]}"


@pytest.mark.parametrize(("table", "expected"), [
    ('build = "cp312-manylinux_x86_64"\n', "cp312-manylinux_x86_64"),
    ('archs = ["x86_64"]\nbuild = ["cp310-manylinux_x86_64",\n  "cp311-manylinux_x86_64"]\n',
     ["cp310-manylinux_x86_64", "cp311-manylinux_x86_64"]),
])
def test_the_build_entry_is_read_with_or_without_tomllib(table, expected, monkeypatch):
    text = f'[project]\nname = "x"\n\n[tool.cibuildwheel]\n{table}\n[tool.other]\nbuild = "no"\n'
    assert pythons.cibuildwheel_build(text) == expected
    monkeypatch.setitem(sys.modules, "tomllib", None)  # as on Python 3.10
    assert pythons.cibuildwheel_build(text) == expected


def test_a_build_entry_that_is_not_a_cpython_manylinux_wheel_is_refused(tmp_path):
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text('[tool.cibuildwheel]\nbuild = ["cp310-manylinux_x86_64", "pp310-*"]\n')
    with pytest.raises(SystemExit, match="'pp310-\\*' is not of the form"):
        pythons.versions(pyproject)


def executable(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(0o755)
    return path


def test_a_python_is_found_past_a_shim_that_fails_and_only_in_its_own_version(
        tmp_path, monkeypatch):
    # A pyenv shim for a version that is not the active one exits non-zero.
    executable(tmp_path / "shims" / f"python{THIS}",
               f"#!/bin/sh\necho 'pyenv: python{THIS}: command not found' >&2\nexit 127\n")
    release = tmp_path / "pyenv" / "versions" / f"{THIS}.99" / "bin" / f"python{THIS}"
    release.parent.mkdir(parents=True)
    release.symlink_to(sys.executable)
    # An interpreter of another version under this version's name is no match.
    impostor = tmp_path / "pyenv" / "versions" / "3.99.0" / "bin" / "python3.99"
    impostor.parent.mkdir(parents=True)
    impostor.symlink_to(sys.executable)
    monkeypatch.setenv("PATH", str(tmp_path / "shims"))
    monkeypatch.setenv("PYENV_ROOT", str(tmp_path / "pyenv"))
    assert pythons.find(THIS) == str(release)
    assert pythons.find("3.99") is None


def test_find_names_each_version_found_and_each_missing_one(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(pythons, "versions", lambda: [THIS, "3.99"])
    monkeypatch.setattr(pythons, "find", lambda v: sys.executable if v == THIS else None)
    assert pythons.main(["--find"]) == 0
    out, err = capsys.readouterr()
    assert out == f"{THIS} {sys.executable}\n"
    assert "CPython 3.99 not found" in err


def run_smoke(tmp_path, *args):
    return subprocess.run([sys.executable, str(ROOT / "scripts" / "wheel_smoke.py"), *args],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)


def test_the_smoke_test_passes_on_this_installation(tmp_path):
    result = run_smoke(tmp_path)
    if installed_editable():  # the smoke test is for wheels: it refuses the source tree
        assert result.returncode == 1, result.stdout + result.stderr
        assert result.stdout.splitlines()[-1].startswith(
            "FAILED installed: AssertionError: imported from the source tree: "), result.stdout
        return
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert lines[-1].startswith("wheel smoke test passed")
    checks = {line.split()[1].rstrip(":") for line in lines if line.startswith("ok ")}
    assert {"installed", "numpy_arrays", "buffers", "dlpack_producers", "cuda_status", "cli",
            "nothing_heavy_was_imported"} <= checks
    assert ("torch_fast_path" in checks) == (importlib.util.find_spec("torch") is not None)


def test_require_torch_without_torch_fails_before_any_check(monkeypatch, capsys):
    smoke = load_script("wheel_smoke")
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *args: None if name == "torch" else real(name, *args))
    assert smoke.main(["--require-torch"]) == 1
    assert capsys.readouterr().out.splitlines() == [
        "FAILED torch: not installed, and --require-torch says it must be"]


def test_a_failing_check_is_named_and_fails_the_run(monkeypatch, capsys):
    smoke = load_script("wheel_smoke")

    def check_installed():  # as if the wheel had not been installed
        raise AssertionError("imported from the source tree: /src/tensorbridge")

    monkeypatch.setattr(smoke, "check_installed", check_installed)
    assert smoke.main([]) == 1
    assert capsys.readouterr().out.splitlines()[-1] == (
        "FAILED installed: AssertionError: imported from the source tree: /src/tensorbridge")
