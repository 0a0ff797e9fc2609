"""The smoke stage of scripts/gpu_check.sh: short checks, each in a child
process of its own with its own time limit, so that a verdict comes back for
every check even when one of them crashes or hangs the process it runs in.

    gpu_check_smoke.py [--budget SECONDS]
                                  run every check, within SECONDS in all; one JSON line
                                  each on stdout
    gpu_check_smoke.py run NAME   one check, in this process (what the children run)
    gpu_check_smoke.py list       the checks' names and time limits

A line: {"check", "status" ("passed", "failed", "skipped", "timed out",
"crashed"), "seconds", "reason", "figures"}. Correctness decides the status;
timings are recorded in "figures" and never judged (only a hang past the
check's limit fails it). What needs a GPU (CUDA kernels, streams, CuPy arrays)
is "skipped: needs a GPU" without one: in the rehearsal
(GPU_CHECK_REHEARSAL=1) the stand-in driver takes the GPU's place for what the
engine alone does, and nothing of a GPU is emulated.
Exit status: 1 when a check failed, timed out or crashed, else 0.
"""

import contextlib
import ctypes
import json
import os
import platform
import subprocess
import sys
import time

SKIPPED = "skipped"


class Skip(Exception):
    """The check cannot run on this machine (the reason says why)."""


def needs_gpu():
    import torch

    if not torch.cuda.is_available():
        raise Skip("needs a GPU (torch.cuda.is_available() is False)")
    return torch


