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
through its min(m, n)×min(m, n) Schur complement by a batched LU; the full step is taken where
it halves the residual, otherwise the exact minimiser of θ along ``d`` (a sorted breakpoint
search); quadratic convergence once the support settles.  ε = min(1e-11, ‖∇θ‖∞ / s) + 1e-12
with s the marginals' scale.  Where the kernel part of ∇θ is only rounding noise it is removed
from the step (see the loop).

Far from the set (inputs ≫ the marginals) the support is nearly a spanning forest and splits
into components whose marginals are out of balance; θ is linear along their gauge directions
``(1_{R_k}, −1_{C_k})``, the Newton step there is ``∇θ/ε``, and the exact line search stops it
just past the first entry that joins two components: one join per Newton step (45–60 steps at
64×64 with random marginals from 10⁴× up, even with continuation in the input's scale).  Each
step therefore first finds the support's components (:func:`support_components`) and, where
some are out of balance, takes that same path of joins itself (:func:`_merge_components`,
O(K) per join on the K components' block maxima, no factorisation): the Newton step that
follows sees a support whose components are all in balance.  The Newton steps start after a
few rounds of block-coordinate ascent (:func:`_warm_rounds`).  Nonnegativity and
complementarity hold by construction; the iteration stops when the marginals hold to
``target`` relative.

Written by hand because it is the kernel of the Birkhoff/transportation layers: the batch is
10²–10⁶ small matrices, so the cost is the number of full-size tensor operations per step.
Each step therefore carries ``Z = Y − α1ᵀ − 1βᵀ``, ``X`` and the marginal residual
from the line search's accepted trial into the next step instead of recomputing them.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .polyhedron import _ACTIVE_TAU, _ROUNDING_ULPS, line_search_root

_SHORTEST_STEP = 2.0**-30  # taken where the exact search finds no decrease representable
_KERNEL_FREE_BELOW = 1e-6
_EPS_CAP = 1e-11  # Newton regularisation: ε = min(_EPS_CAP, relative residual) + 1e-12 (module docstring)
_STALL = 5
_MERGE = True  # the merge step (:func:`_merge_components`); False leaves the plain Newton iteration
_HOST_JOINS = True  # on the CPU the merge step's joins run in NumPy (False: in torch, as on other devices)
_MERGE_ELEMENTS = 2**22  # the merge step runs on at most this many block entries (samples × (K + 1)²) at once
_ROUNDING = 100.0


class SchurLaplacian:
    r"""``(L + εI)`` for the signless Laplacian ``L`` of the support ``Θ`` (N, m, n), factored
    through the Schur complement of its diagonal row block,
    ``S = D_c + ε − Θᵀ (D_r + ε)⁻¹ Θ`` (n×n, positive definite for ε > 0): one small batched LU
    per sample instead of an (m+n)×(m+n) factorisation.  ``eps`` has shape (N,)."""

    def __init__(self, theta: torch.Tensor, eps: torch.Tensor):
        self.theta, self.m = theta, theta.shape[1]
        self.deg_r, self.deg_c = theta.sum(2), theta.sum(1)
        self.dr = self.deg_r + eps[:, None]
        self.dc = self.deg_c + eps[:, None]
        self.T = theta / self.dr[:, :, None]
        S = torch.baddbmm(torch.diag_embed(self.dc), theta.mT, self.T, alpha=-1.0)
        self.lu, self.piv, _ = torch.linalg.lu_factor_ex(S)

    def solve(self, v: torch.Tensor) -> torch.Tensor:
        """``(L + εI)⁻¹ v`` for ``v`` of shape (N, m + n)."""
        va, vb = v[:, : self.m], v[:, self.m :]
        rb = torch.baddbmm(vb.unsqueeze(-1), self.T.mT, va.unsqueeze(-1), alpha=-1.0)
        xb = torch.linalg.lu_solve(self.lu, self.piv, rb)
        xa = torch.baddbmm(va.unsqueeze(-1), self.theta, xb, alpha=-1.0).squeeze(-1) / self.dr
        return torch.cat([xa, xb.squeeze(-1)], 1)

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        """``L v`` (without ε) for ``v`` of shape (N, m + n)."""
        va, vb = v[:, : self.m], v[:, self.m :]
        top = torch.baddbmm((self.deg_r * va).unsqueeze(-1), self.theta, vb.unsqueeze(-1))
        bottom = torch.baddbmm((self.deg_c * vb).unsqueeze(-1), self.theta.mT, va.unsqueeze(-1))
        return torch.cat([top, bottom], 1).squeeze(-1)


def drop_gauge(v: torch.Tensor, m: int) -> torch.Tensor:
    """``v`` (N, m + n) without its component along ``(1_m, −1_n)``, the kernel direction of
    the Laplacian shared by every support (α1ᵀ + 1βᵀ is unchanged along it)."""
    shift = (v[:, :m].sum(1, keepdim=True) - v[:, m:].sum(1, keepdim=True)) / v.shape[1]
    return torch.cat([v[:, :m] - shift, v[:, m:] + shift], 1)


def project_transport(Y: torch.Tensor, r: torch.Tensor, c: torch.Tensor, *, tol: float, max_iter: int = 100,
                      target: float | None = None):
    """Returns ``(X, alpha, beta, kkt, iterations)`` for a batch ``Y`` (N, m, n), float64;
    the marginals ``r`` (m,) or (N, m) and ``c`` (n,) or (N, n) are shared or per sample.

    Each sample iterates until its relative marginal residual ``kkt`` is ≤ ``target``
    (default ``tol``), or is ≤ ``tol`` and has not halved in the last few steps (rounding
    floor), or ``max_iter`` steps in all."""
    N, m, n = Y.shape
    target = tol if target is None else min(target, tol)
    if N == 0:
        empty = Y.new_zeros(0)
        return Y.clone(), Y.new_zeros(0, m), Y.new_zeros(0, n), empty, empty.long()
    if n > m:  # the Schur complement is taken on the column side: keep it the smaller one
        X, beta, alpha, kkt, iters = project_transport(Y.mT, c, r, tol=tol, max_iter=max_iter, target=target)
        return X.mT, alpha, beta, kkt, iters
    rc = torch.cat([r.expand(N, m), c.expand(N, n)], 1)
    X, ab, kkt, iters = _newton(Y, rc, m, n, tol=tol, max_iter=max_iter, target=target)
    return X, ab[:, :m], ab[:, m:], kkt, iters


def _newton(Y, rc, m, n, *, tol, max_iter, target):
    """The semismooth Newton iteration of :func:`project_transport` (``m ≥ n``), from the
    block-coordinate warm start.  Returns ``(X, (α, β), kkt, iterations)``."""
    N = Y.shape[0]
    dev, dt = Y.device, Y.dtype
    # Residuals are judged at the scale of the set (its marginals), never at that of Y: a far
    # input must not loosen feasibility.  Z is updated in place from step to step, so once the
    # support settles its entries — and the marginals of X = Z₊ — are formed at the set's scale
    # even when Y is 10⁸ times larger (the rounding of the early steps only perturbs Y).
    s = torch.maximum(rc.abs().amax(-1), torch.finfo(dt).eps * Y.abs().flatten(1).amax(-1)).clamp_min(1e-300)
    # Start: the projection onto the affine hull (nonnegativity ignored), then a few rounds of
    # block-coordinate ascent on θ with one Newton (Michelot) step per block: the row
    # thresholds α with β fixed, then the column thresholds β.  A round costs a few
    # elementwise passes, far less than a Newton step with its factorisation, and brings the
    # support close to its final size (which otherwise takes the first Newton steps).
    alpha = (Y.sum(2) - rc[:, :m]) / n
    beta = (Y.sum(1) - rc[:, m:] - alpha.sum(1, keepdim=True)) / m
    Z = Y - alpha[:, :, None] - beta[:, None, :]
    Xp, ind = torch.empty_like(Z), torch.empty_like(Z)  # reused: these passes are memory-bound
    for _ in range(_warm_rounds(n)):
        da = _michelot_step(Z, rc[:, :m], 2, Xp, ind)
        Z.sub_(da[:, :, None])
        db = _michelot_step(Z, rc[:, m:], 1, Xp, ind)
        Z.sub_(db[:, None, :])
        alpha, beta = alpha + da, beta + db
    ab = torch.cat([alpha, beta], 1)
    X_out = torch.empty_like(Y)
    ab_out = torch.empty_like(ab)
    iters = torch.zeros(N, dtype=torch.long, device=dev)
    kkt = torch.full((N,), float("inf"), dtype=dt, device=dev)
    # State of the samples still iterating (``live``): Z = Y − α1ᵀ − 1βᵀ, X = Z₊, the dual
    # gradient g = (r, c) − marginals(X), res = ‖g‖∞ / s.
    live = torch.arange(N, device=dev)
    X, g, res = _trial_point(Z, rc, s)
    rc_l, s_l = rc, s
    best, stale = res.clone(), torch.zeros_like(res)  # best residual so far, steps since it last halved
    balanced_support = torch.ones_like(Z, dtype=torch.bool)  # a support whose components were in balance
    # Samples whose last step was not a full Newton step or had a kernel part above rounding:
    # signs that the support may have split into components out of balance.
    suspect = torch.zeros_like(res, dtype=torch.bool)
    for it in range(max_iter + 1):
        done = (res <= target) | ((res <= tol) & (stale >= _STALL)) if it < max_iter else torch.ones_like(res, dtype=torch.bool)
        if bool(done.any()):
            idx = live[done]
            X_out[idx], ab_out[idx], kkt[idx], iters[idx] = X[done], ab[done], res[done], it
            keep = ~done
            live, Z, X, g, res, ab, rc_l, s_l, best, stale, balanced_support, suspect = (
                t[keep] for t in (live, Z, X, g, res, ab, rc_l, s_l, best, stale, balanced_support, suspect))
            if live.numel() == 0:
                break
        theta = torch.sign(X)  # 1 on the support X > 0, 0 elsewhere
        if _MERGE:
            _join_split_supports(theta, Z, X, g, res, ab, rc_l, s_l, suspect, balanced_support)
        eps = res.clamp(max=_EPS_CAP) + 1e-12
        lap = SchurLaplacian(theta, eps)
        d = lap.solve(-g)
        # Near the solution ε is tiny and (L + εI)⁻¹ amplifies the rounding noise of ∇θ along
        # the kernel of L (one direction per connected component of the support) by 1/ε; the
        # shifted components flip the weakly active entries between them and the residual
        # stalls.  There d ← (L + εI)⁻¹ L d: the same step on range(L) (to a factor
        # λ/(λ + ε)), without the kernel part — but only where that kernel part is noise.  It
        # comes from the kernel part of ∇θ, which is −ε (d − (L + εI)⁻¹ L d); where that is
        # above rounding, components are truly out of balance and must move.
        small = eps < _KERNEL_FREE_BELOW
        if bool(small.any()):
            d_range = lap.solve(lap.matvec(d))
            g_kernel = (eps[:, None] * (d - d_range)).abs().amax(1)
            noise = g_kernel <= _kernel_noise(m, n, s_l)
            d = torch.where((small & noise)[:, None], d_range, d)
        d = drop_gauge(d, m)  # a gauge change: X is unchanged along it
        # The full step where it halves the residual ‖∇θ‖∞ (the quadratic phase, and near the
        # solution where θ's decrease is below rounding).
        lin = (rc_l * d).sum(-1)
        da, db = d[:, :m, None], d[:, None, m:]
        Zt = Z - da - db
        Xt, gt, rest = _trial_point(Zt, rc_l, s_l)
        passed = rest <= 0.5 * res
        if bool(passed.all()):
            ab = ab + d
        else:
            # Elsewhere the exact minimiser of θ along d (never worse than the full step).
            # Far from the set (inputs ≫ the marginals) the support graph splits into many
            # components, θ is linear along the kernel of L, and the regularised step ∇θ/ε
            # there is too short or too long by orders of magnitude: θ is piecewise quadratic
            # along d, and the breakpoint search goes to the next entries that enter or leave
            # the support in one step, however far (backtracking from t = 1 took hundreds of
            # steps at inputs 10⁴× the marginals).  Only the samples that need it are searched.
            t = torch.ones_like(res)
            pend = (~passed).nonzero().squeeze(1)
            Zp, Dp = Z[pend], (da[pend] + db[pend]).expand(-1, m, n)
            tp, _ = line_search_root(lin[pend], torch.zeros_like(lin[pend]), Zp.flatten(1), -Dp.flatten(1),
                                     torch.zeros(m * n, dtype=torch.bool, device=dev))
            tp = torch.where(tp > 0, tp, torch.full_like(tp, _SHORTEST_STEP))
            Zs = Zp - tp[:, None, None] * Dp
            Xs, gs, ress = _trial_point(Zs, rc_l[pend], s_l[pend])
            Zt[pend], Xt[pend], gt[pend], rest[pend], t[pend] = Zs, Xs, gs, ress, tp
            ab = torch.addcmul(ab, t[:, None], d)
        suspect = ~passed
        if bool(small.any()):
            suspect |= small & ~noise
        Z, X, g, res = Zt, Xt, gt, rest
        stale = torch.where(res <= 0.5 * best, 0.0, stale + 1)
        best = torch.minimum(best, res)
    return X_out, ab_out, kkt, iters


def _join_split_supports(theta, Z, X, g, res, ab, rc, s, suspect, balanced_support):
    """Before a Newton step: where the support graph ``theta`` splits into components out of
    balance, the merge step (:func:`_merge_components`) joins them; ``theta``, the iterate
    ``(Z, X, g, res, ab)`` and ``balanced_support`` are updated in place.

    A support that kept every edge of one whose components were in balance has them in balance
    too (a component's imbalance is Σ r − Σ c over its nodes), so only the others are checked,
    and only where the support has fewer than m + n − 1 entries (then it is split) or the last
    step gave a sign of a split (``suspect``: not a full Newton step, or a kernel part above
    rounding)."""
    N, m, n = theta.shape
    dt, dev = Z.dtype, Z.device
    cand = suspect | (theta.flatten(1).sum(1) < m + n - 1)
    if not bool(cand.any()):
        return
    ci = cand.nonzero().squeeze(1)
    support = theta[ci] > 0
    lost = (balanced_support[ci] & ~support).flatten(1).any(1)
    ci, support = ci[lost], support[lost]
    if not ci.numel():
        return
    noise = _kernel_noise(m, n, s[ci])
    comp, K = support_components(support)
    signed = torch.cat([g[ci, :m], -g[ci, m:]], 1)
    imbalance = torch.zeros(len(ci), K, dtype=dt, device=dev).scatter_add_(1, comp, signed)
    size = torch.zeros_like(imbalance).scatter_add_(1, comp, torch.ones_like(signed))
    out = (imbalance.abs() > noise[:, None] * size).any(1)
    if bool(out.any()):
        mi, sel = ci[out], out.nonzero().squeeze(1)
        Zi = Z[mi]
        Zm, dab, jm = torch.empty_like(Zi), ab.new_empty(len(mi), m + n), torch.empty_like(Zi, dtype=torch.bool)
        # In chunks: the join state is (K + 1)² per sample, up to ~4× the input's m·n.
        for part in torch.arange(len(mi), device=dev).split(max(1, _MERGE_ELEMENTS // (K + 1) ** 2)):
            Zm[part], dab[part], jm[part] = _merge_components(
                Zi[part], comp[sel[part]], imbalance[sel[part]], size[sel[part]], m, noise[sel[part]])
        Z[mi], ab[mi] = Zm, ab[mi] + dab
        X[mi], g[mi], res[mi] = _trial_point(Zm, rc[mi], s[mi])
        theta[mi] = torch.where(jm, 1.0, theta[mi])  # the joined entries, at zero
    balanced_support[ci] = theta[ci] > 0


def _merge_components(Z, comp, imbalance, size, m, noise):
    r"""The merge step, for samples whose support graph splits into components out of balance.

    Each component ``k`` (numbered ``comp``: rows ``R_k``, columns ``C_k``, ``s_k`` nodes) has
    the imbalance ``b_k = Σ_{R_k} ∇_α θ − Σ_{C_k} ∇_β θ`` (= ``Σ_{R_k} r − Σ_{C_k} c``: no mass
    leaves it), and θ is linear along its gauge direction ``(1_{R_k}, −1_{C_k})``.  The step
    moves every component's gauge at the velocity ``−b_k / s_k`` (the kernel part of the Newton
    direction, ``−P_ker ∇θ / ε``, rescaled by ε) until an entry between two components reaches
    zero; the two then move as one, with the summed imbalance, and so on until the components
    still apart are in balance.  This is the path the Newton iteration itself follows there —
    each of its steps joins the first pair, as the curvature the joining entry adds (∝ 1/ε²)
    stops the exact line search just past it — without a factorisation per join.  X does not
    change (entries join at zero) and θ falls linearly between joins.  Components in balance
    to rounding (``|b_k| ≤ noise · s_k``) stay where they are: a transport solution's
    components are all in balance.

    Returns ``(Z, Δ(α, β), joined)``; ``joined`` marks the entries that joined, which the
    Newton step that follows takes into its support."""
    N, _, n = Z.shape
    dev, dt = Z.device, Z.dtype
    K = imbalance.shape[1]
    # The joins depend on the entries only through each block (rows of k) × (columns of l):
    # within it every entry moves at the same rate, so the first to reach zero is the block's
    # largest.  The process runs on these K × K block maxima M: a join costs O(K), not O(mn).
    # Index K is a spare component that never moves: samples with nothing left to join "join"
    # it with itself, so every update runs on the whole batch without selecting samples.
    cR, cC = comp[:, :m], comp[:, m:]
    cross = cR[:, :, None] != cC[:, None, :]
    K1 = K + 1
    M = torch.full((N, K1 * K1), float("-inf"), dtype=dt, device=dev).scatter_reduce_(
        1, (cR[:, :, None] * K1 + cC[:, None, :]).flatten(1), torch.where(cross, Z, float("-inf")).flatten(1), "amax")
    M = M.view(N, K1, K1)
    pad = torch.zeros(N, 1, dtype=dt, device=dev)
    imbalance, size = torch.cat([imbalance, pad], 1), torch.cat([size, pad], 1)
    # M holds each block's maximum at gauge shift zero: its value now is M + shift_l − shift_k,
    # and its absolute hitting time stays fixed until k or l joins another component — so a
    # join updates one row and one column of the hitting times H, and the next join is H's
    # minimum.  A component that joins another keeps, in ``offset``, its shift minus the
    # other's at that moment; ``parent`` records the join.
    shift = torch.zeros(N, K1, dtype=dt, device=dev)  # each component's gauge move so far
    offset = torch.zeros(N, K1, dtype=dt, device=dev)
    parent = torch.arange(K1, device=dev).expand(N, -1).contiguous()
    bs = torch.stack([imbalance, size], -1)  # (N, K1, 2)
    # The joins are sequential, about 40 small array operations each: on the CPU they run in
    # NumPy on the same memory (a few times less overhead per operation than torch's dispatch),
    # elsewhere in torch; the code below is written once for both.
    xp = np if Z.device.type == "cpu" and _HOST_JOINS else torch
    if xp is np:
        M, shift, offset, parent, bs, noise = (t.numpy() for t in (M, shift, offset, parent, bs, noise.contiguous()))
    _join(xp, M, shift, offset, parent, bs, noise, K)
    if xp is np:
        shift, offset, parent = (torch.from_numpy(a) for a in (shift, offset, parent))
    # Each node moved with its component, then with the ones it joined: follow the joins to the
    # last, adding the offsets (pointer jumping).
    while True:
        up = parent.gather(1, parent)
        offset = offset + offset.gather(1, parent) * (up != parent)
        if torch.equal(up, parent):
            break
        parent = up
    total = (shift.gather(1, parent) + offset).gather(1, comp)  # (N, m + n)
    dab = torch.cat([total[:, :m], -total[:, m:]], 1)  # α_i moves by i's shift, β_j by minus j's
    final = parent.gather(1, comp)
    Zs = Z - dab[:, :m, None] - dab[:, None, m:]
    tol = 8 * torch.finfo(dt).eps * (Z.abs() + dab[:, :m, None].abs() + dab[:, None, m:].abs())
    joined = cross & (final[:, :m, None] == final[:, None, m:]) & (Zs >= -tol)
    Z = torch.where(cross, Zs, Z).masked_fill_(joined, 0.0)
    return Z, dab, joined


def _join(xp, M, shift, offset, parent, bs, noise, K):
    """The joins of :func:`_merge_components`, in place, for ``xp`` NumPy or torch: ``M``
    (N, K + 1, K + 1) block maxima at shift zero, ``shift``/``offset`` (N, K + 1) the gauge moves
    and join offsets, ``parent`` the joins, ``bs`` (N, K + 1, 2) imbalance and size."""
    N, K1 = M.shape[0], K + 1
    inf = float("inf")
    v = _velocity(xp, bs, noise)
    H = _hitting_times(xp, M, v[:, None, :] - v[:, :, None], 0.0)
    now = shift[:, 0] * 0
    ar = xp.arange(N) if xp is np else torch.arange(N, device=M.device)
    for _ in range(K - 1):
        at = H.reshape(N, -1).argmin(1)
        tmin = H.reshape(N, -1)[ar, at]
        live = tmin < inf
        if not bool(live.any()):
            break
        tmin = xp.where(live, tmin, now)
        shift += (tmin - now)[:, None] * v
        now = tmin
        k, l = xp.where(live, at // K1, K), xp.where(live, at % K1, K)
        # Join l into k: the merged component's rows are those of k and l, so are its columns;
        # its blocks are re-based to k's shift.  Component l is retired (its blocks to −∞).
        sk = shift[ar, k]
        gap = (shift[ar, l] - sk)[:, None]
        offset[ar, l], parent[ar, l] = gap[:, 0], k
        Ml, Mcl = M[ar, l], M[ar, :, l]
        M[ar, l], M[ar, :, l] = -inf, -inf
        row = xp.maximum(M[ar, k], Ml - gap)  # block (k ∪ l, q)
        col = xp.maximum(M[ar, :, k], Mcl + gap)  # block (p, k ∪ l)
        col[ar, k] = -inf
        M[ar, k], M[ar, :, k] = row, col
        bk = bs[ar, k] + bs[ar, l]
        bs[ar, k], bs[ar, l] = bk, 0.0
        vk = _velocity(xp, bk, noise)[:, None]
        v[ar, k], v[ar, l] = vk[:, 0], 0.0
        # Hitting times of the merged component's row and column (values now: M + shift_q − shift_p).
        rel = shift - sk[:, None]
        Hk = _hitting_times(xp, xp.stack([row + rel, col - rel], 1), xp.stack([v - vk, vk - v], 1), now[:, None, None])
        H[ar, l], H[ar, :, l] = inf, inf
        H[ar, k], H[ar, :, k] = Hk[:, 0], Hk[:, 1]


def _velocity(xp, bs, noise):
    """``−b / s`` for ``bs = (b, s)`` (last axis): a component's gauge velocity, zero where it
    is in balance to rounding (``|b| ≤ noise · s``)."""
    b, size = bs[..., 0], bs[..., 1]
    quiet = abs(b) <= noise.reshape((-1,) + (1,) * (b.ndim - 1)) * size
    return xp.where(quiet, 0.0, -b / (size + (size == 0)))


def support_components(support: torch.Tensor):
    """Connected components of the bipartite graph with edges ``support`` (N, m, n) on the m
    row and n column nodes: returns ``(comp, K)``, ``comp`` (N, m + n) numbering each sample's
    components 0, 1, … in the order of their first node, ``K`` the batch's largest count.

    Hooking and pointer jumping (Shiloach & Vishkin 1982): every tree's root is hooked under
    the least root adjacent to it, then the trees are flattened to stars; a few O(mn) rounds,
    all batched, no factorisation."""
    N, m, n = support.shape
    dev = support.device
    parent = torch.arange(m + n + 1, device=dev).expand(N, -1).contiguous()  # the last: a sink for non-edges
    while True:
        while True:
            up = parent.gather(1, parent)
            if torch.equal(up, parent):
                break
            parent = up
        root_r, root_c = parent[:, :m, None], parent[:, None, m : m + n]
        lo = torch.minimum(root_r, root_c)
        hi = torch.where(support & (root_r != root_c), torch.maximum(root_r, root_c), m + n)
        hooked = parent.scatter_reduce(1, hi.flatten(1), lo.flatten(1), "amin")
        hooked[:, m + n] = m + n
        if torch.equal(hooked, parent):
            break
        parent = hooked
    lab = parent[:, : m + n]
    first = lab == torch.arange(m + n, device=dev)
    comp = (first.cumsum(1) - 1).gather(1, lab)
    return comp, int(first.sum(1).max())


def _hitting_times(xp, value, rate, now):
    """When an off-support block whose largest entry is ``value`` (≤ 0) now and moves at
    ``rate`` reaches zero: ``now − value / rate`` where ``rate > 0``, else ∞."""
    ok = (rate > 0) & (value > -float("inf"))
    return xp.where(ok, now + xp.where(value < 0, -value, 0.0) / xp.where(ok, rate, 1.0), float("inf"))


def _kernel_noise(m, n, s):
    """The rounding level of a component's imbalance (equivalently, of the kernel part of ∇θ)
    at the marginals' scale ``s``: below it a component counts as in balance."""
    return _ROUNDING * (m + n) * torch.finfo(s.dtype).eps * s


def _warm_rounds(n: int) -> int:
    """Block-coordinate rounds before the Newton steps: 4 (⌈log₂ n⌉ − 1), from 4 at n = 4 to at
    most 20.  Measured: a round costs O(mn) against a Newton step's O(mn²) with its
    factorisation, and the Newton steps it saves grow with n (float32 fwd+bwd time flat within
    ±10 % over 0.7–1.5× these counts at n = 4, 16, 64)."""
    return min(20, 4 * max(1, math.ceil(math.log2(max(n, 2))) - 1))


def _michelot_step(Z, target, dim, Xp, ind):
    """One Newton step on each threshold τ of ``Σ (Z − τ)₊ = target`` along ``dim``, from τ = 0."""
    torch.clamp_min(Z, 0, out=Xp)
    torch.sign(Xp, out=ind)
    return (Xp.sum(dim) - target) / ind.sum(dim).clamp_min(1)


def _trial_point(Z, rc, s):
    """``X = Z₊``, the dual gradient ``(r, c) − marginals(X)`` and ``‖∇θ‖∞ / s``."""
    X = Z.clamp_min(0)
    g = rc - torch.cat([X.sum(2), X.sum(1)], 1)
    return X, g, g.abs().amax(-1) / s


def transport_active(X: torch.Tensor, Y: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Entries at zero up to the activity tolerance (the rows ``−X_ij ≤ 0`` that are active):
    ``_ACTIVE_TAU`` times the set's ``scale`` plus a few ulps of ‖Y‖∞ (the rounding of the early
    Newton steps)."""
    tau = _ACTIVE_TAU * scale + _ROUNDING_ULPS * torch.finfo(Y.dtype).eps * Y.abs().flatten(1).amax(-1)
    return X <= tau[:, None, None]
