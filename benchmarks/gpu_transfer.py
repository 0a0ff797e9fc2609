"""GPU -> host transfers: tensorbridge against `.cpu().numpy()`, non_blocking
copies, CuPy's asnumpy, and the ceilings (a raw pinned copy for the link, a
host memcpy for memory), side by side in one run on one GPU.

    python benchmarks/gpu_transfer.py [--quick] [--json PATH]

Without a CUDA GPU (torch without CUDA, or no driver) it says so, writes
{"status": "not measured"} and exits 0: GPU figures are never estimated.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time

import numpy as np


def measure(fn, sync, repeats, budget_s):
    """Median and IQR wall seconds per call, after a warm-up, within a budget."""
    fn()
    sync()
    samples = []
    deadline = time.perf_counter() + budget_s
    while len(samples) < repeats or (time.perf_counter() < deadline and len(samples) < 3 * repeats):
        start = time.perf_counter()
        fn()
        sync()
        samples.append(time.perf_counter() - start)
        if time.perf_counter() > deadline and len(samples) >= 3:
            break
    q = statistics.quantiles(samples, n=4) if len(samples) > 1 else samples * 3
    return {"median_s": q[1], "iqr_s": q[2] - q[0], "samples": len(samples)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", metavar="PATH")
    args = parser.parse_args(argv)

    report = {"benchmark": "gpu_transfer", "quick": args.quick}
    try:
        import torch
    except ImportError:
        torch = None
    if torch is None or not torch.cuda.is_available():
        report.update(status="not measured", reason="no CUDA GPU visible to torch")
        print("no CUDA GPU: GPU transfer figures not measured")
        return _write(report, args.json)

    import tensorbridge as tb

    try:
        import cupy
    except ImportError:
        cupy = None
    report.update(status="measured", versions={
        "python": platform.python_version(), "torch": torch.__version__,
        "numpy": np.__version__, "tensorbridge": tb.__version__,
        "cupy": getattr(cupy, "__version__", None),
        "cuda_driver": tb._core.driver_version()},
        gpu=torch.cuda.get_device_name(0))
    sync = torch.cuda.synchronize
    sizes = [4 << 10, 64 << 10, 16 << 20, 256 << 20] + ([] if args.quick else [1 << 30])
    repeats, budget = (5, 1.0) if args.quick else (15, 4.0)
    rows = []
    for nbytes in sizes:
        t = torch.ones(nbytes // 4, device="cuda")
        pinned_t = torch.empty(t.shape, pin_memory=True)
        pinned_np = tb.empty_pinned(t.shape, np.float32)
        host = np.ones(t.shape, np.float32)
        host_out = np.empty_like(host)
        methods = {
            ".cpu().numpy()": lambda: t.cpu().numpy(),
            "non_blocking=True + sync": lambda: t.to("cpu", non_blocking=True),
            "raw pinned copy (link ceiling)": lambda: pinned_t.copy_(t, non_blocking=True),
            "host memcpy (memory ceiling)": lambda: np.copyto(host_out, host),
            "tb.to_numpy(t)": lambda: tb.to_numpy(t),
            "tb.to_numpy(t, out=pinned)": lambda: tb.to_numpy(t, out=pinned_np),
        }
        if cupy is not None:
            methods["cupy.asnumpy"] = lambda: cupy.asnumpy(cupy.from_dlpack(t))
        results = {name: measure(fn, sync, repeats, budget) for name, fn in methods.items()}
        base = results[".cpu().numpy()"]["median_s"]
        ceiling = results["raw pinned copy (link ceiling)"]["median_s"]
        for name, r in results.items():
            r["GB_per_s"] = nbytes / r["median_s"] / 1e9
            r["ratio_to_cpu_numpy"] = r["median_s"] / base
            r["fraction_of_link_ceiling"] = ceiling / r["median_s"]
        rows.append({"bytes": nbytes, "methods": results})
        print(f"{nbytes:>12,} B")
        for name, r in results.items():
            print(f"  {name:34} {r['median_s'] * 1e6:11.1f} us {r['GB_per_s']:8.2f} GB/s "
                  f"x{r['ratio_to_cpu_numpy']:.2f} of .cpu().numpy()")
        del t, pinned_t, pinned_np
    small = [torch.ones(1024, device="cuda") for _ in range(1000)]
    loop = measure(lambda: [x.cpu().numpy() for x in small], sync, repeats, budget)
    packed = measure(lambda: tb.collect(small), sync, repeats, budget)
    report["small_1000x4KB"] = {"cpu_loop": loop, "tb.collect": packed,
                                "speedup": loop["median_s"] / packed["median_s"]}
    print(f"1000 x 4 KB: .cpu() loop {loop['median_s'] * 1e3:.2f} ms, tb.collect "
          f"{packed['median_s'] * 1e3:.2f} ms, {report['small_1000x4KB']['speedup']:.1f}x")
    report["sizes"] = rows
    return _write(report, args.json)


def _write(report, path) -> int:
    if path:
        text = json.dumps(report, indent=2)
        if path == "-":
            print(text)
        else:
            with open(path, "w") as f:
                f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
