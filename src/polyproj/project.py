"""Public entry points: :func:`project`, :func:`hs_jacobian` and :class:`ProjectionInfo`."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from ._op import ENGINES, apply_projection
from .functional import active_set
from ._validation import check_choice, check_positive_int, check_tolerance
from .sets import ConvexSet

__all__ = ["ProjectionInfo", "project", "hs_jacobian"]


@dataclass
class ProjectionInfo:
    """Diagnostics of one call of :func:`project` (batch shape ``(...)`` of the input).

    Attributes
    ----------
    active : (..., m) bool tensor, or (..., m, n) for matrix-valued sets
        Inequality constraints active at the output (the set ``I`` of the HS-Jacobian).
    kkt_residual : (...,) float64 tensor
        Relative KKT residual of the output: the larger of its primal violation relative to the
        set's scale and its stationarity/complementarity residual relative to the input's
        (:mod:`polyproj.sets`; README, "What tol means").
    iterations : (...,) int64 tensor
        Newton iterations of the forward solver.
    converged : (...,) bool tensor
        ``kkt_residual <= tol``.
    tol : float
        The tolerance that was requested.
    """

    active: torch.Tensor
    kkt_residual: torch.Tensor
    iterations: torch.Tensor
    converged: torch.Tensor
    tol: float


def check_engine(engine, pset) -> str:
    """``engine`` validated for the set ``pset`` (:func:`project`'s argument; a set or a set class)."""
    engine = check_choice(engine, "engine", ENGINES)
    kind = pset if isinstance(pset, type) else type(pset)
    if engine != "auto" and engine not in kind._engines:
        raise ValueError(f"engine={engine!r} is not available for {kind.__name__} (its engines: "
                         f"{', '.join(('auto', *kind._engines))})")
    if engine == "daqp" and not active_set.available():
        raise ImportError("engine='daqp' needs the daqp package: pip install daqp (or pip install 'polyproj[fast]')")
    return engine


def _run(x, pset, tol, max_iter, on_failure, engine="auto"):
    if not isinstance(pset, ConvexSet):
        raise ValueError(f"P must be a polyproj constraint set (e.g. polyproj.Polyhedron), got {type(pset).__name__}")
    # values are checked in the operator, and the set is bound to the batch there: nothing
    # here may break a compiled graph
    flat, batch, _ = pset._flat_points(x, "x", check_values=False, bind=False)
    tol = check_tolerance(tol, x.dtype)
    max_iter = check_positive_int(max_iter, "max_iter")
    on_failure = check_choice(on_failure, "on_failure", ("raise", "warn"))
    engine = check_engine(engine, pset)
    event = flat.shape[1:]
    # Every set solves in float64 whatever the input dtype: a threshold x − τ formed in float32
    # loses the set's scale as soon as ‖x‖ is a few hundred times larger than it.
    flat = flat.to(torch.float64)
    # Inside an autocast region the solve stays in float64 (no op of it may be downcast); the
    # output comes back in the input's dtype, as autocast users expect.
    autocast = flat.device.type in ("cpu", "cuda") and torch.is_autocast_enabled(flat.device.type)
    with torch.autocast(device_type=flat.device.type, enabled=False) if autocast else contextlib.nullcontext():
        y, active, kkt, iters, conv, *state = apply_projection(flat, pset, batch, tol, max_iter, on_failure,
                                                               engine, pset._grad_raw())
    info = ProjectionInfo(
        active=active.reshape(*batch, *active.shape[1:]),
        kkt_residual=kkt.reshape(batch),
        iterations=iters.reshape(batch),
        converged=conv.reshape(batch),
        tol=tol,
    )
    return y.reshape(*batch, *event).to(x.dtype), info, state, batch


def project(x: torch.Tensor, P: ConvexSet, *, tol: float | None = None, max_iter: int = 500,
            on_failure: str = "raise", return_info: bool = False, engine: str = "auto"):
    r"""Euclidean projection :math:`y = \Pi_P(x) = \arg\min_{y \in P} \tfrac12\|y - x\|^2`.

    Parameters
    ----------
    x : tensor (..., *P.event_shape), float16, bfloat16, float32 or float64
        Points to project; any leading batch shape.  Same device as ``P``.  Half-precision
        inputs (and autocast regions) are solved in float64 and the output is rounded back.
    P : ConvexSet
        The constraint set, e.g. :class:`polyproj.Polyhedron`.
    tol : float, optional
        Relative KKT tolerance, default 1e-9 for every input dtype: the output violates no
        constraint by more than ``tol`` times the set's scale (the magnitude of the constraint
        terms and right-hand sides, never that of ``x``), and stationarity and
        complementarity hold to ``tol`` relative to ``max(‖x‖∞, ‖y‖∞)``.  The solves
        run in float64 whatever the input dtype; the output is rounded to it.
    max_iter : int
        Newton-iteration budget per point.
    on_failure : {"raise", "warn"}
        A point that misses ``tol`` raises :class:`polyproj.ConvergenceError` (default) or
        issues a :class:`polyproj.ConvergenceWarning` and is flagged in ``info.converged``.
    return_info : bool
        Also return a :class:`ProjectionInfo`.
    engine : {"auto", "torch", "daqp"}
        The forward solver of a :class:`polyproj.Polyhedron` (other sets have one).  ``"torch"``:
        the batched semismooth Newton/ALM solver, any device.  ``"daqp"``: the compiled dual
        active-set solver DAQP, one call per sample, CPU only (``pip install daqp``; on CUDA the
        batched solver runs); samples it
        does not certify go to the batched solver.  ``"auto"`` (default): DAQP on CPU for
        problems of at most 128 variables and 256 rows when it is installed, else the batched
        solver.  Every engine's output is certified to ``tol`` by the same KKT residual, and the
        backward is the same.

    Returns
    -------
    y : tensor shaped and typed like ``x``; differentiable with the HS-Jacobian
        ``J g = g − Mᵀ(MMᵀ)⁺Mg`` (Han & Sun 1997; Li, Sun & Toh 2020), a conservative
        Jacobian of :math:`\Pi_P` (Bolte & Pauwels 2021).
    info : ProjectionInfo, only if ``return_info``.
    """
    y, info, _, _ = _run(x, P, tol, max_iter, on_failure, engine)
    return (y, info) if return_info else y


def hs_jacobian(x: torch.Tensor, P: ConvexSet, *, tol: float | None = None, max_iter: int = 500,
                on_failure: str = "raise") -> torch.Tensor:
    r"""The explicit HS-Jacobian element :math:`P_0 = I - M^\top(MM^\top)^+M` at ``Π_P(x)``.

    Returns a tensor of shape ``(..., d, d)`` with ``d = prod(P.event_shape)`` (matrix-valued
    points are flattened row-major), dtype of ``x``.  Meant for inspection and tests: training
    never forms it (the backward of :func:`project` applies it matrix-free).
    """
    _, _, state, batch = _run(x.detach(), P, tol, max_iter, on_failure)
    J = P._bind(batch)._jacobian(tuple(state))
    return J.reshape(*batch, *J.shape[-2:]).to(x.dtype)
