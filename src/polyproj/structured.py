r"""Structured sets with exact threshold-type projections and closed-form HS-Jacobians.

Each set is a :class:`polyproj.ConvexSet`, so :func:`polyproj.project`,
:func:`polyproj.hs_jacobian` and :class:`polyproj.Projection` take it as they take a
:class:`polyproj.Polyhedron`; ``as_polyhedron(n)`` writes it as one, which is how the tests
check every closed form against the generic element ``P₀ = I − Mᵀ(MMᵀ)⁺M``.  The rows of
``info.active`` follow the inequality rows of ``as_polyhedron``.
"""

from __future__ import annotations

import torch

from . import _jacobian
from ._errors import InfeasibleError
from ._validation import as_tensor, check_finite
from .functional import simple_sets
from .sets import ConvexSet, Polyhedron, SetSolution

__all__ = ["Box", "HalfSpace", "Simplex", "CappedSimplex", "Transportation", "Birkhoff"]


def _bounds(lower, upper, what):
    """Validate a pair of bound vectors; ±inf allowed (a missing side), NaN not."""
    device = next((t.device for t in (lower, upper) if isinstance(t, torch.Tensor)), torch.device("cpu"))
    lo = _as_bound(lower, "lower", device)
    up = _as_bound(upper, "upper", device)
    if lo.shape != up.shape:
        raise ValueError(f"lower and upper must have the same shape, got {tuple(lo.shape)} and {tuple(up.shape)}")
    if bool((lo == float("inf")).any()) or bool((up == -float("inf")).any()):
        raise ValueError("lower may not contain +inf and upper may not contain -inf")
    bad = (lo > up).nonzero().flatten()
    if bad.numel():
        i = int(bad[0])
        raise InfeasibleError(f"the {what} is empty: lower[{i}] = {float(lo[i])} > upper[{i}] = {float(up[i])}")
    return lo, up


def _as_bound(value, name, device):
    t = value.detach().to(torch.float64).to(device) if isinstance(value, torch.Tensor) else None
    if t is None:
        import numpy as np

        arr = np.asarray(value, dtype=np.float64)
        t = torch.as_tensor(arr, device=device)
    if t.ndim != 1 or t.shape[0] < 1:
        raise ValueError(f"{name} must be a 1-D array of length n >= 1, got shape {tuple(t.shape)}")
    if bool(torch.isnan(t).any()):
        raise ValueError(f"{name} must not contain NaN")
    return t


def _scalar(value, name):
    try:
        v = float(value.item() if isinstance(value, torch.Tensor) else value)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise ValueError(f"{name} must be a real scalar, got {value!r}") from exc
    if v != v or v in (float("inf"), float("-inf")):
        raise ValueError(f"{name} must be finite, got {v}")
    return v


class _VectorSet(ConvexSet):
    """Shared plumbing of the vector-valued structured sets (data on one device).  Their
    projections are exact in any floating-point precision, so they run in the input's dtype
    (``native_dtype``) instead of float64."""

    _device = torch.device("cpu")
    native_dtype = True

    @property
    def device(self) -> torch.device:
        return self._device

    @staticmethod
    def _closed_form(y, active, kkt, tol, backward_mask):
        """A :class:`SetSolution` of a closed-form projection (no iterations)."""
        return SetSolution(y, active, kkt, torch.zeros_like(kkt, dtype=torch.long), kkt <= tol, (backward_mask,))

    @staticmethod
    def _free(active):
        """Coordinates at neither bound, from the 2n rows ``y ≤ u`` then ``−y ≤ −l``."""
        n = active.shape[-1] // 2
        return ~(active[:, :n] | active[:, n:])

    def _box_violation(self, y):
        return torch.maximum((y - self.upper).clamp_min(0), (self.lower - y).clamp_min(0)).amax(-1)

    def _moved(self, device, **tensors):
        new = object.__new__(type(self))
        new.__dict__.update(self.__dict__)
        for k, v in tensors.items():
            setattr(new, k, v.to(device))
        new._device = torch.device(device)
        return new


