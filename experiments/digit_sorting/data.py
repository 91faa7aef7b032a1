r"""Sequences of handwritten 3-digit numbers from ``sklearn.datasets.load_digits`` (1797 8×8
images shipped with scikit-learn; no download).

Split at the image level, fixed: the images are shuffled once (seed 0) and the first 70 % are
training images (of which the last :data:`VALID_SHARE` are validation images, used for tuning
only) and the rest test images, so no test number shares an image with a training number.  A
number is three images side by side (an 8×24 image) and its value is ``100 d₁ + 10 d₂ + d₃``;
a sequence holds ``n`` numbers of distinct values, and its target is the permutation matrix
``P[i, j] = 1`` iff number ``j`` has rank ``i`` in decreasing order (NeuralSort's convention:
rows are positions, columns are items).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

TRAIN_SHARE = 0.7
VALID_SHARE = 0.15  # of the training images


@dataclass
class Digits:
    images: np.ndarray  # (1797, 8, 8) in [0, 1]
    labels: np.ndarray  # (1797,)
    parts: dict  # "train", "valid", "trainval", "test" → image indices


def load() -> Digits:
    from sklearn.datasets import load_digits

    d = load_digits()
    images = (d.images / 16.0).astype(np.float32)
    order = np.random.default_rng(0).permutation(len(images))
    n_trainval = int(TRAIN_SHARE * len(images))
    trainval, test = order[:n_trainval], order[n_trainval:]
    n_valid = int(VALID_SHARE * n_trainval)
    parts = {"train": trainval[:-n_valid], "valid": trainval[-n_valid:], "trainval": trainval, "test": test}
    return Digits(images, d.target.astype(np.int64), parts)


def sequences(ds: Digits, part: str, n: int, count: int, rng: np.random.Generator):
    """``count`` sequences of ``n`` numbers from the images of ``part``: images (count, n, 1, 8, 24),
    values (count, n) and target permutation matrices (count, n, n)."""
    pool = ds.parts[part]
    idx = rng.choice(pool, size=(count, n, 3))
    values = (ds.labels[idx] * np.array([100, 10, 1])).sum(-1)
    # resample sequences with repeated values (ties have no unique sorting)
    for s in range(count):
        while len(set(values[s])) < n:
            idx[s] = rng.choice(pool, size=(n, 3))
            values[s] = (ds.labels[idx[s]] * np.array([100, 10, 1])).sum(-1)
    imgs = np.concatenate([ds.images[idx[..., t]] for t in range(3)], axis=-1)  # (count, n, 8, 24)
    rank = np.argsort(np.argsort(-values, axis=1), axis=1)  # rank of each item, 0 = largest
    P = np.zeros((count, n, n), dtype=np.float32)
    np.put_along_axis(P, rank[:, None, :], 1.0, axis=1)  # P[s, rank[j], j] = 1
    return torch.from_numpy(imgs[:, :, None]), torch.from_numpy(values), torch.from_numpy(P)
