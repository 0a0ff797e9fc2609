"""The tensorbridge command: bench and info, as a user runs them."""

import json
import os
import pathlib
import struct
import subprocess
import sys

import numpy as np
import pytest

import tensorbridge as tb

ROOT = pathlib.Path(__file__).resolve().parents[1]

EXPECTED_CPU_METHODS = {
    "t.numpy()", "np.asarray(t)", "np.from_dlpack(t)", "t.detach().cpu().numpy()",
    "t.numpy(force=True)", "tb.to_numpy(t)", "tb.to_numpy(t, copy=True)",
    "host memcpy (memory ceiling)", "t.detach().numpy()", ".float().numpy()",
    "float32 t.numpy() (same count)", "np.concatenate(list)", "tb.collect(batches)",
    "hand-written loop", "TorchTransformer.transform", "list + np.concatenate", "tb.collect",
    "np.concatenate(views)", "tb.collect(views)",
}


def tensorbridge(*args, cwd):
    # The console script is installed beside this interpreter.
    script = os.path.join(os.path.dirname(sys.executable), "tensorbridge")
    return subprocess.run([script, *args], capture_output=True, text=True, cwd=cwd,
                          env=dict(os.environ, TENSORBRIDGE_LIBCUDA="/nonexistent/libcuda"),
                          timeout=240)


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    """One real `tensorbridge bench --quick`, shared by the checks below."""
    where = tmp_path_factory.mktemp("bench")
    result = tensorbridge("bench", "--quick", "--json", "-", "--plot", "plot.png", cwd=where)
    return where, result


def test_quick_bench_reports_every_method_this_machine_supports(quick_run):
    _, result = quick_run
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    methods = {row["method"] for row in report["results"]}
    assert EXPECTED_CPU_METHODS <= methods
    for row in report["results"]:
        assert row["median_s"] > 0 and row["iqr_s"] >= 0 and row["rounds"] >= 3
        assert row["ratio_to_baseline"] > 0
    # the GPU is said to be missing, not silently left out
    assert any("CUDA" in s["method"] for s in report["skipped"])
    assert report["versions"]["tensorbridge"] and report["versions"]["numpy"]
    assert report["hardware"]["cpus"] >= 1 and report["settings"]["quick"] is True
    assert "[" in result.stderr and "done" in result.stderr  # the progress bar
    assert "median: per call" in result.stderr  # the table, beside JSON on stdout


def test_plot_is_a_png_and_nothing_else_is_written(quick_run):
    where, result = quick_run
    assert sorted(os.listdir(where)) == ["plot.png"]
    data = (where / "plot.png").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    assert width > 100 and height > 100


