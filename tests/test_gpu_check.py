"""scripts/gpu_check.sh and its helpers: what comes back from a lent GPU
machine (check_gpu_out.py), the stage selector and its limits, the tests
stage's selection, its refusal to fall back silently and its pytest hardening
(no machine plugins, only our warnings fatal, a crashed test named and the
rest run), the per-test time limit that works without plugins, and the smoke
stage's checks. The whole script is rehearsed end to end in CI (.ci/run,
GPU_CHECK_REHEARSAL=1), not here."""

import contextlib
import ctypes.util
import importlib.util
import json
import os
import pathlib
import subprocess
import sys

import pytest
from helpers import needs_torch

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


@pytest.mark.slow
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
    result = subprocess.run([sys.executable, str(SCRIPTS / "gpu_check_steps.py"), "tests",
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


@pytest.mark.slow
def test_a_hanging_test_ends_the_run_with_its_traceback(tmp_path):
    result = inner_pytest(tmp_path, "import time\n\ndef test_hangs():\n    time.sleep(600)\n",
                          "--per-test-timeout=3", "-o", "faulthandler_timeout=1")
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "test_inner.py::test_hangs: still running after 1 s (the limit is 3 s)" in output
    assert "Timeout (0:00:03)!" in output and "in test_hangs" in output


@pytest.mark.slow
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


@pytest.mark.slow
def test_a_tensorbridge_warning_fails_the_run_and_any_other_is_only_reported(tmp_path):
    (tmp_path / "tensorbridge_probe_pkg.py").write_text(
        "import warnings\n\ndef ours():\n    warnings.warn('ours', UserWarning)\n")
    (tmp_path / "thirdparty_probe_pkg.py").write_text(
        "import warnings\n\ndef theirs():\n    warnings.warn('theirs', DeprecationWarning)\n")
    source = ("import warnings, pytest, thirdparty_probe_pkg, tensorbridge_probe_pkg\n"
              "warnings.warn('at collection', FutureWarning)\n\n"
              "def test_theirs():\n    thirdparty_probe_pkg.theirs()\n\n"
              "def test_ours():\n    tensorbridge_probe_pkg.ours()\n")
    # the project's policy, as pyproject.toml has it: every warning an error
    (tmp_path / "pytest.ini").write_text("[pytest]\nfilterwarnings =\n    error\n")
    result = inner_pytest(tmp_path, source, "--warnings-fail-only-from=tensorbridge_probe_pkg")
    output = result.stdout + result.stderr
    assert "1 failed, 1 passed" in output, output
    assert "FAILED test_inner.py::test_ours" in output and "UserWarning: ours" in output
    assert "DeprecationWarning: theirs" in output  # reported in the summary
    # without the option, the third-party warnings end the run (the old behaviour)
    result = inner_pytest(tmp_path, source)
    assert result.returncode != 0 and "FutureWarning: at collection" in result.stdout


@pytest.mark.slow
def test_the_selection_keeps_marked_tests_and_whole_files(tmp_path):
    (tmp_path / "test_other.py").write_text("def test_plain():\n    pass\n")
    source = ("import pytest\n\ndef test_plain():\n    pass\n\n"
              "@pytest.mark.gpu\ndef test_marked():\n    pass\n")
    quiet = ["-W", "ignore::pytest.PytestUnknownMarkWarning", "-rA"]
    result = inner_pytest(tmp_path, source, *quiet, "--keep-marked=gpu",
                          str(tmp_path / "test_other.py"))
    assert "PASSED test_inner.py::test_marked" in result.stdout, result.stdout
    assert "1 passed, 2 deselected" in result.stdout, result.stdout
    result = inner_pytest(tmp_path, source, *quiet, "--keep-marked=gpu",
                          "--keep-file=test_other.py", str(tmp_path / "test_other.py"))
    assert "2 passed, 1 deselected" in result.stdout, result.stdout


def test_the_gpu_selection_holds_every_gpu_test_of_every_file():
    files = steps.gpu_test_files()
    for path in sorted((ROOT / "tests").glob("test_*.py")):
        text = path.read_text()
        marked = any(line.strip().startswith("@pytest.mark.gpu") or
                     (line.startswith("pytestmark") and "pytest.mark.gpu" in line)
                     for line in text.splitlines())
        assert (f"tests/{path.name}" in files) == (marked or path.name == "test_readme.py"), path
    assert "tests/test_array_api.py" in files and "tests/test_augmented.py" in files


CRASHING = ("import ctypes, os\n\n"
            "def test_before():\n    pass\n\n"
            "def test_crashes():\n    os.abort()\n\n"
            "def test_after():\n    pass\n\n"
            "def test_fails_after():\n    assert False\n")


def test_a_crashed_test_is_named_and_the_rest_still_run(tmp_path, capsys):
    (tmp_path / "test_inner.py").write_text(CRASHING)
    env = {**os.environ, "PYTHONPATH": str(SCRIPTS), "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"}
    progress = str(tmp_path / "progress")
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p",
               "gpu_check_pytest", "-p", "no:faulthandler", "--rootdir", str(tmp_path),
               f"--progress-file={progress}", str(tmp_path / "test_inner.py")]
    rc = steps.run_pytest(command, env, progress, str(tmp_path / "junit.xml"))
    out = capsys.readouterr().out
    assert rc == 1
    assert "REASON: CRASHED: test_inner.py::test_crashes (signal 6)" in out, out
    started, ended, outcomes, finished = steps.read_progress(progress)
    assert started == ["test_inner.py::test_before", "test_inner.py::test_crashes",
                       "test_inner.py::test_after", "test_inner.py::test_fails_after"]
    assert ended == set(started) - {"test_inner.py::test_crashes"} and finished == 1
    assert outcomes == {"test_inner.py::test_before": "passed",
                        "test_inner.py::test_after": "passed",
                        "test_inner.py::test_fails_after": "failed"}
    assert ("REASON: 1 failed, 2 passed, 1 crashed in 2 pytest run(s); failed: "
            "test_inner.py::test_fails_after") in out
    # the crashed run wrote no JUnit XML; the second did, with the failure
    assert 'failures="1"' in (tmp_path / "junit.2.xml").read_text()


@pytest.mark.slow
def test_a_green_run_is_one_pytest_run(tmp_path, capsys):
    (tmp_path / "test_inner.py").write_text("def test_fine():\n    pass\n")
    env = {**os.environ, "PYTHONPATH": str(SCRIPTS)}
    progress = str(tmp_path / "progress")
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p",
               "gpu_check_pytest", "--rootdir", str(tmp_path), f"--progress-file={progress}",
               str(tmp_path / "test_inner.py")]
    assert steps.run_pytest(command, env, progress, str(tmp_path / "junit.xml")) == 0
    assert "CRASHED" not in capsys.readouterr().out
    assert not (tmp_path / "junit.2.xml").exists()


