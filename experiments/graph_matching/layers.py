r"""The final matching layers under test; each maps scores ``s`` (B, k, k) to a soft matching.

- ``sinkhorn``: pygmtools' log-domain Sinkhorn, ``batched_operation=True``, temperature ``tau``
  and ``iters`` iterations.  For partial matching (``k_true < k``) a dustbin row and column
  with one learned score (``unmatch1``/``unmatch2`` of pygmtools, as in SuperGlue).
- ``linsat``: LinSATNet (Wang et al., ICML 2023) with the same constraints as the exact layer,
  run to ``iters`` iterations at temperature ``tau``.
- ``exact``: polyproj's Euclidean projection of ``scale · s`` onto the Birkhoff polytope, or
  onto the partial-matching polytope {X ≥ 0, X1 ≤ 1, Xᵀ1 ≤ 1, 1ᵀX1 = k_true}, back-propagated
  with the HS-Jacobian.

Each layer returns ``float32``; :func:`violation` measures every layer's output against the
same polytope.
"""

from __future__ import annotations

import torch

import polyproj as pp


class Sinkhorn(torch.nn.Module):
    def __init__(self, tau: float, iters: int, partial: bool = False):
        super().__init__()
        self.tau, self.iters, self.partial = tau, iters, partial
        self.bin_score = torch.nn.Parameter(torch.tensor(0.0)) if partial else None

    def forward(self, s):
        import pygmtools

        B, k1, k2 = s.shape
        kw = {}
        if self.partial:
            kw = {"unmatch1": self.bin_score.expand(B, k1), "unmatch2": self.bin_score.expand(B, k2)}
        return pygmtools.sinkhorn(s, max_iter=self.iters, tau=self.tau, batched_operation=True,
                                  backend="pytorch", **kw)


def _matching_constraints(k: int, k_true: int | None):
    """LinSATNet form of the (partial) matching polytope on vec(X), row-major (k², nonnegative data)."""
    rows = torch.kron(torch.eye(k), torch.ones(1, k))
    cols = torch.kron(torch.ones(1, k), torch.eye(k))
    M = torch.cat([rows, cols])
    if k_true is None or k_true == k:
        return {"E": M, "f": torch.ones(2 * k)}
    return {"A": M, "b": torch.ones(2 * k), "E": torch.ones(1, k * k), "f": torch.tensor([float(k_true)])}


class LinSAT(torch.nn.Module):
    def __init__(self, k: int, tau: float, iters: int, k_true: int | None = None):
        super().__init__()
        from LinSATNet.linsat import init_constraints

        self.k, self.tau, self.iters = k, tau, iters
        self.constr = init_constraints(k * k, **_matching_constraints(k, k_true))

    def forward(self, s):
        from LinSATNet import linsat_layer

        B, k, _ = s.shape
        out = linsat_layer(s.reshape(B, k * k).float(), constr_dict=self.constr, tau=self.tau, max_iter=self.iters,
                           no_warning=True)
        return out.reshape(B, k, k)


class Exact(torch.nn.Module):
    def __init__(self, scale: float, k_true: int | None = None, k: int | None = None):
        super().__init__()
        self.scale = scale
        if k_true is None or k_true == k:
            self.polytope = pp.Birkhoff()
        else:
            self.polytope = pp.PartialMatching(k_true)
        self.project = pp.Projection(self.polytope)

    def forward(self, s):
        return self.project((self.scale * s).double()).float()


def make_layer(name: str, k: int, k_true: int, **hp) -> torch.nn.Module:
    partial = k_true < k
    if name == "sinkhorn":
        return Sinkhorn(hp["tau"], hp["iters"], partial)
    if name == "linsat":
        return LinSAT(k, hp["tau"], hp["iters"], k_true)
    if name == "exact":
        return Exact(hp["scale"], k_true, k)
    raise ValueError(f"layer must be one of 'sinkhorn', 'linsat', 'exact'; got {name!r}")


def violation(X: torch.Tensor, k_true: int) -> torch.Tensor:
    """Per-sample largest violation (float64) of the polytope the exact layer projects onto —
    Birkhoff when ``k_true`` is the matrix size, else the partial-matching polytope — measured
    by the set's own ``violation()``, for every layer's output alike."""
    S = pp.Birkhoff() if k_true == X.shape[-1] else pp.PartialMatching(k_true)
    return S.violation(X.detach())
