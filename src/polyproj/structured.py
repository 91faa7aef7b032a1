r"""Structured sets with exact threshold-type projections and closed-form HS-Jacobians.

Each set is a :class:`polyproj.ConvexSet`, so :func:`polyproj.project`,
:func:`polyproj.hs_jacobian` and :class:`polyproj.Projection` take it as they take a
:class:`polyproj.Polyhedron`; ``as_polyhedron(n)`` writes it as one, which is how the tests
check every closed form against the generic element ``P₀ = I − Mᵀ(MMᵀ)⁺M``.  The rows of
``info.active`` follow the inequality rows of ``as_polyhedron``.
"""

from __future__ import annotations

import torch

from . import _jacobian
from ._errors import InfeasibleError
from ._validation import as_tensor, check_finite
from ._bounds import _bounds, _broadcast, _per_coordinate, _raise_empty_where
from .functional import simple_sets
from .sets import ConvexSet, Polyhedron, SetSolution, flat_batch, sum_to

__all__ = ["Box", "HalfSpace", "Simplex", "CappedSimplex", "Transportation", "Birkhoff", "PartialMatching"]


def _scalar(value, name):
    try:
        v = float(value.item() if isinstance(value, torch.Tensor) else value)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise ValueError(f"{name} must be a real scalar, got {value!r}") from exc
    if v != v or v in (float("inf"), float("-inf")):
        raise ValueError(f"{name} must be finite, got {v}")
    return v


def _scalar_or_batch(value, name, device):
    """A scalar parameter (float) or a tensor of per-sample values (kept attached to its graph
    when it requires grad)."""
    if isinstance(value, torch.Tensor) and (value.ndim > 0 or value.requires_grad):
        t = as_tensor(value, name, device=device, keep_grad=True)
        return t
    return _scalar(value, name)


class _ParamSet(ConvexSet):
    """Tensor parameters of a structured set.  ``_param_event_ndim`` names them and gives
    their number of event dimensions; leading dimensions beyond those are batch dimensions
    (``batch_shape``), and parameters that require grad receive gradients from the backward
    (``_vjp_with_inputs``)."""

    _param_event_ndim: dict = {}
    _grad_names: tuple = ()

    def _params(self):
        return {k: getattr(self, k) for k in self._param_event_ndim if isinstance(getattr(self, k), torch.Tensor)}

    def _batch_of_params(self, what):
        shapes = [t.shape[: t.ndim - self._param_event_ndim[k]] for k, t in self._params().items()]
        return _broadcast(what, *shapes) if shapes else ()

    def _bind(self, batch):
        params = self._params()
        grads = tuple(k for k, t in params.items() if t.requires_grad)
        if not self.batch_shape and not grads:
            return self
        new = self._copy()
        for k, t in params.items():
            setattr(new, k, flat_batch(t, batch, self._param_event_ndim[k]) if self.batch_shape else t)
        new.batch_shape = ()
        new._grad_names = grads
        return new

    def _grad_inputs(self):
        return tuple(getattr(self, k) for k in self._grad_names)

    def _grad_raw(self):
        return [t for t in self._params().values() if t.requires_grad]

    def _value(self, name, dtype):
        """A parameter as the kernels take it: detached, in the working dtype."""
        v = getattr(self, name)
        return v.detach().to(dtype) if isinstance(v, torch.Tensor) else v


class _VectorSet(_ParamSet):
    """Shared plumbing of the vector-valued structured sets (data on one device).  Their
    projections are closed forms, solved in float64 like every set and finished by a
    feasibility-restoring correction (:mod:`polyproj.functional.simple_sets`)."""

    _device = torch.device("cpu")

    @property
    def device(self) -> torch.device:
        return self._device

    def _closed_form(self, x, y, active, tol, backward_mask):
        """A :class:`SetSolution` of a closed-form projection (no iterations), certified by its
        violation relative to the set's scale (stationarity holds by construction)."""
        kkt = self._relative_violation(y, x)
        return SetSolution(y, active, kkt, torch.zeros_like(kkt, dtype=torch.long), kkt <= tol, (backward_mask,))

    def _bound_value(self, name, x):
        """A bound as the kernels take it: float64, detached, broadcast to ``x``'s last dimension."""
        v = self._value(name, x.dtype)
        return v.expand(x.shape[-1]) if v.ndim == 0 else v

    def _box_scale(self, y):
        """``max(‖y‖∞, largest finite bound)`` per point: the scale of the rows ``±y_i ≤ ±bound``."""
        bounds = torch.cat([torch.broadcast_to(self._value(k, y.dtype), y.shape) for k in ("lower", "upper")], -1)
        finite = torch.where(torch.isfinite(bounds), bounds.abs(), torch.zeros_like(bounds))
        return torch.maximum(y.abs().amax(-1), finite.amax(-1))

    @staticmethod
    def _free(active):
        """Coordinates at neither bound, from the 2n rows ``y ≤ u`` then ``−y ≤ −l``."""
        n = active.shape[-1] // 2
        return ~(active[:, :n] | active[:, n:])

    def _box_violation(self, y):
        return torch.maximum((y - self._value("upper", y.dtype)).clamp_min(0),
                             (self._value("lower", y.dtype) - y).clamp_min(0)).amax(-1)

    def _moved(self, device, **tensors):
        new = self._copy()
        for k, v in tensors.items():
            if isinstance(v, torch.Tensor):
                setattr(new, k, v.to(device))
        new._device = torch.device(device)
        return new

    def _bound_grads(self, active, gf):
        """Gradients for ``lower``/``upper`` (whichever require grad) from ``gf``: each
        coordinate's value goes to the bound it sits at (the upper one where ``l = u``)."""
        n = active.shape[-1] // 2
        at_upper, at_lower = active[:, :n], active[:, n:] & ~active[:, :n]
        out = {}
        for k, mask in (("upper", at_upper), ("lower", at_lower)):
            if k in self._grad_names:
                out[k] = sum_to(gf * mask, getattr(self, k))
        return out


