"""``torch.nn`` front end."""

from __future__ import annotations

import torch

from ._validation import check_choice, check_positive_int, check_tolerance
from .project import project
from .sets import ConvexSet

__all__ = ["Projection"]


class Projection(torch.nn.Module):
    r"""A layer computing the exact Euclidean projection :math:`y = \Pi_P(x)`.

    ``layer(x) == polyproj.project(x, P, tol=tol, max_iter=max_iter, on_failure=on_failure)``.
    Moving the module (``.to(device)``, ``.cuda()``) moves the set with it.  The last call's
    :class:`polyproj.ProjectionInfo` is kept in ``layer.last_info`` for monitoring.

    Example
    -------
    >>> import torch, polyproj as pp
    >>> layer = pp.Projection(pp.Polyhedron(A=torch.eye(3), a=torch.ones(3)))
    >>> layer(torch.tensor([[0.5, 2.0, -1.0]], dtype=torch.float64))
    tensor([[ 0.5000,  1.0000, -1.0000]], dtype=torch.float64)
    """

    def __init__(self, P: ConvexSet, *, tol: float | None = None, max_iter: int = 500, on_failure: str = "raise"):
        super().__init__()
        if not isinstance(P, ConvexSet):
            raise ValueError(f"P must be a polyproj constraint set, got {type(P).__name__}")
        if tol is not None:
            check_tolerance(tol, torch.float64)
        self.set = P
        self.tol = tol
        self.max_iter = check_positive_int(max_iter, "max_iter")
        self.on_failure = check_choice(on_failure, "on_failure", ("raise", "warn"))
        self.last_info = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y, self.last_info = project(x, self.set, tol=self.tol, max_iter=self.max_iter,
                                    on_failure=self.on_failure, return_info=True)
        return y

    def _apply(self, fn, *args, **kwargs):
        out = super()._apply(fn, *args, **kwargs)
        probe = fn(torch.zeros((), device=self.set.device))
        self.set = self.set.to(probe.device)
        return out

    def extra_repr(self) -> str:
        return f"{self.set!r}, tol={self.tol}, max_iter={self.max_iter}"
