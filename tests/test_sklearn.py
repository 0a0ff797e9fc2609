"""ToNumpy and AugmentedEstimator under scikit-learn's conventions (TorchTransformer:
test_torch_transformer.py)."""

import re
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import parametrize_with_checks

import tensorbridge
from tensorbridge.sklearn import ToNumpy, TorchTransformer


def data(n=40, d=5, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d))
    return X, (X[:, 0] > 0).astype(int)


@parametrize_with_checks([ToNumpy()])
def test_scikit_learn_checks_pass_with_no_expected_failure(estimator, check):
    check(estimator)


# -- ToNumpy -------------------------------------------------------------------------


def test_to_numpy_step_is_zero_copy_for_cpu_tensors():
    t = torch.randn(6, 3)
    step = ToNumpy().fit(t)
    out = step.transform(t)
    assert np.shares_memory(out, t.numpy())
    X, y = data()
    pipe = make_pipeline(ToNumpy(), StandardScaler(), LogisticRegression())
    pipe.fit(torch.from_numpy(X), torch.from_numpy(y))
    assert pipe.predict(torch.from_numpy(X)).shape == (40,)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float8_e4m3fn])
def test_to_numpy_step_widens_bf16_and_fp8_to_float32_for_the_next_estimator(dtype):
    X, y = data()
    t = torch.from_numpy(X).to(dtype)
    pipe = make_pipeline(ToNumpy(), LogisticRegression()).fit(t, y)
    assert pipe.predict(t).shape == (40,)  # scikit-learn refused the ml_dtypes view
    out = ToNumpy().fit(t).transform(t)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, t.float().numpy())
    assert not np.shares_memory(out, tensorbridge.to_numpy(t))  # the one copy, documented
    assert tensorbridge.to_numpy(t).dtype.name == str(dtype).removeprefix("torch.")  # the view
    # an ml_dtypes NumPy array is widened too; complex stays complex and zero-copy
    assert ToNumpy().fit_transform(tensorbridge.to_numpy(t)).dtype == np.float32
    c = torch.ones(4, 2, dtype=torch.complex64)
    assert np.shares_memory(ToNumpy().fit(c).transform(c), c.numpy())


def test_to_numpy_step_names_its_features_one_to_one_and_takes_pandas_output():
    pd = pytest.importorskip("pandas")
    frame = pd.DataFrame(np.arange(6.0).reshape(3, 2), columns=["a", "b"], index=[7, 8, 9])
    step = ToNumpy().fit(frame)
    assert list(step.get_feature_names_out()) == ["a", "b"]
    with pytest.raises(ValueError, match="input_features"):
        step.get_feature_names_out(["a", "c"])
    out = ToNumpy().set_output(transform="pandas").fit_transform(torch.ones(3, 2))
    assert isinstance(out, pd.DataFrame) and list(out.columns) == ["x0", "x1"]
    pipe = make_pipeline(ToNumpy(), StandardScaler()).set_output(transform="pandas")
    out = pipe.fit_transform(frame)
    assert list(out.columns) == ["a", "b"] and list(out.index) == [7, 8, 9]
    # the default output stays the zero-copy view
    t = torch.ones(3, 2)
    assert np.shares_memory(ToNumpy().fit(t).transform(t), t.numpy())


def test_to_numpy_step_passes_complex_tensors_and_images():
    t = torch.randn(4, 2, dtype=torch.complex64)
    step = ToNumpy().fit(t)
    out = step.transform(t)
    assert out.dtype == np.complex64 and np.shares_memory(out, t.numpy())
    with pytest.raises(ValueError, match="X has 3 features, but ToNumpy is expecting 2"):
        step.transform(torch.ones(4, 3, dtype=torch.complex64))
    with pytest.raises(ValueError, match="Complex data not supported"):
        ToNumpy().fit(t.numpy().astype(np.complex128))  # NumPy input: scikit-learn's rule
    images = torch.randn(5, 1, 3, 3)
    step = ToNumpy().fit(images)
    assert step.n_features_in_ == 1
    assert np.shares_memory(step.transform(images), images.numpy())
    pipe = make_pipeline(ToNumpy(), TorchTransformer(torch.nn.Flatten()))
    np.testing.assert_array_equal(pipe.fit_transform(images), images.reshape(5, 9).numpy())
    pd = pytest.importorskip("pandas")
    # pandas output: the images stay an array (no DataFrame holds them), the features do not
    out = pipe.set_output(transform="pandas").fit_transform(images)
    assert isinstance(out, pd.DataFrame) and out.shape == (5, 9)
    assert type(pipe[0].transform(images)) is np.ndarray
    # as many features (X.shape[1]) in another sample shape or rank: refused
    with pytest.raises(ValueError, match=r"samples of shape \(1, 2, 2\), but ToNumpy was "
                                         r"fitted on samples of shape \(1, 3, 3\)"):
        step.transform(torch.ones(5, 1, 2, 2))
    with pytest.raises(ValueError, match=r"samples of shape \(2, 3\), but ToNumpy was "
                                         r"fitted on samples of shape \(2,\)"):
        ToNumpy().fit(np.ones((3, 2))).transform(np.ones((3, 2, 3)))


