r"""Constraint sets.  Every set implements one small protocol, so :func:`polyproj.project`,
:func:`polyproj.hs_jacobian` and :class:`polyproj.Projection` never care which set they hold:

* ``event_shape`` — the trailing shape of a point (``(n,)`` for vectors);
* ``batch_shape`` — leading shape of per-sample constraint data (``()`` when shared); it
  broadcasts against the batch shape of the points;
* ``device`` and ``to(device)`` — sets are immutable; ``to`` returns a moved copy;
* ``_bind(batch)`` — the set's data broadcast to a flat batch of ``prod(batch)`` points (a set
  with shared data and no parameter requiring grad returns itself);
* ``_solve(x, tol=, max_iter=)`` — forward on a flat batch ``(N, *event_shape)``,
  returning a :class:`SetSolution` (no autograd inside);
* ``_vjp(state, g)`` — the HS-Jacobian product ``J g`` from the saved state;
* ``_grad_inputs()`` and ``_vjp_with_inputs(state, g)`` — the constraint tensors gradients flow
  to, and ``(J g, their gradients)`` from one solve;
* ``_jacobian(state)`` — the explicit ``(N, d, d)`` Jacobian element;
* ``_violation(y)`` — the largest constraint violation per point of a flat batch;
* ``_violation_scale(y)`` — the set's scale at those points (what a violation is relative to);
* ``contains(y, tol=)`` and ``violation(y)`` — public membership test and violation.

What "converged" means (every set, every dtype: the solves run in float64): the output's
largest violation is at most ``tol`` times the set's scale at the output — the magnitude of
the terms of its constraints and of their right-hand sides, ``max(‖ |C| |y| ‖∞, ‖c‖∞)`` for
unit-norm rows ``C``, never the magnitude of the input — and, for the iterative solvers,
stationarity and complementarity hold to ``tol`` relative to ``max(‖x‖∞, ‖y‖∞)``.
"""

from __future__ import annotations

import functools
import inspect
import math
from dataclasses import dataclass

import numpy as np
import torch

from . import _jacobian
from . import _op
from ._errors import InfeasibleError
from ._feasibility import check_nonempty
from ._validation import DEFAULT_TOL, as_tensor, broadcast_batch, check_input
from .functional import active_set
from ._bounds import _bounds, _per_coordinate
from .functional.bounded import BoundedData
from .functional.polyhedron import PolyhedronData, solve_polyhedron

__all__ = ["ConvexSet", "Polyhedron", "SetSolution"]


def flat_batch(t, batch, event_ndim: int):
    """``t`` (batch dims + ``event_ndim`` event dims) broadcast to ``batch`` and flattened to
    ``(prod(batch), *event)``; a tensor without batch dims (shared data, or a scalar standing
    for a whole event) or a Python scalar is returned as it is."""
    if not isinstance(t, torch.Tensor) or t.ndim <= event_ndim:
        return t
    event = t.shape[t.ndim - event_ndim:]
    return t.expand(*batch, *event).reshape(-1, *event)


