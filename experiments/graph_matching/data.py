r"""Willow-ObjectClass keypoint matching: frozen SIFT node features, Delaunay graphs, the
field's train/test protocol and the pairs each method is trained and tested on.

Data: ``../shared/data/willow`` relative to the repository (override with ``$POLYPROJ_WILLOW``),
304 cropped 256×256 images in 5 classes with 10 corresponding keypoints each (its README gives
the provenance: Cho, Alahari & Ponce, ICCV 2013, as distributed with pygmtools).

Protocol (ThinkMatch / pygmtools): per class the first 20 images sorted by name are training
images and the rest test images; a problem is an ordered pair of distinct images of one class,
the second graph's nodes shuffled by a random permutation (the ground truth), and the metric is
matching accuracy (= F1 with 10 inliers on both sides).  The last :data:`N_VALID` training
images of each class form the validation split used for tuning only.

Features (no pretrained backbone can be downloaded here): OpenCV SIFT descriptors of upright
keypoints at :data:`SIFT_SIZES` pixels, RootSIFT-normalised, concatenated with the keypoint's
coordinates in the crop (scaled to [0, 1]).  Computed once and cached in an ``.npz`` keyed by
the data file's hash.  Outliers (partial matching): :data:`MAX_OUTLIERS` extra points per
image, uniform in the bounding box of its 10 keypoints (a fixed generator per image), with SIFT
features computed the same way; a problem with ``R`` outliers uses the first ``R``.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

CLASSES = ("Car", "Duck", "Face", "Motorbike", "Winebottle")
N_TRAIN_IMAGES = 20
N_VALID = 5
N_INLIERS = 10
MAX_OUTLIERS = 8
SIFT_SIZES = (16.0, 32.0, 64.0)
IMAGE_SIZE = 256


def data_root() -> Path:
    env = os.environ.get("POLYPROJ_WILLOW")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[3] / "shared" / "data" / "willow"


def _descriptors(gray: np.ndarray, points: np.ndarray) -> np.ndarray:
    """RootSIFT descriptors (k, 128·len(SIFT_SIZES)) of upright keypoints at ``points`` (k, 2)."""
    import cv2

    sift = cv2.SIFT_create()
    out = []
    for size in SIFT_SIZES:
        kps = [cv2.KeyPoint(float(x), float(y), size, 0.0) for x, y in points]
        kps_out, desc = sift.compute(gray, kps)
        if desc is None or len(kps_out) != len(kps):
            raise RuntimeError(f"SIFT dropped keypoints at size {size}")
        desc = desc.astype(np.float64)
        desc /= desc.sum(1, keepdims=True) + 1e-12  # RootSIFT (Arandjelović & Zisserman, 2012)
        out.append(np.sqrt(desc))
    return np.concatenate(out, 1)


def outlier_points(kpts: np.ndarray, index: int) -> np.ndarray:
    """:data:`MAX_OUTLIERS` points uniform in the bounding box of ``kpts`` (fixed per image)."""
    rng = np.random.default_rng(10_000 + index)
    lo, hi = kpts.min(0), kpts.max(0)
    return lo + rng.random((MAX_OUTLIERS, 2)) * (hi - lo)


@dataclass
class Willow:
    names: np.ndarray  # (304,)
    cls: np.ndarray  # (304,) class index
    points: np.ndarray  # (304, 10 + MAX_OUTLIERS, 2) pixel coordinates, inliers first
    features: np.ndarray  # (304, 10 + MAX_OUTLIERS, F)
    root: Path
    n_train: int = N_TRAIN_IMAGES
    n_valid: int = N_VALID

    def split(self, part: str) -> dict[int, np.ndarray]:
        """Image indices per class for ``part`` ∈ {"train", "valid", "trainval", "test"}."""
        out = {}
        for c in range(len(CLASSES)):
            idx = np.flatnonzero(self.cls == c)
            idx = idx[np.argsort(self.names[idx])]
            if len(idx) < self.n_train + 2:
                raise ValueError(f"class {CLASSES[c]} has {len(idx)} images; the split needs {self.n_train} training "
                                 f"images and at least 2 test images")
            train = idx[: self.n_train]
            out[c] = {"train": train[: -self.n_valid], "valid": train[-self.n_valid:], "trainval": train,
                      "test": idx[self.n_train:]}[part]
        return out


def load(root: str | Path | None = None, cache_dir: str | Path | None = None, n_train: int = N_TRAIN_IMAGES,
         n_valid: int = N_VALID) -> Willow:
    """The dataset at ``root`` (default :func:`data_root`), SIFT features cached in ``cache_dir``."""
    if not 2 <= n_valid + 1 <= n_train:
        raise ValueError(f"need 1 <= n_valid < n_train (two training images at least), got {n_valid}, {n_train}")
    root = Path(root) if root is not None else data_root()
    npz = root / "keypoints.npz"
    if not npz.exists():
        raise FileNotFoundError(f"Willow keypoints not found at {npz} (set POLYPROJ_WILLOW to the folder)")
    digest = hashlib.sha256(npz.read_bytes()).hexdigest()[:16]
    cache_dir = Path(cache_dir or Path(__file__).resolve().parents[2] / "runs" / "cache")
    cache = cache_dir / f"willow_sift_{digest}_{'-'.join(str(int(s)) for s in SIFT_SIZES)}.npz"
    raw = np.load(npz)
    names, cls_names, kpts = raw["name"], raw["cls"], raw["kpts"]
    cls = np.array([CLASSES.index(c) for c in cls_names])
    points = np.stack([np.concatenate([k, outlier_points(k, i)]) for i, k in enumerate(kpts)])
    if cache.exists():
        features = np.load(cache)["features"]
    else:
        import cv2

        feats = []
        for name, pts in zip(names, points):
            gray = cv2.imread(str(root / "images" / f"{name}.jpg"), cv2.IMREAD_GRAYSCALE)
            if gray is None:
                raise FileNotFoundError(root / "images" / f"{name}.jpg")
            feats.append(_descriptors(gray, pts))
        features = np.stack(feats)
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(".tmp.npz")
        np.savez(tmp, features=features)
        tmp.replace(cache)
    geometry = points / IMAGE_SIZE
    return Willow(names, cls, points, np.concatenate([features, geometry], 2), root, n_train, n_valid)


def delaunay_adjacency(points: np.ndarray) -> np.ndarray:
    """{0, 1} adjacency (k, k) of the Delaunay triangulation of ``points`` (k, 2)."""
    from scipy.spatial import Delaunay

    k = len(points)
    A = np.zeros((k, k))
    for simplex in Delaunay(points).simplices:
        for i in simplex:
            for j in simplex:
                if i != j:
                    A[i, j] = 1.0
    return A


@dataclass
class Batch:
    feat1: torch.Tensor  # (B, k, F)
    feat2: torch.Tensor
    A1: torch.Tensor  # (B, k, k)
    A2: torch.Tensor
    gt: torch.Tensor  # (B, k, k) partial permutation: gt[b, i, j] = 1 iff node i of 1 ↔ node j of 2
    pairs: np.ndarray  # (B, 2) image indices
    perm: np.ndarray  # (B, 2, k) node orders: perm[b, g, a] = keypoint shown as node a of graph g


class PairSampler:
    """Ordered pairs of distinct images of one class, graph 2 shuffled; ``outliers`` extra points
    per image.  Adjacencies are computed once per image and outlier count."""

    def __init__(self, ds: Willow, images: dict[int, np.ndarray], outliers: int = 0):
        if not 0 <= outliers <= MAX_OUTLIERS:
            raise ValueError(f"outliers must be in [0, {MAX_OUTLIERS}], got {outliers}")
        self.ds, self.images, self.k = ds, images, N_INLIERS + outliers
        self._adj = {}

    def adjacency(self, i: int) -> np.ndarray:
        if i not in self._adj:
            self._adj[i] = delaunay_adjacency(self.ds.points[i, : self.k])
        return self._adj[i]

    def random_pairs(self, rng: np.random.Generator, count: int, classes=None) -> np.ndarray:
        classes = list(self.images) if classes is None else list(classes)
        out = []
        for _ in range(count):
            c = classes[rng.integers(len(classes))]
            i, j = rng.choice(self.images[c], 2, replace=False)
            out.append((i, j))
        return np.array(out)

    def batch(self, pairs: np.ndarray, rng: np.random.Generator) -> Batch:
        """Both graphs' nodes shuffled (``perm1``, ``perm2``): node ``a`` of graph 1 is keypoint
        ``perm1[a]``; ``gt[a, b] = 1`` iff ``perm1[a] == perm2[b]`` is an inlier."""
        k = self.k
        f1, f2, A1, A2, gt, perms = [], [], [], [], [], []
        for i, j in pairs:
            p1, p2 = rng.permutation(k), rng.permutation(k)
            f1.append(self.ds.features[i, p1])
            f2.append(self.ds.features[j, p2])
            A1.append(self.adjacency(i)[np.ix_(p1, p1)])
            A2.append(self.adjacency(j)[np.ix_(p2, p2)])
            gt.append(((p1[:, None] == p2[None, :]) & (p1[:, None] < N_INLIERS)).astype(np.float64))
            perms.append(np.stack([p1, p2]))
        t = lambda x: torch.tensor(np.stack(x), dtype=torch.float32)  # noqa: E731
        return Batch(t(f1), t(f2), t(A1), t(A2), t(gt), np.asarray(pairs), np.stack(perms))


def fixed_pairs(images: dict[int, np.ndarray], per_class: int, seed: int) -> dict[int, np.ndarray]:
    """Up to ``per_class`` ordered pairs per class, the same for every method (all pairs when
    fewer exist)."""
    rng = np.random.default_rng(seed)
    out = {}
    for c, idx in images.items():
        allp = np.array([(i, j) for i in idx for j in idx if i != j])
        take = rng.permutation(len(allp))[:per_class]
        out[c] = allp[np.sort(take)]
    return out
