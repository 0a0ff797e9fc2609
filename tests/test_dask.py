"""The scikit-learn layer over dask: lazy, block by block, equal to the in-memory
transform bit for bit, the estimator shipped once per worker, on a LocalCluster
of 2 worker processes that this module starts (loopback only) and closes.

Kept out of the sanitizer pass (scripts/checked_builds.sh), as the skorch tests
are: the workers are processes of their own, and none of the native core's
work is new here.
"""

import gc
import logging
import os
import pathlib
import re
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from helpers import SANITIZED

if SANITIZED:  # scripts/checked_builds.sh: its time is for the native core
    pytest.skip("dask tests are kept out of the sanitizer pass (their worker processes run "
                "no native code the rest of the suite does not)", allow_module_level=True)

da = pytest.importorskip("dask.array")
distributed = pytest.importorskip("distributed")
torch = pytest.importorskip("torch")
pytest.importorskip("sklearn")

import cloudpickle
import dask

from tensorbridge.sklearn import (
    ToNumpy,
    TorchTransformer,
    _dask,
)

# Classes defined here travel to the workers by value (they cannot import this file).
cloudpickle.register_pickle_by_value(sys.modules[__name__])

TIMEOUT = 120  # seconds, for any one computation on the cluster
ROOT = pathlib.Path(__file__).resolve().parents[1]


# The tests on a LocalCluster of worker processes (started once, seconds; some
# kill workers) run in the full suite; the fast tier (-m "not slow") runs the
# threaded scheduler's.
on_the_cluster = pytest.mark.slow


@pytest.fixture(scope="module")
def client():
    # The tests kill workers, some twice within seconds: a LocalCluster checks each
    # lost worker's name once, this long after the loss, and closes its nanny if no
    # worker of that name is up at that moment, which can be while the nanny is
    # restarting it after a later loss. Here the nannies are never closed that way.
    with dask.config.set({"distributed.deploy.lost-worker-timeout": "1h"}):
        cluster = distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
            dashboard_address=None, silence_logs=logging.CRITICAL, timeout=TIMEOUT,
            # without a dashboard the scheduler still serves HTTP, on 8787 unless
            # told: a free port, so that a second suite on the machine never warns
            scheduler_kwargs={"dashboard_address": "127.0.0.1:0"})
        client = distributed.Client(cluster, timeout=TIMEOUT)
        try:
            client.wait_for_workers(2, timeout=TIMEOUT)
            yield client
        finally:
            client.close(timeout=30)
            cluster.close(timeout=30)


def compute(client, collection):
    future = client.compute(collection)
    try:
        return future.result(timeout=TIMEOUT)
    finally:
        # An erred future's exception holds, through its traceback, the frame that
        # holds the future: released by hand, or the cluster keeps its graph.
        future.release()


def features(n=203, width=8, seed=0, dtype=np.float32):
    return np.random.default_rng(seed).normal(size=(n, width)).astype(dtype)


def network(width=8, out=5):
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(width, 16), torch.nn.Tanh(),
                               torch.nn.Linear(16, out))


def torch_blocks(dX):
    """The same array, each block a torch CPU tensor (dask's metadata stays NumPy's)."""
    return dX.map_blocks(torch.from_numpy, dtype=dX.dtype, meta=np.empty((0, 0), dX.dtype))


def released(client, timeout=30):
    """Every worker's record once the graphs' data is gone (the client's release
    of a graph reaches the workers asynchronously): no estimator
    held by the cluster, each worker alive with at most the last one it loaded."""
    def state():
        gc.collect()
        return _dask.worker_state()

    gc.collect()  # here too: a kept traceback can hold a graph, and so its estimator
    deadline = time.monotonic() + timeout
    while True:
        states = client.run(state)
        held = [key for key in client.who_has() if "tensorbridge-estimator" in str(key)]
        done = not held and all(len(s["live"]) <= 1 for s in states.values())
        if done or time.monotonic() > deadline:
            assert not held, held
            return states
        time.sleep(0.05)


