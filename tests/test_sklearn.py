"""ToNumpy and AugmentedEstimator under scikit-learn's conventions (TorchTransformer:
test_torch_transformer.py)."""

import sys

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import parametrize_with_checks

from tensorbridge.sklearn import AugmentedEstimator, ToNumpy


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
    bf16 = torch.randn(6, 3).bfloat16()
    assert ToNumpy().fit(bf16).transform(bf16).dtype.name == "bfloat16"
    X, y = data()
    pipe = make_pipeline(ToNumpy(), StandardScaler(), LogisticRegression())
    assert pipe.fit(torch.from_numpy(X), torch.from_numpy(y)).predict(torch.from_numpy(X)).shape == (40,)


# -- AugmentedEstimator --------------------------------------------------------------


def noisy(sample, generator):
    return sample + 0.1 * torch.randn(sample.shape, generator=generator, dtype=sample.dtype)


def test_augmented_fit_sees_the_original_rows_plus_views():
    X, y = data()
    seen = {}

    class Spy(LogisticRegression):
        def fit(self, X, y):
            seen["X"], seen["y"] = X, y
            return super().fit(X, y)

    model = AugmentedEstimator(Spy(), augment=noisy, n_views=3, random_state=0).fit(X, y)
    assert seen["X"].shape == (160, 5) and model.n_samples_seen_ == 160
    np.testing.assert_array_equal(seen["X"][:40], X)
    np.testing.assert_array_equal(seen["y"], np.tile(y, 4))
    assert not np.allclose(seen["X"][40:80], X)
    # randomness is per sample: two identical samples get different noise
    twins = np.repeat(X[:1], 2, axis=0)
    AugmentedEstimator(Spy(), augment=noisy, random_state=0).fit(twins, [0, 1])
    assert not np.array_equal(seen["X"][2], seen["X"][3])


def test_same_seed_same_model_and_torch_global_generator_untouched():
    X, y = data()
    state = torch.get_rng_state()
    a = AugmentedEstimator(LogisticRegression(), augment=noisy, n_views=2, random_state=7).fit(X, y)
    b = AugmentedEstimator(LogisticRegression(), augment=noisy, n_views=2, random_state=7).fit(X, y)
    c = AugmentedEstimator(LogisticRegression(), augment=noisy, n_views=2, random_state=8).fit(X, y)
    assert torch.equal(torch.get_rng_state(), state)
    np.testing.assert_array_equal(a.estimator_.coef_, b.estimator_.coef_)
    assert not np.array_equal(a.estimator_.coef_, c.estimator_.coef_)


def test_augment_without_a_generator_uses_a_forked_global_generator():
    X, y = data()
    state = torch.get_rng_state()

    def global_noise(sample):  # like a torchvision transform
        return sample + 0.1 * torch.randn(sample.shape, dtype=sample.dtype)

    a = AugmentedEstimator(LogisticRegression(), augment=global_noise, random_state=1).fit(X, y)
    b = AugmentedEstimator(LogisticRegression(), augment=global_noise, random_state=1).fit(X, y)
    assert torch.equal(torch.get_rng_state(), state)
    np.testing.assert_array_equal(a.estimator_.coef_, b.estimator_.coef_)


def test_augmented_predict_score_use_the_data_as_given():
    X, y = data()
    model = AugmentedEstimator(LogisticRegression(), augment=noisy, random_state=0).fit(X, y)
    np.testing.assert_array_equal(model.predict(X), model.estimator_.predict(X))
    np.testing.assert_array_equal(model.predict_proba(X), model.estimator_.predict_proba(X))
    assert model.score(X, y) == model.estimator_.score(X, y)
    assert list(model.classes_) == [0, 1]
    assert not hasattr(AugmentedEstimator(Ridge(), augment=noisy), "predict_proba")


def test_augment_must_keep_the_shape():
    X, y = data()
    with pytest.raises(ValueError, match=r"augment changed a sample's shape from \(5,\) to \(4,\)"):
        AugmentedEstimator(LogisticRegression(), augment=lambda s, generator: s[:4]).fit(X, y)


def test_sklearn_is_imported_only_when_used():
    import subprocess

    code = "import sys, tensorbridge; print('sklearn' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True).stdout.strip() == "False"
