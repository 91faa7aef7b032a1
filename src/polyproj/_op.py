"""The projection as PyTorch operators.

Two custom operators (``torch.library.custom_op``) hold the numerics, opaque to
``torch.compile`` and given shapes for fake and meta tensors (``register_fake``) and batching
rules (``register_vmap``):

* ``polyproj::project(x, handle, batch, tol, max_iter, on_failure, engine)`` — validate, solve, report
  failures (raise or warn), returning ``[y, active, kkt, iterations, converged, *state]``;
* ``polyproj::vjp(g, handle, batch, state, with_inputs)`` — ``[J g]`` or ``[J g, *data gradients]``.

Autograd goes through ``torch.autograd.Function`` s around them (``setup_context`` style with
``generate_vmap_rule``), because functorch transforms (``vmap``, ``jacrev``, ``jacfwd``,
``grad``) compose with those and not with a custom operator's own autograd registration:

* the backward is ``J g``; ``J`` is symmetric and piecewise constant in ``x``, so the
  backward's own derivative is ``J`` again in ``g`` and zero in ``x`` (double backward), and the
  forward-mode derivative is ``J ẋ`` (``jvp``, for ``jacfwd``);
* derivatives of second order with respect to constraint data, and forward-mode derivatives
  with respect to them, raise a clear error.

A set reaches the operators through an integer handle (its ``_handle``, registered at
construction in a weak table): under ``torch.compile`` the handle is a constant of the graph.
"""

from __future__ import annotations

import itertools
import warnings
import weakref

import torch
from torch import Tensor

from ._errors import ConvergenceError, ConvergenceWarning

_SETS: "weakref.WeakValueDictionary[int, object]" = weakref.WeakValueDictionary()
_COUNTER = itertools.count(1)
ON_FAILURE = ("raise", "warn")
ENGINES = ("auto", "torch", "daqp")


def register(pset) -> int:
    """A new handle for ``pset`` (each object, copies included, gets its own)."""
    handle = next(_COUNTER)
    _SETS[handle] = pset
    return handle


def _set(handle: int):
    return _SETS[handle]


# --- forward ------------------------------------------------------------------------------


@torch.library.custom_op("polyproj::project", mutates_args=())
def project_op(x: Tensor, handle: int, batch: list[int], tol: float, max_iter: int, on_failure: int,
               engine: int) -> list[Tensor]:
    from ._validation import check_finite
    from .project import ProjectionInfo

    check_finite(x, "x")
    pset = _set(handle)
    batch = torch.Size(batch)
    bound = pset._bind(batch)
    if len(bound._engines) > 1:  # only sets with more than one forward engine take the argument
        sol = bound._solve(x, tol=tol, max_iter=max_iter, engine=ENGINES[engine])
    else:
        sol = bound._solve(x, tol=tol, max_iter=max_iter)
    conv = sol.converged
    if not bool(conv.all()):
        if hasattr(bound, "_raise_if_empty"):
            # an empty (per-sample) set is an error of the data, not of the solver
            bound._raise_if_empty((~conv).nonzero().flatten(), batch)
        info = ProjectionInfo(active=sol.active.reshape(*batch, *sol.active.shape[1:]), kkt_residual=sol.kkt.reshape(batch),
                              iterations=sol.iterations.reshape(batch), converged=conv.reshape(batch), tol=tol)
        bad = (~conv).nonzero().flatten()[:10].tolist()
        worst = float(sol.kkt[~conv].nan_to_num(float("inf")).max())
        msg = (
            f"projection did not reach tol={tol:g} on {int((~conv).sum())} of {conv.numel()} points "
            f"(flat batch indices {bad}{'…' if (~conv).sum() > 10 else ''}; worst relative KKT residual {worst:.3g}); "
            f"raise max_iter (now {max_iter}) or tol, or pass on_failure='warn'"
        )
        if ON_FAILURE[on_failure] == "raise":
            raise ConvergenceError(msg, info)
        warnings.warn(msg, ConvergenceWarning, stacklevel=2)
    return _unaliased([sol.y, sol.active, sol.kkt, sol.iterations, sol.converged, *sol.state], x)


