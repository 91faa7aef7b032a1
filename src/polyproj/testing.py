"""Independent reference projections for tests and benchmarks (Clarabel interior point;
OSQP as a second opinion).  Not used by the library itself; needs the ``test`` extra."""

from __future__ import annotations

import numpy as np

__all__ = ["reference_projection", "certify_projection", "active_system", "row_scales", "set_scale"]


def _dense_data(n, A, a, B, b):
    """float64 arrays for the constraint data, an omitted pair becoming 0 rows."""
    A = np.zeros((0, n)) if A is None else np.asarray(A, dtype=np.float64)
    a = np.zeros(0) if a is None else np.asarray(a, dtype=np.float64)
    B = np.zeros((0, n)) if B is None else np.asarray(B, dtype=np.float64)
    b = np.zeros(0) if b is None else np.asarray(b, dtype=np.float64)
    return A, a, B, b


def reference_projection(x, A=None, a=None, B=None, b=None, *, solver: str = "clarabel", tol: float = 1e-10) -> np.ndarray:
    """Solve ``min ½‖y − x‖² s.t. A y ≤ a, B y = b`` for one point ``x`` (n,) with Clarabel
    (or OSQP with polishing) and return ``y``.  Raises RuntimeError unless the solver reports
    success, so a silent failure of the reference cannot pass a test."""
    import scipy.sparse as sp

    x = np.asarray(x, dtype=np.float64)
    n = x.shape[0]
    A, a, B, b = _dense_data(n, A, a, B, b)
    if solver == "clarabel":
        import clarabel

        P = sp.identity(n, format="csc")
        Acon = sp.csc_matrix(np.vstack([B, A]))
        cones = []
        if B.shape[0]:
            cones.append(clarabel.ZeroConeT(B.shape[0]))
        if A.shape[0]:
            cones.append(clarabel.NonnegativeConeT(A.shape[0]))
        settings = clarabel.DefaultSettings()
        settings.verbose = False
        settings.tol_gap_abs = settings.tol_gap_rel = tol
        settings.tol_feas = tol
        settings.tol_ktratio = 1e-8
        solver_ = clarabel.DefaultSolver(P, -x, Acon, np.concatenate([b, a]), cones, settings)
        sol = solver_.solve()
        if str(sol.status) not in ("Solved", "AlmostSolved"):
            raise RuntimeError(f"Clarabel reference failed: {sol.status}")
        return np.asarray(sol.x)
    if solver == "osqp":
        import osqp

        Acon = sp.csc_matrix(np.vstack([B, A]))
        lower = np.concatenate([b, np.full(A.shape[0], -np.inf)])
        upper = np.concatenate([b, a])
        prob = osqp.OSQP()
        prob.setup(sp.identity(n, format="csc"), -x, Acon, lower, upper, eps_abs=tol, eps_rel=tol,
                   polishing=True, verbose=False, max_iter=200000)
        res = prob.solve()
        status = res.info.status if isinstance(res.info.status, str) else str(res.info.status)
        if "solved" not in status.lower() or "inaccurate" in status.lower():
            raise RuntimeError(f"OSQP reference failed: {status}")
        return np.asarray(res.x)
    raise ValueError(f"solver must be 'clarabel' or 'osqp', got {solver!r}")


def _normalised(y, A, a, B, b):
    A, a, B, b = _dense_data(y.shape[0], A, a, B, b)
    ra = np.linalg.norm(A, axis=1) if A.shape[0] else np.zeros(0)
    rb = np.linalg.norm(B, axis=1) if B.shape[0] else np.zeros(0)
    ra, rb = np.where(ra > 0, ra, 1.0), np.where(rb > 0, rb, 1.0)
    return A / ra[:, None], a / ra, B / rb[:, None], b / rb


def row_scales(y, A=None, a=None, B=None, b=None):
    """Each unit-norm row's scale at ``y``: ``max(|C_i| |y|, |c_i|, ‖y‖∞)`` (inequality rows, then
    equality rows) — the size of the terms its evaluation adds up, at least the size of the
    point; what the library's feasibility tolerance is relative to."""
    y = np.asarray(y, dtype=np.float64)
    A, a, B, b = _normalised(y, A, a, B, b)
    C, c = np.vstack([A, B]), np.concatenate([a, b])
    return np.maximum(np.maximum(np.abs(C) @ np.abs(y), np.abs(c)), np.abs(y).max(initial=0.0))


