"""TorchTransformer: scikit-learn's conventions, the inputs users have, checked
shapes, untouched inputs, progress, pickles that hold the weights once."""

import contextlib
import doctest
import io
import os
import pathlib
import pickle
import re
import subprocess
import sys
import textwrap
import threading
import warnings
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import joblib
import numpy as np
import pytest
import sklearn

torch = pytest.importorskip("torch")
from helpers import SANITIZED, features
from sklearn.base import clone
from sklearn.compose import ColumnTransformer
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.model_selection import GridSearchCV, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils._param_validation import InvalidParameterError
from sklearn.utils.estimator_checks import check_estimator, parametrize_with_checks
from torch.utils.data import DataLoader, Dataset, IterableDataset, TensorDataset

from tensorbridge.sklearn import ToNumpy, TorchTransformer

FIXTURES = pathlib.Path(__file__).with_name("fixtures")


def data(n=40, d=5, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d))
    return X, (X[:, 0] > 0).astype(int)


# -- scikit-learn's own checks -------------------------------------------------------


@parametrize_with_checks([TorchTransformer(torch.nn.Identity())])
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
    # (skipped unless SCIPY_ARRAY_API=1: tests/test_array_api.py runs them)
    "check_array_api_input", "check_array_api_mixed_inputs", "check_array_api_same_namespace",
]


@parametrize_with_checks(
    [TorchTransformer(torch.nn.Linear(5, 3), device="cpu")],
    expected_failed_checks=lambda est: dict.fromkeys(
        FIXED_WIDTH_FAILURES, "the module takes exactly 5 features; the check feeds other widths"),
)
def test_a_fixed_width_module_declares_its_expected_failures(estimator, check):
    check(estimator)


def test_docstring_examples_run():
    finder = doctest.DocTestFinder()
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    for test in finder.find(TorchTransformer, "TorchTransformer", globs={}):
        runner.run(test)
    assert runner.tries >= 5 and runner.failures == 0


# -- conventions ---------------------------------------------------------------------


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
    from sklearn.utils._param_validation import InvalidParameterError

    module = object()  # not callable: refused at fit, not at construction
    t = TorchTransformer(module, batch_size=-3, device="nowhere", dtype="nonsense", output=1.5,
                         verbose="loud", layer=3)
    assert t.get_params()["module"] is module and t.batch_size == -3 and t.layer == 3
    # fit checks them, the first one it finds named
    with pytest.raises(InvalidParameterError, match=r"'batch_size' parameter .+ Got -3"):
        t.fit(np.ones((2, 2)))


def test_fit_never_moves_or_mutates_the_users_module():
    module = Recorder().train()
    before = (module.scale.data_ptr(), module.scale.item(), module.training)
    t = TorchTransformer(module).fit(np.ones((4, 3)))
    assert (module.scale.data_ptr(), module.scale.item(), module.training) == before
    assert module.seen == [] and t.module_ is not module
    assert t.module_.scale.data_ptr() != module.scale.data_ptr()
    t.transform(np.ones((5, 3)))
    assert t.module_.seen and all(s == (False, True, torch.float32) for s in t.module_.seen)
    with torch.no_grad():
        module.scale.fill_(7.0)  # the user's later changes do not reach module_
    np.testing.assert_allclose(t.transform(np.ones((1, 3))), [[2.0, 2.0, 2.0]])


def test_transform_batches_and_output_values():
    X = np.arange(70.0).reshape(35, 2)
    t = TorchTransformer(Recorder(), batch_size=8).fit(X)
    out = t.transform(X)
    np.testing.assert_allclose(out, X * 2)
    assert out.dtype == np.float32 and len(t.module_.seen) == 1 + 5  # probe + ceil(35/8)


@pytest.mark.parametrize("X", ["numpy", "tensor", "grad-tensor", "list", "pandas", "float64"])
def test_array_inputs_of_every_kind(X):
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


def test_dtype_bfloat16_runs_the_module_in_bf16_and_returns_float32():
    X = np.random.default_rng(0).standard_normal((9, 4)).astype(np.float32)
    torch.manual_seed(0)
    linear = torch.nn.Linear(4, 3)
    t = TorchTransformer(linear, dtype=torch.bfloat16).fit(X)
    assert t.module_.weight.dtype == torch.bfloat16 and linear.weight.dtype == torch.float32
    out = t.transform(X)
    with torch.no_grad():
        expected = linear.bfloat16()(torch.from_numpy(X).bfloat16()).float().numpy()
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, expected)  # float32 holds every bf16 value exactly
    assert "bfloat16" in TorchTransformer.__doc__ and "float32" in TorchTransformer.__doc__


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
    ({"module": torch.nn.Identity(), "device": "mps"}, np.ones((2, 2)), ValueError,
     r"device='mps' cannot be used here \(torch says: .+\); use 'auto', 'cpu' or 'cuda:N'"),
    ({"module": torch.nn.Identity(), "device": "xpu:0"}, np.ones((2, 2)), ValueError,
     r"device='xpu:0' cannot be used here"),
    ({"module": torch.nn.Identity(), "device": "meta"}, np.ones((2, 2)), ValueError,
     r"device='meta' holds no data"),
    ({"module": torch.nn.Identity(), "dtype": "int32"}, np.ones((2, 2)), ValueError,
     "dtype='int32' is not a torch floating dtype"),
    ({"module": torch.nn.Identity(), "verbose": "loud"}, np.ones((2, 2)), ValueError,
     "The 'verbose' parameter of TorchTransformer must be"),
    ({"module": torch.nn.Identity()}, np.ones(3), ValueError, "Expected 2D array"),
    ({"module": torch.nn.Identity()}, np.array([[1.0, np.nan]]), ValueError,
     "Input X contains NaN"),
    ({"module": torch.nn.Linear(3, 2)}, np.ones((2, 4)), RuntimeError,
     r"TorchTransformer: the module raised RuntimeError on a batch of shape \(1, 4\)"),
    ({"module": lambda x: x.sum()}, np.ones((2, 2)), ValueError,
     r"returned shape \(\) for a batch of 1 rows"),
])
def test_bad_input_gets_a_clear_error(kwargs, X, error, message):
    with pytest.raises(error, match=message):
        TorchTransformer(**kwargs).fit(X)


def test_fit_params_only_for_a_skorch_net():
    with pytest.raises(TypeError, match=r"got fit parameters \['sample_weight'\], but only a "
                                        "skorch net"):
        TorchTransformer(torch.nn.Identity()).fit(np.ones((2, 2)), sample_weight=[1, 1])


def test_clone_shares_the_module_and_keeps_params_and_output_config():
    module = torch.nn.Linear(3, 2)
    t = TorchTransformer(module, batch_size=7, verbose=1).set_output(transform="pandas")
    c = clone(t)
    # Nothing changes the module, and fit copies it: a clone needs no copy of its own.
    assert c.module is module and c.get_params()["batch_size"] == 7 and c.verbose == 1
    assert c._sklearn_output_config == {"transform": "pandas"}
    c.set_params(batch_size=9, output=0)
    assert (c.batch_size, c.output, t.batch_size) == (9, 0, 7)
    assert repr(TorchTransformer(torch.nn.Identity(), batch_size=7)) == \
        "TorchTransformer(batch_size=7, module=Identity())"
    fitted = clone(t).fit(np.ones((2, 3)))
    assert fitted.module_ is not module
    assert fitted.module_.weight.data_ptr() != module.weight.data_ptr()


@pytest.mark.parametrize("lookup", ["scikit-learn's", "public config only"])
def test_the_output_container_is_set_output_s_else_the_global_setting(lookup, monkeypatch):
    from tensorbridge.sklearn import _output

    if lookup == "public config only":  # what a scikit-learn without the private helper gets
        monkeypatch.setattr(_output, "_get_output_config", None)
    else:
        assert _output._get_output_config is not None
    t = TorchTransformer(torch.nn.Identity())
    assert _output.transform_output(t) == "default"
    with sklearn.config_context(transform_output="pandas"):
        assert _output.transform_output(t) == "pandas"
        assert _output.transform_output(clone(t).set_output(transform="default")) == "default"
    assert _output.transform_output(t.set_output(transform="pandas")) == "pandas"