def test_every_step_records_and_checks_sample_shape_in_():
    from sklearn.linear_model import Ridge

    from tensorbridge.sklearn import AugmentedEstimator, ToDevice

    images, y = np.ones((6, 1, 3, 3), np.float32), np.arange(6.0)
    steps = [ToNumpy(), ToDevice("cpu"), TorchTransformer(torch.nn.Flatten()),
             AugmentedEstimator(Ridge(), augment=lambda sample: sample, random_state=0)]
    for step in steps:
        step.fit(images, y)
        assert step.sample_shape_in_ == (1, 3, 3), type(step).__name__
        name = type(step).__name__
        with pytest.raises(ValueError, match=re.escape(
                f"X has samples of shape (1, 9, 1), but {name} was fitted on samples of "
                "shape (1, 3, 3)")):
            step.predict(np.ones((6, 1, 9, 1))) if name == "AugmentedEstimator" else \
                step.transform(np.ones((6, 1, 9, 1)))


def test_a_to_numpy_pickled_before_sample_shape_in_still_checks_the_shape():
    # Before sample_shape_in_ was public, ToNumpy kept it as _sample_shape.
    step = ToNumpy().fit(np.ones((3, 1, 2, 2)))
    state = step.__getstate__()
    state["_sample_shape"] = state.pop("sample_shape_in_")
    old = ToNumpy()
    old.__setstate__(state)
    assert old.transform(np.ones((2, 1, 2, 2))).shape == (2, 1, 2, 2)
    with pytest.raises(ValueError, match=r"samples of shape \(1, 4, 1\), but ToNumpy was "):
        old.transform(np.ones((2, 1, 4, 1)))


def test_sklearn_is_imported_only_when_used():
    import subprocess

    code = "import sys, tensorbridge; print('sklearn' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True).stdout.strip() == "False"


# -- ToNumpy: inputs at the edges (docs/guide/sklearn.rst) ------------------------------


def test_a_pipeline_with_to_numpy_takes_set_output_pandas():
    pd = pytest.importorskip("pandas")
    X = torch.randn(5, 3)
    out = make_pipeline(ToNumpy(), StandardScaler()).set_output(transform="pandas") \
        .fit_transform(X)
    assert isinstance(out, pd.DataFrame) and out.shape == (5, 3)


def test_a_pipeline_with_to_numpy_gives_feature_names_out():
    pd = pytest.importorskip("pandas")
    frame = pd.DataFrame(np.ones((4, 3)), columns=["a", "b", "c"])
    assert list(make_pipeline(ToNumpy(), StandardScaler()).fit(frame)
                .get_feature_names_out()) == ["a", "b", "c"]
    assert list(ToNumpy().fit(np.ones((4, 2))).get_feature_names_out()) == ["x0", "x1"]


def test_to_numpy_step_takes_complex_tensors():
    t = torch.ones(3, 2, dtype=torch.complex64)
    out = ToNumpy().fit(t).transform(t)
    assert out.dtype == np.complex64 and np.shares_memory(out, t.numpy())


def test_to_numpy_step_takes_image_tensors():
    images = torch.randn(4, 1, 2, 2)
    out = make_pipeline(ToNumpy(), TorchTransformer(torch.nn.Flatten())).fit_transform(images)
    assert out.shape == (4, 4)


@pytest.mark.parametrize("make", [
    lambda: torch.ones(3, 2, dtype=torch.float16), lambda: torch.ones(3, 2, dtype=torch.int8),
    lambda: torch.ones(3, 2, requires_grad=True), lambda: torch.ones(2, 3).T])
def test_to_numpy_step_is_zero_copy_for_narrow_grad_and_strided_tensors(make):
    # (bfloat16 and float8 are widened to float32: tests/test_sklearn.py)
    t = make()
    out = ToNumpy().fit(t).transform(t)
    assert np.shares_memory(out, t.detach().numpy()) and out.flags.writeable


def test_to_numpy_step_keeps_nan_and_narrow_numpy_dtypes():
    step = ToNumpy().fit(np.array([[np.nan, 1.0]]))
    assert np.isinf(step.transform(np.array([[np.nan, np.inf]]))[0, 1])
    for dtype in (np.float16, np.int16, np.bool_):
        assert ToNumpy().fit_transform(np.ones((2, 2), dtype)).dtype == dtype


def test_to_numpy_step_errors():
    pd = pytest.importorskip("pandas")
    step = ToNumpy().fit(np.ones((3, 3)))
    with pytest.raises(ValueError, match="X has 5 features, but ToNumpy is expecting 3"):
        step.transform(torch.ones(2, 5))
    with pytest.raises(ValueError, match="0 sample"):
        step.transform(torch.ones(0, 3))
    with pytest.raises(ValueError, match="Expected 2D array"):
        ToNumpy().fit(torch.ones(3))
    with pytest.raises(ValueError, match="same order"):
        ToNumpy().fit(pd.DataFrame(np.ones((2, 2)), columns=["a", "b"])).transform(
            pd.DataFrame(np.ones((2, 2)), columns=["b", "a"]))
