"""The one ``torch.autograd.Function`` of the library: it holds no math.  ``forward`` calls the
set's solver, ``setup_context`` saves the set's backward state (masks and multipliers, never
n×n matrices), ``backward`` calls the set's pure HS-Jacobian product and, when constraint
tensors require grad, their gradients from the same solve."""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable


class ProjectFunction(torch.autograd.Function):
    @staticmethod
    def forward(x, pset, tol, max_iter, *constraint_tensors):
        # constraint_tensors are the set's own data (already inside ``pset``): they are inputs
        # only so that autograd routes their gradients here.
        sol = pset._solve(x.detach(), tol=tol, max_iter=max_iter)
        return (sol.y, sol.active, sol.kkt, sol.iterations, sol.converged, *sol.state)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.pset = inputs[1]
        ctx.n_constraint = len(inputs) - 4
        ctx.save_for_backward(*output[5:])
        ctx.mark_non_differentiable(*output[1:])

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_y, *unused):
        none = (None,) * (3 + ctx.n_constraint)
        if grad_y is None:
            return (None, *none)
        g = grad_y.contiguous()
        if ctx.n_constraint and any(ctx.needs_input_grad[4:]):
            gx, grads = ctx.pset._vjp_with_inputs(ctx.saved_tensors, g)
            grads = tuple(gr if need else None for gr, need in zip(grads, ctx.needs_input_grad[4:]))
            return (gx, None, None, None, *grads)
        return (ctx.pset._vjp(ctx.saved_tensors, g), *none)