# -- results: lazy, and equal to the in-memory transform bit for bit --------------------


@on_the_cluster
@pytest.mark.parametrize("blocks", ["numpy", "torch"])
@pytest.mark.parametrize(("n", "chunks", "batch_size"), [
    (203, 37, 16),                      # blocks that do not divide the batch size
    (203, 5, 16),                       # blocks far smaller than a batch
    (203, 64, 32),                      # already aligned: no rechunk
    (47, ((10, 0, 30, 0, 7),), 10),     # empty blocks, aligned boundaries
    (47, ((3, 0, 30, 0, 14),), 10),     # empty blocks, rechunked
    (1, 1, 16),                         # one row
])
def test_transform_equals_in_memory_bit_for_bit(client, blocks, n, chunks, batch_size):
    X = features(n)
    model = TorchTransformer(network(), batch_size=batch_size, device="cpu").fit(X)
    expected = model.transform(X)
    dX = da.from_array(X, chunks=(chunks[0] if isinstance(chunks, tuple) else chunks, 3))
    if blocks == "torch":
        dX = torch_blocks(dX)
    out = model.transform(dX)
    assert isinstance(out, da.Array)
    assert out.shape == expected.shape and out.dtype == expected.dtype
    assert all(size % batch_size == 0 for size in out.chunks[0][:-1])
    result = compute(client, out)
    assert result.dtype == expected.dtype
    assert np.array_equal(result, expected)


@on_the_cluster
def test_building_the_graph_computes_nothing(client):
    X = features(300)
    model = TorchTransformer(network(), batch_size=32, device="cpu").fit(X)
    dX = da.from_array(X, chunks=(45, 4))
    step = ToNumpy().fit(model.transform(X))

    def refuse(*args, **kwargs):
        raise AssertionError("the graph was computed while it was being built")

    with dask.config.set(scheduler=refuse):
        out = step.transform(model.transform(dX))
        with pytest.raises(AssertionError, match="computed while"):
            out.compute()
    assert np.array_equal(compute(client, out), model.transform(X))

    def keys(dask_scheduler):
        return {str(key) for key in dask_scheduler.tasks}

    before = client.run_on_scheduler(keys)
    lazy = model.transform(dX)  # with the client too: nothing reaches the cluster
    # (the last computation's keys may still be on their way out: only new ones count)
    assert not client.run_on_scheduler(keys) - before
    assert np.array_equal(compute(client, lazy), model.transform(X))


@on_the_cluster
def test_the_estimator_is_one_key_of_the_graph_on_the_scheduler(client):
    """One key holds the payload and every block depends on it: the scheduler keeps
    it as a task it can run again, never inlined into each block (once per block)."""
    X = features(300)
    model = TorchTransformer(network(), batch_size=32, device="cpu").fit(X)
    lazy = model.transform(da.from_array(X, chunks=(45, 4)))

    def graph(dask_scheduler):
        # run_spec: what the scheduler runs again when the result is lost (None for
        # data that was only scattered).
        return {str(key): (task.run_spec is not None, [str(d.key) for d in task.dependents],
                           task.nbytes)
                for key, task in dask_scheduler.tasks.items()
                if str(key).startswith("tensorbridge-estimator-")}

    persisted = client.persist(lazy)
    try:
        distributed.wait(persisted, timeout=TIMEOUT)
        shipped = client.run_on_scheduler(graph)
        assert len(shipped) == 1, shipped
        ((recreatable, dependents, nbytes),) = shipped.values()
        assert recreatable
        # Its size as the scheduler counts it (transfers, worker memory): the payload's.
        _, estimator_bytes, module_bytes, _ = _dask._Shipped(
            _dask._block_estimator(model))._serialised()
        assert nbytes >= len(estimator_bytes) + len(module_bytes) > 1000
        blocks = {str(key) for key in persisted.__dask_keys__() for key in key}
        assert blocks <= set(dependents), (blocks, dependents)
        assert np.array_equal(compute(client, persisted), model.transform(X))
    finally:
        del persisted
    released(client)


