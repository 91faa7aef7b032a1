"""Output layers mapping raw scores ``z`` (batch, n) to portfolio weights under a mandate: the
exact polyproj projection and the peers it is compared with.  Each factory returns
``layer(z, w_prev) -> w`` or raises ``ImportError`` when the peer is not installed."""

from __future__ import annotations

import numpy as np
import torch

import polyproj as pp

from .mandates import TURNOVER, Mandate


def polyproj_layer(mandate: Mandate):
    if mandate.level < 4:
        S = mandate.weight_set()
        return lambda z, w_prev=None: pp.project(z, S)
    n = mandate.n

    def lifted(z, w_prev):
        # project (z, |z − w_prev|) onto {(w, s) : mandate 3 on w, |w − w_prev| ≤ s, 1ᵀs ≤ τ}
        P = mandate.lifted(w_prev)
        return pp.project(torch.cat([z, (z - w_prev).abs()], 1), P)[:, :n]

    return lifted


def softmax_layer(mandate: Mandate):
    if mandate.level != 1:
        raise ValueError("softmax only expresses mandate 1 (long-only, fully invested)")
    return lambda z, w_prev=None: torch.softmax(z, -1)


def linsatnet_layer(mandate: Mandate, tau: float = 0.05, max_iter: int = 100):
    """LinSATNet (Wang et al., ICML 2023): entropic Sinkhorn-type layer for nonnegative linear
    constraints; approximately feasible.  Mandates 1–3 (the turnover rows have negative
    coefficients, outside its constraint class)."""
    from LinSATNet import linsat_layer

    if mandate.level == 4:
        raise ValueError("LinSATNet needs nonnegative constraint data; the turnover mandate has none")
    f64 = lambda v: torch.tensor(v, dtype=torch.float32)  # noqa: E731  (LinSATNet works in float32)
    kw = {"E": f64(mandate.B), "f": f64(mandate.b)}
    if mandate.level >= 2:
        rows, rhs = [np.eye(mandate.n)], [np.full(mandate.n, 0.15)]
        if mandate.level >= 3:
            rows.append(mandate.sector_matrix)
            rhs.append(np.full(mandate.sector_matrix.shape[0], 0.35))
            kw.update(C=f64(mandate.defensive[None]), d=f64([0.30]))
        kw.update(A=f64(np.vstack(rows)), b=f64(np.concatenate(rhs)))
    return lambda z, w_prev=None: linsat_layer(z.float(), tau=tau, max_iter=max_iter, no_warning=True, **kw).double()


def cvxpylayers_layer(mandate: Mandate):
    """cvxpylayers (Agrawal et al. 2019): the same Euclidean projection solved by a conic solver
    and differentiated through its KKT system."""
    import cvxpy as cp
    from cvxpylayers.torch import CvxpyLayer

    n = mandate.n
    w, z = cp.Variable(n), cp.Parameter(n)
    cons = [mandate.A @ w <= mandate.a, mandate.B @ w == mandate.b]
    if mandate.level < 4:
        layer = CvxpyLayer(cp.Problem(cp.Minimize(0.5 * cp.sum_squares(w - z)), cons), parameters=[z], variables=[w])
        return lambda z_, w_prev_=None: layer(z_)[0]
    # the same lifted projection as polyproj's: (z, |z − w_prev|) onto {(w, s)}
    s, zs, w_prev = cp.Variable(n), cp.Parameter(n), cp.Parameter(n)
    cons += [w - w_prev <= s, w_prev - w <= s, cp.sum(s) <= TURNOVER]
    problem = cp.Problem(cp.Minimize(0.5 * cp.sum_squares(w - z) + 0.5 * cp.sum_squares(s - zs)), cons)
    layer = CvxpyLayer(problem, parameters=[z, zs, w_prev], variables=[w])
    return lambda z_, w_prev_: layer(z_, (z_ - w_prev_).abs(), w_prev_)[0]


def qpth_layer(mandate: Mandate):
    """qpth (Amos & Kolter 2017): batched primal-dual interior point QP layer."""
    from qpth.qp import QPFunction

    n = mandate.n
    f64 = lambda v: torch.tensor(v, dtype=torch.float64)  # noqa: E731
    if mandate.level < 4:
        Q, G, h, B, b = f64(np.eye(n)), f64(mandate.A), f64(mandate.a), f64(mandate.B), f64(mandate.b)
        return lambda z, w_prev=None: QPFunction(verbose=-1)(Q, -z, G, h, B, b)
    Q = f64(np.eye(2 * n))

    def lifted(z, w_prev):
        # the same lifted projection as polyproj's: (z, |z − w_prev|) onto {(w, s)}
        G, h, B, b = mandate.lifted_data(w_prev)
        p = -torch.cat([z, (z - w_prev).abs()], 1)
        return QPFunction(verbose=-1)(Q, p, G, h, B, b)[:, :n]

    return lifted


FACTORIES = {"polyproj": polyproj_layer, "softmax": softmax_layer, "LinSATNet": linsatnet_layer,
             "cvxpylayers": cvxpylayers_layer, "qpth": qpth_layer}
