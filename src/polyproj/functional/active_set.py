r"""CPU forward engine for small dense polyhedra: the dual active-set solver DAQP (Arnström,
Bemporad & Axehill, IEEE TAC 67(8), 2022; C, MIT; ``pip install daqp``), one call per sample.

Problem (normalised rows, :class:`~polyproj.functional.polyhedron.PolyhedronData`)

.. math:: \min_y \tfrac12\|y\|^2 - x^\top y \quad\text{s.t.}\quad C_I y \le c_I,\ C_E y = c_E ,

whose solution is the projection ``Π_P(x)``; DAQP returns ``y`` and multipliers ``ν`` with
``y − x + Cᵀν = 0``, ``ν_I ≥ 0`` — the convention of the batched solver.  Why an external,
compiled solver: on one sample or a few hundred small ones the batched semismooth Newton method
spends its time in Python and tensor-op overhead across its rounds (a 20-variable projection
is ~20 µs of arithmetic), where a dual active-set method in C finishes in a few pivots.

Nothing is trusted: every pair ``(y, ν)`` is certified by the same relative KKT residual as
the batched solver's (:func:`~polyproj.functional.polyhedron.kkt_residual`), and samples that
DAQP does not solve to ``tol`` (degenerate vertices, dependent active rows, cycling: its exit
flag, or a residual above ``tol``) are handed back to the caller, which solves them with the
batched solver.  The backward is unchanged: the HS-Jacobian on the rows active at ``y``.
"""

from __future__ import annotations

import numpy as np
import torch

from .bounded import BoundedData
from .polyhedron import SolveResult, _restore_face, active_rows, kkt_residual, solve_polyhedron

try:  # optional: ``pip install polyproj[fast]``
    import daqp as _daqp
except ImportError:  # pragma: no cover - exercised where daqp is absent
    _daqp = None

# "auto" uses DAQP on CPU for at most this many variables and rows (measured:
# benchmarks/bench_latency.py; beyond it the batched solver's arithmetic wins), whatever the
# batch size: on DC3's 833 test samples (n = 100, 50 shared equality rows eliminated, 50
# inequality rows) DAQP takes 0.01 s on a trained network's outputs, the batched solver 0.47 s.
AUTO_MAX_N = 128
AUTO_MAX_K = 256
_INF = 1e30  # DAQP's "no bound"


def available() -> bool:
    return _daqp is not None


def applicable(data, x: torch.Tensor) -> bool:
    """Whether ``engine="auto"`` picks DAQP for this problem."""
    # (bounds are DAQP's own simple bounds: only the general rows count)
    rows = data.Kg if isinstance(data, BoundedData) else data.K
    return (_daqp is not None and x.device.type == "cpu" and data.K > 0 and x.shape[1] <= AUTO_MAX_N
            and rows <= AUTO_MAX_K)