def test_fit_reads_metadata_and_one_block():
    X = features(400)
    read = []

    def block(block_info=None):
        (start, stop), _ = block_info[None]["array-location"]
        read.append(start)
        return X[start:stop]

    dX = da.map_blocks(block, chunks=((100,) * 4, (8,)), dtype=X.dtype,
                       meta=np.empty((0, 0), X.dtype))
    with dask.config.set(scheduler="sync"):
        model = TorchTransformer(network(), batch_size=32, device="cpu").fit(dX)
        assert read == [0]
        assert (model.n_features_in_, model.n_features_out_) == (8, 5)
        assert ToNumpy().fit(dX).n_features_in_ == 8
        assert np.array_equal(model.transform(dX).compute(), model.transform(X))


@on_the_cluster
def test_a_skorch_net_is_fitted_on_every_row(client):
    skorch = pytest.importorskip("skorch")
    seen = []

    class Recording(TorchTransformer):
        def fit(self, X, y=None, **fit_params):
            seen.append((type(X).__module__.split(".")[0], X.shape, len(y)))
            return super().fit(X, y, **fit_params)

    X, y = features(90), features(90, width=1, seed=1)
    net = skorch.NeuralNetRegressor(torch.nn.Linear(8, 1), max_epochs=1, train_split=None,
                                    verbose=0)
    model = Recording(net, device="cpu").fit(da.from_array(X, chunks=30),
                                             da.from_array(y, chunks=30))
    out = compute(client, model.transform(da.from_array(X, chunks=30)))  # module_ travels
    assert seen == [("dask", (90, 8), 90), ("numpy", (90, 8), 90)]  # trained on every row
    assert np.array_equal(out, model.transform(X))


@on_the_cluster
def test_nd_samples_and_chunked_trailing_axes(client):
    X = np.random.default_rng(1).normal(size=(90, 2, 3, 4)).astype(np.float32)
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Conv2d(2, 3, 2), torch.nn.Flatten())
    model = TorchTransformer(module, batch_size=16, device="cpu").fit(X)
    out = model.transform(da.from_array(X, chunks=(25, 1, 2, 4)))
    assert out.shape == (90, model.n_features_out_) and out.chunks[1] == (out.shape[1],)
    assert np.array_equal(compute(client, out), model.transform(X))


@on_the_cluster
def test_to_numpy_over_torch_blocks(client):
    X = features(120, dtype=np.float64)
    dX = torch_blocks(da.from_array(X, chunks=(25, 3)))
    step = ToNumpy().fit(dX)
    out = step.transform(dX)
    assert out.dtype == X.dtype and out.chunks[1] == (8,)
    assert np.array_equal(compute(client, out), X)


@on_the_cluster
def test_dask_dataframe_keeps_feature_names(client):
    pd = pytest.importorskip("pandas")
    dd = pytest.importorskip("dask.dataframe")
    frame = pd.DataFrame(features(150), columns=[f"f{i}" for i in range(8)])
    model = TorchTransformer(network(), batch_size=16, device="cpu")
    model.fit(dd.from_pandas(frame, npartitions=4))
    assert list(model.feature_names_in_) == list(frame.columns)
    out = model.transform(dd.from_pandas(frame, npartitions=3))
    assert np.array_equal(compute(client, out), model.transform(frame))
    with pytest.raises(ValueError, match="feature names"):
        model.transform(dd.from_pandas(frame[frame.columns[::-1]], npartitions=2))


# -- the checks: known shapes now, data at compute time, same errors --------------------


def run_on(scheduler, client, collection):
    # "threads": the threaded scheduler, the client left aside, for a graph built
    # while the client was active (a scattered estimator made that graph unrunnable).
    if scheduler == "threads":
        with dask.config.set(scheduler="threads", num_workers=2):
            return collection.compute()
    return compute(client, collection)


