r"""Exact forward solvers for the sets with threshold structure (no autograd inside).

* Box ``[l, u]``: ``y = clip(x, l, u)``.
* Half-space ``{c·y ≤ β}``: ``y = x − max(0, c·x − β) c / ‖c‖²``.
* Simplex ``{y ≥ 0, 1ᵀy = r}``: ``y = max(x − τ, 0)`` with the threshold of Condat (2016),
  ``τ = max_k (Σ_{j≤k} u_j − r)/k`` over ``x`` sorted decreasingly: a batched sort and a
  cumulative sum, exact up to rounding, O(n log n) per row.
* Capped simplex ``{l ≤ y ≤ u, 1ᵀy = r}``: ``y = clip(x − τ, l, u)`` where
  ``φ(τ) = Σ clip(x_i − τ, l_i, u_i)`` is nonincreasing and piecewise linear with the 2n
  breakpoints ``x − u`` and ``x − l``; they are sorted, φ is accumulated at every breakpoint,
  the segment holding ``φ(τ) = r`` is located and solved exactly (O(n log n) per row).
  The threshold is then recomputed from the identified free set
  ``τ = (Σ_F x_i + Σ_L l_i + Σ_U u_i − r)/|F|`` for full accuracy.

Each returns ``(y, active, kkt)`` with ``active`` the inequality rows (in the order of the
set's canonical polyhedron) that hold with equality and ``kkt`` the relative KKT residual.
A row counts as active when its slack is at most ``ACTIVE_TAU · max(‖x‖∞, ‖y‖∞)`` — the
tolerance of the general polyhedron, so that a coordinate left at 1e-17 by rounding is at its
bound (DESIGN §4: only misclassified *strongly* active rows change J, and these are not).
"""

from __future__ import annotations

import torch

from .polyhedron import _ACTIVE_TAU as ACTIVE_TAU


def _scale(x, y):
    return torch.maximum(x.abs().amax(-1), y.abs().amax(-1)).clamp_min(1e-300)


def _tau(x, y):
    """Activity tolerance: the general polyhedron's in float64, a few ulps in lower precision."""
    return max(ACTIVE_TAU, 100 * torch.finfo(x.dtype).eps) * _scale(x, y)[:, None]


def project_box(x, lower, upper):
    y = torch.minimum(torch.maximum(x, lower), upper)
    tau = _tau(x, y)
    active = torch.cat([y >= upper - tau, y <= lower + tau], -1)  # rows y ≤ u, then −y ≤ −l
    return y, active, torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)


def project_halfspace(x, c, beta):
    excess = x @ c - beta
    y = x - (excess.clamp_min(0) / (c @ c))[:, None] * c
    active = (beta - y @ c <= _tau(x, y)[:, 0] * c.norm())[:, None]
    viol = (y @ c - beta).clamp_min(0) / c.norm()
    return y, active, viol / _scale(x, y)


def project_simplex(x, total):
    """Condat's sort-based threshold; ``total > 0``."""
    n = x.shape[-1]
    u, _ = torch.sort(x, dim=-1, descending=True)
    css = torch.cumsum(u, -1) - total
    k = torch.arange(1, n + 1, dtype=x.dtype, device=x.device)
    cond = u - css / k > 0
    rho = n - 1 - torch.argmax(cond.flip(-1).to(torch.int8), dim=-1)  # last index where cond holds
    tau = css.gather(1, rho[:, None]) / (rho[:, None] + 1).to(x.dtype)
    y = (x - tau).clamp_min(0)
    kkt = (y.sum(-1) - total).abs() / _scale(x, y)
    return y, y <= _tau(x, y), kkt


def capped_threshold(x, lower, upper, total):
    """τ with ``Σ clip(x − τ, l, u) = total`` (requires Σl ≤ total ≤ Σu), by sorted breakpoints.
    ``lower``, ``upper``: (n,) or (N, n); ``total``: a float or (N, 1)."""
    N, n = x.shape
    bp = torch.cat([x - upper, x - lower], -1)  # leaving the upper bound, reaching the lower bound
    step = torch.cat([torch.ones_like(x), -torch.ones_like(x)], -1)  # change of the free count
    B, order = torch.sort(bp, dim=-1)
    free = torch.cumsum(step.gather(1, order), -1)  # free count just after each breakpoint
    gaps = torch.diff(B, dim=-1)
    phi0 = upper.sum(-1).expand(N)
    # φ at each breakpoint, starting from φ(B_1) = Σu
    phi = torch.cat([phi0[:, None], phi0[:, None] - torch.cumsum(free[:, :-1] * gaps, -1)], -1)
    # last breakpoint with φ ≥ total
    k = (phi >= total).sum(-1).clamp(1, 2 * n) - 1
    Bk, phik, fk = B.gather(1, k[:, None]), phi.gather(1, k[:, None]), free.gather(1, k[:, None])
    tau = torch.where(fk > 0, Bk + (phik - total) / fk.clamp_min(1), Bk)
    return tau.squeeze(1)


def project_capped_simplex(x, lower, upper, total):
    tau = capped_threshold(x, lower, upper, total)[:, None]
    y = torch.minimum(torch.maximum(x - tau, lower), upper)
    # exact finish on the identified sets
    F = (x - tau > lower) & (x - tau < upper)
    nF = F.sum(-1, keepdim=True)
    fixed = torch.where(F, torch.zeros_like(y), y).sum(-1, keepdim=True)
    tau_exact = ((x * F).sum(-1, keepdim=True) + fixed - total) / nF.clamp_min(1)
    y_exact = torch.minimum(torch.maximum(x - tau_exact, lower), upper)
    same = ((x - tau_exact > lower) & (x - tau_exact < upper) == F).all(-1, keepdim=True) & (nF > 0)
    y = torch.where(same, y_exact, y)
    t = _tau(x, y)
    active = torch.cat([y >= upper - t, y <= lower + t], -1)
    kkt = (y.sum(-1, keepdim=True) - total).abs().squeeze(-1) / _scale(x, y)
    return y, active, kkt