def test_json_to_a_file_and_the_table_on_stdout(tmp_path):
    result = tensorbridge("bench", "--quick", "--device", "cpu", "--no-workflows",
                          "--repeats", "3", "--budget", "0.05", "--json", "out.json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "tb.to_numpy(t)" in result.stdout and "vs base" in result.stdout
    report = json.loads((tmp_path / "out.json").read_text())
    assert report["settings"]["repeats"] == 3
    assert all(row["device"] == "cpu" for row in report["results"])


@pytest.mark.parametrize("args", [[], ["bench", "--bogus"], ["bench", "--device", "tpu"],
                                  ["bench", "--repeats", "0"], ["frobnicate"]])
def test_usage_errors_exit_2(args, tmp_path):
    result = tensorbridge(*args, cwd=tmp_path)
    assert result.returncode == 2
    assert "usage: tensorbridge" in result.stderr


@pytest.mark.parametrize("command", [["--help"], ["bench", "--help"], ["info", "--help"]])
def test_help(command, tmp_path):
    result = tensorbridge(*command, cwd=tmp_path)
    assert result.returncode == 0 and "usage: tensorbridge" in result.stdout


def test_info(tmp_path):
    result = tensorbridge("info", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    for line in ("tensorbridge  0.", "numpy", "torch", "cupy          not installed",
                 "torch tensors: C fast path over the DLPack C exchange API",
                 "CUDA: unusable, CPU conversions only: cannot load the CUDA driver "
                 "/nonexistent/libcuda: ",
                 "pinned pool: none (pinned memory needs a usable CUDA driver)", "host memcpy:"):
        assert line in result.stdout


def test_info_as_json(tmp_path):
    result = tensorbridge("info", "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["cuda"]["available"] is False and report["cuda"]["library"] is None
    assert report["cuda"]["reason"].startswith("cannot load the CUDA driver /nonexistent/libcuda")
    assert report["pinned_pool"]["limit_bytes"] == 0
    assert report["versions"]["tensorbridge"] == tb.__version__
    assert report["measurements"]["host_memcpy_GB_per_s"] > 0


def test_output_piped_into_a_reader_that_stops_early(tmp_path):
    # `tensorbridge info | head -1`: no traceback when the pipe closes.
    command = f"{sys.executable} -m tensorbridge info | head -1"
    result = subprocess.run(["bash", "-o", "pipefail", "-c", command], capture_output=True,
                            text=True, cwd=tmp_path, timeout=120)
    assert result.stdout == "versions:\n"
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr


def test_python_dash_m_is_the_same_command(tmp_path):
    result = subprocess.run([sys.executable, "-m", "tensorbridge", "info"], capture_output=True,
                            text=True, cwd=tmp_path, timeout=120)
    assert result.returncode == 0 and "versions:" in result.stdout


def test_missing_matplotlib_is_a_clear_failure(tmp_path):
    code = ("import sys; sys.modules['matplotlib'] = None; from tensorbridge.cli import main; "
            "sys.exit(main(['bench', '--quick', '--plot', 'x.png']))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=tmp_path, timeout=120)
    assert result.returncode == 1
    assert "--plot needs matplotlib" in result.stderr and "tensorbridge[bench]" in result.stderr
    assert os.listdir(tmp_path) == []


# -- a failing case is recorded and the run goes on; the JSON is kept current --


@pytest.fixture
def fake_cases(monkeypatch):
    """Replaces the bench's cases with small ones, some of which fail."""
    from tensorbridge import _bench

    seen_on_disk = []  # the JSON as the second case began
    calls = {"late": 0}

    def fails_late():
        calls["late"] += 1
        if calls["late"] > 3:  # after the warm-up: in a round
            raise ValueError("gave up in a round")

    def cases(settings, skipped):
        def first():
            return _bench.Case("fake: one fails at once, one later", "cpu", 64, "np.zeros", {
                "np.zeros": lambda: np.zeros(8),
                "raises": lambda: 1 / 0,
                "fails late": fails_late,
                "np.ones": lambda: np.ones(8)})

        def no_data():
            if settings.json_path:
                seen_on_disk.append(json.loads(pathlib.Path(settings.json_path).read_text()))
            raise MemoryError("no room for the case's data")

        def no_baseline():
            return _bench.Case("fake: the baseline fails", "cpu", 64, "broken", {
                "broken": lambda: [][1], "np.empty": lambda: np.empty(8)})

        yield first
        yield no_data
        yield no_baseline

    monkeypatch.setattr(_bench, "build_cases", cases)
    monkeypatch.setattr(_bench, "collect_peak_memory", lambda count: {})
    return seen_on_disk


def bench_in_process(capsys, *args):
    from tensorbridge import _bench
    from tensorbridge.cli import main

    json_path = args[args.index("--json") + 1] if "--json" in args else None
    _bench.Settings.json_path = json_path  # read by the fake cases only
    try:
        status = main(["bench", "--device", "cpu", "--repeats", "3", "--budget", "0.01", *args])
    finally:
        del _bench.Settings.json_path
    return status, capsys.readouterr()


def test_a_failing_method_is_recorded_and_the_run_goes_on(fake_cases, tmp_path, capsys):
    path = tmp_path / "bench.json"
    status, output = bench_in_process(capsys, "--json", str(path))
    assert status == 1  # something failed, and everything else was measured
    report = json.loads(path.read_text())
    assert report["schema"] == 2 and report["complete"] is True
    measured = {(row["case"], row["method"]) for row in report["results"]}
    assert measured == {("fake: one fails at once, one later", "np.zeros"),
                        ("fake: one fails at once, one later", "np.ones"),
                        ("fake: the baseline fails", "np.empty")}
    failed = {(f["method"], f["error"].splitlines()[-1]) for f in report["failed"]}
    assert failed == {("raises", "ZeroDivisionError: division by zero"),
                      ("fails late", "ValueError: gave up in a round"),
                      ("(making the case's data)", "MemoryError: no room for the case's data"),
                      ("broken", "IndexError: list index out of range")}
    during = {f["method"]: f.get("during") for f in report["failed"]}
    assert during["raises"] == "warm-up" and during["fails late"].startswith("round")
    assert all(f["where"] for f in report["failed"])
    assert [c["status"] for c in report["cases"]] == ["partly failed", "failed", "partly failed"]
    assert report["cases"][1]["case"] == "no_data()"
    (empty,) = [r for r in report["results"] if r["method"] == "np.empty"]
    assert empty["ratio_to_baseline"] is None  # no baseline, no ratio
    # the table shows each failure in its case, and says how many there were
    assert "raises" in output.out and "FAILED: ZeroDivisionError: division by zero" in output.out
    assert "FAILED: MemoryError: no room" in output.out
    assert "failed: 4 method(s)" in output.out
    assert "4 method(s) failed" in output.err
    assert sorted(os.listdir(tmp_path)) == ["bench.json"]  # no partial file left


def test_the_json_is_on_disk_after_every_case(fake_cases, tmp_path, capsys):
    path = tmp_path / "bench.json"
    bench_in_process(capsys, "--json", str(path))
    (seen,) = fake_cases
    assert seen["schema"] == 2 and seen["complete"] is False
    assert [c["case"] for c in seen["cases"]] == ["fake: one fails at once, one later"]
    assert {row["method"] for row in seen["results"]} == {"np.zeros", "np.ones"}


def test_an_interrupted_run_keeps_what_it_measured(monkeypatch, tmp_path, capsys):
    from tensorbridge import _bench

    def cases(settings, skipped):
        yield lambda: _bench.Case("fake: quick", "cpu", 64, "np.zeros",
                                  {"np.zeros": lambda: np.zeros(8)})

        def stopped():  # what SIGTERM (a stage's time limit) or Ctrl-C does
            raise KeyboardInterrupt

        yield stopped

    monkeypatch.setattr(_bench, "build_cases", cases)
    path = tmp_path / "bench.json"
    status, output = bench_in_process(capsys, "--json", str(path))
    assert status == 1 and "interrupted" in output.err
    report = json.loads(path.read_text())
    assert report["interrupted"] is True and report["complete"] is False
    assert [row["method"] for row in report["results"]] == ["np.zeros"]
    assert "incomplete: the run stopped before its last case" in output.out
    assert sorted(os.listdir(tmp_path)) == ["bench.json"]


@pytest.mark.parametrize("option", ["--json", "--plot"])
def test_output_paths_are_checked_before_the_run(option, monkeypatch, tmp_path, capsys):
    from tensorbridge import _bench

    monkeypatch.setattr(_bench, "run", lambda *a, **k: pytest.fail("ran anyway"))
    for path, why in ((tmp_path / "absent" / "out.file", "does not exist"),
                      (tmp_path, "is a directory")):
        status, output = bench_in_process(capsys, option, str(path))
        assert status == 2 and f"{option} {path}: " in output.err and why in output.err


def test_committed_results_stay_readable(capsys):
    from tensorbridge import _bench
    from tensorbridge.cli import _print_table

    for path in sorted((ROOT / "benchmarks" / "results").glob("*.json")):
        report = _bench.load_report(path)
        assert report["schema"] == _bench.SCHEMA and isinstance(report["failed"], list)
        assert report["cases"] and all(c["status"] for c in report["cases"])
        _print_table(report, sys.stdout)
        assert "tb.to_numpy(t)" in capsys.readouterr().out


def test_a_report_from_a_newer_schema_is_refused(tmp_path):
    from tensorbridge import _bench

    path = tmp_path / "future.json"
    path.write_text(json.dumps({"schema": _bench.SCHEMA + 1, "results": []}))
    with pytest.raises(ValueError, match="upgrade tensorbridge"):
        _bench.load_report(path)


def test_device_cuda_without_a_gpu_is_one_line_and_a_failure(tmp_path, capsys):
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    from tensorbridge.cli import main

    assert main(["bench", "--device", "cuda", "--json", str(tmp_path / "x.json")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no CUDA GPU found" in err
    assert os.listdir(tmp_path) == []
