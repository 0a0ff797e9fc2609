"""ToDevice, the pipeline step that moves X to a device: scikit-learn's checks
and the NumPy result without array API dispatch, here; under dispatch, in a
fresh interpreter with SCIPY_ARRAY_API=1 (which scikit-learn needs set before
SciPy is imported: see test_array_api.py), where the rest of this module runs.
No GPU here: a CUDA device is refused, saying why, and "cuda" itself is
reached by making torch say it has one."""

import importlib.util
import os
import re

import numpy as np
import pytest
import sklearn
from helpers import passed_with_scipy_array_api
from sklearn.utils.estimator_checks import check_estimator, parametrize_with_checks

import tensorbridge as tb
from tensorbridge.sklearn import ToDevice

torch = pytest.importorskip("torch")  # ToDevice's default namespace

DISPATCH = os.environ.get("SCIPY_ARRAY_API") == "1"


def data(n=60, d=5):
    rng = np.random.default_rng(0)
    X = rng.standard_normal((n, d))
    return X, (X[:, 0] + X[:, 1] > 0).astype(np.int64)


def pretend_torch_has_a_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)


if not DISPATCH:

    @parametrize_with_checks([ToDevice("cpu")])
    def test_scikit_learn_checks_pass_with_no_expected_failure(estimator, check):
        check(estimator)

    @pytest.mark.slow  # the module again, in a fresh interpreter
    def test_under_dispatch_in_a_process_with_scipy_array_api():
        assert passed_with_scipy_array_api(__file__) >= 10

    def test_without_dispatch_the_result_is_numpy_as_toNumpy_gives():
        X, _ = data()
        step = ToDevice("cpu").fit(X)
        out = step.transform(X)
        assert type(out) is np.ndarray and np.shares_memory(out, X)
        t = torch.from_numpy(X)
        assert type(step.transform(t)) is np.ndarray and np.shares_memory(step.transform(t), X)
        assert ToDevice("cpu").fit_transform(t.to(torch.bfloat16)).dtype == np.float32
        np.testing.assert_array_equal(step.inverse_transform(out), X)

    def test_without_dispatch_a_gpu_device_warns_that_numpy_is_returned(monkeypatch):
        pretend_torch_has_a_gpu(monkeypatch)
        X, _ = data()
        step = ToDevice("cuda:0").fit(X)
        assert step.device_ == torch.device("cuda", 0)
        with pytest.warns(UserWarning, match=r"ToDevice\(device='cuda:0'\) returns NumPy: "
                                             r"scikit-learn's array_api_dispatch is off"):
            out = step.transform(X)
        assert type(out) is np.ndarray

    def test_pandas_in_and_pandas_out():
        pd = pytest.importorskip("pandas")
        X, _ = data(6, 3)
        frame = pd.DataFrame(X, columns=["a", "b", "c"])
        step = ToDevice("cpu").set_output(transform="pandas").fit(frame)
        out = step.transform(frame)
        assert list(out.columns) == ["a", "b", "c"]
        np.testing.assert_array_equal(out.to_numpy(), X)


# -- what fit refuses, dispatch on or off -------------------------------------------

DISPATCH_STATES = [False, True] if DISPATCH else [False]


@pytest.mark.parametrize("dispatch", DISPATCH_STATES)
@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal without a GPU")
def test_fit_refuses_cuda_where_torch_has_none_saying_why(dispatch):
    status = tb.cuda_status()
    ours = "CUDA usable" if status["available"] else status["reason"]
    with sklearn.config_context(array_api_dispatch=dispatch), pytest.raises(
            ValueError, match="^" + re.escape(
                "ToDevice: torch cannot allocate on device='cuda' here: "
                f"torch.cuda.is_available() is False (tensorbridge.cuda_status(): {ours}); "
                "use device='cpu'") + "$"):
        ToDevice("cuda").fit(np.ones((3, 2)))


