"""AugmentedEstimator: training (and predicting) on augmented views of the data."""

import pickle
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import sklearn

torch = pytest.importorskip("torch")
from helpers import features
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin, clone
from sklearn.dummy import DummyClassifier
from sklearn.ensemble import HistGradientBoostingRegressor, RandomForestClassifier
from sklearn.exceptions import UnsetMetadataPassedError
from sklearn.linear_model import LogisticRegression, Ridge, RidgeClassifier
from sklearn.model_selection import GridSearchCV
from sklearn.naive_bayes import MultinomialNB
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC
from sklearn.utils import get_tags
from sklearn.utils._param_validation import InvalidParameterError
from sklearn.utils.estimator_checks import parametrize_with_checks

import tensorbridge
import tensorbridge.sklearn._augmented as augmented_module
from tensorbridge.sklearn import AugmentedEstimator, TorchTransformer


def data(n=40, d=5, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d))
    return X, (X[:, 0] > 0).astype(int)


def images(n=30, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, 1, 4, 4)).astype(np.float32)
    return X, (X[:, 0, 0, 0] > 0).astype(int)


def noisy(sample, generator):
    """Module level, so that the estimator pickles; works per sample and per batch."""
    if not sample.is_floating_point():
        return sample
    return sample + 0.1 * torch.randn(sample.shape, generator=generator, dtype=sample.dtype)


def negate_some(batch, generator):
    """Per-sample randomness drawn by a batched augment: each sample negated with p=1/2."""
    mask = torch.rand(len(batch), generator=generator) < 0.5
    return torch.where(mask.reshape(-1, *[1] * (batch.ndim - 1)), -batch, batch)


class Log(list):
    """A list that clone() (a deep copy of each parameter) leaves shared."""

    def __deepcopy__(self, memo):
        return self


class Spy(ClassifierMixin, BaseEstimator):
    """Records what fit and predict_proba receive; predicts from the first feature."""

    def __init__(self, log=None):
        self.log = log

    def fit(self, X, y, sample_weight=None, groups=None, tol=None):
        self.log.append({"X": X, "y": y, "sample_weight": sample_weight, "groups": groups,
                         "tol": tol})
        self.classes_ = np.unique(y)
        self.n_features_in_ = X.shape[1] if X.ndim == 2 else X.shape[1:]
        return self

    def predict_proba(self, X):
        if self.log is not None:
            self.log.append({"predict_proba": X})
        p = 1 / (1 + np.exp(-np.reshape(X, (len(X), -1))[:, 0]))
        return np.stack([1 - p, p], axis=1)

    def predict(self, X):
        return self.classes_[np.argmax(self.predict_proba(X), axis=1)]


# -- scikit-learn's checks -------------------------------------------------------------


@parametrize_with_checks([
    AugmentedEstimator(LogisticRegression(), augment=noisy, random_state=0),
    AugmentedEstimator(LogisticRegression(), augment=negate_some, n_views=2, batch_size=7,
                       random_state=0),
    # multi_output, a Ridge tag, forwarded: check_supervised_y_2d
    AugmentedEstimator(Ridge(), augment=noisy, n_views=2, batch_size=7, random_state=0),
    # a transformer's tags (and fit_transform): scikit-learn's transformer checks
    AugmentedEstimator(StandardScaler(), augment=noisy, random_state=0),
])
def test_scikit_learn_checks_pass_with_no_expected_failure(estimator, check):
    check(estimator)


def test_parameters_are_validated():
    X, y = data()
    for bad in ({"batch_size": 0}, {"n_views": -1}, {"test_views": -1}, {"flatten": "yes"},
                {"augment": "flip"}):
        with pytest.raises(InvalidParameterError, match=list(bad)[0]):
            AugmentedEstimator(LogisticRegression(), **{"augment": noisy, **bad}).fit(X, y)


# -- the rows the estimator is fitted on -----------------------------------------------


def test_fit_sees_the_original_rows_plus_views():
    X, y = data()
    log = Log()
    model = AugmentedEstimator(Spy(log), augment=noisy, n_views=3, random_state=0).fit(X, y)
    seen = log[-1]
    assert seen["X"].shape == (160, 5) and model.n_samples_seen_ == 160
    np.testing.assert_array_equal(seen["X"][:40], X)
    np.testing.assert_array_equal(seen["y"], np.tile(y, 4))
    assert not np.allclose(seen["X"][40:80], X)
    # randomness is per sample: two identical samples get different noise
    twins = np.repeat(X[:1], 2, axis=0)
    AugmentedEstimator(Spy(log), augment=noisy, random_state=0).fit(twins, [0, 1])
    assert not np.array_equal(log[-1]["X"][2], log[-1]["X"][3])


def test_n_views_zero_fits_on_the_data_as_given():
    X, y = data()
    log = Log()
    AugmentedEstimator(Spy(log), augment=noisy, n_views=0).fit(X, y)
    np.testing.assert_array_equal(log[-1]["X"], X)


def test_same_seed_same_model_and_torch_global_generator_untouched():
    X, y = data()
    state = torch.get_rng_state()
    def fit(seed):
        return AugmentedEstimator(LogisticRegression(), augment=noisy, n_views=2,
                                  random_state=seed).fit(X, y).estimator_.coef_

    a, b, c = fit(7), fit(7), fit(8)
    assert torch.equal(torch.get_rng_state(), state)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_augment_without_a_generator_uses_a_forked_global_generator():
    X, y = data()
    state = torch.get_rng_state()

    def global_noise(sample):  # like a torchvision transform
        return sample + 0.1 * torch.randn(sample.shape, dtype=sample.dtype)

    a = AugmentedEstimator(LogisticRegression(), augment=global_noise, random_state=1).fit(X, y)
    b = AugmentedEstimator(LogisticRegression(), augment=global_noise, random_state=1).fit(X, y)
    assert torch.equal(torch.get_rng_state(), state)
    np.testing.assert_array_equal(a.estimator_.coef_, b.estimator_.coef_)


