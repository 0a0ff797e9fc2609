"""Workflow 2: a large tensor processed in batches -> StandardScaler, with no
list of batches and no np.concatenate: tb.collect writes each batch's output
straight into its rows of one array."""

import torch
from sklearn.preprocessing import StandardScaler

import tensorbridge as tb

torch.manual_seed(0)
data = torch.randn(200_000, 32)
encoder = torch.nn.Linear(32, 8).eval()

with torch.inference_mode():
    features = tb.collect(encoder(batch) for batch in data.split(8192))

scaled = StandardScaler().fit_transform(features)
print(f"features: {features.shape}, mean after scaling: {abs(scaled.mean()):.1e}")