def _unaliased(tensors, *inputs):
    """Operator outputs may not share memory with each other or with the inputs: copies where
    they would (views such as a mask's first rows, a mask saved twice)."""
    seen = {t.untyped_storage().data_ptr() for t in inputs}
    out = []
    for t in tensors:
        ptr = t.untyped_storage().data_ptr()
        out.append(t.clone() if ptr in seen else t)
        seen.add(ptr)
    return out


@project_op.register_fake
def _project_fake(x, handle, batch, tol, max_iter, on_failure, engine):
    bound = _set(handle)._bind(torch.Size(batch))
    N = x.shape[0]
    meta = [((N, *x.shape[1:]), x.dtype), ((N,), torch.float64), ((N,), torch.long), ((N,), torch.bool)]
    active, *state = bound._solution_shapes(x.shape)
    shapes = [meta[0], active, meta[1], meta[2], meta[3], *state]
    return [x.new_empty(shape, dtype=dtype) for shape, dtype in shapes]


@project_op.register_vmap
def _project_vmap(info, in_dims, x, handle, batch, tol, max_iter, on_failure, engine):
    # the vmapped dimension becomes one more leading batch dimension of the points
    xb = x.movedim(in_dims[0], 0)
    B = xb.shape[0]
    out = project_op(xb.reshape(B * xb.shape[1], *xb.shape[2:]), handle, [B, *batch], tol, max_iter, on_failure, engine)
    return [o.reshape(B, -1, *o.shape[1:]) for o in out], [0] * len(out)


# --- backward -----------------------------------------------------------------------------


@torch.library.custom_op("polyproj::vjp", mutates_args=())
def vjp_op(g: Tensor, handle: int, batch: list[int], state: list[Tensor], with_inputs: bool) -> list[Tensor]:
    pset = _set(handle)
    bound = pset._bind(torch.Size(batch))
    if not with_inputs:
        return _unaliased([bound._vjp(tuple(state), g)], g, *state)
    gx, grads = bound._vjp_with_inputs(tuple(state), g)
    return _unaliased([gx, *(_to_raw(gr, raw, batch) for gr, raw in zip(grads, pset._grad_raw()))], g, *state)


@vjp_op.register_fake
def _vjp_fake(g, handle, batch, state, with_inputs):
    raw = _set(handle)._grad_raw() if with_inputs else ()
    return [torch.empty_like(g), *(g.new_empty(t.shape, dtype=torch.float64) for t in raw)]


@vjp_op.register_vmap
def _vjp_vmap(info, in_dims, g, handle, batch, state, with_inputs):
    B = info.batch_size
    front = lambda t, d: t.movedim(d, 0) if d is not None else t.expand(B, *t.shape)  # noqa: E731
    g_ = front(g, in_dims[0])
    st = [front(s, d) for s, d in zip(state, in_dims[3])]
    if with_inputs:  # data gradients are summed over the batch: one call per vmapped slice
        outs = [vjp_op(g_[k], handle, batch, [s[k] for s in st], True) for k in range(B)]
        return [torch.stack(parts) for parts in zip(*outs)], [0] * len(outs[0])
    out = vjp_op(g_.reshape(-1, *g_.shape[2:]), handle, [B, *batch], [s.reshape(-1, *s.shape[2:]) for s in st], False)
    return [out[0].reshape(B, -1, *out[0].shape[1:])], [0]


def _to_raw(grad: Tensor, raw: Tensor, batch) -> Tensor:
    """A data gradient of the bound (flat-batch) set reduced to the shape of the set's own
    tensor: per-sample rows back to the batch shape, broadcast dimensions summed."""
    if grad.shape == raw.shape:
        return grad
    if len(batch) and grad.ndim and grad.shape[0] == torch.Size(batch).numel():
        grad = grad.reshape(*batch, *grad.shape[1:])
    return grad.sum_to_size(raw.shape)


# --- autograd -----------------------------------------------------------------------------


def _apply_j(g, handle, batch, state):
    fn = _ApplyJ if not torch.compiler.is_compiling() else _ApplyJCompiled
    return fn.apply(g, handle, batch, *state)