class Box(_VectorSet):
    r"""The box :math:`\{y : l \le y \le u\}` (bounds may be ±inf).

    Projection: ``y = clip(x, l, u)``, exact, O(n).
    Backward: ``J g = f ⊙ g`` with ``f`` the coordinates strictly inside their bounds
    (a coordinate at a bound, up to the activity tolerance, is active and gets 0);
    ``g_u = g`` on the coordinates at their upper bound, ``g_l = g`` on those at their lower
    bound, 0 elsewhere.
    ``info.active`` has 2n rows: ``y ≤ u`` then ``−y ≤ −l``.  ``lower``/``upper`` may carry
    batch dimensions ``(..., n)`` (per-sample bounds) and may require grad.

    >>> import torch, polyproj as pp
    >>> pp.project(torch.tensor([-1.0, 0.5, 3.0]), pp.Box(torch.zeros(3), torch.ones(3)))
    tensor([0.0000, 0.5000, 1.0000])
    """

    _param_event_ndim = {"lower": 1, "upper": 1}

    def __init__(self, lower, upper):
        self.lower, self.upper, self.event_shape = _bounds(lower, upper, "box")
        self._device = self.lower.device
        self.batch_shape = self._batch_of_params("lower and upper")

    def to(self, device):
        return self._moved(device, lower=self.lower, upper=self.upper)

    def _solve(self, x, *, tol, max_iter):
        y, active = simple_sets.project_box(x, self._bound_value("lower", x), self._bound_value("upper", x),
                                            self._violation_scale)
        return self._closed_form(x, y, active, tol, active)

    def _solution_shapes(self, x_shape):
        return [((x_shape[0], 2 * x_shape[1]), torch.bool)] * 2

    def _vjp(self, state, g):
        return _jacobian.box_product(self._free(state[0]), g)

    def _vjp_with_inputs(self, state, g):
        (active,) = state
        grads = self._bound_grads(active, g)
        return self._vjp(state, g), tuple(grads[k] for k in self._grad_names)

    def _jacobian(self, state):
        return _jacobian.box_jacobian(self._free(state[0]))

    def _violation(self, y):
        return self._box_violation(y)

    def _violation_scale(self, y):
        return self._box_scale(y)

    def as_polyhedron(self, n: int | None = None) -> Polyhedron:
        n = self.event_shape[0] if self.event_shape[0] != -1 else n
        if n is None:
            raise ValueError("as_polyhedron of a box with scalar bounds needs n")
        eye = torch.eye(n, dtype=torch.float64, device=self.device)
        up, lo = (_per_coordinate(t, n) for t in (self.upper, self.lower))
        A, a = torch.cat([eye, -eye]), torch.cat([up, -lo], -1)
        keep = torch.isfinite(a)
        if a.ndim > 1:
            if not bool(keep.all()):
                raise ValueError("as_polyhedron of a box with per-sample bounds needs finite bounds")
            return Polyhedron(A=A, a=a)
        return Polyhedron(A=A[keep], a=a[keep])

    def __repr__(self):
        batch = f", batch_shape={self.batch_shape}" if self.batch_shape else ""
        n = self.event_shape[0]
        return f"Box(n={n if n != -1 else 'any'}{batch})"