# -- the per-sample shape ------------------------------------------------------------


def conv_features():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.AdaptiveAvgPool2d(2),
                               torch.nn.Flatten())


def test_the_whole_sample_shape_is_checked():
    images = np.random.default_rng(0).random((6, 1, 8, 8)).astype(np.float32)
    t = TorchTransformer(conv_features()).fit(images)
    assert t.sample_shape_in_ == (1, 8, 8) and t.n_features_in_ == 1
    assert t.transform(images).shape == (6, 16)
    larger = np.ones((3, 1, 12, 12), np.float32)  # the adaptive pool would take it: garbage
    message = re.escape("X has samples of shape (1, 12, 12), but TorchTransformer was fitted "
                        "on samples of shape (1, 8, 8)")
    with pytest.raises(ValueError, match=message):
        t.transform(larger)
    with pytest.raises(ValueError, match=message):
        t.transform(torch.from_numpy(larger))
    with pytest.raises(ValueError, match=message):
        t.transform(TensorDataset(torch.from_numpy(larger)))
    with pytest.raises(ValueError, match=re.escape("shape (3, 8, 8), but TorchTransformer was "
                                                   "fitted on samples of shape (1, 8, 8)")):
        t.transform(np.ones((2, 3, 8, 8), np.float32))  # other channels: shapes, not widths
    with pytest.raises(ValueError, match=re.escape("X has samples of shape (1, 12, 12)")):
        t.transform(DataLoader(TensorDataset(torch.from_numpy(larger)), batch_size=2))


def test_a_linear_module_gets_the_width_error_not_a_torch_error():
    t = TorchTransformer(torch.nn.Linear(4, 2)).fit(np.ones((3, 4)))
    # scikit-learn's sentence, once, with the fix; not followed by the same in other words
    once = ("^" + re.escape("X has 5 features, but TorchTransformer is expecting 4 features as "
                            "input; pass X of 4 features, or fit again") + "$")
    with pytest.raises(ValueError, match=once):
        t.transform(np.ones((2, 5)))
    with pytest.raises(ValueError, match=once):
        t.transform(torch.ones(2, 5))
    with pytest.raises(ValueError, match="X has 5 features, but TorchTransformer is expecting 4"):
        t.transform(np.ones((2, 5)).tolist())  # no shape to read first: scikit-learn's check
    with pytest.raises(ValueError, match=once):
        t.transform(_Items(torch.ones(2, 5)))  # a Dataset: no scikit-learn width check


def test_a_dict_fitted_transformer_wants_the_same_inputs():
    t = TorchTransformer(lambda a, b: a * b.sum(1, keepdim=True)).fit(
        {"a": np.ones((4, 2)), "b": np.ones((4, 3))})
    assert t.sample_shape_in_ == {"a": (2,), "b": (3,)} and not hasattr(t, "n_features_in_")
    with pytest.raises(ValueError, match=re.escape("samples of shape {'a': (2,), 'b': (4,)}, but "
                                                   "TorchTransformer was fitted on samples of "
                                                   "shape {'a': (2,), 'b': (3,)}")):
        t.transform({"a": np.ones((4, 2)), "b": np.ones((4, 4))})
    with pytest.raises(ValueError, match=re.escape("X has samples of shape (2,), but "
                                                   "TorchTransformer was fitted on samples of "
                                                   "shape {'a': (2,), 'b': (3,)}")):
        t.transform(_Items(torch.ones(3, 2)))


# -- the caller's data is never modified ----------------------------------------------


class InPlace(torch.nn.Module):
    """Works on its input in place and records where that input lives."""

    def __init__(self, first):
        super().__init__()
        self.first, self.addresses = first, []

    def forward(self, x):
        self.addresses.append(x.data_ptr())
        x = self.first(x)
        return x.mul_(2)


@pytest.mark.parametrize("first", ["relu-inplace", "add_"])
@pytest.mark.parametrize("kind", ["numpy", "tensor", "readonly", "dataset", "loader", "dict"])
def test_a_module_working_in_place_never_changes_the_callers_data(first, kind):
    X = np.random.default_rng(0).standard_normal((37, 3)).astype(np.float32)
    original = X.copy()
    layer = torch.nn.ReLU(inplace=True) if first == "relu-inplace" else _AddOne()
    module = InPlace(layer)
    expected = (np.maximum(X, 0) if first == "relu-inplace" else X + 1) * 2
    given = {"numpy": lambda: X, "readonly": lambda: X, "tensor": lambda: torch.from_numpy(X),
             "dataset": lambda: TensorDataset(torch.from_numpy(X)),
             "loader": lambda: DataLoader(TensorDataset(torch.from_numpy(X)), batch_size=10),
             "dict": lambda: {"x": X}}[kind]()
    if kind == "readonly":
        X.flags.writeable = False
    if kind == "dict":
        module = _Keyword(module)
    t = TorchTransformer(module, batch_size=8).fit(given)
    out = t.transform(given)
    np.testing.assert_allclose(out, expected, rtol=1e-6)
    np.testing.assert_array_equal(X, original)  # the caller's data: untouched
    inner = t.module_.inner if kind == "dict" else t.module_
    start, end = X.ctypes.data, X.ctypes.data + X.nbytes
    assert not any(start <= address < end for address in inner.addresses)
    # One buffer, reused: every full batch of transform saw the same memory.
    assert len(set(inner.addresses[1:-1])) == 1


class _AddOne(torch.nn.Module):
    def forward(self, x):
        return x.add_(1)


