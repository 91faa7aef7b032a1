r"""Constraint sets.  Every set implements one small protocol, so :func:`polyproj.project`,
:func:`polyproj.hs_jacobian` and :class:`polyproj.Projection` never care which set they hold:

* ``event_shape`` — the trailing shape of a point (``(n,)`` for vectors);
* ``device`` and ``to(device)`` — sets are immutable; ``to`` returns a moved copy;
* ``_solve(x, tol=, max_iter=)`` — forward on a flat float64 batch ``(N, *event_shape)``,
  returning a :class:`SetSolution` (no autograd inside);
* ``_vjp(state, g)`` — the HS-Jacobian product ``J g`` from the saved state;
* ``_jacobian(state)`` — the explicit ``(N, d, d)`` Jacobian element;
* ``contains(y, tol=)`` — membership test with a relative tolerance.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from . import _jacobian
from ._feasibility import check_nonempty
from ._validation import as_tensor, check_input
from .functional.polyhedron import PolyhedronData, solve_polyhedron

__all__ = ["ConvexSet", "Polyhedron", "SetSolution"]


@dataclass
class SetSolution:
    """What a set's forward solver returns (flat batch, float64)."""

    y: torch.Tensor  # (N, *event_shape)
    active: torch.Tensor  # (N, m) bool: active inequality constraints
    kkt: torch.Tensor  # (N,) relative KKT residual
    iterations: torch.Tensor  # (N,) long
    converged: torch.Tensor  # (N,) bool
    state: tuple  # tensors saved for the backward (no n×n per sample)


