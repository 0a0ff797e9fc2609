"""The tensorbridge command: bench and info, as a user runs them."""

import json
import os
import pathlib
import struct
import subprocess
import sys

import numpy as np
import pytest
from helpers import fast_sample, needs_torch

import tensorbridge as tb

ROOT = pathlib.Path(__file__).resolve().parents[1]

EXPECTED_CPU_METHODS = {
    "t.numpy()", "np.asarray(t)", "np.from_dlpack(t)", "t.detach().cpu().numpy()",
    "t.numpy(force=True)", "tb.to_numpy(t)", "tb.to_numpy(t, copy=True)",
    "host memcpy (memory ceiling)", "t.detach().numpy()", ".float().numpy()",
    "float32 t.numpy() (same count)", "np.concatenate(list)", "tb.collect(batches)",
    "hand-written loop", "TorchTransformer.transform", "list + np.concatenate", "tb.collect",
    "AugmentedEstimator(batch_size=512)", "ToNumpy().transform(t)",
    "[t.numpy() for t in batches]", "np.concatenate([t.numpy() ...])",
}
# The CPU cases' methods that return a view of the source's memory.
CPU_VIEWS = {"t.numpy()", "np.asarray(t)", "np.from_dlpack(t)", "t.detach().cpu().numpy()",
             "t.numpy(force=True)", "tb.to_numpy(t)", "t.detach().numpy()",
             "float32 t.numpy() (same count)", "ToNumpy().transform(t)",
             "[t.numpy() for t in batches]"}


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


@pytest.mark.slow  # quick_run: a real bench, about 40 s
@needs_torch
def test_quick_bench_reports_every_method_this_machine_supports(quick_run):
    _, result = quick_run
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    methods = {row["method"] for row in report["results"]}
    assert EXPECTED_CPU_METHODS <= methods
    for row in report["results"]:
        assert row["median_s"] > 0 and row["iqr_s"] >= 0 and row["rounds"] >= 5
        if row["ratio_to_baseline"] is not None:  # taken round by round, with its quartiles
            assert 0 < row["ratio_q1"] <= row["ratio_to_baseline"] <= row["ratio_q3"], row
    assert any(row["ratio_to_baseline"] is not None for row in report["results"])
    # scikit-learn's array API dispatch is measured without the user setting anything
    assert {"array_api_dispatch=True", "array_api_dispatch=False"} <= methods
    # the GPU is said to be missing, not silently left out
    assert any("CUDA" in s["method"] for s in report["skipped"])
    assert report["versions"]["tensorbridge"] and report["versions"]["numpy"]
    assert report["hardware"]["cpus"] >= 1 and report["settings"]["quick"] is True
    assert "[" in result.stderr and "done" in result.stderr  # the progress bar
    assert "median: wall time per call" in result.stderr  # the table, beside JSON on stdout
    assert "wrote the plot to plot.png" in result.stderr


@pytest.mark.slow  # quick_run: a real bench, about 40 s
@needs_torch
def test_ratios_only_between_methods_that_make_the_same_thing(quick_run):
    _, result = quick_run
    report = json.loads(result.stdout)
    rows = {(r["case"], r["method"]): r for r in report["results"]}
    bases = {c["case"]: c["baseline"] for c in report["cases"] if c.get("baseline")}
    for (case, method), row in rows.items():
        base = rows[(case, bases[case])]
        ours = method.startswith(("tb.", "TorchTransformer", "AugmentedEstimator", "ToNumpy"))
        same = row["copies"] == base["copies"]
        # tensorbridge's view is its answer to a copy people make today; its copy is
        # no answer to a view
        assert (row["ratio_to_baseline"] is not None) == (same or (ours and not row["copies"])), row
    # a ceiling is a ceiling: never "x vs base" against a view
    memcpy = rows[("cpu float32 4 MiB", "host memcpy (memory ceiling)")]
    assert memcpy["ratio_to_baseline"] is None and memcpy["ratio_to_ceiling"] == 1.0
    # a float32 view is no answer to bf16's .float().numpy() copy; tensorbridge's view is
    bf16 = "cpu bfloat16 16 MiB"
    assert rows[(bf16, "float32 t.numpy() (same count)")]["ratio_to_baseline"] is None
    assert rows[(bf16, "tb.to_numpy(t)")]["ratio_to_baseline"] < 1