@pytest.mark.parametrize("dispatch", DISPATCH_STATES)
@pytest.mark.parametrize(("device", "namespace", "error", "message"), [
    ("gpu", "torch", ValueError, "device='gpu' is not a torch device; use 'cpu', 'cuda'"),
    ("meta", "torch", ValueError, "device='meta' holds no data"),
    ("cuda:3", "torch", ValueError, r"device='cuda:3' does not exist here \(1 CUDA devices\)"),
    ("cpu", "cupy", ValueError, "CuPy arrays live on CUDA devices only, not on device='cpu'"),
    ("gpu", "cupy", ValueError, "device='gpu' is not a CUDA device, which CuPy needs"),
    ("cuda", "numpy", ValueError, "The 'namespace' parameter of ToDevice must be a str among"),
])
def test_fit_refuses_devices_the_namespace_cannot_allocate_on(monkeypatch, dispatch, device,
                                                              namespace, error, message):
    pretend_torch_has_a_gpu(monkeypatch)
    with sklearn.config_context(array_api_dispatch=dispatch), pytest.raises(error,
                                                                            match=message):
        ToDevice(device, namespace=namespace).fit(np.ones((3, 2)))


@pytest.mark.skipif(importlib.util.find_spec("cupy") is not None, reason="CuPy is installed")
def test_the_cupy_namespace_without_cupy_says_how_to_install_it():
    with pytest.raises(ImportError, match=r"namespace='cupy' needs CuPy, which is not "
                                          r"installed here: pip install cupy-cuda12x"):
        ToDevice("cuda", namespace="cupy").fit(np.ones((3, 2)))


def test_transform_before_fit_is_refused():
    with pytest.raises(sklearn.exceptions.NotFittedError):
        ToDevice("cpu").transform(np.ones((3, 2)))


# -- under dispatch -------------------------------------------------------------------

