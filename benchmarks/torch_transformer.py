"""TorchTransformer against the hand-written loop people use today:

    with torch.no_grad():
        feats = [model(torch.from_numpy(X[i:i + b]).to(dev)).cpu().numpy() for i in ...]
    np.concatenate(feats)

side by side in one run, on the CPU and (when present) on a GPU, where the
transform is also compared with compute alone and copies alone.

    python benchmarks/torch_transformer.py [--quick] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import numpy as np
import torch

from tensorbridge.sklearn import TorchTransformer


def timed(fn, sync, repeats):
    fn()
    sync()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def run(device: str, n: int, repeats: int) -> dict:
    torch.manual_seed(0)
    X = np.random.default_rng(0).standard_normal((n, 256)).astype(np.float32)
    model = torch.nn.Sequential(torch.nn.Linear(256, 1024), torch.nn.GELU(),
                                torch.nn.Linear(1024, 512)).to(device).eval()
    batch = 4096
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def seed_loop():
        with torch.no_grad():
            feats = [model(torch.from_numpy(X[i:i + batch]).to(device)).cpu().numpy()
                     for i in range(0, n, batch)]
        return np.concatenate(feats)

    transformer = TorchTransformer(model, batch_size=batch, device=device).fit(X[:10])
    results = {"seed loop": timed(seed_loop, sync, repeats),
               "TorchTransformer.transform": timed(lambda: transformer.transform(X), sync,
                                                   repeats)}
    np.testing.assert_allclose(transformer.transform(X), seed_loop(), rtol=1e-4, atol=1e-4)
    if device == "cuda":
        on_device = [torch.from_numpy(X[i:i + batch]).to(device) for i in range(0, n, batch)]
        outputs = [torch.empty(len(b), 512, device=device) for b in on_device]

        def compute_alone():
            with torch.inference_mode():
                for b in on_device:
                    model(b)

        def copies_alone():
            for i, (b, o) in enumerate(zip(on_device, outputs)):
                b.copy_(torch.from_numpy(X[i * batch:i * batch + len(b)]), non_blocking=True)
                o.cpu()

        results["compute alone"] = timed(compute_alone, sync, repeats)
        results["copies alone"] = timed(copies_alone, sync, repeats)
        results["wall / max(compute, copies)"] = results["TorchTransformer.transform"] / max(
            results["compute alone"], results["copies alone"])
    results["speedup over seed loop"] = results["seed loop"] / results["TorchTransformer.transform"]
    return results


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", metavar="PATH")
    args = parser.parse_args(argv)
    n, repeats = (20_000, 3) if args.quick else (100_000, 7)
    report = {"benchmark": "torch_transformer", "rows": n, "cpu": run("cpu", n, repeats)}
    if torch.cuda.is_available():
        report["cuda"] = run("cuda", n * 4, repeats)
    else:
        report["cuda"] = "not measured: no CUDA GPU visible to torch"
    for device in ("cpu", "cuda"):
        figures = report[device]
        print(f"{device}:")
        if isinstance(figures, str):
            print(f"  {figures}")
            continue
        for name, value in figures.items():
            unit = "x" if "/" in name or "speedup" in name else " s"
            print(f"  {name:32} {value:10.4f}{unit}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