class Box(_VectorSet):
    r"""The box :math:`\{y : l \le y \le u\}` (bounds may be ±inf).

    Projection: ``y = clip(x, l, u)``, exact, O(n).
    Backward: ``J g = f ⊙ g`` with ``f`` the coordinates strictly inside their bounds
    (a coordinate at a bound, up to the activity tolerance, is active and gets 0).
    ``info.active`` has 2n rows: ``y ≤ u`` then ``−y ≤ −l``.

    >>> import torch, polyproj as pp
    >>> pp.project(torch.tensor([-1.0, 0.5, 3.0]), pp.Box(torch.zeros(3), torch.ones(3)))
    tensor([0.0000, 0.5000, 1.0000])
    """

    def __init__(self, lower, upper):
        self.lower, self.upper = _bounds(lower, upper, "box")
        self._device = self.lower.device
        self.event_shape = (self.lower.shape[0],)

    def to(self, device):
        return self._moved(device, lower=self.lower, upper=self.upper)

    def _solve(self, x, *, tol, max_iter):
        y, active, kkt = simple_sets.project_box(x, self.lower.to(x.dtype), self.upper.to(x.dtype))
        return self._closed_form(y, active, kkt, tol, self._free(active))

    def _vjp(self, state, g):
        return _jacobian.box_product(state[0], g)

    def _jacobian(self, state):
        return _jacobian.box_jacobian(state[0])

    def _violation(self, y):
        return self._box_violation(y)

    def as_polyhedron(self) -> Polyhedron:
        n = self.event_shape[0]
        eye = torch.eye(n, dtype=torch.float64, device=self.device)
        A, a = torch.cat([eye, -eye]), torch.cat([self.upper, -self.lower])
        keep = torch.isfinite(a)
        return Polyhedron(A=A[keep], a=a[keep])

    def __repr__(self):
        return f"Box(n={self.event_shape[0]})"


class HalfSpace(_VectorSet):
    r"""The half-space :math:`\{y : c^\top y \le \beta\}`, ``c ≠ 0``.

    Projection: ``y = x − max(0, cᵀx − β) c/‖c‖²``, exact.
    Backward: ``J = I − ccᵀ/‖c‖²`` when ``cᵀx ≥ β`` (boundary included: P₀ uses the full
    active set), else ``J = I``.

    >>> import torch, polyproj as pp
    >>> pp.project(torch.tensor([2.0, 2.0]), pp.HalfSpace(torch.tensor([1.0, 1.0]), 2.0))
    tensor([1., 1.])
    """

    def __init__(self, c, beta):
        device = c.device if isinstance(c, torch.Tensor) else torch.device("cpu")
        self.c = as_tensor(c, "c", device=device, ndim=1)
        self.beta = _scalar(beta, "beta")
        if self.c.shape[0] < 1:
            raise ValueError("c must have length n >= 1")
        if not bool((self.c != 0).any()):
            raise ValueError("c must be nonzero (a zero normal does not define a half-space)")
        self._device = self.c.device
        self.event_shape = (self.c.shape[0],)

    def to(self, device):
        return self._moved(device, c=self.c)

    def _solve(self, x, *, tol, max_iter):
        y, active, kkt = simple_sets.project_halfspace(x, self.c.to(x.dtype), self.beta)
        return self._closed_form(y, active, kkt, tol, active)

    def _vjp(self, state, g):
        return _jacobian.halfspace_product(self.c.to(g.dtype), state[0], g)

    def _jacobian(self, state):
        return _jacobian.halfspace_jacobian(self.c, state[0]).to(torch.float64)

    def _violation(self, y):
        return (y @ self.c - self.beta).clamp_min(0) / self.c.norm()

    def as_polyhedron(self) -> Polyhedron:
        return Polyhedron(A=self.c[None], a=torch.tensor([self.beta], dtype=torch.float64, device=self.device))

    def __repr__(self):
        return f"HalfSpace(n={self.event_shape[0]}, beta={self.beta})"


class Simplex(_VectorSet):
    r"""The simplex :math:`\{y \in ℝ^n : y \ge 0,\ 1^\top y = r\}`, any ``n`` (taken from x).

    Projection: ``y = max(x − τ, 0)`` with Condat's sort-based threshold (Math. Program. 2016),
    exact up to rounding, O(n log n) per point, batched.
    Backward: ``J g = s ⊙ (g − (sᵀg)/|S|)``, ``s`` = support ``{y_i > 0}`` (up to the
    activity tolerance).
    ``info.active`` has n rows ``−y ≤ 0`` (``y_i = 0``).

    >>> import torch, polyproj as pp
    >>> pp.project(torch.tensor([0.8, 0.1]), pp.Simplex())
    tensor([0.8500, 0.1500])
    """

    def __init__(self, total=1.0):
        self.total = _scalar(total, "total")
        if self.total < 0:
            raise InfeasibleError(f"the simplex with total = {self.total} < 0 is empty")
        self.event_shape = (-1,)

    def to(self, device):
        return self._moved(device)

    def _solve(self, x, *, tol, max_iter):
        y, active, kkt = simple_sets.project_simplex(x, self.total)
        return self._closed_form(y, active, kkt, tol, ~active)

    def _vjp(self, state, g):
        return _jacobian.face_product(state[0], g)

    def _jacobian(self, state):
        return _jacobian.face_jacobian(state[0])

    def _violation(self, y):
        return torch.maximum((-y).clamp_min(0).amax(-1), (y.sum(-1) - self.total).abs() / y.shape[-1] ** 0.5)

    def as_polyhedron(self, n: int) -> Polyhedron:
        eye = torch.eye(n, dtype=torch.float64, device=self.device)
        return Polyhedron(A=-eye, a=torch.zeros(n, dtype=torch.float64, device=self.device),
                          B=torch.ones(1, n, dtype=torch.float64, device=self.device),
                          b=torch.tensor([self.total], dtype=torch.float64, device=self.device))

    def __repr__(self):
        return f"Simplex(total={self.total})"