class _Keyword(torch.nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(x)


def test_an_identity_module_that_returns_the_buffer_still_gives_every_row():
    X = np.arange(20.0, dtype=np.float32).reshape(10, 2)
    t = TorchTransformer(lambda x: x, batch_size=3).fit(X)  # returns the reused buffer itself
    np.testing.assert_array_equal(t.transform(X), X)


# -- inputs users already have ---------------------------------------------------------


class _Items(Dataset):
    """A map-style Dataset of (input, label) tuples."""

    def __init__(self, inputs, as_numpy=False):
        self.inputs, self.as_numpy = inputs, as_numpy

    def __len__(self):
        return len(self.inputs)

    def __getitem__(self, index):
        x = self.inputs[index]
        return (x.numpy() if self.as_numpy else x), index % 2


class _Stream(IterableDataset):
    def __init__(self, inputs):
        self.inputs = inputs

    def __iter__(self):
        yield from self.inputs


def rows(n=23, d=3):
    return torch.arange(n * d, dtype=torch.float32).reshape(n, d)


@pytest.mark.parametrize("kind", ["tensor-dataset", "tuples", "numpy-items", "iterable",
                                  "loader", "loader-tuples", "loader-iterable"])
def test_datasets_and_loaders_give_one_row_per_sample_in_order(kind):
    X = rows()
    given = {
        "tensor-dataset": TensorDataset(X, torch.zeros(len(X))),
        "tuples": _Items(X),
        "numpy-items": _Items(X, as_numpy=True),
        "iterable": _Stream(X),
        "loader": DataLoader(_Stream(X), batch_size=5),
        "loader-tuples": DataLoader(TensorDataset(X, torch.zeros(len(X))), batch_size=4),
        "loader-iterable": DataLoader(_Stream(X), batch_size=None),
    }[kind]
    module = torch.nn.Linear(3, 2)
    expected = TorchTransformer(module).fit(X.numpy()).transform(X.numpy())
    if kind == "loader-iterable":
        with pytest.raises(ValueError, match="batch_size=None, so its items have no batch"):
            TorchTransformer(module).fit(given)
        return
    t = TorchTransformer(module, batch_size=6).fit(given)
    assert t.sample_shape_in_ == (3,) and t.n_features_in_ == 3
    np.testing.assert_allclose(t.transform(given), expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(t.transform(X.numpy()), expected, rtol=1e-5, atol=1e-5)


class _CountingLoader(DataLoader):
    """A DataLoader that counts how often it is started (each start of a real
    one with num_workers > 0 starts its worker processes)."""

    starts = 0

    def __iter__(self):
        _CountingLoader.starts += 1
        return super().__iter__()


def test_a_loader_is_started_once_per_fit_and_once_per_transform():
    X = rows()
    loader = _CountingLoader(TensorDataset(X), batch_size=5)
    t = TorchTransformer(torch.nn.Identity(), batch_size=6).fit(loader)
    assert _CountingLoader.starts == 1
    np.testing.assert_array_equal(t.transform(loader), X.numpy())
    assert _CountingLoader.starts == 2
    np.testing.assert_array_equal(t.transform(loader), X.numpy())  # a new pass, all rows
    assert _CountingLoader.starts == 3


class _CountingItems(_Items):
    """A map-style Dataset that counts the reads of each index."""

    def __init__(self, inputs):
        super().__init__(inputs)
        self.reads = Counter()

    def __getitem__(self, index):
        self.reads[index] += 1
        return super().__getitem__(index)


class _CountingStream(_Stream):
    """An IterableDataset that counts how often it yields each item."""

    def __init__(self, inputs):
        super().__init__(inputs)
        self.yielded = Counter()

    def __iter__(self):
        for index, x in enumerate(self.inputs):
            self.yielded[index] += 1
            yield x


@pytest.mark.parametrize("kind", ["map-style", "iterable"])
def test_a_dataset_is_read_once_per_fit_and_once_per_transform(kind):
    X = rows(11)
    dataset = _CountingItems(X) if kind == "map-style" else _CountingStream(X)
    reads = dataset.reads if kind == "map-style" else dataset.yielded
    t = TorchTransformer(torch.nn.Identity(), batch_size=4).fit(dataset)
    assert reads == {0: 1}  # fit probes the first item only, and once
    for transforms in (1, 2):  # each transform is a new pass: every item once more
        np.testing.assert_array_equal(t.transform(dataset), X.numpy())
        assert reads == {index: transforms + (index == 0) for index in range(len(X))}


def test_fitted_on_arrays_transforms_a_dataset_and_back():
    X = rows(11)
    t = TorchTransformer(torch.nn.Identity(), batch_size=4).fit(X.numpy())
    np.testing.assert_array_equal(t.transform(_Items(X)), X.numpy())
    np.testing.assert_array_equal(t.transform(_Stream(X)), X.numpy())


def test_a_dict_of_arrays_feeds_a_module_of_several_inputs():
    class TwoInputs(torch.nn.Module):
        def forward(self, image, extra):
            return torch.cat([image.flatten(1), extra * 10], dim=1)

    rng = np.random.default_rng(0)
    X = {"image": rng.random((9, 1, 2, 2)).astype(np.float32),
         "extra": torch.arange(18.0).reshape(9, 2)}
    t = TorchTransformer(TwoInputs(), batch_size=4).fit(X)
    out = t.transform(X)
    assert out.shape == (9, 6) and t.n_features_out_ == 6
    np.testing.assert_allclose(out[:, :4], X["image"].reshape(9, 4))
    np.testing.assert_allclose(out[:, 4:], X["extra"].numpy() * 10)


@pytest.mark.parametrize(("X", "error", "message"), [
    ({}, ValueError, "X is an empty dict"),
    ({"a": np.ones((3, 2)), "b": np.ones((4, 2))}, ValueError,
     r"different lengths \{'a': 3, 'b': 4\}"),
    ({1: np.ones((3, 2))}, TypeError, "key 1 is not a Python name"),
    ({"a": np.ones((3, 2)), "b": np.float32(1)}, ValueError, r"X\['b'\] is 0-d"),
    ({"a": np.array([[1.0, np.nan]])}, ValueError, r"X\['a'\] contains NaN"),
    (_Items([]), ValueError, "X is an empty Dataset"),
    (_Stream([]), ValueError, "X is an empty Dataset"),
    (_Items(["text"]), TypeError, "Dataset item 0 is a str; items must be tensors or arrays"),
    (_Items([{"x": torch.ones(2)}]), TypeError,
     r"item 0 is a dict; .+ \(for a module of several inputs pass a dict of arrays as X\)"),
    (_Items([torch.ones(2), torch.ones(3)]), ValueError,
     r"Dataset item 1 has shape \(3,\), but item 0 has shape \(2,\)"),
    (DataLoader(TensorDataset(torch.ones(4, 2)), batch_size=2, shuffle=True), ValueError,
     r"draws samples at random \(RandomSampler\).+shuffle=False"),
    (DataLoader(TensorDataset(torch.ones(5, 2)), batch_size=2, drop_last=True), ValueError,
     "drop_last=True"),
])
def test_unsupported_inputs_get_clear_errors(X, error, message):
    with pytest.raises(error, match=message):
        TorchTransformer(torch.nn.Identity()).fit_transform(X)


# -- progress ------------------------------------------------------------------------


def test_verbose_reports_progress_on_stderr_during_transform(capsys):
    X = np.ones((30, 2), np.float32)
    t = TorchTransformer(torch.nn.Identity(), batch_size=10, verbose=1).fit(X)
    assert capsys.readouterr() == ("", "")  # fit runs no transform: nothing to report
    t.transform(X)
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith("\r[TorchTransformer] transform: batch 1/3, ")
    assert "\r[TorchTransformer] transform: batch 3/3, " in err and " rows/s" in err
    last = err.rstrip("\n").split("\n")[-1]
    assert re.fullmatch(r"\[TorchTransformer\] transform: 30 rows in 3 batches, \d+\.\d\d s, "
                        r"[\d,]+ rows/s", last), err
    assert err.count("\n") == 2  # one updating line, then the summary
    t.transform(_Stream(torch.ones(5, 2)))  # no length: batches counted without a total
    assert "transform: batch 1, " in capsys.readouterr().err


def test_verbose_zero_writes_nothing(capsys):
    X = np.ones((30, 2), np.float32)
    TorchTransformer(torch.nn.Identity(), batch_size=10).fit(X).transform(X)
    assert capsys.readouterr() == ("", "")


# -- pickles -------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["pickle", "joblib"])
def test_fitted_round_trips(how, tmp_path):
    X, _ = data()
    t = TorchTransformer(torch.nn.Linear(5, 3), verbose=1).fit(X)
    if how == "pickle":
        loaded = pickle.loads(pickle.dumps(t))
    else:
        joblib.dump(t, tmp_path / "t.joblib")
        loaded = joblib.load(tmp_path / "t.joblib")
    with contextlib.redirect_stderr(io.StringIO()):
        np.testing.assert_array_equal(loaded.transform(X), t.transform(X))
    assert loaded.module_ is not t.module_ and loaded.module_ is not loaded.module
    assert not loaded.module_.training and loaded.get_params()["verbose"] == 1


def test_a_fitted_pickle_holds_the_weights_once():
    module = torch.nn.Linear(256, 256)
    weights = sum(p.numel() * 4 for p in module.parameters())
    unfitted = len(pickle.dumps(TorchTransformer(module)))
    fitted_t = TorchTransformer(module).fit(np.ones((2, 256)))
    fitted = len(pickle.dumps(fitted_t))
    assert unfitted > weights and fitted < unfitted + weights / 10
    loaded = pickle.loads(pickle.dumps(fitted_t))
    assert loaded.module_ is not loaded.module  # made again: a separate module
    assert loaded.module_.weight.data_ptr() != loaded.module.weight.data_ptr()
    assert torch.equal(loaded.module_.weight, module.weight) and not loaded.module_.training
    # A module_ that differs from the user's module (changed after fit) is kept as it is.
    with torch.no_grad():
        module.weight.add_(1)
    changed = pickle.loads(pickle.dumps(fitted_t))
    assert len(pickle.dumps(fitted_t)) > unfitted + weights / 2
    assert torch.equal(changed.module_.weight, fitted_t.module_.weight)
    assert not torch.equal(changed.module_.weight, changed.module.weight)


def test_a_pickle_made_again_keeps_the_dtype_cast():
    t = TorchTransformer(torch.nn.Linear(4, 2), dtype="float64").fit(np.ones((3, 4)))
    loaded = pickle.loads(pickle.dumps(t))
    assert loaded.module_.weight.dtype == torch.float64
    assert loaded.module.weight.dtype == torch.float32
    np.testing.assert_array_equal(loaded.transform(np.ones((2, 4))), t.transform(np.ones((2, 4))))


@pytest.mark.parametrize(("fitted_with", "then"), [("float64", None), (None, "float64")])
def test_a_pickle_keeps_module_as_fitted_when_dtype_changed_since(fitted_with, then):
    # module_ is made again on load from the parameters the pickle holds; once
    # they no longer make the fitted module_, the pickle holds module_ itself.
    X = np.linspace(-1, 1, 12).reshape(3, 4)
    module = torch.nn.Linear(4, 2)
    t = TorchTransformer(module, dtype=fitted_with).fit(X)
    expected, placed = t.transform(X), t.module_.weight.dtype
    t.set_params(dtype=then)
    loaded = pickle.loads(pickle.dumps(t))
    assert loaded.module_.weight.dtype == placed and loaded.dtype_ == t.dtype_
    np.testing.assert_array_equal(loaded.transform(X), expected)


def test_a_pickle_of_an_earlier_build_with_a_described_recreate_loads(monkeypatch):
    from tensorbridge.sklearn import _torch_transformer

    # Development builds wrote _Recreate(source, cast): facts the pickle implies.
    def described(recreate):
        recreate.source, recreate.cast = "module", torch.float64

    t = TorchTransformer(torch.nn.Linear(4, 2), dtype="float64").fit(np.ones((3, 4)))
    with monkeypatch.context() as patch:
        patch.setattr(_torch_transformer._Recreate, "__init__", described, raising=False)
        saved = pickle.dumps(t)
    assert b"cast" in saved
    loaded = pickle.loads(saved)
    assert loaded.module_.weight.dtype == torch.float64 and loaded.module_ is not loaded.module
    np.testing.assert_array_equal(loaded.transform(np.ones((2, 4))), t.transform(np.ones((2, 4))))


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
@pytest.mark.parametrize("changed", [False, True])
def test_a_module_fitted_on_a_gpu_loads_without_one(changed):
    # The real fixture is written by scripts/gpu_check.sh on a GPU; here the
    # same bytes are made by hand: CUDA-tagged storages and a CUDA device_.
    X, _ = data()
    t = TorchTransformer(torch.nn.Linear(5, 3), device="cpu").fit(X)
    expected = t.transform(X)
    if changed:  # module_ differs from module: both are in the pickle
        with torch.no_grad():
            t.module.weight.add_(1)
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


@pytest.mark.parametrize("name", ["torch_transformer_0.1.0_cpu.pkl",
                                  "torch_transformer_0.1.0_cuda.pkl"])
def test_pickles_of_earlier_versions_still_load(name):
    # Written by tensorbridge 0.1.0 before verbose, layer and sample_shape_in_
    # existed, with module and module_ both saved (the _cuda one CUDA-tagged
    # with device_=cuda:0, as a GPU writes them).
    loaded = joblib.load(FIXTURES / name)
    assert loaded.get_params()["verbose"] == 0 and loaded.layer is None
    assert loaded.device_.type == ("cuda" if torch.cuda.is_available() and "cuda" in name
                                   else "cpu")
    X = np.linspace(-1, 1, 32, dtype=np.float32).reshape(8, 4)
    weight, bias = (p.detach().cpu().numpy() for p in (loaded.module.weight, loaded.module.bias))
    np.testing.assert_allclose(loaded.transform(X), X @ weight.T + bias, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="X has 5 features"):
        loaded.transform(np.ones((2, 5)))
    assert len(pickle.dumps(loaded)) < len((FIXTURES / name).read_bytes())  # weights once now


def test_gpu_pickle_fixture_loads_here():
    fixture = FIXTURES / "torch_transformer_cuda.pkl"
    if not fixture.exists():
        pytest.skip("tests/fixtures/torch_transformer_cuda.pkl (a TorchTransformer fitted on a "
                    "GPU) is not in this checkout; scripts/gpu_check.sh writes it on a GPU "
                    "machine")
    loaded = joblib.load(fixture)
    X = np.ones((4, loaded.n_features_in_), np.float32)
    assert loaded.transform(X).shape == (4, loaded.n_features_out_)


# -- memory over cross-validation -----------------------------------------------------

CV_MEMORY = textwrap.dedent("""
    import gc, json, sys
    import numpy as np, torch
    from sklearn.linear_model import Ridge
    from sklearn.model_selection import cross_val_score
    from sklearn.pipeline import make_pipeline
    from tensorbridge.sklearn import TorchTransformer

    def status(key):
        for line in open("/proc/self/status"):
            if line.startswith(key):
                return int(line.split()[1]) * 1024

    hidden = int(sys.argv[1])  # the weights, not the data or activations, dominate
    module = torch.nn.Sequential(torch.nn.Linear(16, 2048), torch.nn.Linear(2048, hidden),
                                 torch.nn.Linear(hidden, 8))
    nbytes = sum(p.numel() * p.element_size() for p in module.parameters())
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((60, 16)).astype(np.float32), rng.standard_normal(60)
    pipe = make_pipeline(TorchTransformer(module, batch_size=20), Ridge())
    cross_val_score(pipe, X[:6], y[:6], cv=3)  # warm-up: imports, allocator pools
    gc.collect()
    open("/proc/self/clear_refs", "w").write("5")  # peak RSS := current RSS
    before = status("VmRSS")
    cross_val_score(pipe, X, y, cv=3)
    print(json.dumps({"growth": (status("VmHWM") - before) / nbytes}))
""")


@pytest.mark.slow  # a fresh interpreter measuring its peak memory
@pytest.mark.skipif(SANITIZED, reason="ASan's quarantine keeps freed memory resident")
def test_cross_validation_copies_the_module_once_per_fold_at_a_time():
    if not os.access("/proc/self/clear_refs", os.W_OK):
        pytest.skip("needs /proc/self/clear_refs to reset the peak-RSS counter")
    import json

    result = subprocess.run([sys.executable, "-c", CV_MEMORY, str(12_288)],  # 100 MB
                            capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr
    growth = json.loads(result.stdout.strip().splitlines()[-1])["growth"]
    # One copy (module_) alive at a time; clone and fit used to make two each.
    assert growth < 1.6, growth


# -- scikit-learn machinery ------------------------------------------------------------


@pytest.mark.slow  # a search over two worker processes
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
    refit = t.fit(TensorDataset(torch.ones(4, 3)))  # no column names there: forgotten
    assert not hasattr(refit, "feature_names_in_") and refit.n_features_in_ == 3


def test_tags():
    tags = TorchTransformer(torch.nn.Identity()).__sklearn_tags__()
    assert tags.input_tags.allow_nan is False and tags.requires_fit is True
    assert tags.transformer_tags.preserves_dtype == ["float32"]
    assert TorchTransformer(torch.nn.Linear(2, 2).double()).__sklearn_tags__() \
        .transformer_tags.preserves_dtype == ["float64"]


def test_images_and_other_nd_inputs_reach_the_module_as_they_are():
    images = np.random.default_rng(0).random((6, 3, 4, 4)).astype(np.float32)
    t = TorchTransformer(torch.nn.Conv2d(3, 2, 3)).fit(images)
    assert t.n_features_in_ == 3 and t.transform(images).shape == (6, 2 * 2 * 2)


# -- lazy modules ----------------------------------------------------------------------


def lazy_module():
    return torch.nn.Sequential(torch.nn.LazyLinear(4), torch.nn.ReLU(),
                               torch.nn.LazyBatchNorm1d())


def is_lazy(module):
    return any(torch.nn.parameter.is_lazy(tensor)
               for tensor in [*module.parameters(), *module.buffers()])


@pytest.mark.parametrize("dtype", [None, "float64"])
def test_a_lazy_module_is_materialised_on_one_batch_of_x_in_module_only(dtype):
    X, _ = data(10, 3)
    module = lazy_module()
    torch.manual_seed(0)
    t = TorchTransformer(module, dtype=dtype).fit(X)
    assert is_lazy(module) and type(module[0]) is torch.nn.LazyLinear  # the user's: untouched
    assert not is_lazy(t.module_) and t.module_[0].weight.shape == (4, 3)
    assert t.module_[0].weight.dtype == (torch.float64 if dtype else torch.float32)
    assert not t.module_[0].weight.is_inference()  # ordinary parameters, as torch makes them
    assert t.module_[2].num_batches_tracked.item() == 0  # materialised in eval mode
    out = t.transform(X)
    assert out.shape == (10, 4) and out.dtype == (np.float64 if dtype else np.float32)
    with torch.no_grad():
        expected = t.module_(torch.from_numpy(X).to(t.dtype_))
    np.testing.assert_allclose(out, expected.numpy(), rtol=1e-6)
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(t)).transform(X), out)
    torch.manual_seed(0)  # torch's own initialisation, from its global generator
    assert np.array_equal(TorchTransformer(module, dtype=dtype).fit(X).transform(X), out)


def test_a_lazy_module_behind_layer_is_materialised_up_to_the_layer():
    X, _ = data(10, 3)
    t = TorchTransformer(lazy_module(), layer="1").fit(X)
    assert t.transform(X).shape == (10, 4) and not is_lazy(t.module_[0])
    assert pickle.loads(pickle.dumps(t)).transform(X).shape == (10, 4)


def test_a_lazy_module_that_cannot_take_x_names_the_module_error():
    class Broken(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = torch.nn.LazyLinear(2)

        def forward(self, x):
            return self.linear(x.reshape(-1, 7))

    with pytest.raises(RuntimeError, match=r"TorchTransformer: the module raised RuntimeError "
                                           r"on a batch of shape \(1, 3\)"):
        TorchTransformer(Broken()).fit(np.ones((4, 3)))


# -- importing without scikit-learn ---------------------------------------------------


def test_importing_tensorbridge_sklearn_without_scikit_learn_names_the_extra():
    code = textwrap.dedent("""
        import sys

        class NoSklearn:
            def find_spec(self, name, path=None, target=None):
                if name == "sklearn" or name.startswith("sklearn."):
                    raise ModuleNotFoundError(f"No module named {name!r}", name=name)

        sys.meta_path.insert(0, NoSklearn())
        import tensorbridge  # fine without it
        try:
            import tensorbridge.sklearn
        except ImportError as error:
            print(type(error).__name__, error)
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120, check=True)
    assert "tensorbridge.sklearn needs scikit-learn" in result.stdout
    assert "pip install 'tensorbridge[sklearn]'" in result.stdout


# -- layer= ----------------------------------------------------------------------------


class Tail(torch.nn.Module):
    """Counts its calls: a layer after the one asked for must never run."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return x.sum(1, keepdim=True)


def backbone():
    from collections import OrderedDict

    torch.manual_seed(0)
    layers = OrderedDict(layer1=torch.nn.Linear(4, 6), layer2=torch.nn.Tanh(),
                         layer3=torch.nn.Linear(6, 3))
    return torch.nn.Sequential(OrderedDict(backbone=torch.nn.Sequential(layers), tail=Tail()))


def test_layer_takes_a_nested_submodules_output_and_stops_there():
    X = np.random.default_rng(0).standard_normal((10, 4)).astype(np.float32)
    model = backbone()
    t = TorchTransformer(model, layer="backbone.layer3", batch_size=4).fit(X)
    out = t.transform(X)
    with torch.no_grad():
        expected = model.backbone(torch.from_numpy(X)).numpy()
    np.testing.assert_allclose(out, expected, rtol=1e-6)
    assert t.n_features_out_ == 3 and t.module_.tail.calls == 0  # the pass stopped there
    hidden = TorchTransformer(model, layer="backbone.layer2").fit_transform(X)
    assert hidden.shape == (10, 6) and np.all(np.abs(hidden) <= 1)
    assert not t.module_.backbone.layer3._forward_hooks  # no hook left behind
    loaded = pickle.loads(pickle.dumps(t))
    np.testing.assert_array_equal(loaded.transform(X), out)


def test_layer_output_may_be_a_tuple_picked_by_output():
    class Pair(torch.nn.Module):
        def forward(self, x):
            return x * 2, x * 3

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.pair = Pair()

        def forward(self, x):
            a, b = self.pair(x)
            return a + b

    X = np.ones((3, 2), np.float32)
    np.testing.assert_array_equal(TorchTransformer(Net(), layer="pair", output=1).fit_transform(X),
                                  X * 3)


def test_a_module_that_swallows_the_stop_still_gives_the_layers_output():
    class Careless(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = torch.nn.Linear(2, 2)

        def forward(self, x):
            try:
                return self.inner(x) + 100
            except Exception:  # noqa: BLE001 - the point of this module
                return x

    X = np.ones((3, 2), np.float32)
    t = TorchTransformer(Careless(), layer="inner").fit(X)
    with torch.no_grad():
        expected = t.module_.inner(torch.from_numpy(X)).numpy()
    np.testing.assert_allclose(t.transform(X), expected, rtol=1e-6)


class Skips(torch.nn.Module):
    """Has a submodule its forward never calls."""

    def __init__(self):
        super().__init__()
        self.unused = torch.nn.Linear(4, 4)

    def forward(self, x):
        return x


@pytest.mark.parametrize(("module", "layer", "error", "message"), [
    (backbone(), "backbone.layer4", ValueError,
     r"layer='backbone.layer4' is not a submodule of Sequential; its submodules are: "
     r"'backbone', 'backbone.layer1', 'backbone.layer2', 'backbone.layer3', 'tail'"),
    (torch.nn.Identity(), "x", ValueError, r"its submodules are: none"),
    (lambda x: x, "x", ValueError, "layer='x' needs a torch.nn.Module, but module is a function"),
    (Skips(), "unused", RuntimeError, "layer='unused' never ran in the module's forward pass"),
])
def test_layer_errors(module, layer, error, message):
    with pytest.raises(error, match=message):
        TorchTransformer(module, layer=layer).fit(np.ones((3, 4)))


# -- on a GPU (scripts/gpu_check.sh's tests stage runs these by name) -------------------


@pytest.mark.gpu
@pytest.mark.parametrize("kind", ["numpy", "cuda-tensor", "dataset", "loader", "dict"])
def test_on_a_gpu_every_input_kind_matches_the_cpu_and_x_is_untouched(kind, capsys):
    X = np.random.default_rng(0).standard_normal((1000, 3)).astype(np.float32)
    module = InPlace(torch.nn.ReLU(inplace=True))
    expected = TorchTransformer(module, device="cpu").fit(X).transform(X)
    X_cuda = torch.from_numpy(X).cuda()
    original = X_cuda.clone()
    given = {"numpy": lambda: X, "cuda-tensor": lambda: X_cuda,
             "dataset": lambda: TensorDataset(X_cuda),
             "loader": lambda: DataLoader(TensorDataset(torch.from_numpy(X)), batch_size=300),
             "dict": lambda: {"x": X_cuda}}[kind]()
    t = TorchTransformer(_Keyword(module) if kind == "dict" else module, device="cuda",
                         batch_size=256, verbose=1).fit(given)
    out = t.transform(given)
    assert isinstance(out, np.ndarray) and out.shape == (1000, 3)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)
    assert torch.equal(X_cuda, original)  # the caller's device memory: untouched
    assert "transform: 1,000 rows in" in capsys.readouterr().err


@pytest.mark.gpu
def test_on_a_gpu_a_pickle_makes_module_again_on_the_gpu():
    X = np.ones((8, 4), np.float32)
    t = TorchTransformer(torch.nn.Linear(4, 3), device="cuda").fit(X)
    loaded = pickle.loads(pickle.dumps(t))
    assert loaded.module_.weight.is_cuda and not loaded.module.weight.is_cuda
    np.testing.assert_array_equal(loaded.transform(X), t.transform(X))


@pytest.mark.gpu
def test_on_a_gpu_a_lazy_module_is_materialised_there():
    X, _ = data(10, 3)
    module = lazy_module()
    t = TorchTransformer(module, device="cuda").fit(X)
    assert t.module_[0].weight.is_cuda and is_lazy(module)
    assert t.transform(X).shape == (10, 4)


# -- inputs and parameters at the edges (the manual's promises: docs/guide/sklearn.rst) --


@pytest.mark.parametrize("kind", ["bfloat16", "float8_e4m3fn"])
def test_ml_dtypes_arrays_and_dict_values_are_cast_exactly(kind):
    ml_dtypes = pytest.importorskip("ml_dtypes")
    narrow = np.array([[0.5, -2.0], [1.25, 3.0]], dtype=getattr(ml_dtypes, kind))
    t = TorchTransformer(torch.nn.Identity())
    np.testing.assert_array_equal(t.fit(narrow).transform(narrow), narrow.astype(np.float32))
    keyword = TorchTransformer(lambda x: x * 2)
    out = keyword.fit({"x": narrow}).transform({"x": narrow})
    np.testing.assert_array_equal(out, narrow.astype(np.float32) * 2)


@pytest.mark.parametrize("bad", [True, np.bool_(True)])
def test_bool_batch_sizes_are_refused_at_fit_and_at_transform(bad):
    from sklearn.utils._param_validation import InvalidParameterError

    X, _ = data(6, 2)
    with pytest.raises(InvalidParameterError, match=r"'batch_size'.+Got (np\.)?True"):
        TorchTransformer(torch.nn.Identity(), batch_size=bad).fit(X)
    t = TorchTransformer(torch.nn.Identity(), batch_size=np.int64(4)).fit(X)
    np.testing.assert_array_equal(t.transform(X), X.astype(np.float32))
    with pytest.raises(InvalidParameterError, match=r"'batch_size'.+Got (np\.)?True"):
        t.set_params(batch_size=bad).transform(X)


def test_nested_module_params_are_refused_before_anything_is_set():
    linear = torch.nn.Linear(3, 2)
    t = TorchTransformer(linear)
    with pytest.raises(ValueError, match=r"module__bias, module__in_features.+module="):
        t.set_params(module=torch.nn.Linear(4, 2), module__in_features=4, module__bias=False)
    assert t.module is linear  # nothing half-set


def test_a_module_output_that_changes_width_names_both_batches():
    X, _ = data(7, 3)
    t = TorchTransformer(lambda x: x if len(x) == 3 else x[:, :1], batch_size=3).fit(X)
    with pytest.raises(ValueError, match=r"1 features of torch.float32 for batch 2, but 3 "
                                         r"features of torch.float32 for batch 0"):
        t.transform(X)


@pytest.mark.parametrize("layout", ["to_sparse", "to_sparse_csr"])
def test_sparse_module_outputs_are_densified(layout):
    X, _ = data(5, 3)
    out = TorchTransformer(lambda x: getattr(x, layout)(), batch_size=2).fit(X).transform(X)
    np.testing.assert_array_equal(out, X.astype(np.float32))


@pytest.mark.parametrize(("dtype", "expected"), [
    (torch.float16, "float16"), ("double", "float64"), ("torch.half", "float16"),
    (torch.complex32, "complex64"), (torch.float8_e5m2, "float32")])
def test_tags_name_the_numpy_dtype_transform_returns(dtype, expected):
    t = TorchTransformer(torch.nn.Identity(), dtype=dtype)
    assert t.__sklearn_tags__().transformer_tags.preserves_dtype == [expected]
    if dtype is not torch.complex32:  # experimental in torch: it warns
        assert str(t.fit(np.ones((2, 2))).transform(np.ones((2, 2))).dtype) == expected
    assert TorchTransformer(torch.nn.Identity(), dtype="int8").__sklearn_tags__() \
        .transformer_tags.preserves_dtype == ["int8"]  # fit names a bad dtype; tags do not raise


def test_a_module_class_and_a_partly_meta_module_are_named():
    from sklearn.utils._param_validation import InvalidParameterError

    X, _ = data(4, 3)
    with pytest.raises(InvalidParameterError, match=r"module=torch\.nn\.Linear\(\)"):
        TorchTransformer(torch.nn.Linear).fit(X)
    module = torch.nn.Sequential(torch.nn.Linear(3, 3))
    module.register_buffer("scale", torch.empty(3, device="meta"))
    with pytest.raises(TypeError, match=r"'scale' is on the meta device.+load_state_dict"):
        TorchTransformer(module).fit(X)


@pytest.mark.gpu
def test_on_a_gpu_a_module_output_that_changes_dtype_is_named():
    X, _ = data(10, 3)
    t = TorchTransformer(lambda x: x if len(x) == 4 else x.double(), device="cuda",
                         batch_size=4).fit(X)
    with pytest.raises(ValueError, match=r"TorchTransformer: the module.+torch.float64 for "
                                         r"batch 2"):
        t.transform(X)
    sparse = TorchTransformer(lambda x: x.to_sparse(), device="cuda", batch_size=4).fit(X)
    np.testing.assert_array_equal(sparse.transform(X), X.astype(np.float32))


def failed_checks(estimator):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        results = check_estimator(estimator, on_fail=None)
    return {r["check_name"] for r in results if r["status"] == "failed"}


@pytest.mark.parametrize("kind", ["tensor", "tensor-dataset"])
def test_bf16_tensor_input_is_cast(kind):
    t = torch.randn(4, 3).bfloat16()
    X = t if kind == "tensor" else TensorDataset(t)
    out = TorchTransformer(torch.nn.Identity()).fit(X).transform(X)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, t.float().numpy())


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float8_e4m3fn])
def test_tags_of_a_narrow_dtype_name_the_dtype_returned(dtype):
    t = TorchTransformer(torch.nn.Identity(), dtype=dtype)
    returned = t.fit(np.ones((2, 2))).transform(np.ones((2, 2))).dtype
    assert t.__sklearn_tags__().transformer_tags.preserves_dtype == [str(returned)]


