"""Old-vs-new timing of the scikit-learn layer's workflows, interleaved.

Two source trees of ``tensorbridge`` (say, main's and a branch's; the native
core must be the same build, since only Python is compared) are timed in
child processes taken in turn, A/B/A/B..., so that drift of a shared machine
falls on both alike. Each child times every workflow (median of repeats
within a time budget, after a warm-up); the report is, per workflow, the
median over rounds of the new/old ratio, with its quartiles.

Usage (from a checkout with the package built, e.g. an editable install)::

    python benchmarks/ab_sklearn_layer.py OLD_TREE NEW_TREE [--rounds 7]

where each tree holds a ``tensorbridge`` package directory (``git archive
<commit> src/tensorbridge | tar -x -C DIR --strip-components=1``, plus the
built ``_core`` extension copied in).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

WORKFLOWS = ("TorchTransformer fit+transform 20k x 64", "TorchTransformer transform 20k x 64",
             "ToNumpy fit_transform tensor 20k x 64", "ToNumpy transform ndarray 20k x 64",
             "ToDevice('cpu') fit_transform 20k x 64",
             "AugmentedEstimator fit 2k images x 4 views", "AugmentedEstimator predict 2k images",
             "collect 2,000 tensors of 256 B (list)", "collect 2,000 tensors of 256 B (generator)")


def child(tree: str, budget_s: float) -> None:
    # Import tensorbridge from `tree` only: drop an editable install's finder.
    sys.meta_path[:] = [f for f in sys.meta_path
                        if "_editable_skbc" not in type(f).__module__]
    sys.path.insert(0, tree)
    import numpy as np
    import torch
    from sklearn.linear_model import Ridge

    import tensorbridge as tb
    from tensorbridge.sklearn import AugmentedEstimator, ToDevice, ToNumpy, TorchTransformer

    assert tb.__file__.startswith(tree), tb.__file__
    torch.manual_seed(0)
    torch.set_num_threads(1)  # two cores, shared: one thread each, steadier
    rng = np.random.default_rng(0)
    X = rng.standard_normal((20_000, 64)).astype(np.float32)
    tensor = torch.from_numpy(X.copy())
    module = torch.nn.Linear(64, 32)
    fitted = TorchTransformer(module, device="cpu", batch_size=1024).fit(X)
    step = ToNumpy().fit(X)
    images = rng.standard_normal((2_000, 1, 8, 8)).astype(np.float32)
    y = rng.standard_normal(2_000)

    def flip(batch, generator):
        negate = torch.rand(len(batch), generator=generator) < 0.5
        return torch.where(negate.view(-1, 1, 1, 1), -batch, batch)

    augmented = AugmentedEstimator(Ridge(), augment=flip, n_views=4, batch_size=256,
                                   random_state=0)
    augmented.fit(images, y)
    small = [torch.full((1, 64), float(i)) for i in range(2_000)]

    cases = {
        WORKFLOWS[0]: lambda: TorchTransformer(module, device="cpu").fit(X).transform(X),
        WORKFLOWS[1]: lambda: fitted.transform(X),
        WORKFLOWS[2]: lambda: ToNumpy().fit_transform(tensor),
        WORKFLOWS[3]: lambda: step.transform(X),
        WORKFLOWS[4]: lambda: ToDevice("cpu").fit_transform(X),
        WORKFLOWS[5]: lambda: augmented.fit(images, y),
        WORKFLOWS[6]: lambda: augmented.predict(images),
        WORKFLOWS[7]: lambda: tb.collect(small),
        WORKFLOWS[8]: lambda: tb.collect(t for t in small),
    }
    medians = {}
    for name, run in cases.items():
        run()  # warm-up
        times, start = [], time.perf_counter()
        while len(times) < 5 or (time.perf_counter() - start < budget_s and len(times) < 200):
            began = time.perf_counter()
            run()
            times.append(time.perf_counter() - began)
        medians[name] = statistics.median(times)
    print(json.dumps(medians))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("old")
    parser.add_argument("new")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--budget", type=float, default=0.5, help="seconds per workflow")
    args = parser.parse_args()
    ratios = {name: [] for name in WORKFLOWS}
    times = {"old": {name: [] for name in WORKFLOWS}, "new": {name: [] for name in WORKFLOWS}}
    for round_ in range(args.rounds):
        found = {}
        # Alternate which goes first, so that neither always runs on a warmer machine.
        order = ("old", "new") if round_ % 2 == 0 else ("new", "old")
        for which in order:
            tree = args.old if which == "old" else args.new
            output = subprocess.run([sys.executable, __file__, "--child", tree, str(args.budget)],
                                    check=True, capture_output=True, text=True).stdout
            found[which] = json.loads(output.strip().splitlines()[-1])
            for name in WORKFLOWS:
                times[which][name].append(found[which][name])
        for name in WORKFLOWS:
            ratios[name].append(found["new"][name] / found["old"][name])
        print(f"round {round_ + 1}/{args.rounds} done", file=sys.stderr)
    print("| workflow | new/old median (quartiles) | old median | new median |\n"
          "| --- | --- | --- | --- |")
    for name in WORKFLOWS:
        q1, _, q3 = (statistics.quantiles(ratios[name], n=4) if len(ratios[name]) > 1
                     else ratios[name] * 3)
        print(f"| {name} | {statistics.median(ratios[name]):.3f} ({q1:.3f}-{q3:.3f}) | "
              f"{statistics.median(times['old'][name]) * 1e3:.3f} ms | "
              f"{statistics.median(times['new'][name]) * 1e3:.3f} ms |")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2], float(sys.argv[3]))
    else:
        main()