class CappedSimplex(_VectorSet):
    r"""The capped simplex :math:`\{y : l \le y \le u,\ 1^\top y = r\}`.

    Projection: ``y = clip(x − τ, l, u)``; τ from the sorted 2n breakpoints of the piecewise
    linear ``φ(τ) = Σ clip(x_i − τ, l_i, u_i)``, then recomputed exactly on the identified free
    set; O(n log n) per point, batched.
    Backward: ``J g = f ⊙ (g − (fᵀg)/|F|)``, ``f`` = free coordinates ``l_i < y_i < u_i``;
    ``J = 0`` when none is free.
    ``info.active`` has 2n rows: ``y ≤ u`` then ``−y ≤ −l``.

    >>> import torch, polyproj as pp
    >>> S = pp.CappedSimplex(torch.zeros(3), torch.full((3,), 0.4), 1.0)
    >>> pp.project(torch.tensor([1.0, 0.0, 0.0]), S)
    tensor([0.4000, 0.3000, 0.3000])
    """

    def __init__(self, lower, upper, total=1.0):
        self.lower, self.upper = _bounds(lower, upper, "capped simplex")
        check_finite(self.lower, "lower")
        check_finite(self.upper, "upper")
        self.total = _scalar(total, "total")
        lo, hi = float(self.lower.sum()), float(self.upper.sum())
        if not (lo <= self.total <= hi):
            raise InfeasibleError(
                f"the capped simplex is empty: total = {self.total} is outside [sum(lower), sum(upper)] = [{lo}, {hi}]")
        self._device = self.lower.device
        self.event_shape = (self.lower.shape[0],)

    def to(self, device):
        return self._moved(device, lower=self.lower, upper=self.upper)

    def _solve(self, x, *, tol, max_iter):
        y, active, kkt = simple_sets.project_capped_simplex(x, self.lower.to(x.dtype), self.upper.to(x.dtype), self.total)
        return self._closed_form(y, active, kkt, tol, self._free(active))

    def _vjp(self, state, g):
        return _jacobian.face_product(state[0], g)

    def _jacobian(self, state):
        return _jacobian.face_jacobian(state[0])

    def _violation(self, y):
        return torch.maximum(self._box_violation(y), (y.sum(-1) - self.total).abs() / y.shape[-1] ** 0.5)

    def as_polyhedron(self) -> Polyhedron:
        n = self.event_shape[0]
        eye = torch.eye(n, dtype=torch.float64, device=self.device)
        return Polyhedron(A=torch.cat([eye, -eye]), a=torch.cat([self.upper, -self.lower]),
                          B=torch.ones(1, n, dtype=torch.float64, device=self.device),
                          b=torch.tensor([self.total], dtype=torch.float64, device=self.device))

    def __repr__(self):
        return f"CappedSimplex(n={self.event_shape[0]}, total={self.total})"


