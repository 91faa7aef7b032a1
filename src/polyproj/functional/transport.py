r"""Exact projection onto the transportation polytope (Birkhoff when ``r = c = 1``).

Problem
-------
.. math:: \min_X \tfrac12\|X - Y\|_F^2 \quad\text{s.t.}\quad X \ge 0,\ X\mathbf 1 = r,\ X^\top\mathbf 1 = c
   \qquad (\mathbf 1^\top r = \mathbf 1^\top c).

Algorithm: semismooth Newton on the dual (Li, Sun & Toh, Math. Program. 179, 2020),

.. math:: θ(α, β) = ½‖(Y − α\mathbf 1^\top − \mathbf 1 β^\top)_+‖^2 + r^\top α + c^\top β,
   \qquad ∇θ = (r − X\mathbf 1,\ c − X^\top\mathbf 1),\ X = (Y − α\mathbf 1^\top − \mathbf 1β^\top)_+ ,

with the generalised Hessian ``L = [[Diag(Θ1), Θ], [Θᵀ, Diag(Θᵀ1)]]`` on the support
``Θ = 1[Y − α1ᵀ − 1βᵀ > 0]`` — the signless Laplacian of the bipartite support graph, singular
along ``(1, −1)`` on every connected component.  Each step solves ``(L + εI) d = −∇θ``
(ε = min(1e-3, ‖∇θ‖) relative) through its n×n Schur complement by a batched Cholesky,
followed by an Armijo search; quadratic
convergence once the support settles.  Nonnegativity and complementarity hold by construction;
the iteration stops when the marginals hold to ``tol`` relative.
"""

from __future__ import annotations

import torch

from .polyhedron import _ACTIVE_TAU

_ARMIJO = 1e-4


def _laplacian(theta: torch.Tensor) -> torch.Tensor:
    N, m, n = theta.shape
    L = torch.zeros(N, m + n, m + n, dtype=theta.dtype, device=theta.device)
    L[:, :m, m:] = theta
    L[:, m:, :m] = theta.mT
    idx_r = torch.arange(m, device=theta.device)
    idx_c = torch.arange(m, m + n, device=theta.device)
    L[:, idx_r, idx_r] = theta.sum(2)
    L[:, idx_c, idx_c] = theta.sum(1)
    return L


def _newton_direction(theta, ga, gb, eps):
    """Solve ``(L + εI)(dα; dβ) = −(gα; gβ)`` through the Schur complement of the diagonal
    row block, ``S = D_c − Θᵀ D_r⁻¹ Θ`` (n×n, positive definite): one n×n Cholesky per sample
    instead of a (m+n)×(m+n) one."""
    dr = theta.sum(2) + eps[:, None]
    dc = theta.sum(1) + eps[:, None]
    T = theta / dr[:, :, None]
    S = -(theta.mT @ T)
    S.diagonal(dim1=-2, dim2=-1).add_(dc)
    rb = (T.mT @ ga.unsqueeze(-1)).squeeze(-1) - gb
    L, _ = torch.linalg.cholesky_ex(S)
    db = torch.cholesky_solve(rb.unsqueeze(-1), L).squeeze(-1)
    da = (-ga - (theta @ db.unsqueeze(-1)).squeeze(-1)) / dr
    return da, db


def _dual_value(Z, alpha, beta, r, c):
    return 0.5 * Z.clamp_min(0).square().sum((1, 2)) + (alpha * r).sum(-1) + (beta * c).sum(-1)


