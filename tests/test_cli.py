"""The tensorbridge command: bench and info, as a user runs them."""

import json
import os
import struct
import subprocess
import sys

import pytest

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
                 "CUDA driver: not found", "pinned pool:", "host memcpy:"):
        assert line in result.stdout


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
