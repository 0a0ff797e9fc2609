"""NVIDIA's real driver library on a machine without a GPU.

CI fetches Debian's libcuda1 (the 535 driver, CUDA 12.2) with
scripts/fetch_real_libcuda.sh and names it in TENSORBRIDGE_REAL_LIBCUDA; without
that variable every test here is skipped. Each test runs tensorbridge in a
child process with TENSORBRIDGE_LIBCUDA set to that library, so that the real
driver, not the stand-in, is the one loaded, and so that a crash is a failed
test (non-zero return code) rather than a dead test run.

What the real library does here (no /dev/nvidia*): cuDriverGetVersion works
before and without cuInit, cuGetProcAddress_v2 resolves every 12.0 entry
point, the batch copy is unknown (CUDA 12.8), and cuInit(0) returns
CUDA_ERROR_NO_DEVICE. The expected answers are measured from the library itself
(ctypes, in a child) rather than written down, so the tests hold for another
driver version too; the tests are skipped where cuInit succeeds (a usable GPU).
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import textwrap

import pytest

LIBCUDA = os.environ.get("TENSORBRIDGE_REAL_LIBCUDA", "")
TESTS = pathlib.Path(__file__).resolve().parent

pytestmark = pytest.mark.skipif(
    not LIBCUDA,
    reason="TENSORBRIDGE_REAL_LIBCUDA does not name a real libcuda.so.1 "
           "(scripts/fetch_real_libcuda.sh DEST fetches Debian's and prints its path)")

STATUS_KEYS = {"available", "library", "driver_version", "device_count", "reason"}
ENTRY_KEYS = {"name", "version", "optional", "resolved"}
# Every entry point today's table needs (csrc/cuda_driver.cpp); more may follow.
# The entry points the engine calls, each of which the 535 driver has (the
# batch copy, optional, is 12.8+ and checked on its own below).
CALLED_ENTRY_POINTS = {
    "cuInit", "cuDriverGetVersion", "cuGetErrorString", "cuGetErrorName", "cuDeviceGetCount",
    "cuDeviceGet", "cuDeviceGetName", "cuDevicePrimaryCtxRetain", "cuCtxGetCurrent",
    "cuCtxSetCurrent", "cuMemHostAlloc", "cuMemFreeHost", "cuMemcpyDtoHAsync",
    "cuMemcpyHtoDAsync", "cuStreamCreate", "cuStreamWaitEvent", "cuEventCreate",
    "cuEventRecord", "cuEventQuery", "cuEventSynchronize", "cuEventDestroy",
    "cuMemHostRegister", "cuMemHostUnregister",
}
ZERO_STATS = dict.fromkeys(("reserved_bytes", "in_use_bytes", "cached_bytes", "peak_bytes",
                            "limit_bytes", "alloc_count", "hit_count", "registered_bytes"), 0)


def run(args, tmp_path, *, check=True):
    """`python args...` with the real driver; returns the CompletedProcess."""
    env = dict(os.environ, TENSORBRIDGE_LIBCUDA=LIBCUDA, PYTHONFAULTHANDLER="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(TESTS), env.get("PYTHONPATH")]))
    proc = subprocess.run([sys.executable, *args], env=env, cwd=tmp_path, capture_output=True,
                          text=True, timeout=180)
    if check:
        assert proc.returncode == 0, (
            f"exit status {proc.returncode} (negative: killed by signal)\n"
            f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
    return proc


def run_json(code, tmp_path, *args):
    """Runs `code` in a child (sys.argv[1:] = args); its last stdout line is JSON,
    returned decoded."""
    proc = run(["-c", textwrap.dedent(code), *args], tmp_path)
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def driver(tmp_path_factory):
    """What the library itself says, through ctypes: its version and cuInit's answer."""
    if not os.path.exists(LIBCUDA):
        pytest.fail(f"TENSORBRIDGE_REAL_LIBCUDA={LIBCUDA!r} does not exist")
    facts = run_json("""
        import ctypes, json, sys
        lib = ctypes.CDLL(sys.argv[1])
        version = ctypes.c_int(0)
        version_result = lib.cuDriverGetVersion(ctypes.byref(version))
        init = lib.cuInit(0)
        name, text = ctypes.c_char_p(), ctypes.c_char_p()
        lib.cuGetErrorName(init, ctypes.byref(name))
        lib.cuGetErrorString(init, ctypes.byref(text))
        print(json.dumps({"version_result": version_result, "version": version.value,
                          "init": init, "init_name": (name.value or b"").decode(),
                          "init_text": (text.value or b"").decode()}))
    """, tmp_path_factory.mktemp("probe"), LIBCUDA)
    assert facts["version_result"] == 0, facts
    if facts["init"] == 0:
        pytest.skip(f"cuInit succeeds with {LIBCUDA}: this machine has a usable GPU, and "
                    "these tests are about the library without one")
    major, minor = divmod(facts["version"], 1000)
    facts["version_text"] = f"{major}.{minor // 10}"
    return facts


