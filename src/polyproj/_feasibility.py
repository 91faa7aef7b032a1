"""Emptiness check of ``{y : A y ≤ a, B y = b}`` with an LP (HiGHS through scipy) and a
Farkas certificate naming the conflicting rows when the set is empty."""

from __future__ import annotations

import warnings

import numpy as np
from scipy.optimize import linprog

from ._errors import InfeasibleError


def farkas_certificate(A: np.ndarray, a: np.ndarray, B: np.ndarray, b: np.ndarray) -> dict | None:
    """Weights ``u ≥ 0`` (rows of A) and ``v`` (rows of B) with ``Aᵀu + Bᵀv = 0`` and
    ``aᵀu + bᵀv = −1``: a proof that the set is empty (Farkas' lemma).  The LP minimises
    ``‖u‖₁ + ‖v‖₁`` so that few rows are named.  Returns None if HiGHS finds none."""
    m, p = A.shape[0], B.shape[0]
    n = A.shape[1] if m else B.shape[1]
    lhs = np.zeros((n + 1, m + 2 * p))
    lhs[:n, :m], lhs[:n, m:m + p], lhs[:n, m + p:] = A.T, B.T, -B.T
    lhs[n, :m], lhs[n, m:m + p], lhs[n, m + p:] = a, b, -b
    rhs = np.zeros(n + 1)
    rhs[n] = -1.0
    res = linprog(np.ones(m + 2 * p), A_eq=lhs, b_eq=rhs, bounds=(0, None), method="highs")
    if res.status != 0:
        return None
    u, v = res.x[:m], res.x[m:m + p] - res.x[m + p:]
    big = max(np.abs(res.x).max(), 1e-300)
    rows = [f"A[{i}]" for i in np.flatnonzero(u > 1e-9 * big)]
    rows += [f"B[{j}]" for j in np.flatnonzero(np.abs(v) > 1e-9 * big)]
    return {"inequality_weights": u, "equality_weights": v, "rows": rows}


def check_nonempty(A: np.ndarray, a: np.ndarray, B: np.ndarray, b: np.ndarray, *, what: str = "polyhedron",
                   row_scale: np.ndarray | None = None) -> None:
    """Raise :class:`InfeasibleError` if the set is empty (LP feasibility by HiGHS).

    If the rows were scaled (row ``i`` of ``[A; B]`` multiplied by ``row_scale[i]``) the
    certificate is mapped back to the unscaled rows."""
    m, p = A.shape[0], B.shape[0]
    if m + p == 0:
        return
    n = A.shape[1] if m else B.shape[1]
    res = linprog(
        np.zeros(n),
        A_ub=A if m else None, b_ub=a if m else None,
        A_eq=B if p else None, b_eq=b if p else None,
        bounds=(None, None), method="highs",
    )
    if res.status == 0:
        return
    if res.status == 2:
        cert = farkas_certificate(A, a, B, b)
        if cert is not None and row_scale is not None:
            cert["inequality_weights"] = cert["inequality_weights"] * row_scale[:m]
            cert["equality_weights"] = cert["equality_weights"] * row_scale[m:]
        detail = ""
        if cert is not None:
            shown = ", ".join(cert["rows"][:20]) + (" …" if len(cert["rows"]) > 20 else "")
            detail = (
                f"; the rows {shown} conflict (a nonnegative combination of them gives 0 ≤ negative number, "
                f"see the exception's .certificate)"
            )
        raise InfeasibleError(f"the {what} is empty{detail}", certificate=cert)
    warnings.warn(
        f"the feasibility check of the {what} was inconclusive (HiGHS status {res.status}: {res.message}); "
        f"projections will still verify their own KKT residuals",
        RuntimeWarning,
        stacklevel=3,
    )
