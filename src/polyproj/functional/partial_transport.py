r"""Exact projection onto a partial transportation polytope (partial matchings when
``r = c = 1``).

Problem
-------
.. math:: \min_X \tfrac12\|X - Y\|_F^2 \quad\text{s.t.}\quad X \ge 0,\ X\mathbf 1 \le r,\
   X^\top\mathbf 1 \le c,\ \mathbf 1^\top X \mathbf 1 = k \qquad (0 \le k \le \min(\mathbf 1^\top r, \mathbf 1^\top c)).

Dual (α, β ≥ 0 for the row and column capacities, γ free for the total):

.. math:: θ(α, β, γ) = ½‖X‖^2 + r^\top α + c^\top β + kγ,\quad X = (Y − α\mathbf 1^\top − \mathbf 1β^\top − γ)_+,

    ∇θ = g = (r − X\mathbf 1,\ c − X^\top\mathbf 1,\ k − \mathbf 1^\top X\mathbf 1),

a convex piecewise quadratic under bounds.  Algorithm: projected semismooth Newton
(Bertsekas' two-metric projection, 1982, with the generalised Hessian of Li, Sun & Toh 2020):
each step fixes at zero the capacities whose multiplier is at most the residual while the
gradient pushes it down (the constraint is slack), takes the regularised Newton direction
``(H_FF + εI) d_F = −g_F`` on the others, with ``H`` the (m + n + 1)-square generalised Hessian

.. math:: H = \begin{bmatrix} D_r & Θ & d_r \\ Θ^\top & D_c & d_c \\ d_r^\top & d_c^\top & |Θ| \end{bmatrix},
   \qquad Θ = \mathbf 1[Y − α\mathbf 1^\top − \mathbf 1β^\top − γ > 0],

and moves to the exact minimiser of θ along ``d`` (a sorted breakpoint search, shared with the
transportation solver) before the first multiplier reaches zero.  It stops when the natural
residual ``(min(α, g_α), min(β, g_β), g_γ)`` is at most ``target`` relative to the capacities
(rows, columns) and to ``max(k, capacities)`` (the total).  Nonnegativity, dual feasibility
and stationarity hold by construction.  Written by hand for the same reason as the
transportation kernel: the batch is many small matrices, and H is small and dense (at most a
few hundred rows), so one batched Cholesky per step is the whole linear algebra.
"""

from __future__ import annotations

import torch

from .polyhedron import _ACTIVE_TAU, _ROUNDING_ULPS, line_search_root

_EPS = 1e-10  # Newton regularisation (H is dimensionless: counts of support entries)
_STALL = 5
_ROUNDING = 100.0
_FIRST_STAGE = 30.0  # continuation (see project_partial_transport)
_STAGE_FACTOR = 10.0
_STAGE_TOL = 1e-9
_ARMIJO = 1e-4
_DELTA = 1e-2  # the ε-active threshold is min(residual, _DELTA) times the capacities
_MAX_HALVINGS = 40


