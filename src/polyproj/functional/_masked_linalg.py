"""Batched, masked solves with a shared Gram matrix.

Every sample ``s`` of a batch selects a subset of the rows of a constraint matrix
``C ∈ ℝ^{K×n}`` through a 0/1 mask ``w_s``.  With ``G = C Cᵀ`` computed once (shared, (K, K),
or one per sample, (N, K, K)), the sample's system on the selected rows is

    (W_s G W_s + δ I) ν = r_s ,     W_s = Diag(w_s),

whose identity block pins ``ν_i = 0`` on unselected rows (DESIGN §4 (iii)).  To keep the
dense factorisations small, each sample's selected rows are gathered first (selected rows
first, padded to the batch's largest count ``k``), so one batched Cholesky of size ``k×k``
replaces one of size ``K×K``.

These kernels are written by hand because they are this library's reason to exist: no
linear-algebra package offers a batched masked Cholesky with iterated-Tikhonov refinement.
"""

from __future__ import annotations

import torch

# Above this many matrix entries per chunk (N·k·k) the batch is factorised in pieces,
# so memory stays bounded for large systems.
_CHUNK_ENTRIES = 1 << 25
# Systems with at most this many rows are factorised whole (gathering costs more than it saves).
_GATHER_ABOVE = 48


def _gather_gram(G: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """``G[idx_s, idx_s]`` per sample: (N, k, k) from a shared (K, K) or per-sample (N, K, K) ``G``."""
    K = G.shape[-1]
    flat = idx.unsqueeze(-1) * K + idx.unsqueeze(-2)
    if G.ndim == 2:
        return torch.take(G, flat)
    return G.flatten(1).gather(1, flat.flatten(1)).view_as(flat).to(G.dtype)


def _selected_first(mask: torch.Tensor, k: int, dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Per sample, the indices of the selected rows first (stable), then padding rows, cut to
    ``k``; and the (N, k) 0/1 weights (1 on selected rows, 0 on padding)."""
    idx = torch.argsort((~mask).to(torch.int8), dim=-1, stable=True)[:, :k]
    return idx, mask.gather(1, idx).to(dtype)


class MaskedCholesky:
    """Factorisation of ``W G W + δ I`` for each row of the (N, K) bool mask ``mask``
    (``δ`` a float or one value per sample).

    ``solve(r)`` returns ``(W G W + δI)⁻¹ r`` for r of shape (N, K) or (N, K, q), whose entries
    off the mask are ignored (their solution entries are 0).  ``matvec(v)`` returns ``W G W v``.
    """

    def __init__(self, G: torch.Tensor, mask: torch.Tensor, delta: float):
        N, K = mask.shape
        self.G, self.mask, self.N, self.K = G, mask, N, K
        self.k = k = int(mask.sum(-1).max()) if (N and K > _GATHER_ABOVE) else K
        if k > 0.75 * K or K <= _GATHER_ABOVE:
            # little to gain from gathering: factorise the full masked K×K system
            self.idx = None
            self.w = mask.to(G.dtype)
            H = G * (self.w.unsqueeze(-1) * self.w.unsqueeze(-2))
            H.diagonal(dim1=-2, dim2=-1).add_(delta.unsqueeze(-1) if isinstance(delta, torch.Tensor) else delta)
            self.L = self._factor(H)
            return
        # selected rows first, then padding rows that stay pinned by the identity
        self.idx, self.w = _selected_first(mask, k, G.dtype)
        self.L = torch.empty(N, k, k, dtype=G.dtype, device=G.device)
        step = max(1, _CHUNK_ENTRIES // max(1, k * k))
        for start in range(0, N, step):
            sl = slice(start, min(N, start + step))
            ii = self.idx[sl]
            w = self.w[sl]
            H = _gather_gram(G if G.ndim == 2 else G[sl], ii) * (w.unsqueeze(-1) * w.unsqueeze(-2))
            H.diagonal(dim1=-2, dim2=-1).add_(delta[sl].unsqueeze(-1) if isinstance(delta, torch.Tensor) else delta)
            self.L[sl] = self._factor(H)

    @staticmethod
    def _factor(H):
        L, info = torch.linalg.cholesky_ex(H)
        if bool((info != 0).any()):
            raise FloatingPointError("Cholesky factorisation of a regularised Gram matrix failed (non-finite data?)")
        return L

    def _gather(self, r):
        if self.idx is None:
            return r * (self.w if r.ndim == 2 else self.w.unsqueeze(-1))
        if r.ndim == 2:
            return r.gather(1, self.idx) * self.w
        return r.gather(1, self.idx.unsqueeze(-1).expand(-1, -1, r.shape[-1])) * self.w.unsqueeze(-1)

    def _scatter(self, s, like):
        if self.idx is None:
            return s * (self.w if like.ndim == 2 else self.w.unsqueeze(-1))
        out = torch.zeros_like(like)
        if like.ndim == 2:
            return out.scatter_(1, self.idx, s * self.w)
        return out.scatter_(1, self.idx.unsqueeze(-1).expand(-1, -1, like.shape[-1]), s * self.w.unsqueeze(-1))

    def solve(self, r: torch.Tensor) -> torch.Tensor:
        if self.k == 0 or self.N == 0:
            return torch.zeros_like(r)
        rk = self._gather(r)
        sol = torch.cholesky_solve(rk.unsqueeze(-1) if r.ndim == 2 else rk, self.L)
        return self._scatter(sol.squeeze(-1) if r.ndim == 2 else sol, r)

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        w = self.mask.to(v.dtype)
        if v.ndim == 2:
            if self.G.ndim == 3:
                return ((w * v).unsqueeze(-2) @ self.G).squeeze(-2) * w
            return ((w * v) @ self.G) * w  # G is symmetric
        return w.unsqueeze(-1) * torch.matmul(self.G, w.unsqueeze(-1) * v)


def masked_factor(G, mask: torch.Tensor, delta):
    """A factorisation of ``W G W + δI`` with ``solve`` and ``matvec``: :class:`MaskedCholesky` for a
    dense ``G``, the Gram object's own ``factor`` for a structured one
    (:class:`~polyproj.functional.bounded.BoundedGram`)."""
    return G.factor(mask, delta) if hasattr(G, "factor") else MaskedCholesky(G, mask, delta)


def solve_consistent(
    G: torch.Tensor,
    mask: torch.Tensor,
    r: torch.Tensor,
    *,
    delta: float = 1e-10,
    max_refine: int = 30,
    rtol: float = 1e-13,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Minimum-norm solution of the consistent, possibly singular, system ``W G W ν = r``.

    ``r`` must lie in the range of ``W G W`` (it is ``W C g`` or ``W (C x − c)`` in every use
    here).  Iterated Tikhonov regularisation from ``ν₀ = 0``:

        ν_{j+1} = ν_j + (W G W + δI)⁻¹ (r − W G W ν_j)

    keeps every iterate in ``range(W G W)`` and multiplies the error along an eigenvector with
    eigenvalue σ > 0 by ``δ / (σ + δ)``: it converges to the pseudo-inverse solution
    ``(W G W)⁺ r`` without ever forming a pseudo-inverse, and dependent (duplicated, summed)
    rows need no special treatment.  Eigenvalues below ~δ behave as numerically zero, as in
    a pseudo-inverse with relative threshold δ/‖G‖.

    Returns ``(ν, rel_residual)`` with ``rel_residual = ‖r − W G W ν‖ / ‖r‖`` per sample.
    ``r`` may be (N, K) or (N, K, q) (several right-hand sides).
    """
    if hasattr(G, "max_diagonal"):
        scale = G.max_diagonal()
    else:
        scale = float(G.diagonal(dim1=-2, dim2=-1).abs().max()) if G.numel() else 1.0
    scale = scale if scale > 0 else 1.0
    chol = masked_factor(G, mask, delta * scale)
    return _iterated_tikhonov(chol.solve, chol.matvec, r, max_refine=max_refine, rtol=rtol)


def _iterated_tikhonov(solve, matvec, r, *, max_refine, rtol):
    """``ν_{j+1} = ν_j + solve(r − matvec(ν_j))`` from ``ν₀ = 0`` until the relative residual is
    ≤ ``rtol`` everywhere or stops halving anywhere.  Returns ``(ν, rel_residual)``."""
    flat = (lambda t: t.flatten(1)) if r.ndim == 3 else (lambda t: t)
    r_norm = flat(r).norm(dim=-1).clamp_min(torch.finfo(r.dtype).tiny)
    nu = solve(r)
    res = r - matvec(nu)
    rel = flat(res).norm(dim=-1) / r_norm
    for _ in range(max_refine - 1):
        if bool((rel <= rtol).all()):
            break
        nu = nu + solve(res)
        res = r - matvec(nu)
        new_rel = flat(res).norm(dim=-1) / r_norm
        stalled = bool((new_rel >= 0.5 * rel).all())
        rel = new_rel
        if stalled:
            break
    return nu, rel


def pinv_solve(G: torch.Tensor, mask: torch.Tensor, r: torch.Tensor, *, rcond: float = 1e-12) -> torch.Tensor:
    """``(W G W)⁺ r`` by a batched eigendecomposition with relative threshold ``rcond``, on
    each sample's selected rows gathered into a ``k×k`` system.

    About ten times the cost of a Cholesky: used only for the few samples whose dependent
    rows make the iterated-Tikhonov solution carry rounding noise in the null space (that
    noise is harmless for the primal point but can flip the sign of a zero multiplier)."""
    N, K = mask.shape
    if N == 0 or K == 0 or not bool(mask.any()):
        return torch.zeros_like(r)
    if hasattr(G, "pinv_solve"):  # a structured Gram matrix (bounds eliminated)
        return G.pinv_solve(mask, r, rcond)
    k = int(mask.sum(-1).max())
    idx, w = _selected_first(mask, k, r.dtype)
    H = _gather_gram(G, idx) * (w.unsqueeze(-1) * w.unsqueeze(-2))
    e, Q = torch.linalg.eigh(H)
    keep = e > rcond * e.amax(-1, keepdim=True).clamp_min(torch.finfo(r.dtype).tiny)
    inv = torch.where(keep, 1.0 / torch.where(keep, e, torch.ones_like(e)), torch.zeros_like(e))
    sol = (Q @ (inv.unsqueeze(-1) * (Q.mT @ (w * r.gather(1, idx)).unsqueeze(-1)))).squeeze(-1) * w
    return torch.zeros_like(r).scatter_(1, idx, sol)


def solve_consistent_batched(H: torch.Tensor, r: torch.Tensor, *, delta: float = 1e-10, max_refine: int = 30,
                             rtol: float = 1e-13) -> torch.Tensor:
    """Minimum-norm solution of consistent, possibly singular, per-sample systems
    ``H_s ν = r_s`` (H: (N, k, k) symmetric positive semidefinite) by iterated Tikhonov, as in
    :func:`solve_consistent` (``δ`` relative to the largest diagonal entry of each ``H_s``)."""
    if H.shape[0] == 0:
        return torch.zeros_like(r)
    scale = H.diagonal(dim1=-2, dim2=-1).abs().amax(-1).clamp_min(torch.finfo(H.dtype).tiny)
    Hr = H.clone()
    Hr.diagonal(dim1=-2, dim2=-1).add_((delta * scale)[:, None])
    L = MaskedCholesky._factor(Hr)
    nu, _ = _iterated_tikhonov(lambda v: torch.cholesky_solve(v.unsqueeze(-1), L).squeeze(-1),
                               lambda v: (H @ v.unsqueeze(-1)).squeeze(-1), r, max_refine=max_refine, rtol=rtol)
    return nu