class Transportation(ConvexSet):
    r"""The transportation polytope :math:`\{X \in ℝ^{m×n} : X \ge 0,\ X\mathbf 1 = r,\ X^\top\mathbf 1 = c\}`
    (``r ≥ 0``, ``c ≥ 0``, ``Σr = Σc``); input ``x`` of shape ``(..., m, n)``.

    Projection: semismooth Newton on the dual (Li, Sun & Toh 2020) with a batched Cholesky of
    the regularised signless Laplacian of the support graph per step; nonnegativity exact, the
    marginals to ``tol`` relative (typically 5–10 steps).
    Backward: ``J(G) = Θ ⊙ (G − α1ᵀ − 1βᵀ)`` with the minimum-norm solution of
    ``L[α; β] = [(Θ⊙G)1; (Θ⊙G)ᵀ1]`` (``L`` singular on each connected component of the support).
    ``info.active`` has shape ``(..., m, n)``: the entries at zero.

    >>> import torch, polyproj as pp
    >>> T = pp.Transportation(torch.tensor([1.0, 2.0]), torch.tensor([1.5, 1.5]))
    >>> pp.project(torch.zeros(2, 2, dtype=torch.float64), T)
    tensor([[0.5000, 0.5000],
            [1.0000, 1.0000]], dtype=torch.float64)
    """

    def __init__(self, row_sums, col_sums):
        device = next((t.device for t in (row_sums, col_sums) if isinstance(t, torch.Tensor)), torch.device("cpu"))
        self.row_sums = as_tensor(row_sums, "row_sums", device=device, ndim=1)
        self.col_sums = as_tensor(col_sums, "col_sums", device=device, ndim=1)
        for name, v in (("row_sums", self.row_sums), ("col_sums", self.col_sums)):
            if v.shape[0] < 1:
                raise ValueError(f"{name} must have length >= 1")
            if bool((v < 0).any()):
                i = int((v < 0).nonzero()[0])
                raise InfeasibleError(f"the transportation polytope is empty: {name}[{i}] = {float(v[i])} < 0")
        sr, sc = float(self.row_sums.sum()), float(self.col_sums.sum())
        if abs(sr - sc) > 1e-12 * max(1.0, abs(sr), abs(sc)):
            raise InfeasibleError(f"the transportation polytope is empty: sum(row_sums) = {sr} != sum(col_sums) = {sc}")
        self._device = self.row_sums.device
        self.event_shape = (self.row_sums.shape[0], self.col_sums.shape[0])

    @property
    def device(self):
        return self._device

    def to(self, device):
        new = object.__new__(type(self))
        new.__dict__.update(self.__dict__)
        new.row_sums, new.col_sums = self.row_sums.to(device), self.col_sums.to(device)
        new._device = torch.device(device)
        return new

    def _marginals(self, x):
        return self.row_sums, self.col_sums

    def _solve(self, x, *, tol, max_iter):
        from .functional.transport import project_transport, transport_active

        r, c = self._marginals(x)
        X, _, _, kkt, iters = project_transport(x, r, c, tol=min(tol, 1e-12), max_iter=max_iter)
        active = transport_active(X, x)
        return SetSolution(X, active, kkt, iters, kkt <= tol, (~active,))

    def _vjp(self, state, g):
        return _jacobian.transport_product(state[0], g)[0]

    def _jacobian(self, state):
        return _jacobian.transport_jacobian(state[0])

    def _violation(self, y):
        r, c = self._marginals(y)
        marg = torch.maximum((y.sum(-1) - r).abs().amax(-1), (y.sum(-2) - c).abs().amax(-1))
        return torch.maximum(marg, (-y).clamp_min(0).flatten(1).amax(-1))

    def as_polyhedron(self, m: int | None = None, n: int | None = None) -> Polyhedron:
        """The same set on ``vec(X)`` (row-major)."""
        m = self.event_shape[0] if m is None else m
        n = self.event_shape[1] if n is None else n
        r, c = self._marginals(torch.zeros(1, m, n, dtype=torch.float64, device=self.device))
        eye = torch.eye(m * n, dtype=torch.float64, device=self.device)
        rows = torch.kron(torch.eye(m, dtype=torch.float64), torch.ones(1, n, dtype=torch.float64)).to(self.device)
        cols = torch.kron(torch.ones(1, m, dtype=torch.float64), torch.eye(n, dtype=torch.float64)).to(self.device)
        return Polyhedron(A=-eye, a=torch.zeros(m * n, dtype=torch.float64, device=self.device),
                          B=torch.cat([rows, cols]), b=torch.cat([r, c]))

    def __repr__(self):
        return f"Transportation(m={self.event_shape[0]}, n={self.event_shape[1]})"


class Birkhoff(Transportation):
    r"""The Birkhoff polytope of doubly stochastic matrices
    :math:`\{X \in ℝ^{n×n} : X \ge 0,\ X\mathbf 1 = \mathbf 1,\ X^\top\mathbf 1 = \mathbf 1\}`, any
    ``n`` (taken from ``x`` of shape ``(..., n, n)``).  The Euclidean projection — not an
    entropic (Sinkhorn) approximation.  Algorithm and backward: :class:`Transportation`.

    >>> import torch, polyproj as pp
    >>> X = pp.project(torch.tensor([[2.0, 0.0], [0.0, 1.0]], dtype=torch.float64), pp.Birkhoff())
    >>> X
    tensor([[1., 0.],
            [0., 1.]], dtype=torch.float64)
    """

    def __init__(self):
        self._device = torch.device("cpu")
        self.event_shape = (-1, -1)

    def to(self, device):
        new = object.__new__(type(self))
        new.__dict__.update(self.__dict__)
        new._device = torch.device(device)
        return new

    def _validate_event(self, shape):
        if shape[0] != shape[1]:
            raise ValueError(f"x must have shape (..., n, n) for the Birkhoff polytope, got trailing shape {tuple(shape)}")

    def _marginals(self, x):
        m, n = x.shape[-2], x.shape[-1]
        return (torch.ones(m, dtype=torch.float64, device=x.device), torch.ones(n, dtype=torch.float64, device=x.device))

    def as_polyhedron(self, n: int) -> Polyhedron:
        return Transportation.as_polyhedron(self, n, n)

    def __repr__(self):
        return "Birkhoff()"
