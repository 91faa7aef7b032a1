r"""Polyhedra with sparse constraint matrices, kept sparse end to end.

:class:`SparsePolyhedron` is ``{y : A y ≤ a, B y = b, lower ≤ y ≤ upper}`` with ``A`` and ``B``
sparse (scipy.sparse, torch sparse, or dense arrays that are converted), shared by the batch;
right-hand sides and bounds may be per sample and may require grad.  The projection is the
matrix-free dual semismooth Newton method of :mod:`polyproj.functional.sparse_dual` (conjugate
gradients on ``C D Cᵀ``); nothing n×n or K×K is formed, so memory is O(N·(n + K) + nnz), on CPU
and CUDA.  Use it for problems with 10³–10⁵ variables; below a few hundred variables
:class:`~polyproj.Polyhedron` (dense, batched Cholesky or DAQP) is faster.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import scipy.sparse as sps
import torch
from scipy.optimize import linprog

from ._bounds import _bounds, _per_coordinate
from ._errors import InfeasibleError
from ._validation import as_tensor
from .functional.sparse_dual import SparseData, solve_sparse, sparse_backward
from .sets import ConvexSet, SetSolution, flat_batch, sum_to

__all__ = ["SparsePolyhedron"]


def _as_scipy(M, name: str, n: int | None):
    """A 2-D matrix as a scipy CSR float64 matrix (from scipy.sparse, torch sparse or dense)."""
    if isinstance(M, torch.Tensor):
        if M.requires_grad:
            raise ValueError(f"{name}: gradients for the entries of a sparse matrix are not supported; pass the "
                             "matrix without requires_grad (right-hand sides and bounds may require grad)")
        M = M.detach()
        if M.layout != torch.strided:
            M = M.to_sparse_coo().coalesce().cpu()
            idx, val = M.indices().numpy(), M.values().to(torch.float64).numpy()
            M = sps.coo_matrix((val, (idx[0], idx[1])), shape=tuple(M.shape))
        else:
            M = M.cpu().numpy()
    if not sps.issparse(M):
        M = np.asarray(M, dtype=np.float64)
        if M.ndim != 2:
            raise ValueError(f"{name} must be a 2-D (sparse) matrix shared by the batch, got shape {M.shape}")
        M = sps.csr_matrix(M)
    M = sps.csr_matrix(M, dtype=np.float64)
    if M.ndim != 2:
        raise ValueError(f"{name} must be a 2-D sparse matrix, got {M.ndim} dimensions")
    if n is not None and M.shape[1] != n:
        raise ValueError(f"{name} must have n = {n} columns (as the other matrix), got shape {M.shape}")
    if not np.all(np.isfinite(M.data)):
        raise ValueError(f"{name} must be finite (no NaN or Inf entries)")
    M.sum_duplicates()
    M.sort_indices()
    return M


def _torch_csr(M, device):
    M = sps.csr_matrix(M)
    M.sum_duplicates()
    M.sort_indices()
    with warnings.catch_warnings():  # torch's notice that its CSR layout is in beta
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        return _csr_tensor(M, device)


def _csr_tensor(M, device):
    return torch.sparse_csr_tensor(torch.from_numpy(M.indptr.astype(np.int64)), torch.from_numpy(M.indices.astype(np.int64)),
                                   torch.from_numpy(M.data.astype(np.float64)), size=M.shape, device=device,
                                   check_invariants=True)


class SparsePolyhedron(ConvexSet):
    r"""The polyhedron :math:`\{y ∈ ℝ^n : A y \le a,\ B y = b,\ l \le y \le u\}` with sparse ``A``, ``B``.

    Parameters
    ----------
    A, a : (m, n) sparse matrix and (..., m) array, optional
    B, b : (p, n) sparse matrix and (..., p) array, optional
        ``A``/``B``: scipy.sparse (any format), torch sparse (COO/CSR) or dense; shared by the
        batch; rows are normalised internally.  ``a``/``b`` may carry batch dimensions and
        require grad.
    lower, upper : scalars or (..., n) arrays, optional
        Variable bounds (±inf: none), handled natively; per sample and with gradients like ``a``.
    check_feasibility : bool
        Decide nonemptiness at construction (a projection of the origin, then a sparse LP by
        HiGHS for the samples it does not settle); ``InfeasibleError`` if empty.

    Projection: dual semismooth Newton with conjugate gradients (matrix-free), finished by a
    feasibility-restoring step on the active face; relative KKT residual ≤ ``tol`` with the
    library's semantics (primal violation of each row at its own scale).  Backward: the
    HS-Jacobian ``J g = D g − D Mᵀ v``, ``(M D Mᵀ) v = M D g`` (conjugate gradients, minimum
    norm), ``D`` the free coordinates and ``M`` the active rows; ``v`` is the gradient for the
    active right-hand sides and ``(g − Mᵀv)_j`` for the bound a coordinate sits at.
    """

    _engines = ("torch",)

    def __init__(self, A=None, a=None, B=None, b=None, *, lower=None, upper=None, check_feasibility: bool = True):
        if (A is None) != (a is None):
            raise ValueError("A and a must be given together (A y <= a); got only " + ("A" if a is None else "a"))
        if (B is None) != (b is None):
            raise ValueError("B and b must be given together (B y = b); got only " + ("B" if b is None else "b"))
        if A is None and B is None:
            raise ValueError("SparsePolyhedron needs at least one of (A, a) or (B, b)")
        device = next((t.device for t in (A, a, B, b, lower, upper) if isinstance(t, torch.Tensor)), torch.device("cpu"))
        A_s = _as_scipy(A, "A", None) if A is not None else None
        B_s = _as_scipy(B, "B", A_s.shape[1] if A_s is not None else None) if B is not None else None
        n = (A_s if A_s is not None else B_s).shape[1]
        A_s = A_s if A_s is not None else sps.csr_matrix((0, n))
        B_s = B_s if B_s is not None else sps.csr_matrix((0, n))
        a_t = as_tensor(a, "a", device=device, min_ndim=1, keep_grad=True) if a is not None else torch.zeros(0, dtype=torch.float64, device=device)
        b_t = as_tensor(b, "b", device=device, min_ndim=1, keep_grad=True) if b is not None else torch.zeros(0, dtype=torch.float64, device=device)
        for vec, k, vn, mn in ((a_t, A_s.shape[0], "a", "A"), (b_t, B_s.shape[0], "b", "B")):
            if vec.shape[-1] != k:
                raise ValueError(f"{vn} must have shape (..., {k}) with {k} = rows of {mn} {A_s.shape if mn == 'A' else B_s.shape}, "
                                 f"got {tuple(vec.shape)}")
        lo, up, (nb,) = _bounds(-math.inf if lower is None else lower, math.inf if upper is None else upper, "polyhedron")
        if nb not in (-1, n):
            raise ValueError(f"lower and upper must be scalars or have shape (..., {n}), got {tuple(lo.shape)} and {tuple(up.shape)}")
        batch_shapes = [a_t.shape[:-1], b_t.shape[:-1], *(t.shape[:-1] for t in (lo, up) if t.ndim)]
        try:
            batch = torch.broadcast_shapes(*batch_shapes)
        except RuntimeError:
            raise ValueError("the batch dimensions of a, b, lower and upper do not broadcast: "
                             f"{', '.join(str(tuple(s)) for s in batch_shapes)}") from None
        self.A, self.B, self.a, self.b, self.lower, self.upper = A_s, B_s, a_t, b_t, lo, up
        self.event_shape, self.batch_shape = (n,), tuple(batch)
        self._device = device
        C = sps.vstack([A_s, B_s]).tocsr()
        norms = np.sqrt(np.asarray(C.multiply(C).sum(1)).ravel())
        scale = np.where(norms > 0, 1.0 / np.where(norms > 0, norms, 1.0), 1.0)
        Cn = (sps.diags(scale) @ C).tocsr()
        self._scale = torch.tensor(scale, dtype=torch.float64, device=device)
        self._C = _torch_csr(Cn, device)
        self._Ct = _torch_csr(Cn.T.tocsr(), device)
        self._C2 = _torch_csr(Cn.multiply(Cn).tocsr(), device)
        self._absC = _torch_csr(abs(Cn).tocsr(), device)
        self._Cn = Cn
        self._detached_data()
        if check_feasibility:
            self._check_nonempty()

    # -- protocol -----------------------------------------------------------------------------
    @property
    def n(self) -> int:
        return self.event_shape[0]

    @property
    def m(self) -> int:
        return self.A.shape[0]

    @property
    def p(self) -> int:
        return self.B.shape[0]

    @property
    def device(self) -> torch.device:
        return self._device

    def to(self, device) -> "SparsePolyhedron":
        device = torch.device(device)
        if device == self.device:
            return self
        new = self._copy()
        new._device = device
        for name in ("a", "b", "lower", "upper", "_scale", "_C", "_Ct", "_C2", "_absC"):
            setattr(new, name, getattr(self, name).to(device))
        new._detached_data()
        return new

    def _rhs(self):
        rb = torch.broadcast_shapes(self.a.shape[:-1], self.b.shape[:-1])
        c = torch.cat([self.a.detach().expand(*rb, self.m), self.b.detach().expand(*rb, self.p)], -1)
        return c * self._scale

    def _detached_data(self):
        """Normalised right-hand sides and per-coordinate bounds, detached (computed once: the
        operator's fake-tensor path binds the set without running arithmetic on its data)."""
        self._c = self._rhs()
        self._lo, self._up = _per_coordinate(self.lower, self.n), _per_coordinate(self.upper, self.n)

    def _bind(self, batch: torch.Size) -> "_BoundSparse":
        n = self.n
        data = SparseData(self._C, self._Ct, self._C2, self._absC, flat_batch(self._c, batch, 1), self.m,
                          flat_batch(self._lo, batch, 1), flat_batch(self._up, batch, 1))
        params = {name: flat_batch(t, batch, 1) for name, t in
                  (("a", self.a), ("b", self.b), ("lower", self.lower), ("upper", self.upper)) if t.requires_grad}
        return _BoundSparse(data, self._scale, params, math.prod(batch), n)

    def _grad_raw(self) -> list:
        return [t for t in (self.a, self.b, self.lower, self.upper) if t.requires_grad]

    def _rebuild(self, values: dict) -> "SparsePolyhedron":
        return SparsePolyhedron(**{**self._init_args, **values, "check_feasibility": False})

    def _check_nonempty(self) -> None:
        batch = torch.Size(self.batch_shape)
        bound = self._bind(batch)
        probe = solve_sparse(bound.data, torch.zeros(bound.N, self.n, dtype=torch.float64, device=self.device),
                             tol=1e-9, max_iter=60)
        suspects = (~probe.converged).nonzero().flatten()
        bound._raise_if_empty(suspects, batch, self._Cn)

    def __repr__(self) -> str:
        batch = f", batch_shape={self.batch_shape}" if self.batch_shape else ""
        return f"SparsePolyhedron(n={self.n}, m={self.m}, p={self.p}, nnz={self._Cn.nnz}{batch}, device={self.device})"


class _BoundSparse(ConvexSet):
    """A :class:`SparsePolyhedron`'s data for one flat batch of ``N`` points."""

    _engines = ("torch",)

    def __new__(cls, *args, **kwargs):
        return object.__new__(cls)

    def __init__(self, data: SparseData, scale, params: dict, N: int, n: int):
        self.data, self.scale, self.params, self.N = data, scale, params, N
        self.event_shape = (n,)

    @property
    def device(self):
        return self.data.c.device

    def _solution_shapes(self, x_shape):
        N, n, K, m = x_shape[0], self.event_shape[0], self.data.K, self.data.m
        extra = [((N, n), torch.float64)] if self.params else []  # the saved y
        return [((N, m), torch.bool), ((N, K + n), torch.bool), *extra]

    # the saved state is one bool tensor, [active rows | free coordinates] (N, K + n)
    def _solve(self, x, *, tol, max_iter):
        res = solve_sparse(self.data, x, tol=tol, max_iter=max_iter)
        masks = torch.cat([res.active, res.free], 1)
        state = (masks, res.y.clone()) if self.params else (masks,)
        return SetSolution(res.y, res.active[:, : self.data.m], res.kkt, res.iterations, res.converged, state)

    def _masks(self, state):
        K = self.data.K
        return state[0][:, :K], state[0][:, K:]

    def _vjp(self, state, g):
        return sparse_backward(self.data, *self._masks(state), g)[0]

    def _grad_inputs(self):
        return tuple(self.params.values())

    def _vjp_with_inputs(self, state, g):
        (active, free), y = self._masks(state), state[1]
        gx, v = sparse_backward(self.data, active, free, g)
        held = ~free  # coordinates at a bound: (g − Mᵀv)_j goes to the bound they sit at
        q = torch.where(held, g - self.data.combine(v.T).T, torch.zeros_like(g))
        v = v * self.scale  # multipliers of the raw (unnormalised) rows
        m = self.data.m
        _, up = self.data.bounds()
        at_upper = held & (y >= up.T)
        grads = []
        for name, t in self.params.items():
            if name == "a":
                grads.append(sum_to(v[:, :m], t))
            elif name == "b":
                grads.append(sum_to(v[:, m:], t))
            elif name == "upper":
                grads.append(sum_to(torch.where(at_upper, q, torch.zeros_like(q)), t))
            else:
                grads.append(sum_to(torch.where(held & ~at_upper, q, torch.zeros_like(q)), t))
        return gx, tuple(grads)

    def _jacobian(self, state):
        n = self.event_shape[0]
        eye = torch.eye(n, dtype=torch.float64, device=self.device)
        cols = [self._vjp(state, eye[j].expand(state[0].shape[0], n)) for j in range(n)]
        J = torch.stack(cols, 1)
        return 0.5 * (J + J.mT)

    def _violation(self, y):
        d = self.data
        R = d.rows(y.T) - d.rhs()
        lo, up = d.bounds()
        rows = d.violations(R).amax(0) if d.K else y.new_zeros(y.shape[0])
        bounds = torch.maximum((y.T - up).clamp_min(0), (lo - y.T).clamp_min(0)).amax(0)
        return torch.maximum(rows, bounds)

    def _violation_scale(self, y):
        return self.data.row_scales(y.T).amax(0) if self.data.K else y.abs().amax(-1).clamp_min(1e-300)

    def _relative_violation(self, y, x=None):
        d = self.data
        floor = torch.finfo(torch.float64).eps * (x.abs().amax(-1) if x is not None else y.new_ones(y.shape[0]))
        Y = y.T
        lo, up = d.bounds()
        bscale = torch.maximum(torch.maximum(lo.abs().nan_to_num(0, 0, 0), up.abs().nan_to_num(0, 0, 0)),
                               Y.abs().amax(0, keepdim=True))
        bounds = (torch.maximum((Y - up).clamp_min(0), (lo - Y).clamp_min(0)) / torch.maximum(bscale, floor)).amax(0)
        if not d.K:
            return bounds
        R = d.rows(Y) - d.rhs()
        rows = (d.violations(R) / torch.maximum(d.row_scales(Y), floor)).amax(0)
        return torch.maximum(rows, bounds)

    _MAX_LP_CHECKS = 64

    def _raise_if_empty(self, index: torch.Tensor, batch, Cn=None) -> None:
        """Decide by a sparse LP (HiGHS) whether the samples ``index`` are empty; raise
        :class:`InfeasibleError` naming them."""
        if index.numel() == 0:
            return
        d = self.data
        if Cn is None:
            crow, col, val = (t.cpu().numpy() for t in (d.C.crow_indices(), d.C.col_indices(), d.C.values()))
            Cn = sps.csr_matrix((val, col, crow), shape=tuple(d.C.shape))
        m = d.m
        empty = []
        for i in index[: self._MAX_LP_CHECKS].tolist():
            c = (d.c[i] if d.c.ndim == 2 else d.c).cpu().numpy()
            lo = (d.lower[i] if d.lower.ndim == 2 else d.lower).cpu().numpy()
            up = (d.upper[i] if d.upper.ndim == 2 else d.upper).cpu().numpy()
            res = linprog(np.zeros(Cn.shape[1]), A_ub=Cn[:m] if m else None, b_ub=c[:m] if m else None,
                          A_eq=Cn[m:] if Cn.shape[0] > m else None, b_eq=c[m:] if Cn.shape[0] > m else None,
                          bounds=np.stack([np.where(np.isfinite(lo), lo, None), np.where(np.isfinite(up), up, None)], 1),
                          method="highs")
            if res.status == 2:
                empty.append(i)
        if not empty:
            return
        where = [tuple(int(k) for k in np.unravel_index(i, tuple(batch))) for i in empty] if len(batch) else None
        at = f" at batch indices {', '.join(map(str, where[:10]))}" if where else ""
        raise InfeasibleError(f"the sparse polyhedron is empty{at} (HiGHS: the constraints and bounds admit no point)",
                              indices=where)