def _eliminated_equalities(data, x: torch.Tensor, max_iter: int):
    """With shared rows ``[A; B]``, ``B`` (p×n) of full row rank and inequality rows too, the
    equalities are eliminated once: ``Bᵀ = Q R`` (complete QR), ``y = y_p + N w`` with
    ``y_p = Q₁ R⁻ᵀ b`` and ``N`` an orthonormal basis of ker B, so that
    ``½‖y − x‖² = ½‖w − Nᵀx‖² + const`` and each sample is the smaller, inequality-only problem
    ``min ½‖w − Nᵀx‖²  s.t.  (A N) w ≤ a − A y_p``.  The equality multipliers follow from
    stationarity, ``μ = R⁻¹ Q₁ᵀ (x − y − Aᵀλ)``.  Returns ``None`` where this does not apply."""
    if isinstance(data, BoundedData):
        return None
    m, K = data.m, data.K
    n = x.shape[1]
    p = K - m
    # (measured, batch 256: the QR and the transformations cost ~0.15 ms, which one or two
    # equality rows on 20–40 variables do not repay; 4 rows on 64 or 50 on 100 do, 1.2–5×)
    if data.C.ndim == 3 or p < 2 or n < 32 or m == 0 or p >= n or x.shape[0] < 2:
        return None
    A, B = data.C[:m], data.C[m:]
    Q, R = torch.linalg.qr(B.T, mode="complete")
    d = R.diagonal()[:p].abs()
    if bool((d <= 1e-12 * d.max().clamp_min(1e-300)).any()):  # dependent equality rows: solve as they are
        return None
    Q1, N, R1 = Q[:, :p], Q[:, p:], R[:p]
    c = data.c
    a, b = (c[..., :m], c[..., m:])
    y_p = torch.linalg.solve_triangular(R1.T, b.T if b.ndim == 2 else b[:, None], upper=False).T @ Q1.T  # (N or 1, n)
    A_red = A @ N
    upper = a - y_p @ A.T  # (N or 1, m)
    reduced = type(data).from_rows(A_red, upper[0] if upper.shape[0] == 1 else upper, m)
    w, lam, iters, ok = _daqp_loop(reduced, x @ N, max_iter)
    y = y_p + w @ N.T
    mu = torch.linalg.solve_triangular(R1, ((x - y - lam @ A) @ Q1).T, upper=True).T
    return y, torch.cat([lam, mu], 1), iters, ok


def solve_daqp(data, x: torch.Tensor, max_iter: int = 1000):
    """``(y, ν, iterations, ok)`` for the rows of ``x`` (N, n) float64 on CPU, at most
    ``max_iter`` active-set changes each; ``ok`` (N,) is DAQP's own success flag (the caller
    certifies and falls back).  Shared equality rows are eliminated first where they can be
    (:func:`_eliminated_equalities`)."""
    if _daqp is None:
        raise ImportError("engine='daqp' needs the daqp package: pip install daqp (or polyproj[fast])")
    reduced = _eliminated_equalities(data, x, max_iter)
    return reduced if reduced is not None else _daqp_loop(data, x, max_iter)


def _daqp_loop(data, x: torch.Tensor, max_iter: int):
    """DAQP on each row of ``x``: ``(y, ν, iterations, ok)``.  One DAQP workspace
    (``daqp.Model``) serves the whole batch where the matrix is shared: set up once, then only
    the linear term (and per-sample right-hand sides) change between samples — measured 1.3–1.7×
    faster than a fresh ``daqp.solve`` per sample; after a failure the workspace is set up again."""
    N, n = x.shape
    X = x.detach().numpy()
    H = np.eye(n)
    if isinstance(data, BoundedData):
        # DAQP's simple bounds: the first n entries of its bound vectors, on y itself
        C = data.Cg.numpy()
        K, m, nb = data.Kg + n, data.m - data.nb + n, n
        lo, up = (np.broadcast_to(t.numpy(), (N, n)) for t in data.bounds())
        cg = np.broadcast_to(data.c[..., data.nb:].numpy(), (N, data.Kg))
        upper_all = np.ascontiguousarray(np.concatenate([np.minimum(up, _INF), cg], 1))
        lower_all = np.concatenate([np.maximum(lo, -_INF), np.full((N, data.Kg), -_INF)], 1)
        per_c = True
    else:
        C = data.C.numpy()
        c = data.c.numpy()
        K, m, nb = data.K, data.m, 0
        upper_all = np.array(np.broadcast_to(c, (N, K)), order="C")
        lower_all = np.full((N, K), -_INF)
        per_c = c.ndim == 2
    per_C = C.ndim == 3
    sense = np.zeros(K, dtype=np.intc)  # DAQP's constraint kinds (C int)
    sense[m:] = 5  # equality rows
    # every array handed to DAQP stays alive (and writable) for the whole loop
    lower_all[:, m:] = upper_all[:, m:]
    F = np.ascontiguousarray(-X)
    C_shared = None if per_C else np.ascontiguousarray(C)
    y, nu = np.empty((N, n)), np.zeros((N, K))
    iters, ok = np.zeros(N, dtype=np.int64), np.zeros(N, dtype=bool)
    model = None
    for i in range(N):
        if per_C:  # a matrix per sample: a fresh problem each time
            yi, _, flag, info = _daqp.solve(H, F[i], np.ascontiguousarray(C[i]), upper_all[i], lower_all[i], sense.copy(),
                                            iter_limit=max_iter)
        else:
            if model is None:
                model = _daqp.Model()
                model.setup(H, F[i], C_shared, upper_all[i], lower_all[i], sense.copy())
                model.settings = {"iter_limit": max_iter}
            elif per_c:
                model.update(f=F[i], bupper=upper_all[i], blower=lower_all[i])
            else:
                model.update(f=F[i])
            yi, _, flag, info = model.solve()
        if flag == 1:
            y[i], nu[i], iters[i], ok[i] = yi, info["lam"], info["iterations"], True
        else:
            y[i], model = X[i], None
    nu = torch.from_numpy(nu)
    if nb:  # DAQP's bound multipliers (≥ 0 at the upper bound, ≤ 0 at the lower) → the bound rows
        lam = nu[:, data.var]
        fixed = data.eq[: data.nb]  # a fixed coordinate's row is an equality: its multiplier has either sign
        nu = torch.cat([torch.where(fixed, lam, torch.where(data.sign > 0, lam, -lam).clamp_min(0)), nu[:, n:]], 1)
    return (torch.from_numpy(y), nu, torch.from_numpy(iters), torch.from_numpy(ok))