def test_the_global_generator_is_restored_when_augment_raises():
    X, y = data()
    state = torch.get_rng_state()
    calls = []

    def fails_on_the_third(sample):
        calls.append(torch.rand(()))
        if len(calls) == 3:
            raise RuntimeError("broken transform")
        return sample

    with pytest.raises(RuntimeError, match="broken transform"):
        AugmentedEstimator(LogisticRegression(), augment=fails_on_the_third,
                           random_state=0).fit(X, y)
    assert torch.equal(torch.get_rng_state(), state)


def test_rows_are_written_by_collect_into_the_array_the_estimator_gets(monkeypatch):
    X, y = images()
    outs, real = [], tensorbridge.collect

    def recording_collect(batches, *, out=None):
        outs.append(out)
        return real(batches, out=out)

    monkeypatch.setattr(augmented_module, "collect", recording_collect)  # where it is looked up
    log = Log()
    AugmentedEstimator(Spy(log), augment=negate_some, n_views=3, batch_size=8,
                       random_state=0).fit(X, y)
    (out,) = outs  # one call, every view's batches, straight into a preallocated array
    rows = log[-1]["X"]
    assert out.shape == (90, 1, 4, 4) and np.shares_memory(out, rows)
    np.testing.assert_array_equal(rows[30:], out.reshape(90, -1))


def test_the_callers_X_is_never_handed_to_augment():
    X, y = data()
    before = X.copy()

    def in_place(sample, generator):
        return sample.mul_(2)

    AugmentedEstimator(LogisticRegression(), augment=in_place, random_state=0).fit(X, y)
    np.testing.assert_array_equal(X, before)


def double_in_place(sample, generator):
    return sample.mul_(2)


def double_in_place_globally(sample):
    return sample.mul_(2)


def double_through_numpy(batch, generator):
    # a write torch's version counter does not see
    values = batch.numpy()
    values *= 2
    return batch


def double_in_a_view(batch, generator):
    batch[:, :2].mul_(2)  # in place through a view of the batch: part of it
    return batch * 1


@pytest.mark.parametrize("params", [
    {"augment": double_in_place}, {"augment": double_in_place, "batch_size": 7},
    {"augment": double_through_numpy, "batch_size": 7},
    {"augment": double_in_place_globally}],
    ids=["per-sample", "batched", "batched-through-numpy", "generator-less"])
def test_an_in_place_augment_changes_only_its_copy(params):
    X, y = data()
    before = X.copy()
    log = Log()
    model = AugmentedEstimator(Spy(log), n_views=2, test_views=2, **params).fit(X, y)
    rows = log[-1]["X"]
    np.testing.assert_array_equal(rows[:40], before)  # the original rows, as given
    # every view doubles the original sample, not what an earlier view left
    np.testing.assert_array_equal(rows[40:80], 2 * before)
    np.testing.assert_array_equal(rows[80:], 2 * before)
    model.predict_proba(X)
    np.testing.assert_array_equal(log[-1]["predict_proba"][:40], before)
    np.testing.assert_array_equal(log[-1]["predict_proba"][40:], np.tile(2 * before, (2, 1)))
    np.testing.assert_array_equal(X, before)


def test_a_batched_augment_that_writes_part_of_its_batch_sees_the_originals_each_view():
    X, y = data()
    log = Log()
    AugmentedEstimator(Spy(log), augment=double_in_a_view, n_views=3, batch_size=16).fit(X, y)
    rows = log[-1]["X"]
    expected = X.copy()
    expected[:, :2] *= 2
    np.testing.assert_array_equal(rows[:40], X)
    for view in range(1, 4):  # each view from the originals, not from the last view
        np.testing.assert_array_equal(rows[40 * view:40 * (view + 1)], expected)


def test_an_in_place_batched_augment_under_inference_mode():
    X, y = data()
    log = Log()
    with torch.inference_mode():
        AugmentedEstimator(Spy(log), augment=double_in_place, n_views=2, batch_size=8).fit(X, y)
    np.testing.assert_array_equal(log[-1]["X"][40:], np.tile(2 * X, (2, 1)))


@pytest.mark.parametrize("param", ["n_views", "test_views"])
def test_bool_view_counts_are_refused_by_name(param):
    X, y = data()
    model = AugmentedEstimator(LogisticRegression(), augment=noisy, **{param: True})
    with pytest.raises(InvalidParameterError, match=f"'{param}' parameter .* not a bool; got "
                                                    "True. Pass 1"):
        model.fit(X, y)
    model.set_params(**{param: 1}).fit(X, y).set_params(**{param: False})
    with pytest.raises(InvalidParameterError, match=param):  # set after fit: named at predict
        model.predict(X)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float8_e4m3fn])
def test_narrow_float_X_is_taken_as_float32(dtype):
    X, y = data()
    t = torch.from_numpy(X).to(dtype)
    log = Log()
    model = AugmentedEstimator(Spy(log), augment=noisy, random_state=0).fit(t, y)
    assert log[-1]["X"].dtype == np.float32
    np.testing.assert_array_equal(log[-1]["X"][:40], t.float().numpy())
    assert model.predict(t).shape == (40,)
    # the same as a NumPy array of that dtype (ml_dtypes)
    model.fit(tensorbridge.to_numpy(t), y)
    np.testing.assert_array_equal(log[-1]["X"][:40], t.float().numpy())


