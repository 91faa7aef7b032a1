r"""Primal–dual interior point for the projection onto a polyhedron: the solver of last resort.

Problem
-------
.. math::

    \min_y\ \tfrac12\|y-x\|^2 \quad\text{s.t.}\quad C_I y + s = c_I,\ s \ge 0,\ \ C_E y = c_E,

with the unit rows of the normalised data (:class:`~polyproj.functional.polyhedron.PolyhedronData`
or :class:`~polyproj.functional.bounded.BoundedData`, bounds as dense rows ``±e_j``).

Why it is here
--------------
The batched solver (proximal augmented Lagrangian + semismooth Newton + active-set polishing)
contracts along an active direction with singular value σ by ``1/(1 + ρσ²)`` per round.  Sets
whose projections land on degenerate vertices — far more active rows than their rank, smallest
singular values ~1e-6, multipliers 1e4–1e5 times the data scale (Maros–Mészáros QPCBOEI2,
QFFFFF80) — stall it at ρ's cap.  An interior point does not care: its iteration count depends
on the barrier, not on σ (Wright, *Primal–Dual Interior-Point Methods*, SIAM 1997).  It runs only
for the samples the batched solver could not certify; its iterates are handed to the same
polishing and certificate (the caller's ``certify``), so nothing uncertified is ever accepted.

Algorithm
---------
Mehrotra predictor–corrector (Nocedal & Wright, *Numerical Optimization*, 2nd ed., Alg. 16.4).
The Newton system, with ``W = Λ S⁻¹``, is reduced to

.. math::

    \begin{bmatrix} I + C_I^\top W C_I & C_E^\top \\ C_E & 0 \end{bmatrix}
    \begin{bmatrix} Δy \\ Δμ \end{bmatrix} =
    \begin{bmatrix} -r_d - C_I^\top (W r_p - S^{-1} r_c) \\ -r_e \end{bmatrix},

one n×n Cholesky per sample (positive definite: ``I ⪯ H``) and the p×p Schur complement
``C_E H⁻¹ C_Eᵀ`` (+1e-14 of its diagonal, for dependent equality rows); two rounds of iterative
refinement on the unreduced system absorb the conditioning of ``W``, whose entries reach 1e20
near the solution.  Residuals are measured relative to the input's scale (dual) and the set's
(primal), as in :func:`~polyproj.functional.polyhedron.kkt_residual`.

Written by hand: a batched dense interior point on torch tensors (CPU or CUDA), whose iterates
feed this library's own face polishing; no package offers one for a batch of projections.
"""

from __future__ import annotations

import torch

from ._row_products import matrix_combine, matrix_rows

__all__ = ["interior_point"]

_STEP_TO_BOUNDARY = 0.995  # fraction of the distance to the boundary of s, λ ≥ 0 taken per step
_REFINE = 2  # rounds of iterative refinement of each Newton system
_SCHUR_REG = 1e-14  # relative regularisation of the equality Schur complement
_DIVERGED = 100.0  # a sample leaves once its merit exceeds its best by this factor
_READY = 1e-8  # largest s_i λ_i, relative to the product of the scales, at which iterates are certified


class _Rows:
    """The dense rows split into inequalities ``C_I`` and equalities ``C_E`` (shared or per sample)."""

    def __init__(self, C: torch.Tensor, c: torch.Tensor, eq: torch.Tensor):
        ineq = (~eq).nonzero().flatten()
        equ = eq.nonzero().flatten()
        self.ineq, self.equ = ineq, equ
        self.CI, self.CE = C.index_select(-2, ineq), C.index_select(-2, equ)
        self.cI, self.cE = c.index_select(-1, ineq), c.index_select(-1, equ)
        self.p = equ.numel()


