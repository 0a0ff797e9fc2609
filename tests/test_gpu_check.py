"""scripts/gpu_check.sh and its helpers: what comes back from a lent GPU
machine (check_gpu_out.py), the stage selector, the tests stage's refusal to
fall back silently, and the per-test time limit that works without plugins.
The whole script runs end to end in CI (.ci/run), not here."""

import ctypes.util
import importlib.util
import json
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "scripts"


def load_script(name):
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


check = load_script("check_gpu_out")
steps = load_script("gpu_check_steps")
STAGES = steps.STAGES


def summary(stages=STAGES, status="passed", **extra):
    return {"schema": 1, "complete": True, **extra,
            "stages": [{"stage": s, "status": status, "seconds": 1.0} for s in stages]}


def make_out(where, files):
    """files: relative path -> bytes, a size in bytes (sparse), or a JSON-ready object."""
    for relative, content in files.items():
        path = where / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, int):
            with open(path, "wb") as f:
                f.truncate(content)
        elif isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(json.dumps(content))
    return where


# -- what comes back: check_gpu_out.py --------------------------------------------


def test_a_complete_out_folder_passes(tmp_path):
    out = make_out(tmp_path, {"gpu_check.json": summary(), "bench.json": {"schema": 2},
                              "torch_transformer_cuda.pkl": b"\x80\x04.",
                              "logs.tar.gz": 2 << 20, "extra/deeper/note.txt": b"x"})
    assert check.problems(str(out), require_complete=True) == []
    assert check.main([str(out)]) == 0


@pytest.mark.parametrize("files, expected", [
    ({f"f{i}": b"x" for i in range(5)}, "6 files (at most 5)"),
    ({"logs.tar.gz": 16 << 20}, "logs.tar.gz has 16777216 bytes"),
    ({f"part{i}": 15 << 20 for i in range(4)} | {"bench.json": 5 << 20},
     "bytes in all (under 67108864 allowed)"),
    ({"a/b/c/deep.log": b"x"}, "a/b/c/deep.log is 3 folders deep"),
], ids=["six-files", "file-too-large", "total-too-large", "too-deep"])
def test_out_folders_that_break_the_rule(tmp_path, files, expected):
    out = make_out(tmp_path, {"gpu_check.json": summary(), **files})
    found = check.problems(str(out))
    assert any(expected in problem for problem in found), found
    assert check.main([str(out)]) == 1


@pytest.mark.parametrize("content, expected", [
    (None, "gpu_check.json: missing"),
    (b"{not json", "gpu_check.json: not JSON"),
    ({"stages": "all of them"}, "no 'stages' list"),
    (summary(STAGES[:-1]), "stage 'fixture' missing"),
    (summary(status="fine"), "stage 'environment' has status 'fine'"),
], ids=["missing", "not-json", "no-list", "stage-missing", "unknown-status"])
def test_summaries_that_break_the_rule(tmp_path, content, expected):
    files = {"bench.json": {}} if content is None else {"gpu_check.json": content}
    found = check.problems(str(make_out(tmp_path, files)))
    assert any(expected in problem for problem in found), found


def test_links_do_not_come_back_and_incomplete_runs_are_named(tmp_path):
    out = make_out(tmp_path, {"gpu_check.json": summary(complete=False)})
    (out / "venv").symlink_to(sys.prefix)
    found = check.problems(str(out), require_complete=True)
    assert any("venv is a link" in p for p in found), found
    assert any("not complete" in p for p in found), found
    assert check.problems(str(tmp_path / "absent")) == [f"{tmp_path / 'absent'} is not a folder"]


# -- the script's stage selector --------------------------------------------------


def gpu_check(*args, cwd, **env):
    return subprocess.run(["bash", str(SCRIPTS / "gpu_check.sh"), *args], capture_output=True,
                          text=True, cwd=cwd, timeout=120,
                          env={**os.environ, "PYTHON": sys.executable, **env})


def test_unknown_stages_and_a_missing_out_are_usage_errors(tmp_path):
    result = gpu_check("tests", "frobnicate", cwd=tmp_path, OUT=str(tmp_path / "out"))
    assert result.returncode == 2
    assert "unknown stage 'frobnicate'" in result.stderr and "stages: environment" in result.stderr
    assert not (tmp_path / "out").exists()
    env = {k: v for k, v in os.environ.items() if k != "OUT"}
    result = subprocess.run(["bash", str(SCRIPTS / "gpu_check.sh")], capture_output=True,
                            text=True, env=env, timeout=60)
    assert result.returncode == 2 and "set OUT" in result.stderr