def test_a_second_positional_parameter_gets_the_generator_whatever_its_name():
    X, y = data()
    got = []

    def positional(sample, g):
        got.append(g)
        return sample + 0.1 * torch.randn(sample.shape, generator=g, dtype=sample.dtype)

    def with_default(sample, scale=1.0):  # a default: no generator, the forked global one
        got.append(scale)
        return sample * scale

    log = Log()
    AugmentedEstimator(Spy(log), augment=positional, random_state=0).fit(X, y)
    assert len(got) == 40 and all(isinstance(g, torch.Generator) for g in got)
    AugmentedEstimator(Spy(log), augment=noisy, random_state=0).fit(X, y)
    np.testing.assert_array_equal(log[-2]["X"], log[-1]["X"])  # as if it were "generator"
    got.clear()
    AugmentedEstimator(Spy(log), augment=positional, batch_size=16, random_state=0).fit(X, y)
    assert [type(g) for g in got] == [torch.Generator] * 3  # one per batch of 16, 16, 8
    got.clear()
    AugmentedEstimator(Spy(log), augment=with_default, random_state=0).fit(X, y)
    assert got == [1.0] * 40


def test_generator_less_augments_hold_the_global_generator_lock():
    X, y = data(n=4)
    held = []

    def record(sample):
        held.append(augmented_module._GLOBAL_GENERATOR_LOCK.locked())
        return sample

    AugmentedEstimator(LogisticRegression(), augment=record, random_state=0).fit(X, y)
    assert held == [True] * 4
    assert not augmented_module._GLOBAL_GENERATOR_LOCK.locked()  # released after the fit
    held.clear()
    AugmentedEstimator(LogisticRegression(), augment=lambda s, generator: record(s)).fit(X, y)
    assert held == [False] * 4  # a generator of its own: no lock needed

    def failing(sample):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        AugmentedEstimator(LogisticRegression(), augment=failing).fit(X, y)
    assert not augmented_module._GLOBAL_GENERATOR_LOCK.locked()  # released on an error too


def test_inputs_of_every_kind_are_accepted():
    X, y = data()
    expected = AugmentedEstimator(LogisticRegression(), augment=noisy, random_state=0).fit(X, y)
    read_only = X.copy()
    read_only.flags.writeable = False  # torch.from_numpy would warn on it (an error here)
    for given in (torch.from_numpy(X), read_only, X.tolist(), np.asfortranarray(X)):
        model = AugmentedEstimator(LogisticRegression(), augment=noisy, random_state=0)
        np.testing.assert_array_equal(model.fit(given, torch.from_numpy(y)).estimator_.coef_,
                                      expected.estimator_.coef_)
    uint8 = (np.abs(X) * 40).astype(np.uint8)
    model = AugmentedEstimator(Spy(Log()), augment=lambda s, generator: 255 - s).fit(uint8, y)
    rows = model.estimator_.log[-1]["X"]
    assert rows.dtype == np.uint8
    np.testing.assert_array_equal(rows[40:], 255 - uint8)


# -- samples of any rank -----------------------------------------------------------------


def test_images_reach_the_estimator_as_rows_at_fit_and_predict():
    X, y = images()
    shapes = []

    def shift(image, generator):
        shapes.append(tuple(image.shape))
        return torch.roll(image, 1, dims=-1)

    model = AugmentedEstimator(RandomForestClassifier(n_estimators=5, random_state=0),
                               augment=shift, random_state=0).fit(X, y)
    assert set(shapes) == {(1, 4, 4)}  # augmented in their own shape
    assert model.estimator_.n_features_in_ == 16 and model.n_features_in_ == 1
    np.testing.assert_array_equal(model.predict(X), model.estimator_.predict(X.reshape(30, -1)))
    assert model.score(X, y) == model.estimator_.score(X.reshape(30, -1), y)
    np.testing.assert_array_equal(model.predict_proba(X),
                                  model.estimator_.predict_proba(X.reshape(30, -1)))


def test_samples_of_another_shape_are_refused_even_with_as_many_pixels():
    X, y = images()
    model = AugmentedEstimator(LogisticRegression(), augment=noisy, random_state=0).fit(X, y)
    with pytest.raises(ValueError, match=r"samples of shape \(1, 2, 8\), but AugmentedEstimator "
                                         r"was fitted on samples of shape \(1, 4, 4\)"):
        model.predict(X.reshape(30, 1, 2, 8))


def test_flatten_false_keeps_the_samples_as_they_are():
    X, y = images()
    log = Log()
    model = AugmentedEstimator(Spy(log), augment=negate_some, batch_size=16, flatten=False,
                               random_state=0).fit(X, y)
    assert log[-1]["X"].shape == (60, 1, 4, 4)
    model.predict_proba(X)
    assert log[-1]["predict_proba"].shape == (30, 1, 4, 4)
    # a pipeline that takes images: TorchTransformer flattens them itself
    pipe = make_pipeline(TorchTransformer(torch.nn.Flatten(), device="cpu"), LogisticRegression())
    model = AugmentedEstimator(pipe, augment=noisy, flatten=False, random_state=0).fit(X, y)
    assert model.predict(X).shape == (30,)
    # 2-D input is the same either way
    X2, y2 = data()
    flat = AugmentedEstimator(LogisticRegression(), augment=noisy, random_state=0).fit(X2, y2)
    kept = AugmentedEstimator(LogisticRegression(), augment=noisy, flatten=False,
                              random_state=0).fit(X2, y2)
    np.testing.assert_array_equal(flat.estimator_.coef_, kept.estimator_.coef_)