def set_scale(y, A=None, a=None, B=None, b=None) -> float:
    """The largest row scale at ``y`` (:func:`row_scales`)."""
    return float(row_scales(y, A, a, B, b).max(initial=0.0))


def active_system(y, A=None, a=None, B=None, b=None, *, scale, active_tol: float = 1e-9) -> dict:
    """The constraints at ``y`` with unit-norm rows: ``"primal"`` (the largest violation relative
    to ``scale``, a number or one per row as from :func:`row_scales`), ``"active"`` (the
    normalised inequality rows with slack ≤ ``active_tol · scale``, stacked), their ``"slack"``
    relative to their scale, and ``"B"`` (the normalised equality rows)."""
    y = np.asarray(y, dtype=np.float64)
    A, a, B, b = _normalised(y, A, a, B, b)
    scale = np.broadcast_to(np.asarray(scale, dtype=np.float64), (A.shape[0] + B.shape[0],))
    sa, sb = scale[: A.shape[0]], scale[A.shape[0]:]
    slack = (a - A @ y) / sa
    eq_res = (B @ y - b) / sb
    primal = max(np.max(-slack, initial=0.0), np.abs(eq_res).max(initial=0.0))
    act = slack <= active_tol
    return {"primal": primal, "active": A[act], "slack": slack[act], "B": B}


def certify_projection(x, y, A=None, a=None, B=None, b=None, *, active_tol: float = 1e-9) -> dict:
    """Certify ``y = Π_P(x)`` by its own KKT system, independently of any solver, with the
    library's tolerance semantics.

    * primal: the largest violation of a unit-norm row relative to that row's scale
      (:func:`row_scales`, floored at ``eps·‖x‖∞``), never to the size of ``x``;
    * rows with slack ≤ ``active_tol`` times their scale may carry multipliers: ``λ ≥ 0`` on them
      and free ``μ`` are fitted to ``x − y = A_Iᵀλ + Bᵀμ`` by NNLS (``μ = μ⁺ − μ⁻``);
      stationarity is the residual of that fit relative to ``max(‖x‖∞, ‖y‖∞)``, and
      complementarity the largest ``min(λ_i, slack_i)`` with each multiplier relative to that
      scale and each slack to its row's.

    Returns ``{"primal", "stationarity", "complementarity", "kkt" (their maximum), "n_active",
    "largest_multiplier"}`` (the last relative to ``max(‖x‖∞, ‖y‖∞)``).  The default
    ``active_tol`` equals the library's default tolerance, so a point that is not feasible or
    not optimal to 1e-9 cannot certify to 1e-9.
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    # A row whose slack is just below the activity threshold may take a multiplier that costs
    # complementarity; a multiplier without it is as valid, so the rows active to a thousandth
    # of the threshold are tried too and the better certificate is kept.
    return min((_certify(x, y, A, a, B, b, tol) for tol in (active_tol, 1e-3 * active_tol)), key=lambda c: c["kkt"])


def _certify(x, y, A, a, B, b, active_tol):
    from scipy.optimize import nnls

    pscale = np.maximum(row_scales(y, A, a, B, b), max(np.finfo(np.float64).eps * np.abs(x).max(initial=0.0), 1e-300))
    dscale = max(np.abs(x).max(initial=0), np.abs(y).max(initial=0), 1e-300)
    rows = active_system(y, A, a, B, b, scale=pscale, active_tol=active_tol)
    primal = rows["primal"]
    An, Bn = rows["active"], rows["B"]
    basis = np.hstack([An.T, Bn.T, -Bn.T])
    if basis.shape[1]:
        coef, _ = nnls(basis, x - y, maxiter=50 * basis.shape[1])
        stat = np.abs(x - y - basis @ coef).max()
    else:
        coef, stat = np.zeros(0), np.abs(x - y).max()
    lam = coef[: An.shape[0]]
    comp = float(np.minimum(lam / dscale, np.maximum(rows["slack"], 0.0)).max(initial=0.0))
    stationarity = stat / dscale
    return {"primal": primal, "stationarity": stationarity, "complementarity": comp,
            "kkt": max(primal, stationarity, comp), "n_active": int(An.shape[0]),
            "largest_multiplier": float(coef.max(initial=0.0) / dscale)}
