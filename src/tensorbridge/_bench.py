"""The benchmark suite behind ``tensorbridge bench``.

Every method is a call as people write it (``t.numpy()``, ``np.from_dlpack(t)``,
``tb.to_numpy(t)``), timed on the same data in interleaved rounds: warm-up
first, then rounds in which each method of a case runs once, until the repeats
are done or the case's time budget is spent. CPU wall time and, on a GPU,
CUDA event time are reported apart: median and interquartile range, and the
ratio to the case's baseline. Each row says whether its method copied, as
found from its result (a view shares the source's memory): only copies move
bytes, so only they get bytes/s and a ratio to the ceiling (host memcpy; a raw
pinned device-to-host copy on a GPU); a view is its time per call.

A method that raises is recorded in the report's "failed" list (case, method,
error) and dropped from its case; the other methods and cases go on. The
report is handed to a checkpoint callback after every case, so a run stopped
part-way (a time limit, Ctrl-C) still leaves what it measured. Its layout is
versioned by SCHEMA (see benchmarks/README.md); `load_report` reads every
version written so far.
"""

from __future__ import annotations

import contextlib
import datetime
import gc
import importlib.metadata
import json
import os
import platform
import statistics
import sys
import time
import traceback
from dataclasses import dataclass, field
from functools import partial

import numpy as np

from . import (
    _core,
    collect,
    cuda_available,
    empty_pinned,
    pin,
    pinned_memory_stats,
    to_numpy,
    to_numpy_async,
)

HOST_CEILING = "host memcpy (memory ceiling)"
LINK_CEILING = "raw pinned copy (link ceiling)"


@dataclass
class Settings:
    quick: bool = False
    devices: tuple = ("cpu", "cuda")
    repeats: int = 15
    budget_s: float = 2.0
    workflows: bool = True

    @classmethod
    def make(cls, quick, devices, repeats=None, budget_s=None, workflows=True):
        base = cls(quick=quick, devices=tuple(devices), workflows=workflows,
                   repeats=21 if quick else 31, budget_s=0.6 if quick else 2.0)
        if repeats is not None:
            base.repeats = repeats
        if budget_s is not None:
            base.budget_s = budget_s
        return base


@dataclass
class Case:
    """Methods that do the same work on the same data; `baseline` anchors ratios."""

    title: str
    device: str
    nbytes: int
    baseline: str
    methods: dict
    ceiling: str | None = None
    sync: object = None  # callable, for device work
    skipped: dict = field(default_factory=dict)  # method -> why it cannot run here
    # NumPy views of the source's memory: a result that shares it is a view.
    memory: tuple = ()
    # Batches per call, for cases whose figure is the cost per batch.
    items: int | None = None
    # Threads the case's torch and BLAS get (None: their defaults). The CPU
    # workflows run on one: several threads per method on a shared machine
    # oversubscribe its cores (OpenBLAS threads spin), and the same call then
    # took 0.3 to 1.2 s, round to round; one thread repeats within a few percent.
    threads: int | None = None


# 1: the first layout (no "schema" key); 2: adds "schema", "complete", "cases"
# (one entry per case, in run order, with its status and seconds) and "failed";
# 3: adds "date", and per row "copies" (and "per_item_s" where a call handles
# many batches); "bytes_per_s" and "ratio_to_ceiling" are for copies only;
# 4: ratios taken round by round, with their quartiles ("ratio_q1", "ratio_q3",
# "ceiling_q1", "ceiling_q3"), and "ratio_to_baseline" None where the method and
# the baseline make different things (a view and a copy) and the method is not
# tensorbridge's.
SCHEMA = 4

# The methods of schema 1 and 2 files that return views (those files do not
# say): the CPU cases' zero-copy calls.
_VIEWS_BEFORE_SCHEMA_3 = {"t.numpy()", "np.asarray(t)", "np.from_dlpack(t)",
                          "t.detach().cpu().numpy()", "t.numpy(force=True)", "tb.to_numpy(t)",
                          "t.detach().numpy()", "float32 t.numpy() (same count)"}


def run(settings: Settings, progress=None, checkpoint=None) -> dict:
    """Run every case the machine supports; returns the JSON-ready report.

    `checkpoint(report)` is called once the report exists and again after each
    case: the report then holds every case finished so far, with "complete"
    False until the run ends.
    """
    report = {"schema": SCHEMA, "complete": False, "settings": vars(settings).copy(),
              "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "versions": versions(), "hardware": hardware(),
              "cases": [], "results": [], "skipped": [], "failed": []}
    report["settings"]["devices"] = list(settings.devices)
    save = checkpoint or (lambda report: None)
    save(report)
    # Each case's data is made just before it runs and freed after, so that
    # the largest sizes fit in memory.
    plan = list(build_cases(settings, report["skipped"]))
    for index, make_case in enumerate(plan):
        start = time.perf_counter()
        if _needs_child(make_case):
            _measure_in_child(make_case, settings, report, progress, index, len(plan))
            save(report)
            continue
        try:
            case = make_case()
        except Exception as error:  # noqa: BLE001 - recorded, and the run goes on
            title = _factory_title(make_case)
            report["failed"].append({"case": title, "method": "(making the case's data)",
                                     **_error_fields(error)})
            report["cases"].append({"case": title, "device": None, "status": "failed",
                                    "seconds": time.perf_counter() - start})
            save(report)
            gc.collect()
            continue
        if progress:
            progress(index, len(plan), case.title)
        rows, failed = measure_case(case, settings)
        report["results"].extend(rows)
        report["failed"].extend(failed)
        for method, why in case.skipped.items():
            report["skipped"].append({"case": case.title, "method": method, "reason": why})
        status = "measured" if not failed else "failed" if not rows else "partly failed"
        report["cases"].append({"case": case.title, "device": case.device, "status": status,
                                "seconds": time.perf_counter() - start,
                                "baseline": case.baseline, "ceiling": case.ceiling,
                                "items": case.items, "threads": case.threads})
        del case
        gc.collect()
        save(report)
    if "cpu" in settings.devices:
        report["collect_peak_memory"] = collect_peak_memory(16 if settings.quick else 64)
    if settings.workflows and not settings.quick:
        _distributed_case(report)
        save(report)
    report["complete"] = True
    save(report)
    if progress:
        progress(len(plan), len(plan), "done")
    return report