def test_without_a_gpu_or_a_rehearsal_the_tests_stage_has_nothing_to_test(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "GPU_CHECK_REHEARSAL"}
    fake = tmp_path / "fake"
    (fake / "torch").mkdir(parents=True)
    (fake / "torch" / "__init__.py").write_text(
        "class cuda:\n    is_available = staticmethod(lambda: False)\n")
    env["PYTHONPATH"] = str(fake)
    result = subprocess.run([sys.executable, str(SCRIPTS / "gpu_check_steps.py"), "tests",
                             str(tmp_path / "junit.xml")], capture_output=True, text=True,
                            env=env, timeout=120)
    if "tensorbridge finds" in result.stdout:
        pytest.skip("a real GPU is here")
    assert result.returncode == steps.SKIPPED, result.stdout + result.stderr
    assert "GPU_CHECK_REHEARSAL=1 rehearses this stage" in result.stdout


# -- limits that fit one device call ----------------------------------------------


def test_the_stages_fit_one_device_call_with_two_minutes_to_spare(tmp_path):
    assert sum(steps.LIMITS.values()) <= steps.TOTAL_LIMIT <= 600 - 120
    result = gpu_check(cwd=tmp_path, OUT=str(tmp_path / "out"), GPU_CHECK_PLAN_ONLY="1",
                       STAGES=" ".join(STAGES))
    assert result.returncode == 0, result.stderr
    assert f"total: {sum(steps.LIMITS.values())} s at most" in result.stdout
    assert "smoke=90" in result.stdout and result.stdout.index("smoke=") < result.stdout.index(
        "tests=")


