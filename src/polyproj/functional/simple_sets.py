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

Each returns ``(y, active)`` with ``active`` the inequality rows (in the order of the set's
canonical polyhedron) that hold with equality; the callers (:mod:`polyproj.structured`) judge
feasibility at the set's scale.  Inputs far larger than the set (‖x‖ ≫ the bounds or the
total) make ``x − τ`` carry rounding at the scale of ``x``; each projection therefore ends with
a feasibility-restoring correction on its identified face, computed from ``1ᵀy − r`` or
``cᵀy − β`` (numbers at the set's scale), so its output is feasible to rounding at the set's
scale whatever the size of the input.
A row counts as active when its slack is at most ``ACTIVE_TAU`` times the set's scale plus
the rounding ``x − τ`` may carry (a few ulps of ‖x‖∞), so that a coordinate left at 1e-17 by
rounding is at its bound (DESIGN §4: only misclassified *strongly* active rows change J, and
these are not).
"""

from __future__ import annotations

import torch

from .polyhedron import _ACTIVE_TAU as ACTIVE_TAU
from .polyhedron import _ROUNDING_ULPS


def activity_tolerance(x, scale):
    """Per-sample (N, 1) slack below which a bound counts as active: ``ACTIVE_TAU·scale`` plus a
    few ulps of ‖x‖∞ (the rounding of ``x − τ``)."""
    return (ACTIVE_TAU * scale + _ROUNDING_ULPS * torch.finfo(x.dtype).eps * x.abs().amax(-1))[:, None]


def project_box(x, lower, upper, scale_of):
    y = torch.minimum(torch.maximum(x, lower), upper)
    tau = activity_tolerance(x, scale_of(y))
    active = torch.cat([y >= upper - tau, y <= lower + tau], -1)  # rows y ≤ u, then −y ≤ −l
    return y, active


def project_halfspace(x, c, beta, scale_of):
    cc = c @ c
    excess = x @ c - beta
    hit = excess > 0
    y = x - (excess.clamp_min(0) / cc)[:, None] * c
    # restore: on the boundary, cᵀy − β is recomputed from y (set scale) and removed once more
    y = y - (torch.where(hit, y @ c - beta, torch.zeros_like(excess)) / cc)[:, None] * c
    active = (beta - y @ c <= activity_tolerance(x, scale_of(y))[:, 0] * c.norm())[:, None]
    return y, active


def project_simplex(x, total, scale_of):
    """Condat's sort-based threshold; ``total ≥ 0``."""
    n = x.shape[-1]
    u, _ = torch.sort(x, dim=-1, descending=True)
    css = torch.cumsum(u, -1) - total
    k = torch.arange(1, n + 1, dtype=x.dtype, device=x.device)
    cond = u - css / k > 0
    rho = n - 1 - torch.argmax(cond.flip(-1).to(torch.int8), dim=-1)  # last index where cond holds
    tau = css.gather(1, rho[:, None]) / (rho[:, None] + 1).to(x.dtype)
    y = restore_sum(x, (x - tau).clamp_min(0), total, None, None)
    return y, y <= activity_tolerance(x, scale_of(y))


def restore_sum(x, y, total, lower, upper, passes: int = 3):
    """Feasibility restoration of ``1ᵀy = total`` on the free coordinates (``y > lower`` and
    ``y < upper``; ``lower = None`` means 0, ``upper = None`` none): ``y_F ← y_F − (1ᵀy − total)/|F|``,
    clipped to the bounds, repeated while a clip moved a coordinate (at most ``passes`` times).
    Where no coordinate is free, the one whose breakpoint comes next (the smallest ``x_i − u_i``
    when the sum is too large, the largest ``x_i − l_i`` when too small) takes the gap.
    The residual is formed from ``y`` (the set's scale), so this removes the rounding that
    ``x − τ`` carried at the input's scale."""
    lo = torch.zeros_like(y) if lower is None else lower.expand_as(y)
    inf = torch.full_like(y, float("inf"))
    for _ in range(passes):
        free = (y > lo) & ((y < upper) if upper is not None else True)
        gap = y.sum(-1, keepdim=True) - total
        nF = free.sum(-1, keepdim=True)
        stuck = (nF == 0) & (gap != 0)
        if bool(stuck.any()):
            at_up = (~free & (y > lo)) if upper is not None else torch.zeros_like(free)
            key = torch.where(gap > 0, torch.where(at_up, x - y, inf), torch.where(y <= lo, lo - x, inf))
            pick = torch.zeros_like(free).scatter_(1, key.argmin(-1, keepdim=True), True)
            free = free | (stuck & pick & torch.isfinite(key))
            nF = free.sum(-1, keepdim=True)
        step = torch.where(nF > 0, gap / nF.clamp_min(1), torch.zeros_like(gap))
        moved = y - step * free
        clipped = torch.maximum(moved, lo) if upper is None else torch.minimum(torch.maximum(moved, lo), upper)
        y = clipped
        if not bool((clipped != moved).any()):
            break
    return y


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


def project_capped_simplex(x, lower, upper, total, scale_of):
    tau = capped_threshold(x, lower, upper, total)[:, None]
    y = torch.minimum(torch.maximum(x - tau, lower), upper)
    # exact finish on the identified sets
    F = (x - tau > lower) & (x - tau < upper)
    nF = F.sum(-1, keepdim=True)
    fixed = torch.where(F, torch.zeros_like(y), y).sum(-1, keepdim=True)
    tau_exact = ((x * F).sum(-1, keepdim=True) + fixed - total) / nF.clamp_min(1)
    y_exact = torch.minimum(torch.maximum(x - tau_exact, lower), upper)
    same = ((x - tau_exact > lower) & (x - tau_exact < upper) == F).all(-1, keepdim=True) & (nF > 0)
    y = restore_sum(x, torch.where(same, y_exact, y), total, lower, upper)
    t = activity_tolerance(x, scale_of(y))
    active = torch.cat([y >= upper - t, y <= lower + t], -1)
    return y, active
