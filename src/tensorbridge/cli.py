"""The ``tensorbridge`` command (also ``python -m tensorbridge``).

    tensorbridge bench [--quick] [--device cpu|cuda|all] [--json PATH|-] [--plot PATH.png]
    tensorbridge info [--json]
    tensorbridge --version

Exit status: 0 ok, 1 failure (for bench: a method that raised, recorded in the
table and the JSON while the rest ran; or no GPU for --device cuda), 2 usage
error (an output path that cannot be written is one, found before the run).
Nothing is written but the paths named on the command line, each named on
standard error once written; `--json PATH` is rewritten atomically after every
case, so a run stopped part-way leaves the cases it finished ("complete": false).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import sys

from . import _torch


def main(argv=None) -> int:
    """Run the ``tensorbridge`` command.

    Parameters
    ----------
    argv : list of str, optional
        The arguments after the command's name; default ``sys.argv[1:]``.

    Returns
    -------
    int
        The exit status: 0 ok, 1 a failure, 2 a usage error (``--help`` and
        ``--version`` exit through ``SystemExit(0)``, as argparse does).

    Examples
    --------
    >>> from tensorbridge.cli import main
    >>> try:
    ...     main(["--version"])
    ... except SystemExit as done:
    ...     print("exit status", done.code)  # doctest: +ELLIPSIS
    tensorbridge 0...
    exit status 0
    """
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="tensorbridge",
        description="Measure and inspect tensorbridge's conversions on this machine.")
    parser.add_argument("--version", action="version", version=f"tensorbridge {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="{bench,info}", required=True)

    bench = commands.add_parser(
        "bench", help="compare conversion methods side by side",
        description="Time every conversion method this machine supports (torch, NumPy, "
                    "CuPy, tensorbridge) on the same data: views as time per call, copies "
                    "also as GB/s against the memory and link ceilings, each with its ratio "
                    "to the case's baseline; then the end-to-end workflows (features for a "
                    "classifier, batches into a StandardScaler, augmented images, scikit-learn's "
                    "array API dispatch, a skorch net's hidden layer as features).")
    bench.add_argument("--quick", action="store_true",
                       help="small sizes and short budgets (well under a minute)")
    bench.add_argument("--device", choices=["cpu", "cuda", "all"], default="all",
                       help="which memory to measure (default: all; CUDA only when found)")
    bench.add_argument("--json", metavar="PATH",
                       help="also write the full report as JSON ('-' for standard output)")
    bench.add_argument("--plot", metavar="PATH.png",
                       help="also plot time per call (views) and GB/s (copies) against size "
                            "(needs matplotlib)")
    bench.add_argument("--repeats", type=_positive_int, metavar="N",
                       help="the most rounds per case (default: 15, 5 with --quick); a case "
                            "stops sooner, after 3 rounds, once its --budget is spent")
    bench.add_argument("--budget", type=_positive_float, metavar="SECONDS",
                       help="time budget per case once 3 rounds are done (default: 2, 0.25 "
                            "with --quick)")
    bench.add_argument("--no-workflows", action="store_true",
                       help="skip the end-to-end workflows")

    info = commands.add_parser("info",
                               help="versions, CUDA driver, GPUs, pinned pool, quick bandwidths",
                               description="Show what tensorbridge finds on this machine.")
    info.add_argument("--json", action="store_true", help="print it as one JSON object")
    args = parser.parse_args(argv)
    try:
        return _bench(args) if args.command == "bench" else _info(args.json)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 1
    except BrokenPipeError:  # `tensorbridge info | head`: the reader has all it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no error at exit
        return 0


def _positive_int(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _positive_float(text):
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
    return value


def _bench(args) -> int:
    for option, path in (("--json", args.json), ("--plot", args.plot)):
        problem = _unwritable(path) if path and path != "-" else None
        if problem:
            print(f"tensorbridge bench: {option} {path}: {problem}", file=sys.stderr)
            return 2
    if args.plot:
        try:
            from matplotlib.backend_bases import FigureCanvasBase
        except ImportError:
            print("tensorbridge bench: --plot needs matplotlib; install it with "
                  "pip install matplotlib", file=sys.stderr)
            return 1
        kind = os.path.splitext(args.plot)[1][1:].lower()
        formats = FigureCanvasBase.get_supported_filetypes()
        if kind and kind not in formats:
            print(f"tensorbridge bench: --plot {args.plot}: matplotlib cannot write .{kind} "
                  f"files; name a .png (or {', '.join(sorted(formats))})", file=sys.stderr)
            return 2
    from . import _bench as bench

    if args.device == "cuda":
        why = bench.why_no_cuda_cases(bench.import_torch())
        if why:
            print(f"tensorbridge bench: --device cuda: {why}", file=sys.stderr)
            return 1

    devices = ("cpu", "cuda") if args.device == "all" else (args.device,)
    settings = bench.Settings.make(args.quick, devices, args.repeats, args.budget,
                                   workflows=not args.no_workflows)
    to_stdout = args.json == "-"
    latest = {}

    def checkpoint(report):
        latest["report"] = report
        if args.json and not to_stdout and "json_error" not in latest:
            try:
                _write_atomically(args.json, json.dumps(report, indent=2, default=str) + "\n")
            except OSError as error:  # a full disk: the run goes on, and says so at the end
                latest["json_error"] = error

    # SIGTERM (a time limit: `timeout`) ends the run as Ctrl-C does: what was
    # measured is written and shown before the exit.
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        report = bench.run(settings, progress=_progress_bar, checkpoint=checkpoint)
    except KeyboardInterrupt:
        report = latest.get("report")
        if report is not None:
            report["interrupted"] = True
            checkpoint(report)  # the file does not have the flag yet
            _finish(report, args, to_stdout, latest)
        print("interrupted", file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGTERM, previous)
    _finish(report, args, to_stdout, latest)  # run() saved the final report
    status = 0
    if "json_error" in latest:
        print(f"tensorbridge bench: --json {args.json}: not written: {latest['json_error']}",
              file=sys.stderr)
        status = 1
    if args.plot:
        try:
            _plot(report, args.plot)
            print(f"tensorbridge bench: wrote the plot to {args.plot}", file=sys.stderr)
        except OSError as error:  # the disk filled, the folder went: the table still stands
            print(f"tensorbridge bench: --plot {args.plot}: not written: {error}",
                  file=sys.stderr)
            status = 1
    if report["failed"]:
        print(f"tensorbridge bench: {len(report['failed'])} method(s) failed; the others were "
              "measured (see the table)", file=sys.stderr)
        status = 1
    return status


def _finish(report, args, to_stdout, latest):
    """Shows the report whose last checkpoint has been written."""
    _print_table(report, sys.stderr if to_stdout else sys.stdout)
    if to_stdout:
        print(json.dumps(report, indent=2, default=str))
    elif args.json and "json_error" not in latest:
        print(f"tensorbridge bench: wrote the report to {args.json}", file=sys.stderr)


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def _unwritable(path):
    """Why `path` cannot be written, or None; checked before a run of minutes."""
    if os.path.isdir(path):
        return "is a directory"
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        return f"its folder {directory} does not exist"
    if not os.access(directory, os.W_OK | os.X_OK):
        return f"its folder {directory} is not writable"
    if os.path.exists(path) and not os.access(path, os.W_OK):
        return "exists and is not writable"
    return None


def _write_atomically(path, text):
    # Readers (and a run killed mid-write) see the old file or the new one,
    # never half of one.
    part = f"{path}.part"
    try:
        with open(part, "w") as f:
            f.write(text)
        os.replace(part, path)
    except BaseException:
        if os.path.exists(part):
            os.unlink(part)
        raise


def _progress_bar(done, total, label):
    width = 30
    filled = width * done // max(total, 1)
    line = f"[{'#' * filled}{'.' * (width - filled)}] {done}/{total} {label}"
    if sys.stderr.isatty():
        print(f"\r{line[:100]:<100}", end="\n" if done == total else "", file=sys.stderr,
              flush=True)
    else:
        print(line, file=sys.stderr, flush=True)


def _format_time(seconds) -> str:
    """A duration with three significant digits in ns, us, ms or s: "812 ns", "1.23 us"."""
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6), ("ns", 1e-9)):
        value = seconds / scale
        if abs(value) >= 1 or unit == "ns":
            digits = 2 if abs(value) < 10 else 1 if abs(value) < 100 else 0
            text = f"{value:.{digits}f}"
            if float(text) >= 1000 and unit != "s":  # 999.7 us reads as 1.00 ms
                return _format_time(1000 * scale)
            return f"{text} {unit}"
    raise AssertionError("unreachable")


COLUMNS = ("method", "result", "median", "spread", "GPU time", "GB/s", "vs base", "its spread",
           "vs ceil")

FOOTER = """\
result: view (the method returned the source's memory, zero-copy) or copy (new memory)
median: wall time per call (a device method's includes the wait that makes its result usable)
spread: interquartile range of the rounds' times
GB/s: the case's bytes / median, for copies only (a view moves no bytes: its figure is its time)
vs base: the time / the baseline's (named above its table), taken round by round, each pair
  back to back: the median of those ratios, below 1 is faster; only where the two make the same
  thing (views, copies) or the method is tensorbridge's answer to the baseline's call ("-": not
  comparable)
its spread: the quartiles of those per-round ratios
vs ceil: the time / the ceiling's (host memcpy for CPU memory, a raw pinned copy for the GPU
  link), round by round, for copies only"""


def _cells(row):
    """A result row's cells, in COLUMNS order; "" where a figure does not apply."""
    base = row.get("ratio_to_baseline")
    copies = row.get("copies", True)
    return [row["method"], "copy" if copies else "view", _format_time(row["median_s"]),
            _format_time(row["iqr_s"]),
            _format_time(row["gpu_median_s"]) if "gpu_median_s" in row else "",
            f"{row['bytes_per_s'] / 1e9:.2f}" if copies and row.get("bytes_per_s") else "",
            _format_ratio(base) if base is not None else "-",
            f"{row['ratio_q1']:.2f}-{row['ratio_q3']:.2f}" if base is not None
            and "ratio_q1" in row else "",
            _format_ratio(row["ratio_to_ceiling"]) if copies and "ratio_to_ceiling" in row else ""]


def _format_ratio(ratio) -> str:
    """A ratio with at least two significant digits: "0.42x", "473x", "3.8e-05x"."""
    if ratio < 0.01:
        return f"{ratio:.1e}x"
    return f"{ratio:.{2 if ratio < 10 else 1 if ratio < 100 else 0}f}x"


def _scaling(rows):
    """Rows per second on the most workers over those on one, per dask method."""
    rates = {}
    for row in rows:
        if row.get("rows_per_s") and row["method"].startswith("dask "):
            rates.setdefault(row["method"], {})[row["workers"]] = row["rows_per_s"]
    for method, by_workers in rates.items():
        most = max(by_workers)
        if most > 1 and 1 in by_workers:
            yield (f"{method}: {most} workers / 1 worker: "
                   f"{_format_ratio(by_workers[most] / by_workers[1])} the rows per second")


def _print_table(report, out):
    """The report as tables, one per case in run order, in columns aligned
    across all of them; failed methods in place; then the headline figures."""
    failed = report.get("failed", [])  # absent in schema 1 reports
    results = report["results"]
    columns = list(COLUMNS)
    if not any("gpu_median_s" in row for row in results):
        columns.remove("GPU time")  # a CPU-only run: no empty column
    keep = [COLUMNS.index(c) for c in columns]
    cells = {id(row): [full[i] for i in keep] for row in results for full in [_cells(row)]}
    widths = [max([len(c)] + [len(cells[id(r)][i]) for r in results])
              for i, c in enumerate(columns)]

    def line(values):
        return "  ".join(v.ljust(w) if i == 0 else v.rjust(w)
                         for i, (v, w) in enumerate(zip(values, widths))).rstrip()

    order = dict.fromkeys([c["case"] for c in report.get("cases", [])]
                          + [r["case"] for r in results] + [f["case"] for f in failed])
    entries = {c["case"]: c for c in report.get("cases", [])}
    for case in order:
        rows = [r for r in results if r["case"] == case]
        if not rows and not any(f["case"] == case for f in failed):
            continue  # measured elsewhere in the report (the distributed case)
        print(f"\n{case}{_case_note(entries.get(case), rows)}\n{line(columns)}", file=out)
        for row in rows:
            print(line(cells[id(row)]), file=out)
        for failure in (f for f in failed if f["case"] == case):
            error = failure["error"].splitlines()[-1] if failure["error"] else "?"
            print(f"{failure['method'].ljust(widths[0])}  FAILED: {error[:120]}", file=out)
    peak = report.get("collect_peak_memory")
    if peak:
        print("\ncollect, peak memory growth / result: " + ", ".join(
            f"{name} {value:.2f}x" if isinstance(value, float) else f"{name} {value}"
            for name, value in peak.items()), file=out)
    for row in report.get("distributed", {}).get("results", []):
        if row is report["distributed"]["results"][0]:
            print("\ndistributed (dask, local worker processes; ratios to the in-memory "
                  "transform in the same rounds):", file=out)
        ratio, rate = row.get("ratio_to_in_memory"), row.get("rows_per_s")
        loads = row.get("module_loads_per_worker")
        print(f"  {row['method']}, {row['workers']} worker(s): {_format_time(row['median_s'])}"
              + (" per block" if row["method"] == "overhead per block" else "")
              + (f", {_format_ratio(ratio)} in-memory" if ratio is not None else "")
              + (f", {rate:,.0f} rows/s" if rate is not None else "")
              + (f"; module loads per worker: {', '.join(map(str, loads.values()))} over "
                 f"{row.get('graphs', '?')} graphs" if loads is not None else ""), file=out)
    for text in _scaling(report.get("distributed", {}).get("results", [])):
        print(f"  {text}", file=out)
    headline = _figures(report)
    if headline:
        print("\nfigures (ratios measured side by side in this run):", file=out)
        for text in headline:
            print(f"  {text}", file=out)
    print(file=out)
    for skip in report["skipped"]:
        print(f"skipped: {_skipped_what(skip)}: {skip['reason']}", file=out)
    if failed:
        print(f"failed: {len(failed)} method(s), each shown in its case above and in the JSON "
              "with the full error", file=out)
    if not report.get("complete", True):
        print("incomplete: the run stopped before its last case", file=out)
    print(FOOTER, file=out)
    if "GPU time" in columns:
        print("GPU time: CUDA event time per call", file=out)


def _case_note(entry, rows):
    """What a case's ratios are taken against, and its batches per call."""
    entry = entry or {}
    baseline = entry.get("baseline") or next(
        (r["method"] for r in rows if r.get("ratio_to_baseline") == 1.0), None)
    ceiling = entry.get("ceiling") or next(
        (r["method"] for r in rows if r.get("ratio_to_ceiling") == 1.0), None)
    notes = [f"baseline: {baseline}"] if baseline else []
    if ceiling:
        notes.append(f"ceiling: {ceiling}")
    if entry.get("items"):
        notes.append(f"{entry['items']} batches per call")
    return f"  ({'; '.join(notes)})" if notes else ""


def _skipped_what(skip):
    if skip["method"] == "*":
        return f"every method of {skip['case']}"
    if skip["case"] == "*":
        return skip["method"]
    return f"{skip['method']} in {skip['case']}"


def _figures(report) -> list:
    """The headline ratios of a report, as sentences: the per-call cost of
    tb.to_numpy(t) and of ToNumpy().transform(t), and collect's per batch."""
    rows = report["results"]
    lines = []

    def find(case_start, method):
        return [r for r in rows if r["case"].startswith(case_start) and r["method"] == method
                and r.get("ratio_to_baseline") is not None]

    sweep = [r for r in find("cpu float32 ", "tb.to_numpy(t)") if _SWEEP.match(r["case"])]
    if sweep:
        ratios = sorted(r["ratio_to_baseline"] for r in sweep)
        spread = (_format_ratio(ratios[0]) if len(ratios) == 1
                  else f"{_format_ratio(ratios[0])[:-1]}-{_format_ratio(ratios[-1])}")
        times = sorted(r["median_s"] for r in sweep)
        lines.append(f"tb.to_numpy(t) per call: {spread} t.numpy() ({_format_time(times[0])} to "
                     f"{_format_time(times[-1])}, {len(sweep)} sizes)")
    for row in find("cpu ToNumpy().transform(t)", "ToNumpy().transform(t)"):
        lines.append(f"ToNumpy().transform(t) per call: {_format_ratio(row['ratio_to_baseline'])} "
                     f"t.numpy() ({_format_time(row['median_s'])}, {row['case'][4:]})")
    for row in find("cpu collect ", "tb.collect(batches)"):
        if "per_item_s" in row:
            lines.append(f"tb.collect(batches) per batch: {_format_ratio(row['ratio_to_baseline'])}"
                         f" np.concatenate([t.numpy() ...]) ({_format_time(row['per_item_s'])} "
                         f"per batch, {row['case'][4:]})")
    return lines


# The float32 size sweep's case titles ("cpu float32 4 KiB", "cuda float32 1 GiB").
_SWEEP = re.compile(r"^(cpu|cuda) float32 \d+ (B|KiB|MiB|GiB)$")


def _plot(report, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure = _plot_figure(report, plt)
    figure.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(figure)


def _plot_figure(report, plt):
    """The float32 size sweep: a panel of time per call for views, one of GB/s
    (with the ceiling) for copies, per device measured."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

    from ._bench import format_bytes

    rows = [r for r in report["results"] if _SWEEP.match(r["case"])]
    panels = [(device, copies) for device in ("cpu", "cuda") for copies in (False, True)
              if any(r["device"] == device and r.get("copies", True) == copies for r in rows)]
    figure, axes = plt.subplots(1, max(len(panels), 1), figsize=(6 * max(len(panels), 1), 5.2),
                                squeeze=False)
    axes = axes[0]
    if not panels:
        axes[0].text(0.5, 0.5, "no float32 size sweep was measured", ha="center", va="center")
        axes[0].set_axis_off()
    for axis, (device, copies) in zip(axes, panels):
        mine = [r for r in rows if r["device"] == device and r.get("copies", True) == copies]
        label = (lambda y: f"{y:.3g}") if copies else _format_time
        values = []
        for method in dict.fromkeys(r["method"] for r in mine):
            points = sorted((r["bytes"], r["bytes_per_s"] / 1e9 if copies else r["median_s"])
                            for r in mine if r["method"] == method)
            ceiling = "ceiling" in method
            axis.plot(*zip(*points), marker="" if ceiling else "o", label=method,
                      linestyle="--" if ceiling else "-", linewidth=2 if ceiling else 1.5)
            for x, y in points:  # every point carries its own value
                axis.annotate(label(y), (x, y), textcoords="offset points", xytext=(3, 3),
                              fontsize=6)
            values += [y for _, y in points]
        sizes = sorted({r["bytes"] for r in mine})
        axis.set_xscale("log")
        axis.xaxis.set_major_locator(FixedLocator(sizes))
        axis.xaxis.set_minor_locator(NullLocator())
        axis.xaxis.set_major_formatter(FuncFormatter(lambda x, _: format_bytes(int(x))))
        axis.set_yscale("log")
        ticks = _log_ticks(min(values), max(values))
        axis.set_ylim(ticks[0] / 1.2, ticks[-1] * 1.2)  # no point on the frame
        axis.yaxis.set_major_locator(FixedLocator(ticks))
        axis.yaxis.set_minor_locator(NullLocator())
        axis.yaxis.set_major_formatter(FuncFormatter(lambda y, _, label=label: label(y)))
        axis.set_xlabel("tensor size")
        if copies:
            axis.set(ylabel="GB/s (higher is better)", title=f"{device}: copies, GB/s")
        else:
            axis.set(ylabel="time per call (lower is better)",
                     title=f"{device}: zero-copy views, time per call")
        # below the panel, never over a line
        axis.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2,
                    frameon=False)
    figure.suptitle(_plot_title(report), fontsize=9)
    figure.tight_layout()
    return figure


def _log_ticks(low, high):
    """Ticks 1-2-5 per decade from the last at or below `low` to the first at
    or above `high`, finer (1-1.5-2-3-5-7) where that gives fewer than five:
    every point then has a value near it, below and above."""
    import math

    for steps in ((1, 2, 5), (1, 1.5, 2, 3, 5, 7)):
        candidates = [step * 10.0**exponent
                      for exponent in range(math.floor(math.log10(low)) - 1,
                                            math.ceil(math.log10(high)) + 1)
                      for step in steps]
        first = max(t for t in candidates if t <= low)
        last = min(t for t in candidates if t >= high)
        ticks = [t for t in candidates if first <= t <= last]
        if len(ticks) >= 5:
            break
    return ticks


def _plot_title(report):
    versions, hardware = report.get("versions", {}), report.get("hardware", {})
    machine = f"{hardware.get('cpu') or '?'} ({hardware.get('cpus') or '?'} cores)"
    if hardware.get("gpus"):
        machine += ", " + ", ".join(hardware["gpus"])
    libraries = ", ".join(f"{name} {versions[name]}" for name in ("tensorbridge", "torch", "numpy")
                          if versions.get(name))
    date = (report.get("date") or "date not recorded")[:10]
    return f"tensorbridge bench, {date}: {machine}; {libraries}"


def _info(as_json: bool = False) -> int:
    from . import _bench as bench
    from . import cuda_status

    # Nothing here imports torch or scikit-learn (seconds each): versions come
    # from the installed packages' metadata, CUDA from tensorbridge's own probe.
    versions = bench.versions()
    route = _torch_route(versions["torch"])
    hardware = bench.hardware()
    cuda = cuda_status()
    if cuda["available"] and sys.stderr.isatty():  # torch's import and the GPU's start: seconds
        print("tensorbridge info: measuring the GPU link (importing torch) ...", end="\r",
              file=sys.stderr, flush=True)
    measured = bench.quick_measurements()
    if cuda["available"] and sys.stderr.isatty():
        print(" " * 70, end="\r", file=sys.stderr, flush=True)
    stats = measured.pop("pinned_pool")
    pinned = {"available": cuda["available"],
              "reason": "" if cuda["available"] else
              f"pinned memory needs a usable CUDA driver: {cuda['reason']}", **stats}
    if as_json:
        print(json.dumps({"versions": versions, "torch_route": route, "hardware": hardware,
                          "cuda": cuda, "pinned_pool": pinned, "measurements": measured},
                         indent=2, default=str))
        return 0
    print("versions:")
    for name, version in versions.items():
        print(f"  {name:13} {version or 'not installed'}")
    if route is not None:
        print(f"torch tensors: C fast path over {route}")
    print(f"cpu: {hardware['cpu']} ({hardware['cpus']} cores), memory "
          f"{bench.format_bytes(hardware['memory_bytes'] or 0)}")
    if cuda["available"]:
        print(f"CUDA driver: {cuda['driver_version']} from {cuda['library']}")
        for index, name in enumerate(hardware["gpus"]):
            print(f"  cuda:{index} {name}")
        limit = stats["limit_bytes"]
        print(f"pinned pool: limit {bench.format_bytes(limit) if limit < 2**63 else 'none'}, "
              f"reserved {bench.format_bytes(stats['reserved_bytes'])}, "
              f"in use {bench.format_bytes(stats['in_use_bytes'])}")
    else:
        print(f"CUDA: unusable, CPU conversions only: {cuda['reason']}")
        print(f"pinned memory: none, since CUDA is unusable: {cuda['reason']}")
    print(f"host memcpy: {measured['host_memcpy_GB_per_s']:.1f} GB/s")
    if "device_to_pinned_GB_per_s" in measured:
        print(f"GPU -> pinned: {measured['device_to_pinned_GB_per_s']:.1f} GB/s")
    return 0


def _torch_route(version):
    """How tensorbridge reads this torch's tensors (None without torch)."""
    has_api = _torch.reads_exchange_api(version)
    if has_api is None:
        return None
    since = ".".join(map(str, _torch.EXCHANGE_API_SINCE))
    return ("the DLPack C exchange API" if has_api
            else f"Tensor.numpy() (this torch has no DLPack C exchange API: torch < {since})")


if __name__ == "__main__":
    sys.exit(main())