def best_of(repeats, call):
    """The fastest of `repeats` calls, in seconds."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        best = min(best, time.perf_counter() - start)
    return best


# -- the checks: each returns its figures, raises AssertionError or Skip ----------


def check_cuda_status():
    import tensorbridge as tb

    status = tb.cuda_status()
    assert status["available"] and status["device_count"] >= 1, f"no usable driver: {status}"
    return status


def check_kernel():
    """Which kernel the run is on: gVisor answers as Linux 4.4.0 of a fixed date."""
    try:
        with open("/proc/version") as f:
            version = f.read().strip()
    except OSError as error:
        version = f"unreadable: {error}"
    try:
        with open("/proc/cpuinfo") as f:
            hypervisor = " hypervisor" in f.read()
    except OSError:
        hypervisor = None
    release = platform.release()
    return {"release": release, "proc_version": version, "hypervisor_flag": hypervisor,
            "gvisor": release == "4.4.0" and "#1 SMP Sun Jan 10 15:06:54 PST 2016" in version}


class DLDevice(ctypes.Structure):
    _fields_ = [("device_type", ctypes.c_int32), ("device_id", ctypes.c_int32)]


class DLDataType(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint8), ("bits", ctypes.c_uint8), ("lanes", ctypes.c_uint16)]


class DLTensor(ctypes.Structure):
    _fields_ = [("data", ctypes.c_void_p), ("device", DLDevice), ("ndim", ctypes.c_int32),
                ("dtype", DLDataType), ("shape", ctypes.POINTER(ctypes.c_int64)),
                ("strides", ctypes.POINTER(ctypes.c_int64)), ("byte_offset", ctypes.c_uint64)]


EXCHANGE_SLOTS = ["managed_tensor_allocator", "managed_tensor_from_py_object_no_sync",
                  "managed_tensor_to_py_object_no_sync", "dltensor_from_py_object_no_sync",
                  "current_work_stream"]


class ExchangeTable(ctypes.Structure):
    # DLPack's DLPackExchangeAPI: a header (version, prev_api), then five slots.
    _fields_ = [("major", ctypes.c_uint32), ("minor", ctypes.c_uint32),
                ("prev_api", ctypes.c_void_p)] + [(slot, ctypes.c_void_p)
                                                  for slot in EXCHANGE_SLOTS]


def read_dltensor(table, tensor):
    fill = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.py_object, ctypes.POINTER(DLTensor))(
        table.dltensor_from_py_object_no_sync)
    out = DLTensor()
    assert fill(tensor, ctypes.byref(out)) == 0, "dltensor_from_py_object_no_sync failed"
    shape = [out.shape[i] for i in range(out.ndim)]
    strides = [out.strides[i] for i in range(out.ndim)] if out.strides else None
    return out, shape, strides


def check_exchange_table():
    """torch's DLPack exchange table, read and checked field by field against
    what torch itself says of the same tensors."""
    import torch

    capsule = getattr(torch.Tensor, "__dlpack_c_exchange_api__", None)
    if capsule is None:
        raise Skip(f"torch {torch.__version__} publishes no exchange table (torch < 2.10)")
    get = ctypes.pythonapi.PyCapsule_GetPointer
    get.restype, get.argtypes = ctypes.c_void_p, [ctypes.py_object, ctypes.c_char_p]
    table = ExchangeTable.from_address(get(capsule, b"dlpack_exchange_api"))
    figures = {"torch": torch.__version__, "version": [table.major, table.minor],
               "prev_api": bool(table.prev_api),
               "slots": {slot: bool(getattr(table, slot)) for slot in EXCHANGE_SLOTS}}
    assert table.major == 1, f"major version {table.major}: tensorbridge reads 1.x only"
    assert table.dltensor_from_py_object_no_sync, "no dltensor_from_py_object_no_sync"
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for device in devices:
        base = torch.arange(60, dtype=torch.float32, device=device).reshape(5, 12)
        t = base[1:, 2::3]  # an offset and a stride: every field differs from the defaults
        out, shape, strides = read_dltensor(table, t)
        expected = {"data": t.data_ptr(), "shape": list(t.shape), "strides": list(t.stride()),
                    "dtype": (2, 32, 1), "device": (1 if device == "cpu" else 2, 0)}
        found = {"data": out.data + out.byte_offset, "shape": shape, "strides": strides,
                 "dtype": (out.dtype.code, out.dtype.bits, out.dtype.lanes),
                 "device": (out.device.device_type, out.device.device_id)}
        assert found == expected, f"{device}: the table says {found}, torch says {expected}"
        figures[f"{device}_tensor"] = "fields match"
    if "cuda" in devices:
        assert table.current_work_stream, "no current_work_stream"
        stream_of = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int, ctypes.c_int32,
                                     ctypes.POINTER(ctypes.c_void_p))(table.current_work_stream)
        side = torch.cuda.Stream()
        with torch.cuda.stream(side):
            handle = ctypes.c_void_p()
            assert stream_of(2, 0, ctypes.byref(handle)) == 0, "current_work_stream failed"
            assert (handle.value or 0) == side.cuda_stream, (
                f"current_work_stream gave {handle.value}, torch's is {side.cuda_stream}")
        figures["current_work_stream"] = "matches torch.cuda.current_stream()"
    else:
        figures["cuda_tensor"] = "not checked: needs a GPU"
    return figures


def sleep_cycles_per_ms(torch):
    """torch.cuda._sleep's cycles per millisecond on this GPU, measured."""
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda._sleep(1_000_000)  # warm-up
    start.record()
    torch.cuda._sleep(10_000_000)
    end.record()
    end.synchronize()
    return 10_000_000 / max(start.elapsed_time(end), 1e-3)


def check_queued_kernel():
    """A copy sees what a kernel still queued writes: it is ordered after it."""
    torch = needs_gpu()
    import tensorbridge as tb

    t = torch.zeros(1 << 20, device="cuda")
    torch.cuda._sleep(int(50 * sleep_cycles_per_ms(torch)))
    t.fill_(7.0)  # queued behind 50 ms of sleep
    a = tb.to_numpy(t)
    assert a.min() == a.max() == 7.0, f"the copy saw {a.min()}..{a.max()}, not 7.0 throughout"
    return {"kernel_ms": 50}