def test_augment_must_keep_the_shape():
    X, y = data()
    with pytest.raises(ValueError, match=r"augment changed a sample's shape from \(5,\) to \(4,\)"):
        AugmentedEstimator(LogisticRegression(), augment=lambda s, generator: s[:4]).fit(X, y)
    with pytest.raises(ValueError, match=r"augment changed a batch's shape from \(16, 5\) to "
                                         r"\(16, 4\); it must keep it"):
        AugmentedEstimator(LogisticRegression(), augment=lambda b, generator: b[:, :4],
                           batch_size=16).fit(X, y)


def test_augment_must_return_a_tensor():
    X, y = data()
    with pytest.raises(TypeError, match=r"augment returned NoneType, expected a torch tensor "
                                        r"of shape \(5,\)"):
        AugmentedEstimator(LogisticRegression(), augment=lambda s, generator: None).fit(X, y)
    # arrays are taken as they are
    model = AugmentedEstimator(Spy(Log()), augment=lambda s, generator: np.zeros(5)).fit(X, y)
    np.testing.assert_array_equal(model.estimator_.log[-1]["X"][40:], 0)


def test_sparse_and_empty_input_get_clear_errors():
    from scipy import sparse

    X, y = data()
    with pytest.raises(TypeError, match="dense data is required"):
        AugmentedEstimator(LogisticRegression(), augment=noisy).fit(sparse.csr_matrix(X), y)
    with pytest.raises(ValueError, match="0 sample"):
        AugmentedEstimator(LogisticRegression(), augment=noisy).fit(X[:0], y[:0])
    with pytest.raises(ValueError, match="inconsistent numbers of samples"):
        AugmentedEstimator(LogisticRegression(), augment=noisy).fit(X, y[:-1])
    if np.dtype(np.longdouble).itemsize > 8:  # where long double is wider than float64
        with pytest.raises(TypeError, match=f"X has dtype {np.dtype(np.longdouble)}, which "
                                            "torch cannot hold; convert X to float64"):
            AugmentedEstimator(LogisticRegression(), augment=noisy).fit(
                X.astype(np.longdouble), y)


# -- batched augmentation ---------------------------------------------------------------


def test_batched_augment_gets_batches_and_draws_per_sample():
    X, y = data(n=50)
    sizes = []

    def recording(batch, generator):
        sizes.append(len(batch))
        return negate_some(batch, generator)

    log = Log()
    AugmentedEstimator(Spy(log), augment=recording, n_views=2, batch_size=16,
                       random_state=0).fit(X, y)
    assert sizes == [16, 16, 16, 2] * 2
    rows = log[-1]["X"]
    negated = np.all(rows[50:100] == -X, axis=1)
    kept = np.all(rows[50:100] == X, axis=1)
    assert np.all(negated | kept) and 10 < negated.sum() < 40  # one draw per sample
    assert not np.array_equal(rows[50:100], rows[100:])  # each view draws anew


def test_batched_augment_is_deterministic_per_seed_and_batch_size():
    X, y = data(n=50)
    state = torch.get_rng_state()

    def rows(seed, batch_size):
        log = Log()
        AugmentedEstimator(Spy(log), augment=negate_some, n_views=2, batch_size=batch_size,
                           random_state=seed).fit(X, y)
        return log[-1]["X"]

    np.testing.assert_array_equal(rows(3, 16), rows(3, 16))
    assert not np.array_equal(rows(3, 16), rows(4, 16))
    assert not np.array_equal(rows(3, 16), rows(3, 8))  # documented: the batch size counts
    assert torch.equal(torch.get_rng_state(), state)


def test_a_callable_without_generator_is_called_per_sample_even_with_batch_size():
    X, y = data()
    shapes = []
    state = torch.get_rng_state()

    def global_flip(sample):
        shapes.append(tuple(sample.shape))
        return -sample if torch.rand(()) < 0.5 else sample

    def fit():
        return AugmentedEstimator(Spy(Log()), augment=global_flip, batch_size=16,
                                  random_state=0).fit(X, y).estimator_.log[-1]["X"]

    np.testing.assert_array_equal(fit(), fit())
    assert set(shapes) == {(5,)} and len(shapes) == 80
    assert torch.equal(torch.get_rng_state(), state)


# -- fit parameters and metadata routing -------------------------------------------------


def test_every_per_sample_fit_parameter_is_repeated_with_the_rows():
    X, y = data()
    w, groups = np.linspace(0.5, 2, 40), np.arange(40) // 4
    log = Log()
    AugmentedEstimator(Spy(log), augment=noisy, n_views=2, random_state=0).fit(
        X, y, sample_weight=w, groups=groups.tolist(), tol=1e-3)
    seen = log[-1]
    np.testing.assert_array_equal(seen["sample_weight"], np.tile(w, 3))
    np.testing.assert_array_equal(seen["groups"], np.tile(groups, 3))
    assert seen["tol"] == 1e-3  # not per sample: as it is
    pd = pytest.importorskip("pandas")
    for given in (torch.from_numpy(w), pd.Series(w, index=np.arange(40) * 7)):
        AugmentedEstimator(Spy(log), augment=noisy, random_state=0).fit(X, y, sample_weight=given)
        np.testing.assert_array_equal(np.asarray(log[-1]["sample_weight"]), np.tile(w, 2))


def test_sample_weight_weighs_each_sample_and_its_views():
    X, y = data()
    w = np.random.default_rng(1).uniform(0.1, 3, size=40)

    def same(sample, generator):
        return sample

    model = AugmentedEstimator(LogisticRegression(), augment=same, n_views=2).fit(
        X, y, sample_weight=w)
    plain = LogisticRegression().fit(np.tile(X, (3, 1)), np.tile(y, 3), sample_weight=np.tile(w, 3))
    np.testing.assert_allclose(model.estimator_.coef_, plain.coef_)
    unweighted = AugmentedEstimator(LogisticRegression(), augment=same, n_views=2).fit(X, y)
    assert not np.allclose(unweighted.estimator_.coef_, model.estimator_.coef_)