def cuinit_part(reason) -> str:
    """`reason` from "cuInit" on: what every refusal must repeat."""
    assert isinstance(reason, str), f"no reason to compare with: cuda_status() gave {reason!r}"
    assert "cuInit" in reason, reason
    return reason[reason.index("cuInit"):]


# Child scripts get the reason through this, so that a missing or failing
# cuda_status() is reported by the assertion about it, after the others.
REASON = """
def reason():
    try:
        return tb.cuda_status()["reason"]
    except BaseException as e:
        return f"cuda_status() failed: {type(e).__name__}: {e}"
"""


def status(tmp_path):
    return run_json("""
        import json, tensorbridge as tb
        available = tb.cuda_available()
        print(json.dumps({"available": available, "status": tb.cuda_status()}))
    """, tmp_path)


def test_library_is_the_real_driver(driver):
    # The Debian 535 driver reports CUDA 12.2 and, without /dev/nvidia*, NO_DEVICE.
    assert driver["version"] >= 12000, driver
    assert driver["init_name"].startswith("CUDA_ERROR_"), driver


def test_cuda_available_is_false_and_status_says_why(driver, tmp_path):
    result = status(tmp_path)
    assert result["available"] is False
    s = result["status"]
    assert set(s) == STATUS_KEYS, s
    assert s["available"] is False
    assert s["library"] in (LIBCUDA, os.path.realpath(LIBCUDA)), s
    assert s["driver_version"] == driver["version_text"], s  # 12020 -> "12.2"
    assert s["device_count"] == 0 and type(s["device_count"]) is int, s
    reason = s["reason"]
    assert isinstance(reason, str), s
    assert driver["version_text"] in reason, reason
    assert LIBCUDA in reason or os.path.basename(LIBCUDA) in reason, reason
    assert "cuInit" in reason, reason
    assert driver["init_name"] in cuinit_part(reason), reason  # e.g. CUDA_ERROR_NO_DEVICE


def test_status_calls_never_raise_and_agree(driver, tmp_path):
    result = run_json("""
        import json, tensorbridge as tb
        first = [tb.cuda_available(), tb.cuda_status()]
        again = [tb.cuda_available(), tb.cuda_status()]
        print(json.dumps({"same": first == again, "status": again[1]}))
    """, tmp_path)
    assert result["same"], result
    assert result["status"]["available"] is False


def test_driver_entry_points(driver, tmp_path):
    entries = run_json("""
        import json
        from tensorbridge import _core
        print(json.dumps(_core.driver_entry_points()))
    """, tmp_path)
    assert isinstance(entries, list) and entries, entries
    for entry in entries:
        assert set(entry) == ENTRY_KEYS, entry
        assert isinstance(entry["name"], str) and isinstance(entry["version"], int), entry
        assert isinstance(entry["optional"], bool) and isinstance(entry["resolved"], bool), entry
    by_name = {entry["name"]: entry for entry in entries}
    assert len(by_name) == len(entries), "an entry point is listed twice"
    assert set(by_name) - {"cuMemcpyBatchAsync"} == CALLED_ENTRY_POINTS
    unresolved = [e["name"] for e in entries
                  if e["name"] in CALLED_ENTRY_POINTS and not e["resolved"]]
    assert not unresolved, f"entry points the real driver did not resolve: {unresolved}"
    batch = by_name.get("cuMemcpyBatchAsync")
    assert batch == {"name": "cuMemcpyBatchAsync", "version": 12080, "optional": True,
                     "resolved": driver["version"] >= 12080}, batch
    others = {e["name"]: e["version"] for e in entries if e["name"] != "cuMemcpyBatchAsync"}
    assert set(others.values()) == {12000}, others