def check_transfer_wait():
    """Transfer.wait behind a 20 ms kernel: the wall and CPU time it takes."""
    torch = needs_gpu()
    import tensorbridge as tb

    t = torch.zeros(1 << 20, device="cuda")
    cycles = int(20 * sleep_cycles_per_ms(torch))
    tb.to_numpy_async(t).wait()  # warm-up: pinned block, events
    torch.cuda._sleep(cycles)
    t.fill_(3.0)
    wall, cpu = time.perf_counter(), time.process_time()
    transfer = tb.to_numpy_async(t)
    a = transfer.wait(timeout=30)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    assert a.min() == a.max() == 3.0, "the transfer's result is not what the kernel wrote"
    return {"kernel_ms": 20, "wait_wall_ms": round(wall * 1e3, 2),
            "wait_cpu_ms": round(cpu * 1e3, 2)}


def check_collect_small():
    """collect of 5,000 small tensors on the default stream and on a side
    stream, with the submissions the engine counted."""
    torch = needs_gpu()
    import numpy as np

    import tensorbridge as tb
    from tensorbridge import _core

    figures = {}
    for where in ("default stream", "torch.cuda.stream(s)"):
        on = contextlib.nullcontext() if where == "default stream" else torch.cuda.stream(
            torch.cuda.Stream())
        with on:
            batches = [torch.full((1, 16), float(i), device="cuda") for i in range(5000)]
            _core.reset_packed_copy_counts()
            start = time.perf_counter()
            a = tb.collect(batches)
            seconds = time.perf_counter() - start
            counts = _core.packed_copy_counts()
        expected = np.repeat(np.arange(5000, dtype=np.float32)[:, None], 16, axis=1)
        assert np.array_equal(a, expected), f"{where}: collect's result differs"
        figures[where] = {"ms": round(seconds * 1e3, 2), **counts}
    return figures


def check_cupy_strided():
    """A strided CuPy array (the DLPack route, not torch's)."""
    needs_gpu()
    try:
        import cupy
    except ImportError as error:
        raise Skip(f"CuPy is not installed ({error})") from None
    import numpy as np

    import tensorbridge as tb

    x = cupy.arange(60_000, dtype=cupy.float64).reshape(200, 300)[10:, ::7]
    a = tb.to_numpy(x)
    assert np.array_equal(a, cupy.asnumpy(x)), "a strided CuPy array came back different"
    return {"cupy": cupy.__version__, "shape": list(a.shape)}


def check_small_copies():
    """1,000 copies of 1 KiB: tb.to_numpy and collect against .cpu().numpy()."""
    torch = needs_gpu()
    import numpy as np

    import tensorbridge as tb

    ts = [torch.full((256,), float(i), device="cuda") for i in range(1000)]
    torch.cuda.synchronize()
    loop = best_of(3, lambda: [t.cpu().numpy() for t in ts])
    ours = best_of(3, lambda: [tb.to_numpy(t) for t in ts])
    gathered = best_of(3, lambda: tb.collect(ts))
    expected = np.repeat(np.arange(1000, dtype=np.float32), 256)
    assert np.array_equal(tb.collect(ts), expected), "collect's result differs"
    assert np.array_equal(tb.to_numpy(ts[999]), expected[-256:]), "a small copy differs"
    return {"cpu_numpy_loop_ms": round(loop * 1e3, 2), "to_numpy_loop_ms": round(ours * 1e3, 2),
            "collect_ms": round(gathered * 1e3, 2),
            "to_numpy_vs_cpu_numpy": round(ours / loop, 3),
            "collect_vs_cpu_numpy": round(gathered / loop, 3)}


def check_empty_pinned():
    """empty_pinned of 1 GiB, timed: the first allocation and a cached one."""
    import numpy as np

    import tensorbridge as tb

    tb.empty_pinned_cache()
    start = time.perf_counter()
    a = tb.empty_pinned(1 << 30, np.uint8)
    first = time.perf_counter() - start
    a[:: 1 << 20] = 1  # the memory is there and writable
    del a
    start = time.perf_counter()
    b = tb.empty_pinned(1 << 30, np.uint8)
    cached = time.perf_counter() - start
    del b
    stats = tb.pinned_memory_stats()
    assert stats["in_use_bytes"] == 0, stats
    tb.empty_pinned_cache()
    return {"first_ms": round(first * 1e3, 2), "cached_ms": round(cached * 1e3, 3),
            "hit_count": stats["hit_count"]}


