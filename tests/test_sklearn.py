"""The scikit-learn layer, under every scikit-learn convention."""

import contextlib
import io
import pickle
import sys

import joblib
import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.compose import ColumnTransformer
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.model_selection import GridSearchCV, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import parametrize_with_checks

from tensorbridge.sklearn import ToNumpy, TorchTransformer


def data(n=40, d=5, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d))
    return X, (X[:, 0] > 0).astype(int)


@parametrize_with_checks([TorchTransformer(torch.nn.Identity()), ToNumpy()])
def test_scikit_learn_checks_pass_with_no_expected_failure(estimator, check):
    check(estimator)


# Checks that feed X of other widths than 5 (or objects, or 1 feature) fail,
# rightly, with "the module raised ... mat1 and mat2 shapes cannot be multiplied".
FIXED_WIDTH_FAILURES = [
    "check_dict_unchanged", "check_dont_overwrite_parameters", "check_dtype_object",
    "check_estimators_fit_returns_self", "check_estimators_nan_inf",
    "check_estimators_overwrite_params", "check_estimators_pickle",
    "check_f_contiguous_array_estimator", "check_fit2d_1feature", "check_fit2d_1sample",
    "check_fit2d_predict1d", "check_fit_check_is_fitted", "check_fit_idempotent",
    "check_fit_score_takes_y", "check_methods_sample_order_invariance",
    "check_methods_subset_invariance", "check_n_features_in", "check_n_features_in_after_fitting",
    "check_pipeline_consistency", "check_positive_only_tag_during_fit",
    "check_readonly_memmap_input", "check_transformer_data_not_an_array",
    "check_transformer_general", "check_transformer_preserve_dtypes",
]


@parametrize_with_checks(
    [TorchTransformer(torch.nn.Linear(5, 3), device="cpu")],
    expected_failed_checks=lambda est: dict.fromkeys(
        FIXED_WIDTH_FAILURES, "the module takes exactly 5 features; the check feeds other widths"),
)
def test_a_fixed_width_module_declares_its_expected_failures(estimator, check):
    check(estimator)


# -- TorchTransformer conventions --------------------------------------------------


class Recorder(torch.nn.Module):
    """Doubles its input and records the mode it ran in."""

    def __init__(self):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.tensor(2.0))
        self.seen = []

    def forward(self, x):
        self.seen.append((self.training, torch.is_inference_mode_enabled(), x.dtype))
        return x * self.scale


def test_init_only_stores():
    module = object()  # not callable: refused at fit, not at construction
    t = TorchTransformer(module, batch_size=-3, device="nowhere", dtype="nonsense", output=1.5)
    assert t.get_params()["module"] is module and t.batch_size == -3
    with pytest.raises((TypeError, ValueError)):
        t.fit(np.ones((2, 2)))


def test_fit_never_moves_or_mutates_the_users_module():
    module = Recorder().train()
    before = (module.scale.data_ptr(), module.scale.item(), module.training)
    t = TorchTransformer(module).fit(np.ones((4, 3)))
    assert (module.scale.data_ptr(), module.scale.item(), module.training) == before
    assert module.seen == [] and t.module_ is not module
    t.transform(np.ones((5, 3)))
    assert t.module_.seen and all(s == (False, True, torch.float32) for s in t.module_.seen)


def test_transform_batches_and_output_values():
    X = np.arange(70.0).reshape(35, 2)
    t = TorchTransformer(Recorder(), batch_size=8).fit(X)
    out = t.transform(X)
    np.testing.assert_allclose(out, X * 2)
    assert out.dtype == np.float32 and len(t.module_.seen) == 1 + 5  # probe + ceil(35/8)


@pytest.mark.parametrize("X", ["numpy", "tensor", "grad-tensor", "list", "pandas", "float64"])
def test_inputs_of_every_kind(X):
    base = np.random.default_rng(0).standard_normal((10, 4)).astype(np.float32)
    if X == "pandas":
        pd = pytest.importorskip("pandas")
        given = pd.DataFrame(base, columns=list("abcd"))
    else:
        given = {"numpy": base, "tensor": torch.from_numpy(base),
                 "grad-tensor": torch.from_numpy(base).requires_grad_(),
                 "list": base.tolist(), "float64": base.astype(np.float64)}[X]
    np.testing.assert_allclose(TorchTransformer(torch.nn.Identity()).fit_transform(given), base,
                               rtol=1e-6)


def test_outputs_of_any_rank_are_flattened_and_bf16_becomes_float32():
    t = TorchTransformer(lambda x: x.reshape(-1, 2, 3).to(torch.bfloat16)).fit(np.ones((4, 6)))
    out = t.transform(np.ones((4, 6)))
    assert out.shape == (4, 6) and out.dtype == np.float32
    assert t.n_features_out_ == 6