def test_tags_of_a_dtype_alias_name_the_numpy_dtype():
    t = TorchTransformer(torch.nn.Identity(), dtype="float")
    assert t.fit(np.ones((2, 2))).transform(np.ones((2, 2))).dtype == np.float32
    assert t.__sklearn_tags__().transformer_tags.preserves_dtype == ["float32"]
    assert "check_transformer_preserve_dtypes" not in failed_checks(
        TorchTransformer(torch.nn.Identity(), dtype="float"))


def test_batch_size_true_is_refused_by_name():
    X, _ = features()
    with pytest.raises(InvalidParameterError, match="batch_size"):
        TorchTransformer(torch.nn.Identity(), batch_size=True).fit(X)


def test_a_bad_batch_size_set_after_fit_is_named_at_transform():
    X, _ = features()
    t = TorchTransformer(torch.nn.Identity()).fit(X).set_params(batch_size=0)
    with pytest.raises(ValueError, match="batch_size"):
        t.transform(X)


def test_nested_module_params_of_a_plain_module_get_a_clear_error():
    with pytest.raises(ValueError, match=r"module__in_features.+module="):
        TorchTransformer(torch.nn.Linear(3, 2)).set_params(module__in_features=4)


def test_a_tensor_dataset_of_scalars_is_one_feature_per_sample():
    values = torch.arange(4.0)

    class Scalars(Dataset):
        def __len__(self):
            return 4

        def __getitem__(self, i):
            return values[i]

    expected = TorchTransformer(torch.nn.Identity()).fit(Scalars()).transform(Scalars())
    got = TorchTransformer(torch.nn.Identity()).fit(TensorDataset(values)) \
        .transform(TensorDataset(values))
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("module", [
    lambda x: x if len(x) == 4 else x.double(),
    lambda x: x[:, :len(x) % 3 + 1],
])
def test_an_inconsistent_module_output_is_named_as_the_modules(module):
    X, _ = features(10)
    with pytest.raises(ValueError, match="TorchTransformer: the module"):
        TorchTransformer(module, batch_size=4).fit(X).transform(X)


