"""Data: daily prices of 20 S&P 500 stocks (1990–2022) from ``skfolio.datasets`` (shipped in the
skfolio wheel, nothing is downloaded), weekly rebalancing, features from past returns only.

A sample is a rebalancing date ``t`` (every ``HOLD`` trading days).  Its features use the daily
returns of days ``t − LOOKBACK + 1 … t`` (inclusive); its target is the compounded return of
each stock over the holding period ``t + 1 … t + HOLD``.  No feature reads a return after ``t``
(``tests/test_portfolio.py`` checks it by perturbing the future).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

LOOKBACK = 60  # trading days of history per feature window
HOLD = 5  # trading days between rebalancing dates (weekly)
SPLITS = {"train": ("1990-01-01", "2014-12-31"), "valid": ("2015-01-01", "2017-12-31"), "test": ("2018-01-01", "2022-12-31")}


@dataclass
class Dataset:
    tickers: list
    dates: np.ndarray  # (D,) datetime64 of the daily returns
    returns: np.ndarray  # (D, n) simple daily returns
    rebalance: np.ndarray  # (S,) indices into dates of the rebalancing days
    features: np.ndarray  # (S, n, F)
    targets: np.ndarray  # (S, n) compounded returns over the next HOLD days

    def split(self, name: str) -> np.ndarray:
        """Sample indices whose rebalancing date lies in the named period; the holding period
        of the last one also ends inside the period (no overlap with the next split)."""
        lo, hi = (np.datetime64(s) for s in SPLITS[name])
        day = self.dates[self.rebalance]
        end = self.dates[np.minimum(self.rebalance + HOLD, len(self.dates) - 1)]
        return np.flatnonzero((day >= lo) & (day <= hi) & (end <= hi))


def load_returns():
    from skfolio.datasets import load_sp500_dataset

    prices = load_sp500_dataset()
    returns = prices.pct_change().iloc[1:]
    return list(prices.columns), returns.index.values.astype("datetime64[D]"), np.ascontiguousarray(returns.to_numpy(dtype=np.float64))


def features_at(returns: np.ndarray, t: int) -> np.ndarray:
    """Per-stock features at day ``t`` from ``returns[t − LOOKBACK + 1 : t + 1]`` only:
    mean return over 5/20/60 days, volatility over 20/60 days, the last 5 daily returns
    (all scaled to comparable magnitudes).  Returns (n, 10)."""
    window = returns[t - LOOKBACK + 1: t + 1]
    cols = [window[-5:].mean(0), window[-20:].mean(0), window.mean(0), window[-20:].std(0), window.std(0)]
    feats = np.concatenate([np.stack(cols, 1) * np.array([100, 100, 100, 30, 30]), 30 * window[-5:].T], 1)
    return feats


def build(returns: np.ndarray | None = None, dates=None, tickers=None) -> Dataset:
    if returns is None:
        tickers, dates, returns = load_returns()
    D = len(returns)
    rebalance = np.arange(LOOKBACK - 1, D - HOLD, HOLD)
    features = np.stack([features_at(returns, t) for t in rebalance])
    growth = np.stack([np.prod(1 + returns[t + 1: t + 1 + HOLD], 0) - 1 for t in rebalance])
    return Dataset(tickers, dates, returns, rebalance, features, growth)