# -- the smoke stage ----------------------------------------------------------------

smoke = load_script("gpu_check_smoke")


def run_checks(monkeypatch, capsys, checks, budget=None):
    monkeypatch.setattr(smoke, "CHECKS", checks)
    rc = smoke.run_all(budget)
    lines = capsys.readouterr().out.strip().splitlines()
    return rc, [json.loads(line) for line in lines if line.startswith("{")], lines[-1]


@pytest.mark.slow
def test_each_smoke_check_gets_a_verdict_even_when_one_crashes_or_hangs(monkeypatch, capsys):
    def child(name):  # what each "check" does in its own process
        return {"fine": "print('{\"check\": \"fine\", \"status\": \"passed\"}')",
                "crash": "import os; os.abort()",
                "hang": "import time; time.sleep(60)",
                "fails": "print('{\"check\": \"fails\", \"status\": \"failed\"}')"}[name]

    monkeypatch.setattr(smoke, "child_command", lambda name: [sys.executable, "-c", child(name)])
    checks = {"fine": (None, 20), "crash": (None, 20), "hang": (None, 3), "fails": (None, 20)}
    rc, lines, last = run_checks(monkeypatch, capsys, checks)
    assert rc == 1
    assert {line["check"]: line["status"] for line in lines} == {
        "fine": "passed", "crash": "crashed", "hang": "timed out", "fails": "failed"}
    assert last == "REASON: 1 passed, 1 crashed, 1 timed out, 1 failed (crash, hang, fails)"
    # a budget too small for the rest: recorded as skipped, never left out
    rc, lines, _ = run_checks(monkeypatch, capsys, {"hang": (None, 30), "fine": (None, 20)},
                              budget=4)
    assert [line["status"] for line in lines] == ["timed out", "skipped"]
    assert "no time left" in lines[1]["reason"]


@pytest.mark.parametrize("name", ["cuda_status", "kernel", pytest.param("exchange_table",
                                  marks=needs_torch), "empty_pinned"])
def test_the_checks_that_run_without_a_gpu_pass_on_the_standin(name, capsys):
    assert smoke.run_one(name) == 0
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert line["status"] == "passed", line
    if name == "empty_pinned":
        assert line["figures"]["hit_count"] >= 1  # the second block came from cache


@needs_torch
def test_an_exchange_table_that_misreports_a_tensor_fails_its_check(monkeypatch, capsys):
    real = smoke.read_dltensor
    monkeypatch.setattr(smoke, "read_dltensor", lambda table, t: (
        lambda out, shape, strides: (out, shape, strides[::-1]))(*real(table, t)))
    assert smoke.run_one("exchange_table") == 1
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert line["status"] == "failed" and "the table says" in line["reason"]


class _CpuCuda:
    """torch.cuda on the CPU, so that the GPU checks' own code runs here: the
    kernels do nothing and the streams are the CPU's order. What it proves is
    the checks' logic, not the GPU's behaviour (the GPU run does that)."""

    class Event:
        def __init__(self, enable_timing=False):
            pass

        def record(self, stream=None):
            pass

        def synchronize(self):
            pass

        def elapsed_time(self, end):
            return 10.0

    class Stream:
        cuda_stream = 0

    is_available = staticmethod(lambda: True)
    _sleep = staticmethod(lambda cycles: None)
    synchronize = staticmethod(lambda: None)
    stream = staticmethod(lambda s: contextlib.nullcontext())


@needs_torch
@pytest.mark.parametrize("name", ["queued_kernel", "transfer_wait", "collect_small",
                                  "small_copies", "out_pre_touched", "pin"])
def test_the_gpu_checks_logic_runs_on_a_cpu_torch(name, monkeypatch, capsys):
    import torch

    class CpuTorch:
        cuda = _CpuCuda

        def __getattr__(self, attribute):
            made = getattr(torch, attribute)
            if attribute in ("zeros", "full", "arange"):
                return lambda *args, device=None, **kwargs: made(*args, **kwargs)
            return made

    monkeypatch.setattr(smoke, "needs_gpu", lambda: CpuTorch())
    assert smoke.run_one(name) == 0
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert line["status"] == "passed" and line["figures"], line