@needs_torch
def test_on_a_gpu_the_cuda_cases_run_first_and_no_1_gib_case(monkeypatch):
    from tensorbridge import _bench

    monkeypatch.setattr(_bench, "why_no_cuda_cases", lambda torch: None)
    settings = _bench.Settings.make(False, ("cpu", "cuda"))
    plan = [(f.func.__name__, f.args[1:]) for f in _bench.build_cases(settings, [])]
    names = [name for name, _ in plan]
    first_cpu = names.index("_cpu_float32")
    assert names[0] == "_cuda_small"
    assert set(names[1:first_cpu]) == {"_cuda_float32", "_cuda_into_kept_array"}
    assert "_cuda_float32" not in names[first_cpu:]
    assert all(args[0] < 1 << 30 for name, args in plan if name == "_cuda_float32")


@pytest.mark.slow  # quick_run: a real bench, about 40 s
@needs_torch
def test_views_are_time_per_call_and_only_copies_get_a_rate(quick_run):
    _, result = quick_run
    report = json.loads(result.stdout)
    for row in report["results"]:
        expected_view = row["device"] == "cpu" and row["method"] in CPU_VIEWS
        assert row["copies"] is (not expected_view), row
        if row["copies"]:
            assert row["bytes_per_s"] > 0
        else:  # a view moves no bytes
            assert row["bytes_per_s"] is None and "ratio_to_ceiling" not in row
    ceilings = [r for r in report["results"] if r["method"] == "host memcpy (memory ceiling)"]
    assert ceilings and all(r["ratio_to_ceiling"] == 1.0 for r in ceilings)
    # in the table, a view row has no GB/s and no ratio to the ceiling; a copy row has both
    lines = result.stderr.splitlines()
    header = next(line for line in lines if line.startswith("method "))
    view = next(line for line in lines if line.startswith("t.numpy(force=True) "))
    copy = next(line for line in lines if line.startswith("tb.to_numpy(t, copy=True) "))
    assert cell(view, header, "result") == "view" and cell(copy, header, "result") == "copy"
    assert cell(view, header, "GB/s") == cell(view, header, "vs ceil") == ""
    assert float(cell(copy, header, "GB/s")) > 0 and cell(copy, header, "vs ceil").endswith("x")


def cell(line, header, column):
    """The text of a right-aligned column in a table line, found from the header."""
    from tensorbridge.cli import COLUMNS

    present = [c for c in COLUMNS if c in header]
    index = present.index(column)
    end = header.index(column) + len(column)
    # a column starts where the previous one's header ends (the method column's
    # end is the result column's start: "result" is wider than "view"/"copy")
    start = header.index(column) if index == 1 else (header.index(present[index - 1])
                                                     + len(present[index - 1]))
    return line[start:end].strip()


@pytest.mark.slow  # quick_run: a real bench, about 40 s
@needs_torch
def test_the_headline_figures_are_in_one_run(quick_run):
    _, result = quick_run
    report = json.loads(result.stdout)
    (step,) = [r for r in report["results"] if r["method"] == "ToNumpy().transform(t)"]
    assert step["ratio_to_baseline"] > 0 and step["copies"] is False
    (batches,) = [r for r in report["results"] if r["case"].endswith("tensors")
                  and r["method"] == "tb.collect(batches)"]
    (case,) = [c for c in report["cases"] if c["case"] == batches["case"]]
    assert case["items"] == 2000 and case["baseline"] == "np.concatenate([t.numpy() ...])"
    assert batches["per_item_s"] == pytest.approx(batches["median_s"] / 2000)
    summary = result.stderr[result.stderr.index("figures (ratios"):]
    for start in ("tb.to_numpy(t) per call: ", "ToNumpy().transform(t) per call: ",
                  "tb.collect(batches) per batch: "):
        assert f"\n  {start}" in summary


@pytest.mark.slow  # quick_run: a real bench, about 40 s
def test_plot_is_a_png_and_nothing_else_is_written(quick_run):
    where, result = quick_run
    assert sorted(os.listdir(where)) == ["plot.png"]
    data = (where / "plot.png").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    assert width > 100 and height > 100


