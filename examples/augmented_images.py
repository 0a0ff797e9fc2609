"""Workflow 3: images augmented with random one-pixel shifts, straight into a
RandomForest.

scikit-learn's digits as (n, 1, 8, 8) images: AugmentedEstimator shifts each
training image in its own shape, flattens every image to a row of 64 pixels
and fits the forest on the originals plus the shifted views. Printed, against
the hand-written way:

1. the time to build the rows for 8,980 images x 4 views, augmented on
   batches: a hand-written loop (batches, a list, np.concatenate), and
   AugmentedEstimator(batch_size=512), which writes every view into one
   preallocated array; then one augment call per image, for contrast;
2. accuracy on held-out digits without augmentation (images flattened by
   hand) and with it, for a forest trained on 300 digits.
"""

import time

import numpy as np
import torch
from sklearn.base import BaseEstimator
from sklearn.datasets import load_digits
from sklearn.ensemble import RandomForestClassifier
from sklearn.model_selection import train_test_split

from tensorbridge.sklearn import AugmentedEstimator


def shift(batch, generator):
    """Each image of the batch moved by -1, 0 or 1 pixel down and right (its
    own draw), the border filled with zeros."""
    n, height, width = len(batch), batch.shape[-2], batch.shape[-1]
    padded = torch.nn.functional.pad(batch, (1, 1, 1, 1))
    # windows[i, c, dy, dx] is the image shifted by (dy - 1, dx - 1)
    windows = padded.unfold(-2, height, 1).unfold(-2, width, 1)
    dy, dx = torch.randint(0, 3, (2, n), generator=generator)
    return windows[torch.arange(n), :, dy, dx]


def shift_one(image, generator):
    return shift(image[None], generator)[0]


class KeepRows(BaseEstimator):
    """Keeps the rows' shape and learns nothing: the rows alone are timed."""

    def fit(self, X, y=None):
        self.shape_ = X.shape
        return self


def by_hand(images, n_views, batch_size, seed):
    """The hand-written way: batches augmented into a list, then one concatenate."""
    generator = torch.Generator().manual_seed(seed)
    source = torch.from_numpy(images)
    views = [images.reshape(len(images), -1)]
    for _ in range(n_views):
        for start in range(0, len(images), batch_size):
            batch = shift(source[start:start + batch_size], generator)
            views.append(batch.reshape(len(batch), -1).numpy())
    return np.concatenate(views)


def best_times(runs, repeats=15):
    """The best of `repeats` timings of each run, taken in turn, so that a busy
    moment of the machine weighs on all of them alike."""
    times = {name: [] for name in runs}
    for run in runs.values():
        run()  # warm-up
    for _ in range(repeats):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    return {name: min(seconds) for name, seconds in times.items()}


digits = load_digits()
images = digits.images[:, None].astype(np.float32)  # (1797, 1, 8, 8)

# 1. Time: 8,980 images (digits, five times over) x 4 views, on one torch
# thread (as `tensorbridge bench` times it): tiny per-batch kernels gain
# nothing from more, and on a busy machine more threads make both ways' times
# wander from run to run.
torch.set_num_threads(1)
many = np.resize(images, (8980, 1, 8, 8))
batched = AugmentedEstimator(KeepRows(), augment=shift, n_views=4, batch_size=512,
                             random_state=0)
per_image = AugmentedEstimator(KeepRows(), augment=shift_one, n_views=4, random_state=0)
best = best_times({"by hand": lambda: by_hand(many, 4, 512, seed=0),
                   "batched": lambda: batched.fit(many)})
hand_s, batched_s = best["by hand"], best["batched"]
start = time.perf_counter()
per_image.fit(many)
per_image_s = time.perf_counter() - start
assert batched.estimator_.shape_ == by_hand(many, 4, 512, seed=0).shape == (44900, 64)
print("rows for 8,980 images x 4 views (best of 15):")
print(f"  by hand, batches + list + np.concatenate: {hand_s * 1e3:7.1f} ms")
print(f"  AugmentedEstimator(batch_size=512):       {batched_s * 1e3:7.1f} ms "
      f"({batched_s / hand_s:.2f}x the hand-written loop)")
print(f"  AugmentedEstimator, one call per image:   {per_image_s * 1e3:7.1f} ms "
      f"({per_image_s / batched_s:.0f}x batched)")

# 2. Accuracy: a forest trained on 300 digits, tested on the other 1,497.
X_train, X_test, y_train, y_test = train_test_split(images, digits.target, train_size=300,
                                                    stratify=digits.target, random_state=0)
plain = RandomForestClassifier(random_state=0).fit(X_train.reshape(300, -1), y_train)
print(f"accuracy on {len(X_test):,} held-out digits, a RandomForest trained on 300:")
print(f"  without augmentation (flattened by hand): "
      f"{plain.score(X_test.reshape(len(X_test), -1), y_test):.3f}")
model = AugmentedEstimator(RandomForestClassifier(random_state=0), augment=shift, n_views=2,
                           batch_size=256, random_state=0)
model.fit(X_train, y_train)  # 4-D images in; the forest gets rows of 64 pixels
print("  with 2 shifted views of each image (AugmentedEstimator on the 4-D images):")
print(f"trained on {model.n_samples_seen_} images, accuracy: {model.score(X_test, y_test):.3f}")