class HalfSpace(_VectorSet):
    r"""The half-space :math:`\{y : c^\top y \le \beta\}`, ``c ≠ 0``.

    Projection: ``y = x − ν c`` with ``ν = max(0, cᵀx − β)/‖c‖²``, exact.
    Backward: ``J = I − ccᵀ/‖c‖²`` when ``cᵀx ≥ β`` (boundary included: P₀ uses the full
    active set), else ``J = I``; for the data (the polyhedron's rule with one row), with
    ``w = (cᵀg)/‖c‖²`` on active points and 0 elsewhere: ``g_β = w`` and
    ``g_c = −(ν J g + w y)``.  ``c`` is a vector ``(n,)``; ``beta`` a number or a tensor ``(...)``
    of per-sample offsets; both may require grad.

    >>> import torch, polyproj as pp
    >>> pp.project(torch.tensor([2.0, 2.0]), pp.HalfSpace(torch.tensor([1.0, 1.0]), 2.0))
    tensor([1., 1.])
    """

    _param_event_ndim = {"c": 1, "beta": 0}

    def __init__(self, c, beta):
        device = c.device if isinstance(c, torch.Tensor) else torch.device("cpu")
        self.c = as_tensor(c, "c", device=device, ndim=1, keep_grad=True)
        self.beta = _scalar_or_batch(beta, "beta", device)
        if self.c.shape[0] < 1:
            raise ValueError("c must have length n >= 1")
        if not bool((self.c.detach() != 0).any()):
            raise ValueError("c must be nonzero (a zero normal does not define a half-space)")
        self._device = self.c.device
        self.event_shape = (self.c.shape[0],)
        self.batch_shape = self._batch_of_params("beta")

    def to(self, device):
        return self._moved(device, c=self.c, beta=self.beta)

    def _beta(self, dtype):
        return self._value("beta", dtype)

    def _solve(self, x, *, tol, max_iter):
        c = self._value("c", x.dtype)
        y, active = simple_sets.project_halfspace(x, c, self._beta(x.dtype), self._violation_scale)
        sol = self._closed_form(x, y, active, tol, active)
        if self._grad_names:  # the data's gradients need the point and its multiplier
            sol.state = (active, y.clone(), ((x - y) @ c) / (c @ c))
        return sol

    def _solution_shapes(self, x_shape):
        N, n = x_shape
        extra = [((N, n), torch.float64), ((N,), torch.float64)] if self._grad_names else []
        return [((N, 1), torch.bool), ((N, 1), torch.bool), *extra]

    def _vjp(self, state, g):
        return _jacobian.halfspace_product(self._value("c", g.dtype), state[0], g)

    def _vjp_with_inputs(self, state, g):
        active, y, nu = state
        c = self._value("c", g.dtype)
        w = active[:, 0] * (g @ c) / (c @ c)
        jg = g - w[:, None] * c
        grads = {"beta": w, "c": -(nu[:, None] * jg + w[:, None] * y)}
        return jg, tuple(sum_to(grads[k], getattr(self, k)) for k in self._grad_names)

    def _jacobian(self, state):
        return _jacobian.halfspace_jacobian(self._value("c", torch.float64), state[0])

    def _violation(self, y):
        c = self._value("c", y.dtype)
        return (y @ c - self._beta(y.dtype)).clamp_min(0) / c.norm()

    def _violation_scale(self, y):
        c = self._value("c", y.dtype)
        beta = torch.as_tensor(self._beta(y.dtype), dtype=y.dtype, device=y.device).abs()
        return torch.maximum(y.abs() @ c.abs(), beta) / c.norm()

    def as_polyhedron(self) -> Polyhedron:
        beta = torch.as_tensor(self.beta.detach() if isinstance(self.beta, torch.Tensor) else self.beta,
                               dtype=torch.float64, device=self.device)
        return Polyhedron(A=self.c.detach()[None], a=beta.unsqueeze(-1))

    def __repr__(self):
        beta = f"beta={self.beta}" if not isinstance(self.beta, torch.Tensor) else "beta=<tensor>"
        return f"HalfSpace(n={self.event_shape[0]}, {beta})"