class _Newton:
    """The factorised Newton system at ``(s, λ)`` (module docstring)."""

    def __init__(self, rows: _Rows, s: torch.Tensor, lam: torch.Tensor):
        self.rows, self.s, self.lam = rows, s, lam
        self.w = lam / s
        CI = rows.CI
        n = CI.shape[-1]
        CIb = CI if CI.ndim == 3 else CI.expand(s.shape[0], -1, -1)
        H = CIb.mT @ (self.w[:, :, None] * CIb)
        H.diagonal(dim1=-2, dim2=-1).add_(1.0)
        self.L, info = torch.linalg.cholesky_ex(H)
        if bool((info != 0).any()):  # rounding at W ~ 1e20: a relative shift of the diagonal
            bad = info != 0
            shift = 1e-14 * H.diagonal(dim1=-2, dim2=-1).amax(-1)
            H[bad] += shift[bad, None, None] * torch.eye(n, dtype=H.dtype, device=H.device)
            self.L = torch.linalg.cholesky_ex(H)[0]
        if rows.p:
            CE = rows.CE if rows.CE.ndim == 3 else rows.CE.expand(s.shape[0], -1, -1)
            self.HinvCEt = torch.cholesky_solve(CE.mT, self.L)  # (N, n, p)
            S = CE @ self.HinvCEt
            S = S + _SCHUR_REG * S.diagonal(dim1=-2, dim2=-1).amax(-1).clamp_min(1e-300)[:, None, None] * torch.eye(
                rows.p, dtype=S.dtype, device=S.device)
            self.SL = torch.linalg.cholesky_ex(S)[0]

    def _reduced(self, rd, rp, re, rc):
        rows = self.rows
        rhs = -rd - matrix_combine(rows.CI, self.w * rp - rc / self.s)
        u = torch.cholesky_solve(rhs.unsqueeze(-1), self.L)
        if rows.p:
            dmu = torch.cholesky_solve((matrix_rows(rows.CE, u.squeeze(-1)) + re).unsqueeze(-1), self.SL)
            dy = (u - self.HinvCEt @ dmu).squeeze(-1)
            dmu = dmu.squeeze(-1)
        else:
            dy, dmu = u.squeeze(-1), rd.new_zeros(rd.shape[0], 0)
        ds = -rp - matrix_rows(rows.CI, dy)
        dlam = (-rc - self.lam * ds) / self.s
        return dy, ds, dlam, dmu

    def solve(self, rd, rp, re, rc):
        """The Newton step ``(Δy, Δs, Δλ, Δμ)`` for the residuals (dual, primal inequality,
        primal equality, complementarity), refined on the unreduced system."""
        rows = self.rows
        step = self._reduced(rd, rp, re, rc)
        for _ in range(_REFINE):
            dy, ds, dlam, dmu = step
            e_d = rd + dy + matrix_combine(rows.CI, dlam) + (matrix_combine(rows.CE, dmu) if rows.p else 0.0)
            e_p = rp + matrix_rows(rows.CI, dy) + ds
            e_e = re + matrix_rows(rows.CE, dy) if rows.p else re
            e_c = rc + self.s * dlam + self.lam * ds
            fix = self._reduced(e_d, e_p, e_e, e_c)
            step = tuple(a + b for a, b in zip(step, fix))
        return step


def _inf_norm(v):
    return v.abs().amax(-1) if v.shape[-1] else v.new_zeros(v.shape[0])


def _max_step(v, dv):
    """Largest ``t ≤ 1`` with ``v + t·dv ≥ 0`` per sample (``v > 0``)."""
    ratio = torch.where(dv < 0, -v / torch.where(dv < 0, dv, -torch.ones_like(dv)), torch.full_like(v, float("inf")))
    return ratio.amin(-1).clamp(max=1.0) if v.shape[-1] else v.new_ones(v.shape[0])


