"""The four investment mandates, each as a polyproj set and as plain matrices (for the peers,
the skfolio baselines and the violation report).

1. long-only, fully invested: ``w ≥ 0, 1ᵀw = 1`` (the simplex);
2. plus a position cap ``w_i ≤ 15%`` (a capped simplex);
3. plus sector caps (``≤ 35%`` per sector) and a minimum of 30% in the defensive sectors
   (Health Care, Consumer Staples): a general polyhedron;
4. plus a one-way turnover limit ``‖w − w_prev‖₁ ≤ 0.30`` per rebalancing against the previous
   weights, modelled with auxiliary variables ``s ≥ |w − w_prev|`` — a polyhedron in ``(w, s)``
   whose right-hand side depends on ``w_prev`` (per-sample constraint data).

Sector labels (GICS sectors of the 20 tickers of ``skfolio.datasets.load_sp500_dataset``).
"""

from __future__ import annotations

import numpy as np
import torch

import polyproj as pp

SECTORS = {
    "AAPL": "Information Technology", "AMD": "Information Technology", "MSFT": "Information Technology",
    "BAC": "Financials", "JPM": "Financials",
    "BBY": "Consumer Discretionary", "HD": "Consumer Discretionary",
    "CVX": "Energy", "RRC": "Energy", "XOM": "Energy",
    "GE": "Industrials",
    "JNJ": "Health Care", "LLY": "Health Care", "MRK": "Health Care", "PFE": "Health Care", "UNH": "Health Care",
    "KO": "Consumer Staples", "PEP": "Consumer Staples", "PG": "Consumer Staples", "WMT": "Consumer Staples",
}
DEFENSIVE = ("Health Care", "Consumer Staples")
CAP, SECTOR_CAP, DEFENSIVE_MIN, TURNOVER = 0.15, 0.35, 0.30, 0.30


class Mandate:
    """Constraints ``A w ≤ a, B w = b`` on the weights (plus, for mandate 4, the turnover limit)."""

    def __init__(self, level: int, tickers: list):
        if level not in (1, 2, 3, 4):
            raise ValueError(f"mandate level must be 1, 2, 3 or 4, got {level!r}")
        self.level, self.tickers, n = level, tickers, len(tickers)
        self.n = n
        rows, rhs = [-np.eye(n)], [np.zeros(n)]
        if level >= 2:
            rows.append(np.eye(n))
            rhs.append(np.full(n, CAP))
        if level >= 3:
            sectors = sorted(set(SECTORS[t] for t in tickers))
            S = np.array([[SECTORS[t] == s for t in tickers] for s in sectors], dtype=np.float64)
            defensive = np.array([SECTORS[t] in DEFENSIVE for t in tickers], dtype=np.float64)
            rows += [S, -defensive[None]]
            rhs += [np.full(len(sectors), SECTOR_CAP), np.array([-DEFENSIVE_MIN])]
            self.sector_matrix, self.defensive = S, defensive
        self.A, self.a = np.vstack(rows), np.concatenate(rhs)
        self.B, self.b = np.ones((1, n)), np.ones(1)

    @property
    def name(self) -> str:
        return {1: "long-only", 2: "+ 15% cap", 3: "+ sectors", 4: "+ turnover"}[self.level]

    def weight_set(self):
        """The mandate-1…3 polytope as a polyproj set (the fastest exact representation)."""
        if self.level == 1:
            return pp.Simplex()
        if self.level == 2:
            return pp.CappedSimplex(torch.zeros(self.n, dtype=torch.float64), torch.full((self.n,), CAP, dtype=torch.float64), 1.0)
        return pp.Polyhedron(A=self.A, a=self.a, B=self.B, b=self.b)

    def lifted_data(self, w_prev: torch.Tensor):
        """Mandate 4 in ``(w, s)`` as ``A (w, s) ≤ a, B (w, s) = b``: the mandate-3 rows on
        ``w``, ``±(w − w_prev) ≤ s``, ``1ᵀs ≤ τ``; ``a`` has one row per row of ``w_prev``
        (batch, n).  Returns float64 tensors ``(A, a, B, b)``."""
        n, N = self.n, w_prev.shape[0]
        I, Z = np.eye(n), np.zeros((self.A.shape[0], n))
        A = np.vstack([np.hstack([self.A, Z]), np.hstack([I, -I]), np.hstack([-I, -I]),
                       np.hstack([np.zeros((1, n)), np.ones((1, n))])])
        a_fixed = torch.tensor(self.a, dtype=torch.float64).expand(N, -1)
        a = torch.cat([a_fixed, w_prev, -w_prev, torch.full((N, 1), TURNOVER, dtype=torch.float64)], 1)
        B = np.hstack([self.B, np.zeros((1, n))])
        f64 = lambda v: torch.tensor(v, dtype=torch.float64)  # noqa: E731
        return f64(A), a, f64(B), f64(self.b)

    def lifted(self, w_prev: torch.Tensor) -> pp.Polyhedron:
        """Mandate 4 as one polyproj polyhedron in ``(w, s)`` per row of ``w_prev``."""
        A, a, B, b = self.lifted_data(w_prev)
        return pp.Polyhedron(A=A, a=a, B=B, b=b, check_feasibility=False)

    def violation(self, w: np.ndarray, w_prev: np.ndarray | None = None) -> np.ndarray:
        """Largest absolute violation of the mandate per row of ``w`` (raw units of weight)."""
        w = np.atleast_2d(w)
        v = np.maximum(np.max(w @ self.A.T - self.a, axis=1), np.abs(w @ self.B.T - self.b).max(1)).clip(0)
        if self.level == 4 and w_prev is not None:
            v = np.maximum(v, (np.abs(w - w_prev).sum(1) - TURNOVER).clip(0))
        return v
