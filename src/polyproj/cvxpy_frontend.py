r"""A cvxpy front end: polyhedra modelled with cvxpy constraints, projected by polyproj.

``from_cvxpy(constraints, variable, parameters=[...])`` (or ``from_cvxpy(problem,
parameters=[...])`` for a problem whose objective is the projection ``sum_squares(y − x)``)
returns a :class:`CvxpyProjection`, a ``torch.nn.Module`` called like a ``CvxpyLayer``::

    y = cp.Variable(n); x = cp.Parameter(n); F = cp.Parameter((m, n)); g = cp.Parameter(m)
    problem = cp.Problem(cp.Minimize(cp.sum_squares(y - x)), [y >= 0, cp.sum(y) == 1, F @ y <= g])
    layer = pp.from_cvxpy(problem, parameters=[x, F, g])      # was: CvxpyLayer(problem, [x, F, g], [y])
    y_t = layer(x_t, F_t, g_t)                                 # was: y_t, = layer(x_t, F_t, g_t)

How the set is read
-------------------
The constraints go through cvxpy's own canonicalisation (``Problem.get_problem_data``, the
machinery cvxpylayers relies on), which yields a parametrised cone program
``A(θ) y + b(θ) ∈ {0}^p × ℝ₊^m`` whose data are an affine (sparse) map of the parameter values
θ.  That map is applied in torch, so gradients reach every parameter tensor; the rows become a
:class:`~polyproj.Polyhedron`:

* zero-cone rows are the equalities ``B y = b``; nonnegative-cone rows ``A_i y + b_i ≥ 0`` the
  inequalities ``−A_i y ≤ b_i``;
* a row with a single, constant coefficient ``α y_j + β ≥ 0`` is a **bound** (``y_j ≥ −β/α`` or
  ``y_j ≤ β/|α|``), handled natively (the tightest one where several bound the same side);
* a matrix that does not depend on any parameter stays shared by the batch (one Gram matrix);
  parameters given with one extra leading dimension make the set per-sample, as in cvxpylayers.

Anything that is not an affine equality or inequality of the one variable (a cone constraint,
a non-affine expression, a second variable, a parameter entering non-affinely) raises
``ValueError`` naming the constraint.  A problem's objective must be a projection: a positive
multiple of ``sum_squares(y − x)`` or of ``norm(y − x, 2)`` with ``x`` a parameter (checked by
evaluating it at random points, not by parsing it).

The projection, its accuracy and its backward are :func:`polyproj.project`'s (HS-Jacobian).
Matrix variables are vectorised as cvxpy vectorises them (column-major), and points are passed
and returned in the variable's shape.  Sparse constraint data are densified by ``Polyhedron``.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sps
import torch

from ._validation import as_tensor, check_choice, check_input, check_positive_int, check_tolerance
from .project import check_engine, project
from .sets import Polyhedron
from .sparse import SparsePolyhedron

__all__ = ["CvxpyProjection", "from_cvxpy"]

SPARSE_FROM = 2000  # variables from which a parameter-free matrix gives a SparsePolyhedron by default


def _cvxpy():
    try:
        import cvxpy as cp
    except ImportError as exc:  # pragma: no cover - exercised where cvxpy is absent
        raise ImportError("from_cvxpy needs cvxpy: pip install cvxpy (or polyproj[cvxpy])") from exc
    return cp


def from_cvxpy(problem_or_constraints, variable=None, parameters=(), *, sparse: bool | None = None,
               **projection_options) -> "CvxpyProjection":
    """A projection layer onto the polyhedron described by cvxpy constraints (module docstring).

    Parameters
    ----------
    problem_or_constraints : ``cvxpy.Problem`` or list of cvxpy constraints
        A problem ``Minimize(sum_squares(y − x))`` subject to affine constraints, or the
        constraints alone.
    variable : ``cvxpy.Variable``, optional
        The projected variable (found from the problem or constraints when there is one).
    parameters : sequence of ``cvxpy.Parameter``
        The order in which the layer takes parameter values.  For a problem it includes the
        input point ``x`` (any position, as in cvxpylayers); every parameter of the constraints
        must be listed.
    sparse : bool or None
        Build a :class:`~polyproj.SparsePolyhedron` (the constraint matrix kept sparse, as cvxpy
        canonicalised it) instead of a dense :class:`~polyproj.Polyhedron`.  Needs a matrix
        without parameters.  ``None`` (default): sparse when the variable has at least
        ``SPARSE_FROM`` entries and the matrix has no parameters.
    **projection_options
        ``tol``, ``max_iter``, ``on_failure``, ``engine`` of :func:`polyproj.project`.
    """
    cp = _cvxpy()
    point = None
    if isinstance(problem_or_constraints, cp.Problem):
        problem = problem_or_constraints
        constraints = list(problem.constraints)
        variable = _the_variable(problem.variables(), variable, "the problem")
        point = _projection_input(problem.objective, variable)
    elif isinstance(problem_or_constraints, (list, tuple)):
        constraints = list(problem_or_constraints)
        if not constraints:
            raise ValueError("from_cvxpy needs at least one constraint")
        found = {v.id: v for c in constraints for v in c.variables()}
        variable = _the_variable(list(found.values()), variable, "the constraints")
    else:
        raise ValueError("from_cvxpy takes a cvxpy Problem or a list of cvxpy constraints, "
                         f"got {type(problem_or_constraints).__name__}")
    return CvxpyProjection(constraints, variable, list(parameters), point=point, sparse=sparse, **projection_options)


def _the_variable(variables, variable, where):
    cp = _cvxpy()
    if variable is not None:
        if not isinstance(variable, cp.Variable):
            raise ValueError(f"variable must be a cvxpy Variable, got {type(variable).__name__}")
        others = [v for v in variables if v.id != variable.id]
        if others:
            raise ValueError(f"{where} use(s) variables other than {variable.name()}: "
                             f"{', '.join(v.name() for v in others)}; a projection has one variable")
        return variable
    if len(variables) != 1:
        raise ValueError(f"{where} must use exactly one cvxpy Variable (the projected point), found "
                         f"{len(variables)}: {', '.join(v.name() for v in variables)}")
    return variables[0]


def _projection_input(objective, variable):
    """The parameter ``x`` of an objective that is a positive multiple of ``‖y − x‖²`` or ``‖y − x‖``
    (checked at random points); ValueError otherwise."""
    cp = _cvxpy()
    if not isinstance(objective, cp.Minimize):
        raise ValueError("the problem's objective must be Minimize(sum_squares(y - x)) (a projection), got Maximize")
    params = objective.parameters()
    others = [v for v in objective.variables() if v.id != variable.id]
    if len(params) != 1 or others or params[0].shape != variable.shape:
        raise ValueError("the problem's objective must be a projection, Minimize(sum_squares(y - x)) with y the "
                         f"variable and x a parameter of y's shape {variable.shape}; got {objective.expr}")
    x = params[0]
    saved = (variable.value, x.value)
    rng = np.random.default_rng(0)
    values, dist = [], []
    try:
        for _ in range(6):
            x.value = rng.standard_normal(x.shape)
            variable.value = rng.standard_normal(variable.shape)
            values.append(float(objective.value))
            dist.append(float(np.sum((variable.value - x.value) ** 2)))
    finally:
        variable.value, x.value = saved
    values, dist = np.array(values), np.array(dist)
    for power in (1.0, 0.5):  # k‖y − x‖² or k‖y − x‖ (plus a constant)
        d = dist**power
        coef = np.polyfit(d, values, 1)
        if coef[0] > 0 and np.abs(np.polyval(coef, d) - values).max() <= 1e-9 * np.abs(values).max():
            return x
    raise ValueError("the problem's objective must be a projection, a positive multiple of sum_squares(y - x) or "
                     f"norm(y - x, 2) with x a parameter; got {objective.expr}")


def _projection_options(options: dict, kind) -> dict:
    """:func:`polyproj.project`'s options, validated once for sets of class ``kind``."""
    unknown = sorted(set(options) - {"tol", "max_iter", "on_failure", "engine"})
    if unknown:
        raise TypeError(f"unexpected keyword argument(s) {', '.join(unknown)}; the projection options are tol, "
                        "max_iter, on_failure and engine")
    if options.get("tol") is not None:
        check_tolerance(options["tol"], torch.float64)
    if "max_iter" in options:
        check_positive_int(options["max_iter"], "max_iter")
    if "on_failure" in options:
        check_choice(options["on_failure"], "on_failure", ("raise", "warn"))
    if "engine" in options:
        check_engine(options["engine"], kind)
    return dict(options)


