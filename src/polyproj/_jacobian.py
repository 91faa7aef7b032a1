r"""Pure backward functions: products with the HS-Jacobian element ``P₀``.

For a polyhedron ``P = {y : A y ≤ a, B y = b}`` and ``ȳ = Π_P(x)`` with full active set
``I``, ``M = [A_I; B]``, the Han–Sun element of Li, Sun & Toh (Math. Program. 179, 2020) is

.. math:: P_0 = I - M^\top (M M^\top)^{+} M ,

the orthogonal projector onto ``ker M``.  It is symmetric, so ``Jᵀg = Jg`` and

.. math:: J g = g - M^\top \nu,\qquad M M^\top \nu = M g \quad(\text{min-norm } \nu).

The same ``ν`` is the gradient with respect to the right-hand sides ``(a_I, b)``
(DESIGN §7): ``g_{a_I} = ν_I``, ``g_b = ν_B``, zero on inactive rows.

Nothing of size n×n per sample is formed except in :func:`explicit_jacobian`.
"""

from __future__ import annotations

import torch

from .functional._masked_linalg import solve_consistent

__all__ = ["masked_nullspace_product", "explicit_jacobian"]


def masked_nullspace_product(data, active: torch.Tensor, g: torch.Tensor):
    """``(J g, ν)`` for every sample: ``J g = g − Cᵀ W ν`` with ``W G W ν = W C g`` (min-norm).

    data: a :class:`~polyproj.functional.polyhedron.PolyhedronData` (rows ``C`` shared or per
    sample, ``G = C Cᵀ``), active: (N, K) bool, g: (N, n).
    Cost per sample: O(K n) for the right-hand side and O(k³) for one Cholesky of the
    regularised masked Gram matrix (gathered to the k rows active in the sample), plus a few
    refinement sweeps.
    """
    N, K = active.shape
    if K == 0:
        return g.clone(), g.new_zeros(N, 0)
    nu, _ = solve_consistent(data.G, active, data.rows(g) * active)
    return g - data.combine(nu), nu


def explicit_jacobian(data, active: torch.Tensor, n: int) -> torch.Tensor:
    """The explicit (N, n, n) matrices ``P₀ = I − M^†M`` (for inspection and tests)."""
    N, K = active.shape
    C = data.matrix()
    eye = torch.eye(n, dtype=C.dtype, device=C.device).expand(N, n, n)
    if K == 0 or not bool(active.any()):
        return eye.clone()
    rhs = active.unsqueeze(-1) * C  # (N, K, n): W C
    nu, _ = solve_consistent(data.G, active, rhs)
    J = eye - C.mT @ nu
    return 0.5 * (J + J.transpose(-1, -2))


# --- closed forms (DESIGN §5); each equals the generic P₀ of the set written as a polyhedron


def box_product(free: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Box ``[l, u]``: ``J = Diag(f)``, ``f`` = coordinates strictly between their bounds."""
    return g * free


def box_jacobian(free: torch.Tensor) -> torch.Tensor:
    return torch.diag_embed(free.to(torch.float64))


def halfspace_product(c: torch.Tensor, active: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """``{c·y ≤ β}``: ``J = I − ccᵀ/‖c‖²`` where the constraint is active (``c·x ≥ β``), else ``I``."""
    return g - (active[:, 0] * (g @ c) / (c @ c))[:, None] * c


def halfspace_jacobian(c: torch.Tensor, active: torch.Tensor) -> torch.Tensor:
    n = c.shape[0]
    eye = torch.eye(n, dtype=c.dtype, device=c.device)
    return eye - active[:, :1, None] * (torch.outer(c, c) / (c @ c))


def face_product(f: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Simplex (``f`` = support) and capped simplex (``f`` = free coordinates):
    ``J g = f ⊙ (g − (fᵀg)/|F|)``, and ``J = 0`` when ``F = ∅``."""
    ff = f.to(g.dtype)
    count = ff.sum(-1, keepdim=True)
    return ff * (g - (ff * g).sum(-1, keepdim=True) / count.clamp_min(1))


def face_jacobian(f: torch.Tensor) -> torch.Tensor:
    ff = f.to(torch.float64)
    count = ff.sum(-1).clamp_min(1)[:, None, None]
    return torch.diag_embed(ff) - ff[:, :, None] * ff[:, None, :] / count


def transport_product(support: torch.Tensor, G: torch.Tensor):
    """Transportation/Birkhoff: ``J(G) = Θ ⊙ (G − α1ᵀ − 1βᵀ)`` with the minimum-norm solution
    of ``L [α; β] = [(Θ⊙G)1; (Θ⊙G)ᵀ1]``, ``L`` the signless Laplacian of the support graph
    (singular along one direction per connected component, to which ``J(G)`` is blind), by
    iterated Tikhonov on ``L + δI``.  δ = 1e-6 × the largest degree: rounding noise of the
    right-hand side along the kernel grows by 1/δ (δ = 1e-10 left up to 2e-5 of it in the
    marginal gradients; now ~1e-9, and the global direction (1, −1) is removed exactly), while
    each refinement contracts the rest by δ/(λ + δ) (three solves on random supports).
    Returns ``(J(G), α, β)``; ``(α, β)`` is also the gradient for ``(r, c)``."""
    from .functional._masked_linalg import _iterated_tikhonov
    from .functional.transport import SchurLaplacian, drop_gauge

    m, n = G.shape[1:]
    if n > m:  # the Schur complement is taken on the column side: keep it the smaller one
        JG, beta, alpha = transport_product(support.mT, G.mT)
        return JG.mT, alpha, beta
    theta = support.to(G.dtype)
    TG = theta * G
    rhs = torch.cat([TG.sum(2), TG.sum(1)], 1)
    degree = torch.maximum(theta.sum(2).amax(-1), theta.sum(1).amax(-1)).clamp_min(1.0)
    reg = SchurLaplacian(theta, 1e-6 * degree)
    ab, _ = _iterated_tikhonov(reg.solve, reg.matvec, rhs, max_refine=30, rtol=1e-13)
    ab = drop_gauge(ab, m)
    alpha, beta = ab[:, :m], ab[:, m:]
    return theta * (G - alpha[:, :, None] - beta[:, None, :]), alpha, beta


def transport_jacobian(support: torch.Tensor) -> torch.Tensor:
    """Explicit (N, mn, mn) Jacobian by applying :func:`transport_product` to a basis."""
    return jacobian_from_product(lambda S, G: transport_product(S, G)[0], (support,), support.shape[1:])


def jacobian_from_product(product, state: tuple, event_shape) -> torch.Tensor:
    """Explicit (N, d, d) matrix of a symmetric Jacobian product ``product(*state, G)`` (the
    state tensors (N, …) per sample, ``G`` of shape (N, *event_shape)), applied to the d basis
    matrices at once and symmetrised."""
    N = state[0].shape[0]
    d = int(torch.tensor(event_shape).prod())
    basis = torch.eye(d, dtype=torch.float64, device=state[0].device).reshape(d, *event_shape)
    G = basis.unsqueeze(0).expand(N, d, *event_shape).reshape(N * d, *event_shape)
    rep = lambda t: t.unsqueeze(1).expand(N, d, *t.shape[1:]).reshape(N * d, *t.shape[1:])  # noqa: E731
    J = product(*map(rep, state), G).reshape(N, d, d)  # row j holds J e_j; J is symmetric
    return 0.5 * (J + J.mT)