@on_the_cluster
@pytest.mark.parametrize("scheduler", ["cluster", "threads"])
@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_data_checks_run_per_block_with_the_same_errors(client, scheduler, value):
    X = features(100)
    model = TorchTransformer(network(), batch_size=16, device="cpu").fit(X)
    bad = X.copy()
    bad[77, 3] = value
    with pytest.raises(ValueError) as in_memory:
        model.transform(bad)
    out = model.transform(da.from_array(bad, chunks=(20, 8)))  # builds: NaN is data
    with pytest.raises(ValueError) as lazily:
        run_on(scheduler, client, out)
    assert str(lazily.value) == str(in_memory.value)
    assert ("NaN" if np.isnan(value) else "infinity") in str(lazily.value)
    del lazily, out  # the traceback holds the graph
    # The client (and the workers) go on: the same model over good blocks.
    good = model.transform(da.from_array(X, chunks=(20, 8)))
    assert np.array_equal(run_on(scheduler, client, good), model.transform(X))


@pytest.mark.parametrize("source", ["array", "dataframe"])
def test_threaded_scheduler_without_a_cluster(source):
    X = features(203)
    model = TorchTransformer(network(), batch_size=16, device="cpu").fit(X)
    token = _dask._Shipped(_dask._block_estimator(model)).token
    if source == "dataframe":
        pd = pytest.importorskip("pandas")
        dd = pytest.importorskip("dask.dataframe")
        dX = dd.from_pandas(pd.DataFrame(X), npartitions=5)
    else:
        dX = da.from_array(X, chunks=(37, 3))
    with dask.config.set(scheduler="threads", num_workers=2):
        out = model.transform(dX)
        assert all(size % 16 == 0 for size in out.chunks[0][:-1])
        assert np.array_equal(out.compute(), model.transform(X))
        assert np.array_equal(out.compute(), model.transform(X))
    # The blocks ran this process's own copy: never serialised, never loaded.
    assert token not in _dask.worker_state()["loads"]


@pytest.mark.parametrize("make", [
    lambda X: TorchTransformer(network(), batch_size=16, device="cpu").fit(X),
    lambda X: ToNumpy().fit(X),
], ids=["TorchTransformer", "ToNumpy"])
@pytest.mark.parametrize("shape", [(40, 6), (0, 8), (40, 8, 2)])
def test_shape_errors_are_the_in_memory_ones_while_building(make, shape):
    model = make(features(40))
    with pytest.raises(ValueError) as in_memory:
        model.transform(np.zeros(shape, np.float32))
    with pytest.raises(ValueError) as lazily:
        model.transform(da.zeros(shape, np.float32, chunks=10))  # nothing to compute
    assert str(lazily.value) == str(in_memory.value)


def test_structure_errors_while_building():
    X = features(40)
    model = TorchTransformer(network(), batch_size=16, device="cpu").fit(X)
    with pytest.raises(ValueError, match=r"at least 2 dimensions.*\(40,\)"):
        model.transform(da.zeros(40, chunks=10))
    unknown = da.from_array(X, chunks=10)
    unknown = unknown[unknown[:, 0] > 0]
    with pytest.raises(ValueError, match="compute_chunk_sizes"):
        model.transform(unknown)
    with pytest.raises(TypeError, match="dask.array.Array or a dask.dataframe"):
        model.transform(dask.delayed(X))
    with pytest.raises(ValueError, match="0 sample"):
        TorchTransformer(network()).fit(da.zeros((0, 8), chunks=4))
    with pytest.raises(TypeError, match=r"fit parameters \['weights'\]"):
        TorchTransformer(network()).fit(da.zeros((4, 8), chunks=4), weights=1)


def test_pandas_output_is_refused_for_dask_input():
    X = features(20)
    model = TorchTransformer(network(), device="cpu").fit(X).set_output(transform="pandas")
    with pytest.raises(ValueError, match=r"set_output\(transform='pandas'\).*to_dask_dataframe"):
        model.transform(da.from_array(X, chunks=10))
    assert model.transform(X).shape == (20, 5)  # in memory it applies as before


