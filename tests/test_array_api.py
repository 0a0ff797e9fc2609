"""TorchTransformer under scikit-learn's array API dispatch: a torch X gives a
torch result on X's device, through Pipeline and GridSearchCV, equal to the
NumPy results; another namespace (array_api_strict) gets its own arrays back;
scikit-learn's own array API checks pass.

scikit-learn refuses dispatch unless SCIPY_ARRAY_API=1 was set before scipy
was imported, which the rest of the suite has done long before this module
loads. So in the suite this module holds one test, which runs the module
again in a fresh interpreter with SCIPY_ARRAY_API=1: there the real tests run.
"""

import os
import re

import pytest

pytest.importorskip("torch")  # TorchTransformer over torch modules throughout
from helpers import passed_with_scipy_array_api

if os.environ.get("SCIPY_ARRAY_API") != "1":

    def test_array_api_dispatch_in_a_process_with_scipy_array_api():
        assert passed_with_scipy_array_api(__file__) >= 9

else:
    import numpy as np
    import sklearn
    import torch
    from sklearn.decomposition import PCA
    from sklearn.discriminant_analysis import LinearDiscriminantAnalysis
    from sklearn.model_selection import GridSearchCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import MinMaxScaler, StandardScaler
    from sklearn.utils import get_tags
    from sklearn.utils.estimator_checks import check_array_api_input

    from tensorbridge.sklearn import ToNumpy, TorchTransformer

    @pytest.fixture
    def dispatch():
        with sklearn.config_context(array_api_dispatch=True):
            yield

    def data(n=120, d=8):
        rng = np.random.default_rng(0)
        X = rng.standard_normal((n, d)).astype(np.float32)
        return X, (X[:, 0] + 0.5 * X[:, 1] > 0).astype(np.int64)

    def extractor(d=8, width=16):
        torch.manual_seed(0)
        return torch.nn.Sequential(torch.nn.Linear(d, width), torch.nn.Tanh())

    def test_a_torch_x_gives_a_torch_result_on_its_device(dispatch):
        X, _ = data()
        t = TorchTransformer(extractor(), batch_size=32).fit(torch.from_numpy(X))
        out = t.transform(torch.from_numpy(X))
        assert isinstance(out, torch.Tensor) and out.device == torch.device("cpu")
        assert out.shape == (120, 16) and out.dtype == torch.float32 and out.is_contiguous()
        with sklearn.config_context(array_api_dispatch=False):
            expected = t.transform(X)
        assert isinstance(expected, np.ndarray)
        np.testing.assert_array_equal(out.numpy(), expected)
        fitted = TorchTransformer(extractor(), batch_size=32).fit_transform(torch.from_numpy(X))
        assert isinstance(fitted, torch.Tensor)
        assert list(t.get_feature_names_out())[:2] == ["torchtransformer0", "torchtransformer1"]

    def test_the_result_is_one_preallocated_tensor_written_batch_by_batch(dispatch, monkeypatch):
        X, _ = data()
        t = TorchTransformer(torch.nn.Identity(), batch_size=7).fit(X)
        allocations = []
        real_empty = torch.empty

        def counting_empty(*args, **kwargs):
            allocations.append(args)
            return real_empty(*args, **kwargs)

        def refused(*args, **kwargs):
            raise AssertionError("the result is preallocated, never concatenated")

        monkeypatch.setattr(torch, "cat", refused)
        monkeypatch.setattr(torch, "concat", refused)
        monkeypatch.setattr(torch, "stack", refused)
        monkeypatch.setattr(torch, "empty", counting_empty)
        out = t.transform(torch.from_numpy(X))
        assert [args for args in allocations if args and args[0] == (120, 8)] == [((120, 8),)]
        np.testing.assert_array_equal(out.numpy(), X)
        assert not np.shares_memory(out.numpy(), X)

    def test_dtype_rules_are_the_numpy_ones(dispatch):
        X, _ = data(10, 3)
        double = TorchTransformer(torch.nn.Linear(3, 2).double()).fit(X)
        assert double.transform(torch.from_numpy(X)).dtype == torch.float64
        bf16 = TorchTransformer(torch.nn.Linear(3, 2), dtype=torch.bfloat16).fit(X)
        out = bf16.transform(torch.from_numpy(X))
        assert out.dtype == torch.float32  # as the NumPy result: float32 holds bf16 exactly
        with sklearn.config_context(array_api_dispatch=False):
            np.testing.assert_array_equal(out.numpy(), bf16.transform(X))

    def test_numpy_input_keeps_numpy_and_dispatch_off_keeps_numpy(dispatch):
        X, _ = data(10, 3)
        t = TorchTransformer(torch.nn.Linear(3, 2)).fit(X)
        assert isinstance(t.transform(X), np.ndarray)
        with sklearn.config_context(array_api_dispatch=False):
            assert isinstance(t.transform(torch.from_numpy(X)), np.ndarray)

    def test_set_output_pandas_wins(dispatch):
        pd = pytest.importorskip("pandas")
        X, _ = data(10, 3)
        t = TorchTransformer(torch.nn.Linear(3, 2)).fit(X).set_output(transform="pandas")
        frame = t.transform(torch.from_numpy(X))
        assert isinstance(frame, pd.DataFrame) and list(frame.columns) == [
            "torchtransformer0", "torchtransformer1"]
        with sklearn.config_context(transform_output="pandas"):
            assert isinstance(TorchTransformer(torch.nn.Linear(3, 2)).fit(X).transform(
                torch.from_numpy(X)), pd.DataFrame)

    def test_a_dataset_or_dict_x_keeps_numpy(dispatch):
        X, _ = data(10, 3)
        t = TorchTransformer(torch.nn.Identity()).fit(X)
        dataset = torch.utils.data.TensorDataset(torch.from_numpy(X))
        assert isinstance(t.transform(dataset), np.ndarray)

    def pipeline(batch_size=32, n_components=4):
        return make_pipeline(TorchTransformer(extractor(), batch_size=batch_size),
                             StandardScaler(), PCA(n_components=n_components),
                             LinearDiscriminantAnalysis())

    def test_a_pipeline_on_torch_tensors_matches_numpy(dispatch):
        X, y = data()
        with sklearn.config_context(array_api_dispatch=False):
            expected = pipeline().fit(X, y).predict_proba(X)
            features = make_pipeline(TorchTransformer(extractor()), MinMaxScaler()).fit_transform(X)
        pipe = pipeline().fit(torch.from_numpy(X), torch.from_numpy(y))
        assert isinstance(pipe[:-1].transform(torch.from_numpy(X)), torch.Tensor)
        proba = pipe.predict_proba(torch.from_numpy(X))
        assert isinstance(proba, torch.Tensor)
        np.testing.assert_allclose(proba.numpy(), expected, rtol=1e-4, atol=1e-5)
        scaled = make_pipeline(TorchTransformer(extractor()), MinMaxScaler()).fit_transform(
            torch.from_numpy(X))
        assert isinstance(scaled, torch.Tensor)
        np.testing.assert_allclose(scaled.numpy(), features, rtol=1e-5, atol=1e-6)

    def test_grid_search_on_torch_tensors_matches_numpy(dispatch):
        X, y = data()
        grid = {"torchtransformer__batch_size": [16, 64], "pca__n_components": [2, 6]}
        with sklearn.config_context(array_api_dispatch=False):
            expected = GridSearchCV(pipeline(), grid, cv=3).fit(X, y)
        search = GridSearchCV(pipeline(), grid, cv=3).fit(torch.from_numpy(X), torch.from_numpy(y))
        assert search.best_params_ == expected.best_params_
        np.testing.assert_allclose(search.cv_results_["mean_test_score"],
                                   expected.cv_results_["mean_test_score"], atol=1e-6)
        predicted = search.predict(torch.from_numpy(X))
        assert isinstance(predicted, torch.Tensor)
        np.testing.assert_array_equal(predicted.numpy(), expected.predict(X))

    def test_scikit_learns_array_api_check_with_numpy_inputs():
        check_array_api_input("TorchTransformer", TorchTransformer(torch.nn.Identity()),
                              array_namespace="numpy", expect_only_array_outputs=False)

    # -- scikit-learn's own array API checks, as check_estimator runs them --------------

    from sklearn.utils._array_api import (
        yield_mixed_namespace_input_permutations,
        yield_namespace_device_dtype_combinations,
    )

    def sklearn_check(name):
        """One of scikit-learn's array API checks (those of 1.8 and later: skipped before)."""
        from sklearn.utils import estimator_checks

        if not hasattr(estimator_checks, name):
            pytest.skip(f"scikit-learn {sklearn.__version__} has no {name}")
        return getattr(estimator_checks, name)

    ESTIMATORS = {"identity": lambda: TorchTransformer(torch.nn.Identity()),
                  "linear": lambda: TorchTransformer(extractor(d=10))}
    COMBINATIONS = list(yield_namespace_device_dtype_combinations())

    def test_array_api_support_is_declared():
        assert get_tags(TorchTransformer(torch.nn.Identity())).array_api_support
        assert not get_tags(ToNumpy()).array_api_support  # leaving it: its purpose

    @pytest.mark.parametrize("estimator", ESTIMATORS)
    @pytest.mark.parametrize(("namespace", "device", "dtype"), COMBINATIONS)
    @pytest.mark.parametrize("name", ["check_array_api_input",
                                      "check_array_api_input_and_values"])
    def test_scikit_learns_array_api_checks(name, namespace, device, dtype, estimator):
        # numpy, torch (cpu float32 and float64; cuda where there is one), array_api_strict;
        # the namespaces that are not installed, and devices not here, skip
        sklearn_check(name)("TorchTransformer", ESTIMATORS[estimator](),
                            array_namespace=namespace, device_name=device, dtype_name=dtype)

    @pytest.mark.parametrize(("other", "X", "label"),
                             list(yield_mixed_namespace_input_permutations()))
    def test_scikit_learns_mixed_input_check(other, X, label):
        sklearn_check("check_array_api_mixed_inputs")(
            "TorchTransformer", TorchTransformer(torch.nn.Identity()), X_ns_and_device=X,
            other_ns_and_device=other)

    @pytest.mark.parametrize(("namespace", "device"), [("array_api_strict", None),
                                                       ("torch", "cpu")])
    def test_scikit_learns_same_namespace_check(namespace, device):
        sklearn_check("check_array_api_same_namespace")(
            "TorchTransformer", TorchTransformer(torch.nn.Identity()),
            array_namespace=namespace, device_name=device)

    # -- the namespace rules behind those checks --------------------------------------

    def test_fitted_on_torch_under_dispatch_it_refuses_numpy_and_says_what_to_pass(dispatch):
        X, _ = data(10, 3)
        t = TorchTransformer(torch.nn.Identity()).fit(torch.from_numpy(X))
        message = ("Inputs passed to TorchTransformer.transform() must use the same namespace "
                   "and the same device as those passed to fit(): X is NumPy (or an "
                   "array-like), but fit had torch on cpu. Pass X as torch on cpu, or fit "
                   "again on X like this one")
        with pytest.raises(ValueError, match="^" + re.escape(message) + "$"):
            t.transform(X)
        with pytest.raises(ValueError, match="must use the same namespace"):
            t.transform(X.tolist())
        assert isinstance(t.transform(torch.from_numpy(X)), torch.Tensor)
        with sklearn.config_context(array_api_dispatch=False):  # no dispatch: any X, NumPy out
            assert isinstance(t.transform(X), np.ndarray)
        # fitted on NumPy (or without dispatch), it takes any namespace, as before
        assert isinstance(t.fit(X).transform(torch.from_numpy(X)), torch.Tensor)

    def test_array_api_strict_x_gives_array_api_strict_on_its_device(dispatch):
        xp = pytest.importorskip("array_api_strict")
        X, _ = data(10, 3)
        t = TorchTransformer(extractor(d=3), batch_size=4).fit(X)
        with sklearn.config_context(array_api_dispatch=False):
            expected = t.transform(X)
        for device in (xp.Device("CPU_DEVICE"), xp.Device("device1")):
            out = t.transform(xp.asarray(X, device=device))
            assert type(out).__module__.startswith("array_api_strict") and out.device == device
            assert out.dtype == xp.float32 and out.shape == (10, 16)
            np.testing.assert_array_equal(np.asarray(xp.asarray(out, device=xp.Device(
                "CPU_DEVICE"))), expected)
        with sklearn.config_context(array_api_dispatch=False):  # without dispatch: NumPy
            assert isinstance(t.transform(xp.asarray(X)), np.ndarray)
        strict = TorchTransformer(extractor(d=3)).fit(xp.asarray(X))
        with pytest.raises(ValueError, match="fit had array_api_strict on"):
            strict.transform(torch.from_numpy(X))

    def test_to_numpy_leaves_the_array_api_under_dispatch(dispatch):
        X, _ = data(10, 3)
        assert isinstance(ToNumpy().fit(torch.from_numpy(X)).transform(torch.from_numpy(X)),
                          np.ndarray)

    @pytest.mark.gpu
    def test_a_cuda_tensor_gives_a_cuda_tensor_and_cupy_gives_cupy(dispatch):
        X, _ = data()
        t = TorchTransformer(extractor(), device="cuda").fit(X)
        with sklearn.config_context(array_api_dispatch=False):
            expected = t.transform(X)
        out = t.transform(torch.from_numpy(X).cuda())
        assert isinstance(out, torch.Tensor) and out.is_cuda
        np.testing.assert_allclose(out.cpu().numpy(), expected, rtol=1e-5, atol=1e-6)
        cupy = pytest.importorskip("cupy")
        result = t.transform(cupy.asarray(X))
        assert isinstance(result, cupy.ndarray)
        np.testing.assert_allclose(cupy.asnumpy(result), expected, rtol=1e-5, atol=1e-6)