def _thresholds(W: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """τ (N, a) with ``Σ_b (W − τ)₊ = target`` for each row of ``W`` (N, a, b), ``target ≥ 0``
    (N, a); ``max_b W`` where the target is 0."""
    u = W.sort(-1, descending=True).values
    cand = (u.cumsum(-1) - target[..., None]) / torch.arange(1, u.shape[-1] + 1, dtype=u.dtype, device=u.device)
    count = (u > cand).sum(-1, keepdim=True).clamp_min(1)
    return cand.gather(-1, count - 1).squeeze(-1)


def _total_threshold(Y: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """γ with Σ (Y − γ)₊ = k per sample: :func:`_thresholds` of the whole matrix (the projection
    onto {X ≥ 0, ΣX = k}; Condat 2016)."""
    return _thresholds(Y.flatten(1)[:, None], k[:, None]).squeeze(1)


def _block_round(Y, v, rck, m):
    """One round of exact block-coordinate minimisation of θ: every α_i (the rows are
    independent given β, γ) as ``max(0, τ_i)`` with ``Σ_j (Y − β − γ − τ_i)₊ = r_i``, then every
    β_j likewise, then γ for the total.  Each block is minimised exactly, so θ never increases:
    the fallback where the Newton step finds no sufficient decrease."""
    v = v.clone()
    n = Y.shape[2]
    W = Y - v[:, None, m:-1] - v[:, -1:, None]
    v[:, :m] = _thresholds(W, rck[:, :m]).clamp_min(0)
    W = Y - v[:, :m, None] - v[:, -1:, None]
    v[:, m:m + n] = _thresholds(W.mT, rck[:, m:m + n]).clamp_min(0)
    v[:, -1] = _total_threshold(Y - v[:, :m, None] - v[:, None, m:-1], rck[:, -1])
    return v


def _hessian(theta: torch.Tensor) -> torch.Tensor:
    """The generalised Hessian H (N, m + n + 1, m + n + 1) on the support ``theta``."""
    N, m, n = theta.shape
    dr, dc = theta.sum(2), theta.sum(1)
    p = m + n + 1
    H = theta.new_zeros(N, p, p)
    H[:, :m, m:m + n] = theta
    H[:, m:m + n, :m] = theta.mT
    H[:, :m, -1] = H[:, -1, :m] = dr
    H[:, m:m + n, -1] = H[:, -1, m:m + n] = dc
    H[:, -1, -1] = dr.sum(1)
    H.diagonal(dim1=1, dim2=2)[:, : m + n] = torch.cat([dr, dc], 1)
    return H


def _sums(X):
    """Row sums, column sums and total of X (N, m, n), as one (N, m + n + 1) tensor."""
    return torch.cat([X.sum(2), X.sum(1), X.sum((1, 2))[:, None]], 1)


def _targets(r, c, k, N):
    """``(r, c, k)`` per sample, as one (N, m + n + 1) tensor."""
    return torch.cat([r.expand(N, r.shape[-1]), c.expand(N, c.shape[-1]), k.expand(N)[:, None]], 1)


def _state(Y, v, rck, m):
    """``Z``, ``X = Z₊`` and the dual gradient ``g`` at the duals ``v = (α, β, γ)``."""
    Z = Y - v[:, :m, None] - v[:, None, m:-1] - v[:, -1:, None]
    X = Z.clamp_min(0)
    return Z, X, rck - _sums(X)


def _scales(r, c, k, Y):
    """Per-dual scales (N, m + n + 1) of the natural residual: the capacities for the rows and
    columns, ``max(k, capacities)`` for the total (floored at eps·‖Y‖∞); and the first alone."""
    N, m, n = Y.shape
    caps = torch.maximum(r.expand(N, m).abs().amax(-1), c.expand(N, n).abs().amax(-1))
    floor = torch.finfo(Y.dtype).eps * Y.abs().flatten(1).amax(-1)
    s_rc = torch.maximum(caps, floor).clamp_min(1e-300)
    s_k = torch.maximum(torch.maximum(caps, k.expand(N).abs()), floor).clamp_min(1e-300)
    return torch.cat([s_rc[:, None].expand(N, m + n), s_k[:, None]], 1), s_rc


def _residual_of(X, v, r, c, k):
    """The natural residual of :func:`_newton` at a primal point ``X`` and duals ``v``."""
    N, m, n = X.shape
    g = _targets(r, c, k, N) - _sums(X)
    return _natural_residual(v, g, _scales(r, c, k, X)[0], _bounded(m, n, X.device))


def _bounded(m, n, device):
    """Which duals are sign-constrained: α and β, not γ."""
    out = torch.ones(m + n + 1, dtype=torch.bool, device=device)
    out[-1] = False
    return out


def _dual_value(X, v, rck):
    """θ = ½‖X‖² + (r, c, k)ᵀ(α, β, γ)."""
    return 0.5 * X.flatten(1).square().sum(-1) + (rck * v).sum(-1)


def _natural_residual(v, g, scale, bounded):
    """``|min(v, g)|`` on the bounded duals, ``|g|`` on γ, divided by ``scale`` (N, p); max per sample."""
    F = torch.where(bounded, torch.minimum(v, g), g)
    return (F.abs() / scale).amax(-1)


def project_partial_transport(Y, r, c, k, *, tol: float, max_iter: int = 100, target: float | None = None):
    """Returns ``(X, duals (α, β, γ) as (N, m + n + 1), residual, iterations)`` for a batch ``Y``
    (N, m, n) float64 and shared or per-sample ``r`` (m,)/(N, m), ``c`` (n,)/(N, n), ``k`` () or (N,).

    Inputs far larger than the capacities are solved by continuation in the input's scale:
    ``λ Y`` for ``λ`` growing by :data:`_STAGE_FACTOR` from :data:`_FIRST_STAGE` times the
    capacities to 1, each stage started from the previous duals times the growth factor.  (The
    transportation solver used the same continuation before its merge step replaced it.)"""
    N, m, n = Y.shape
    if N == 0:
        return Y.clone(), Y.new_zeros(0, m + n + 1), Y.new_zeros(0), torch.zeros(0, dtype=torch.long, device=Y.device)
    k = k.expand(N).to(Y.dtype)
    caps = torch.maximum(r.expand(N, m).abs().amax(-1), c.expand(N, n).abs().amax(-1))
    ratio = Y.abs().flatten(1).amax(-1) / caps.clamp_min(1e-300)
    lam = (_FIRST_STAGE / ratio).clamp(max=1.0)
    iters = torch.zeros(N, dtype=torch.long, device=Y.device)
    start = None
    while True:
        final = bool((lam == 1).all())
        X, v, res, it = _newton(Y * lam[:, None, None], r, c, k, tol=tol if final else _STAGE_TOL,
                                max_iter=max(1, max_iter - int(iters.max())),
                                target=target if final else _STAGE_TOL, start=start)
        iters += it
        if final:
            # restored where that lowers the residual (an inconsistent face system, e.g. a row
            # at capacity whose support is empty, would not)
            Xr = restore_feasibility(X, v, r, c, k)
            res_r = _residual_of(Xr, v, r, c, k)
            better = res_r < res
            return torch.where(better[:, None, None], Xr, X), v, torch.where(better, res_r, res), iters
        grow = (lam * _STAGE_FACTOR).clamp(max=1.0)
        start, lam = v * (grow / lam)[:, None], grow


def _newton(Y, r, c, k, *, tol, max_iter, target=None, start=None):
    """The projected Newton iteration of :func:`project_partial_transport` from ``start`` (or
    from α = β = 0 and the total's threshold γ)."""
    N, m, n = Y.shape
    target = tol if target is None else min(target, tol)
    dev, dt = Y.device, Y.dtype
    p = m + n + 1
    rck = _targets(r, c, k, N)
    scale, s_rc = _scales(r, c, k, Y)
    bounded = _bounded(m, n, dev)

    if start is None:
        v = Y.new_zeros(N, p)
        v[:, -1] = _total_threshold(Y, k)
    else:  # the previous stage's (α, β), and γ re-solved for the total exactly
        v = start.clone()
        v[:, -1] = _total_threshold(Y - v[:, :m, None] - v[:, None, m:-1], k)
    out_X, out_v = torch.empty_like(Y), torch.empty_like(v)
    out_res = torch.full((N,), float("inf"), dtype=dt, device=dev)
    out_it = torch.zeros(N, dtype=torch.long, device=dev)
    live = torch.arange(N, device=dev)
    Yl, rl, scl = Y, rck, scale
    floor = _ROUNDING * (m + n) * torch.finfo(dt).eps * Y.abs().flatten(1).amax(-1) / s_rc
    Z, X, g = _state(Yl, v, rl, m)
    res = _natural_residual(v, g, scl, bounded)
    best, stale = res.clone(), torch.zeros_like(res)
    eye = torch.eye(p, dtype=dt, device=dev)
    for it in range(max_iter + 1):
        # stalled at tol or at the rounding floor of Z = Y − … (removed by restore_feasibility)
        done = (res <= target) | ((stale >= _STALL) & (res <= torch.maximum(floor, torch.full_like(floor, tol))))
        if it == max_iter:
            done = torch.ones_like(done)
        if bool(done.any()):
            idx = live[done]
            out_X[idx], out_v[idx], out_res[idx], out_it[idx] = X[done], v[done], res[done], it
            keep = ~done
            live, Yl, rl, scl, floor, v, Z, X, g, res, best, stale = (
                t[keep] for t in (live, Yl, rl, scl, floor, v, Z, X, g, res, best, stale))
            if live.numel() == 0:
                break
        # Bertsekas' ε-active bounds: multipliers within δ of zero whose gradient pushes them
        # down (the capacity is slack) go to zero; the others take a Newton step on their own
        # block of H.
        delta = (torch.clamp(res, max=_DELTA) * scl.amin(-1))[:, None]
        fixed = bounded & (v <= delta) & (g > 0)
        theta = (Z > 0).to(dt)
        H = _hessian(theta)
        free = (~fixed).to(dt)
        diag = H.diagonal(dim1=1, dim2=2).clamp_min(1.0)
        Hm = H * free[:, :, None] * free[:, None, :] + torch.diag_embed(fixed.to(dt) * diag) + _EPS * eye
        L, info = torch.linalg.cholesky_ex(Hm)
        # held multipliers move straight to zero (a descent direction: their gradient is positive)
        d = -torch.cholesky_solve((g * free).unsqueeze(-1), L).squeeze(-1) - v * fixed
        bad = info != 0
        if bool(bad.any()):  # not expected (Hm is positive definite); fall back to a gradient step
            d = torch.where(bad[:, None], -g / diag, d)
        # The exact minimiser t* of θ along the line v + t d (piecewise quadratic in t), then
        # the projected arc v(t) = P(v + t d) from t*, halving until Armijo's condition for
        # projected steps holds (Bertsekas 1982): θ(v(t)) ≤ θ(v) + σ gᵀ(v(t) − v).
        D = d[:, :m, None] + d[:, None, m:-1] + d[:, -1:, None]
        lin = (rl * d).sum(-1)
        t, _ = line_search_root(lin, torch.zeros_like(lin), Z.flatten(1), -D.flatten(1),
                                torch.zeros(m * n, dtype=torch.bool, device=dev))
        t = torch.where(torch.isfinite(t) & (t > 0), t, torch.ones_like(t))
        theta0 = _dual_value(X, v, rl)
        v_new = v.clone()
        pend = torch.arange(v.shape[0], device=dev)
        for _ in range(_MAX_HALVINGS):
            cand = v[pend] + t[pend, None] * d[pend]
            cand = torch.where(bounded, cand.clamp_min(0), cand)
            _, Xc, _ = _state(Yl[pend], cand, rl[pend], m)
            ok = _dual_value(Xc, cand, rl[pend]) <= theta0[pend] + _ARMIJO * (g[pend] * (cand - v[pend])).sum(-1)
            v_new[pend[ok]] = cand[ok]
            pend = pend[~ok]
            if pend.numel() == 0:
                break
            t[pend] = 0.5 * t[pend]
        # No sufficient decrease along d, or no progress for _STALL steps above tol: a round of
        # exact block-coordinate minimisation instead (a descent whatever H's conditioning).
        slow = ((stale >= _STALL) & (res > tol)).nonzero().squeeze(1)
        pend = torch.unique(torch.cat([pend, slow]))
        if pend.numel():
            v_new[pend] = _block_round(Yl[pend], v[pend], rl[pend], m)
        v = v_new
        Z, X, g = _state(Yl, v, rl, m)
        res = _natural_residual(v, g, scl, bounded)
        stale = torch.where(res <= 0.5 * best, torch.zeros_like(stale), stale + 1)
        best = torch.minimum(best, res)
        if pend.numel():  # Newton gets _STALL more steps from the block-coordinate point
            stale[pend], best[pend] = 0, res[pend]
    return out_X, out_v, out_res, out_it


def partial_transport_active(X, Y, r, c, scale):
    """Active constraints at ``X``: the entries at zero ``(N, m, n)``, the rows and columns at
    capacity ``(N, m)``, ``(N, n)`` (slack at most ``_ACTIVE_TAU`` times the set's ``scale`` plus
    a few ulps of ‖Y‖∞)."""
    tau = _ACTIVE_TAU * scale + _ROUNDING_ULPS * torch.finfo(Y.dtype).eps * Y.abs().flatten(1).amax(-1)
    zeros = X <= tau[:, None, None]
    rows = r - X.sum(2) <= tau[:, None]
    cols = c - X.sum(1) <= tau[:, None]
    return zeros, rows, cols


def partial_transport_product(support, rows, cols, G):
    """HS-Jacobian product ``J(G) = Θ ⊙ (G − a1ᵀ − 1bᵀ − γ)`` (Θ = support, ``a`` zero off the
    rows at capacity, ``b`` off the columns at capacity): the projection of G onto the null
    space of the active constraints, with ``(a, b, γ)`` the minimum-norm solution of
    ``H_AA (a, b, γ) = ((Θ⊙G)1, (Θ⊙G)ᵀ1, 1ᵀ(Θ⊙G)1)`` restricted to the active rows ``A`` (H
    singular along one direction per connected piece of the support), by iterated Tikhonov
    through one Cholesky.  Returns ``(J(G), (a, b, γ))``; the duals are also the gradients for
    the capacities and the total."""
    theta = support.to(G.dtype)
    act = torch.cat([rows, cols, torch.ones_like(rows[:, :1])], 1)
    w = _face_solve(theta, act, _sums(theta * G))
    return _on_support(theta, G, w), w


def _on_support(theta, G, w):
    """``Θ ⊙ (G − a1ᵀ − 1bᵀ − γ)`` for ``w = (a, b, γ)``."""
    m = G.shape[1]
    return theta * (G - w[:, :m, None] - w[:, None, m:-1] - w[:, -1:, None])


def _face_solve(theta, act, rhs):
    """Minimum-norm ``w`` (zero off ``act``) with ``H_AA w_A = rhs_A``: H the generalised Hessian
    on the support ``theta``, ``A`` the active rows, columns and the total (``act`` (N, m + n + 1)
    bool).  H is singular along one direction per connected piece of the support: iterated
    Tikhonov through one Cholesky of ``H_AA + δI``."""
    from ._masked_linalg import _iterated_tikhonov

    a = act.to(theta.dtype)
    H = _hessian(theta) * a[:, :, None] * a[:, None, :] + torch.diag_embed(1 - a)
    delta = 1e-6 * H.diagonal(dim1=1, dim2=2).amax(-1).clamp_min(1.0)
    eye = torch.eye(H.shape[-1], dtype=H.dtype, device=H.device)
    L, _ = torch.linalg.cholesky_ex(H + delta[:, None, None] * eye)
    solve = lambda b: torch.cholesky_solve(b.unsqueeze(-1), L).squeeze(-1)  # noqa: E731
    matvec = lambda x: (H @ x.unsqueeze(-1)).squeeze(-1)  # noqa: E731
    w, _ = _iterated_tikhonov(solve, matvec, rhs * a, max_refine=30, rtol=1e-13)
    return w * a


def restore_feasibility(X, v, r, c, k):
    """The Newton iterate corrected on its face so that the capacities that carry a multiplier
    and the total hold to rounding at the set's scale: ``X ← (X − Θ ⊙ (a1ᵀ + 1bᵀ + γ))₊`` with
    ``(a, b, γ)`` the minimum-norm solution of ``H_AA (a, b, γ) = (X1 − r, Xᵀ1 − c, 1ᵀX1 − k)_A``
    — numbers at the set's scale, whereas ``X = (Y − α1ᵀ − 1βᵀ − γ)₊`` carries the rounding of
    ``Y`` (10⁻⁸ of the capacities at inputs 10⁸ times larger)."""
    N, m, n = X.shape
    theta = (X > 0).to(X.dtype)
    act = torch.cat([v[:, : m + n] > 0, torch.ones_like(v[:, :1], dtype=torch.bool)], 1)
    w = _face_solve(theta, act, _sums(X) - _targets(r, c, k, N))
    return (X + _on_support(theta, torch.zeros_like(X), w)).clamp_min(0)  # X − Θ ⊙ (a1ᵀ + 1bᵀ + γ)