class Simplex(_VectorSet):
    r"""The simplex :math:`\{y \in ℝ^n : y \ge 0,\ 1^\top y = r\}`, any ``n`` (taken from x).

    Projection: ``y = max(x − τ, 0)`` with Condat's sort-based threshold (Math. Program. 2016),
    exact up to rounding, O(n log n) per point, batched.
    Backward: ``J g = s ⊙ (g − (sᵀg)/|S|)``, ``s`` = support ``{y_i > 0}`` (up to the
    activity tolerance); for ``total`` (from ``τ = (Σ_S x − r)/|S|``) ``g_r = (sᵀg)/|S|``.
    ``info.active`` has n rows ``−y ≤ 0`` (``y_i = 0``).  ``total`` is a number or a tensor
    ``(...)`` of per-sample totals, which may require grad.

    >>> import torch, polyproj as pp
    >>> pp.project(torch.tensor([0.8, 0.1]), pp.Simplex())
    tensor([0.8500, 0.1500])
    """

    _param_event_ndim = {"total": 0}

    def __init__(self, total=1.0):
        device = total.device if isinstance(total, torch.Tensor) else torch.device("cpu")
        self.total = _scalar_or_batch(total, "total", device)
        self._device = device
        self.event_shape = (-1,)
        self.batch_shape = self._batch_of_params("total")
        tot = torch.as_tensor(self.total.detach() if isinstance(self.total, torch.Tensor) else self.total)
        _raise_empty_where(tot < 0, bool(self.batch_shape), lambda i, where: (
            f"the simplex is empty{where}: total = {float(tot[i])} < 0"))

    def to(self, device):
        return self._moved(device, total=self.total)

    def _total(self, dtype):
        tot = self._value("total", dtype)
        return tot if not isinstance(tot, torch.Tensor) or tot.ndim == 0 else tot[:, None]

    def _solve(self, x, *, tol, max_iter):
        y, active = simple_sets.project_simplex(x, self._total(x.dtype), self._violation_scale)
        return self._closed_form(x, y, active, tol, ~active)

    def _solution_shapes(self, x_shape):
        return [(tuple(x_shape), torch.bool)] * 2

    def _vjp(self, state, g):
        return _jacobian.face_product(state[0], g)

    def _vjp_with_inputs(self, state, g):
        s = state[0].to(g.dtype)
        mean = (s * g).sum(-1, keepdim=True) / s.sum(-1, keepdim=True).clamp_min(1)
        return s * (g - mean), (sum_to(mean.squeeze(-1), self.total),)

    def _jacobian(self, state):
        return _jacobian.face_jacobian(state[0])

    def _violation(self, y):
        gap = (y.sum(-1, keepdim=True) - self._total(y.dtype)).abs().squeeze(-1)
        return torch.maximum((-y).clamp_min(0).amax(-1), gap / y.shape[-1] ** 0.5)

    def _violation_scale(self, y):
        # rows −y_i ≤ 0 and 1ᵀy/√n = total/√n
        tot = torch.as_tensor(self._total(y.dtype), dtype=y.dtype, device=y.device).abs().reshape(-1)
        return torch.maximum(y.abs().amax(-1), torch.maximum(y.abs().sum(-1), tot) / y.shape[-1] ** 0.5)

    def as_polyhedron(self, n: int) -> Polyhedron:
        eye = torch.eye(n, dtype=torch.float64, device=self.device)
        tot = torch.as_tensor(self.total.detach() if isinstance(self.total, torch.Tensor) else self.total,
                              dtype=torch.float64, device=self.device)
        return Polyhedron(A=-eye, a=torch.zeros(n, dtype=torch.float64, device=self.device),
                          B=torch.ones(1, n, dtype=torch.float64, device=self.device), b=tot.unsqueeze(-1))

    def __repr__(self):
        total = f"total={self.total}" if not isinstance(self.total, torch.Tensor) else "total=<tensor>"
        batch = f", batch_shape={self.batch_shape}" if self.batch_shape else ""
        return f"Simplex({total}{batch})"


