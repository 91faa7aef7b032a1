r"""Exact Euclidean projection onto a general polyhedron (forward solver, no autograd).

Problem
-------
.. math::

    y^\star = \Pi_P(x) = \arg\min_{y}\ \tfrac12\|y-x\|^2
    \quad\text{s.t.}\quad A y \le a,\ \ B y = b .

The rows of ``C = [A; B]`` are normalised to unit length beforehand (the set is unchanged);
``G = C Cᵀ`` is shared by the whole batch.

Algorithm
---------
1. **Proximal augmented Lagrangian with semismooth Newton** (``_inner_newton``).  With multipliers
   ``ν_k = (λ_k, μ_k)`` and penalty ρ, each outer step minimises the strongly convex,
   piecewise-quadratic function

   .. math:: φ_k(y) = ½‖y−x‖² + \tfrac{1}{2ρ}\big(‖(λ_k + ρ(Ay−a))_+‖² + ‖μ_k + ρ(By−b)‖²\big)

   by semismooth Newton.  The generalised Hessian ``I + ρ CᵀWC`` (``W`` = rows with a
   positive penalty argument) is inverted through the Woodbury identity in the dual space:
   one batched Cholesky of ``W G W + I/ρ`` per step — positive definite for *any* active
   set, so duplicated or dependent rows never make the step singular.  The full step is
   taken where it gives Armijo decrease, otherwise the exact minimiser of φ_k along the
   direction (a sorted breakpoint search on the piecewise-linear derivative, as in QPALM,
   Hermans, Themelis & Patrinos 2022).  Newton on a piecewise quadratic terminates once the
   active pattern repeats after a full step.
   Then ``ν_{k+1} = Π(ν_k + ρ(Cy−c))``; this is the proximal-point method on the dual, which
   converges for every polyhedron, degenerate or not (Rockafellar 1976), and the next round
   starts from ``(y_{k+1}, ν_{k+1})``.  Its contraction along an active direction with
   singular value σ is ``1/(1 + ρσ²)`` per round, so ρ grows ×10 whenever the primal residual
   falls by less than 4×, up to 1e10 (nearly dependent active rows of LP-derived sets have
   σ ~ 1e-6 and multipliers 1e4× the data scale).
2. **Active-set polishing** (``polish``).  On ``Ĩ = {λ_i > 0} ∪ {slack_i ≤ τ}`` the point
   ``y = x − M_Ĩᵀ (M_Ĩ M_Ĩᵀ)⁺ (M_Ĩ x − c_Ĩ)`` is computed by iterated Tikhonov; it is accepted
   when its KKT residual, certified by the polished multiplier or by the ALM multiplier
   (which stays valid when the minimum-norm multiplier of dependent rows is negative).
   The polished point is then made feasible on its face by one correction
   ``y ← y − M_Ĩᵀ(M_Ĩ M_Ĩᵀ)⁺(M_Ĩ y − c_Ĩ)``: ``M_Ĩ y − c_Ĩ`` is formed from numbers at the set's
   scale, so the correction removes the rounding that ``M_Ĩ x`` (at the input's scale) left.
   Samples whose multiplier picks up rounding noise in the null space of dependent rows
   are re-solved with a thresholded eigendecomposition.  In late rounds (ALM primal residual
   ≤ √tol relative) two more certificates are tried where that fails: the exact multiplier
   nearest to the ALM one (rows whose corrected multiplier turns negative leave its support),
   and the face named by the primal slacks alone (a row's ALM multiplier can stay positive
   long after the point has left it); the ALM pair itself is also a candidate.  A sample
   leaves as soon as its certified residual is ≤ tol; the others continue the ALM.
3. **Interior-point finish** (``_interior_point_finish``).  Degenerate vertices — many more
   active rows than their rank, singular values ~1e-6, multipliers ~1e4 times the data scale —
   stall the ALM at its penalty cap (its contraction ``1/(1 + ρσ²)`` per round).  A sample
   that stalls there, or is still uncertified after ``_HANDOFF_STEPS`` Newton steps or at the
   end, goes to a primal–dual interior point (:mod:`~polyproj.functional.interior_point`),
   whose iterates name candidate faces; each face is solved by the SVD of its rows (not their
   Gram matrix) with a nonnegative least-squares multiplier, and certified by the same
   residual.  A sample it cannot certify returns to the ALM for the rest of its budget.

Convergence criterion (what ``info.kkt_residual`` reports), stated as OSQP and Clarabel state
theirs, with unit-norm rows ``C = [A; B]``, ``c = [a; b]``: the relative KKT residual is the larger of

* primal: ``max_i violation_i / max(|C_i| |y|, |c_i|, ‖y‖∞)`` — each row judged at its own
  scale in the *set* (its right-hand side and the terms of ``C_i y``, at least the size of the
  point), never at the scale of ``x``, so a far-away input cannot loosen feasibility, nor a
  far-away row with a huge right-hand side the others;
* dual: stationarity ``‖y − x + Cᵀν‖∞`` and dual feasibility ``‖λ_-‖∞`` relative to
  ``max(‖x‖∞, ‖y‖∞)`` (the scale of the input), and complementarity ``max_i min(λ_i, s_i)`` with
  each multiplier relative to that scale and each slack ``s_i = a_i − A_i y`` relative to the
  set's: a row with a multiplier above tolerance must be tight at the set's scale.

A point is accepted when this is ≤ ``tol``.  Because the polished point is made feasible on its
face by a correction computed from ``C y − c`` (numbers at the set's scale, whatever the size
of ``x``), the primal part reaches rounding level at inputs 1e-6…1e8 times the set's scale.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from ._masked_linalg import masked_factor, pinv_solve, solve_consistent
from ._row_products import matrix_combine, matrix_rows
from .interior_point import interior_point

__all__ = ["PolyhedronData", "SolveResult", "solve_polyhedron"]

# ALM penalty for unit-norm rows (dimensionless); raised ×10 for a sample whose primal
# residual falls by less than 4× in a round, up to _RHO_MAX (the penalty argument carries
# rounding ρ·eps·‖y‖, so it stays well below 1/eps).
_RHO, _RHO_GROWTH, _RHO_MAX = 1e3, 10.0, 1e10
_POLISH_TAU = 1e-9  # rows with relative slack below this join the polishing set
_ACTIVE_TAU = 1e-11  # rows with relative slack below this are active in the backward
_IP_MAX_ITER = 100  # interior-point steps per start for the samples the batched solver leaves uncertified
_SVD_RTOL = 1e-10  # singular values of a face's rows below this (relative) are cut: the faces this is for have 1e-6, and inverting ~1e-13 gave multipliers 1e7 times the input's scale whose residual is rounding
_ROUNDING_FLOOR = 4.0  # a multiplier's stationarity is trusted to this many ulps of Σ|ν_i| (unit rows)
_STALL_ROUNDS = 10  # ALM rounds at the penalty cap without a tenfold gain before the interior point takes over
_HANDOFF_STEPS = 150  # Newton steps after which an uncertified sample goes to the interior point
_ROUNDING_ULPS = 64.0  # rounding an ALM iterate formed at the input's scale may carry, in ulps of ‖x‖∞


class RowsMixin:
    """Helpers shared by the row containers (:class:`PolyhedronData` and
    :class:`~polyproj.functional.bounded.BoundedData`, frozen dataclasses).  The violation
    helpers need ``rows``, ``row_scales``, ``c``, ``eq`` and ``K``; ``take``, ``to`` and
    ``with_batched`` need ``BATCHED``, the fields that may carry a leading batch dimension, with
    their number of event dimensions."""

    BATCHED: dict = {}

    def take(self, index: torch.Tensor):
        """The data of the samples ``index`` (shared parts are kept as they are)."""
        picked = {k: getattr(self, k)[index] for k, nd in self.BATCHED.items() if getattr(self, k).ndim > nd}
        return dataclasses.replace(self, **picked) if picked else self

    def to(self, device):
        return dataclasses.replace(self, **{f.name: getattr(self, f.name).to(device) for f in dataclasses.fields(self)
                                            if isinstance(getattr(self, f.name), torch.Tensor)})

    def with_batched(self, transform):
        """A copy with ``transform(tensor, event_ndim)`` applied to each field of ``BATCHED``."""
        return dataclasses.replace(self, **{k: transform(getattr(self, k), nd) for k, nd in self.BATCHED.items()})

    def primal_scale(self, y: torch.Tensor) -> torch.Tensor:
        """The largest row scale per sample (:meth:`row_scales`), 1 without rows."""
        return self.row_scales(y).amax(-1) if self.K else y.new_ones(y.shape[0])

    def row_violations(self, r: torch.Tensor) -> torch.Tensor:
        """Each row's violation from the residual ``r = C y − c`` (N, K): ``r₊`` on inequality
        rows, ``|r|`` on equality rows."""
        return torch.where(self.eq, r.abs(), r.clamp_min(0))

    def relative_violation(self, y: torch.Tensor, r: torch.Tensor | None = None, floor=None) -> torch.Tensor:
        """``max_i violation_i / scale_i`` per sample (``r = C y − c`` if known; ``floor``: a
        per-sample lower bound on the scales)."""
        if self.K == 0:
            return y.new_zeros(y.shape[0])
        r = self.rows(y) - self.c if r is None else r
        scale = self.row_scales(y) if floor is None else torch.maximum(self.row_scales(y), floor[:, None])
        return (self.row_violations(r) / scale).amax(-1)

    def primal_violation(self, r: torch.Tensor) -> torch.Tensor:
        """Largest violation per sample from the residual ``r = C y − c`` (N, K)."""
        if self.K == 0:
            return r.new_zeros(r.shape[0])
        return self.row_violations(r).amax(-1)


@dataclass(frozen=True)
class PolyhedronData(RowsMixin):
    """Normalised constraint data: ``C y ≤ c`` on the first ``m`` rows, ``= c`` on the rest.

    Shared data has ``C`` (K, n), ``G`` (K, K) and ``c`` (K,).  Per-sample data has a leading
    batch dimension N on ``c`` (per-sample right-hand sides) and/or on ``C`` and ``G``
    (per-sample matrices); every method below accepts both."""

    C: torch.Tensor  # (K, n) or (N, K, n) float64, unit rows (zero rows stay zero)
    c: torch.Tensor  # (K,) or (N, K)
    m: int
    G: torch.Tensor  # (K, K) or (N, K, K) = C Cᵀ
    eq: torch.Tensor  # (K,) bool, True on equality rows
    absC: torch.Tensor  # |C|, for the magnitude of the terms of C y (the primal scale)

    BATCHED = {"C": 2, "c": 1, "G": 2, "absC": 2}

    @classmethod
    def from_rows(cls, C: torch.Tensor, c: torch.Tensor, m: int) -> "PolyhedronData":
        eq = torch.arange(C.shape[-2], device=C.device) >= m
        return cls(C=C, c=c, m=m, G=C @ C.mT, eq=eq, absC=C.abs())

    @property
    def K(self) -> int:
        return self.C.shape[-2]

    def rows(self, y: torch.Tensor) -> torch.Tensor:
        """``C y`` for every sample of y (N, n) → (N, K); y may be (N, n, q) → (N, K, q)."""
        return matrix_rows(self.C, y)

    def combine(self, nu: torch.Tensor) -> torch.Tensor:
        """``Cᵀ ν`` for every sample of ν (N, K) → (N, n)."""
        return matrix_combine(self.C, nu)

    def row_scales(self, y: torch.Tensor) -> torch.Tensor:
        """The scale of each constraint at ``y`` (N, n) → (N, K): ``max(|C_i| |y|, |c_i|, ‖y‖∞)`` —
        the size of the terms the evaluation ``C_i y − c_i`` adds up (so its rounding is relative
        to it), at least the size of the point.  A row's violation is judged against its own
        scale: a far-away row with a huge right-hand side does not loosen the others."""
        ay = y.abs()
        terms = matrix_rows(self.absC, ay)
        return torch.maximum(torch.maximum(terms, self.c.abs()), ay.amax(-1, keepdim=True)).clamp_min(1e-300)

    def matrix(self) -> torch.Tensor:
        """The dense rows ``C``."""
        return self.C

    @property
    def general_ineq(self) -> slice:
        """The rows of the user's inequality matrix ``A``."""
        return slice(0, self.m)