@pytest.fixture
def metadata_routing():
    sklearn.set_config(enable_metadata_routing=True)
    try:
        yield
    finally:
        sklearn.set_config(enable_metadata_routing=False)


def test_grid_search_routes_sample_weight_to_the_estimator(metadata_routing):
    X, y = data(n=60)
    w = np.linspace(0.5, 2, 60)
    log = Log()
    inner = Spy(log).set_fit_request(sample_weight=True).set_score_request(sample_weight=False)
    search = GridSearchCV(AugmentedEstimator(inner, augment=noisy, random_state=0),
                          {"n_views": [1, 2]}, cv=3).fit(X, y, sample_weight=w)
    fits = [entry for entry in log if "X" in entry]
    assert len(fits) == 7  # 2 x 3 folds, then the refit
    for entry in fits:
        n = len(entry["X"])
        assert entry["sample_weight"] is not None and len(entry["sample_weight"]) == n
    refit = fits[-1]
    views = search.best_params_["n_views"]
    np.testing.assert_array_equal(refit["sample_weight"], np.tile(w, 1 + views))
    # each fold's weights are the fold's samples', repeated with their views
    first = fits[0]
    rows = len(first["X"]) // 2
    np.testing.assert_array_equal(first["sample_weight"][:rows], first["sample_weight"][rows:])
    assert set(first["sample_weight"][:rows]) <= set(w)


def test_routing_refuses_metadata_the_estimator_did_not_request(metadata_routing):
    X, y = data()
    model = AugmentedEstimator(LogisticRegression(), augment=noisy)
    with pytest.raises(UnsetMetadataPassedError, match="sample_weight"):
        model.fit(X, y, sample_weight=np.ones(40))
    requested = AugmentedEstimator(LogisticRegression().set_fit_request(sample_weight=True),
                                   augment=noisy, random_state=0)
    w = np.linspace(0.5, 2, 40)
    requested.fit(X, y, sample_weight=w)
    sklearn.set_config(enable_metadata_routing=False)
    legacy = AugmentedEstimator(LogisticRegression(), augment=noisy, random_state=0)
    np.testing.assert_array_equal(legacy.fit(X, y, sample_weight=w).estimator_.coef_,
                                  requested.estimator_.coef_)


def test_routing_reaches_score(metadata_routing):
    X, y = data()
    w = np.where(y == 1, 5.0, 0.5)
    inner = LogisticRegression().set_score_request(sample_weight=True)
    model = AugmentedEstimator(inner, augment=noisy, random_state=0).fit(X[:20], y[:20])
    assert model.score(X, y, sample_weight=w) == model.estimator_.score(X, y, sample_weight=w)
    assert model.score(X, y, sample_weight=w) != model.score(X, y)
    # every method, test-time augmented or not, routes (here: nothing) to the estimator's
    for test_views in (0, 2):
        model.set_params(test_views=test_views)
        proba = model.predict_proba(X)
        np.testing.assert_array_equal(model.predict(X), np.argmax(proba, axis=1))
        np.testing.assert_allclose(model.predict_log_proba(X), np.log(proba))
        assert model.decision_function(X).shape == (40,)
    with pytest.raises(TypeError, match=r"predict got unexpected argument\(s\) "
                                        r"\{'sample_weight'\}, which are not routed"):
        model.predict(X, sample_weight=w)


# -- conventions -------------------------------------------------------------------------


def test_feature_names_are_recorded_and_reordered_columns_are_caught():
    pd = pytest.importorskip("pandas")
    X, y = data()
    frame = pd.DataFrame(X, columns=list("abcde"))
    model = AugmentedEstimator(LogisticRegression(), augment=noisy, random_state=0).fit(frame, y)
    assert list(model.feature_names_in_) == list("abcde") and model.n_features_in_ == 5
    np.testing.assert_array_equal(model.predict(frame), model.estimator_.predict(X))
    with pytest.raises(ValueError, match="feature names should match"):
        model.predict(frame[list("edcba")])
    with pytest.warns(UserWarning, match="X does not have valid feature names"):
        np.testing.assert_array_equal(model.predict(X), model.estimator_.predict(X))
    model.fit(X, y)  # an array: no names any more
    assert not hasattr(model, "feature_names_in_")
    with pytest.raises(ValueError, match="X has 4 features, but AugmentedEstimator is expecting "
                                         "5 features"):
        model.predict(X[:, :4])


def test_predict_score_use_the_data_as_given():
    X, y = data()
    model = AugmentedEstimator(LogisticRegression(), augment=noisy, random_state=0).fit(X, y)
    np.testing.assert_array_equal(model.predict(X), model.estimator_.predict(X))
    np.testing.assert_array_equal(model.predict_proba(X), model.estimator_.predict_proba(X))
    np.testing.assert_array_equal(model.predict_log_proba(X),
                                  model.estimator_.predict_log_proba(X))
    assert model.score(X, y) == model.estimator_.score(X, y)
    assert list(model.classes_) == [0, 1]
    assert not hasattr(AugmentedEstimator(Ridge(), augment=noisy), "predict_proba")


def test_clone_and_pickle_keep_the_model():
    X, y = images()
    model = AugmentedEstimator(LogisticRegression(), augment=negate_some, batch_size=8,
                               test_views=2, random_state=0).fit(X, y)
    restored = pickle.loads(pickle.dumps(model))
    np.testing.assert_array_equal(restored.predict_proba(X), model.predict_proba(X))
    assert clone(model).get_params()["batch_size"] == 8


