"""Classical baselines re-fitted at every rebalancing date on the past year of daily returns:
equal weight and inverse volatility (skfolio), and minimum variance under the same mandate
(skfolio ``MeanRisk`` for mandates 1–3; for the L1 turnover limit of mandate 4, which skfolio's
per-asset ``max_turnover`` does not express, the same minimum-variance problem in cvxpy)."""

from __future__ import annotations

import numpy as np

from .mandates import TURNOVER, Mandate

WINDOW = 252


def equal_weight(returns, t, mandate, w_prev):
    from skfolio.optimization import EqualWeighted

    return EqualWeighted().fit(returns[t - WINDOW + 1: t + 1]).weights_


def inverse_volatility(returns, t, mandate, w_prev):
    from skfolio.optimization import InverseVolatility

    return InverseVolatility().fit(returns[t - WINDOW + 1: t + 1]).weights_


def minimum_variance(returns, t, mandate: Mandate, w_prev):
    window = returns[t - WINDOW + 1: t + 1]
    if mandate.level < 4:
        from skfolio import RiskMeasure
        from skfolio.optimization import MeanRisk, ObjectiveFunction

        extra = {}
        if mandate.level >= 2:
            extra["max_weights"] = 0.15
        if mandate.level >= 3:
            extra["left_inequality"] = np.vstack([mandate.sector_matrix, -mandate.defensive[None]])
            extra["right_inequality"] = np.r_[np.full(mandate.sector_matrix.shape[0], 0.35), -0.30]
        model = MeanRisk(objective_function=ObjectiveFunction.MINIMIZE_RISK, risk_measure=RiskMeasure.VARIANCE,
                         min_weights=0.0, budget=1.0, **extra)
        return model.fit(window).weights_
    import cvxpy as cp

    cov = np.cov(window.T)
    w = cp.Variable(mandate.n)
    cons = [mandate.A @ w <= mandate.a, mandate.B @ w == mandate.b, cp.norm1(w - w_prev) <= TURNOVER]
    cp.Problem(cp.Minimize(cp.quad_form(w, cp.psd_wrap(cov))), cons).solve(solver=cp.CLARABEL)
    return np.asarray(w.value)


BASELINES = {"equal weight": equal_weight, "inverse volatility": inverse_volatility, "minimum variance": minimum_variance}
LEVELS = {"equal weight": (1, 2, 3, 4), "inverse volatility": (1,), "minimum variance": (1, 2, 3, 4)}