def test_one_selected_stage_runs_and_every_stage_is_in_the_summary(tmp_path):
    # A relative OUT, from another folder: resolved against the caller's.
    result = gpu_check(cwd=tmp_path, OUT="out", STAGES="environment")
    assert result.returncode == 0, result.stdout + result.stderr
    out = tmp_path / "out"
    assert sorted(os.listdir(out)) == ["gpu_check.json", "logs.tar.gz"]
    assert check.problems(str(out), require_complete=True) == []
    report = json.loads((out / "gpu_check.json").read_text())
    status = {stage["stage"]: stage["status"] for stage in report["stages"]}
    assert status == {"environment": "passed", **dict.fromkeys(STAGES[1:], "not selected")}
    environment = report["stages"][0]
    assert environment["reason"].startswith("torch sees") and '"numpy"' in environment["log_tail"]
    assert report["selected"] == ["environment"] and report["exit_status"] == 0


def test_a_stage_that_needs_the_extension_brings_the_build_along(tmp_path):
    # A plain (non-venv) interpreter gets a fresh scratch venv, which has no
    # tensorbridge yet: a rerun of "fixture" alone must build first.
    base = pathlib.Path(sys.base_prefix) / "bin" / "python3"
    if not base.exists():
        pytest.skip(f"no base interpreter at {base}")
    result = gpu_check("fixture", cwd=tmp_path, OUT=str(tmp_path / "out"), PYTHON=str(base),
                       GPU_CHECK_PLAN_ONLY="1")
    assert result.returncode == 0, result.stderr
    assert "stages: build fixture" in result.stdout
    assert "needs the extension" in result.stdout and "does not exist yet" in result.stdout
    assert not (tmp_path / "out").exists() or os.listdir(tmp_path / "out") == []
    # arguments win over STAGES; nothing needs a build for the environment stage
    result = gpu_check("environment", cwd=tmp_path, OUT=str(tmp_path / "out"),
                       STAGES="tests bench", GPU_CHECK_PLAN_ONLY="1")
    assert result.returncode == 0 and "stages: environment" in result.stdout, result.stdout


# -- the tests stage never falls back silently ------------------------------------


@pytest.mark.skipif(bool(ctypes.util.find_library("cuda")), reason="a CUDA driver is installed")
def test_torch_seeing_a_gpu_that_tensorbridge_does_not_fails_the_tests_stage(tmp_path):
    fake = tmp_path / "fake"
    (fake / "torch").mkdir(parents=True)
    (fake / "torch" / "__init__.py").write_text(
        "class cuda:\n"
        "    is_available = staticmethod(lambda: True)\n"
        "    device_count = staticmethod(lambda: 1)\n")
    env = {**os.environ, "PYTHONPATH": str(fake)}
    result = subprocess.run([sys.executable, str(SCRIPTS / "gpu_check_steps.py"), "tests", "0",
                             str(tmp_path / "junit.xml")], capture_output=True, text=True,
                            env=env, timeout=120)
    assert result.returncode == 1, result.stdout + result.stderr
    assert ("REASON: FAILED: torch sees 1 GPU(s) but tensorbridge.cuda_available() is False"
            in result.stdout)
    assert "pytest" not in result.stdout  # no stand-in run instead
    assert not (tmp_path / "junit.xml").exists()


# -- a time limit per test, without pytest-timeout --------------------------------


def inner_pytest(tmp_path, source, *options):
    (tmp_path / "test_inner.py").write_text(source)
    env = {**os.environ, "PYTHONPATH": str(SCRIPTS)}
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           "-p", "gpu_check_pytest", "--rootdir", str(tmp_path),
                           *options, str(tmp_path / "test_inner.py")],
                          capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120)


def test_a_hanging_test_ends_the_run_with_its_traceback(tmp_path):
    result = inner_pytest(tmp_path, "import time\n\ndef test_hangs():\n    time.sleep(600)\n",
                          "--per-test-timeout=3", "-o", "faulthandler_timeout=1")
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "test_inner.py::test_hangs: still running after 1 s (the limit is 3 s)" in output
    assert "Timeout (0:00:03)!" in output and "in test_hangs" in output


def test_a_run_whose_gpu_tests_all_skip_fails_when_they_are_required(tmp_path):
    source = ("import pytest\n\ndef test_fine():\n    pass\n\n"
              "@pytest.mark.gpu\ndef test_on_the_gpu():\n    pytest.skip('no GPU')\n")
    quiet = ["-W", "ignore::pytest.PytestUnknownMarkWarning"]
    result = inner_pytest(tmp_path, source, "--per-test-timeout=60", "--fail-if-skipped=gpu",
                          *quiet)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "1 passed, 1 skipped" in result.stdout
    assert ("FAILED: all 1 test(s) marked gpu were skipped, e.g. test_inner.py::test_on_the_gpu"
            in result.stdout)
    assert "per-test time limit: 60 s" in result.stdout
    result = inner_pytest(tmp_path, source, "--per-test-timeout=60", *quiet)
    assert result.returncode == 0, result.stdout + result.stderr
    # one GPU test that ran is enough: a lone skip (CuPy missing) is only reported
    source += "\n@pytest.mark.gpu\ndef test_ran_on_the_gpu():\n    pass\n"
    result = inner_pytest(tmp_path, source, "--fail-if-skipped=gpu", *quiet)
    assert result.returncode == 0, result.stdout + result.stderr