class ConvexSet:
    """Base class of the constraint sets (see the module docstring for the protocol)."""

    event_shape: tuple[int, ...]

    @property
    def device(self) -> torch.device:  # pragma: no cover - abstract
        raise NotImplementedError

    def to(self, device) -> "ConvexSet":  # pragma: no cover - abstract
        raise NotImplementedError

    def _solve(self, x: torch.Tensor, *, tol: float, max_iter: int) -> SetSolution:  # pragma: no cover
        raise NotImplementedError

    def _vjp(self, state: tuple, g: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def _jacobian(self, state: tuple) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def _violation(self, y: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        """Largest absolute constraint violation per point of a flat float64 batch."""
        raise NotImplementedError

    def contains(self, y: torch.Tensor, *, tol: float = 1e-9) -> torch.Tensor:
        """Whether each point of ``y`` (..., *event_shape) lies in the set, up to a violation of
        ``tol · max(1, ‖y‖∞)`` on the normalised constraints.  Returns a bool tensor (...)."""
        y = check_input(y, "y", self.event_shape, self.device)
        k = len(self.event_shape)
        if hasattr(self, "_validate_event"):
            self._validate_event(y.shape[y.ndim - k:])
        batch = y.shape[: y.ndim - k]
        flat = y.detach().reshape(-1, *y.shape[y.ndim - k:]).to(torch.float64)
        scale = flat.flatten(1).abs().amax(-1).clamp_min(1.0) if flat.numel() else flat.new_ones(flat.shape[0])
        return (self._violation(flat) <= tol * scale).reshape(batch)


class Polyhedron(ConvexSet):
    r"""The polyhedron :math:`P = \{y \in ℝ^n : A y \le a,\ B y = b\}`.

    Parameters
    ----------
    A, a : (m, n) and (m,) arrays, optional
        Inequality constraints ``A y ≤ a``.  Give both or neither.
    B, b : (p, n) and (p,) arrays, optional
        Equality constraints ``B y = b``.  Give both or neither.
    check_feasibility : bool
        Check at construction that ``P`` is nonempty (a certified projection of the origin,
        or else an LP solved by HiGHS) and raise :class:`InfeasibleError`, with a Farkas
        certificate naming the conflicting rows, when it is empty.  Default True.

    Data may be torch tensors, numpy arrays, scipy.sparse matrices or nested sequences; the
    set keeps float64 copies on the device of the tensors given (CPU otherwise).  Rows are
    normalised internally (the set is unchanged).  Redundant, duplicated and linearly
    dependent rows, rank-deficient ``B`` and vertices with more than ``n`` active rows are
    all supported.

    Projection (:func:`polyproj.project`): proximal augmented Lagrangian with semismooth
    Newton, then active-set polishing; KKT residual ≤ ``tol`` relative (1e-9 in float64).
    Backward: ``J g = g − Mᵀ(MMᵀ)⁺Mg``, ``M = [A_I; B]`` on the active rows ``I``.

    Example
    -------
    >>> import torch, polyproj as pp
    >>> P = pp.Polyhedron(A=[[1.0, 1.0]], a=[1.0], B=[[1.0, -1.0]], b=[0.0])
    >>> pp.project(torch.tensor([2.0, 2.0], dtype=torch.float64), P)
    tensor([0.5000, 0.5000], dtype=torch.float64)
    """

    def __init__(self, A=None, a=None, B=None, b=None, *, check_feasibility: bool = True):
        if (A is None) != (a is None):
            raise ValueError("A and a must be given together (A y <= a); got only " + ("A" if a is None else "a"))
        if (B is None) != (b is None):
            raise ValueError("B and b must be given together (B y = b); got only " + ("B" if b is None else "b"))
        if A is None and B is None:
            raise ValueError("Polyhedron needs at least one of (A, a) or (B, b)")
        device = next((t.device for t in (A, a, B, b) if isinstance(t, torch.Tensor)), torch.device("cpu"))
        A_t = as_tensor(A, "A", device=device, ndim=2) if A is not None else None
        B_t = as_tensor(B, "B", device=device, ndim=2) if B is not None else None
        n = (A_t if A_t is not None else B_t).shape[1]
        if A_t is not None and B_t is not None and B_t.shape[1] != n:
            raise ValueError(f"A and B must have the same number of columns, got A {tuple(A_t.shape)} and B {tuple(B_t.shape)}")
        if n == 0:
            raise ValueError("the constraint matrices must have at least one column (n >= 1)")
        A_t = A_t if A_t is not None else torch.zeros(0, n, dtype=torch.float64, device=device)
        B_t = B_t if B_t is not None else torch.zeros(0, n, dtype=torch.float64, device=device)
        a_t = as_tensor(a, "a", device=device, ndim=1) if a is not None else A_t.new_zeros(0)
        b_t = as_tensor(b, "b", device=device, ndim=1) if b is not None else B_t.new_zeros(0)
        if a_t.shape[0] != A_t.shape[0]:
            raise ValueError(f"a must have shape ({A_t.shape[0]},) to match A {tuple(A_t.shape)}, got {tuple(a_t.shape)}")
        if b_t.shape[0] != B_t.shape[0]:
            raise ValueError(f"b must have shape ({B_t.shape[0]},) to match B {tuple(B_t.shape)}, got {tuple(b_t.shape)}")
        self.A, self.a, self.B, self.b = A_t, a_t, B_t, b_t
        self.event_shape = (n,)
        self._data, row_scale = self._normalise(A_t, a_t, B_t, b_t)
        if check_feasibility:
            # A feasible point found by projecting the origin proves P nonempty, cheaply; only
            # when none is found does the LP (HiGHS) decide, with a Farkas certificate if empty.
            D = self._data
            probe = solve_polyhedron(D, A_t.new_zeros(1, n), tol=1e-9, max_iter=40)
            feasible = bool(self._violation(probe.y) <= 1e-9 * max(1.0, float(D.c.abs().max()) if D.K else 1.0))
            if not feasible:
                C, c = D.C.cpu().numpy(), D.c.cpu().numpy()
                check_nonempty(C[: D.m], c[: D.m], C[D.m:], c[D.m:], row_scale=row_scale.cpu().numpy())

    @staticmethod
    def _normalise(A, a, B, b) -> tuple[PolyhedronData, torch.Tensor]:
        C = torch.cat([A, B], 0)
        c = torch.cat([a, b], 0)
        norms = C.norm(dim=1)
        scale = torch.where(norms > 0, 1.0 / norms.clamp_min(1e-300), torch.ones_like(norms))
        C = C * scale[:, None]
        c = c * scale
        return PolyhedronData.from_rows(C, c, A.shape[0]), scale

    # -- protocol ---------------------------------------------------------------------
    @property
    def n(self) -> int:
        return self.event_shape[0]

    @property
    def m(self) -> int:
        return self.A.shape[0]

    @property
    def p(self) -> int:
        return self.B.shape[0]

    @property
    def device(self) -> torch.device:
        return self.A.device

    def to(self, device) -> "Polyhedron":
        device = torch.device(device)
        if device == self.device:
            return self
        new = object.__new__(Polyhedron)
        new.A, new.a, new.B, new.b = (t.to(device) for t in (self.A, self.a, self.B, self.b))
        new.event_shape = self.event_shape
        new._data = self._data.to(device)
        return new

    def _solve(self, x, *, tol, max_iter):
        res = solve_polyhedron(self._data, x, tol=tol, max_iter=max_iter)
        return SetSolution(res.y, res.active[:, : self.m], res.kkt, res.iterations, res.converged, (res.active,))

    def _vjp(self, state, g):
        (active,) = state
        gx, _ = _jacobian.masked_nullspace_product(self._data.C, self._data.G, active, g)
        return gx

    def _jacobian(self, state):
        (active,) = state
        return _jacobian.explicit_jacobian(self._data.C, self._data.G, active, self.n)

    def _violation(self, y):
        D = self._data
        z = y @ D.C.T - D.c
        viol = torch.cat([z[:, : D.m].clamp_min(0), z[:, D.m:].abs()], 1)
        return viol.amax(-1) if viol.shape[1] else y.new_zeros(y.shape[0])

    def __repr__(self) -> str:
        return f"Polyhedron(n={self.n}, m={self.m}, p={self.p}, device={self.device})"
