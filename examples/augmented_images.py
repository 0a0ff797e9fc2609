"""Workflow 3: image tensors augmented with random flips and rotations ->
flattened -> RandomForest. Each training image gets `n_views` augmented
copies, drawn per image from a seeded generator (torch's global generator is
left alone); torchvision's transforms are used when installed."""

import torch
from sklearn.ensemble import RandomForestClassifier
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline

from tensorbridge.sklearn import AugmentedEstimator, TorchTransformer


def flip_and_rotate(image, generator):
    """A random horizontal flip and a random multiple of 90 degrees."""
    if torch.rand((), generator=generator) < 0.5:
        image = torch.flip(image, dims=[-1])
    quarter_turns = int(torch.randint(0, 4, (), generator=generator))
    return torch.rot90(image, quarter_turns, dims=[-2, -1])


try:  # torchvision's transforms draw from torch's global generator, which
    # AugmentedEstimator seeds per image inside torch.random.fork_rng.
    from torchvision.transforms import v2

    augment = v2.Compose([v2.RandomHorizontalFlip(), v2.RandomRotation(90)])
except Exception:  # torchvision missing, or not importable beside this torch
    augment = flip_and_rotate

# Toy images: class 1 has a bright square, anywhere and in any orientation.
generator = torch.Generator().manual_seed(0)
images = torch.rand(400, 1, 12, 12, generator=generator) * 0.5
labels = torch.arange(400) % 2
for i in range(1, 400, 2):
    r, c = torch.randint(0, 8, (2,), generator=generator).tolist()
    images[i, 0, r:r + 4, c:c + 4] += 1.0

X_train, X_test, y_train, y_test = train_test_split(images.numpy(), labels.numpy(),
                                                    random_state=0)
model = AugmentedEstimator(
    make_pipeline(TorchTransformer(torch.nn.Flatten()), RandomForestClassifier(random_state=0)),
    augment=augment, n_views=2, random_state=0)
model.fit(X_train, y_train)
print(f"trained on {model.n_samples_seen_} images, accuracy: {model.score(X_test, y_test):.3f}")
