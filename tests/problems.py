"""Random and degenerate polyhedra for the tests.

``known_projection`` builds instances whose projection is known exactly by construction:
choose ``y*``, make a set ``T`` of rows tight at ``y*``, and set ``x = y* + A_Tᵀλ + Bᵀμ`` with
``λ ≥ 0`` (some ``λ_i = 0``: weakly active rows).  KKT then holds at ``y*``, so
``Π_P(x) = y*`` without any solver.
"""

from __future__ import annotations

import numpy as np

FAMILIES = [
    "random",
    "inequality_only",
    "equality_only",
    "duplicated_rows",
    "scaled_rows",
    "sum_rows",
    "weakly_active",
    "more_than_n_active",
    "rank_deficient_B",
]


def random_polyhedron(rng, n, m, p, *, slack=(0.1, 1.0)):
    """Random polyhedron with a known interior point y0."""
    A = rng.standard_normal((m, n))
    B = rng.standard_normal((p, n))
    y0 = rng.standard_normal(n)
    a = A @ y0 + rng.uniform(*slack, m)
    b = B @ y0
    return A, a, B, b, y0


def known_projection(family: str, rng, n: int = 8, batch: int = 6):
    """Return ``(A, a, B, b, X, Y)`` with ``Y[k] = Π_P(X[k])`` exactly (up to rounding)."""
    m, p = 2 * n, max(1, n // 4)
    A = rng.standard_normal((m, n))
    B = rng.standard_normal((p, n))
    if family == "inequality_only":
        B = B[:0]
    if family == "equality_only":
        A = A[:0]
    if family == "rank_deficient_B":
        B = np.vstack([B, B[:1] * 2.0, B[:1] + (B[1:2] if p > 1 else B[:1])])
    y_star = rng.standard_normal(n)
    n_tight = min(A.shape[0], n - B.shape[0] - 1) if family != "more_than_n_active" else A.shape[0]
    if family == "more_than_n_active":
        # all 2n rows pass through y*: a vertex with more than n active rows
        n_tight = A.shape[0]
    tight = np.zeros(A.shape[0], bool)
    tight[:max(0, n_tight)] = True
    if family in ("duplicated_rows", "scaled_rows", "sum_rows") and A.shape[0] >= 3:
        if family == "duplicated_rows":
            A[-1] = A[0]
        elif family == "scaled_rows":
            A[-1] = 3.0 * A[0]
        else:
            A[-1] = A[0] + A[1]
        tight[-1] = True
    a = A @ y_star + np.where(tight, 0.0, rng.uniform(0.2, 1.0, A.shape[0]))
    b = B @ y_star
    X = np.empty((batch, n))
    for k in range(batch):
        lam = np.where(tight, rng.uniform(0.1, 2.0, A.shape[0]), 0.0)
        if family == "weakly_active" or k % 2 == 1:
            lam[tight & (rng.random(A.shape[0]) < 0.5)] = 0.0  # weakly active rows
        mu = rng.standard_normal(B.shape[0])
        X[k] = y_star + A.T @ lam + B.T @ mu
    Y = np.tile(y_star, (batch, 1))
    return A, a, B, b, X, Y


def random_instance(rng, n=10, m=12, p=2, batch=8, spread=3.0):
    """Random polyhedron and points far enough outside that many rows are active."""
    A, a, B, b, y0 = random_polyhedron(rng, n, m, p)
    X = y0 + spread * rng.standard_normal((batch, n))
    return A, a, B, b, X


def fuzz_instance(rng, *, max_n: int = 8, max_m: int = 14, input_ratio: float | None = None, return_point: bool = False):
    """A random polyhedron with degenerate features drawn at random — duplicated, scaled and
    summed rows, rank-deficient ``B``, rows through a common point (weakly/strongly active,
    more than n active), scales 1e-6…1e6 — and points around it (at ``input_ratio`` times the
    set's scale when given, else at 0.1, 1 or 10 times).  Always nonempty."""
    n = int(rng.integers(1, max_n + 1))
    m = int(rng.integers(0, max_m + 1))
    p = int(rng.integers(0, min(3, n) + 1))
    if m + p == 0:
        m = 1
    scale = 10.0 ** int(rng.integers(-6, 7))
    A = rng.standard_normal((m, n))
    B = rng.standard_normal((p, n))
    for _ in range(int(rng.integers(0, 4))):
        if m >= 2:
            i, j, k = rng.integers(0, m, 3)
            kind = rng.integers(0, 3)
            A[k] = A[i] if kind == 0 else (rng.uniform(0.1, 10) * A[i] if kind == 1 else A[i] + A[j])
    if p >= 2 and rng.random() < 0.5:
        B[-1] = 2.0 * B[0]
    y0 = rng.standard_normal(n)
    tight = rng.random(m) < rng.random()
    a = A @ y0 + np.where(tight, 0.0, rng.uniform(0.0, 1.0, m))
    b = B @ y0
    spread = rng.choice([0.1, 1.0, 10.0]) if input_ratio is None else input_ratio
    X = y0 + spread * rng.standard_normal((4, n))
    if return_point:
        return A, a * scale, B, b * scale, X * scale, y0 * scale
    return A, a * scale, B, b * scale, X * scale


def fuzz_bounds(rng, point, scale):
    """Bounds around the feasible ``point``: per coordinate none, lower, upper or both (60 % of
    them tight at the point: weakly active, or a fixed coordinate when both are), ±inf where
    missing."""
    n = point.shape[0]
    kind = rng.integers(0, 4, n)  # 0 none, 1 lower, 2 upper, 3 both
    gap = lambda: np.where(rng.random(n) < 0.6, 0.0, rng.uniform(0.0, 1.0, n)) * scale  # noqa: E731
    lower = np.where((kind == 1) | (kind == 3), point - gap(), -np.inf)
    upper = np.where((kind == 2) | (kind == 3), point + gap(), np.inf)
    return lower, upper
