"""Workflow 1: features from a torch module -> train/test split ->
LogisticRegression -> accuracy, in one scikit-learn pipeline."""

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline

from tensorbridge.sklearn import TorchTransformer

torch.manual_seed(0)
rng = np.random.default_rng(0)
X = rng.standard_normal((2000, 20)).astype(np.float32)
y = (X[:, :3].sum(axis=1) > 0).astype(int)

# A feature extractor: in practice a pretrained network; here a small random one.
extractor = torch.nn.Sequential(torch.nn.Linear(20, 64), torch.nn.Tanh())
model = make_pipeline(TorchTransformer(extractor, batch_size=256), LogisticRegression(max_iter=500))

X_train, X_test, y_train, y_test = train_test_split(X, y, random_state=0)
model.fit(X_train, y_train)
print(f"accuracy: {model.score(X_test, y_test):.3f}")