if DISPATCH:
    from sklearn.decomposition import PCA
    from sklearn.discriminant_analysis import LinearDiscriminantAnalysis
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from tensorbridge.sklearn import TorchTransformer

    @pytest.fixture
    def dispatch():
        with sklearn.config_context(array_api_dispatch=True):
            yield

    def test_numpy_becomes_a_torch_tensor_on_the_device(dispatch):
        X, _ = data()
        for dtype in (np.float64, np.float32):
            step = ToDevice("cpu").fit(X.astype(dtype))
            out = step.transform(X.astype(dtype))
            assert isinstance(out, torch.Tensor) and out.device == torch.device("cpu")
            assert out.dtype == (torch.float64 if dtype == np.float64 else torch.float32)
            np.testing.assert_array_equal(out.numpy(), X.astype(dtype))
        assert np.shares_memory(ToDevice("cpu").fit_transform(X).numpy(), X)  # as torch does
        back = step.inverse_transform(out)
        assert type(back) is np.ndarray and np.shares_memory(back, out.numpy())

    def test_tensors_stay_where_they_are_on_their_device(dispatch):
        t = torch.randn(8, 3, requires_grad=True)
        out = ToDevice("cpu").fit(t).transform(t)
        assert out.data_ptr() == t.data_ptr() and not out.requires_grad
        widened = ToDevice("cpu").fit_transform(t.detach().to(torch.bfloat16))
        assert widened.dtype == torch.float32  # as ToNumpy widens it for the estimators
        with pytest.raises(ValueError, match=r"samples of shape \(3, 1\), but ToDevice was "
                                             r"fitted on samples of shape \(3,\)"):
            ToDevice("cpu").fit(t).transform(t.detach()[:, :, None])

    def test_a_dataframe_gives_a_tensor_and_keeps_its_names(dispatch):
        pd = pytest.importorskip("pandas")
        X, _ = data(6, 3)
        frame = pd.DataFrame(X, columns=["a", "b", "c"])
        step = ToDevice("cpu").fit(frame)
        out = step.transform(frame)
        assert isinstance(out, torch.Tensor) and list(step.get_feature_names_out()) == [
            "a", "b", "c"]
        np.testing.assert_array_equal(out.numpy(), X)
        # a container asked for: NumPy goes in it (a DataFrame holds no tensor)
        assert isinstance(step.set_output(transform="pandas").transform(frame), pd.DataFrame)

    def test_the_steps_after_it_run_in_torch_and_match_numpy(dispatch):
        X, y = data()
        with sklearn.config_context(array_api_dispatch=False):
            expected = make_pipeline(StandardScaler(), PCA(3), LinearDiscriminantAnalysis()
                                     ).fit(X, y).predict_proba(X)
        # y never reaches a pipeline step: it goes where the estimator needs it
        pipe = make_pipeline(ToDevice("cpu"), StandardScaler(), PCA(3),
                             LinearDiscriminantAnalysis()).fit(X, tb.to_device(y, "cpu"))
        proba = pipe.predict_proba(X)
        assert isinstance(proba, torch.Tensor)
        np.testing.assert_allclose(proba.numpy(), expected, rtol=1e-6, atol=1e-8)

    def test_images_pass_to_a_torch_step(dispatch):
        images = np.random.default_rng(0).standard_normal((4, 1, 3, 3)).astype(np.float32)
        out = make_pipeline(ToDevice("cpu"), TorchTransformer(torch.nn.Flatten())
                            ).fit_transform(images)
        assert isinstance(out, torch.Tensor) and out.shape == (4, 9)
        np.testing.assert_array_equal(out.numpy(), images.reshape(4, 9))

    def test_cuda_under_dispatch_moves_x_with_tensorbridge(dispatch, monkeypatch):
        # No GPU here: torch and tensorbridge.to_device are asked, and what the
        # step hands them is checked.
        pretend_torch_has_a_gpu(monkeypatch)
        from tensorbridge.sklearn import _to_device

        moved = []
        monkeypatch.setattr(_to_device, "to_device",
                            lambda a, device: moved.append((a, device)) or torch.as_tensor(a))
        X, _ = data()
        step = ToDevice("cuda").fit(X)
        step.transform(X)
        assert len(moved) == 1 and moved[0][1] == torch.device("cuda")
        assert np.shares_memory(moved[0][0], X)

    @pytest.mark.filterwarnings("ignore::sklearn.exceptions.SkipTestWarning")
    def test_check_estimator_fails_only_the_check_that_output_keeps_xs_namespace():
        # Under SCIPY_ARRAY_API=1 scikit-learn adds check_array_api_input (NumPy X):
        # it expects a NumPy result, and ToDevice gives torch on purpose.
        results = check_estimator(ToDevice("cpu"), on_fail=None)
        failed = {r["check_name"]: str(r["exception"]) for r in results
                  if r["status"] == "failed"}
        assert list(failed) == ["check_array_api_input"]
        assert "output is in wrong namespace, expected numpy, got torch" in failed[
            "check_array_api_input"].replace("sklearn.externals.array_api_compat.", "")

    @pytest.mark.gpu
    def test_on_a_gpu_x_moves_there_and_the_steps_follow(dispatch):
        X, y = data()
        with sklearn.config_context(array_api_dispatch=False):
            expected = make_pipeline(StandardScaler(), PCA(3), LinearDiscriminantAnalysis()
                                     ).fit(X, y).predict_proba(X)
        pipe = make_pipeline(ToDevice("cuda"), StandardScaler(), PCA(3),
                             LinearDiscriminantAnalysis()).fit(X, tb.to_device(y, "cuda"))
        proba = pipe.predict_proba(X)
        assert isinstance(proba, torch.Tensor) and proba.is_cuda
        np.testing.assert_allclose(tb.to_numpy(proba), expected, rtol=1e-6, atol=1e-8)
        t = torch.from_numpy(X).cuda()
        assert ToDevice("cuda").fit_transform(t).data_ptr() == t.data_ptr()
        cupy = pytest.importorskip("cupy")
        for source in (X, t, cupy.asarray(X)):
            out = ToDevice("cuda", namespace="cupy").fit_transform(source)
            assert isinstance(out, cupy.ndarray) and out.device.id == 0
            np.testing.assert_array_equal(cupy.asnumpy(out), X)
        shared = ToDevice("cuda", namespace="cupy").fit_transform(t)
        assert shared.data.ptr == t.data_ptr()  # through DLPack, no copy