def test_output_picks_an_element_of_a_tuple_or_dict():
    X = np.ones((3, 2))
    pair = TorchTransformer(lambda x: (x, x * 3), output=1).fit(X)
    np.testing.assert_array_equal(pair.transform(X), X * 3)
    named = TorchTransformer(lambda x: {"hidden": x * 5, "logits": x}, output="hidden").fit(X)
    np.testing.assert_array_equal(named.transform(X), X * 5)
    with pytest.raises(ValueError, match=r"returned a tuple of 2; pass output=0..1"):
        TorchTransformer(lambda x: (x, x)).fit(X)
    with pytest.raises(ValueError, match=r"returned a dict with keys \['a'\]; pass output=<key>"):
        TorchTransformer(lambda x: {"a": x}, output="b").fit(X)


def test_dtype_parameter_and_module_dtype():
    X = np.ones((3, 2))
    assert TorchTransformer(torch.nn.Linear(2, 2).double()).fit(X).transform(X).dtype == np.float64
    t = TorchTransformer(torch.nn.Linear(2, 2), dtype="float64").fit(X)
    assert t.dtype_ == torch.float64 and t.transform(X).dtype == np.float64
    assert TorchTransformer(torch.nn.Identity(), dtype=torch.float16).fit(X).transform(X).dtype \
        == np.float16


@pytest.mark.parametrize(("kwargs", "X", "error", "message"), [
    ({"module": 3}, np.ones((2, 2)), TypeError,
     "The 'module' parameter of TorchTransformer must be a callable. Got 3 instead"),
    ({"module": torch.nn.Identity(), "device": "cuda:7"}, np.ones((2, 2)), ValueError,
     r"device='cuda:7' does not exist here"),
    ({"module": torch.nn.Identity(), "device": "quantum"}, np.ones((2, 2)), ValueError,
     "device='quantum' is not a torch device"),
    ({"module": torch.nn.Identity(), "dtype": "int32"}, np.ones((2, 2)), ValueError,
     "dtype='int32' is not a torch floating dtype"),
    ({"module": torch.nn.Identity()}, np.ones(3), ValueError, "Expected 2D array"),
    ({"module": torch.nn.Identity()}, np.array([[1.0, np.nan]]), ValueError, "Input X contains NaN"),
    ({"module": torch.nn.Linear(3, 2)}, np.ones((2, 4)), RuntimeError,
     r"TorchTransformer: the module raised RuntimeError on a batch of shape \(1, 4\)"),
    ({"module": lambda x: x.sum()}, np.ones((2, 2)), ValueError,
     r"returned shape \(\) for a batch of 1 rows"),
])
def test_bad_input_gets_a_clear_error(kwargs, X, error, message):
    with pytest.raises(error, match=message):
        TorchTransformer(**kwargs).fit(X)


def test_wrong_width_at_transform():
    t = TorchTransformer(torch.nn.Identity()).fit(np.ones((3, 4)))
    with pytest.raises(ValueError, match="X has 5 features, but TorchTransformer is expecting 4"):
        t.transform(np.ones((2, 5)))
    with pytest.raises(ValueError, match="X has 5 features"):
        t.transform(torch.ones(2, 5))


def test_clone_params_and_repr():
    t = TorchTransformer(torch.nn.Identity(), batch_size=7)
    c = clone(t)
    assert c.get_params()["batch_size"] == 7 and c.module is not t.module
    c.set_params(batch_size=9, output=0)
    assert (c.batch_size, c.output) == (9, 0)
    assert repr(t) == "TorchTransformer(batch_size=7, module=Identity())"


@pytest.mark.parametrize("how", ["pickle", "joblib"])
def test_fitted_round_trips(how, tmp_path):
    X, _ = data()
    t = TorchTransformer(torch.nn.Linear(5, 3)).fit(X)
    if how == "pickle":
        loaded = pickle.loads(pickle.dumps(t))
    else:
        joblib.dump(t, tmp_path / "t.joblib")
        loaded = joblib.load(tmp_path / "t.joblib")
    np.testing.assert_array_equal(loaded.transform(X), t.transform(X))
    assert loaded.module_ is not t.module_


@contextlib.contextmanager
def storages_saved_as_cuda():
    """torch.save tags every CPU storage "cuda:0", as it does on a GPU: what
    is saved then looks to torch.load exactly like a GPU-fitted module."""
    from torch import serialization

    entry = (0, lambda storage: "cuda:0" if storage.device.type == "cpu" else None,
             lambda storage, location: None)
    serialization._package_registry.insert(0, entry)
    try:
        yield
    finally:
        serialization._package_registry.remove(entry)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks loading where there is no GPU")