# Cases that need an environment set before their imports: scikit-learn's
# array API dispatch needs SCIPY_ARRAY_API=1 before scipy is imported. Where
# this process lacks it, the case runs in a child process that has it.
_CHILD_ENVIRONMENTS = {"_workflow_array_api": {"SCIPY_ARRAY_API": "1"}}


def _needs_child(make_case) -> bool:
    wanted = _CHILD_ENVIRONMENTS.get(getattr(make_case, "func", make_case).__name__, {})
    return any(os.environ.get(name) != value for name, value in wanted.items())


_CHILD_CASE = """
import json, sys
from tensorbridge import _bench
name, args, settings = json.loads(sys.argv[1])
case = getattr(_bench, name)(_bench.import_torch(), *args)
rows, failed = _bench.measure_case(case, _bench.Settings(**settings))
print(json.dumps({"rows": rows, "failed": failed, "skipped": case.skipped,
                  "title": case.title, "device": case.device, "baseline": case.baseline}))
"""


def _measure_in_child(make_case, settings, report, progress, index, count):
    """Measures the case `make_case` makes in a child process with the
    environment it needs (the user sets nothing), into `report`."""
    import subprocess

    name = make_case.func.__name__
    args = list(make_case.args[1:])  # the first, torch, is the child's own
    title = _factory_title(make_case)
    if progress:
        progress(index, count, f"{title} (in a child process)")
    start = time.perf_counter()
    environment = {**os.environ, **_CHILD_ENVIRONMENTS[name]}
    settings_json = {**vars(settings), "devices": list(settings.devices)}
    try:
        child = subprocess.run(
            [sys.executable, "-c", _CHILD_CASE, json.dumps([name, args, settings_json])],
            capture_output=True, text=True, env=environment, timeout=600, check=True)
        found = json.loads(child.stdout.strip().splitlines()[-1])
    except (subprocess.SubprocessError, OSError, ValueError, IndexError) as error:
        detail = getattr(error, "stderr", None) or ""
        report["failed"].append({"case": title, "method": "(the case's child process)",
                                 "error": f"{error} {detail[-2000:]}".strip(), "where": None})
        report["cases"].append({"case": title, "device": None, "status": "failed",
                                "seconds": time.perf_counter() - start})
        return
    report["results"].extend(found["rows"])
    report["failed"].extend(found["failed"])
    for method, why in found["skipped"].items():
        report["skipped"].append({"case": found["title"], "method": method, "reason": why})
    status = ("measured" if not found["failed"] else "failed" if not found["rows"]
              else "partly failed")
    report["cases"].append({"case": found["title"], "device": found["device"], "status": status,
                            "seconds": time.perf_counter() - start,
                            "baseline": found["baseline"], "ceiling": None, "items": None,
                            "environment": _CHILD_ENVIRONMENTS[name]})


def load_report(path) -> dict:
    """A report written by any version of `tensorbridge bench --json`, in this
    version's layout (schema 1 files gain empty "failed", derived "cases";
    schema 1 and 2 rows gain "copies", and views lose their bytes/s)."""
    with open(path) as f:
        report = json.load(f)
    schema = report.get("schema", 1)
    if not isinstance(schema, int) or schema > SCHEMA:
        raise ValueError(f"load_report: {path} has schema {schema!r}; this tensorbridge reads "
                         f"schemas 1 to {SCHEMA}: upgrade tensorbridge to read it")
    if schema == 1:
        report["schema"] = SCHEMA
        report.setdefault("complete", True)
        report.setdefault("failed", [])
        report.setdefault("skipped", [])
        devices = {row["case"]: row["device"] for row in report.get("results", [])}
        report.setdefault("cases", [{"case": title, "device": device, "status": "measured",
                                     "seconds": None} for title, device in devices.items()])
    if schema < 3:
        report["schema"] = SCHEMA
        report.setdefault("date", None)
        for row in report.get("results", []):
            row["copies"] = not (row["case"].startswith("cpu ")
                                 and row["method"] in _VIEWS_BEFORE_SCHEMA_3)
            if not row["copies"]:
                row["bytes_per_s"] = None
                row.pop("ratio_to_ceiling", None)
    report["schema"] = SCHEMA  # schema 3 rows lack only the quartiles, which are optional
    return report


def _error_fields(error) -> dict:
    text = "".join(traceback.format_exception_only(type(error), error)).strip()
    frames = traceback.extract_tb(error.__traceback__)
    where = f"{frames[-1].filename}:{frames[-1].lineno}" if frames else None
    return {"error": text[:2000], "where": where}


def _factory_title(make_case) -> str:
    # The title is made by the factory itself; name the factory and its plain
    # arguments (not the torch module) instead.
    func = getattr(make_case, "func", make_case)
    args = [repr(a) for a in getattr(make_case, "args", ()) if isinstance(a, (int, float, str))]
    return f"{getattr(func, '__name__', repr(func)).lstrip('_')}({', '.join(args)})"


_PEAK_PROBE = """
import numpy as np, tensorbridge as tb
def peak():  # VmHWM, reset below: a child inherits its parent's ru_maxrss
    line = [l for l in open("/proc/self/status") if l.startswith("VmHWM")][0]
    return int(line.split()[1]) * 1024
batches = (np.full((1024, 512), i, np.float64) for i in range({count}))  # 4 MiB each
open("/proc/self/clear_refs", "w").write("5")
before = peak()
result = {how}
grown = peak() - before
assert (result[::1024, 0] == np.arange({count})).all(), "wrong values"
print(grown / result.nbytes)
"""