def test_empty_pinned_raises_with_the_reason(driver, tmp_path):
    result = run_json(REASON + textwrap.dedent("""
        import json, tensorbridge as tb
        try:
            tb.empty_pinned(4, "f4")
            error = None
        except BaseException as e:
            error = {"type": type(e).__name__, "runtime": isinstance(e, RuntimeError),
                     "message": str(e)}
        print(json.dumps({"error": error, "reason": reason(),
                          "stats": tb.pinned_memory_stats()}))
    """), tmp_path)
    error = result["error"]
    assert error is not None, "empty_pinned returned an array without a usable driver"
    assert error["runtime"], error
    assert cuinit_part(result["reason"]) in error["message"], (error, result["reason"])
    assert result["stats"] == ZERO_STATS


def test_pinned_memory_stats_are_zero(driver, tmp_path):
    result = run_json("""
        import json, tensorbridge as tb
        print(json.dumps(tb.pinned_memory_stats()))
    """, tmp_path)
    assert result == ZERO_STATS


def test_info_prints_the_reason(driver, tmp_path):
    reason = status(tmp_path)["status"]["reason"]
    proc = run(["-m", "tensorbridge", "info"], tmp_path)
    assert reason in proc.stdout, proc.stdout


def test_info_json_has_the_reason(driver, tmp_path):
    usage = run(["-m", "tensorbridge", "info", "--help"], tmp_path, check=False)
    if "--json" not in usage.stdout + usage.stderr:
        pytest.skip("tensorbridge info has no --json option yet")
    reason = status(tmp_path)["status"]["reason"]
    proc = run(["-m", "tensorbridge", "info", "--json"], tmp_path)
    report = json.loads(proc.stdout)

    def strings(value):
        if isinstance(value, str):
            yield value
        elif isinstance(value, dict):
            for item in value.values():
                yield from strings(item)
        elif isinstance(value, list):
            for item in value:
                yield from strings(item)

    assert any(reason in text for text in strings(report)), report


# Each call gets CUDA memory: `garbage` (a __dlpack__ that must not be called:
# the device says CUDA, and there is no driver to copy with) or `capsule` (a
# real DLPack capsule on cuda:0 whose data pointer is not memory at all: taking
# the capsule is allowed, reading through it is not).
DEVICE_MEMORY_SCRIPT = REASON + """
import gc, json, sys
import numpy as np
import tensorbridge as tb
from dlpack_producer import Producer

kind, call = sys.argv[1], sys.argv[2]


class Garbage:
    calls = 0

    def __dlpack_device__(self):
        return (2, 0)

    def __dlpack__(self, *args, **kwargs):
        type(self).calls += 1
        return "not a capsule"


def run(x):
    if call == "to_numpy":
        return tb.to_numpy(x)
    if call == "to_numpy_async":
        transfer = tb.to_numpy_async(x)
        return transfer.wait(10)
    if call == "collect":
        return tb.collect([x])
    raise ValueError(call)


if kind == "garbage":
    x = Garbage()
else:
    x = Producer(np.empty(16, np.float32), data=0xDEAD0000, device=(2, 0))
try:
    run(x)
    error = None
except BaseException as e:
    error = {"type": type(e).__name__, "buffer_error": isinstance(e, BufferError),
             "message": str(e)}
gc.collect()
print(json.dumps({
    "error": error, "reason": reason(),
    "dlpack_calls": Garbage.calls if kind == "garbage" else len(x.requests),
    "deleted": None if kind == "garbage" else x.deleted,
}))
"""


@pytest.mark.parametrize("call", ["to_numpy", "to_numpy_async", "collect"])
@pytest.mark.parametrize("kind", ["garbage", "capsule"])
def test_cuda_memory_gets_buffer_error_with_the_reason(driver, tmp_path, kind, call):
    result = run_json(DEVICE_MEMORY_SCRIPT, tmp_path, kind, call)
    error = result["error"]
    assert error is not None, f"{call} returned for CUDA memory without a usable driver"
    assert error["buffer_error"], error
    assert "CUDA" in error["message"], error
    assert cuinit_part(result["reason"]) in error["message"], (error, result["reason"])
    if kind == "garbage":
        assert result["dlpack_calls"] == 0, "__dlpack__ was called although no copy can be made"
    else:
        # every capsule handed out was released exactly once
        assert result["deleted"] == result["dlpack_calls"], result