@pytest.mark.slow  # a real bench run
@needs_torch
def test_json_to_a_file_and_the_table_on_stdout(tmp_path):
    result = tensorbridge("bench", "--quick", "--device", "cpu", "--no-workflows",
                          "--repeats", "3", "--budget", "0.05", "--json", "out.json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "tb.to_numpy(t)" in result.stdout and "vs base" in result.stdout
    assert result.stderr.endswith("tensorbridge bench: wrote the report to out.json\n")
    report = json.loads((tmp_path / "out.json").read_text())
    assert report["settings"]["repeats"] == 3
    assert all(row["device"] == "cpu" for row in report["results"])


@pytest.mark.parametrize("args", fast_sample([
    [], ["bench", "--bogus"], ["bench", "--device", "tpu"], ["bench", "--repeats", "0"],
    ["frobnicate"]], keep=2))
def test_usage_errors_exit_2(args, tmp_path):
    result = tensorbridge(*args, cwd=tmp_path)
    assert result.returncode == 2
    assert "usage: tensorbridge" in result.stderr


@pytest.mark.parametrize("command", fast_sample([["--help"], ["bench", "--help"],
                                                  ["info", "--help"]]))
def test_help(command, tmp_path):
    result = tensorbridge(*command, cwd=tmp_path)
    assert result.returncode == 0 and "usage: tensorbridge" in result.stdout


@needs_torch
def test_info(tmp_path):
    result = tensorbridge("info", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    for line in ("tensorbridge  0.", "numpy", "torch", "cupy          not installed",
                 "torch tensors: C fast path over the DLPack C exchange API",
                 "CUDA: unusable, CPU conversions only: cannot load the CUDA driver "
                 "/nonexistent/libcuda: ",
                 "pinned memory: none, since CUDA is unusable: cannot load the CUDA driver "
                 "/nonexistent/libcuda: ", "host memcpy:"):
        assert line in result.stdout
    assert "limit" not in result.stdout  # no "limit 0.00 GiB" that reads as a setting


@needs_torch
def test_info_as_json(tmp_path):
    result = tensorbridge("info", "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert set(report) == {"versions", "torch_route", "hardware", "cuda", "pinned_pool",
                           "measurements"}
    assert set(report["cuda"]) == {"available", "library", "driver_version", "device_count",
                                   "reason"}
    assert report["cuda"]["available"] is False and report["cuda"]["library"] is None
    assert report["cuda"]["reason"].startswith("cannot load the CUDA driver /nonexistent/libcuda")
    assert report["pinned_pool"]["available"] is False
    assert report["pinned_pool"]["reason"].endswith(report["cuda"]["reason"])
    assert report["pinned_pool"]["limit_bytes"] == 0
    assert set(tb.pinned_memory_stats()) < set(report["pinned_pool"])
    assert report["torch_route"] == "the DLPack C exchange API"
    assert set(report["versions"]) == {"tensorbridge", "python", "numpy", "ml_dtypes", "torch",
                                       "cupy", "sklearn"}
    assert report["versions"]["tensorbridge"] == tb.__version__
    assert report["measurements"]["host_memcpy_GB_per_s"] > 0


@pytest.mark.slow  # the console script, twice
def test_output_piped_into_a_reader_that_stops_early(tmp_path):
    # `tensorbridge info | head -1`: no traceback when the pipe closes.
    command = f"{sys.executable} -m tensorbridge info | head -1"
    result = subprocess.run(["bash", "-o", "pipefail", "-c", command], capture_output=True,
                            text=True, cwd=tmp_path, timeout=120)
    assert result.stdout == "versions:\n"
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr


@pytest.mark.slow  # the console script and python -m
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
    # the one package missing, not an extra that would also pull torch
    assert "--plot needs matplotlib; install it with pip install matplotlib" in result.stderr
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
    monkeypatch.setattr(_bench, "_distributed_case", lambda report: None)  # a cluster: not here
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
    assert report["schema"] == 4 and report["complete"] is True
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
    assert seen["schema"] == 4 and seen["complete"] is False
    assert [c["case"] for c in seen["cases"]] == ["fake: one fails at once, one later"]
    assert {row["method"] for row in seen["results"]} == {"np.zeros", "np.ones"}


def test_each_state_of_the_report_is_written_once(fake_cases, monkeypatch, tmp_path, capsys):
    from tensorbridge import cli

    written = []
    write = cli._write_atomically
    monkeypatch.setattr(cli, "_write_atomically",
                        lambda path, text: (written.append(text), write(path, text)))
    path = tmp_path / "bench.json"
    bench_in_process(capsys, "--json", str(path))
    # as the run starts, after each case, once complete: never the same report twice
    assert len(written) >= 5 and all(a != b for a, b in zip(written, written[1:]))
    assert json.loads(written[-1])["complete"] is True and written[-1] == path.read_text()


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


def test_a_plot_format_matplotlib_cannot_write_is_refused_before_the_run(monkeypatch, tmp_path,
                                                                         capsys):
    from tensorbridge import _bench

    monkeypatch.setattr(_bench, "run", lambda *a, **k: pytest.fail("ran anyway"))
    status, output = bench_in_process(capsys, "--plot", str(tmp_path / "sizes.xyz"))
    assert status == 2 and "matplotlib cannot write .xyz files; name a .png" in output.err
    assert os.listdir(tmp_path) == []


def test_a_report_that_cannot_be_written_is_said_once_and_fails(fake_cases, monkeypatch,
                                                                 tmp_path, capsys):
    from tensorbridge import cli

    def full_disk(path, text):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(cli, "_write_atomically", full_disk)
    path = tmp_path / "bench.json"
    status, output = bench_in_process(capsys, "--json", str(path))
    assert status == 1 and "Traceback" not in output.err
    assert f"--json {path}: not written: [Errno 28] No space left on device" in output.err
    assert "wrote the report" not in output.err and "np.zeros" in output.out  # the table


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


# -- the table, as a reader sees it ---------------------------------------------


@pytest.mark.parametrize("seconds, text", [
    (2.5e-10, "0.25 ns"), (8.123e-7, "812 ns"), (1.234e-6, "1.23 us"), (45.67e-6, "45.7 us"),
    (0.99996e-3, "1.00 ms"), (4.567e-3, "4.57 ms"), (1.114417, "1.11 s"), (1114.417, "1114 s"),
])
def test_times_are_in_sensible_units(seconds, text):
    from tensorbridge.cli import _format_time

    assert _format_time(seconds) == text


@pytest.mark.parametrize("nbytes, text", [(256, "256 B"), (1024, "1 KiB"), (4 << 20, "4 MiB"),
                                          (3 << 29, "1.5 GiB"), (1 << 30, "1 GiB")])
def test_sizes_are_in_binary_units(nbytes, text):
    from tensorbridge._bench import format_bytes

    assert format_bytes(nbytes) == text


def fake_report(rows, cases=(), **extra):
    return {"schema": 3, "complete": True, "results": rows, "cases": list(cases),
            "skipped": [], "failed": [], "versions": {}, "hardware": {}, **extra}


def fake_row(case, method, median, copies=True, **extra):
    return {"case": case, "device": "cpu", "method": method, "bytes": 4096, "copies": copies,
            "median_s": median, "iqr_s": median / 10, "bytes_per_s": 4096 / median if copies
            else None, "ratio_to_baseline": 1.0, **extra}


def test_columns_stay_aligned_whatever_the_widths(capsys):
    from tensorbridge.cli import _print_table

    long_name = "tb.to_numpy(" + "x" * 70 + ")"
    rows = [fake_row("a case", "t.numpy()", 5.4e-7, copies=False),
            fake_row("a case", long_name, 1114.4, ratio_to_ceiling=123456.0),
            fake_row("another case", "m", 2.5e-10, ratio_to_baseline=0.00001)]
    _print_table(fake_report(rows), sys.stdout)
    out = capsys.readouterr().out
    lines = out.splitlines()
    headers = [i for i, line in enumerate(lines) if line.startswith("method ")]
    assert len(headers) == 2 and lines[headers[0]] == lines[headers[1]]
    header = lines[headers[0]]
    body = [line for line in lines if line.startswith(("t.numpy()", "tb.to_numpy(", "m "))]
    assert len(body) == 3 and long_name in out  # never cut
    for column in ("result", "median", "spread", "GB/s", "vs base"):
        end = header.index(column) + len(column)
        for line in body:  # each value ends where its header ends, a gap before the next
            if cell(line, header, column):
                assert line[end - 1] != " ", (column, line)
            assert line[end:end + 2] in ("  ", ""), (column, line)
    assert "1114 s" in out and "250 ps" not in out and "0.25 ns" in out
    assert "1.0e-05x" in out and "123456x" in out


def test_each_case_names_its_baseline_and_the_footer_says_what_was_computed(capsys):
    from tensorbridge.cli import _print_table

    rows = [fake_row("a case", "ceiling", 1e-6, ratio_to_baseline=2.0, ratio_to_ceiling=1.0),
            fake_row("a case", "base", 5e-7, copies=False)]
    cases = [{"case": "a case", "device": "cpu", "status": "measured", "seconds": 1,
              "baseline": "base", "ceiling": "ceiling", "items": None}]
    _print_table(fake_report(rows, cases, skipped=[
        {"case": "*", "method": "every CUDA method", "reason": "no GPU"},
        {"case": "workflows", "method": "*", "reason": "no scikit-learn"}]), sys.stdout)
    out = capsys.readouterr().out
    assert "\na case  (baseline: base; ceiling: ceiling)\n" in out
    assert "vs base: the time / the baseline's (named above its table), taken round by round" in out
    assert "first method" not in out and "(*)" not in out and "*" not in out
    assert "skipped: every CUDA method: no GPU" in out
    assert "skipped: every method of workflows: no scikit-learn" in out
    assert "GB/s: the case's bytes / median, for copies only" in out
    assert "GPU time" not in out  # no such column in a CPU-only report


def test_views_found_from_the_result(tmp_path):
    from tensorbridge import _bench

    source = np.ones(1024, np.float32)
    out = np.empty_like(source)
    case = _bench.Case("fake", "cpu", source.nbytes, "view", {
        "view": lambda: source[::2], "list of views": lambda: [source[:3], source[3:]],
        "copy": lambda: source.copy(), "into out": lambda: np.copyto(out, source),
        "a list with a copy": lambda: [source[:3], source[3:].copy()]},
        ceiling="into out", memory=(source,))
    settings = _bench.Settings.make(True, ["cpu"], repeats=3, budget_s=0.01)
    rows, failed = _bench.measure_case(case, settings)
    assert failed == []
    by = {row["method"]: row for row in rows}
    assert [m for m in by if not by[m]["copies"]] == ["view", "list of views"]
    for method in ("view", "list of views"):
        assert by[method]["bytes_per_s"] is None and "ratio_to_ceiling" not in by[method]
    for method in ("copy", "into out", "a list with a copy"):
        assert by[method]["bytes_per_s"] == pytest.approx(4096 / by[method]["median_s"])
        assert by[method]["ratio_to_ceiling"] > 0


def test_committed_results_read_views_as_views():
    from tensorbridge import _bench

    for path in sorted((ROOT / "benchmarks" / "results").glob("*.json")):
        rows = _bench.load_report(path)["results"]
        (view,) = [r for r in rows if r["case"] == "cpu float32 4 MiB"
                   and r["method"] == "tb.to_numpy(t)"]
        assert view["copies"] is False and view["bytes_per_s"] is None
        assert "ratio_to_ceiling" not in view
        (copy,) = [r for r in rows if r["case"] == "cpu float32 4 MiB"
                   and r["method"] == "tb.to_numpy(t, copy=True)"]
        assert copy["copies"] is True and copy["bytes_per_s"] > 0


def test_without_torch_the_cuda_skip_names_torch(monkeypatch):
    from tensorbridge import _bench

    monkeypatch.setitem(sys.modules, "torch", None)  # import torch raises ImportError
    skipped = []
    settings = _bench.Settings.make(True, ["cuda"], workflows=False)
    assert list(_bench.build_cases(settings, skipped)) == []
    reasons = {s["method"]: s["reason"] for s in skipped}
    assert reasons["every CUDA method"].startswith("torch is not installed")
    assert reasons["every torch method"] == "torch is not installed"
    why = _bench.why_no_cuda_cases(_bench.import_torch())
    assert "is_available" not in why and why == reasons["every CUDA method"]


@needs_torch
def test_the_kept_array_case_times_each_destination_and_unpins_after(standin, monkeypatch):
    # The case's logic on the stand-in, its "cuda" tensors on the CPU (no GPU
    # here): every destination is timed, and the array it pinned is unpinned
    # once the case is dropped.
    import gc

    import torch

    from tensorbridge import _bench

    class CpuTorch:
        class cuda:
            synchronize = staticmethod(lambda: None)

        ones = staticmethod(lambda *shape, device=None: torch.ones(*shape))
        empty = staticmethod(lambda shape, pin_memory=False: torch.empty(shape))

    monkeypatch.setattr(_bench, "_cuda_events", lambda: None)  # torch.cuda's: no GPU here
    case = _bench._cuda_into_kept_array(CpuTorch(), 1 << 20)
    assert tb.pinned_memory_stats()["registered_bytes"] == 1 << 20
    rows, failed = _bench.measure_case(case, _bench.Settings.make(True, ["cuda"], repeats=2,
                                                                  budget_s=0.01))
    assert failed == [] and case.skipped == {}
    assert {row["method"]: row["copies"] for row in rows} == {
        _bench.LINK_CEILING: True, "tb.to_numpy(t, out=pageable)": True,
        "tb.to_numpy(t, out=empty_pinned)": True, "tb.to_numpy(t, out=tb.pin(a).array)": True}
    assert case.title == "cuda float32 1 MiB into a kept array"
    del case, rows
    gc.collect()
    assert tb.pinned_memory_stats()["registered_bytes"] == 0


def test_repeats_help_says_it_is_a_maximum(tmp_path):
    result = tensorbridge("bench", "--help", cwd=tmp_path)
    text = " ".join(result.stdout.split())
    assert "--repeats N the most rounds per case" in text
    assert "once its --budget is spent" in text


# -- the plot ---------------------------------------------------------------------


def plot_axes(report):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from tensorbridge.cli import _plot_figure

    figure = _plot_figure(report, plt)
    try:
        figure.canvas.draw()
        return figure, [(axis.get_title(), axis.get_ylabel(),
                         [t.get_text() for t in axis.get_xticklabels()],
                         axis.get_legend_handles_labels()[1]) for axis in figure.axes]
    finally:
        plt.close(figure)


@pytest.mark.slow  # quick_run: a real bench, about 40 s
@needs_torch
def test_the_plot_has_a_panel_for_views_and_one_for_copies(quick_run):
    _, result = quick_run
    figure, axes = plot_axes(json.loads(result.stdout))
    assert [a[0] for a in axes] == ["cpu: zero-copy views, time per call", "cpu: copies, GB/s"]
    (views_title, views_y, views_x, views), (_, copies_y, copies_x, copies) = axes
    assert "time per call" in views_y and "GB/s" in copies_y
    assert set(views) == {"t.numpy()", "np.asarray(t)", "np.from_dlpack(t)",
                          "t.detach().cpu().numpy()", "t.numpy(force=True)", "tb.to_numpy(t)"}
    assert set(copies) == {"host memcpy (memory ceiling)", "tb.to_numpy(t, copy=True)"}
    assert views_x == copies_x == ["1 KiB", "16 KiB", "256 KiB", "4 MiB", "16 MiB"]  # no grad point


@pytest.mark.slow  # quick_run: a real bench, about 40 s
def test_every_plotted_point_has_labelled_ticks_around_it_and_the_legend_is_off_the_data(
        quick_run):
    _, result = quick_run
    figure, _ = plot_axes(json.loads(result.stdout))
    figure.canvas.draw()
    for axis in figure.axes:
        low, high = axis.get_ylim()
        ticks = sorted(t for t in axis.get_yticks() if low <= t <= high)
        assert len(ticks) >= 4, ticks
        labels = [t.get_text() for t in axis.get_yticklabels()]
        assert all(labels), labels
        for line in axis.get_lines():
            for y in line.get_ydata():
                # a labelled tick at or below and one at or above, within a factor of 3
                below = [t for t in ticks if t <= y]
                above = [t for t in ticks if t >= y]
                assert below and above and y / below[-1] <= 3 and above[0] / y <= 3, (y, ticks)
        # each point also carries its value, written beside it
        assert len(axis.texts) == sum(len(line.get_ydata()) for line in axis.get_lines())
        legend = axis.get_legend().get_window_extent()
        assert legend.y1 <= axis.get_window_extent().y0  # below the panel, over no line


@pytest.mark.slow  # quick_run: a real bench, about 40 s
def test_the_plot_names_machine_versions_and_date(quick_run):
    _, result = quick_run
    report = json.loads(result.stdout)
    figure, _ = plot_axes(report)
    title = figure._suptitle.get_text()
    assert report["date"][:10] in title and report["hardware"]["cpu"] in title
    assert f"tensorbridge {tb.__version__}" in title and f"numpy {np.__version__}" in title


def test_the_plot_draws_only_what_was_measured():
    rows = [dict(fake_row("cuda float32 64 MiB", ".cpu().numpy()", 1e-3), device="cuda",
                 bytes=64 << 20),
            dict(fake_row("cuda float32 1 GiB", ".cpu().numpy()", 1e-1), device="cuda",
                 bytes=1 << 30),
            fake_row("cpu float32 requires_grad 4 KiB", "tb.to_numpy(t)", 2e-7, copies=False)]
    _, axes = plot_axes(fake_report(rows))
    assert [a[0] for a in axes] == ["cuda: copies, GB/s"]  # no empty CPU or view panel
    assert axes[0][2] == ["64 MiB", "1 GiB"]
    _, axes = plot_axes(fake_report([]))
    assert len(axes) == 1 and axes[0][3] == []


# -- the command ------------------------------------------------------------------


def test_version(tmp_path):
    result = tensorbridge("--version", cwd=tmp_path)
    assert result.returncode == 0 and result.stdout == f"tensorbridge {tb.__version__}\n"


@needs_torch
def test_info_imports_neither_torch_nor_scikit_learn(tmp_path):
    # what made `info` take seconds: it reads versions from the packages' metadata
    code = ("import sys; from tensorbridge.cli import main; assert main(['info', '--json']) == 0; "
            "heavy = {'torch', 'sklearn', 'matplotlib'} & set(sys.modules); "
            "assert not heavy, heavy")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=tmp_path, timeout=120,
                            env=dict(os.environ, TENSORBRIDGE_LIBCUDA="/nonexistent/libcuda"))
    assert result.returncode == 0, result.stderr
    versions = json.loads(result.stdout)["versions"]
    import sklearn
    import torch

    assert versions["torch"] == torch.__version__ and versions["sklearn"] == sklearn.__version__


def test_no_word_of_the_seed_where_a_user_reads(tmp_path):
    texts = {path: path.read_text() for path in
             [ROOT / "README.md", ROOT / "benchmarks" / "README.md",
              *(ROOT / "examples").glob("*.py"), *(ROOT / "src" / "tensorbridge").rglob("*.py")]}
    for command in (["--help"], ["bench", "--help"], ["info", "--help"]):
        texts[" ".join(command)] = tensorbridge(*command, cwd=tmp_path).stdout
    import re

    for where, text in texts.items():
        assert not re.search(r"\bthe seed\b|\bseed's\b", text, re.I), where


def test_the_distributed_case_is_printed_with_its_ratios(capsys):
    from tensorbridge.cli import _print_table

    loads = {"module_loads_per_worker": {"0": 1, "1": 1}, "graphs": 12}
    distributed = {"results": [
        {"method": "dask compute", "workers": 1, "median_s": 0.8, "ratio_to_in_memory": 4.0,
         "rows_per_s": 250_000.0, "module_loads_per_worker": {"0": 1}, "graphs": 12},
        {"method": "dask compute", "workers": 2, "median_s": 0.5, "ratio_to_in_memory": 2.5,
         "rows_per_s": 400_000.0, **loads},
        {"method": "overhead per block", "workers": 2, "median_s": 1.2e-3, "blocks": 400}]}
    _print_table(fake_report([], distributed=distributed), sys.stdout)
    out = capsys.readouterr().out
    assert "distributed (dask, local worker processes" in out
    assert ("  dask compute, 2 worker(s): 500 ms, 2.50x in-memory, 400,000 rows/s; "
            "module loads per worker: 1, 1 over 12 graphs\n") in out
    assert "  dask compute, 1 worker(s): 800 ms, 4.00x in-memory, 250,000 rows/s; " in out
    assert "  overhead per block, 2 worker(s): 1.20 ms per block\n" in out
    assert "  dask compute: 2 workers / 1 worker: 1.60x the rows per second" in out
    # A report of an earlier version (no rates, no loads) prints as it did.
    del distributed["results"][:2]
    distributed["results"].insert(0, {"method": "dask compute", "workers": 2,
                                      "median_s": 0.5, "ratio_to_in_memory": 2.5})
    _print_table(fake_report([], distributed=distributed), sys.stdout)
    assert "  dask compute, 2 worker(s): 500 ms, 2.50x in-memory\n" in capsys.readouterr().out


def test_a_full_run_without_dask_says_why_the_distributed_case_is_missing(monkeypatch):
    from tensorbridge import _bench

    report = {"skipped": [], "failed": [], "cases": []}
    monkeypatch.setitem(sys.modules, "distributed", None)  # import distributed fails
    _bench._distributed_case(report)
    assert report["skipped"] == [{"case": "distributed: TorchTransformer over dask on 1 and 2 "
                                  "local workers", "method": "*", "reason": "dask and "
                                  "distributed are not installed (the dask extra)"}]
    assert "distributed" not in report