def collect_peak_memory(count: int) -> dict:
    """Peak resident memory growth, as a multiple of the result, of gathering
    `count` generated 4 MiB batches (each freed after use), in fresh processes."""
    import subprocess

    ways = {"list + np.concatenate": "np.concatenate(list(batches))",
            "tb.collect": "tb.collect(batches)"}
    figures = {}
    for name, how in ways.items():
        try:
            out = subprocess.run([sys.executable, "-c", _PEAK_PROBE.format(count=count, how=how)],
                                 capture_output=True, text=True, check=True, timeout=120).stdout
            figures[name] = float(out)
        except (subprocess.SubprocessError, OSError, ValueError) as error:
            figures[name] = f"not measured: {error}"
    return figures


# -- timing ----------------------------------------------------------------------


def measure_case(case: Case, settings: Settings):
    """Returns (rows, failed): a row per method measured, an entry per method
    that raised (dropped from the case from then on)."""
    events = _cuda_events() if case.device == "cuda" else None
    methods = dict(case.methods)
    failed = []

    def calls(fn, number):  # a device method's work ends when the device is done
        if case.sync is None:  # nothing between the calls, to time sub-microsecond ones
            for _ in range(number):
                fn()
        else:
            for _ in range(number):
                fn()
                case.sync()

    def drop(name, error, when):
        failed.append({"case": case.title, "method": name, "during": when,
                       **_error_fields(error)})
        del methods[name]

    with _thread_limit(case.threads):
        numbers, copies = _calibrate(case, settings, methods, calls, drop)
        samples = _rounds(case, settings, methods, numbers, events, calls, drop)
    rows = []
    for name in methods:
        wall, gpu = samples[name]
        row = {"case": case.title, "device": case.device, "method": name, "bytes": case.nbytes,
               "copies": copies[name], "rounds": len(wall), "calls_per_round": numbers[name],
               **_summary(wall, "")}
        if gpu:
            row.update(_summary(gpu, "gpu_"))
        # A view moves no bytes: its figure is the time per call, not a rate.
        row["bytes_per_s"] = (case.nbytes / row["median_s"] if case.nbytes and row["copies"]
                              else None)
        if case.items:
            row["per_item_s"] = row["median_s"] / case.items
        rows.append(row)
    base = next((row for row in rows if row["method"] == case.baseline), None)
    ceiling = next((row for row in rows if row["method"] == case.ceiling), None)
    for row in rows:
        # None when the baseline failed, or when the two make different
        # things: no ratio is better than a misleading one.
        row["ratio_to_baseline"] = None
        if base is not None and comparable(row, base):
            row.update(_paired(samples[row["method"]][0], samples[case.baseline][0], "ratio_"))
            row["ratio_to_baseline"] = row.pop("ratio_median")
        if ceiling is not None and row["copies"]:
            row.update(_paired(samples[row["method"]][0], samples[case.ceiling][0], "ceiling_"))
            row["ratio_to_ceiling"] = row.pop("ceiling_median")
    return rows, failed


def _calibrate(case, settings, methods, calls, drop):
    """Warms each method up, finds whether it copies, and how many calls a
    sample takes: about 1/(repeats * methods) of the budget (at least 100 us),
    so that sub-microsecond calls are not drowned by the clock."""
    numbers, copies = {}, {}
    target = max(1e-4, settings.budget_s / (settings.repeats * max(len(methods), 1)))
    for name, fn in list(methods.items()):
        try:
            result = fn()
            if case.sync is not None:
                case.sync()
            copies[name] = not _shares_memory(result, case.memory)
            del result
            start = time.perf_counter()
            calls(fn, 1)
        except Exception as error:  # noqa: BLE001 - recorded, and the case goes on
            drop(name, error, "warm-up")
            continue
        single = max(time.perf_counter() - start, 1e-7)
        numbers[name] = max(1, min(100_000, int(target / single)))
    return numbers, copies


def _rounds(case, settings, methods, numbers, events, calls, drop):
    """Each method's samples (wall, GPU), one per round, every method once per
    round, the order reversed every other round: each ratio is taken within
    rounds, and a neighbour's burst or a warm cache favours no method for long."""
    samples = {name: ([], []) for name in methods}
    deadline = time.perf_counter() + settings.budget_s
    rounds = 0
    # No garbage collection inside a round: a pass landing on one method's
    # sample would be charged to that method alone.
    gc.collect()
    gc.disable()
    try:
        while methods and rounds < settings.repeats and (
                rounds < _MIN_ROUNDS or time.perf_counter() < deadline):
            order = list(methods.items())
            for name, fn in order if rounds % 2 == 0 else reversed(order):
                wall, gpu = samples[name]
                number = numbers[name]
                try:
                    if events:
                        events[0].record()
                    start = time.perf_counter()
                    calls(fn, number)
                    wall.append((time.perf_counter() - start) / number)
                    if events:
                        events[1].record()
                        events[1].synchronize()
                        gpu.append(events[0].elapsed_time(events[1]) / 1e3 / number)
                except Exception as error:  # noqa: BLE001
                    drop(name, error, f"round {rounds + 1}")
            rounds += 1
    finally:
        gc.enable()
    return samples


@contextlib.contextmanager
def _thread_limit(threads):
    """torch's and the BLAS libraries' threads limited to `threads` (None: as they are)."""
    if threads is None:
        yield
        return
    torch = sys.modules.get("torch")
    before = torch.get_num_threads() if torch is not None else None
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # scikit-learn brings it; without it, only torch is limited
        threadpool_limits = None
    if torch is not None:
        torch.set_num_threads(threads)
    try:
        if threadpool_limits is None:
            yield
        else:
            with threadpool_limits(limits=threads):
                yield
    finally:
        if torch is not None:
            torch.set_num_threads(before)