class _ApplyJCompiled(torch.autograd.Function):
    """``g ↦ J g`` with its own derivative (``J`` again: linear and self-adjoint in ``g``)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(g, handle, batch, *state):
        return vjp_op(g, handle, batch, list(state), False)[0]

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.handle, ctx.batch = inputs[1], inputs[2]
        ctx.save_for_backward(*inputs[3:])
        ctx.save_for_forward(*inputs[3:])

    @staticmethod
    def backward(ctx, gg):
        return (_apply_j(gg, ctx.handle, ctx.batch, ctx.saved_tensors), None, None, *[None] * len(ctx.saved_tensors))


class _ApplyJ(_ApplyJCompiled):
    @staticmethod
    def jvp(ctx, g_t, *rest):
        return _apply_j(g_t, ctx.handle, ctx.batch, ctx.saved_tensors)


class _DataVJP(torch.autograd.Function):
    """``g ↦ (J g, data gradients)``; its derivatives are not implemented (second order in the
    constraint data)."""

    @staticmethod
    def forward(g, handle, batch, *state):
        return tuple(vjp_op(g, handle, batch, list(state), True))

    @staticmethod
    def setup_context(ctx, inputs, output):
        pass

    @staticmethod
    def backward(ctx, *grads):
        raise NotImplementedError(
            "second derivatives through polyproj.project with respect to constraint data that require grad are "
            "not implemented (the HS-Jacobian's derivative in x is available: detach the constraint data)")


class ProjectFunction(torch.autograd.Function):
    """The projection with its HS-Jacobian: ``forward`` calls the operator, ``backward`` the
    vector–Jacobian operator, ``jvp`` the same product (``J`` is symmetric)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x, handle, batch, tol, max_iter, on_failure, engine, *data):
        # data: the set's tensors that require grad, inputs only so that autograd routes their
        # gradients here (the operator reads them from the set)
        return tuple(project_op(x, handle, batch, tol, max_iter, on_failure, engine))

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.handle, ctx.batch, ctx.n_data = inputs[1], inputs[2], len(inputs) - 7
        # the graph keeps the set alive (the handle table is weak): a set built for one call
        # must outlive it until the backward has run (compiled graphs hold their modules' sets)
        if not torch.compiler.is_compiling():
            ctx.pset = _set(inputs[1])
        ctx.save_for_backward(*output[5:])
        ctx.save_for_forward(*output[5:])
        ctx.mark_non_differentiable(*output[1:])

    @staticmethod
    def backward(ctx, grad_y, *unused):
        none = (None,) * 6
        state = ctx.saved_tensors
        if ctx.n_data and any(ctx.needs_input_grad[7:]):
            gx, *grads = _DataVJP.apply(grad_y, ctx.handle, ctx.batch, *state)
            grads = tuple(gr if need else None for gr, need in zip(grads, ctx.needs_input_grad[7:]))
            return (gx, *none, *grads)
        if not torch.is_grad_enabled() and not torch.compiler.is_compiling():
            # no graph of the backward is being built (no double backward): the product itself
            return (vjp_op(grad_y, ctx.handle, ctx.batch, list(state), False)[0], *none, *(None,) * ctx.n_data)
        return (_apply_j(grad_y, ctx.handle, ctx.batch, state), *none, *(None,) * ctx.n_data)


class _ProjectForward(ProjectFunction):
    @staticmethod
    def jvp(ctx, x_t, *rest):
        if any(t is not None for t in rest[6:]):
            raise NotImplementedError("forward-mode derivatives with respect to constraint data are not implemented")
        y_t = _apply_j(x_t, ctx.handle, ctx.batch, ctx.saved_tensors)
        return (y_t, None, None, None, None, *(None,) * (len(ctx.saved_tensors)))


def apply_projection(x, pset, batch, tol, max_iter, on_failure, engine, data):
    """Run the projection on flat float64 points; returns the operator's outputs."""
    if torch.compiler.is_compiling():
        if not torch.is_grad_enabled() or not (x.requires_grad or any(t.requires_grad for t in data)):
            # nothing to differentiate: the operator alone (Dynamo cannot trace an autograd.Function
            # whose inputs do not require grad: "AutogradFunctionContextVariable has no proxy")
            return tuple(project_op(x, pset._handle, list(batch), tol, max_iter, ON_FAILURE.index(on_failure),
                                    ENGINES.index(engine)))
        fn = ProjectFunction
    else:
        fn = _ProjectForward
    return fn.apply(x, pset._handle, list(batch), tol, max_iter, ON_FAILURE.index(on_failure), ENGINES.index(engine),
                    *data)