def test_a_sparse_module_output_is_densified():
    X, _ = features()
    out = TorchTransformer(lambda x: x.to_sparse()).fit(X).transform(X)
    assert isinstance(out, np.ndarray)
    np.testing.assert_array_equal(out, X)


@pytest.mark.parametrize("how", ["trace", "script"])
def test_a_torchscript_module_pickles(how):
    X, _ = features()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit is deprecated in 2.13
        linear = torch.nn.Linear(3, 2)
        module = (torch.jit.trace(linear, torch.ones(1, 3)) if how == "trace"
                  else torch.jit.script(linear))
    t = TorchTransformer(module).fit(X)
    np.testing.assert_allclose(pickle.loads(pickle.dumps(t)).transform(X), t.transform(X))


@pytest.mark.xfail(strict=True, reason="BUG? (torch limitation): a fitted transformer over a "
                   "parametrized module (parametrizations.weight_norm), which fits and transforms "
                   "fine, cannot be pickled: torch.save says 'Serialization of parametrized "
                   "modules is only supported through state_dict()'; at least say so at pickling "
                   "as TorchTransformer's error")
def test_a_parametrized_module_pickles():
    from torch.nn.utils import parametrizations

    X, _ = features()
    t = TorchTransformer(parametrizations.weight_norm(torch.nn.Linear(3, 2))).fit(X)
    np.testing.assert_allclose(pickle.loads(pickle.dumps(t)).transform(X), t.transform(X))


