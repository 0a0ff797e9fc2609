"""ToNumpy and AugmentedEstimator under scikit-learn's conventions (TorchTransformer:
test_torch_transformer.py)."""

import sys

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import parametrize_with_checks

from tensorbridge.sklearn import ToNumpy


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
    pipe.fit(torch.from_numpy(X), torch.from_numpy(y))
    assert pipe.predict(torch.from_numpy(X)).shape == (40,)


def test_sklearn_is_imported_only_when_used():
    import subprocess

    code = "import sys, tensorbridge; print('sklearn' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True).stdout.strip() == "False"
