"""The ``tensorbridge`` command (also ``python -m tensorbridge``).

    tensorbridge bench [--quick] [--device cpu|cuda|all] [--json PATH|-] [--plot PATH.png]
    tensorbridge info

Exit status: 0 ok, 1 failure (for bench: a method that raised, recorded in the
table and the JSON while the rest ran; or no GPU for --device cuda), 2 usage
error (an output path that cannot be written is one, found before the run).
Nothing is written but the paths named on the command line; `--json PATH` is
rewritten atomically after every case, so a run stopped part-way leaves the
cases it finished ("complete": false).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="tensorbridge",
        description="Measure and inspect tensorbridge's conversions on this machine.")
    commands = parser.add_subparsers(dest="command", metavar="{bench,info}", required=True)

    bench = commands.add_parser(
        "bench", help="compare conversion methods side by side",
        description="Time every conversion method this machine supports (torch, NumPy, "
                    "CuPy, tensorbridge) on the same data, with ratios to the baselines "
                    "and to the memory and link ceilings, and the seed's three workflows.")
    bench.add_argument("--quick", action="store_true",
                       help="small sizes and short budgets (well under a minute)")
    bench.add_argument("--device", choices=["cpu", "cuda", "all"], default="all",
                       help="which memory to measure (default: all; CUDA only when found)")
    bench.add_argument("--json", metavar="PATH",
                       help="also write the full report as JSON ('-' for standard output)")
    bench.add_argument("--plot", metavar="PATH.png",
                       help="also plot throughput against size (needs matplotlib: "
                            "pip install 'tensorbridge[bench]')")
    bench.add_argument("--repeats", type=_positive_int, metavar="N",
                       help="rounds per case (default: 15, 5 with --quick)")
    bench.add_argument("--budget", type=_positive_float, metavar="SECONDS",
                       help="time budget per case once 3 rounds are done")
    bench.add_argument("--no-workflows", action="store_true",
                       help="skip the three end-to-end workflows")

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
            import matplotlib  # noqa: F401
        except ImportError:
            print("tensorbridge bench: --plot needs matplotlib; install it with "
                  "pip install 'tensorbridge[bench]'", file=sys.stderr)
            return 1
    if args.device == "cuda" and not _torch_sees_a_gpu():
        print("tensorbridge bench: --device cuda: no CUDA GPU found "
              "(torch is missing or torch.cuda.is_available() is False)", file=sys.stderr)
        return 1
    from . import _bench as bench

    devices = ("cpu", "cuda") if args.device == "all" else (args.device,)
    settings = bench.Settings.make(args.quick, devices, args.repeats, args.budget,
                                   workflows=not args.no_workflows)
    to_stdout = args.json == "-"
    latest = {}

    def checkpoint(report):
        latest["report"] = report
        if args.json and not to_stdout:
            _write_atomically(args.json, json.dumps(report, indent=2, default=str) + "\n")

    # SIGTERM (a time limit: `timeout`) ends the run as Ctrl-C does: what was
    # measured is written and shown before the exit.
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        report = bench.run(settings, progress=_progress_bar, checkpoint=checkpoint)
    except KeyboardInterrupt:
        report = latest.get("report")
        if report is not None:
            report["interrupted"] = True
            _finish(report, args, to_stdout, checkpoint)
        print("interrupted", file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGTERM, previous)
    _finish(report, args, to_stdout, checkpoint)
    if args.plot:
        _plot(report, args.plot)
    if report["failed"]:
        print(f"tensorbridge bench: {len(report['failed'])} method(s) failed; the others were "
              "measured (see the table)", file=sys.stderr)
        return 1
    return 0


def _finish(report, args, to_stdout, checkpoint):
    _print_table(report, sys.stderr if to_stdout else sys.stdout)
    if to_stdout:
        print(json.dumps(report, indent=2, default=str))
    else:
        checkpoint(report)


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def _torch_sees_a_gpu():
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


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


def _print_table(report, out):
    """The report as tables, one per case in run order; failed methods in place."""
    header = (f"{'method':38} {'median':>11} {'spread':>10} {'GPU time':>11} {'GB/s':>8} "
              f"{'vs base':>8} {'vs ceil':>8}")
    failed = report.get("failed", [])  # absent in schema 1 reports
    order = dict.fromkeys([c["case"] for c in report.get("cases", [])]
                          + [r["case"] for r in report["results"]] + [f["case"] for f in failed])
    for case in order:
        print(f"\n{case}\n{header}", file=out)
        for row in (r for r in report["results"] if r["case"] == case):
            gpu = f"{row['gpu_median_s'] * 1e6:9.1f}us" if "gpu_median_s" in row else " " * 11
            rate = f"{row['bytes_per_s'] / 1e9:8.2f}" if row.get("bytes_per_s") else " " * 8
            base = row.get("ratio_to_baseline")
            base = f"{base:7.2f}x" if base is not None else f"{'-':>8}"
            ceiling = f"{row['ratio_to_ceiling']:7.2f}x" if "ratio_to_ceiling" in row else " " * 8
            print(f"{row['method'][:38]:38} {row['median_s'] * 1e6:9.2f}us "
                  f"{row['iqr_s'] * 1e6:8.2f}us {gpu} {rate} {base} {ceiling}", file=out)
        for failure in (f for f in failed if f["case"] == case):
            error = failure["error"].splitlines()[-1] if failure["error"] else "?"
            print(f"{failure['method'][:38]:38} FAILED: {error[:120]}", file=out)
    peak = report.get("collect_peak_memory")
    if peak:
        print("\ncollect, peak memory growth / result: " + ", ".join(
            f"{name} {value:.2f}x" if isinstance(value, float) else f"{name} {value}"
            for name, value in peak.items()), file=out)
    for skip in report["skipped"]:
        print(f"skipped: {skip['method']} ({skip['case']}): {skip['reason']}", file=out)
    if failed:
        print(f"failed: {len(failed)} method(s), each shown in its case above and in the JSON "
              "with the full error", file=out)
    if not report.get("complete", True):
        print("incomplete: the run stopped before its last case", file=out)
    print("\nmedian: per call; spread: interquartile range; vs base: time / the case's first "
          "method; vs ceil: time / the memory (CPU) or link (GPU) ceiling", file=out)


def _plot(report, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(12, 5))
    for axis, device in zip(axes, ("cpu", "cuda")):
        rows = [r for r in report["results"] if r["device"] == device
                and r["case"].startswith(f"{device} float32") and r.get("bytes_per_s")]
        for method in dict.fromkeys(r["method"] for r in rows):
            points = sorted((r["bytes"], r["bytes_per_s"] / 1e9) for r in rows
                            if r["method"] == method)
            axis.plot(*zip(*points), marker="o", label=method)
        axis.set(xscale="log", yscale="log", xlabel="bytes", ylabel="GB/s",
                 title=f"{device}: throughput against size" + ("" if rows else " (not measured)"))
        if rows:
            axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def _info(as_json: bool = False) -> int:
    from . import _bench as bench
    from . import cuda_status, pinned_memory_stats

    versions = bench.versions()
    torch = sys.modules.get("torch")  # imported by versions() when installed
    route = None
    if torch is not None:
        route = ("the DLPack C exchange API" if hasattr(torch.Tensor, "__dlpack_c_exchange_api__")
                 else "Tensor.numpy() (this torch has no DLPack C exchange API: torch < 2.10)")
    hardware = bench.hardware()
    cuda = cuda_status()
    stats = pinned_memory_stats()
    figures = bench.quick_measurements()
    if as_json:
        print(json.dumps({"versions": versions, "torch_route": route, "hardware": hardware,
                          "cuda": cuda, "pinned_pool": stats, "measurements": figures},
                         indent=2, default=str))
        return 0
    print("versions:")
    for name, version in versions.items():
        print(f"  {name:13} {version or 'not installed'}")
    if route is not None:
        print(f"torch tensors: C fast path over {route}")
    print(f"cpu: {hardware['cpu']} ({hardware['cpus']} cores), memory "
          f"{(hardware['memory_bytes'] or 0) / 2**30:.1f} GiB")
    if cuda["available"]:
        print(f"CUDA driver: {cuda['driver_version']} from {cuda['library']}")
        for index, name in enumerate(hardware["gpus"]):
            print(f"  cuda:{index} {name}")
        print(f"pinned pool: limit {stats['limit_bytes'] / 2**30:.2f} GiB, reserved "
              f"{stats['reserved_bytes']} B, in use {stats['in_use_bytes']} B")
    else:
        print(f"CUDA: unusable, CPU conversions only: {cuda['reason']}")
        print("pinned pool: none (pinned memory needs a usable CUDA driver)")
    print(f"host memcpy: {figures['host_memcpy_GB_per_s']:.1f} GB/s")
    if "device_to_pinned_GB_per_s" in figures:
        print(f"GPU -> pinned: {figures['device_to_pinned_GB_per_s']:.1f} GB/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