# Rounds that every case runs, whatever its budget: enough for a median.
_MIN_ROUNDS = 5
# Methods that are tensorbridge's: compared with the baseline, the call people
# write today, whether or not both copy (a view against the copy it replaces).
_OURS = ("tb.", "TorchTransformer", "AugmentedEstimator", "ToNumpy")


def comparable(row, base) -> bool:
    """Whether `row`'s method and the baseline make the same thing (both views,
    both copies), or `row` is tensorbridge's answer to the baseline's call. A
    ceiling is a ceiling: never a ratio against a view."""
    if row is base:
        return True
    if row["method"] in (HOST_CEILING, LINK_CEILING):
        return row["copies"] and base["copies"]
    # tensorbridge's view where people copy today (bf16's .float().numpy()) is
    # its answer to that call; its copy is no answer to a view
    return row["copies"] == base["copies"] or (row["method"].startswith(_OURS)
                                               and not row["copies"])


def _paired(values, anchors, prefix):
    """The ratios of `values` to `anchors` taken round by round (each pair
    measured back to back): their median, and their quartiles as the spread."""
    ratios = [value / anchor for value, anchor in zip(values, anchors) if anchor > 0]
    if len(ratios) > 1:
        q1, median, q3 = statistics.quantiles(ratios, n=4, method="inclusive")
    else:
        q1 = median = q3 = ratios[0] if ratios else float("nan")
    return {f"{prefix}median": median, f"{prefix}q1": q1, f"{prefix}q3": q3}


def _shares_memory(result, memory) -> bool:
    """Whether `result` (a method's return value) is a view of the case's
    source: an array whose memory overlaps one of `memory`'s, or a list of them."""
    if isinstance(result, list) and result:
        return all(_shares_memory(part, memory) for part in result)
    if not isinstance(result, np.ndarray):
        return False
    return any(np.may_share_memory(result, source) for source in memory)


def _summary(values, prefix):
    if len(values) > 1:
        q1, median, q3 = statistics.quantiles(values, n=4, method="inclusive")
    else:
        q1 = median = q3 = values[0]
    return {f"{prefix}median_s": median, f"{prefix}iqr_s": q3 - q1}


def _cuda_events():
    import torch

    return torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)


# -- what is measured ---------------------------------------------------------------


def _sizes(quick):
    # Enough sizes for a curve: per-call costs below the cache sizes, rates above.
    sizes = ([1 << 10, 16 << 10, 256 << 10, 4 << 20, 16 << 20] if quick
             else [1 << 10, 16 << 10, 256 << 10, 4 << 20, 64 << 20, 512 << 20])
    budget = _available_memory() // 8  # source, result and ceilings must all fit
    return [n for n in sizes if n <= budget]


def _available_memory():
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 4 << 30