def sum_to(grad: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """A per-sample gradient (N, ...) reduced to the shape of the parameter it belongs to:
    summed over the batch when the parameter is shared, and over the event when it is a
    scalar broadcast to every coordinate."""
    if grad.ndim == t.ndim and grad.shape == t.shape:
        return grad
    return grad.sum_to_size(t.shape) if grad.ndim == t.ndim else grad.sum(0).sum_to_size(t.shape)


@functools.cache
def _init_signature(cls) -> inspect.Signature:
    """``cls.__init__``'s signature, read once per class (sets are built at every call)."""
    return inspect.signature(cls.__init__)


@dataclass
class SetSolution:
    """What a set's forward solver returns (flat batch, float64)."""

    y: torch.Tensor  # (N, *event_shape)
    active: torch.Tensor  # (N, m) bool: active inequality constraints
    kkt: torch.Tensor  # (N,) relative KKT residual
    iterations: torch.Tensor  # (N,) long
    converged: torch.Tensor  # (N,) bool
    state: tuple  # tensors saved for the backward (no n×n per sample)


class ConvexSet:
    """Base class of the constraint sets (see the module docstring for the protocol).

    A set is a snapshot of its data.  It remembers the arguments it was built from
    (``_init_args``), so that :class:`polyproj.Projection` can rebuild it from the current
    values of learned data at every call (:meth:`_rebuild`), and it watches the tensors among
    them that require grad: if one is changed in place after the set was built (an optimizer
    step), using the set raises instead of silently projecting onto the old values."""

    event_shape: tuple[int, ...]
    batch_shape: tuple[int, ...] = ()
    _init_args: dict = {}
    _watched: tuple = ()

    def __new__(cls, *args, **kwargs):
        obj = super().__new__(cls)
        bound = _init_signature(cls).bind(None, *args, **kwargs)
        bound.apply_defaults()
        obj._init_args = {k: v for k, v in list(bound.arguments.items())[1:]}
        obj._watched = tuple((k, v, v._version) for k, v in obj._init_args.items()
                             if isinstance(v, torch.Tensor) and v.requires_grad)
        obj._handle = _op.register(obj)
        return obj

    def __getstate__(self):
        state = self.__dict__.copy()
        state.pop("_handle", None)  # a handle is local to the process (pickling, deepcopy)
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._handle = _op.register(self)

    def _copy(self) -> "ConvexSet":
        """A shallow copy with its own operator handle (``to``, ``_bind``)."""
        new = object.__new__(type(self))
        new.__dict__.update(self.__dict__)
        new._handle = _op.register(new)
        return new

    def _grad_raw(self) -> list:
        """The set's own tensors that require grad, in the order of ``_bind(...)._grad_inputs()``:
        inputs of the autograd function, so that their gradients reach the user's tensors."""
        return []

    def _solution_shapes(self, x_shape) -> list:
        """``[(shape, dtype)]`` of ``active`` and of the backward state of a solve of flat points of
        shape ``x_shape`` (for fake and meta tensors)."""
        raise NotImplementedError  # pragma: no cover

    def _rebuild(self, values: dict) -> "ConvexSet":
        """The same set built from ``values`` in place of some of its tensor arguments."""
        return type(self)(**{**self._init_args, **values})

    def _check_not_stale(self) -> None:
        if torch.compiler.is_compiling():
            return
        for name, tensor, version in self._watched:
            if tensor._version != version:
                raise ValueError(
                    f"the constraint data {name!r} of this {type(self).__name__} changed in place after the set was "
                    f"built (an optimizer step?); a set is a snapshot of its data and would keep projecting onto the "
                    f"old values. Build the set inside forward, or wrap it in polyproj.Projection, which reads "
                    f"learned data at every call")

    @property
    def device(self) -> torch.device:  # pragma: no cover - abstract
        raise NotImplementedError

    def to(self, device) -> "ConvexSet":  # pragma: no cover - abstract
        raise NotImplementedError

    # forward engines besides "auto" (functional/active_set.py); "auto" picks among them
    _engines: tuple = ("torch",)

    def _bind(self, batch: torch.Size) -> "ConvexSet":
        return self

    def _solve(self, x: torch.Tensor, *, tol: float, max_iter: int) -> SetSolution:  # pragma: no cover
        raise NotImplementedError

    def _vjp(self, state: tuple, g: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def _grad_inputs(self) -> tuple:
        return ()

    def _vjp_with_inputs(self, state: tuple, g: torch.Tensor) -> tuple:
        return self._vjp(state, g), ()

    def _jacobian(self, state: tuple) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def _violation(self, y: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        """Largest absolute constraint violation per point of a flat float64 batch."""
        raise NotImplementedError

    def _violation_scale(self, y: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        """The set's scale at each point of a flat float64 batch: the largest magnitude among
        the terms of its constraint evaluations and their right-hand sides."""
        raise NotImplementedError

    def _relative_violation(self, y: torch.Tensor, x: torch.Tensor | None = None) -> torch.Tensor:
        """``_violation(y) / max(_violation_scale(y), eps·‖x‖∞)`` per point (the floor only
        matters for sets of scale 0, cones, at y ≈ 0; without ``x`` it is ``eps``)."""
        eps = torch.finfo(torch.float64).eps
        floor = eps * x.flatten(1).abs().amax(-1) if x is not None else torch.full_like(y.flatten(1)[:, 0], eps)
        return self._violation(y) / torch.maximum(self._violation_scale(y), floor).clamp_min(1e-300)

    def _flat_points(self, y: torch.Tensor, name: str, *, check_values: bool = True, bind: bool = True):
        """Validate points ``(..., *event_shape)`` and flatten them against the set's batch shape
        (differentiably, in their own dtype): returns ``(flat points (N, *event), batch shape,
        bound set or None when ``bind=False``)``.  ``check_values=False`` leaves the NaN/Inf check to the caller (the
        projection operator does it, so that a compiled graph does not break here)."""
        self._check_not_stale()
        y = check_input(y, name, self.event_shape, self.device, check_values=check_values)
        k = len(self.event_shape)
        event = y.shape[y.ndim - k:]
        if hasattr(self, "_validate_event"):
            self._validate_event(event)
        batch = broadcast_batch(y.shape[: y.ndim - k], self.batch_shape, name)
        flat = y.expand(*batch, *event).reshape(-1, *event)
        return flat, batch, (self._bind(batch) if bind else None)

    def violation(self, y: torch.Tensor, *, relative: bool = False) -> torch.Tensor:
        """The largest constraint violation of each point of ``y`` (..., *event_shape), as a
        float64 tensor (...): for polyhedra the distance to the most violated half-space or
        hyperplane (rows normalised), for the structured sets the largest violated bound or
        marginal.  With ``relative=True`` it is divided by the set's scale at ``y`` (module
        docstring; at least machine epsilon): the quantity ``tol`` bounds."""
        flat, batch, bound = self._flat_points(y, "y")
        flat = flat.detach().to(torch.float64)
        if not flat.shape[0]:
            return flat.new_zeros(batch)
        out = bound._relative_violation(flat) if relative else bound._violation(flat)
        return out.reshape(batch)

    def contains(self, y: torch.Tensor, *, tol: float | None = None) -> torch.Tensor:
        """Whether each point of ``y`` (..., *event_shape) lies in the set, up to a violation of
        ``tol`` times the set's scale at ``y`` (``violation(y, relative=True) <= tol``).

        The default ``tol`` is the library's solve tolerance 1e-9 for float64 points and
        ``4·eps`` of the points' dtype otherwise (4.8e-7 for float32): a projection rounded to
        float32 moves each constraint by at most half an ulp of the set's scale.  Returns a
        bool tensor (...)."""
        if tol is None:
            tol = DEFAULT_TOL if not isinstance(y, torch.Tensor) or y.dtype == torch.float64 else 4 * torch.finfo(y.dtype).eps
        elif not isinstance(tol, (int, float)) or isinstance(tol, bool) or not (0 <= tol < 1):
            raise ValueError(f"tol must be a real number in [0, 1), got {tol!r}")
        return self.violation(y, relative=True) <= tol


class Polyhedron(ConvexSet):
    r"""The polyhedron :math:`P = \{y \in ℝ^n : A y \le a,\ B y = b,\ l \le y \le u\}`, shared by
    a batch or one per sample.

    Parameters
    ----------
    A, a : (..., m, n) and (..., m) arrays, optional
        Inequality constraints ``A y ≤ a``.  Give both or neither.
    B, b : (..., p, n) and (..., p) arrays, optional
        Equality constraints ``B y = b``.  Give both or neither.
    lower, upper : scalars or (..., n) arrays, optional
        Variable bounds ``lower ≤ y ≤ upper`` (±inf: no bound on that side; a scalar applies to
        every coordinate).  They are handled natively — never rows of a Gram matrix: every
        masked system eliminates the bounds in closed form and factorises only the general
        rows restricted to the free variables (:mod:`polyproj.functional.bounded`), so a set
        that is mostly bounds costs what its few coupling rows cost.  Per-sample bounds and
        bounds that require grad are supported; which coordinates have a finite bound must be
        the same for every sample.
    check_feasibility : bool
        Check at construction that ``P`` (every sample's ``P``) is nonempty (a certified
        projection of the origin, or else an LP solved by HiGHS) and raise
        :class:`InfeasibleError`, with a Farkas certificate naming the conflicting rows and
        the batch indices of the empty samples, when it is empty.  Default True; with False
        an empty sample is still detected when a projection onto it fails.

    Leading dimensions of ``A, a, B, b`` are batch dimensions: they broadcast against each
    other (``set.batch_shape``) and against the batch dimensions of the points projected, so a
    shared ``A`` with a per-sample right-hand side ``a`` of shape ``(N, m)`` projects a batch
    ``x`` of shape ``(N, n)`` sample by sample.  Data may be torch tensors, numpy arrays,
    scipy.sparse matrices or nested sequences; the set keeps float64 copies (a snapshot: later
    in-place changes of the caller's tensors do not reach it) on the device of the tensors
    given (CPU otherwise).  Rows are normalised internally (the set is unchanged).
    Redundant, duplicated and linearly dependent rows, rank-deficient ``B`` and vertices
    with more than ``n`` active rows are all supported.

    Projection (:func:`polyproj.project`): proximal augmented Lagrangian with semismooth
    Newton, then active-set polishing; KKT residual ≤ ``tol`` relative (1e-9 in float64).

    Backward, with ``M = [A_I; B]`` on the active rows ``I`` and ``ν`` the multipliers
    (``x − y = Mᵀν``): ``g_x = J g = g − Mᵀw`` with the minimum-norm ``w`` of
    ``MMᵀw = Mg`` (the HS-Jacobian, Han & Sun 1997), and, for constraint tensors that
    require grad (DESIGN §7, from ``y = x − M⁺(Mx − c)`` on the active face):
    ``g_a = w`` on the active rows and 0 elsewhere, ``g_b = w``,
    ``g_A = −(ν (Jg)ᵀ + w yᵀ)`` on the active rows, ``g_B`` likewise; broadcast dimensions
    are summed.  With dependent active rows ``w`` is the minimum-norm solution in the
    row-normalised metric (duplicated rows split the gradient equally, a Clarke element of
    ``min(a₁, a₂)``).  Learned data: wrap the set in :class:`polyproj.Projection`, which
    rebuilds it from the current values at every call (or build it inside ``forward``); a set
    whose data were changed in place after it was built refuses to project.

    Example
    -------
    >>> import torch, polyproj as pp
    >>> P = pp.Polyhedron(A=[[1.0, 1.0]], a=[1.0], B=[[1.0, -1.0]], b=[0.0])
    >>> pp.project(torch.tensor([2.0, 2.0], dtype=torch.float64), P)
    tensor([0.5000, 0.5000], dtype=torch.float64)
    """

    _engines = ("torch", "daqp")

    def __init__(self, A=None, a=None, B=None, b=None, *, lower=None, upper=None, check_feasibility: bool = True):
        if (A is None) != (a is None):
            raise ValueError("A and a must be given together (A y <= a); got only " + ("A" if a is None else "a"))
        if (B is None) != (b is None):
            raise ValueError("B and b must be given together (B y = b); got only " + ("B" if b is None else "b"))
        bounded = lower is not None or upper is not None
        if A is None and B is None and not bounded:
            raise ValueError("Polyhedron needs at least one of (A, a), (B, b), lower or upper")
        device = next((t.device for t in (A, a, B, b, lower, upper) if isinstance(t, torch.Tensor)), torch.device("cpu"))
        A_t = as_tensor(A, "A", device=device, min_ndim=2, keep_grad=True) if A is not None else None
        B_t = as_tensor(B, "B", device=device, min_ndim=2, keep_grad=True) if B is not None else None
        if bounded:
            lo, up, (nb_,) = _bounds(-float("inf") if lower is None else lower, float("inf") if upper is None else upper,
                                     "polyhedron")
        if A_t is not None or B_t is not None:
            n = (A_t if A_t is not None else B_t).shape[-1]
            if bounded and nb_ not in (-1, n):
                raise ValueError(f"lower and upper must be scalars or have shape (..., {n}) (n = columns of A/B), "
                                 f"got shapes {tuple(lo.shape)} and {tuple(up.shape)}")
        elif nb_ == -1:
            raise ValueError("a Polyhedron given only scalar bounds has no dimension: give lower or upper of shape "
                             "(..., n), or rows A/B")
        else:
            n = nb_
        if A_t is not None and B_t is not None and B_t.shape[-1] != n:
            raise ValueError(f"A and B must have the same number of columns, got A {tuple(A_t.shape)} and B {tuple(B_t.shape)}")
        if n == 0:
            raise ValueError("the constraint matrices must have at least one column (n >= 1)")
        A_t = A_t if A_t is not None else torch.zeros(0, n, dtype=torch.float64, device=device)
        self.lower, self.upper = (lo, up) if bounded else (None, None)
        B_t = B_t if B_t is not None else torch.zeros(0, n, dtype=torch.float64, device=device)
        a_t = as_tensor(a, "a", device=device, min_ndim=1, keep_grad=True) if a is not None else A_t.new_zeros(0)
        b_t = as_tensor(b, "b", device=device, min_ndim=1, keep_grad=True) if b is not None else B_t.new_zeros(0)
        for vec, mat, vn, mn, k in ((a_t, A_t, "a", "A", "m"), (b_t, B_t, "b", "B", "p")):
            if vec.shape[-1] != mat.shape[-2]:
                raise ValueError(f"{vn} must have shape (..., {k}) with {k} = {mat.shape[-2]} rows of {mn} "
                                 f"{tuple(mat.shape)}, got {tuple(vec.shape)}")
        bound_batch = [t.shape[:-1] for t in (self.lower, self.upper) if t is not None and t.ndim]
        try:
            batch = torch.broadcast_shapes(A_t.shape[:-2], a_t.shape[:-1], B_t.shape[:-2], b_t.shape[:-1], *bound_batch)
        except RuntimeError:
            bounds = f", lower {tuple(self.lower.shape)}, upper {tuple(self.upper.shape)}" if bounded else ""
            raise ValueError(
                "the batch dimensions of the constraint data do not broadcast: "
                f"A {tuple(A_t.shape)}, a {tuple(a_t.shape)}, B {tuple(B_t.shape)}, b {tuple(b_t.shape)}{bounds}"
            ) from None
        self.A, self.a, self.B, self.b = A_t, a_t, B_t, b_t
        self.event_shape = (n,)
        self.batch_shape = tuple(batch)
        self._data, self._scale = self._normalise(A_t, a_t, B_t, b_t)
        if bounded:
            self._data, self._scale = self._with_bounds(self._data, self._scale, self.lower, self.upper, n)
        if check_feasibility:
            self._check_nonempty()

    @staticmethod
    def _normalise(A, a, B, b) -> tuple[PolyhedronData, torch.Tensor]:
        """Unit rows: ``C = S [A; B]``, ``c = S [a; b]`` with ``S`` the inverse row norms (1 on
        zero rows); ``C`` keeps the batch dimensions of the matrices, ``c`` those of both."""
        mb = torch.broadcast_shapes(A.shape[:-2], B.shape[:-2])
        C = torch.cat([A.detach().expand(*mb, *A.shape[-2:]), B.detach().expand(*mb, *B.shape[-2:])], -2)
        rb = torch.broadcast_shapes(a.shape[:-1], b.shape[:-1])
        c = torch.cat([a.detach().expand(*rb, a.shape[-1]), b.detach().expand(*rb, b.shape[-1])], -1)
        norms = C.norm(dim=-1)
        scale = torch.where(norms > 0, 1.0 / norms.clamp_min(1e-300), torch.ones_like(norms))
        return PolyhedronData.from_rows(C * scale.unsqueeze(-1), c * scale, A.shape[-2]), scale

    @staticmethod
    def _with_bounds(general: PolyhedronData, scale, lower, upper, n) -> tuple[BoundedData, torch.Tensor]:
        """The normalised general rows with one unit row per finite bound in front
        (:class:`~polyproj.functional.bounded.BoundedData`); the row scales get 1 for them."""
        lo, up = _per_coordinate(lower, n), _per_coordinate(upper, n)
        pattern = []
        for name, t in (("upper", up), ("lower", lo)):
            finite = torch.isfinite(t).reshape(-1, n)
            if not bool((finite == finite[:1]).all()):
                raise ValueError(f"{name} must have its finite entries at the same coordinates in every sample "
                                 "(a bound that is infinite in one sample and finite in another is not supported); "
                                 "use a large finite value instead of inf")
            pattern.append(finite[0])
        # coordinates fixed in every sample (l = u) get one equality row, not two opposite rows
        lo_b, up_b = torch.broadcast_tensors(lo, up)
        fixed = (lo_b == up_b).reshape(-1, n).all(0)
        up_idx, lo_idx, fix_idx = ((pattern[0] & ~fixed).nonzero().flatten(), (pattern[1] & ~fixed).nonzero().flatten(),
                                   fixed.nonzero().flatten())
        var = torch.cat([up_idx, lo_idx, fix_idx])
        sign = torch.cat([up.new_ones(up_idx.numel()), -lo.new_ones(lo_idx.numel()), up.new_ones(fix_idx.numel())])
        bound_eq = torch.cat([torch.zeros(up_idx.numel() + lo_idx.numel(), dtype=torch.bool),
                              torch.ones(fix_idx.numel(), dtype=torch.bool)]).to(up.device)
        cb_batch = torch.broadcast_shapes(up.shape[:-1], lo.shape[:-1])
        cb = torch.cat([up[..., up_idx].expand(*cb_batch, -1), -lo[..., lo_idx].expand(*cb_batch, -1),
                        up[..., fix_idx].expand(*cb_batch, -1)], -1)
        cg = general.c
        rb = torch.broadcast_shapes(cb.shape[:-1], cg.shape[:-1])
        c = torch.cat([cb.expand(*rb, -1), cg.expand(*rb, -1)], -1)
        data = BoundedData.from_rows(var, sign, general.C, c, general.m, n, bound_eq=bound_eq)
        sb = torch.broadcast_shapes(scale.shape[:-1], ())
        full_scale = torch.cat([scale.new_ones(*sb, var.numel()), scale], -1)
        return data, full_scale

    def _check_nonempty(self) -> None:
        # A feasible point found by projecting the origin proves a sample nonempty, cheaply;
        # only the others are decided by the LP (HiGHS), with a Farkas certificate if empty.
        batch = torch.Size(self.batch_shape)
        bound = self._bind(batch)
        N = bound.N
        probe = solve_polyhedron(bound.data, self.A.new_zeros(N, self.n), tol=DEFAULT_TOL, max_iter=40, _interior=False)
        suspects = (~(bound._relative_violation(probe.y) <= DEFAULT_TOL)).nonzero().flatten()
        bound._raise_if_empty(suspects, batch)

    # -- protocol ---------------------------------------------------------------------
    @property
    def n(self) -> int:
        return self.event_shape[0]

    @property
    def m(self) -> int:
        return self.A.shape[-2]

    @property
    def p(self) -> int:
        return self.B.shape[-2]

    @property
    def device(self) -> torch.device:
        return self.A.device

    def to(self, device) -> "Polyhedron":
        device = torch.device(device)
        if device == self.device:
            return self
        new = self._copy()
        new.A, new.a, new.B, new.b = (t.to(device) for t in (self.A, self.a, self.B, self.b))
        new.lower, new.upper = (None, None) if self.lower is None else (self.lower.to(device), self.upper.to(device))
        new._data, new._scale = self._data.to(device), self._scale.to(device)
        return new

    def _bind(self, batch: torch.Size) -> "_BoundPolyhedron":
        data = self._data.with_batched(lambda t, event_ndim: flat_batch(t, batch, event_ndim))
        params = {name: flat_batch(t, batch, nd)
                  for name, t, nd in (("A", self.A, 2), ("a", self.a, 1), ("B", self.B, 2), ("b", self.b, 1),
                                      ("lower", self.lower, 1), ("upper", self.upper, 1))
                  if t is not None and t.requires_grad}
        return _BoundPolyhedron(data, flat_batch(self._scale, batch, 1), params, math.prod(batch), self.n, batch)

    def _grad_raw(self) -> list:
        return [t for t in (self.A, self.a, self.B, self.b, self.lower, self.upper) if t is not None and t.requires_grad]

    def _rebuild(self, values: dict) -> "Polyhedron":
        # rebuilt at every call of a Projection with learned data: emptiness is then detected
        # when a projection fails (by batch index), not by an LP per call
        return Polyhedron(**{**self._init_args, **values, "check_feasibility": False})

    def __repr__(self) -> str:
        batch = f", batch_shape={self.batch_shape}" if self.batch_shape else ""
        bounds = f", bounds={self._data.nb}" if isinstance(self._data, BoundedData) else ""
        return f"Polyhedron(n={self.n}, m={self.m}, p={self.p}{bounds}{batch}, device={self.device})"


class _BoundPolyhedron(ConvexSet):
    """A :class:`Polyhedron`'s normalised data for one flat batch of ``N`` points (shared parts
    stay shared), with the raw constraint tensors that require grad: what the solver and the
    backward see."""

    def __new__(cls, *args, **kwargs):
        # built twice per projection (forward and backward) and never handed to users or
        # operators: no recorded arguments, no handle (they cost more than the solve of one
        # small sample)
        return object.__new__(cls)

    def __init__(self, data: PolyhedronData, scale, params: dict, N: int, n: int, batch: torch.Size):
        self.data, self.scale, self.params, self.N, self.batch = data, scale, params, N, batch
        self.event_shape = (n,)

    @property
    def device(self):
        return self.data.c.device

    def _solution_shapes(self, x_shape):
        rows = self.data.general_ineq
        N, n, K, m = x_shape[0], self.event_shape[0], self.data.K, rows.stop - rows.start
        extra = [((N, K), torch.float64), ((N, n), torch.float64)] if self.params else []
        return [((N, m), torch.bool), ((N, K), torch.bool), *extra]

    _engines = ("torch", "daqp")

    def _solve(self, x, *, tol, max_iter, engine="auto"):
        if engine == "daqp" or (engine == "auto" and active_set.applicable(self.data, x)):
            res = active_set.solve_polyhedron_active_set(self.data, x, tol=tol, max_iter=max_iter)
        else:
            res = solve_polyhedron(self.data, x, tol=tol, max_iter=max_iter)
        # (the saved y is a copy: the output itself must stay differentiable)
        state = (res.active, res.multipliers, res.y.clone()) if self.params else (res.active,)
        return SetSolution(res.y, res.active[:, self.data.general_ineq], res.kkt, res.iterations, res.converged, state)

    def _vjp(self, state, g):
        return _jacobian.masked_nullspace_product(self.data, state[0], g)[0]

    def _grad_inputs(self):
        return tuple(self.params.values())

    def _vjp_with_inputs(self, state, g):
        active, nu, y = state
        gx, w = _jacobian.masked_nullspace_product(self.data, active, g)
        w, nu = w * self.scale, nu * self.scale  # multipliers of the raw (unnormalised) rows
        m, A_rows = self.data.m, self.data.general_ineq
        grads = []
        for name, t in self.params.items():
            if name in ("lower", "upper"):
                grads.append(sum_to(self._bound_gradient(w, upper=name == "upper"), t))
                continue
            rows = A_rows if name in ("A", "a") else slice(m, None)
            if name in ("a", "b"):
                grads.append(sum_to(w[:, rows], t))
            elif t.ndim == 3:
                grads.append(-(nu[:, rows, None] * gx[:, None, :] + w[:, rows, None] * y[:, None, :]))
            else:
                grads.append(-(nu[:, rows].T @ gx + w[:, rows].T @ y))
        return gx, tuple(grads)

    def _bound_gradient(self, w, *, upper: bool):
        """``g_u = w`` on the rows ``y_j ≤ u_j`` and ``g_l = −w`` on ``−y_j ≤ −l_j`` (the gradient for a
        right-hand side is the row's multiplier of the backward system), 0 on infinite bounds; a fixed
        coordinate's equality row ``y_j = u_j`` counts as its upper bound."""
        D = self.data
        rows = (D.sign > 0) if upper else (D.sign < 0)
        out = w.new_zeros(w.shape[0], D.n)
        out[:, D.var[rows]] = w[:, : D.nb][:, rows] * (1.0 if upper else -1.0)
        return out

    def _jacobian(self, state):
        return _jacobian.explicit_jacobian(self.data, state[0], self.event_shape[0])

    def _violation(self, y):
        return self.data.primal_violation(self.data.rows(y) - self.data.c)

    def _violation_scale(self, y):
        return self.data.primal_scale(y)

    def _relative_violation(self, y, x=None):
        # per row, each against its own scale (PolyhedronData.row_scales)
        floor = torch.finfo(torch.float64).eps * (x.abs().amax(-1) if x is not None else y.new_ones(y.shape[0]))
        return self.data.relative_violation(y, floor=floor)

    _MAX_LP_CHECKS = 256

    def _raise_if_empty(self, index: torch.Tensor, batch) -> None:
        """Decide by LP whether the samples ``index`` (flat) are empty; raise
        :class:`InfeasibleError` naming the empty ones (at most ``_MAX_LP_CHECKS`` checked)."""
        D = self.data
        found = []
        C_all = D.matrix()
        for i in index[: self._MAX_LP_CHECKS].tolist():
            C = (C_all[i] if C_all.ndim == 3 else C_all).cpu().numpy()
            c = (D.c[i] if D.c.ndim == 2 else D.c).cpu().numpy()
            scale = (self.scale[i] if self.scale.ndim == 2 else self.scale).cpu().numpy()
            try:
                check_nonempty(C[: D.m], c[: D.m], C[D.m:], c[D.m:], row_scale=scale)
            except InfeasibleError as err:
                found.append((i, err))
        if not found:
            return
        if len(batch) == 0:
            raise found[0][1]
        where = [tuple(int(k) for k in np.unravel_index(i, tuple(batch))) for i, _ in found]
        shown = ", ".join(map(str, where[:10])) + (" …" if len(where) > 10 else "")
        first = found[0][1]
        raise InfeasibleError(
            f"the polyhedra of {len(found)} sample(s) are empty, at batch indices {shown} "
            f"(batch shape {tuple(batch)}); at {where[0]}: {first}",
            certificate=first.certificate, indices=where,
        )
