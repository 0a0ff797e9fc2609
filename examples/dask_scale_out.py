"""Scale out: the feature-extraction workflow over Dask, on a local cluster.

TorchTransformer takes a dask array and returns one, lazily, block by block:
each block runs on a worker, on that worker's own device, and the fitted
module reaches each worker once. Estimators that take no dask arrays
(LogisticRegression, SGDClassifier, AugmentedEstimator) are reached through
dask_ml's wrappers: ParallelPostFit fits on data in memory and predicts block
by block on the workers; Incremental fits block by block (partial_fit).
Without dask_ml, compute the features to NumPy: `F.compute()`.

    pip install 'tensorbridge[dask]' dask-ml
    python examples/dask_scale_out.py
"""

import logging

import dask.array as da
import numpy as np
import torch
from distributed import Client, LocalCluster
from sklearn.linear_model import LogisticRegression, SGDClassifier

from tensorbridge.sklearn import AugmentedEstimator, TorchTransformer


def jitter(sample, generator):  # at module level, so that it travels to the workers
    return sample + 0.05 * torch.randn(sample.shape, generator=generator)


def main():
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    X = rng.standard_normal((40_000, 20)).astype(np.float32)
    y = (X[:, :3].sum(axis=1) > 0).astype(int)
    train, test = slice(0, 30_000), slice(30_000, None)

    # Two worker processes on this machine; on a cluster: Client("scheduler:8786").
    with LocalCluster(n_workers=2, threads_per_worker=1, host="127.0.0.1",
                      dashboard_address=None, silence_logs=logging.ERROR) as cluster, \
            Client(cluster):
        dX = da.from_array(X, chunks=(5_000, 20))  # in practice da.from_zarr(...), etc.
        dy = da.from_array(y, chunks=5_000)
        extractor = torch.nn.Sequential(torch.nn.Linear(20, 64), torch.nn.Tanh())
        features = TorchTransformer(extractor, batch_size=1024).fit(dX)  # reads one row
        F = features.transform(dX)  # a graph: nothing is computed yet
        print(f"features: lazy {F.dtype} dask array of shape {F.shape}, {F.numblocks[0]} "
              f"blocks of {F.chunks[0][0]} rows (whole batches of 1024)")

        try:
            from dask_ml.wrappers import Incremental, ParallelPostFit
        except ImportError:  # no dask_ml: the features, computed to NumPy
            classifier = LogisticRegression(max_iter=500).fit(F[train].compute(), y[train])
            accuracy = classifier.score(F[test].compute(), y[test])
            print(f"LogisticRegression on features computed to NumPy: {accuracy:.3f}")
        else:
            # Fit in memory on a sample, predict over every block on the workers.
            classifier = ParallelPostFit(LogisticRegression(max_iter=500))
            classifier.fit(F[:10_000].compute(), y[:10_000])
            accuracy = float((classifier.predict(F[test]) == dy[test]).mean().compute())
            print(f"ParallelPostFit(LogisticRegression), fit on 10,000 rows: {accuracy:.3f}")
            # Fit block by block: no block is ever gathered with another. The labels
            # take the features' blocks (rows were rechunked to whole batches).
            labels = dy.rechunk((F.chunks[0],))
            sgd = Incremental(SGDClassifier(loss="log_loss", random_state=0))
            sgd.fit(F[train], labels[train], classes=[0, 1])
            print(f"Incremental(SGDClassifier), partial_fit per block: "
                  f"{float(sgd.score(F[test], labels[test])):.3f}")
            # AugmentedEstimator trains in memory; its predictions run per block.
            augmented = ParallelPostFit(AugmentedEstimator(
                LogisticRegression(), augment=jitter, n_views=1, random_state=0))
            augmented.fit(X[:5_000], y[:5_000])
            print(f"ParallelPostFit(AugmentedEstimator): "
                  f"{float((augmented.predict(dX[test]) == dy[test]).mean().compute()):.3f}")

        in_memory = TorchTransformer(extractor, batch_size=1024).fit(X).transform(X)
        same = np.array_equal(F.compute(), in_memory)
    print(f"accuracy: {accuracy:.3f}, equal to the in-memory features: {same}")


if __name__ == "__main__":  # worker processes import this file: start nothing there
    main()