def project_transport(Y: torch.Tensor, r: torch.Tensor, c: torch.Tensor, *, tol: float, max_iter: int = 100):
    """Returns ``(X, alpha, beta, kkt, iterations)`` for a batch ``Y`` (N, m, n), float64;
    the marginals ``r`` (m,) or (N, m) and ``c`` (n,) or (N, n) are shared or per sample."""
    N, m, n = Y.shape
    dev, dt = Y.device, Y.dtype
    r, c = r.expand(N, m), c.expand(N, n)
    s = torch.maximum(Y.abs().flatten(1).amax(-1), torch.maximum(r.abs().amax(-1), c.abs().amax(-1))).clamp_min(1e-300)
    # start from the projection onto the affine hull (nonnegativity ignored)
    alpha = (Y.sum(2) - r) / n
    beta = (Y.sum(1) - c - alpha.sum(1, keepdim=True)) / m
    iters = torch.zeros(N, dtype=torch.long, device=dev)
    kkt = torch.full((N,), float("inf"), dtype=dt, device=dev)
    live = torch.arange(N, device=dev)
    a_l, b_l, Y_l, s_l, r_l, c_l = alpha, beta, Y, s, r, c
    z_sign = torch.cat([torch.ones(m, dtype=dt, device=dev), -torch.ones(n, dtype=dt, device=dev)])
    for it in range(max_iter + 1):
        Z = Y_l - a_l[:, :, None] - b_l[:, None, :]
        X = Z.clamp_min(0)
        ga, gb = r_l - X.sum(2), c_l - X.sum(1)
        res = torch.maximum(ga.abs().amax(-1), gb.abs().amax(-1)) / s_l
        done = res <= tol
        if it == max_iter:
            done = torch.ones_like(done)
        if bool(done.any()):
            idx = live[done]
            alpha[idx], beta[idx], kkt[idx], iters[idx] = a_l[done], b_l[done], res[done], it
            keep = ~done
            live, a_l, b_l, Y_l, s_l, r_l, c_l = live[keep], a_l[keep], b_l[keep], Y_l[keep], s_l[keep], r_l[keep], c_l[keep]
            Z, ga, gb, res = Z[keep], ga[keep], gb[keep], res[keep]
            if live.numel() == 0:
                break
        theta = (Z > 0).to(dt)
        eps = (res * s_l).clamp(max=1e-3) + 1e-12
        grad = torch.cat([ga, gb], 1)
        d = torch.cat(_newton_direction(theta, ga, gb, eps), 1)
        # drop the component along the global null direction (1, −1) (a gauge change)
        d = d - (d[:, :m].sum(1, keepdim=True) - d[:, m:].sum(1, keepdim=True)) / (m + n) * z_sign
        da, db = d[:, :m], d[:, m:]
        # Step t = 1, 1/2, …: accept on Armijo decrease of θ, or — where θ's decrease is
        # below rounding, near the solution — when the residual ‖∇θ‖∞ halves.
        th0 = _dual_value(Z, a_l, b_l, r_l, c_l)
        slope = (grad * d).sum(-1)
        g0 = res * s_l
        # Only the samples still searching are evaluated at each trial step: most accept t = 1
        # at once, and re-evaluating the whole batch for a few stragglers dominated the cost.
        t = torch.full((live.numel(),), 2.0 ** -29, dtype=dt, device=dev)  # the last trial, if none passes
        pending = torch.arange(live.numel(), device=dev)
        Zp, dap, dbp, ap, bp, rp, cp = Z, da, db, a_l, b_l, r_l, c_l
        th0p, slp, g0p = th0, slope, g0
        step = 1.0
        for _ in range(30):
            Zt = Zp - step * (dap[:, :, None] + dbp[:, None, :])
            Xt = Zt.clamp_min(0)
            tht = _dual_value(Zt, ap + step * dap, bp + step * dbp, rp, cp)
            gt = torch.maximum((rp - Xt.sum(2)).abs().amax(-1), (cp - Xt.sum(1)).abs().amax(-1))
            passed = (tht <= th0p + _ARMIJO * step * slp) | (gt <= 0.5 * g0p)
            t[pending[passed]] = step
            if bool(passed.all()):
                break
            keep = ~passed
            pending = pending[keep]
            Zp, dap, dbp, ap, bp, rp, cp = Zp[keep], dap[keep], dbp[keep], ap[keep], bp[keep], rp[keep], cp[keep]
            th0p, slp, g0p = th0p[keep], slp[keep], g0p[keep]
            step *= 0.5
        a_l = a_l + t[:, None] * da
        b_l = b_l + t[:, None] * db
    X = (Y - alpha[:, :, None] - beta[:, None, :]).clamp_min(0)
    return X, alpha, beta, kkt, iters


def transport_active(X: torch.Tensor, Y: torch.Tensor) -> torch.Tensor:
    """Entries at zero up to the activity tolerance (the rows ``−X_ij ≤ 0`` that are active)."""
    s = torch.maximum(Y.abs().flatten(1).amax(-1), X.abs().flatten(1).amax(-1)).clamp_min(1e-300)
    return X <= _ACTIVE_TAU * s[:, None, None]