def check_out_pre_touched():
    """to_numpy(t) against to_numpy(t, out=pre_touched) at 256 MiB."""
    torch = needs_gpu()
    import numpy as np

    import tensorbridge as tb

    t = torch.arange(64 << 20, dtype=torch.float32, device="cuda")
    out = np.empty(64 << 20, np.float32)
    out.fill(0)  # touched: no page faults during the copy
    tb.to_numpy(t)  # warm-up: staging blocks
    fresh = best_of(3, lambda: tb.to_numpy(t))
    into = best_of(3, lambda: tb.to_numpy(t, out=out))
    assert out[-1] == (64 << 20) - 1 and out[12345] == 12345, "out= holds other values"
    gb = (256 << 20) / 1e9
    return {"to_numpy_ms": round(fresh * 1e3, 2), "out_pre_touched_ms": round(into * 1e3, 2),
            "to_numpy_GBps": round(gb / fresh, 2), "out_pre_touched_GBps": round(gb / into, 2)}


def check_pin():
    """tb.pin on a 128 MiB array: what pinning costs, a copy into it against
    copies into pooled pinned and pageable arrays, to_device out of it, a
    close while a copy is in flight, and whether the driver pins two arrays
    that share a page."""
    torch = needs_gpu()
    import numpy as np

    import tensorbridge as tb

    n = 32 << 20  # float32: 128 MiB
    t = torch.arange(n, dtype=torch.float32, device="cuda")
    a, pageable = np.zeros(n, np.float32), np.zeros(n, np.float32)  # touched: no page faults
    pooled = tb.empty_pinned(n, np.float32)
    start = time.perf_counter()
    handle = tb.pin(a)
    pin_s = time.perf_counter() - start
    assert tb.pinned_memory_stats()["registered_bytes"] == a.nbytes, tb.pinned_memory_stats()
    tb.to_numpy(t, out=pageable)  # warm-up: staging blocks
    times = {name: best_of(3, lambda out=out: tb.to_numpy(t, out=out))
             for name, out in (("pinned_in_place", a), ("pooled", pooled),
                               ("pageable", pageable))}
    for name, out in (("pinned in place", a), ("pooled", pooled), ("pageable", pageable)):
        assert out[-1] == n - 1 and out[12345] == 12345, f"out= {name} holds other values"
    start = time.perf_counter()
    back = tb.to_device(a, t.device)  # out of the pinned array, straight
    torch.cuda.synchronize()
    to_device_s = time.perf_counter() - start
    assert torch.equal(back, t), "to_device of the pinned array differs"
    # Closed while a copy into it waits behind 20 ms of kernel: unpinned after it.
    torch.cuda._sleep(int(20 * sleep_cycles_per_ms(torch)))
    u = t + 1
    transfer = tb.to_numpy_async(u, out=a)
    handle.close()
    while_in_flight = tb.pinned_memory_stats()["registered_bytes"]
    assert transfer.wait(timeout=30) is a and a[-1] == n and a[0] == 1, "the copy differs"
    tb._core.wait_for_all_transfers(30.0)
    assert tb.pinned_memory_stats()["registered_bytes"] == 0, tb.pinned_memory_stats()
    # Two arrays in one page: recorded, not judged (cuda.h says nothing of pages).
    page = np.zeros(4096, np.uint8)
    try:
        with tb.pin(page[:100]), tb.pin(page[200:300]):
            same_page = "pinned both"
    except (RuntimeError, ValueError) as error:
        same_page = f"refused: {error}"
    gb = a.nbytes / 1e9
    return {"pin_ms": round(pin_s * 1e3, 2), "to_device_ms": round(to_device_s * 1e3, 2),
            **{f"into_{name}_GBps": round(gb / seconds, 2) for name, seconds in times.items()},
            "registered_bytes_closed_in_flight": while_in_flight, "same_page": same_page}