# -- test-time augmentation ---------------------------------------------------------------


def test_test_views_average_predict_proba_over_the_original_and_its_views():
    X, y = images()
    log = Log()
    model = AugmentedEstimator(Spy(log), augment=negate_some, batch_size=8, test_views=3,
                               random_state=0).fit(X, y)
    proba = model.predict_proba(X)
    rows = log[-1]["predict_proba"]
    assert rows.shape == (120, 16)
    np.testing.assert_array_equal(rows[:30], X.reshape(30, -1))
    assert not np.array_equal(rows[30:60], rows[:30])
    expected = Spy().predict_proba(rows).reshape(4, 30, 2).mean(axis=0)
    np.testing.assert_allclose(proba, expected)
    np.testing.assert_array_equal(model.predict_proba(X), proba)  # seeded: two calls agree
    np.testing.assert_array_equal(model.predict(X), np.argmax(proba, axis=1))
    assert model.score(X, y) == np.mean(model.predict(X) == y)
    # test_views=0: the data as given
    model.set_params(test_views=0)
    np.testing.assert_allclose(model.predict_proba(X), Spy().predict_proba(X))


def test_test_views_leave_the_global_generator_and_the_fit_alone():
    X, y = data()
    state = torch.get_rng_state()
    a = AugmentedEstimator(LogisticRegression(), augment=noisy, test_views=4, random_state=0)
    b = AugmentedEstimator(LogisticRegression(), augment=noisy, random_state=0)
    a.fit(X, y), b.fit(X, y)
    np.testing.assert_array_equal(a.estimator_.coef_, b.estimator_.coef_)
    averaged = a.decision_function(X)
    assert not np.allclose(averaged, b.decision_function(X))
    np.testing.assert_array_equal(a.decision_function(X), averaged)
    proba = a.predict_proba(X)
    np.testing.assert_array_equal(a.predict(X), a.classes_[np.argmax(proba, axis=1)])
    np.testing.assert_allclose(a.predict_log_proba(X), np.log(proba))
    assert torch.equal(torch.get_rng_state(), state)
    # without a seed too, two calls agree: the views are seeded at fit
    c = AugmentedEstimator(LogisticRegression(), augment=noisy, test_views=4).fit(X, y)
    np.testing.assert_array_equal(c.predict_proba(X), c.predict_proba(X))


class FirstFeature(BaseEstimator):
    """Predicts from the first feature, recording the rows it predicts on."""

    def __init__(self, log=None):
        self.log = log

    def fit(self, X, y):
        self.classes_ = np.unique(y)
        return self

    def predict(self, X):
        self.log.append(X)
        return X[:, 0] if self._is_regressor else (X[:, 0] > 0).astype(int)


class FirstFeatureRegressor(RegressorMixin, FirstFeature):
    _is_regressor = True


class FirstFeatureVoter(ClassifierMixin, FirstFeature):  # no predict_proba, no decision
    _is_regressor = False


def shift(sample, generator):
    return sample + torch.randn(sample.shape, generator=generator, dtype=sample.dtype)


def test_test_views_for_decision_functions_regressors_and_voters():
    X, y = data()
    model = AugmentedEstimator(RidgeClassifier(), augment=shift, test_views=5,
                               random_state=0).fit(X, y)
    decision = model.decision_function(X)
    np.testing.assert_array_equal(model.predict(X), model.classes_[(decision > 0).astype(int)])
    assert not np.allclose(decision, model.estimator_.decision_function(X))

    log = Log()
    regressor = AugmentedEstimator(FirstFeatureRegressor(log), augment=shift, test_views=5,
                                   random_state=0).fit(X, X[:, 0])
    averaged = regressor.predict(X)
    rows = log[-1]
    assert rows.shape == (240, 5)
    np.testing.assert_allclose(averaged, rows[:, 0].reshape(6, 40).mean(axis=0))
    assert not np.allclose(averaged, X[:, 0])
    assert regressor.score(X, X[:, 0]) == pytest.approx(
        1 - np.sum((X[:, 0] - averaged) ** 2) / np.sum((X[:, 0] - X[:, 0].mean()) ** 2))

    voter = AugmentedEstimator(FirstFeatureVoter(log), augment=shift, test_views=6,
                               random_state=0).fit(X, y)
    votes = voter.predict(X)
    per_view = (log[-1][:, 0] > 0).reshape(7, 40)
    np.testing.assert_array_equal(votes, (per_view.sum(axis=0) > 3.5).astype(int))
    assert not np.array_equal(votes, y)  # some samples near the boundary are outvoted


def test_test_views_need_a_classifier_or_a_regressor_for_predict():
    X, _ = data()

    class Scaler(BaseEstimator):
        def fit(self, X, y=None):
            return self

        def predict(self, X):
            return X[:, 0]

    model = AugmentedEstimator(Scaler(), augment=noisy, test_views=2).fit(X)
    with pytest.raises(ValueError, match="test_views=2 averages predictions of a classifier or "
                                         "a regressor, but Scaler is neither"):
        model.predict(X)


def test_dummy_estimators_and_regressor_tags_pass_through():
    X, y = data()
    assert AugmentedEstimator(DummyClassifier(), augment=noisy).__sklearn_tags__() \
        .estimator_type == "classifier"
    assert AugmentedEstimator(Ridge(), augment=noisy).__sklearn_tags__() \
        .estimator_type == "regressor"

    class Reg(RegressorMixin, BaseEstimator):
        pass

    assert AugmentedEstimator(Reg(), augment=noisy).__sklearn_tags__() \
        .estimator_type == "regressor"