def test_a_module_fitted_on_a_gpu_loads_without_one():
    # The real fixture is written by scripts/gpu_check.sh on a GPU; here the
    # same bytes are made by hand: CUDA-tagged storages and a CUDA device_.
    X, _ = data()
    t = TorchTransformer(torch.nn.Linear(5, 3), device="cpu").fit(X)
    expected = t.transform(X)
    t.device_ = torch.device("cuda", 0)
    with storages_saved_as_cuda():
        saved = pickle.dumps(t)
        buffer = io.BytesIO()
        torch.save(t.module_, buffer)
    with pytest.raises(RuntimeError, match="CUDA"):  # the bytes really are CUDA-tagged
        torch.load(io.BytesIO(buffer.getvalue()), weights_only=False)
    loaded = pickle.loads(saved)
    assert loaded.device_ == torch.device("cpu")
    assert all(p.device.type == "cpu" for p in loaded.module_.parameters())
    assert all(p.device.type == "cpu" for p in loaded.module.parameters())
    np.testing.assert_allclose(loaded.transform(X), expected)


def test_gpu_pickle_fixture_loads_here():
    import pathlib

    fixture = pathlib.Path(__file__).with_name("fixtures") / "torch_transformer_cuda.pkl"
    if not fixture.exists():
        pytest.skip("tests/fixtures/torch_transformer_cuda.pkl is written by "
                    "scripts/gpu_check.sh on a GPU and not committed yet")
    loaded = joblib.load(fixture)
    X = np.ones((4, loaded.n_features_in_), np.float32)
    assert loaded.transform(X).shape == (4, loaded.n_features_out_)


def test_pipelines_column_transformers_and_model_selection():
    X, y = data(n=60)
    pipe = make_pipeline(TorchTransformer(torch.nn.Linear(5, 4)), StandardScaler(),
                         LogisticRegression())
    assert 0 <= pipe.fit(X, y).score(X, y) <= 1
    columns = ColumnTransformer([("torch", TorchTransformer(torch.nn.Identity()), [0, 1]),
                                 ("rest", "passthrough", [2, 3, 4])])
    assert columns.fit_transform(X).shape == (60, 5)
    search = GridSearchCV(make_pipeline(TorchTransformer(torch.nn.Identity()), Ridge()),
                          {"torchtransformer__batch_size": [8, 64], "ridge__alpha": [0.1, 1.0]},
                          cv=3, n_jobs=2).fit(X, y)
    assert search.best_params_["ridge__alpha"] in (0.1, 1.0)
    scores = cross_val_score(make_pipeline(TorchTransformer(torch.nn.Identity()),
                                           LogisticRegression()), X, y, cv=3)
    assert scores.shape == (3,)


def test_feature_names_and_pandas_output():
    pd = pytest.importorskip("pandas")
    X = pd.DataFrame(np.ones((4, 3)), columns=["a", "b", "c"])
    t = TorchTransformer(torch.nn.Linear(3, 2)).fit(X)
    assert list(t.feature_names_in_) == ["a", "b", "c"]
    assert list(t.get_feature_names_out()) == ["torchtransformer0", "torchtransformer1"]
    frame = t.set_output(transform="pandas").transform(X)
    assert list(frame.columns) == ["torchtransformer0", "torchtransformer1"]


def test_tags():
    tags = TorchTransformer(torch.nn.Identity()).__sklearn_tags__()
    assert tags.input_tags.allow_nan is False and tags.requires_fit is True
    assert tags.transformer_tags.preserves_dtype == ["float32"]
    assert TorchTransformer(torch.nn.Linear(2, 2).double()).__sklearn_tags__() \
        .transformer_tags.preserves_dtype == ["float64"]


# -- ToNumpy -------------------------------------------------------------------------


def test_to_numpy_step_is_zero_copy_for_cpu_tensors():
    t = torch.randn(6, 3)
    step = ToNumpy().fit(t)
    out = step.transform(t)
    assert np.shares_memory(out, t.numpy())
    bf16 = torch.randn(6, 3).bfloat16()
    assert ToNumpy().fit(bf16).transform(bf16).dtype.name == "bfloat16"
    X, y = data()
    pipe = make_pipeline(ToNumpy(), StandardScaler(), LogisticRegression())
    assert pipe.fit(torch.from_numpy(X), torch.from_numpy(y)).predict(torch.from_numpy(X)).shape == (40,)


def test_sklearn_is_imported_only_when_used():
    import subprocess

    code = "import sys, tensorbridge; print('sklearn' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True).stdout.strip() == "False"


def test_images_and_other_nd_inputs_reach_the_module_as_they_are():
    images = np.random.default_rng(0).random((6, 3, 4, 4)).astype(np.float32)
    t = TorchTransformer(torch.nn.Conv2d(3, 2, 3)).fit(images)
    assert t.n_features_in_ == 3 and t.transform(images).shape == (6, 2 * 2 * 2)