@dataclass
class SolveResult:
    y: torch.Tensor  # (N, n) float64
    active: torch.Tensor  # (N, K) bool: active inequality rows and every equality row
    multipliers: torch.Tensor  # (N, K) the certifying (λ, μ) for normalised rows
    kkt: torch.Tensor  # (N,) relative KKT residual
    iterations: torch.Tensor  # (N,) Newton steps
    converged: torch.Tensor  # (N,) bool


def kkt_residual(data: PolyhedronData, x, y, nu, sx, z=None):
    """Relative KKT residual per sample of the point y (z = C y) with multipliers nu (module
    docstring): the primal violation relative to the set's scale and the stationarity,
    complementarity and dual infeasibility relative to ``max(‖x‖∞, ‖y‖∞)`` (``sx`` =
    ``‖x‖∞``).  NaN anywhere gives +inf."""
    if z is None:
        z = data.rows(y)
    stat = (y - x + data.combine(nu)).abs().amax(-1)
    # (not ‖Cᵀν‖: huge multipliers that nearly cancel would scale their own residual away)
    dscale = _scale(sx, y)
    if data.K == 0:
        return (stat / dscale).nan_to_num(float("inf"))
    r = z - data.c
    # (the floor eps·‖x‖∞ only matters for sets of scale 0 — cones — at y ≈ 0, where the
    # rounding of y = x − Cᵀν leaves nothing to be relative to)
    pscale = torch.maximum(data.row_scales(y), torch.finfo(y.dtype).eps * sx[:, None])
    primal = (data.row_violations(r) / pscale).amax(-1)
    # complementarity: each multiplier relative to the input's scale, each slack to its row's
    ineq = ~data.eq
    lam, slack = nu / dscale[:, None], -r / pscale
    comp_dual = torch.where(ineq, torch.maximum(torch.minimum(lam, slack), -lam).clamp_min(0), torch.zeros_like(nu))
    dual = torch.maximum(stat / dscale, comp_dual.amax(-1))
    return torch.maximum(primal, dual).nan_to_num(float("inf"))