class CappedSimplex(_VectorSet):
    r"""The capped simplex :math:`\{y : l \le y \le u,\ 1^\top y = r\}`.

    Projection: ``y = clip(x − τ, l, u)``; τ from the sorted 2n breakpoints of the piecewise
    linear ``φ(τ) = Σ clip(x_i − τ, l_i, u_i)``, then recomputed exactly on the identified free
    set; O(n log n) per point, batched.
    Backward: ``J g = f ⊙ (g − (fᵀg)/|F|)``, ``f`` = free coordinates ``l_i < y_i < u_i``;
    ``J = 0`` when none is free.  For the data (from ``τ = (Σ_F x + Σ_L l + Σ_U u − r)/|F|``):
    ``g_r = (fᵀg)/|F|``, ``g_l = g − (fᵀg)/|F|`` on the coordinates at their lower bound,
    ``g_u`` likewise at the upper bound, 0 elsewhere (``(fᵀg)/|F|`` read as 0 when ``F = ∅``).
    ``info.active`` has 2n rows: ``y ≤ u`` then ``−y ≤ −l``.  ``lower``/``upper``
    ``(..., n)`` and ``total`` (a scalar or a tensor ``(...)``) may carry batch dimensions and
    may require grad.

    >>> import torch, polyproj as pp
    >>> S = pp.CappedSimplex(torch.zeros(3), torch.full((3,), 0.4), 1.0)
    >>> pp.project(torch.tensor([1.0, 0.0, 0.0]), S)
    tensor([0.4000, 0.3000, 0.3000])
    """

    _param_event_ndim = {"lower": 1, "upper": 1, "total": 0}

    def __init__(self, lower, upper, total=1.0):
        self.lower, self.upper, self.event_shape = _bounds(lower, upper, "capped simplex")
        check_finite(self.lower.detach(), "lower")
        check_finite(self.upper.detach(), "upper")
        self.total = _scalar_or_batch(total, "total", self.lower.device)
        self._device = self.lower.device
        self.batch_shape = self._batch_of_params("lower, upper and total")
        if self.event_shape[0] != -1:
            self._check_total(self.event_shape[0])

    def _check_total(self, n: int) -> None:
        """Raise :class:`InfeasibleError` unless ``Σ lower ≤ total ≤ Σ upper`` (every sample)."""
        lo, hi = (_per_coordinate(t, n).sum(-1)
                  for t in (self.lower, self.upper))
        lo, hi, tot = torch.broadcast_tensors(lo, hi, self._total_tensor())
        _raise_empty_where(~((lo <= tot) & (tot <= hi)), bool(self.batch_shape), lambda i, where: (
            f"the capped simplex is empty{where}: total = {float(tot[i])} is outside "
            f"[sum(lower), sum(upper)] = [{float(lo[i])}, {float(hi[i])}] (n = {n})"))

    def _validate_event(self, shape):
        if self.event_shape[0] == -1:
            self._check_total(shape[0])

    def _total_tensor(self) -> torch.Tensor:
        """``total`` as a detached float64 tensor on the set's device."""
        tot = self.total.detach() if isinstance(self.total, torch.Tensor) else torch.tensor(self.total)
        return tot.to(self.device, torch.float64)

    def to(self, device):
        return self._moved(device, lower=self.lower, upper=self.upper, total=self.total)

    def _total(self, dtype):
        tot = self._value("total", dtype)
        return tot if not isinstance(tot, torch.Tensor) or tot.ndim == 0 else tot[:, None]

    def _solve(self, x, *, tol, max_iter):
        y, active = simple_sets.project_capped_simplex(
            x, self._bound_value("lower", x), self._bound_value("upper", x), self._total(x.dtype), self._violation_scale)
        return self._closed_form(x, y, active, tol, active)

    def _solution_shapes(self, x_shape):
        return [((x_shape[0], 2 * x_shape[1]), torch.bool)] * 2

    def _vjp(self, state, g):
        return _jacobian.face_product(self._free(state[0]), g)

    def _vjp_with_inputs(self, state, g):
        (active,) = state
        f = self._free(active).to(g.dtype)
        mean = (f * g).sum(-1, keepdim=True) / f.sum(-1, keepdim=True).clamp_min(1)
        grads = self._bound_grads(active, g - mean)
        if "total" in self._grad_names:
            grads["total"] = sum_to(mean.squeeze(-1), self.total)
        # f ⊙ (g − mean) is _jacobian.face_product, with the mean it computes already at hand
        return f * (g - mean), tuple(grads[k] for k in self._grad_names)

    def _jacobian(self, state):
        return _jacobian.face_jacobian(self._free(state[0]))

    def _violation(self, y):
        gap = (y.sum(-1, keepdim=True) - self._total(y.dtype)).abs().squeeze(-1)
        return torch.maximum(self._box_violation(y), gap / y.shape[-1] ** 0.5)

    def _violation_scale(self, y):
        tot = torch.as_tensor(self._total(y.dtype), dtype=y.dtype, device=y.device).abs().reshape(-1)
        return torch.maximum(self._box_scale(y), torch.maximum(y.abs().sum(-1), tot) / y.shape[-1] ** 0.5)

    def as_polyhedron(self, n: int | None = None) -> Polyhedron:
        n = self.event_shape[0] if self.event_shape[0] != -1 else n
        if n is None:
            raise ValueError("as_polyhedron of a capped simplex with scalar bounds needs n")
        eye = torch.eye(n, dtype=torch.float64, device=self.device)
        up, lo = (_per_coordinate(t, n) for t in (self.upper, self.lower))
        return Polyhedron(A=torch.cat([eye, -eye]), a=torch.cat([up, -lo], -1),
                          B=torch.ones(1, n, dtype=torch.float64, device=self.device),
                          b=self._total_tensor().unsqueeze(-1))

    def __repr__(self):
        batch = f", batch_shape={self.batch_shape}" if self.batch_shape else ""
        total = f"total={self.total}" if not isinstance(self.total, torch.Tensor) else "total=<tensor>"
        n = self.event_shape[0]
        return f"CappedSimplex(n={n if n != -1 else 'any'}, {total}{batch})"