def _check_constraint(con, variable):
    cp = _cvxpy()
    affine_kinds = (cp.constraints.Equality, cp.constraints.Inequality, cp.constraints.Zero, cp.constraints.NonNeg,
                    cp.constraints.NonPos)
    if not isinstance(con, affine_kinds):
        raise ValueError(f"constraint {con} is a {type(con).__name__} constraint; a polyhedron takes affine "
                         "equalities and inequalities only")
    if not all(arg.is_affine() for arg in con.args):
        raise ValueError(f"constraint {con} is not affine in {variable.name()}; a polyhedron takes affine "
                         "equalities and inequalities only")
    others = [v for v in con.variables() if v.id != variable.id]
    if others:
        raise ValueError(f"constraint {con} uses variables other than {variable.name()}: "
                         f"{', '.join(v.name() for v in others)}")


class CvxpyProjection(torch.nn.Module):
    """Projection onto a polyhedron modelled in cvxpy (built by :func:`from_cvxpy`).

    ``layer(*values)`` takes one tensor per entry of ``parameters`` (for a problem, the input
    point among them; for constraints alone, the point first, then the parameters) and returns
    the projection in the variable's shape.  ``layer.polyhedron(*values)`` is the
    :class:`~polyproj.Polyhedron` at those parameter values (parameters only).  Gradients flow to
    the point and to every parameter tensor that requires grad."""

    def __init__(self, constraints, variable, parameters, *, point=None, sparse: bool | None = None, **projection_options):
        super().__init__()
        cp = _cvxpy()
        for con in constraints:
            _check_constraint(con, variable)
        listed = {p.id for p in parameters}
        if len(listed) != len(parameters) or not all(isinstance(p, cp.Parameter) for p in parameters):
            raise ValueError("parameters must be distinct cvxpy Parameters")
        used = {p.id: p for c in constraints for p in c.parameters()}
        missing = [p.name() for pid, p in used.items() if pid not in listed]
        if missing:
            raise ValueError(f"the constraints use parameters not listed in parameters: {', '.join(missing)}")
        if point is not None and point.id not in listed:
            raise ValueError(f"parameters must include the problem's input point {point.name()} "
                             "(the parameter of its objective)")
        self.variable, self.shape = variable, tuple(variable.shape)
        self.n = int(np.prod(self.shape)) if self.shape else 1
        self.parameters_order = list(parameters)
        self.point_index = next((i for i, p in enumerate(parameters) if point is not None and p.id == point.id), None)
        self._read_cone_program(cp, constraints, variable)
        if sparse and not self.shared_matrix:
            raise ValueError("sparse=True needs a constraint matrix without parameters (parameters may enter the "
                             "right-hand sides and bounds); this model's matrix depends on a parameter")
        self.sparse = bool(sparse) if sparse is not None else (self.shared_matrix and self.n >= SPARSE_FROM)
        self._options = _projection_options(projection_options, SparsePolyhedron if self.sparse else Polyhedron)

    # -- canonicalisation -------------------------------------------------------------------
    def _read_cone_program(self, cp, constraints, variable):
        problem = cp.Problem(cp.Minimize(0), constraints)
        if not problem.is_dpp():
            bad = [str(c) for c in constraints if not cp.Problem(cp.Minimize(0), [c]).is_dpp()]
            raise ValueError("parameters must enter the constraints affinely (DPP): "
                             f"{'; '.join(bad) if bad else 'the constraints'}")
        prog = problem.get_problem_data(cp.CLARABEL)[0]["param_prob"]
        if prog.x.size != self.n or prog.var_id_to_col.get(variable.id) != 0:
            raise ValueError("cvxpy introduced auxiliary variables for these constraints (an atom that is not a "
                             "plain affine expression?); a polyhedron takes affine equalities and inequalities only")
        kinds = [type(c).__name__ for c in prog.constraints]
        if any(k not in ("Zero", "NonNeg") for k in kinds):
            raise ValueError(f"the canonical form has {', '.join(sorted(set(kinds) - {'Zero', 'NonNeg'}))} cones; "
                             "a polyhedron takes affine equalities and inequalities only")
        for name in ("lower_bounds", "upper_bounds"):
            if getattr(prog, name, None) is not None:
                raise ValueError("variable bounds given on the cvxpy Variable (bounds=...) are not read; write them "
                                 "as constraints (y >= l), which become native bounds")
        sizes = [c.size for c in prog.constraints]
        rows = int(sum(sizes))
        self.p = int(sum(s for s, k in zip(sizes, kinds) if k == "Zero"))
        n = self.n
        # the map θ ↦ vec([A | b]) (column-major, rows × (n + 1)), θ = [parameter values; 1]
        amap = prog.A.tocsr()
        amap.sum_duplicates()
        self._columns = {pid: (col, 1 if pid == -1 else prog.param_id_to_size[pid]) for pid, col in prog.param_id_to_col.items()}
        self._theta_size = amap.shape[1]
        const_col = prog.param_id_to_col[-1]
        coo = amap.tocoo()
        entry_row, entry_col = coo.row % rows, coo.row // rows  # (constraint row, column of [A | b])
        in_A = entry_col < n
        self.shared_matrix = bool((coo.col[in_A] == const_col).all())
        # a bound: a nonnegative-cone row whose A part is one constant entry
        count = np.bincount(entry_row[in_A], minlength=rows)
        param_row = np.zeros(rows, dtype=bool)
        param_row[entry_row[in_A & (coo.col != const_col)]] = True
        single = (count == 1) & ~param_row & (np.arange(rows) >= self.p)
        coef = np.zeros(rows)
        var_of = np.zeros(rows, dtype=np.int64)
        sel = in_A & single[entry_row]
        np.add.at(coef, entry_row[sel], coo.data[sel])
        var_of[entry_row[sel]] = entry_col[sel]
        single &= coef != 0
        self._rows = rows
        self._bound_rows = np.flatnonzero(single)
        self._bound_var = var_of[single]
        self._bound_coef = coef[single]
        self._general = np.setdiff1d(np.arange(rows), self._bound_rows)
        # the constant matrix, sparse (rows × n), and the map of the right-hand sides alone
        const = (coo.col == const_col) & in_A
        self._A_const = sps.csr_matrix((coo.data[const], (entry_row[const], entry_col[const])), shape=(rows, n))
        in_b = entry_col == n
        self._b_map = torch.sparse_coo_tensor(
            torch.from_numpy(np.vstack([entry_row[in_b], coo.col[in_b]]).astype(np.int64)),
            torch.from_numpy(coo.data[in_b].astype(np.float64)), size=(rows, amap.shape[1]), dtype=torch.float64,
            check_invariants=True).coalesce()
        self._map = torch.sparse_coo_tensor(torch.from_numpy(np.vstack([coo.row, coo.col]).astype(np.int64)),
                                            torch.from_numpy(coo.data.astype(np.float64)), size=amap.shape,
                                            dtype=torch.float64, check_invariants=True).coalesce()

    # -- the set at given parameter values ----------------------------------------------------
    def _theta(self, values):
        """θ (N or 1, size) — the parameter values in cvxpy's column order, then 1 — from one
        tensor per parameter other than the input point, each ``shape`` or ``(N, *shape)``."""
        params = [p for i, p in enumerate(self.parameters_order) if i != self.point_index]
        if len(values) != len(params):
            raise ValueError(f"expected {len(params)} parameter value(s) ({', '.join(p.name() for p in params)}), "
                             f"got {len(values)}")
        batch, flat = None, {}
        for p, v in zip(params, values):
            shape = tuple(p.shape)
            t = as_tensor(v, p.name(), keep_grad=True)
            if tuple(t.shape) == shape:
                t = t.unsqueeze(0)
            elif t.ndim == len(shape) + 1 and tuple(t.shape[1:]) == shape:
                if batch is not None and t.shape[0] != batch:
                    raise ValueError(f"parameter {p.name()} has batch size {t.shape[0]}, another parameter {batch}")
                batch = t.shape[0]
            else:
                raise ValueError(f"parameter {p.name()} must have shape {shape} or (N, *{shape}), got {tuple(t.shape)}")
            flat[p.id] = t.mT.reshape(t.shape[0], -1) if t.ndim == 3 else t.reshape(t.shape[0], -1)  # column-major
        N = batch or 1
        device = next((t.device for t in flat.values()), torch.device("cpu"))
        pieces = []
        for pid, (col, size) in sorted(self._columns.items(), key=lambda kv: kv[1][0]):
            if pid == -1:
                pieces.append(torch.ones(N, 1, dtype=torch.float64, device=device))
            else:
                pieces.append(flat[pid].expand(N, -1))
        return torch.cat(pieces, 1), batch

    def polyhedron(self, *values, check_feasibility: bool = True) -> Polyhedron | SparsePolyhedron:
        """The :class:`~polyproj.Polyhedron` at the parameter values ``values`` (one per listed
        parameter other than the input point, in order; each of the parameter's shape, or with
        one leading batch dimension for a per-sample set)."""
        theta, batch = self._theta(values)
        n, rows = self.n, self._rows
        if self._map.device != theta.device:
            self._map, self._b_map = self._map.to(theta.device), self._b_map.to(theta.device)
        if self.shared_matrix:  # only the right-hand sides depend on the parameters
            b_all = torch.sparse.mm(self._b_map, theta.T).T  # (N, rows)
            A_all = None
        else:
            data = torch.sparse.mm(self._map, theta.T).T  # (N, rows·(n + 1)), column-major [A | b]
            Ab = data.reshape(-1, n + 1, rows).mT  # (N, rows, n + 1)
            A_all, b_all = Ab[..., :n], Ab[..., n]
            if batch is None:
                A_all = A_all[0]
        if batch is None:
            b_all = b_all[0]
        gen = self._general
        eq, ineq = gen[gen < self.p], gen[gen >= self.p]
        if A_all is None:
            if self.sparse:
                A_const = self._A_const
            else:  # (densified once)
                if getattr(self, "_A_dense", None) is None or self._A_dense.device != b_all.device:
                    self._A_dense = torch.as_tensor(self._A_const.toarray(), device=b_all.device)
                A_const = self._A_dense
            rows_of = lambda idx, sign: sign * A_const[idx]  # noqa: E731
        else:
            rows_of = lambda idx, sign: sign * A_all[..., torch.as_tensor(idx), :]  # noqa: E731
        kwargs = {}
        if eq.size:
            kwargs.update(B=rows_of(eq, 1.0), b=-b_all[..., torch.as_tensor(eq)])
        if ineq.size:
            kwargs.update(A=rows_of(ineq, -1.0), a=b_all[..., torch.as_tensor(ineq)])
        if self._bound_rows.size:
            kwargs.update(self._bounds(b_all))
        if self.sparse:
            if not (eq.size or ineq.size):  # bounds alone: one zero row keeps the sparse set well formed
                kwargs.update(A=sps.csr_matrix((1, n)), a=b_all.new_ones(*b_all.shape[:-1], 1))
            return SparsePolyhedron(**kwargs, check_feasibility=check_feasibility)
        return Polyhedron(**kwargs, check_feasibility=check_feasibility)

    def _bounds(self, b_all):
        """``lower``/``upper`` from the bound rows ``α y_j + β ≥ 0``: the tightest per side."""
        n = self.n
        beta = b_all[..., torch.as_tensor(self._bound_rows)]
        coef = torch.as_tensor(self._bound_coef)
        var = torch.as_tensor(self._bound_var)
        value = -beta / coef  # y_j ≥ value where α > 0, ≤ where α < 0
        out = {}
        for name, side, reduce, fill in (("lower", coef > 0, "amax", -float("inf")), ("upper", coef < 0, "amin", float("inf"))):
            if not bool(side.any()):
                continue
            start = value.new_full((*value.shape[:-1], n), fill)
            out[name] = start.scatter_reduce(-1, var[side].expand(*value.shape[:-1], -1), value[..., side], reduce,
                                             include_self=True)
        return out

    # -- the layer ---------------------------------------------------------------------------
    def forward(self, *values):
        if self.point_index is None:
            if not values:
                raise ValueError("call the layer with the point to project first, then the parameter values")
            x, params = values[0], values[1:]
        else:
            if len(values) != len(self.parameters_order):
                raise ValueError(f"expected {len(self.parameters_order)} tensors (one per parameter, the input "
                                 f"point {self.parameters_order[self.point_index].name()} among them), got {len(values)}")
            x = values[self.point_index]
            params = values[: self.point_index] + values[self.point_index + 1:]
        if not isinstance(x, torch.Tensor):
            raise ValueError(f"x must be a torch.Tensor, got {type(x).__name__}")
        x = check_input(x, "x", self.shape, x.device)
        # (rebuilt at every call from the current parameter values; an empty set is reported by
        # the projection, by batch index, rather than by an LP per call)
        P = self.polyhedron(*params, check_feasibility=False)
        if P.device != x.device:  # a model without parameter tensors is built on the CPU
            P = P.to(x.device)
        k = len(self.shape)
        flat = x.mT.reshape(*x.shape[: x.ndim - 2], -1) if k == 2 else x.reshape(*x.shape[: x.ndim - k], self.n)
        y = project(flat, P, **self._options)
        if k == 2:
            return y.reshape(*y.shape[:-1], self.shape[1], self.shape[0]).mT
        return y.reshape(*y.shape[:-1], *self.shape)
