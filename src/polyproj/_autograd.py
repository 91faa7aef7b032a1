"""The one ``torch.autograd.Function`` of the library: it holds no math.  ``forward`` calls the
set's solver, ``setup_context`` saves the set's backward state (masks, never n×n matrices),
``backward`` calls the set's pure HS-Jacobian product."""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable


class ProjectFunction(torch.autograd.Function):
    @staticmethod
    def forward(x, pset, tol, max_iter):
        sol = pset._solve(x.detach(), tol=tol, max_iter=max_iter)
        return (sol.y, sol.active, sol.kkt, sol.iterations, sol.converged, *sol.state)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.pset = inputs[1]
        ctx.save_for_backward(*output[5:])
        ctx.mark_non_differentiable(*output[1:])

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_y, *unused):
        if grad_y is None:
            return None, None, None, None
        return ctx.pset._vjp(ctx.saved_tensors, grad_y.contiguous()), None, None, None
