r"""Variable bounds as structured rows of a polyhedron: never rows of a dense Gram matrix.

Problem
-------
.. math::

    \Pi_P(x) = \arg\min_y\ \tfrac12\|y-x\|^2 \quad\text{s.t.}\quad
    l \le y \le u,\ \ A y \le a,\ \ B y = b .

The batched solver (:mod:`~polyproj.functional.polyhedron`) sees constraint rows ``C = [E; C_g]``:
``E`` holds one row ``±e_j`` per finite bound (``+e_j`` for ``y_j ≤ u_j``, ``−e_j`` for
``−y_j ≤ −l_j``; unit rows, no normalisation), ``C_g = [A; B]`` the general rows, normalised.  Every
solve of the solver and of the backward is a masked system ``(W G W + δI) w = r`` with
``G = C Cᵀ`` (:mod:`~polyproj.functional._masked_linalg`).  For bound rows ``G`` is structured, and
:class:`BoundedGram` eliminates the selected bound rows in closed form (Schur complement):
with ``S`` the selected bound rows, ``c_j`` the number of them on variable ``j`` (0, 1 or 2) and
``E_Sᵀ(E_S E_Sᵀ + δI)⁻¹E_S = Diag(c/(c+δ))`` (push-through identity),

.. math::

    \big(W_g\, C_g\, \mathrm{Diag}\big(\tfrac{δ}{c+δ}\big) C_g^\top W_g + δI\big)\, w_g
      = r_g - W_g C_g \tfrac{E_S^\top r_b}{c+δ},\qquad
    w_b = (E_S E_S^\top + δI)^{-1}\,(r_b - E_S C_g^\top w_g),

so each factorisation is one Cholesky of the general rows' size ``K_g`` per sample, whatever
the number of bounds: the general rows restricted to the free variables (weight ``δ/(c+δ)``, →0
on variables held at a bound) — at ``δ → 0`` the ``M D Mᵀ`` of the bounded HS-Jacobian
``J = D − D Mᵀ(M D Mᵀ)⁺ M D`` (``D`` the free-variable mask, ``M`` the active general rows).
Memory is O(N·(n + K_g²)); no ``(n + K_g)²`` matrix is formed except for the rare samples
that need a thresholded pseudo-inverse (:func:`~polyproj.functional._masked_linalg.pinv_solve`).

Written by hand: the elimination of bound rows inside the masked systems is this library's
solver structure, which no linear-algebra package provides.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ._row_products import matrix_combine, matrix_rows
from .polyhedron import RowsMixin

__all__ = ["BoundedData", "BoundedGram"]


@dataclass(frozen=True)
class BoundedData(RowsMixin):
    """Rows ``[E; C_g]`` with ``E`` the finite bounds (first ``nb`` rows, ``sign·e_var``) and
    ``C_g`` the normalised general rows (``m_g`` inequalities, then equalities).

    ``c`` (K,) or (N, K) holds ``[sign·bound; c_g]``; ``m = nb + m_g`` counts the inequality
    rows (bounds included).  Shared or per-sample like
    :class:`~polyproj.functional.polyhedron.PolyhedronData`, whose methods it mirrors."""

    var: torch.Tensor  # (nb,) long: the variable of each bound row
    sign: torch.Tensor  # (nb,) float64: +1 upper bound (or a fixed coordinate, an equality row), −1 lower bound
    Cg: torch.Tensor  # (K_g, n) or (N, K_g, n), unit rows (zero rows stay zero)
    Gg: torch.Tensor  # C_g C_gᵀ
    absCg: torch.Tensor
    c: torch.Tensor
    m: int
    eq: torch.Tensor  # (K,) bool
    n: int

    BATCHED = {"Cg": 2, "Gg": 2, "absCg": 2, "c": 1}

    @classmethod
    def from_rows(cls, var, sign, Cg, c, m_general: int, n: int, bound_eq=None) -> "BoundedData":
        """``bound_eq`` (nb,) bool marks bound rows that are equalities: a fixed coordinate
        ``l_j = u_j`` is one row ``y_j = u_j`` (sign +1), not two opposite inequalities (whose
        2×2 block is singular)."""
        nb = var.shape[0]
        K = nb + Cg.shape[-2]
        eq = torch.arange(K, device=Cg.device) >= nb + m_general
        if bound_eq is not None:
            eq[:nb] = bound_eq
        return cls(var=var, sign=sign, Cg=Cg, Gg=Cg @ Cg.mT, absCg=Cg.abs(), c=c, m=nb + m_general, eq=eq, n=n)

    @property
    def nb(self) -> int:
        return self.var.shape[0]

    @property
    def K(self) -> int:
        return self.nb + self.Cg.shape[-2]

    @property
    def Kg(self) -> int:
        return self.Cg.shape[-2]

    @property
    def per_sample_matrix(self) -> bool:
        return self.Cg.ndim == 3

    @property
    def G(self) -> "BoundedGram":
        return BoundedGram(self)

    @property
    def general_ineq(self) -> slice:
        return slice(self.nb, self.m)

    def general_rows(self, y: torch.Tensor) -> torch.Tensor:
        """``C_g y`` for y (N, n) → (N, K_g) or (N, n, q) → (N, K_g, q)."""
        return matrix_rows(self.Cg, y)

    def general_combine(self, w: torch.Tensor) -> torch.Tensor:
        """``C_gᵀ w`` for w (N, K_g) → (N, n) or (N, K_g, q) → (N, n, q)."""
        return matrix_combine(self.Cg, w)

    def bound_rows(self, y: torch.Tensor) -> torch.Tensor:
        """``E y`` (N, nb) (or (N, nb, q))."""
        if y.ndim == 3:
            return y[:, self.var] * self.sign[:, None]
        return y[:, self.var] * self.sign

    def bound_combine(self, w: torch.Tensor) -> torch.Tensor:
        """``Eᵀ w`` for w (N, nb) → (N, n) (or (N, nb, q) → (N, n, q))."""
        shape = (w.shape[0], self.n, *w.shape[2:])
        s = self.sign if w.ndim == 2 else self.sign[:, None]
        return w.new_zeros(shape).index_add_(1, self.var, w * s)

    def rows(self, y: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.bound_rows(y), self.general_rows(y)], 1)

    def combine(self, nu: torch.Tensor) -> torch.Tensor:
        return self.bound_combine(nu[:, : self.nb]) + self.general_combine(nu[:, self.nb:])

    def row_scales(self, y: torch.Tensor) -> torch.Tensor:
        """As :meth:`PolyhedronData.row_scales`; a bound row's terms ``|y_j|`` never exceed ``‖y‖∞``."""
        ay = y.abs()
        top = ay.amax(-1, keepdim=True)
        terms = torch.cat([top.expand(-1, self.nb), matrix_rows(self.absCg, ay)], 1)
        return torch.maximum(torch.maximum(terms, self.c.abs()), top).clamp_min(1e-300)

    def matrix(self) -> torch.Tensor:
        """The dense rows ``[E; C_g]`` ((K, n) or (N, K, n)): for inspection, the explicit Jacobian
        and the emptiness LP, never for the solves."""
        E = torch.zeros(self.nb, self.n, dtype=self.Cg.dtype, device=self.Cg.device)
        E[torch.arange(self.nb, device=E.device), self.var] = self.sign
        if self.per_sample_matrix:
            E = E.expand(self.Cg.shape[0], -1, -1)
        return torch.cat([E, self.Cg], -2)

    def bounds(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(l, u)`` per variable ((n,) or (N, n)), ±inf where a side has no row."""
        cb = self.c[..., : self.nb]
        shape = (*cb.shape[:-1], self.n)
        lower = cb.new_full(shape, -float("inf"))
        upper = cb.new_full(shape, float("inf"))
        up, lo, fixed = self.sign > 0, self.sign < 0, self.eq[: self.nb]
        upper[..., self.var[up]] = cb[..., up]
        lower[..., self.var[lo]] = -cb[..., lo]
        lower[..., self.var[fixed]] = cb[..., fixed]
        return lower, upper


class BoundedGram:
    """``G = C Cᵀ`` of :class:`BoundedData`, never formed: the masked factorisations eliminate
    the bound rows in closed form (module docstring)."""

    def __init__(self, data: BoundedData):
        self.data = data

    def max_diagonal(self) -> float:
        return 1.0  # unit bound rows; general rows have norm ≤ 1

    def factor(self, mask: torch.Tensor, delta) -> "_BoundedFactor":
        return _BoundedFactor(self.data, mask, delta)

    def pinv_solve(self, mask: torch.Tensor, r: torch.Tensor, rcond: float) -> torch.Tensor:
        """An exact solution of the consistent system ``W G W w = r`` free of rounding noise in
        its null space, by the same elimination at ``δ = 0`` with a thresholded pseudo-inverse
        of the general rows' block ``W_g C_g D C_gᵀ W_g`` (``D`` the free coordinates; relative
        threshold ``rcond``).  It is a solution, not the minimum-norm one: with general rows
        that are combinations of selected bounds the multiplier is split differently, which
        the certificate of the point does not mind."""
        d = self.data
        dtype = r.dtype
        wb, wg = mask[:, : d.nb].to(dtype), mask[:, d.nb:].to(dtype)
        count = wb.new_zeros(mask.shape[0], d.n).index_add_(1, d.var, wb)
        held = count > 0
        rb, rg = r[:, : d.nb] * wb, r[:, d.nb:] * wg
        t = d.bound_combine(rb) / count.clamp_min(1)  # (E_SᵀE_S)⁺E_Sᵀ r_b
        q = rb
        wg_sol = torch.zeros_like(rg)
        if d.Kg:
            Cf = d.Cg * (~held).to(dtype).unsqueeze(-2)
            S = (Cf @ d.Cg.mT) * (wg.unsqueeze(-1) * wg.unsqueeze(-2))
            e, Q = torch.linalg.eigh(S)
            keep = e > rcond * e.amax(-1, keepdim=True).clamp_min(torch.finfo(dtype).tiny)
            inv = torch.where(keep, 1.0 / torch.where(keep, e, torch.ones_like(e)), torch.zeros_like(e))
            rhs = rg - d.general_rows(t) * wg
            wg_sol = (Q @ (inv.unsqueeze(-1) * (Q.mT @ rhs.unsqueeze(-1)))).squeeze(-1) * wg
            q = rb - d.bound_rows(d.general_combine(wg_sol)) * wb
        # (E_S E_Sᵀ)⁺ q per coordinate: q on a single selected bound; both bounds selected → the
        # pseudo-inverse of [[1, −1], [−1, 1]] (in the signs: [[1, 1], [1, 1]]/4)
        p = q * d.sign
        total = p.new_zeros(p.shape[0], d.n).index_add_(1, d.var, p)[:, d.var]
        a = torch.where(count[:, d.var] > 1.5, total / 4, p)
        return torch.cat([a * d.sign * wb, wg_sol], 1)


class _BoundedFactor:
    """Factorisation of ``W G W + δI`` for :class:`BoundedData`'s rows, with the interface of
    :class:`~polyproj.functional._masked_linalg.MaskedCholesky` (``solve``, ``matvec``)."""

    def __init__(self, data: BoundedData, mask: torch.Tensor, delta):
        d = data
        dtype = d.Cg.dtype
        self.data, self.mask = d, mask
        N = mask.shape[0]
        self.N = N
        delta = delta if isinstance(delta, torch.Tensor) else torch.full((N,), float(delta), dtype=dtype, device=mask.device)
        self.delta = delta[:, None]
        self.wb = mask[:, : d.nb].to(dtype)
        self.wg = mask[:, d.nb:].to(dtype)
        self.count = self.wb.new_zeros(N, d.n).index_add_(1, d.var, self.wb)  # c_j
        self.inv = 1.0 / (self.count + self.delta)  # 1/(c_j + δ)
        self.L = None
        if d.Kg and N:
            f = self.delta * self.inv  # δ/(c+δ): 1 on free variables, ~δ on bounded ones
            Cf = d.Cg * f.unsqueeze(-2)
            S = Cf @ d.Cg.mT  # (N, K_g, K_g)
            S = S * (self.wg.unsqueeze(-1) * self.wg.unsqueeze(-2))
            S.diagonal(dim1=-2, dim2=-1).add_(self.delta)
            L, info = torch.linalg.cholesky_ex(S)
            if bool((info != 0).any()):
                raise FloatingPointError("Cholesky factorisation of a regularised Gram matrix failed (non-finite data?)")
            self.L = L

    def solve(self, r: torch.Tensor) -> torch.Tensor:
        d = self.data
        if self.N == 0 or d.K == 0:
            return torch.zeros_like(r)
        col = (lambda t: t) if r.ndim == 2 else (lambda t: t.unsqueeze(-1))
        rb, rg = r[:, : d.nb] * col(self.wb), r[:, d.nb:] * col(self.wg)
        t = d.bound_combine(rb) * col(self.inv)  # E_Sᵀ(E_S E_Sᵀ + δI)⁻¹ r_b
        if self.L is not None:
            rhs = (rg - d.general_rows(t) * col(self.wg))
            sol = torch.cholesky_solve(rhs.unsqueeze(-1) if r.ndim == 2 else rhs, self.L)
            wg = (sol.squeeze(-1) if r.ndim == 2 else sol) * col(self.wg)
            q = rb - d.bound_rows(d.general_combine(wg)) * col(self.wb)
        else:
            wg, q = rg, rb
        # (E_S E_Sᵀ + δI)⁻¹ q per variable: one selected row → q/(1+δ); both bounds selected (a
        # 2×2 block [[1+δ, −1], [−1, 1+δ]] in the signs) → its explicit inverse
        p = q * (d.sign if r.ndim == 2 else d.sign[:, None])
        total = p.new_zeros(p.shape[0], d.n, *p.shape[2:]).index_add_(1, d.var, p)[:, d.var]
        delta = self.delta if r.ndim == 2 else self.delta.unsqueeze(-1)
        two = (self.count[:, d.var] > 1.5)
        two = two if r.ndim == 2 else two.unsqueeze(-1)
        a = torch.where(two, ((1 + delta) * p - (total - p)) / (delta * (2 + delta)), p / (1 + delta))
        wb = a * (d.sign if r.ndim == 2 else d.sign[:, None]) * col(self.wb)
        return torch.cat([wb, wg], 1)

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        w = self.mask.to(v.dtype)
        w = w if v.ndim == 2 else w.unsqueeze(-1)
        return self.data.rows(self.data.combine(v * w)) * w