# name -> (function, time limit in seconds, a child's start included)
CHECKS = {
    "cuda_status": (check_cuda_status, 20),
    "kernel": (check_kernel, 10),
    "exchange_table": (check_exchange_table, 30),
    "queued_kernel": (check_queued_kernel, 30),
    "transfer_wait": (check_transfer_wait, 30),
    "collect_small": (check_collect_small, 45),
    "cupy_strided": (check_cupy_strided, 40),
    "small_copies": (check_small_copies, 40),
    "empty_pinned": (check_empty_pinned, 30),
    "out_pre_touched": (check_out_pre_touched, 40),
    "pin": (check_pin, 40),
}


def run_one(name):
    """Runs one check here and prints its JSON line (the last line of stdout)."""
    function, _ = CHECKS[name]
    start = time.perf_counter()
    line = {"check": name, "status": "passed", "reason": None, "figures": None}
    try:
        line["figures"] = function()
    except Skip as why:
        line.update(status=SKIPPED, reason=f"skipped: {why}")
    except AssertionError as error:
        line.update(status="failed", reason=str(error) or "assertion failed")
    except Exception as error:  # noqa: BLE001 - any other error fails the check, named
        line.update(status="failed", reason=f"{type(error).__name__}: {error}")
    line["seconds"] = round(time.perf_counter() - start, 3)
    print(json.dumps(line, default=str), flush=True)
    return 1 if line["status"] == "failed" else 0


def child_command(name):
    return [sys.executable, os.path.abspath(__file__), "run", name]


def tail(text, chars=1500):
    # TimeoutExpired carries bytes even from a text-mode run
    if isinstance(text, bytes):
        text = text.decode(errors="replace")
    return (text or "")[-chars:]


def run_all(budget=None):
    """Every check in a child of its own; with `budget`, a check gets no more
    than what is left of it, and one that cannot start is recorded skipped."""
    verdicts = {}
    end = None if budget is None else time.monotonic() + budget
    for name, (_, limit) in CHECKS.items():
        start = time.perf_counter()
        if end is not None:
            limit = min(limit, int(end - time.monotonic()))
            if limit < 3:
                verdicts[name] = SKIPPED
                print(json.dumps({"check": name, "status": SKIPPED, "figures": None,
                                  "seconds": 0.0, "reason": "skipped: no time left in the "
                                  f"smoke stage's {budget} s"}), flush=True)
                continue
        try:
            child = subprocess.run(child_command(name), capture_output=True, text=True,
                                   timeout=limit)
        except subprocess.TimeoutExpired as expired:
            line = {"check": name, "status": "timed out", "figures": None,
                    "reason": f"still running after its limit of {limit} s",
                    "output_tail": tail(expired.stderr)}
        else:
            last = (child.stdout.strip().splitlines() or [""])[-1]
            try:
                line = json.loads(last)
            except ValueError:
                line = {"check": name, "status": "crashed", "figures": None,
                        "reason": f"the child ended with exit status {child.returncode} and no "
                                  "verdict", "output_tail": tail(child.stderr)}
        line["seconds"] = round(time.perf_counter() - start, 3)
        verdicts[name] = line["status"]
        print(json.dumps(line, default=str), flush=True)
    counts = {}
    for name, status in verdicts.items():
        counts.setdefault(status, []).append(name)
    failed = [name for name, status in verdicts.items()
              if status in ("failed", "timed out", "crashed")]
    print("REASON: " + ", ".join(f"{len(names)} {status}" for status, names in counts.items())
          + (f" ({', '.join(failed)})" if failed else ""), flush=True)
    return 1 if failed else 0


def main(argv):
    if not argv:
        return run_all()
    if argv[0] == "--budget" and len(argv) == 2 and argv[1].isdigit():
        return run_all(int(argv[1]))
    if argv[0] == "run" and len(argv) == 2 and argv[1] in CHECKS:
        return run_one(argv[1])
    if argv == ["list"]:
        for name, (_, limit) in CHECKS.items():
            print(f"{name} {limit}")
        return 0
    print(f"usage: gpu_check_smoke.py [--budget SECONDS | run {{{','.join(CHECKS)}}} | list]",
          file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
