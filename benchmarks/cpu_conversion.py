"""Per-call cost of turning CPU tensors into NumPy arrays, tensorbridge against
the calls people use today, measured side by side in one run.

    python benchmarks/cpu_conversion.py [--quick] [--json PATH]

Every method is timed in interleaved rounds (so machine noise hits all of them
alike); the table shows the median per-call time, the spread between rounds
(interquartile range) and the ratio to the row's baseline.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import timeit

import numpy as np
import torch

import tensorbridge as tb


def time_per_call(methods: dict, rounds: int, budget_s: float) -> dict:
    """Median and IQR of per-call seconds for each method, interleaved by round."""
    timers = {}
    for name, fn in methods.items():
        fn()  # warm-up, and proof that it runs (every method is a lambda: equal call overhead)
        timer = timeit.Timer(fn)
        number, elapsed = timer.autorange()
        # aim for each sample to take budget / (rounds * methods) seconds
        target = budget_s / (rounds * len(methods))
        timers[name] = (timer, max(1, int(number * target / max(elapsed, 1e-9))))
    samples = {name: [] for name in methods}
    for _ in range(rounds):
        for name, (timer, number) in timers.items():
            samples[name].append(timer.timeit(number) / number)
    result = {}
    for name, values in samples.items():
        q1, median, q3 = statistics.quantiles(values, n=4) if len(values) > 1 else [values[0]] * 3
        result[name] = {"median_s": median, "iqr_s": q3 - q1}
    return result


def cases(quick: bool):
    small = torch.ones(1000)
    grad = torch.ones(1000, requires_grad=True)
    n_big = 1 << (20 if quick else 24)
    bf16_small = torch.ones(1000, dtype=torch.bfloat16)
    bf16_big = torch.ones(n_big, dtype=torch.bfloat16)
    fp8_big = torch.ones(n_big, dtype=torch.float8_e4m3fn)
    yield "float32, 1000 elements", "t.numpy()", {
        "t.numpy()": lambda: small.numpy(),
        "np.asarray(t)": lambda: np.asarray(small),
        "np.from_dlpack(t)": lambda: np.from_dlpack(small),
        "tb.to_numpy(t)": lambda: tb.to_numpy(small),
    }
    yield "float32 requiring grad, 1000 elements", "t.detach().numpy()", {
        "t.detach().numpy()": lambda: grad.detach().numpy(),
        "tb.to_numpy(t)": lambda: tb.to_numpy(grad),
    }
    yield "bfloat16, 1000 elements", "t.float().numpy()", {
        "t.float().numpy()": lambda: bf16_small.float().numpy(),
        "float32 t.numpy()": lambda: small.numpy(),
        "tb.to_numpy(t)": lambda: tb.to_numpy(bf16_small),
    }
    yield f"bfloat16, {n_big >> 20} Mi elements", "t.float().numpy()", {
        "t.float().numpy()": lambda: bf16_big.float().numpy(),
        "tb.to_numpy(t)": lambda: tb.to_numpy(bf16_big),
    }
    batches = [np.full((1024, 512), i, np.float64) for i in range(16 if quick else 64)]
    yield f"collect {len(batches)} x 4 MiB CPU batches", "np.concatenate(batches)", {
        "np.concatenate(batches)": lambda: np.concatenate(batches),
        "tb.collect(batches)": lambda: tb.collect(batches),
    }
    yield f"float8_e4m3fn, {n_big >> 20} Mi elements", "t.float().numpy()", {
        "t.float().numpy()": lambda: fp8_big.float().numpy(),
        "tb.to_numpy(t)": lambda: tb.to_numpy(fp8_big),
    }


def import_overhead_s(repeats: int) -> dict:
    """Median time of `import tensorbridge` in a fresh interpreter that already
    imported numpy."""
    code = ("import time, numpy; t = time.perf_counter(); import tensorbridge; "
            "print(time.perf_counter() - t)")
    values = [float(subprocess.run([sys.executable, "-c", code], capture_output=True,
                                   text=True, check=True).stdout) for _ in range(repeats)]
    return {"median_s": statistics.median(values), "max_s": max(values)}


def collect_peak_memory(batch_count: int) -> dict:
    """Peak RSS growth, as a multiple of the result, of gathering `batch_count`
    generated 4 MiB batches (each freed after use), in fresh processes."""
    # The peak is read from VmHWM after resetting it (a forked child inherits
    # its parent's ru_maxrss, which would hide the growth).
    code = ("import numpy as np, tensorbridge as tb\n"
            "def peak():\n"
            "    line = [l for l in open('/proc/self/status') if l.startswith('VmHWM')][0]\n"
            "    return int(line.split()[1]) * 1024\n"
            "gen = (np.full((1024, 512), i, np.float64) for i in range({n}))\n"
            "open('/proc/self/clear_refs', 'w').write('5')\n"
            "before = peak()\n"
            "r = {how}\n"
            "print((peak() - before) / r.nbytes)")
    ways = {"list + np.concatenate": "np.concatenate(list(gen))", "tb.collect": "tb.collect(gen)"}
    return {name: float(subprocess.run([sys.executable, "-c", code.format(n=batch_count, how=how)],
                                       capture_output=True, text=True, check=True).stdout)
            for name, how in ways.items()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds and smaller tensors")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    args = parser.parse_args(argv)
    rounds = 5 if args.quick else 15
    budget = 0.5 if args.quick else 3.0

    report = {"settings": {"quick": args.quick, "rounds": rounds},
              "versions": {"python": platform.python_version(), "numpy": np.__version__,
                           "torch": torch.__version__, "tensorbridge": tb.__version__},
              "machine": {"cpu": platform.processor() or platform.machine()},
              "cases": []}
    print(f"{'case / method':48} {'median':>11} {'spread':>10} {'ratio':>7}")
    for title, baseline, methods in cases(args.quick):
        results = time_per_call(methods, rounds, budget)
        print(title)
        for name, r in results.items():
            ratio = r["median_s"] / results[baseline]["median_s"]
            r["ratio_to_baseline"] = ratio
            print(f"  {name:46} {r['median_s'] * 1e6:9.3f}us {r['iqr_s'] * 1e6:8.3f}us "
                  f"{ratio:6.2f}x")
        report["cases"].append({"case": title, "baseline": baseline, "methods": results})
    peak = collect_peak_memory(16 if args.quick else 64)
    report["collect_peak_memory_x_result"] = peak
    print("collect peak memory / result: " +
          ", ".join(f"{name} {value:.2f}x" for name, value in peak.items()))
    imp = import_overhead_s(5 if args.quick else 15)
    report["import_tensorbridge_s"] = imp
    print(f"import tensorbridge (after numpy): median {imp['median_s'] * 1e3:.1f} ms, "
          f"max {imp['max_s'] * 1e3:.1f} ms")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