def build_cases(settings: Settings, skipped: list):
    """Yields one factory per case: each makes its data only when called."""
    torch = import_torch()
    if torch is None:
        skipped.append({"case": "*", "method": "every torch method",
                        "reason": "torch is not installed"})
    if "cuda" in settings.devices:
        # First on a GPU: a run cut short by a time limit still has them.
        why = why_no_cuda_cases(torch)
        if why:
            skipped.append({"case": "*", "method": "every CUDA method", "reason": why})
        else:
            yield partial(_cuda_small, torch)
            for nbytes in _sizes(settings.quick):
                yield partial(_cuda_float32, torch, nbytes)
            yield partial(_cuda_into_kept_array, torch, (4 if settings.quick else 256) << 20)
    if "cpu" in settings.devices:
        for nbytes in _sizes(settings.quick):
            yield partial(_cpu_float32, torch, nbytes)
        if torch is not None:
            yield partial(_cpu_grad, torch)
            for nbytes in (2048, 16 << 20):
                yield partial(_cpu_bfloat16, torch, nbytes)
            if _has_sklearn():
                yield partial(_cpu_sklearn_step, torch)
            else:
                skipped.append({"case": "cpu ToNumpy().transform(t)", "method": "*",
                                "reason": "scikit-learn is not installed"})
        yield partial(_cpu_collect, 16 if settings.quick else 64)
        if not settings.quick:  # its ratio moved up to 20% between two quick runs
            yield partial(_cpu_collect_small, 10_000)
        if torch is not None:
            yield partial(_cpu_collect_tensors, torch, 2_000 if settings.quick else 10_000)
    if settings.workflows and torch is not None:
        if not _has_sklearn():
            skipped.append({"case": "workflows", "method": "*",
                            "reason": "scikit-learn is not installed"})
            return
        on_gpu = "cuda" in settings.devices and torch.cuda.is_available()
        device = "cuda" if on_gpu else "cpu"
        rows = 20_000 if settings.quick else 100_000
        yield partial(_workflow_features, torch, device, rows)
        yield partial(_workflow_scaling, torch, device, rows)
        yield partial(_workflow_augmentation, torch, 8980)
        yield partial(_workflow_array_api, torch, device, rows // 4)
        try:
            import skorch  # noqa: F401
        except ImportError:
            skipped.append({"case": "workflow: skorch net's features", "method": "*",
                            "reason": "skorch is not installed (the skorch extra)"})
        else:
            yield partial(_workflow_skorch, torch, device, rows // 4)


def import_torch():
    """torch, or None where it is not installed."""
    try:
        import torch
    except ImportError:
        return None
    return torch


def why_no_cuda_cases(torch) -> str | None:
    """Why the CUDA cases cannot run here (they time torch tensors), or None."""
    if torch is None:
        return "torch is not installed (the CUDA cases time torch tensors)"
    if not torch.cuda.is_available():
        return "no CUDA GPU found (torch.cuda.is_available() is False)"
    return None


def _has_sklearn() -> bool:
    try:
        import sklearn  # noqa: F401
    except ImportError:
        return False
    return True


def _cpu_float32(torch, nbytes):
    source = np.ones(nbytes // 4, np.float32)
    host_out = np.empty_like(source)
    methods = {HOST_CEILING: lambda: np.copyto(host_out, source)}
    if torch is not None:
        t = torch.from_numpy(source.copy())
        methods.update({
            "t.numpy()": lambda: t.numpy(),
            "np.asarray(t)": lambda: np.asarray(t),
            "np.from_dlpack(t)": lambda: np.from_dlpack(t),
            "t.detach().cpu().numpy()": lambda: t.detach().cpu().numpy(),
            "t.numpy(force=True)": lambda: t.numpy(force=True),
            "tb.to_numpy(t)": lambda: to_numpy(t),
            "tb.to_numpy(t, copy=True)": lambda: to_numpy(t, copy=True),
        })
    baseline = "t.numpy()" if torch is not None else HOST_CEILING
    memory = (source,) if torch is None else (t.numpy(),)
    return Case(f"cpu float32 {format_bytes(nbytes)}", "cpu", nbytes, baseline, methods,
                HOST_CEILING, memory=memory)


def _cpu_grad(torch):
    grad = torch.ones(1024, requires_grad=True)
    return Case("cpu float32 requires_grad 4 KiB", "cpu", 4096, "t.detach().numpy()", {
        "t.detach().numpy()": lambda: grad.detach().numpy(),
        "tb.to_numpy(t)": lambda: to_numpy(grad)}, memory=(grad.detach().numpy(),))


def _cpu_bfloat16(torch, nbytes):
    bf16 = torch.ones(nbytes // 2, dtype=torch.bfloat16)
    f32 = torch.ones(nbytes // 2)
    return Case(f"cpu bfloat16 {format_bytes(nbytes)}", "cpu", nbytes, ".float().numpy()", {
        ".float().numpy()": lambda: bf16.float().numpy(),
        "float32 t.numpy() (same count)": lambda: f32.numpy(),
        "tb.to_numpy(t)": lambda: to_numpy(bf16)},
        memory=(bf16.view(torch.int16).numpy(), f32.numpy()))


def _cpu_sklearn_step(torch):
    """The per-call cost of ToNumpy, the first step of a pipeline fed tensors."""
    from .sklearn import ToNumpy

    t = torch.ones(64, 16)
    step = ToNumpy().fit(t)
    return Case("cpu ToNumpy().transform(t) 64 x 16 float32", "cpu", t.numel() * 4, "t.numpy()",
                {"t.numpy()": lambda: t.numpy(), "tb.to_numpy(t)": lambda: to_numpy(t),
                 "ToNumpy().transform(t)": lambda: step.transform(t)}, memory=(t.numpy(),))


def _cpu_collect(count):
    batches = [np.full((1024, 512), i, np.float64) for i in range(count)]
    return Case(f"cpu collect {count} x 4 MiB", "cpu", count * (4 << 20), "np.concatenate(list)",
                {"np.concatenate(list)": lambda: np.concatenate(list(batches)),
                 "tb.collect(batches)": lambda: collect(batches)})


def _cpu_collect_small(count):
    batches = [np.full((1, 64), i, np.float32) for i in range(count)]
    return Case(f"cpu collect {count} x 256 B", "cpu", count * 256, "np.concatenate(list)",
                {"np.concatenate(list)": lambda: np.concatenate(batches),
                 "tb.collect(batches)": lambda: collect(batches),
                 "tb.collect(iter(batches))": lambda: collect(iter(batches))})


def _cpu_collect_tensors(torch, count):
    """collect's cost per batch, for small torch batches, against the way people
    gather them today (a view per batch, then np.concatenate: the same result);
    a list of views alone shows what the gathering adds."""
    whole = torch.ones(count, 64)
    batches = list(whole.split(1))
    return Case(f"cpu collect {count} x 256 B tensors", "cpu", count * 256,
                "np.concatenate([t.numpy() ...])", {
                    "np.concatenate([t.numpy() ...])": lambda: np.concatenate(
                        [b.numpy() for b in batches]),
                    "[t.numpy() for t in batches]": lambda: [b.numpy() for b in batches],
                    "tb.collect(batches)": lambda: collect(batches),
                    "tb.collect(iter(batches))": lambda: collect(iter(batches))},
                items=count, memory=(whole.numpy(),))


def _cuda_float32(torch, nbytes):
    try:
        import cupy
    except ImportError:
        cupy = None
    t = torch.ones(nbytes // 4, device="cuda")
    pinned_t = torch.empty(t.shape, pin_memory=True)
    pinned = empty_pinned(t.shape, np.float32) if cuda_available() else None
    host, host_out = np.ones(t.shape, np.float32), np.empty(t.shape, np.float32)
    methods = {
        ".cpu().numpy()": lambda: t.cpu().numpy(),
        "non_blocking=True + sync": lambda: t.to("cpu", non_blocking=True).numpy(),
        LINK_CEILING: lambda: pinned_t.copy_(t, non_blocking=True),
        HOST_CEILING: lambda: np.copyto(host_out, host),
        "tb.to_numpy(t)": lambda: to_numpy(t),
        "tb.to_numpy_async(t).wait()": lambda: to_numpy_async(t).wait(),
    }
    skipped = {}
    if pinned is not None:
        methods["tb.to_numpy(t, out=pinned)"] = lambda: to_numpy(t, out=pinned)
    else:
        skipped["tb.to_numpy(t, out=pinned)"] = "tensorbridge found no CUDA driver"
    if cupy is not None:
        methods["cupy.asnumpy(x)"] = lambda: cupy.asnumpy(cupy.from_dlpack(t))
    else:
        skipped["cupy.asnumpy(x)"] = "CuPy is not installed"
    return Case(f"cuda float32 {format_bytes(nbytes)}", "cuda", nbytes, ".cpu().numpy()", methods,
                LINK_CEILING, torch.cuda.synchronize, skipped)


def _cuda_into_kept_array(torch, nbytes):
    """GPU -> a host array kept across copies (the out= of a loop), by where it
    lives: pinned in place (tb.pin), a block of the pinned pool
    (tb.empty_pinned), or pageable memory (staged through the pool)."""
    t = torch.ones(nbytes // 4, device="cuda")
    pinned_t = torch.empty(t.shape, pin_memory=True)
    pageable = np.zeros(t.shape, np.float32)  # written once: no page faults are timed
    methods = {
        LINK_CEILING: lambda: pinned_t.copy_(t, non_blocking=True),
        "tb.to_numpy(t, out=pageable)": lambda: to_numpy(t, out=pageable),
    }
    skipped = {}
    if cuda_available():
        pooled = empty_pinned(t.shape, np.float32)
        # Unpinned when the case is dropped (its methods hold the only reference).
        in_place = pin(np.zeros(t.shape, np.float32))
        methods["tb.to_numpy(t, out=empty_pinned)"] = lambda: to_numpy(t, out=pooled)
        methods["tb.to_numpy(t, out=tb.pin(a).array)"] = lambda: to_numpy(t, out=in_place.array)
    else:
        for method in ("tb.to_numpy(t, out=empty_pinned)", "tb.to_numpy(t, out=tb.pin(a).array)"):
            skipped[method] = "tensorbridge found no CUDA driver"
    return Case(f"cuda float32 {format_bytes(nbytes)} into a kept array", "cuda", nbytes,
                "tb.to_numpy(t, out=pageable)", methods, LINK_CEILING, torch.cuda.synchronize,
                skipped)


def _cuda_small(torch):
    small = [torch.ones(1024, device="cuda") for _ in range(1000)]
    return Case("cuda 1000 x 4 KiB", "cuda", 1000 * 4096, ".cpu().numpy() loop", {
        ".cpu().numpy() loop": lambda: [x.cpu().numpy() for x in small],
        "tb.collect(tensors)": lambda: collect(small)}, sync=torch.cuda.synchronize)


def _feature_model(torch, device):
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(256, 512), torch.nn.GELU(),
                               torch.nn.Linear(512, 128)).to(device).eval()


def _workflow_features(torch, device, rows):
    """Workflow 1: features from a torch module (for a LogisticRegression)."""
    from .sklearn import TorchTransformer

    X = np.random.default_rng(0).standard_normal((rows, 256)).astype(np.float32)
    model = _feature_model(torch, device)

    def hand_written():
        with torch.no_grad():
            parts = [model(torch.from_numpy(X[i:i + 4096]).to(device)).cpu().numpy()
                     for i in range(0, rows, 4096)]
        return np.concatenate(parts)

    transformer = TorchTransformer(model, batch_size=4096, device=device).fit(X[:8])
    return Case(f"workflow: feature extraction ({device})", device, X.nbytes, "hand-written loop",
                {"hand-written loop": hand_written,
                 "TorchTransformer.transform": lambda: transformer.transform(X)},
                sync=torch.cuda.synchronize if device == "cuda" else None,
                threads=1 if device == "cpu" else None)


def _workflow_scaling(torch, device, rows):
    """Workflow 2: a large tensor in batches -> StandardScaler."""
    from sklearn.preprocessing import StandardScaler

    data = torch.randn(rows, 256)
    model = _feature_model(torch, device)

    def list_and_concatenate():
        with torch.no_grad():
            parts = [model(batch.to(device)).cpu().numpy() for batch in data.split(4096)]
        return StandardScaler().fit_transform(np.concatenate(parts))

    def with_collect():
        with torch.inference_mode():
            features = collect(model(batch.to(device)) for batch in data.split(4096))
        return StandardScaler().fit_transform(features)

    return Case(f"workflow: batches -> StandardScaler ({device})", device, data.numel() * 4,
                "list + np.concatenate", {"list + np.concatenate": list_and_concatenate,
                                          "tb.collect": with_collect},
                sync=torch.cuda.synchronize if device == "cuda" else None,
                threads=1 if device == "cpu" else None)


def _shift(batch, generator):
    """Each image of the batch moved by -1, 0 or 1 pixel down and right (its
    own draw), the border filled with zeros: examples/augmented_images.py's."""
    import torch

    n, height, width = len(batch), batch.shape[-2], batch.shape[-1]
    padded = torch.nn.functional.pad(batch, (1, 1, 1, 1))
    windows = padded.unfold(-2, height, 1).unfold(-2, width, 1)
    dy, dx = torch.randint(0, 3, (2, n), generator=generator)
    return windows[torch.arange(n), :, dy, dx]


def _workflow_augmentation(torch, count):
    """Workflow 3, as examples/augmented_images.py times it: `count` 8 x 8
    images, 4 views each augmented on batches of 512 (a random shift per
    image), flattened into the rows an estimator is fitted on: by hand
    (batches, a list, np.concatenate), and by AugmentedEstimator, whose
    estimator here does nothing."""
    from sklearn.base import BaseEstimator

    from .sklearn import AugmentedEstimator

    images = torch.rand(count, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    array = images.numpy()
    n_views, batch_size = 4, 512

    def hand_written():
        generator = torch.Generator().manual_seed(0)
        views = [array.reshape(count, -1)]
        for _ in range(n_views):
            for start in range(0, count, batch_size):
                batch = _shift(images[start:start + batch_size], generator)
                views.append(batch.reshape(len(batch), -1).numpy())
        return np.concatenate(views)

    class Rows(BaseEstimator):  # fitting costs nothing: the rows alone are timed
        def fit(self, X, y=None):
            return self

    estimator = AugmentedEstimator(Rows(), augment=_shift, n_views=n_views,
                                   batch_size=batch_size, random_state=0)
    return Case(f"workflow: {count:,} images x {n_views} views -> rows (cpu)", "cpu",
                images.numel() * 4 * (1 + n_views), "hand-written loop", {
                    "hand-written loop": hand_written,
                    f"AugmentedEstimator(batch_size={batch_size})": lambda: estimator.fit(array)},
                threads=1)


def _workflow_array_api(torch, device, rows):
    """Workflow 1 with scikit-learn's array API dispatch on (features stay
    tensors on X's device, PCA runs there) against off (NumPy, PCA on the CPU)."""
    import sklearn
    from sklearn.decomposition import PCA
    from sklearn.pipeline import make_pipeline

    from .sklearn import TorchTransformer

    X = torch.randn(rows, 256, generator=torch.Generator().manual_seed(0)).to(device)
    pipe = make_pipeline(TorchTransformer(_feature_model(torch, device), batch_size=4096,
                                          device=device), PCA(n_components=16, svd_solver="full"))

    def dispatch(on):
        with sklearn.config_context(array_api_dispatch=on):
            return pipe.fit_transform(X)

    methods = {"array_api_dispatch=False": lambda: dispatch(False)}
    skipped = {}
    if os.environ.get("SCIPY_ARRAY_API") == "1":
        methods["array_api_dispatch=True"] = lambda: dispatch(True)
    else:
        skipped["array_api_dispatch=True"] = ("scikit-learn needs SCIPY_ARRAY_API=1 set before "
                                              "scipy is imported: run the benchmark with it")
    return Case(f"workflow: features -> PCA, array API dispatch ({device})", device, X.numel() * 4,
                "array_api_dispatch=False", methods,
                sync=torch.cuda.synchronize if device == "cuda" else None, skipped=skipped,
                threads=1 if device == "cpu" else None)


def _workflow_skorch(torch, device, rows):
    """A trained skorch net's hidden layer as features: skorch's own inference
    (net.forward, then to NumPy) against TorchTransformer(net, layer=...)."""
    import skorch

    from .sklearn import TorchTransformer

    X = np.random.default_rng(0).standard_normal((rows, 256)).astype(np.float32)
    y = (X[:, 0] > 0).astype(np.int64)
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Linear(256, 512), torch.nn.GELU(),
                                 torch.nn.Linear(512, 128), torch.nn.Linear(128, 2))
    net = skorch.NeuralNetClassifier(module, criterion=torch.nn.CrossEntropyLoss, max_epochs=1,
                                     batch_size=4096, train_split=None, verbose=0,
                                     device=device)
    transformer = TorchTransformer(net, batch_size=4096, device=device, layer="2").fit(
        X[:4096], y[:4096])
    trained = transformer.net_

    def skorch_forward():
        hidden = []
        handle = trained.module_[2].register_forward_hook(
            lambda module, args, output: hidden.append(output))
        try:
            trained.forward(X)
        finally:
            handle.remove()
        return torch.cat(hidden).cpu().numpy()

    return Case(f"workflow: skorch net's features ({device})", device, X.nbytes,
                "net.forward + hook", {"net.forward + hook": skorch_forward,
                                       "TorchTransformer(net, layer=...)":
                                           lambda: transformer.transform(X)},
                sync=torch.cuda.synchronize if device == "cuda" else None,
                threads=1 if device == "cpu" else None)


def format_bytes(nbytes) -> str:
    """A size in B, KiB, MiB or GiB: "4 KiB", "1.5 GiB"."""
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if nbytes >= 1 << shift:
            value = nbytes / (1 << shift)
            return f"{value:.0f} {unit}" if value == int(value) else f"{value:.1f} {unit}"
    return f"{nbytes} B"


# -- context --------------------------------------------------------------------


# Each optional module and the distributions that install it (CuPy's are per CUDA).
_DISTRIBUTIONS = {"ml_dtypes": ("ml_dtypes",), "torch": ("torch",),
                  "cupy": ("cupy", "cupy-cuda13x", "cupy-cuda12x", "cupy-cuda11x"),
                  "sklearn": ("scikit-learn",)}


def versions() -> dict:
    """Installed versions; None for a module that is not installed. A module
    not imported yet is looked up in the installed packages' metadata, not
    imported: importing torch and scikit-learn takes seconds."""
    from . import __version__

    found = {"tensorbridge": __version__, "python": platform.python_version(),
             "numpy": np.__version__}
    for name, distributions in _DISTRIBUTIONS.items():
        module = sys.modules.get(name)
        found[name] = getattr(module, "__version__", None) if module is not None else None
        for distribution in distributions if module is None else ():
            try:
                found[name] = importlib.metadata.version(distribution)
                break
            except importlib.metadata.PackageNotFoundError:
                continue
    return found


def hardware() -> dict:
    info = {"machine": platform.machine(), "cpus": os.cpu_count(), "cpu": _cpu_model(),
            "memory_bytes": _total_memory(), "cuda_driver": None, "gpus": []}
    if cuda_available():
        info["cuda_driver"] = _core.driver_version()
        info["gpus"] = [_core.device_name(i) for i in range(_core.device_count())]
    return info


def _cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _total_memory():
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def quick_measurements() -> dict:
    """Host memcpy and (with a GPU) pinned link bandwidth, 64 MiB each, for `info`."""
    nbytes = 64 << 20
    src, dst = np.ones(nbytes, np.uint8), np.empty(nbytes, np.uint8)
    np.copyto(dst, src)
    start = time.perf_counter()
    for _ in range(5):
        np.copyto(dst, src)
    result = {"host_memcpy_GB_per_s": 5 * nbytes / (time.perf_counter() - start) / 1e9}
    result["pinned_pool"] = pinned_memory_stats()
    if not cuda_available():  # tensorbridge's own probe: no torch import on a CPU machine
        return result
    try:
        import torch
    except ImportError:
        return result
    if torch.cuda.is_available():
        t = torch.ones(nbytes // 4, device="cuda")
        out = empty_pinned(t.shape, np.float32)
        to_numpy(t, out=out)
        start = time.perf_counter()
        for _ in range(5):
            to_numpy(t, out=out)
        result["device_to_pinned_GB_per_s"] = 5 * nbytes / (time.perf_counter() - start) / 1e9
        result["pinned_pool"] = pinned_memory_stats()
    return result


def _distributed_case(report) -> None:
    """distributed_scaling into report["distributed"], or why it did not run."""
    case = "distributed: TorchTransformer over dask on 1 and 2 local workers"
    try:
        import dask.array  # noqa: F401
        import distributed  # noqa: F401
    except ImportError:
        report["skipped"].append({"case": case, "method": "*", "reason":
                                  "dask and distributed are not installed (the dask extra)"})
        return
    start = time.perf_counter()
    try:
        report["distributed"] = distributed_scaling()
    except Exception as error:  # noqa: BLE001 - recorded, and the run goes on
        report["failed"].append({"case": case, "method": "*", **_error_fields(error)})
        status = "failed"
    else:
        status = "measured"
    report["cases"].append({"case": case, "device": "cpu", "status": status,
                            "seconds": time.perf_counter() - start})


def distributed_scaling(rows=196_608, width=64, batch_size=4096, block_rows=12_288,
                        workers=(1, 2), repeats=5, small_blocks=400) -> dict:
    """TorchTransformer over a dask array on local clusters of 1 and 2 worker
    processes against the in-memory transform of the same rows, in interleaved
    rounds of one run; and the scheduler's overhead per block. Not part of
    ``--quick``.

    ``dask compute`` is the whole trip (blocks computed on the workers, results
    gathered into the client), ``dask persist`` leaves the results on the
    workers; each round builds its graph anew (the estimator one key of it,
    loaded once per worker process: ``module_loads_per_worker`` counts the
    loads over all ``graphs``). The overhead per block is the time of a ToNumpy pass
    over ``small_blocks`` blocks of 8 rows less that of one block (the graph's
    fixed cost: building, sending, submitting), divided by the blocks
    added: what a block costs beyond its work. The in-memory transform also
    runs on one torch thread: the work of one single-threaded worker, without
    dask. Needs the dask extra (dask[array], distributed); returns the report
    as a dict: per method ``median_s``,
    ``rows_per_s``, ``ratio_to_in_memory`` (time over the in-memory
    transform's in the same rounds: below 1 is faster) and
    ``ratio_to_one_thread`` (over the one-thread transform's: each worker is one
    thread, so on an idle machine N workers should approach 1/N).
    """
    import logging

    import dask.array as da
    import distributed
    import torch

    from .sklearn import TorchTransformer

    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Linear(width, 256), torch.nn.ReLU(),
                                 torch.nn.Linear(256, 64))
    report = {"rows": rows, "width": width, "batch_size": batch_size,
              "block_rows": block_rows, "repeats": repeats,
              "torch_threads_in_client": torch.get_num_threads(), "results": []}
    X = model = None
    for count in workers:
        with distributed.LocalCluster(n_workers=count, threads_per_worker=1, processes=True,
                                      host="127.0.0.1", dashboard_address=None,
                                      silence_logs=logging.ERROR) as cluster, \
                distributed.Client(cluster) as client:
            # Made on the workers (a graph carrying X itself would be as large as X).
            dX = da.random.default_rng(0).standard_normal(
                (rows, width), chunks=(block_rows, width), dtype=np.float32).persist()
            tiny = da.zeros((8 * small_blocks, 4), np.float32, chunks=(8, 4)).persist()
            distributed.wait([dX, tiny])
            if X is None:
                X = dX.compute()
                model = TorchTransformer(module, batch_size=batch_size, device="cpu").fit(X)
            times = _scaling_rounds(torch, distributed, client, model, X, dX, tiny, repeats)
            loads = _module_loads(client, model)
            base = statistics.median(times["in-memory transform"])
            one = statistics.median(times["in-memory transform, 1 torch thread"])
            for name, samples in times.items():
                median = statistics.median(samples)
                row = {"method": name, "workers": count, "median_s": median}
                if name == "overhead per block":  # beyond the graph's fixed cost
                    fixed = statistics.median(times["fixed cost per graph"])
                    row.update(blocks=small_blocks,
                               median_s=(median - fixed) / (small_blocks - 1))
                elif name == "fixed cost per graph":
                    row.update(blocks=1)
                else:
                    row.update(rows_per_s=rows / median, ratio_to_in_memory=median / base,
                               ratio_to_one_thread=median / one)
                if name.startswith("dask "):  # every round's graph, one load per worker
                    row.update(module_loads_per_worker=loads, graphs=2 * (repeats + 1))
                report["results"].append(row)
    return report


def _scaling_rounds(torch, distributed, client, model, X, dX, tiny, repeats):
    """Seconds per round of each method of distributed_scaling, on one cluster."""
    from .sklearn import ToNumpy

    step = ToNumpy().fit(X[:, :4])
    methods = {
        "in-memory transform": lambda: model.transform(X),
        "in-memory transform, 1 torch thread": lambda: _one_thread(torch, model.transform, X),
        "dask compute": lambda: client.compute(model.transform(dX)).result(),
        "dask persist": lambda: distributed.wait(model.transform(dX).persist()),
        "overhead per block": lambda: distributed.wait(step.transform(tiny).persist()),
        "fixed cost per graph": lambda: distributed.wait(step.transform(tiny[:8]).persist()),
    }
    times = {name: [] for name in methods}
    for round_ in range(repeats + 1):  # round 0 warms up: first loads, first calls
        for name, fn in methods.items():
            start = time.perf_counter()
            fn()
            if round_:
                times[name].append(time.perf_counter() - start)
    return times


def _module_loads(client, model):
    """How many times each worker process deserialised the model's module, by worker
    name, over all of distributed_scaling's graphs on this cluster."""
    from .sklearn import _dask

    token = _dask._Shipped(_dask._block_estimator(model)).token
    names = {address: info["name"]
             for address, info in client.scheduler_info(n_workers=-1)["workers"].items()}
    states = client.run(_dask.worker_state)
    return {str(names.get(address, address)): state["loads"].get(token, 0)
            for address, state in sorted(states.items(), key=lambda kv: str(names.get(kv[0])))}


def _one_thread(torch, fn, *args):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return fn(*args)
    finally:
        torch.set_num_threads(threads)