@pytest.mark.parametrize("estimator", [Ridge(), LogisticRegression(), MultinomialNB(),
                                       HistGradientBoostingRegressor(), StandardScaler()])
def test_the_estimators_tags_are_forwarded(estimator):
    inner = get_tags(estimator)
    tags = get_tags(AugmentedEstimator(estimator, augment=noisy))
    assert tags.target_tags == inner.target_tags  # multi_output, positive_only, required...
    assert (tags.estimator_type, tags.classifier_tags, tags.regressor_tags,
            tags.transformer_tags, tags.non_deterministic) == (
        inner.estimator_type, inner.classifier_tags, inner.regressor_tags,
        inner.transformer_tags, inner.non_deterministic)
    assert (tags.input_tags.allow_nan, tags.input_tags.positive_only) == (
        inner.input_tags.allow_nan, inner.input_tags.positive_only)
    assert tags.input_tags.three_d_array and not tags.array_api_support  # NumPy rows


def test_fit_transform_is_fit_then_transform_of_x_as_given():
    X, _ = data()
    model = AugmentedEstimator(StandardScaler(), augment=noisy, n_views=2, random_state=0)
    out = model.fit_transform(X)
    np.testing.assert_array_equal(out, model.transform(X))
    assert model.n_samples_seen_ == 120
    assert not hasattr(AugmentedEstimator(Ridge(), augment=noisy), "fit_transform")


class Negate(torch.nn.Module):
    """A module whose forward takes the generator: it is batched like a function."""

    def forward(self, batch, generator):
        return negate_some(batch, generator)


def test_a_module_taking_a_generator_is_called_on_batches():
    X, y = data(n=50)
    log = Log()
    AugmentedEstimator(Spy(log), augment=Negate(), batch_size=16, random_state=0).fit(X, y)
    by_function = Log()
    AugmentedEstimator(Spy(by_function), augment=negate_some, batch_size=16,
                       random_state=0).fit(X, y)
    np.testing.assert_array_equal(log[-1]["X"], by_function[-1]["X"])


def test_the_docstring_examples_run():
    import doctest

    results = doctest.testmod(augmented_module)
    assert results.attempted >= 5 and results.failed == 0


@pytest.mark.gpu
def test_a_cuda_X_and_views_handed_back_on_the_gpu():
    X, y = images()
    device_X = torch.from_numpy(X).cuda()

    def on_the_gpu(batch, generator):  # samples come on the CPU; views may come back on a GPU
        return negate_some(batch, generator).cuda()

    log = Log()
    AugmentedEstimator(Spy(log), augment=on_the_gpu, n_views=2, batch_size=8,
                       random_state=0).fit(device_X, y)
    on_cpu = Log()
    AugmentedEstimator(Spy(on_cpu), augment=negate_some, n_views=2, batch_size=8,
                       random_state=0).fit(X, y)
    np.testing.assert_array_equal(log[-1]["X"], on_cpu[-1]["X"])


# -- inputs, augment functions and parameters at the edges (docs/guide/sklearn.rst) ------


def plain_noise(sample):  # no generator parameter: per sample, under a seeded fork_rng
    return sample + 0.1 * torch.randn(sample.shape, dtype=sample.dtype)


class Rows(LogisticRegression):
    """Records the rows fit receives (class attribute: clone() keeps no instance state)."""

    seen = []

    def fit(self, X, y, sample_weight=None):
        Rows.seen.append(np.array(X, copy=True))
        return super().fit(X, y, sample_weight=sample_weight)


@pytest.mark.parametrize("param", ["n_views", "test_views"])
def test_bool_view_counts_are_refused(param):
    X, y = features()
    model = AugmentedEstimator(LogisticRegression(), augment=noisy, **{param: True})
    with pytest.raises(InvalidParameterError, match=param):
        model.fit(X, y)


def test_augmented_estimator_takes_a_bf16_tensor():
    X, y = features()
    model = AugmentedEstimator(Ridge(), augment=noisy).fit(torch.from_numpy(X).bfloat16(), y)
    assert model.n_samples_seen_ == 2 * len(X)


def test_an_in_place_augment_leaves_the_original_rows_alone():
    X, y = features()
    Rows.seen.clear()
    AugmentedEstimator(Rows(), augment=lambda s, generator: s.mul_(2)).fit(X, y)
    np.testing.assert_array_equal(Rows.seen[-1][:len(X)], X)


def test_a_generator_parameter_under_another_name_gets_the_generator():
    # A second positional parameter without a default is the generator, whatever its name
    X, y = features()
    seen = []

    def augment(sample, g):
        seen.append(g)
        return sample

    AugmentedEstimator(LogisticRegression(), augment=augment).fit(X, y)
    assert seen and all(isinstance(g, torch.Generator) for g in seen)


def test_generatorless_augment_is_deterministic_across_threads():
    X, _ = features(1000)  # long enough per fit that the threads interleave

    def coef(_):
        return AugmentedEstimator(Ridge(), augment=plain_noise, n_views=2, random_state=0) \
            .fit(X, X[:, 0]).estimator_.coef_

    expected = coef(None)
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(coef, range(8)))
    for result in results:
        np.testing.assert_array_equal(result, expected)


def fitted_rows(**params):
    X, y = features()
    Rows.seen.clear()
    AugmentedEstimator(Rows(), **{"augment": noisy, **params}).fit(X, y)
    return Rows.seen[-1]


@pytest.mark.parametrize("augment", [noisy, plain_noise])
def test_views_are_per_sample_per_view_and_per_seed(augment):
    X, _ = features()
    n = len(X)
    rows = fitted_rows(augment=augment, n_views=2, random_state=0)
    np.testing.assert_array_equal(rows, fitted_rows(augment=augment, n_views=2, random_state=0))
    assert not np.array_equal(rows, fitted_rows(augment=augment, n_views=2, random_state=1))
    assert not np.allclose(rows[n:2 * n], rows[2 * n:])  # views differ
    noise = rows[n:2 * n] - X
    assert len(np.unique(noise.round(6))) == noise.size  # and samples within a view