def test_a_lazy_module_is_materialised_by_fit():
    X, _ = features()
    lazy = torch.nn.LazyLinear(2)
    t = TorchTransformer(lazy).fit(X)
    assert t.transform(X).shape == (len(X), 2)
    assert isinstance(lazy.weight, torch.nn.parameter.UninitializedParameter)  # still the user's


@pytest.mark.parametrize("kind", ["dataset", "loader"])
def test_nan_in_a_dataset_or_loader_is_refused_like_in_arrays(kind):
    items = TensorDataset(torch.tensor([[np.nan, 1.0], [0.0, 1.0]]))
    X = items if kind == "dataset" else torch.utils.data.DataLoader(items, batch_size=1)

    class Items(Dataset):  # not a TensorDataset: read item by item
        def __len__(self):
            return len(items)

        def __getitem__(self, i):
            return items[i]

    with pytest.raises(ValueError, match="NaN"):
        TorchTransformer(torch.nn.Identity()).fit(Items() if kind == "dataset" else X)


def test_a_generator_x_is_named_with_the_fix():
    X, _ = features()
    with pytest.raises(TypeError, match="IterableDataset"):
        TorchTransformer(torch.nn.Identity()).fit(row for row in X)


def test_a_module_class_instead_of_an_instance_is_named():
    with pytest.raises(InvalidParameterError, match=r"must be a module instance, not the class "
                                                    r"torch\.nn\.ReLU; pass an instance"):
        TorchTransformer(torch.nn.ReLU).fit(features()[0])