def solve_polyhedron_active_set(data, x: torch.Tensor, *, tol: float, max_iter: int):
    """:func:`~polyproj.functional.polyhedron.solve_polyhedron`'s contract (a
    ``SolveResult``), computed by DAQP where it certifies and by the batched solver elsewhere."""
    N = x.shape[0]
    if N == 0 or data.K == 0 or x.device.type != "cpu":
        return solve_polyhedron(data, x, tol=tol, max_iter=max_iter)
    y, nu, iters, ok = solve_daqp(data, x, max_iter)
    sx = x.abs().amax(-1)
    z = data.rows(y)
    kkt = torch.where(ok, kkt_residual(data, x, y, nu, sx, z), torch.full_like(sx, float("inf")))
    # y = x − Cᵀν carries rounding at the scale of x: one correction on the active face brings
    # the active rows to rounding at the set's scale (as the batched solver's last step does);
    # kept where it certifies with a smaller violation
    face = active_rows(data, y, nu, z)
    y_r, nu_r, z_r = _restore_face(data, face, y, nu, z, tol)
    changed = y_r is not y  # (returned unchanged where no active row is off by more than 10⁻³·tol)
    if changed:
        k_r = kkt_residual(data, x, y_r, nu_r, sx, z_r)
        won = ok & (k_r <= tol) & (data.relative_violation(y_r, z_r - data.c) <= data.relative_violation(y, z - data.c))
        y, nu = torch.where(won[:, None], y_r, y), torch.where(won[:, None], nu_r, nu)
        kkt = torch.where(won, k_r, kkt)
    redo = (~(kkt <= tol)).nonzero().flatten()
    if redo.numel():
        sub = solve_polyhedron(data.take(redo), x[redo], tol=tol, max_iter=max_iter)
        better = ~(kkt[redo] <= sub.kkt)
        j = redo[better]
        y[j], nu[j], kkt[j], iters[j] = sub.y[better], sub.multipliers[better], sub.kkt[better], sub.iterations[better]
    if changed or redo.numel():
        face = active_rows(data, y, nu)
    converged = (kkt <= tol) & torch.isfinite(y).all(-1)
    return SolveResult(y, face, nu, kkt, iters, converged)