class Transportation(_ParamSet):
    r"""The transportation polytope :math:`\{X \in ℝ^{m×n} : X \ge 0,\ X\mathbf 1 = r,\ X^\top\mathbf 1 = c\}`
    (``r ≥ 0``, ``c ≥ 0``, ``Σr = Σc``); input ``x`` of shape ``(..., m, n)``.

    Projection: a few rounds of block-coordinate ascent on the dual, then semismooth Newton on
    the dual (Li, Sun & Toh 2020), each step a batched LU of the Schur complement of the
    regularised signless Laplacian of the support graph, with an exact line search; before a
    step, the components the support splits into are joined where their marginals are out of
    balance (the merge step, for inputs far larger than the marginals); nonnegativity exact, the
    marginals to 10⁻³·``tol`` of their scale, at most 1e-9 (about 1 Newton step, at most 4, on
    the Gaussian inputs of ``benchmarks/bench_structured.py``; 10–14 on average and at most 16
    at 64×64 from inputs 10²–10⁸ times random marginals in ``benchmarks/fuzz_transport.py``;
    see :mod:`polyproj.functional.transport`).
    Backward: ``J(G) = Θ ⊙ (G − α1ᵀ − 1βᵀ)`` with the minimum-norm solution of
    ``L[α; β] = [(Θ⊙G)1; (Θ⊙G)ᵀ1]`` (``L`` singular on each connected component of the support;
    iterated Tikhonov through the same Schur complement).
    ``info.active`` has shape ``(..., m, n)``: the entries at zero.

    >>> import torch, polyproj as pp
    >>> T = pp.Transportation(torch.tensor([1.0, 2.0]), torch.tensor([1.5, 1.5]))
    >>> pp.project(torch.zeros(2, 2, dtype=torch.float64), T)
    tensor([[0.5000, 0.5000],
            [1.0000, 1.0000]], dtype=torch.float64)
    """

    _param_event_ndim = {"row_sums": 1, "col_sums": 1}

    def __init__(self, row_sums, col_sums):
        device = next((t.device for t in (row_sums, col_sums) if isinstance(t, torch.Tensor)), torch.device("cpu"))
        self.row_sums = as_tensor(row_sums, "row_sums", device=device, min_ndim=1, keep_grad=True)
        self.col_sums = as_tensor(col_sums, "col_sums", device=device, min_ndim=1, keep_grad=True)
        self.batch_shape = self._batch_of_params("row_sums and col_sums")
        where = lambda i: f" at batch index {i[:-1]}" if self.batch_shape else ""  # noqa: E731
        for name, v in (("row_sums", self.row_sums), ("col_sums", self.col_sums)):
            if v.shape[-1] < 1:
                raise ValueError(f"{name} must have length >= 1")
            neg = (v.detach() < 0).nonzero()
            if neg.shape[0]:
                i = tuple(neg[0].tolist())
                raise InfeasibleError(f"the transportation polytope is empty{where(i)}: {name}[{i[-1]}] = {float(v[i])} < 0")
        sr, sc = torch.broadcast_tensors(self.row_sums.detach().sum(-1), self.col_sums.detach().sum(-1))
        _raise_empty_where((sr - sc).abs() > 1e-12 * torch.maximum(sr.abs(), sc.abs()).clamp_min(1.0),
                           bool(self.batch_shape), lambda i, where: (
                               f"the transportation polytope is empty{where}: sum(row_sums) = {float(sr[i])} "
                               f"!= sum(col_sums) = {float(sc[i])}"))
        self._device = self.row_sums.device
        self.event_shape = (self.row_sums.shape[-1], self.col_sums.shape[-1])

    @property
    def device(self):
        return self._device

    def to(self, device):
        new = self._copy()
        new.row_sums, new.col_sums = self.row_sums.to(device), self.col_sums.to(device)
        new._device = torch.device(device)
        return new

    def _marginals(self, x):
        return self._value("row_sums", torch.float64), self._value("col_sums", torch.float64)

    def _solve(self, x, *, tol, max_iter):
        from .functional.transport import project_transport, transport_active

        r, c = self._marginals(x)
        # iterate well below tol (1e-12 for the default tol 1e-9) so that the output is exact to
        # the input precision, stopping at tol on a rounding floor
        X, _, _, _, iters = project_transport(x, r, c, tol=tol, target=min(1e-3 * tol, 1e-9), max_iter=max_iter)
        active = transport_active(X, x, self._violation_scale(X))
        kkt = self._relative_violation(X, x)
        return SetSolution(X, active, kkt, iters, kkt <= tol, (~active,))

    def _solution_shapes(self, x_shape):
        return [(tuple(x_shape), torch.bool)] * 2

    def _vjp(self, state, g):
        return _jacobian.transport_product(state[0], g)[0]

    def _vjp_with_inputs(self, state, g):
        JG, alpha, beta = _jacobian.transport_product(state[0], g)
        grads = {"row_sums": alpha, "col_sums": beta}
        return JG, tuple(sum_to(grads[k], getattr(self, k)) for k in self._grad_names)

    def _jacobian(self, state):
        return _jacobian.transport_jacobian(state[0])

    def _violation(self, y):
        r, c = self._marginals(y)
        marg = torch.maximum((y.sum(-1) - r).abs().amax(-1), (y.sum(-2) - c).abs().amax(-1))
        return torch.maximum(marg, (-y).clamp_min(0).flatten(1).amax(-1))

    def _violation_scale(self, y):
        r, c = self._marginals(y)
        a = y.abs()
        terms = torch.maximum(a.sum(-1).amax(-1), a.sum(-2).amax(-1))
        return torch.maximum(terms, torch.maximum(r.abs().amax(-1), c.abs().amax(-1)))

    def as_polyhedron(self, m: int | None = None, n: int | None = None) -> Polyhedron:
        """The same set on ``vec(X)`` (row-major)."""
        m = self.event_shape[0] if m is None else m
        n = self.event_shape[1] if n is None else n
        r, c = self._marginals(torch.zeros(1, m, n, dtype=torch.float64, device=self.device))
        batch = torch.broadcast_shapes(r.shape[:-1], c.shape[:-1])
        r, c = r.expand(*batch, m), c.expand(*batch, n)
        eye = torch.eye(m * n, dtype=torch.float64, device=self.device)
        rows = torch.kron(torch.eye(m, dtype=torch.float64), torch.ones(1, n, dtype=torch.float64)).to(self.device)
        cols = torch.kron(torch.ones(1, m, dtype=torch.float64), torch.eye(n, dtype=torch.float64)).to(self.device)
        return Polyhedron(A=-eye, a=torch.zeros(m * n, dtype=torch.float64, device=self.device),
                          B=torch.cat([rows, cols]), b=torch.cat([r, c], -1))

    def __repr__(self):
        return f"Transportation(m={self.event_shape[0]}, n={self.event_shape[1]})"