def _scale(sx, y):
    return torch.maximum(sx, y.abs().amax(-1)).clamp_min(1e-300)


_ARMIJO = 1e-4


def _penalty_delta(u, un, old, eq):
    """``q(un) − q(u)`` with q(s) = s_+² on inequality rows and s² on equality rows;
    ``old`` is the mask ``u > 0 | eq``."""
    new = (un > 0) | eq
    return (un * new).square() - (u * old).square()


def _full_step_ok(r, d, u, v, mask, slope, rho, eq):
    """Armijo sufficient decrease for the full Newton step ``t = 1``."""
    quad = (r * d).sum(-1) + 0.5 * (d * d).sum(-1)
    return quad + _penalty_delta(u, u + v, mask, eq).sum(-1) / (2 * rho) <= _ARMIJO * slope


def _exact_step(r, d, u, v, eq, rho):
    """Exact minimiser ``t* ≥ 0`` of the convex piecewise quadratic ``t ↦ φ(y + t d)``.

    With ``u = ν + ρ(Cy − c)`` and ``v = ρ C d``, ``ρ φ'(t) = ρ(r·d + t‖d‖²) +
    Σ_i v_i p_i(u_i + t v_i)`` where ``p_i(s) = s_+`` on inequality rows and ``s`` on equality
    rows (:func:`line_search_root`).  Returns ``(t, first_piece)``."""
    return line_search_root(rho * (r * d).sum(-1), rho * (d * d).sum(-1), u, v, eq)


def line_search_root(a0, b0, u, v, eq):
    """Smallest root ``t* ≥ 0`` of the nondecreasing, piecewise-linear

    ``ψ(t) = a0 + b0·t + Σ_i v_i p_i(u_i + t v_i)``,  ``p_i(s) = s_+`` (``s`` where ``eq``),

    per sample (``a0``, ``b0``: (N,); ``u``, ``v``: (N, K); ``eq``: (K,) bool) — the derivative
    of a convex piecewise quadratic along a search direction, so ``t*`` is its exact minimiser
    (0 when ``ψ(0) ≥ 0``).  Breakpoints (where a term enters or leaves) are sorted per
    sample, the slopes and intercepts of the pieces accumulated, and the root located on its
    piece — one step may cross many kinks, unlike backtracking (as in QPALM, Hermans,
    Themelis & Patrinos 2022).  Returns ``(t, first_piece)``; ``first_piece`` means no
    breakpoint was crossed."""
    ineq = ~eq
    active0 = eq | (u > 0) | ((u == 0) & (v > 0))
    vu, vv = v * u, v * v
    alpha0 = a0 + (vu * active0).sum(-1)
    beta0 = b0 + (vv * active0).sum(-1)
    enter = ineq & (u < 0) & (v > 0)
    leave = ineq & (u > 0) & (v < 0)
    bp = torch.where(enter | leave, -u / torch.where(v != 0, v, torch.ones_like(v)), torch.full_like(u, float("inf")))
    T, order = torch.sort(bp, dim=-1)
    sign = torch.where(enter, 1.0, -1.0).to(u.dtype).gather(1, order)
    alpha = torch.cat([alpha0[:, None], alpha0[:, None] + torch.cumsum(sign * vu.gather(1, order) * torch.isfinite(T), -1)], 1)
    beta = torch.cat([beta0[:, None], beta0[:, None] + torch.cumsum(sign * vv.gather(1, order) * torch.isfinite(T), -1)], 1)
    beta = beta.clamp_min(torch.finfo(u.dtype).tiny)
    T_next = torch.cat([T, torch.full_like(T[:, :1], float("inf"))], 1)
    reach = alpha + beta * T_next >= 0  # the root lies on or before the end of this piece
    k = reach.to(torch.int8).argmax(-1, keepdim=True)
    t = (-alpha.gather(1, k) / beta.gather(1, k)).squeeze(1).clamp_min(0)
    return t, k.squeeze(1) == 0


def _inner_newton(data, x, y, nu, sx, rho, max_steps):
    """Semismooth Newton on φ_k (module docstring) for every row of the batch; ``rho`` holds
    one penalty per sample.

    Finite termination: the iterate is the exact minimiser once the active pattern repeats
    after a full step.  Finished samples leave the working set.  Returns (y, steps)."""
    eq = data.eq
    N = x.shape[0]
    y = y.clone()
    steps = torch.zeros(N, dtype=torch.long, device=x.device)
    u = nu + rho[:, None] * (data.rows(y) - data.c)  # penalty argument, updated along the steps
    mask = (u > 0) | eq
    gs = y - x + data.combine(u * mask)
    need = gs.abs().amax(-1) > 1e-15 * _scale(sx, y)
    if bool(need.all()):
        live, xs, ys, us, ms, rs, ds = None, x, y, u, mask, rho, data
    else:
        live = need.nonzero().flatten()
        if live.numel() == 0:
            return y, steps
        xs, ys, us, ms, gs, rs, ds = x[live], y[live], u[live], mask[live], gs[live], rho[live], data.take(live)
    for it in range(max_steps):
        if it:
            gs = ys - xs + ds.combine(us * ms)
        # Woodbury: (I + ρCᵀWC)⁻¹ = I − CᵀW(I/ρ + WGW)⁻¹WC, one masked Cholesky per sample
        d = ds.combine(masked_factor(ds.G, ms, 1.0 / rs).solve(ds.rows(gs))) - gs
        v = rs[:, None] * ds.rows(d)
        # Full Newton step where it decreases φ enough, else the exact minimiser along d.
        full = _full_step_ok(ys - xs, d, us, v, ms, (gs * d).sum(-1), rs, eq)
        if bool(full.all()):
            ys, us = ys + d, us + v
            new_mask = (us > 0) | eq
            done = (new_mask == ms).all(-1)
        else:
            t = torch.ones_like(full, dtype=d.dtype)
            i = (~full).nonzero().flatten()
            t[i] = _exact_step(ys[i] - xs[i], d[i], us[i], v[i], eq, rs[i])[0]
            ys, us = ys + t[:, None] * d, us + t[:, None] * v
            new_mask = (us > 0) | eq
            # exact minimiser once a full step leaves the pattern unchanged; t = 0: no
            # decrease representable in floating point
            done = (full & (new_mask == ms).all(-1)) | (t == 0)
        ms = new_mask
        last = it == max_steps - 1
        if last or bool(done.any()):
            # write finished samples back (all of them at the last step)
            fin = torch.ones_like(done) if last else done
            rows = fin.nonzero().flatten()
            target = rows if live is None else live[rows]
            y[target] = ys[rows]
            steps[target] = it + 1
            keep = (~fin).nonzero().flatten()
            if keep.numel() == 0:
                break
            live = keep if live is None else live[keep]
            xs, ys, us, ms, rs, ds = xs[keep], ys[keep], us[keep], ms[keep], rs[keep], ds.take(keep)
    return y, steps