def test_importing_the_layer_imports_no_dask():
    code = ("import sys, numpy as np, tensorbridge.sklearn as s\n"
            "s.ToNumpy().fit_transform(np.ones((2, 2)))\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('dask', 'distributed', 'dask_ml')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=TIMEOUT).stdout
    assert out.strip() == "[]"


def test_missing_extra_is_named(monkeypatch):
    dX = da.zeros((10, 8), chunks=5)
    model = TorchTransformer(network(), device="cpu").fit(features(10))
    monkeypatch.setitem(sys.modules, "distributed", None)  # import distributed fails
    with pytest.raises(ImportError, match=re.escape("pip install 'tensorbridge[dask]'")):
        model.transform(dX)
    with pytest.raises(ImportError, match=re.escape("tensorbridge[dask]")):
        ToNumpy().fit(dX)


# -- the estimator on the workers --------------------------------------------------------


@on_the_cluster
def test_deserialised_once_per_worker_and_released(client):
    X = features(800)
    model = TorchTransformer(network(out=7), batch_size=16, device="cpu").fit(X)
    token = _dask._Shipped(_dask._block_estimator(model)).token

    def loads():
        return [state["loads"].get(token, 0) for state in client.run(_dask.worker_state).values()]

    assert loads() == [0, 0]
    out = model.transform(da.from_array(X, chunks=(32, 8)))
    assert out.numblocks[0] == 25
    assert np.array_equal(compute(client, out), model.transform(X))
    first = loads()
    assert set(first) <= {0, 1} and sum(first) >= 1  # once per worker, never per block
    assert compute(client, out).shape == (800, 7)
    assert loads() == first  # the workers still hold it
    step = ToNumpy().fit(X)  # no module: its load must not push the model out
    assert np.array_equal(compute(client, step.transform(da.from_array(X, chunks=(32, 8)))), X)
    assert np.array_equal(compute(client, model.transform(da.from_array(X, chunks=(64, 8)))),
                          model.transform(X))  # a new graph of the same model
    assert loads() == first
    del out
    other = TorchTransformer(network(out=3), batch_size=16, device="cpu").fit(X)
    other_token = _dask._Shipped(_dask._block_estimator(other)).token
    compute(client, other.transform(da.from_array(X, chunks=(32, 8))))
    states = released(client)
    ran_other = [s for s in states.values() if other_token in s["loads"]]
    assert ran_other
    assert all(s["live"] == [other_token] for s in ran_other), states  # the first is freed


@on_the_cluster
def test_modules_defined_by_value_travel(client):
    X = features(64)
    model = TorchTransformer(_Doubled(), batch_size=8, device="cpu").fit(X)
    assert np.array_equal(compute(client, model.transform(da.from_array(X, chunks=20))),
                          2 * X)
    plain = TorchTransformer(lambda t: t[:, :2] * 3, batch_size=8).fit(X)
    assert np.array_equal(compute(client, plain.transform(da.from_array(X, chunks=20))),
                          3 * X[:, :2])


class _Doubled(torch.nn.Module):
    def forward(self, x):
        return 2 * x


@on_the_cluster
def test_workers_build_on_their_own_device(client):
    model = TorchTransformer(network(), device="auto").fit(features(8))

    def device_used(shipped):
        estimator = shipped.estimator()
        return str(estimator.device_), str(next(estimator.module_.parameters()).device)

    shipped = client.scatter(_dask._Shipped(_dask._block_estimator(model)), broadcast=True)
    devices = {addr: client.submit(device_used, shipped, workers=[addr], pure=False)
               .result(timeout=TIMEOUT) for addr in client.run(os.getpid)}
    assert set(devices.values()) == {("cpu", "cpu")}  # no GPU here: each worker's CPU
    del shipped


@pytest.mark.parametrize(("requested", "count", "facts", "expected"), [
    ("auto", 0, {}, "cpu"),
    ("cuda", 0, {"resources": {"cuda:1": 1}}, "cpu"),            # asked, none here
    ("cpu", 4, {"worker_name": 1}, "cpu"),                        # the user's choice
    ("auto", 4, {"resources": {"cuda:3": 1, "GPU": 1}}, "cuda:3"),
    ("cuda:0", 2, {"environ": {"CUDA_VISIBLE_DEVICES": "5"}}, "cuda:0"),
    ("auto", 2, {"environ": {"CUDA_VISIBLE_DEVICES": ""}, "worker_name": 3}, "cuda:1"),
    ("auto", 4, {"worker_name": "6"}, "cuda:2"),
    ("auto", 4, {"worker_name": "tcp-worker"}, "cuda:0"),
])
def test_worker_device_with_faked_device_counts(requested, count, facts, expected):
    assert _dask.worker_device(requested, count, **facts) == expected


def test_worker_resource_naming_a_missing_device():
    with pytest.raises(ValueError, match=r"'cuda:2'.*2 CUDA devices"):
        _dask.worker_device("auto", 2, resources={"cuda:2": 1})


# -- a worker killed mid-computation ----------------------------------------------------


def resident_bytes():
    import psutil

    gc.collect()
    return psutil.Process().memory_info().rss


class _Slow(torch.nn.Module):
    """Doubles its input, slowly: blocks are still running when a worker is killed."""

    def forward(self, x):
        import time

        time.sleep(0.05)
        return 2 * x


@on_the_cluster
def test_worker_killed_mid_computation(client):
    X = features(640)
    model = TorchTransformer(_Slow(), batch_size=16, device="cpu").fit(X)
    expected = model.transform(X)
    warm = model.transform(da.from_array(X[:64], chunks=16))
    compute(client, warm)  # each worker has started its threads once
    del warm
    before = released(client)
    threads = client.run(threading.active_count)
    memory = client.run(resident_bytes)
    pids = client.run(os.getpid)

    out = model.transform(da.from_array(X, chunks=(32, 8)))  # 20 blocks of 2 batches
    blocks = client.compute(out.to_delayed().ravel().tolist())
    distributed.wait(blocks, timeout=TIMEOUT, return_when="FIRST_COMPLETED")
    victim, survivor = sorted(pids)
    assert sum(not b.done() for b in blocks) > 2  # still mid-computation
    os.kill(pids[victim], signal.SIGKILL)
    distributed.wait(blocks, timeout=TIMEOUT)
    result = np.concatenate(client.gather(blocks))
    assert np.array_equal(result, expected)  # retried on the survivor and the new worker

    del blocks, out
    token = _dask._Shipped(_dask._block_estimator(model)).token
    after = released(client, timeout=30)
    assert set(after[survivor]["live"]) <= {token}  # at most the last one loaded
    assert set(before[survivor]["live"]) <= {token}
    assert client.run(threading.active_count, workers=[survivor])[survivor] <= threads[survivor]
    grown = client.run(resident_bytes, workers=[survivor])[survivor] - memory[survivor]
    assert grown < 64 << 20, f"the survivor grew by {grown >> 20} MiB"  # blocks of 1 KiB
    client.wait_for_workers(2, timeout=TIMEOUT)  # the nanny restarted the killed one


# -- routes for estimators that take no dask arrays -------------------------------------


@on_the_cluster
def test_grid_search_through_dask_ml(client):
    model_selection = pytest.importorskip("dask_ml.model_selection")
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    X = features(240)
    y = (X[:, 0] + X[:, 1] > 0).astype(int)
    pipe = make_pipeline(TorchTransformer(network(out=6), batch_size=32, device="cpu"),
                         LogisticRegression())
    grid = {"logisticregression__C": [0.01, 1.0]}
    search = model_selection.GridSearchCV(pipe, grid, cv=3)
    search.fit(da.from_array(X, chunks=40), da.from_array(y, chunks=40))
    from sklearn.model_selection import GridSearchCV

    reference = GridSearchCV(pipe, grid, cv=3).fit(X, y)
    assert search.best_params_ == reference.best_params_
    assert np.allclose(search.cv_results_["mean_test_score"],
                       reference.cv_results_["mean_test_score"])


@pytest.mark.slow
def test_example_runs_and_reports():
    result = subprocess.run([sys.executable, str(ROOT / "examples" / "dask_scale_out.py")],
                            capture_output=True, text=True, timeout=TIMEOUT)
    assert result.returncode == 0, result.stderr
    last = result.stdout.strip().splitlines()[-1]
    assert re.fullmatch(r"accuracy: (0\.9\d\d|1\.000), equal to the in-memory features: True",
                        last), result.stdout


# -- lost workers: each worker process killed once -----------------------------------------


class _DiesOnce(torch.nn.Module):
    """Doubles its input, slowly. In a dask worker it first ends that worker's process
    (``os._exit``) the first time a worker of that name runs it: the marker file is
    made before the exit, so the nanny's restart (same name, new process) lives on.
    Its one buffer shows the device it was built on."""

    def __init__(self, markers, delay=0.02):
        super().__init__()
        self.markers, self.delay = str(markers), delay
        self.register_buffer("scale", torch.tensor(2.0))

    def forward(self, x):
        import time

        try:
            worker = distributed.get_worker()
        except ValueError:  # the client: fit, the probe, the in-memory transform
            worker = None
        if worker is not None:
            marker = pathlib.Path(self.markers) / f"worker-{worker.name}"
            try:
                fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                pass
            else:
                os.write(fd, str(os.getpid()).encode())
                os.close(fd)
                os._exit(1)
        time.sleep(self.delay)
        return x * self.scale


def loads_per_worker(client, token):
    return {addr: state["loads"].get(token, 0)
            for addr, state in client.run(_dask.worker_state).items()}


def worker_names(client):
    return {str(w["name"]) for w in client.scheduler_info(n_workers=-1)["workers"].values()}


def placed(token):
    """On a worker: where its loaded estimator's module sits, and that worker's own device."""
    estimator = _dask._live.get(token)
    if estimator is None:
        return None
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    own = _dask.worker_device("auto", count, **_dask._worker_facts())
    return str(estimator.device_), str(estimator.module_.scale.device), own


@on_the_cluster
@pytest.mark.parametrize("source", ["array", "dataframe"])
def test_each_worker_lost_once_costs_time_not_the_result(client, tmp_path, source):
    X = features(640)
    # device="auto": each worker, restarted too, builds the module on its own device.
    model = TorchTransformer(_DiesOnce(tmp_path), batch_size=16, device="auto").fit(X)
    expected = model.transform(X)
    token = _dask._Shipped(_dask._block_estimator(model)).token
    if source == "dataframe":
        dd = pytest.importorskip("dask.dataframe")
        dX = dd.from_array(X, chunksize=32)
    else:
        dX = da.from_array(X, chunks=(32, 8))
    pids, names = client.run(os.getpid), worker_names(client)
    result = compute(client, model.transform(dX))  # each worker dies on its first block
    assert np.array_equal(result, expected)
    died = {path.name: int(path.read_text()) for path in tmp_path.iterdir()}
    assert died.keys() == {f"worker-{name}" for name in names}
    assert set(died.values()) <= set(pids.values())  # the original processes, once each
    client.wait_for_workers(len(names), timeout=TIMEOUT)
    assert not set(client.run(os.getpid).values()) & set(died.values())  # restarted
    assert all(count <= 1 for count in loads_per_worker(client, token).values())
    where = [w for w in client.run(placed, token).values() if w is not None]
    assert where and all(device == module == own for device, module, own in where), where
    # The same client goes on: the same graph again, and a new one.
    assert np.array_equal(compute(client, model.transform(dX)), expected)
    other = TorchTransformer(network(), batch_size=16, device="cpu").fit(X)
    assert np.array_equal(compute(client, other.transform(da.from_array(X, chunks=50))),
                          other.transform(X))
    assert all(count <= 1 for count in loads_per_worker(client, token).values())


class _Gated(torch.nn.Module):
    """Doubles its input. On the workers named in ``waiting``, the first call waits
    (up to ``limit`` seconds) for the file ``gate``: blocks are still to run when
    another worker joins."""

    def __init__(self, gate, waiting, limit=TIMEOUT / 2):
        super().__init__()
        self.gate, self.waiting, self.limit = str(gate), set(waiting), limit

    def forward(self, x):
        import time

        try:
            name = str(distributed.get_worker().name)
        except ValueError:
            name = None
        deadline = time.monotonic() + self.limit
        while (name in self.waiting and not os.path.exists(self.gate)
               and time.monotonic() < deadline):
            time.sleep(0.05)
        time.sleep(0.01)
        return 2 * x


@on_the_cluster
def test_a_worker_joining_mid_computation_takes_blocks(client, tmp_path):
    cluster = client.cluster
    names = worker_names(client)
    gate = tmp_path / "joined"
    X = features(1280)
    model = TorchTransformer(_Gated(gate, names), batch_size=16, device="cpu").fit(X)
    token = _dask._Shipped(_dask._block_estimator(model)).token
    future = client.compute(model.transform(da.from_array(X, chunks=(32, 8))))  # 40 blocks
    try:
        cluster.scale(len(names) + 1)
        client.wait_for_workers(len(names) + 1, timeout=TIMEOUT)
        gate.touch()
        result = future.result(timeout=TIMEOUT)
    finally:
        future.release()
        gate.touch()
    assert np.array_equal(result, model.transform(X))
    loads = {str(w["name"]): loads_per_worker(client, token)[addr]
             for addr, w in client.scheduler_info(n_workers=-1)["workers"].items()}
    joined = set(loads) - names
    assert len(joined) == 1, (names, loads)
    assert loads[joined.pop()] == 1, loads  # it ran blocks, and loaded the module once
    assert all(count <= 1 for count in loads.values()), loads
    cluster.scale(len(names))
    deadline = time.monotonic() + TIMEOUT
    while worker_names(client) != names and time.monotonic() < deadline:
        time.sleep(0.1)
    assert worker_names(client) == names


# -- TorchTransformer and ToNumpy on dask inputs at the edges (docs/guide/dask.rst) ------


@pytest.mark.skipif(SANITIZED, reason="dask is kept out of the sanitizer pass, as in "
                    "tests/test_dask.py: its imports (pyarrow, numba) leave registries at exit "
                    "and run no native code of ours the rest of the suite does not")
def test_dask_inputs_at_the_edges():
    pd = pytest.importorskip("pandas")
    da = pytest.importorskip("dask.array")
    dd = pytest.importorskip("dask.dataframe")
    pytest.importorskip("distributed")
    import dask

    X = np.random.default_rng(0).standard_normal((50, 3)).astype(np.float32)
    with dask.config.set(scheduler="synchronous"):
        t = TorchTransformer(torch.nn.Linear(3, 2), batch_size=8).fit(X)
        np.testing.assert_array_equal(t.transform(da.from_array(X, chunks=(7, 1))).compute(),
                                      t.transform(X))
        with pytest.raises(ValueError, match="unknown chunk sizes"):
            t.transform(dd.from_pandas(pd.DataFrame(X), npartitions=3).to_dask_array())
        with pytest.raises(ValueError, match="Input X contains NaN"):
            t.transform(da.from_array(np.where(X > 1, np.nan, X), chunks=7)).compute()
        frame = pd.DataFrame(X, columns=list("abc"))
        named = TorchTransformer(torch.nn.Linear(3, 2)).fit(frame)
        with pytest.raises(ValueError, match="unseen at fit time"):
            named.transform(dd.from_pandas(frame.rename(columns={"c": "d"}), npartitions=3))
        assert np.isnan(ToNumpy().fit(X).transform(
            da.from_array(np.full((3, 3), np.nan), chunks=2)).compute()).all()