def interior_point(C, c, eq, x, y0, nu0, *, max_iter, certify, margin: float = 1e-2):
    """Mehrotra predictor–corrector from ``(y0, ν0)`` for each sample of ``x`` (N, n), with the
    dense normalised rows ``C`` ((K, n) or (N, K, n)), ``c`` ((K,) or (N, K)) and the equality
    mask ``eq`` (K,).  The start's slacks and multipliers are pushed into the interior by
    ``margin`` times their scales (the set's and the input's).

    After each step, ``certify(index, y, ν)`` receives the samples still iterating (their
    indices into the batch, the iterate and its multiplier in the row order of ``C``) and
    returns a bool mask of those it accepted; they leave the iteration, as do those that have
    taken ``max_iter`` steps (an int, or a tensor (N,) of per-sample budgets) or whose merit
    diverged.  Returns the number of interior-point steps per sample."""
    N, n = x.shape
    budget = torch.as_tensor(max_iter, device=x.device).expand(N)
    rows = _Rows(C, c, eq)
    K = eq.numel()
    dev, dt = x.device, x.dtype
    steps = torch.zeros(N, dtype=torch.long, device=dev)
    sx = torch.maximum(x.abs().amax(-1), y0.abs().amax(-1)).clamp_min(1e-300)  # the dual (input) scale
    cI = rows.cI if rows.cI.ndim == 2 else rows.cI.expand(N, -1)
    cE = rows.cE if rows.cE.ndim == 2 else rows.cE.expand(N, -1)
    ps = torch.maximum(cI.abs().amax(-1) if cI.shape[-1] else x.new_zeros(N),
                       y0.abs().amax(-1)).clamp_min(1e-300)  # the primal (set) scale
    y = y0.clone()
    s = (cI - matrix_rows(rows.CI, y)).clamp_min(0) + margin * ps[:, None]
    lam = nu0.index_select(-1, rows.ineq).clamp_min(0) + margin * sx[:, None]
    mu_eq = nu0.index_select(-1, rows.equ)
    live = torch.arange(N, device=dev)
    xs = x
    best = torch.full((N,), float("inf"), dtype=dt, device=dev)

    def pack(lam_, mu_):
        nu = x.new_zeros(lam_.shape[0], K)
        nu[:, rows.ineq] = lam_
        nu[:, rows.equ] = mu_
        return nu

    for it in range(int(budget.max()) if N else 0):
        sub = rows if live.numel() == N else _subset(rows, live)
        cIs, cEs = cI[live], cE[live]
        m = max(1, s.shape[-1])
        rd = y - xs + matrix_combine(sub.CI, lam) + (matrix_combine(sub.CE, mu_eq) if sub.p else 0.0)
        rp = matrix_rows(sub.CI, y) + s - cIs
        re = matrix_rows(sub.CE, y) - cEs
        gap = (s * lam).sum(-1) / m
        # Once the barrier is below rounding the Newton systems (W ~ 1e20) lose accuracy: a
        # sample whose primal residual and gap grew 100× over their best has passed its floor.
        # (The dual residual is not watched: it degrades first, while the slacks still separate
        # the active rows from the others, which is all the face certificate needs.)
        merit = torch.stack([_inf_norm(rp) / ps[live], _inf_norm(re) / ps[live], gap / (ps[live] * sx[live])]).amax(0)
        best[live] = torch.minimum(best[live], merit)
        worse = merit > _DIVERGED * best[live]
        if bool(worse.any()):
            keep = ~worse
            if not bool(keep.any()):
                break
            live, xs, y, s, lam, mu_eq = live[keep], xs[keep], y[keep], s[keep], lam[keep], mu_eq[keep]
            continue
        newton = _Newton(sub, s, lam)
        # predictor (affine scaling)
        _, ds_a, dl_a, _ = newton.solve(rd, rp, re, s * lam)
        t_a = torch.minimum(_max_step(s, ds_a), _max_step(lam, dl_a))
        gap_a = ((s + t_a[:, None] * ds_a) * (lam + t_a[:, None] * dl_a)).sum(-1) / m
        sigma = (gap_a / gap.clamp_min(1e-300)).clamp(0, 1) ** 3
        # corrector
        rc = s * lam + ds_a * dl_a - (sigma * gap)[:, None]
        dy, ds, dl, dm = newton.solve(rd, rp, re, rc)
        t = _STEP_TO_BOUNDARY * torch.minimum(_max_step(s, ds), _max_step(lam, dl))
        t = t.clamp(max=1.0)[:, None]
        y, s, lam, mu_eq = y + t * dy, (s + t * ds).clamp_min(1e-300), (lam + t * dl).clamp_min(1e-300), mu_eq + t * dm
        steps[live] += 1
        # the (costly) certificate only once the barrier is small at both scales
        ready = (_inf_norm(s * lam) <= _READY * ps[live] * sx[live]).nonzero().flatten()
        done = torch.zeros_like(t[:, 0], dtype=torch.bool)
        if ready.numel():
            done[ready] = certify(live[ready], y[ready], pack(lam[ready], mu_eq[ready]))
        keep = ~done & (steps[live] < budget[live])
        if not bool(keep.any()):
            break
        live, xs, y, s, lam, mu_eq = live[keep], xs[keep], y[keep], s[keep], lam[keep], mu_eq[keep]
    return steps


def _subset(rows: _Rows, live):
    """``rows`` restricted to the samples ``live`` (a no-op for shared rows)."""
    out = _Rows.__new__(_Rows)
    out.ineq, out.equ, out.p = rows.ineq, rows.equ, rows.p
    out.CI = rows.CI[live] if rows.CI.ndim == 3 else rows.CI
    out.CE = rows.CE[live] if rows.CE.ndim == 3 else rows.CE
    out.cI, out.cE = rows.cI, rows.cE
    return out