def _alm_tolerance(data: PolyhedronData, y, sx, rel):
    """``rel`` times each row's scale at the ALM iterate ``y`` (N, K), plus the rounding that
    ``y`` carries from being formed at the input's scale ``sx`` (a few ulps of ‖x‖∞): the slack
    or violation below which an ALM iterate cannot tell a row from active."""
    return rel * data.row_scales(y) + _ROUNDING_ULPS * torch.finfo(y.dtype).eps * sx[:, None]


def polishing_set(data: PolyhedronData, r, nu, slack_tol, *, use_multipliers: bool = True):
    """Rows fixed to equality by the polishing step at a point with residual ``r = C y − c``:
    every equality row, the inequality rows with slack ≤ ``slack_tol`` (per sample,
    :func:`_alm_tolerance`), and (``use_multipliers``) those with a positive multiplier."""
    near = -r <= slack_tol
    return data.eq | near | (nu > 0) if use_multipliers else data.eq | near


def polish(data: PolyhedronData, x, zx, nu, sx, tol, chosen, late=None):
    """Active-set polishing (module docstring, step 2) on the rows ``chosen``
    (:func:`polishing_set`).

    ``zx = C x``.  The polished point is certified by the best of three multipliers: its own
    minimum-norm one, the ALM's ``nu``, and the exact multiplier nearest to ``nu``
    (:func:`_anchored_multiplier`); the last two are only formed for samples the first leaves
    above ``tol`` and, if a mask ``late`` is given, only where it is set.  Returns the point,
    its certifying multiplier and its relative KKT residual."""
    rhs = (zx - data.c) * chosen
    nu_p, _ = solve_consistent(data.G, chosen, rhs)
    y_p = x - data.combine(nu_p)
    z_p = data.rows(y_p)
    y_p, nu_p, z_p = _restore_face(data, chosen, y_p, nu_p, z_p, tol)
    own = kkt_residual(data, x, y_p, nu_p, sx, z_p)
    # Dependent rows: rounding noise in the null space of the active Gram matrix can make a
    # zero multiplier slightly negative.  Recompute those samples' multipliers by a
    # thresholded pseudo-inverse (exact minimum-norm, no null-space noise).
    r_p = z_p - data.c
    primal_ok = data.relative_violation(y_p, r_p) <= 1e-3 * _POLISH_TAU
    noisy = primal_ok & (own > 1e-3 * _POLISH_TAU) & ((nu_p < 0) & ~data.eq).any(-1)
    if bool(noisy.any()):
        i = noisy.nonzero().flatten()
        di = data.take(i)
        nu_i = pinv_solve(di.G, chosen[i], rhs[i])
        y_i = x[i] - di.combine(nu_i)
        y_i, nu_i, z_i = _restore_face(di, chosen[i], y_i, nu_i, di.rows(y_i), tol)
        own_i = kkt_residual(di, x[i], y_i, nu_i, sx[i], z_i)
        better = own_i < own[i]
        j = i[better]
        nu_p[j], y_p[j], z_p[j], own[j] = nu_i[better], y_i[better], z_i[better], own_i[better]
    # Where the minimum-norm multiplier does not certify (dependent rows with large
    # multipliers: the nonnegative multipliers differ from it by a null-space component),
    # try the ALM multiplier and the exact multiplier nearest to it.
    need = own > tol
    i = (need if late is None else need & late).nonzero().flatten()
    if i.numel():
        di = data.take(i)
        alm = kkt_residual(di, x[i], y_p[i], nu[i], sx[i], z_p[i])
        nu_a, anchored = _anchored_multiplier(di, x[i], sx[i], y_p[i], z_p[i], nu[i], chosen[i])
        use_a = anchored < alm
        nu_i, res_i = torch.where(use_a[:, None], nu_a, nu[i]), torch.minimum(anchored, alm)
        won = res_i < own[i]
        j = i[won]
        nu_p[j], own[j] = nu_i[won], res_i[won]
    return y_p, nu_p, own


def _exchange_rows(data: PolyhedronData, x, zx, sx, tol, chosen, passes: int = 4):
    """Primal–dual active-set exchanges from the face ``chosen``: solve on the face (with the
    feasibility-restoring correction), then add every row the point violates and drop the
    inequality row with the most negative multiplier; up to ``passes`` times, keeping the
    best certified point.  Returns ``(y, ν, relative KKT residual)``."""
    chosen = chosen.clone()
    best = None
    for _ in range(passes):
        nu, _ = solve_consistent(data.G, chosen, (zx - data.c) * chosen)
        y = x - data.combine(nu)
        y, nu, z = _restore_face(data, chosen, y, nu, data.rows(y), tol)
        k = kkt_residual(data, x, y, nu, sx, z)
        if best is None:
            best = [y, nu, k]
        else:
            won = k < best[2]
            best = [torch.where(won[:, None], y, best[0]), torch.where(won[:, None], nu, best[1]), torch.minimum(k, best[2])]
        if bool((best[2] <= tol).all()):
            break
        violated = ~data.eq & (z - data.c > tol * data.row_scales(y))
        negative = torch.where(chosen & ~data.eq, nu, torch.zeros_like(nu))
        worst = negative.argmin(-1, keepdim=True)
        drop = torch.zeros_like(chosen).scatter_(1, worst, negative.gather(1, worst) < 0)
        chosen = (chosen | violated) & ~drop
    return best[0], best[1], best[2]


