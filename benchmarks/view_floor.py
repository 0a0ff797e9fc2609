"""Where the time of ``tb.to_numpy(t)`` goes, for a CPU tensor, timed from C.

    python benchmarks/view_floor.py [--calls N] [--repeats R] [--json PATH]

Times, per call and without a Python loop around them: ``t.numpy()``,
``tb.to_numpy(t)``, and the four things a safe zero-copy view of a torch
tensor cannot do without: torch's DLPack exchange-API read (data, shape,
strides, dtype), ``t.is_neg()`` (the exchange API reports a neg-bit tensor's
raw memory, whose values have the wrong sign), ``t.untyped_storage()`` (the
view's base, which keeps the memory alive whatever is later done to ``t``) and
NumPy's making and freeing of the view array. Their sum is the floor of any
such view; the rest of ``tb.to_numpy(t)`` is tensorbridge's own, at most (each
part is timed alone, with warm caches: inside the whole call they cost more).
Each figure is the best of R repeats of N calls, interleaved, in one run.

Needs a C compiler and NumPy's headers (the build requirements): the harness,
``view_floor/harness.c``, is built on the fly into a temporary folder.
"""

from __future__ import annotations

import argparse
import importlib.machinery
import importlib.util
import json
import os
import shlex
import subprocess
import sys
import sysconfig
import tempfile


def build_harness(folder):
    """Compiles harness.c into `folder` and imports it."""
    import numpy as np

    source = os.path.join(os.path.dirname(os.path.abspath(__file__)), "view_floor", "harness.c")
    target = os.path.join(folder, "view_floor_harness" + sysconfig.get_config_var("EXT_SUFFIX"))
    compiler = shlex.split(sysconfig.get_config_var("CC") or "cc")
    subprocess.run([*compiler, "-O2", "-shared", "-fPIC", source, "-o", target,
                    "-I" + sysconfig.get_paths()["include"], "-I" + np.get_include()],
                   check=True)
    loader = importlib.machinery.ExtensionFileLoader("view_floor_harness", target)
    spec = importlib.util.spec_from_file_location("view_floor_harness", target, loader=loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def measure(harness, calls=200_000, repeats=7):
    """The figures, in ns per call, and each as a ratio to ``t.numpy()``."""
    import torch

    import tensorbridge as tb

    t = torch.ones(16)
    like = t.numpy()
    parts = {
        "t.numpy()": lambda: harness.call(torch.Tensor.numpy, t, calls),
        "tb.to_numpy(t)": lambda: harness.call(tb.to_numpy, t, calls),
        "torch: exchange-API read": lambda: harness.exchange(t, calls),
        "torch: t.is_neg()": lambda: harness.method(t, "is_neg", calls),
        "torch: t.untyped_storage()": lambda: harness.method(t, "untyped_storage", calls),
        "NumPy: the view array": lambda: harness.view(like, t, calls),
    }
    best = {name: float("inf") for name in parts}
    for _ in range(repeats):  # interleaved, so that a busy moment hits every figure alike
        for name, run in parts.items():
            best[name] = min(best[name], run())
    floor = sum(best[name] for name in list(parts)[2:])
    best["the four together: the floor"] = floor
    best["tensorbridge's own, at most"] = best["tb.to_numpy(t)"] - floor
    base = best["t.numpy()"]
    return {"torch": torch.__version__, "tensor": "torch.ones(16), float32",
            "calls": calls, "repeats": repeats,
            "ns_per_call": best, "ratio_to_t_numpy": {k: v / base for k, v in best.items()}}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=200_000)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as folder:
        report = measure(build_harness(folder), args.calls, args.repeats)
    print(f"torch {report['torch']}, {report['tensor']}; best of {args.repeats} x "
          f"{args.calls} calls, from C")
    print(f"{'':32} {'ns/call':>8} {'x t.numpy()':>12}")
    for name, ns in report["ns_per_call"].items():
        indent = "  " if name not in ("t.numpy()", "tb.to_numpy(t)") else ""
        print(f"{indent + name:32} {ns:8.1f} {report['ratio_to_t_numpy'][name]:12.3f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
            f.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