class Birkhoff(Transportation):
    r"""The Birkhoff polytope of doubly stochastic matrices
    :math:`\{X \in ℝ^{n×n} : X \ge 0,\ X\mathbf 1 = \mathbf 1,\ X^\top\mathbf 1 = \mathbf 1\}`, any
    ``n`` (taken from ``x`` of shape ``(..., n, n)``).  The Euclidean projection — not an
    entropic (Sinkhorn) approximation.  Algorithm and backward: :class:`Transportation`.

    >>> import torch, polyproj as pp
    >>> X = pp.project(torch.tensor([[2.0, 0.0], [0.0, 1.0]], dtype=torch.float64), pp.Birkhoff())
    >>> X
    tensor([[1., 0.],
            [0., 1.]], dtype=torch.float64)
    """

    _param_event_ndim = {}

    def __init__(self):
        self._device = torch.device("cpu")
        self.event_shape = (-1, -1)

    def to(self, device):
        new = self._copy()
        new._device = torch.device(device)
        return new

    def _validate_event(self, shape):
        if shape[0] != shape[1]:
            raise ValueError(f"x must have shape (..., n, n) for the Birkhoff polytope, got trailing shape {tuple(shape)}")

    def _marginals(self, x):
        m, n = x.shape[-2], x.shape[-1]
        return (torch.ones(m, dtype=torch.float64, device=x.device), torch.ones(n, dtype=torch.float64, device=x.device))

    def as_polyhedron(self, n: int) -> Polyhedron:
        return Transportation.as_polyhedron(self, n, n)

    def __repr__(self):
        return "Birkhoff()"