def _rescaled_face(data: PolyhedronData, x, sx, y, nu, kkt, tol, max_iter):
    """Face identification at the set's scale, for samples the main iteration left above
    ``tol`` (inputs ≫ the set's scale, whose ALM stalls at a rounding floor before the face
    settles).

    ``x − y*`` lies in the normal cone at ``y* = Π(x)``, a cone, so ``x' = y* + t(x − y*)`` has the
    same projection and face for every ``t > 0``.  With the best point found, ``ŷ ≈ y*``, the
    input ``x' = ŷ + t(x − ŷ)`` with ``t`` chosen so that ``‖x' − ŷ‖∞`` is the set's scale is
    projected — a well-scaled problem — and its face, where the error of ``ŷ`` is below the
    face's margins, is the face of ``y*``.  ``x`` itself is then solved on that face
    (:func:`_exchange_rows`) and the result certified like any other."""
    # only stragglers whose best point is nearly feasible: an empty set, or one the iteration
    # is far from solving, gains nothing here
    near = data.primal_violation(data.rows(y) - data.c) <= 1e-3 * data.primal_scale(y)
    i = ((kkt > tol) & near).nonzero().flatten()
    if i.numel() == 0:
        return y, nu, kkt
    di = data.take(i)
    xi, yi = x[i], y[i]
    d = xi - yi
    t = (di.primal_scale(yi) / d.abs().amax(-1).clamp_min(1e-300)).clamp(max=1.0)
    inner = solve_polyhedron(di, yi + t[:, None] * d, tol=tol, max_iter=min(max_iter, 100), _rescale=False,
                            _interior=False)
    face = active_rows(di, inner.y, inner.multipliers)
    ya, na, ka = _exchange_rows(di, xi, di.rows(xi), sx[i], tol, face)
    won = ka < kkt[i]
    j = i[won]
    y, nu, kkt = y.clone(), nu.clone(), kkt.clone()
    y[j], nu[j], kkt[j] = ya[won], na[won], ka[won]
    return y, nu, kkt


def _tidy(data: PolyhedronData, x, sx, y, nu, kkt, tol):
    """Accepted points may violate rows by up to ``tol`` of the set's scale (the face solve moved
    them across a row it did not hold, or held an inconsistent pair of rows in least squares).
    For those above ``10⁻³·tol``, face solves on the rows the point is on or beyond
    (:func:`_exchange_rows`); kept where they certify with a smaller primal violation."""
    r = data.rows(y) - data.c
    viol = data.relative_violation(y, r)
    i = ((viol > 1e-3 * tol) & (kkt <= tol)).nonzero().flatten()
    if i.numel() == 0:
        return y, nu, kkt
    di = data.take(i)
    # the face the point is on or beyond; rows it has left (slack above τ) are out even with a
    # positive multiplier — e.g. one of two parallel rows with different right-hand sides, whose
    # least-squares face solve put the point between them
    face = data.eq | (-r[i] <= _ACTIVE_TAU * di.row_scales(y[i]))
    yi, ni, ki = _exchange_rows(di, x[i], di.rows(x[i]), sx[i], tol, face, passes=2)
    vi = di.relative_violation(yi)
    won = (ki <= tol) & (vi < viol[i])
    j = i[won]
    y, nu, kkt = y.clone(), nu.clone(), kkt.clone()
    y[j], nu[j], kkt[j] = yi[won], ni[won], ki[won]
    return y, nu, kkt


def _restore_face(data: PolyhedronData, chosen, y, nu, z, tol):
    """One feasibility-restoring correction on the face ``chosen``:
    ``y ← y − Cᵀw``, ``ν ← ν + w`` with ``W G W w = W (C y − c)`` (minimum norm), for the samples
    whose primal residual on the chosen rows exceeds ``10⁻³·tol`` of the set's scale.

    ``y = x − Cᵀν`` inherits rounding at the scale of ``x``; ``C y − c`` is formed from numbers
    at the set's scale, so the correction is accurate at that scale (one step of iterative
    refinement in the primal space).  Returns ``(y, ν, C y)``."""
    r = (z - data.c) * chosen
    bad = (r.abs() > 1e-3 * tol * data.row_scales(y)).any(-1).nonzero().flatten()
    if bad.numel():
        di = data.take(bad)
        w, _ = solve_consistent(di.G, chosen[bad], r[bad])
        y, nu, z = y.clone(), nu.clone(), z.clone()
        y[bad] = y[bad] - di.combine(w)
        nu[bad] = nu[bad] + w
        z[bad] = di.rows(y[bad])
    return y, nu, z


def _anchored_multiplier(data, x, sx, y_p, z_p, nu, support, max_drops: int = 4):
    """The multiplier of ``y_p`` nearest to ``nu`` on the rows ``support``:
    ``ν_S + (M_S M_Sᵀ)⁺ M_S (x − y_p − M_Sᵀ ν_S)``, exact whenever ``x − y_p ∈ range(M_Sᵀ)``.

    With dependent rows the correction can push small multipliers below zero; those rows leave
    the support (a multiplier of 0 is as valid as any while the remaining rows still span
    ``x − y_p``) and the correction is recomputed, up to ``max_drops`` times.  Returns the
    multiplier and its relative KKT residual."""
    support = support.clone()
    best, best_res = None, None
    for _ in range(max_drops + 1):
        nu_s = nu * support
        fix, _ = solve_consistent(data.G, support, data.rows(x - y_p - data.combine(nu_s)) * support)
        nu_a = nu_s + fix
        res = kkt_residual(data, x, y_p, nu_a, sx, z_p)
        if best is None:
            best, best_res = nu_a, res
        else:
            won = res < best_res
            best, best_res = torch.where(won[:, None], nu_a, best), torch.where(won, res, best_res)
        negative = support & ~data.eq & (nu_a < 0)
        if not bool(negative.any()):
            break
        support &= ~negative
    return best, best_res