def test_a_meta_module_gets_a_clear_error():
    with torch.device("meta"):
        module = torch.nn.Linear(3, 2)
    with pytest.raises(ValueError, match="meta"):
        TorchTransformer(module).fit(features()[0])


class Meet(torch.nn.Module):
    """Holds each forward pass until the other thread's is inside it too (once `barrier`
    is set): the threads go batch by batch in step, so both layer hooks stay registered."""

    barrier = None

    def forward(self, x):
        if Meet.barrier is not None:
            Meet.barrier.wait(timeout=2)
        return x


def test_two_threads_transform_with_layer():
    X, _ = features(8)
    module = torch.nn.Sequential(Meet(), torch.nn.Linear(3, 4), torch.nn.ReLU(),
                                 torch.nn.Linear(4, 2))
    t = TorchTransformer(module, layer="2", batch_size=1).fit(X)
    expected = t.transform(X)
    Meet.barrier = threading.Barrier(2)
    try:
        with ThreadPoolExecutor(2) as pool:
            results = list(pool.map(lambda _: t.transform(X), range(2)))
    finally:
        Meet.barrier = None
    for result in results:
        np.testing.assert_array_equal(result, expected)


@pytest.mark.parametrize("bad", [0, -1, 2.0])
def test_batch_size_out_of_range_is_refused_by_name(bad):
    with pytest.raises(InvalidParameterError, match=f"'batch_size'.+Got {bad}"):
        TorchTransformer(torch.nn.Identity(), batch_size=bad).fit(np.ones((2, 2)))


@pytest.mark.parametrize("device", [None, 0, "AUTO", 3.5])
def test_unusable_device_values_are_named(device):
    with pytest.raises(ValueError, match=rf"device={device!r} is not a torch device"):
        TorchTransformer(torch.nn.Identity(), device=device).fit(np.ones((2, 2)))


@pytest.mark.parametrize(("dtype", "expected"), [
    ("double", np.float64), ("half", np.float16), ("torch.float64", np.float64),
    (torch.complex64, np.complex64)])
def test_dtype_strings_and_complex(dtype, expected):
    X, _ = features()
    assert TorchTransformer(torch.nn.Identity(), dtype=dtype).fit(X).transform(X).dtype \
        == expected


@pytest.mark.parametrize("dtype", [np.float32, "Tensor", torch.bool, float])
def test_non_torch_or_non_floating_dtypes_are_named(dtype):
    with pytest.raises(ValueError, match="is not a torch floating dtype"):
        TorchTransformer(torch.nn.Identity(), dtype=dtype).fit(np.ones((2, 2)))


def test_modules_with_only_buffers_take_the_buffers_floating_dtype():
    class Scaled(torch.nn.Module):
        def __init__(self, dtype):
            super().__init__()
            self.register_buffer("s", torch.tensor(2, dtype=dtype))

        def forward(self, x):
            return x * self.s

    X, _ = features()
    t = TorchTransformer(Scaled(torch.float64)).fit(X)
    assert t.dtype_ == torch.float64 and t.transform(X).dtype == np.float64
    assert TorchTransformer(Scaled(torch.int64)).fit(X).dtype_ == torch.float32


def test_half_and_bf16_modules():
    X, _ = features()
    assert TorchTransformer(torch.nn.Linear(3, 2).bfloat16()).fit(X).transform(X).dtype \
        == np.float32
    assert TorchTransformer(torch.nn.Linear(3, 2).half()).fit(X).transform(X).dtype \
        == np.float16


