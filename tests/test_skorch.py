"""A skorch NeuralNet as TorchTransformer's module: every fold trains its own
clone, transform runs the trained module on our batched path."""

import pickle

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from helpers import SANITIZED
from sklearn.base import clone
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, cross_val_score
from sklearn.pipeline import make_pipeline

from tensorbridge.sklearn import TorchTransformer

if SANITIZED:  # scripts/checked_builds.sh: its time is for the native core
    pytest.skip("skorch tests are kept out of the sanitizer pass (no native code of their own)",
                allow_module_level=True)

skorch = pytest.importorskip("skorch")

TRAININGS = []  # one entry per fit of any net: callbacks are cloned with their net


class CountFits(skorch.callbacks.Callback):
    def on_train_begin(self, net, **kwargs):
        TRAININGS.append(id(net))


class MLP(torch.nn.Module):
    def __init__(self, hidden=16):
        super().__init__()
        self.encoder = torch.nn.Sequential(torch.nn.Linear(8, hidden), torch.nn.ReLU())
        self.head = torch.nn.Linear(hidden, 2)

    def forward(self, x):
        return self.head(self.encoder(x))


def data(n=90):
    rng = np.random.default_rng(0)
    X = rng.standard_normal((n, 8)).astype(np.float32)
    return X, (X[:, 0] + X[:, 1] > 0).astype(np.int64)


def net(**kwargs):
    torch.manual_seed(0)
    settings = dict(criterion=torch.nn.CrossEntropyLoss, max_epochs=3, lr=0.1, train_split=None,
                    verbose=0, callbacks=[CountFits()])
    return skorch.NeuralNetClassifier(MLP, **{**settings, **kwargs})


@pytest.fixture(autouse=True)
def fresh_count():
    TRAININGS.clear()
    yield


def test_fit_trains_a_clone_and_transform_runs_its_module():
    given = net()
    X, y = data()
    t = TorchTransformer(given, batch_size=16).fit(X, y)
    assert len(TRAININGS) == 1 and t.net_ is not given
    assert not hasattr(given, "module_")  # the user's net stays untrained
    assert len(t.net_.history) == 3
    out = t.transform(X)
    with torch.no_grad():
        expected = t.net_.module_.eval()(torch.from_numpy(X)).numpy()
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)
    assert out.shape == (90, 2) and t.n_features_out_ == 2
    # the logits of the trained net, as skorch's own forward gives them
    np.testing.assert_allclose(out, t.net_.forward(X).numpy(), rtol=1e-5, atol=1e-6)


def test_layer_takes_a_submodule_of_the_trained_module():
    X, y = data()
    t = TorchTransformer(net(), layer="encoder").fit(X, y)
    out = t.transform(X)
    with torch.no_grad():
        expected = t.net_.module_.encoder(torch.from_numpy(X)).numpy()
    assert out.shape == (90, 16)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match=r"layer='decoder' is not a submodule of MLP; its "
                                         r"submodules are: 'encoder', 'encoder.0', 'encoder.1', "
                                         r"'head'"):
        TorchTransformer(net(), layer="decoder").fit(X, y)


def test_every_fold_of_cross_validation_trains_its_own_net():
    X, y = data()
    pipe = make_pipeline(TorchTransformer(net(), layer="encoder"), LogisticRegression())
    scores = cross_val_score(pipe, X, y, cv=3)
    assert scores.shape == (3,) and scores.mean() > 0.6
    assert len(TRAININGS) == 3 and len(set(TRAININGS)) == 3


@pytest.mark.slow
def test_grid_search_over_the_nets_parameters():
    X, y = data()
    t = TorchTransformer(net())
    assert t.get_params()["module__lr"] == 0.1 and t.get_params()["module__max_epochs"] == 3
    pipe = make_pipeline(TorchTransformer(net(), layer="encoder"), LogisticRegression())
    grid = {"torchtransformer__module__lr": [0.01, 0.1],
            "torchtransformer__module__max_epochs": [1, 2]}
    search = GridSearchCV(pipe, grid, cv=2).fit(X, y)
    assert set(search.best_params_) == set(grid)
    assert len(TRAININGS) == 4 * 2 + 1  # every candidate on every fold, then the refit
    best = search.best_estimator_[0]
    assert best.net_.lr == search.best_params_["torchtransformer__module__lr"]
    assert len(best.net_.history) == search.best_params_["torchtransformer__module__max_epochs"]


def test_clone_and_pickle_of_a_fitted_transformer():
    X, y = data()
    t = TorchTransformer(net(), layer="encoder").fit(X, y)
    twin = clone(t)
    assert not hasattr(twin, "net_") and twin.module is not t.module
    assert twin.get_params()["module__lr"] == 0.1
    loaded = pickle.loads(pickle.dumps(t))
    np.testing.assert_array_equal(loaded.transform(X), t.transform(X))
    assert loaded.module_ is loaded.net_.module_  # the trained weights, held once
    assert len(pickle.dumps(t)) < 2 * len(pickle.dumps(t.net_))
    np.testing.assert_allclose(loaded.net_.predict_proba(X), t.net_.predict_proba(X), rtol=1e-6)


def test_training_input_is_cast_and_fit_params_reach_the_net():
    X, y = data()
    t = TorchTransformer(net(max_epochs=1)).fit(X.astype(np.float64), y)
    assert t.dtype_ == torch.float32 and t.transform(X).dtype == np.float32
    with pytest.raises(TypeError, match="not a DataLoader"):
        TorchTransformer(net()).fit(torch.utils.data.DataLoader(
            torch.utils.data.TensorDataset(torch.from_numpy(X)), batch_size=8), y)


def test_transform_device_is_ours_and_training_device_is_the_nets():
    X, y = data()
    t = TorchTransformer(net(device="cpu"), device="cpu").fit(X, y)
    assert t.net_.device == "cpu" and t.device_ == torch.device("cpu")
    assert t.module_ is t.net_.module_  # same device: no copy
    t64 = TorchTransformer(net(), dtype="float64").fit(X, y)
    assert t64.module_ is not t64.net_.module_ and t64.module_.head.weight.dtype == torch.float64
    assert t64.net_.module_.head.weight.dtype == torch.float32