def _certify_iterate(ds, xs, ss, zs, ys, ns, r, near, chosen, fresh, late, tol):
    """Certified candidates from the iterate ``(y, ν)`` (``r = C y − c``) of each sample: the
    point polished on the rows ``chosen`` (only where ``fresh``), on the rows its slacks alone
    name, after a few active-set exchanges, and the iterate itself made feasible on its face;
    the late-round candidates only where ``late``.  Returns the best point, its certifying
    multiplier and its relative KKT residual (+inf where no candidate was formed)."""
    yp, np_ = ys.clone(), ns.clone()
    kp = ys.new_full((ys.shape[0],), float("inf"))
    f = fresh.nonzero().flatten()
    if f.numel():
        df = ds if f.numel() == ys.shape[0] else ds.take(f)
        yp[f], np_[f], kp[f] = polish(df, xs[f], zs[f], ns[f], ss[f], tol, chosen[f], late[f])
    # A row can keep a positive ALM multiplier long after the point has left it when the
    # active rows are nearly dependent (the proximal-point contraction along those
    # directions is 1/(1 + ρσ²) per round); the primal guess alone then names the face.
    retry = ((kp > tol) & late).nonzero().flatten()
    if retry.numel():
        dr = ds.take(retry)
        alt = polishing_set(dr, r[retry], ns[retry], near[retry], use_multipliers=False)
        ya, na, ka = polish(dr, xs[retry], zs[retry], ns[retry], ss[retry], tol, alt)
        won = ka < kp[retry]
        j = retry[won]
        yp[j], np_[j], kp[j] = ya[won], na[won], ka[won]
    # Far from the set (inputs ≫ the set's scale) the ALM stalls at a rounding floor before
    # its multipliers settle, and both guesses can be one row off: a few primal–dual
    # active-set exchanges on the face finish the job (DESIGN §6, step 5).
    retry = ((kp > tol) & late).nonzero().flatten()
    if retry.numel():
        dr = ds.take(retry)
        ya, na, ka = _exchange_rows(dr, xs[retry], zs[retry], ss[retry], tol, chosen[retry])
        won = ka < kp[retry]
        j = retry[won]
        yp[j], np_[j], kp[j] = ya[won], na[won], ka[won]
    # The iterate itself: its stationarity is the inner Newton residual, so once the penalty
    # has closed the primal gap it can certify where an ill-conditioned face solve cannot.
    # It too is made feasible on its face (its primal residual is only ≤ tol); only tried
    # where the polished point did not certify.
    retry = (kp > tol).nonzero().flatten()
    if retry.numel():
        dr = ds.take(retry)
        yr, nr, zr = _restore_face(dr, chosen[retry], ys[retry], ns[retry], dr.c + r[retry], tol)
        ka = kkt_residual(dr, xs[retry], yr, nr, ss[retry], zr)
        won = ka < kp[retry]
        j = retry[won]
        yp[j], np_[j], kp[j] = yr[won], nr[won], ka[won]
    return yp, np_, kp


def _face_certificate(data, x, sx, y, nu, face, tol):
    """The projection of ``x`` onto the affine hull of the face ``face`` and its multiplier, by the
    SVD of the face's rows ``M`` (never their Gram matrix, whose condition is the square of
    theirs).  The point is formed as a correction of ``y`` (accurate at the set's scale even for
    far inputs): ``y⁺ = y − M⁺(M y − c_M) − (I − M⁺M)(y − x)``.  The multiplier is the one nearest
    to ``ν``, ``ν_M + (Mᵀ)⁺(x − y⁺ − Mᵀν_M)``, or where that one is not certified (it can turn
    negative on dependent rows: a degenerate vertex has a polytope of multipliers) the
    nonnegative least-squares multiplier of the face (:func:`_nnls_multiplier`).

    For faces whose rows are many, dependent and ill-conditioned (degenerate vertices with
    singular values ~1e-6 and multipliers ~1e4 times the data scale), where the Gram-matrix
    solves of the polishing lose the digits a certificate needs.  Singular values below
    :data:`_SVD_RTOL` of the largest are cut.  Returns
    ``(y⁺, ν⁺, relative KKT residual)``."""
    M = data.matrix()
    r = (data.rows(y) - data.c) * face
    nu_f = nu * face
    yp, nup = y.clone(), nu_f.clone()
    failed = torch.zeros_like(face[:, 0])
    # one sample at a time, on the face's rows only: LAPACK's divide-and-conquer SVD can fail
    # to converge on a matrix padded with zero rows (a rare last-resort path, so no batching)
    face_rows = [face[k].nonzero().flatten() for k in range(x.shape[0])]
    face_M = [(M[k] if M.ndim == 3 else M)[rows] for k, rows in enumerate(face_rows)]
    for k, (rows, Mk) in enumerate(zip(face_rows, face_M)):
        try:
            U, sv, Vh = torch.linalg.svd(Mk, full_matrices=False)
        except torch.linalg.LinAlgError:
            failed[k] = True
            continue
        cut = _SVD_RTOL * sv[:1]
        inv = torch.where(sv > cut, 1.0 / torch.where(sv > cut, sv, torch.ones_like(sv)), torch.zeros_like(sv))
        # the projection of x onto the face's affine hull, as a correction of y: the rows'
        # residual removed by M⁺ = V Σ⁺ Uᵀ and y − x's component in ker M by I − V Vᵀ
        d = y[k] - x[k]
        Vr = Vh[sv > cut]
        yp[k] = y[k] - Vh.mT @ (inv * (U.mT @ r[k, rows])) - (d - Vr.mT @ (Vr @ d))
        g = x[k] - yp[k] - Mk.mT @ nu_f[k, rows]
        nup[k, rows] += U @ (inv * (Vh @ g))  # (Mᵀ)⁺ g = U Σ⁺ Vᵀ g
    kkt = kkt_residual(data, x, yp, nup, sx)
    kkt = torch.where(failed, torch.full_like(kkt, float("inf")), kkt)
    # The nearest multiplier can turn negative on dependent rows (a degenerate vertex has a
    # polytope of multipliers), or inherit huge components that cancel from ν (an interior
    # point's multipliers drift along the null space of dependent rows once its barrier is
    # below rounding: 1e7 times the input's scale on QPCBOEI1), and then its stationarity is
    # the rounding of Cᵀν, which certifies in one summation order and not in another.  There the
    # nonnegative least-squares multiplier of the face, and the minimum-norm one on its
    # support; the candidate with the smallest residual plus its rounding floor is kept.
    def floor(v, k):
        return _ROUNDING_FLOOR * torch.finfo(x.dtype).eps * v.abs().sum() / _scale(sx[k:k + 1], yp[k:k + 1])[0]

    fragile = [k for k in range(x.shape[0]) if not bool(failed[k])
               and (not bool(kkt[k] <= tol) or bool(floor(nup[k], k) > 1e-3 * tol))]
    for k in fragile:
        rows, Mk = face_rows[k], face_M[k]
        g = x[k] - yp[k]
        lam = _nnls_multiplier(Mk, data.eq[rows], g)
        if lam is None:
            continue
        support = (lam != 0) | data.eq[rows]
        lean = torch.zeros_like(lam)
        Ms = Mk[support]
        if Ms.shape[0]:
            lean[support] = torch.linalg.pinv(Ms.mT, rtol=_SVD_RTOL) @ g
        sample = data.take(torch.tensor([k], device=x.device))
        score = kkt[k] + floor(nup[k], k)
        for cand_lam in (lean, lam):
            cand = nup[k:k + 1].clone()
            cand[0] = 0.0
            cand[0, rows] = cand_lam
            k_n = kkt_residual(sample, x[k:k + 1], yp[k:k + 1], cand, sx[k:k + 1])[0]
            s_n = k_n + floor(cand[0], k)
            if bool(s_n < score):
                nup[k], kkt[k], score = cand[0], k_n, s_n
    return yp, nup, kkt