@pytest.mark.parametrize("error", [ZeroDivisionError, KeyError, StopIteration])
def test_a_raising_module_is_wrapped_with_the_batch_described(error):
    def module(x):
        raise error("boom")

    with pytest.raises(RuntimeError, match=rf"module raised {error.__name__} on a batch of "
                                           r"shape \(1, 3\) torch.float32 on cpu"):
        TorchTransformer(module).fit(features()[0])


def test_output_picks_from_lists_namedtuples_and_negative_indices():
    from collections import namedtuple

    pair = namedtuple("Pair", "a b")
    X, _ = features()
    for module, output in [(lambda x: [x, 2 * x], 1), (lambda x: pair(x, 2 * x), 1),
                           (lambda x: (x, 2 * x), -1)]:
        np.testing.assert_array_equal(
            TorchTransformer(module, output=output).fit(X).transform(X), 2 * X)
    with pytest.raises(ValueError, match=r"returned a tuple of 1; pass output=0..0 .+output=3"):
        TorchTransformer(lambda x: (x,), output=3).fit(X)


def test_missing_and_empty_layer_names_list_the_submodules():
    module = torch.nn.Sequential(torch.nn.Linear(3, 2))
    for layer in ("5", ""):
        with pytest.raises(ValueError, match=rf"layer={layer!r} is not a submodule of "
                                             r"Sequential; its submodules are: '0'"):
            TorchTransformer(module, layer=layer).fit(features()[0])


def test_user_module_keeps_its_mode_and_state_and_is_never_called():
    module = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.Dropout(0.5),
                                 torch.nn.BatchNorm1d(3))
    X, _ = features()
    t = TorchTransformer(module).fit(X)
    first = t.transform(X)
    np.testing.assert_array_equal(first, t.transform(X))  # eval mode: dropout off
    assert module.training and module[2].num_batches_tracked.item() == 0


@pytest.mark.parametrize("make", [
    lambda X: X.astype(int), lambda X: X > 0, lambda X: X.astype(object), lambda X: X.tolist(),
    lambda X: X.astype(np.float16), lambda X: torch.from_numpy(X).long(),
    lambda X: np.ascontiguousarray(X[::-1])[::-1]])
def test_numeric_inputs_of_other_dtypes_and_layouts_are_cast(make):
    X, _ = features()
    out = TorchTransformer(torch.nn.Identity()).fit(make(X)).transform(make(X))
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, np.asarray(make(X), dtype=np.float32))


@pytest.mark.parametrize(("X", "message"), [
    (np.ones(3), "Expected 2D array"), (np.ones((0, 3)), "0 sample"),
    (np.ones((3, 0)), "0 feature"), (np.array([[np.inf, 1.0]]), "infinity"),
    (torch.ones(0, 3), "0 sample")])
def test_degenerate_arrays_get_scikit_learns_errors(X, message):
    with pytest.raises(ValueError, match=message):
        TorchTransformer(torch.nn.Identity()).fit(X)


def test_feature_names_are_checked_at_transform():
    pd = pytest.importorskip("pandas")
    frame = pd.DataFrame(features()[0], columns=["a", "b", "c"])
    t = TorchTransformer(torch.nn.Identity()).fit(frame)
    with pytest.raises(ValueError, match="same order"):
        t.transform(frame[["b", "a", "c"]])
    with pytest.raises(ValueError, match="unseen at fit time"):
        t.transform(frame.rename(columns={"a": "z"}))
    with pytest.raises(ValueError, match="input_features is not equal to feature_names_in_"):
        t.get_feature_names_out(["x", "b", "c"])
    with pytest.warns(UserWarning, match="does not have valid feature names"):
        t.transform(torch.tensor(frame.to_numpy()))


def test_pandas_output_keeps_the_index_and_names_every_flattened_column():
    pd = pytest.importorskip("pandas")
    frame = pd.DataFrame(features(6)[0], columns=["a", "b", "c"], index=list("uvwxyz"))
    out = TorchTransformer(torch.nn.Identity()).set_output(transform="pandas").fit(frame) \
        .transform(frame)
    assert list(out.index) == list("uvwxyz")
    images = TorchTransformer(torch.nn.Identity()).set_output(transform="pandas") \
        .fit_transform(np.ones((2, 2, 3)))
    assert list(images.columns) == [f"torchtransformer{i}" for i in range(6)]


def test_column_transformer_with_pandas_output_and_names():
    pd = pytest.importorskip("pandas")
    frame = pd.DataFrame(features()[0], columns=["a", "b", "c"])
    out = ColumnTransformer([("t", TorchTransformer(torch.nn.Linear(2, 2)), ["a", "b"]),
                             ("p", "passthrough", ["c"])]).set_output(transform="pandas") \
        .fit_transform(frame)
    assert list(out.columns) == ["t__torchtransformer0", "t__torchtransformer1", "p__c"]


@pytest.mark.slow  # two worker processes
def test_grid_search_in_two_processes_over_module_layer_and_dtype():
    pd = pytest.importorskip("pandas")
    X, y = features(40)
    pipe = make_pipeline(TorchTransformer(torch.nn.Sequential(torch.nn.Linear(3, 4),
                                                              torch.nn.ReLU())),
                         LogisticRegression())
    search = GridSearchCV(pipe, {"torchtransformer__layer": ["0", "1"],
                                 "torchtransformer__dtype": ["float32", "float64"]},
                          cv=2, n_jobs=2).fit(pd.DataFrame(X, columns=list("abc")), y)
    assert search.best_params_["torchtransformer__layer"] in ("0", "1")
    modules = GridSearchCV(make_pipeline(TorchTransformer(torch.nn.Identity()),
                                         LogisticRegression()),
                           {"torchtransformer__module": [torch.nn.Identity(), torch.nn.Tanh()]},
                           cv=2, n_jobs=2).fit(X, y)
    assert type(modules.best_params_["torchtransformer__module"]) in (torch.nn.Identity,
                                                                       torch.nn.Tanh)


def test_y_as_a_cpu_tensor_through_a_pipeline_and_a_search():
    X, y = features(40)
    Xt, yt = torch.from_numpy(X), torch.from_numpy(y)
    assert make_pipeline(TorchTransformer(torch.nn.Identity()), LogisticRegression()) \
        .fit(Xt, yt).score(Xt, yt) > 0.9
    assert GridSearchCV(make_pipeline(ToNumpy(), LogisticRegression()),
                        {"logisticregression__C": [1.0]}, cv=2).fit(Xt, yt).best_score_ > 0.8


def test_pickles_after_the_user_changed_the_module_or_module_():
    X, _ = features()
    module = torch.nn.Linear(3, 2)
    t = TorchTransformer(module).fit(X)
    with torch.no_grad():
        module.weight.add_(1)  # after fit: must not reach module_, nor the pickle's module_
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(t)).transform(X), t.transform(X))
    u = TorchTransformer(torch.nn.Linear(3, 2)).fit(X)
    with torch.no_grad():
        u.module_.weight.add_(1)
    buffer = io.BytesIO()
    joblib.dump(u, buffer)
    buffer.seek(0)
    np.testing.assert_array_equal(joblib.load(buffer).transform(X), u.transform(X))


class Twice(torch.nn.Module):
    """One submodule under two names (module level: torch.save pickles it by reference)."""

    def __init__(self):
        super().__init__()
        self.a = torch.nn.Linear(3, 3)
        self.b = self.a

    def forward(self, x):
        return self.b(self.a(x))


def test_a_pickle_keeps_shared_submodules_shared():
    X, _ = features()
    t = TorchTransformer(Twice()).fit(X)
    loaded = pickle.loads(pickle.dumps(t))
    assert loaded.module_.a is loaded.module_.b
    np.testing.assert_allclose(loaded.transform(X), t.transform(X))


@pytest.mark.parametrize("estimator", [
    TorchTransformer(torch.nn.Identity(), dtype="float64"),
    TorchTransformer(torch.nn.Identity(), batch_size=1),
])
def test_check_estimator_with_other_parameters(estimator):
    assert failed_checks(estimator) == set()