@pytest.mark.parametrize("params", [{"augment": noisy}, {"augment": plain_noise},
                                    {"augment": noisy, "batch_size": 4},
                                    {"augment": plain_noise, "test_views": 2}])
def test_torch_and_numpy_global_generators_are_untouched(params):
    X, y = features()
    torch.manual_seed(123)
    before, numpy_before = torch.get_rng_state(), np.random.get_state()[1].copy()
    model = AugmentedEstimator(LogisticRegression(), random_state=0, **params).fit(X, y)
    model.predict(X)
    assert torch.equal(before, torch.get_rng_state())
    assert np.array_equal(numpy_before, np.random.get_state()[1])


def test_a_keyword_only_generator_is_passed_and_var_keywords_are_not():
    X, y = features()
    got = []

    def keyword_only(s, *, generator=None):
        got.append(generator)
        return s

    def var_keyword(s, **kwargs):  # no parameter named generator: the forked global one
        got.append(kwargs.get("generator"))
        return s

    for augment in (keyword_only, var_keyword):
        got.clear()
        AugmentedEstimator(LogisticRegression(), augment=augment, random_state=0).fit(X, y)
        assert len(got) == len(X)
        assert all(isinstance(g, torch.Generator) if augment is keyword_only else g is None
                   for g in got)


@pytest.mark.parametrize("result", [
    lambda s: torch.ones(3, dtype=torch.int64), lambda s: [0.0, 0.0, 0.0],
    lambda s: s.numpy() * 2, lambda s: s.clone().requires_grad_(), lambda s: s.bfloat16()])
def test_augment_results_of_other_kinds_are_cast(result):
    X, y = features()
    model = AugmentedEstimator(Ridge(), augment=lambda s, generator: result(s)).fit(X, y)
    assert model.n_samples_seen_ == 2 * len(X)


def test_augment_results_that_cannot_be_used_are_named():
    X, y = features()
    with pytest.raises(TypeError, match=r"augment returned str, expected a torch tensor"):
        AugmentedEstimator(Ridge(), augment=lambda s, generator: "abc").fit(X, y)
    with pytest.raises(ValueError, match=r"changed a sample's shape from \(3,\) to \(\)"):
        AugmentedEstimator(Ridge(), augment=lambda s, generator: torch.tensor(1.0)).fit(X, y)
    with pytest.raises(ValueError, match=r"changed a batch's shape from \(4, 3\) to \(1, 3\)"):
        AugmentedEstimator(Ridge(), augment=lambda b, generator: b[:1], batch_size=4).fit(X, y)


@pytest.mark.parametrize("kind", ["list", "tensor", "series"])
def test_sample_weight_of_every_kind_is_repeated(kind):
    X, y = features()
    weight = {"list": lambda: list(np.ones(12)), "tensor": lambda: torch.ones(12),
              "series": lambda: pytest.importorskip("pandas").Series(np.ones(12))}[kind]()
    model = AugmentedEstimator(LogisticRegression(), augment=noisy, n_views=2)
    assert model.fit(X, y, sample_weight=weight).n_samples_seen_ == 36


def test_y_tensors_strings_and_multioutput():
    X, y = features(40)
    model = AugmentedEstimator(LogisticRegression(), augment=noisy, test_views=2, random_state=0)
    assert model.fit(torch.from_numpy(X), torch.from_numpy(y)).score(X, torch.from_numpy(y)) > .9
    labels = np.array(["a", "b"])[y]
    assert set(model.fit(X, labels).predict(X)) <= {"a", "b"}
    regressor = AugmentedEstimator(Ridge(), augment=noisy, test_views=2)
    assert regressor.fit(X, np.c_[X[:, 0], X[:, 1]]).predict(X).shape == (40, 2)


def test_test_views_without_predict_proba_and_with_default_random_state():
    X, y = features(40)
    model = AugmentedEstimator(SVC(), augment=noisy, test_views=2).fit(X, y)
    assert not hasattr(model, "predict_proba") and model.predict(X).shape == (40,)
    proba = AugmentedEstimator(LogisticRegression(), augment=noisy, test_views=3).fit(X, y)
    np.testing.assert_array_equal(proba.predict_proba(X), proba.predict_proba(X))
    np.testing.assert_allclose(proba.predict_proba(X).sum(axis=1), 1, rtol=1e-6)  # float32


@pytest.mark.slow  # two worker processes
def test_augmented_grid_search_in_two_processes_and_pickle():
    X, y = features(40)
    search = GridSearchCV(AugmentedEstimator(LogisticRegression(), augment=noisy, random_state=0),
                          {"n_views": [0, 2], "estimator__C": [0.1, 1.0]}, cv=2, n_jobs=2)
    assert search.fit(X, y).best_params_["n_views"] in (0, 2)
    model = AugmentedEstimator(LogisticRegression(), augment=noisy, test_views=2,
                               random_state=0).fit(X, y)
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(model)).predict_proba(X),
                                  model.predict_proba(X))
    assert clone(model).set_params(estimator__C=5).estimator.C == 5


@pytest.mark.parametrize("random_state", [-1, 2**40, np.random.default_rng(0)])
def test_unusable_random_states_are_named(random_state):
    X, y = features()
    with pytest.raises(InvalidParameterError, match="'random_state'"):
        AugmentedEstimator(LogisticRegression(), augment=noisy,
                           random_state=random_state).fit(X, y)