def _nnls_multiplier(M, eq, g):
    """``ν`` minimising ``‖Mᵀν − g‖`` with ``ν ≥ 0`` on the inequality rows (free on ``eq``), by
    scipy's NNLS (Lawson–Hanson, on a QR of the columns, never their Gram matrix); an equality
    row enters as two opposite columns.  On CPU whatever the tensors' device (a last-resort path
    for single samples).  ``None`` where NNLS fails."""
    from scipy.optimize import nnls

    if M.shape[0] == 0:  # an empty face (scipy 1.17's NNLS aborts the process on zero columns)
        return g.new_zeros(0)
    basis = torch.cat([M, -M[eq]], 0).mT.detach().cpu().double().numpy()
    try:
        coef, _ = nnls(basis, g.detach().cpu().double().numpy(), maxiter=50 * max(1, basis.shape[1]))
    except RuntimeError:
        return None
    coef = torch.from_numpy(coef).to(device=g.device, dtype=g.dtype)
    lam = coef[: M.shape[0]].clone()
    lam[eq] -= coef[M.shape[0]:]
    return lam


def _interior_point_finish(data: PolyhedronData, x, sx, y, nu, kkt, tol, max_iter):
    """The samples still above ``tol`` after the batched solver, solved by the primal–dual
    interior point (:mod:`~polyproj.functional.interior_point`) from their best pair.

    Each interior iterate whose barrier is small names candidate faces, which
    :func:`_face_certificate` solves and certifies: the rows whose slack is below their
    multiplier (each relative to its scale), and the rows whose slack shrank by more than their
    multiplier since the previous iterate (Tapia's indicator, El-Bakry, Tapia & Zhang, JOTA 1994:
    on the central path an active row's slack falls with the barrier while its multiplier
    settles, and the reverse for an inactive row — it separates them where both are still
    small, as on the degenerate vertices this path is for).  ``max_iter`` (N,) holds the steps
    each sample may still take (both starts together, at most :data:`_IP_MAX_ITER` each).
    Returns the best certified point of each sample and the interior-point steps taken."""
    steps = torch.zeros_like(kkt, dtype=torch.long)
    y, nu, kkt = y.clone(), nu.clone(), kkt.clone()
    # From the batched solver's best pair, slightly inside; where that fails, cold from the
    # input with unit margins (each start certified Maros–Mészáros points the other missed).
    for cold in (False, True):
        i = (~(kkt <= tol) & (steps < max_iter)).nonzero().flatten()
        if i.numel() == 0:
            break
        di = data.take(i)
        certify = _IterateCertifier(di, x[i], sx[i], tol)
        y0, nu0 = (x[i], torch.zeros_like(nu[i])) if cold else (y[i], nu[i])
        budget = (max_iter[i] - steps[i]).clamp(max=_IP_MAX_ITER)
        steps[i] += interior_point(di.matrix(), di.c, di.eq, x[i], y0, nu0, max_iter=budget, certify=certify,
                                   margin=1.0 if cold else 1e-2)
        won = ~(kkt[i] <= certify.kkt)
        j = i[won]
        y[j], nu[j], kkt[j] = certify.y[won], certify.nu[won], certify.kkt[won]
    return y, nu, kkt, steps


class _IterateCertifier:
    """The ``certify`` callback of :func:`~polyproj.functional.interior_point.interior_point`
    (see :func:`_interior_point_finish`): keeps each sample's best certified pair (``y``, ``nu``,
    ``kkt``) and its previous iterate's relative slacks and multipliers."""

    def __init__(self, data, x, sx, tol):
        self.data, self.x, self.sx, self.tol = data, x, sx, tol
        self.y, self.nu = x.clone(), x.new_zeros(x.shape[0], data.K)
        self.kkt = torch.full_like(sx, float("inf"))
        self.previous = torch.full((x.shape[0], 2, data.K), float("nan"), dtype=x.dtype, device=x.device)

    def __call__(self, idx, ys, ns):
        d, tol = self.data.take(idx), self.tol
        xs, ss = self.x[idx], self.sx[idx]
        slack = (d.c - d.rows(ys)) / d.row_scales(ys)
        lam = ns / _scale(ss, ys)[:, None]
        yp, np_, kp = _face_certificate(d, xs, ss, ys, ns, d.eq | (slack <= lam), tol)
        before = self.previous[idx]
        has = (torch.isfinite(before).all(-1).all(-1) & (kp > tol)).nonzero().flatten()
        if has.numel():
            tiny = torch.finfo(xs.dtype).tiny
            shrink_s = slack[has].clamp_min(tiny) / before[has, 0].clamp_min(tiny)
            shrink_l = lam[has].clamp_min(tiny) / before[has, 1].clamp_min(tiny)
            tapia = d.eq | (shrink_s < shrink_l)
            yt, nt, kt = _face_certificate(d.take(has), xs[has], ss[has], ys[has], ns[has], tapia, tol)
            won = kt < kp[has]
            j = has[won]
            yp[j], np_[j], kp[j] = yt[won], nt[won], kt[won]
        self.previous[idx] = torch.stack([slack, lam], 1)
        won = ~(self.kkt[idx] <= kp)
        j = idx[won]
        self.y[j], self.nu[j], self.kkt[j] = yp[won], np_[won], kp[won]
        return kp <= tol


def active_rows(data: PolyhedronData, y, nu, z=None):
    """Rows treated as active by the backward: every equality row, and the inequality rows
    with slack ≤ τ times the set's scale or a positive certified multiplier (DESIGN §4,
    activity tolerance).  The slack is judged at the set's scale: the polished point is
    feasible on its face to rounding at that scale, whatever the size of the input.  ``z`` is
    ``C y`` where already known."""
    slack = data.c - (data.rows(y) if z is None else z)
    return data.eq | (slack <= _ACTIVE_TAU * data.row_scales(y)) | (nu > 0)