class PartialMatching(_ParamSet):
    r"""The partial-matching polytope
    :math:`\{X \in ℝ^{m×n} : X \ge 0,\ X\mathbf 1 \le \mathbf 1,\ X^\top\mathbf 1 \le \mathbf 1,\ \mathbf 1^\top X\mathbf 1 = k\}`
    (``0 ≤ k ≤ min(m, n)``), any ``m, n`` (taken from ``x`` of shape ``(..., m, n)``): the convex
    hull of the matchings of exactly ``k`` pairs between ``m`` and ``n`` items, used for matching
    with outliers.  With ``k = m = n`` it is the Birkhoff polytope.

    Projection: projected semismooth Newton on the dual in ``(α, β, γ)`` (row and column
    capacities, total), each step one batched Cholesky of the ``(m + n + 1)``-square
    generalised Hessian and an exact line search, and by continuation in the input's scale for
    inputs far larger than the capacities (:mod:`polyproj.functional.partial_transport`);
    nonnegativity exact, capacities, total and complementarity to ``tol`` relative to the
    capacities (``max(k, 1)`` for the total).
    Backward: ``J(G) = Θ ⊙ (G − a1ᵀ − 1bᵀ − γ)`` on the support ``Θ``, with ``(a, b, γ)`` the
    minimum-norm solution of the normal equations of the rows and columns at capacity and the
    total (the projection of ``G`` onto the null space of the active constraints: the
    HS-Jacobian).
    ``info.active`` has ``mn + m + n`` rows in the order of ``as_polyhedron``: ``−X_ij ≤ 0``
    (row-major), then the row capacities, then the column capacities.

    >>> import torch, polyproj as pp
    >>> S = torch.tensor([[3.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, -1.0]], dtype=torch.float64)
    >>> pp.project(S, pp.PartialMatching(2)).diagonal()
    tensor([1.0000, 1.0000, 0.0000], dtype=torch.float64)
    """

    _param_event_ndim = {}

    def __init__(self, k):
        self.k = _scalar(k, "k")
        if self.k < 0:
            raise InfeasibleError(f"the partial-matching polytope is empty: k = {self.k} < 0")
        self._device = torch.device("cpu")
        self.event_shape = (-1, -1)

    @property
    def device(self):
        return self._device

    def to(self, device):
        new = self._copy()
        new._device = torch.device(device)
        return new

    def _validate_event(self, shape):
        if self.k > min(shape) * (1 + 1e-12):
            raise InfeasibleError(f"the partial-matching polytope is empty: k = {self.k} > min(m, n) = {min(shape)} "
                                  f"for x of trailing shape {tuple(shape)}")

    def _caps(self, x):
        m, n = x.shape[-2], x.shape[-1]
        one = lambda d: torch.ones(d, dtype=torch.float64, device=x.device)  # noqa: E731
        return one(m), one(n), torch.tensor(self.k, dtype=torch.float64, device=x.device)

    def _solve(self, x, *, tol, max_iter):
        from .functional.partial_transport import partial_transport_active, project_partial_transport

        r, c, k = self._caps(x)
        X, _, res, iters = project_partial_transport(x, r, c, k, tol=tol, target=min(1e-3 * tol, 1e-9),
                                                     max_iter=max_iter)
        zeros, rows, cols = partial_transport_active(X, x, r, c, self._violation_scale(X))
        kkt = torch.maximum(res, self._relative_violation(X, x))
        active = torch.cat([zeros.flatten(1), rows, cols], 1)
        return SetSolution(X, active, kkt, iters, kkt <= tol, (~zeros, rows, cols))

    def _solution_shapes(self, x_shape):
        N, m, n = x_shape
        return [((N, m * n + m + n), torch.bool), ((N, m, n), torch.bool), ((N, m), torch.bool), ((N, n), torch.bool)]

    def _vjp(self, state, g):
        from .functional.partial_transport import partial_transport_product

        return partial_transport_product(*state, g)[0]

    def _jacobian(self, state):
        return _jacobian.jacobian_from_product(lambda *a: self._vjp(a[:3], a[3]), state, state[0].shape[1:])

    def _violation(self, y):
        over = torch.maximum((y.sum(-1) - 1).clamp_min(0).amax(-1), (y.sum(-2) - 1).clamp_min(0).amax(-1))
        total = (y.sum((-2, -1)) - self.k).abs()
        return torch.maximum(torch.maximum(over, total), (-y).clamp_min(0).flatten(1).amax(-1))

    def _violation_scale(self, y):
        a = y.abs()
        terms = torch.maximum(a.sum(-1).amax(-1), a.sum(-2).amax(-1))
        return torch.maximum(terms, torch.maximum(torch.ones_like(terms), torch.full_like(terms, self.k)))

    def as_polyhedron(self, m: int, n: int | None = None) -> Polyhedron:
        """The same set on ``vec(X)`` (row-major), inequality rows in the order of ``info.active``."""
        n = m if n is None else n
        dev = self.device
        eye = torch.eye(m * n, dtype=torch.float64, device=dev)
        rows = torch.kron(torch.eye(m, dtype=torch.float64), torch.ones(1, n, dtype=torch.float64)).to(dev)
        cols = torch.kron(torch.ones(1, m, dtype=torch.float64), torch.eye(n, dtype=torch.float64)).to(dev)
        A = torch.cat([-eye, rows, cols])
        a = torch.cat([torch.zeros(m * n, dtype=torch.float64), torch.ones(m + n, dtype=torch.float64)]).to(dev)
        return Polyhedron(A=A, a=a, B=torch.ones(1, m * n, dtype=torch.float64, device=dev),
                          b=torch.tensor([self.k], dtype=torch.float64, device=dev))

    def __repr__(self):
        return f"PartialMatching(k={self.k:g})"
