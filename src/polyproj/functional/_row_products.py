"""Row products ``C y`` and ``Cᵀ w`` for a constraint matrix shared by the batch or given per
sample: the one place the solvers (augmented Lagrangian, interior point) and the row containers
form them."""

from __future__ import annotations

import torch


def matrix_rows(C: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``C y`` for a shared (K, n) or per-sample (N, K, n) ``C`` and y (N, n) → (N, K), or
    y (N, n, q) → (N, K, q)."""
    if C.ndim == 3 and y.ndim == 2:
        return (C @ y.unsqueeze(-1)).squeeze(-1)
    return C @ y if y.ndim == 3 else y @ C.mT


def matrix_combine(C: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """``Cᵀ w`` for a shared or per-sample ``C`` and w (N, K) → (N, n), or (N, K, q) → (N, n, q)."""
    if w.ndim == 3:
        return C.mT @ w
    return (w.unsqueeze(-2) @ C).squeeze(-2) if C.ndim == 3 else w @ C