def solve_polyhedron(data: PolyhedronData, x: torch.Tensor, *, tol: float, max_iter: int = 500,
                     _rescale: bool = True, _interior: bool = True) -> SolveResult:
    """Project the rows of ``x`` (N, n), float64, onto the normalised polyhedron ``data``.

    Each outer round: semismooth Newton on φ_k, multiplier update, then polishing; a sample
    leaves as soon as its certified relative KKT residual is ≤ ``tol``.  A sample whose ALM
    stalls (penalty at its cap, no tenfold gain in :data:`_STALL_ROUNDS` rounds) is handed to the
    interior point (:func:`_interior_point_finish`), as is every sample left uncertified at the
    end; one the interior point cannot certify either returns to the ALM for the rest of its
    ``max_iter`` Newton steps (interior-point steps count towards them)."""
    N = x.shape[0]
    dev = x.device
    sx = x.abs().amax(-1) if x.shape[1] else x.new_zeros(N)
    kkt = x.new_zeros(N) if data.K == 0 else torch.full((N,), float("inf"), dtype=x.dtype, device=dev)
    steps = torch.zeros(N, dtype=torch.long, device=dev)
    y, nu = x.clone(), x.new_zeros(N, data.K)
    if data.K and N:
        alm = _ALMState(data, x, sx)
        everyone = torch.arange(N, device=dev)
        handed = alm.run(everyone, kkt, steps, tol, max_iter, handoff=_interior)
        y, nu, kkt = _rescue(data, x, sx, alm.y_best, alm.nu_best, kkt, tol, max_iter, _rescale)
        if _interior and not bool((kkt <= tol).all()):
            budget = (max_iter - steps).clamp_min(0)
            y, nu, kkt, ip_steps = _interior_point_finish(data, x, sx, y, nu, kkt, tol, budget)
            steps += ip_steps
            again = (handed & ~(kkt <= tol) & (steps < max_iter)).nonzero().flatten()
            if again.numel():
                # every sample's best pair so far (the interior point's where it certified): the
                # rescue below starts from all of them, and kkt is theirs
                alm.y_best, alm.nu_best = y.clone(), nu.clone()
                alm.run(again, kkt, steps, tol, max_iter, handoff=False)
                y, nu, kkt = _rescue(data, x, sx, alm.y_best, alm.nu_best, kkt, tol, max_iter, _rescale)
        # the final certificate, recomputed from the returned pair itself: no bookkeeping
        # between the phases can report a residual that is not the returned point's
        kkt = torch.maximum(kkt, kkt_residual(data, x, y, nu, sx))
    active = active_rows(data, y, nu)
    converged = (kkt <= tol) & torch.isfinite(y).all(-1)
    return SolveResult(y, active, nu, kkt, steps, converged)


def _rescue(data, x, sx, y, nu, kkt, tol, max_iter, rescale):
    """The ALM's best points, tidied (:func:`_tidy`) and, where still uncertified, solved on the
    face identified at the set's scale (:func:`_rescaled_face`, twice: the second round starts
    from the first's better point).  Returns copies."""
    y, nu, kkt = _tidy(data, x, sx, y.clone(), nu.clone(), kkt, tol)
    for _ in range(2 if rescale else 0):
        if bool((kkt <= tol).all()):
            break
        y, nu, kkt = _rescaled_face(data, x, sx, y, nu, kkt, tol, max_iter)
    return y, nu, kkt


class _ALMState:
    """The proximal ALM's iterates (``y``, ``ν``, penalty ρ, last primal residual, last polishing
    set) and each sample's best certified pair, kept so that samples can leave the rounds
    (handed to the interior point) and come back."""

    def __init__(self, data, x, sx):
        N, dev = x.shape[0], x.device
        self.data, self.x, self.sx, self.zx = data, x, sx, data.rows(x)
        self.y, self.nu = x.clone(), x.new_zeros(N, data.K)
        self.y_best, self.nu_best = self.y.clone(), self.nu.clone()
        self.rho = torch.full((N,), _RHO, dtype=x.dtype, device=dev)
        self.viol_prev = torch.full((N,), float("inf"), dtype=x.dtype, device=dev)
        self.last_set = torch.zeros(N, data.K, dtype=torch.bool, device=dev)

    def run(self, live, kkt, steps, tol, max_iter, *, handoff):
        """ALM rounds for the samples ``live`` until each is certified, has used ``max_iter``
        Newton steps, or (``handoff``) has stalled; updates ``kkt`` and ``steps`` in place.
        Returns the mask of the samples that left by stalling."""
        data, x, sx, zx = self.data, self.x, self.sx, self.zx
        y, nu, rho = self.y, self.nu, self.rho
        N = x.shape[0]
        handed = torch.zeros(N, dtype=torch.bool, device=x.device)
        stall = torch.zeros(N, dtype=torch.long, device=x.device)
        mark = kkt.clone()  # the residual the stall counter measures gains against
        for _ in range(max_iter):
            all_live = live.numel() == N
            xs, ss, zs, rs = (x, sx, zx, rho) if all_live else (x[live], sx[live], zx[live], rho[live])
            ds = data if all_live else data.take(live)
            budget = max(1, min(50, max_iter - int(steps[live].max())))
            ys, k = _inner_newton(ds, xs, y if all_live else y[live], nu if all_live else nu[live], ss, rs, budget)
            steps[live] += k
            r = ds.rows(ys) - ds.c
            ns = (nu if all_live else nu[live]) + rs[:, None] * r
            ns = torch.where(data.eq, ns, ns.clamp_min(0))
            viol = data.primal_violation(r)
            # Late rounds (ALM primal residual ≤ √tol relative to the set): the face is
            # (nearly) known and the extra certificates below are worth their solves.
            late = (torch.where(data.eq, r.abs(), r) <= _alm_tolerance(ds, ys, ss, tol**0.5)).all(-1)
            near = _alm_tolerance(ds, ys, ss, _POLISH_TAU)
            # Polishing depends only on the chosen rows: skip samples whose set is unchanged
            # since their last polish, unless the late-round certificates may now succeed.
            chosen = polishing_set(ds, r, ns, near)
            fresh = late | (chosen != self.last_set[live]).any(-1)
            self.last_set[live] = chosen
            yp, np_, kp = _certify_iterate(ds, xs, ss, zs, ys, ns, r, near, chosen, fresh, late, tol)
            better = kp < kkt[live]
            self.y_best[live] = torch.where(better[:, None], yp, self.y_best[live])
            self.nu_best[live] = torch.where(better[:, None], np_, self.nu_best[live])
            kkt[live] = torch.minimum(kp, kkt[live])
            y[live], nu[live] = ys, ns  # the ALM continues from (y_{k+1}, ν_{k+1})
            # penalty update: ×10 where the ALM primal residual fell by less than 4×
            slow = viol > 0.25 * self.viol_prev[live]
            rho[live] = torch.where(slow, (rs * _RHO_GROWTH).clamp_max(_RHO_MAX), rs)
            self.viol_prev[live] = viol
            # stall: penalty at its cap and no tenfold gain in the certified residual
            gained = kkt[live] <= 0.1 * mark[live]
            mark[live] = torch.where(gained, kkt[live], mark[live])
            stall[live] = torch.where(gained | (rho[live] < _RHO_MAX), 0, stall[live] + 1)
            stalled = ((stall[live] >= _STALL_ROUNDS) | (steps[live] >= _HANDOFF_STEPS)) if handoff else torch.zeros_like(gained)
            handed[live[stalled]] = True
            finished = (kkt[live] <= tol) | (steps[live] >= max_iter) | stalled
            live = live[~finished]
            if live.numel() == 0:
                break
        return handed
