"""Per-sample constraint data (DESIGN §7): batched A, a, B, b broadcasting against x, and the
gradients with respect to every constraint tensor."""

import numpy as np
import pytest
import torch
from scipy.optimize import nnls

import polyproj as pp
from polyproj.testing import certify_projection

from problems import random_instance

# each test runs with both forward engines of a Polyhedron (conftest.forward_engine)
pytestmark = pytest.mark.usefixtures("forward_engine")

F64 = torch.float64


def _batched_instance(rng, N=5, n=6, m=7, p=2):
    """N polyhedra sharing nothing, each nonempty (built through a known interior point)."""
    A = rng.standard_normal((N, m, n))
    B = rng.standard_normal((N, p, n))
    y0 = rng.standard_normal((N, n))
    a = np.einsum("smn,sn->sm", A, y0) + rng.uniform(0.05, 1.0, (N, m))
    b = np.einsum("spn,sn->sp", B, y0)
    X = y0 + 2.0 * rng.standard_normal((N, n))
    return A, a, B, b, X


def test_per_sample_data_equals_looping(rng):
    A, a, B, b, X = _batched_instance(rng)
    P = pp.Polyhedron(A=A, a=a, B=B, b=b)
    assert P.batch_shape == (5,)
    y, info = pp.project(torch.tensor(X), P, return_info=True)
    J = pp.hs_jacobian(torch.tensor(X), P)
    for s in range(5):
        Ps = pp.Polyhedron(A=A[s], a=a[s], B=B[s], b=b[s])
        ys, infos = pp.project(torch.tensor(X[s]), Ps, return_info=True)
        assert torch.allclose(y[s], ys, atol=1e-12, rtol=0)
        assert torch.equal(info.active[s], infos.active)
        assert torch.allclose(J[s], pp.hs_jacobian(torch.tensor(X[s]), Ps), atol=1e-12, rtol=0)
        assert certify_projection(X[s], y[s].numpy(), A[s], a[s], B[s], b[s])["kkt"] <= 1e-9


def test_shared_matrix_per_sample_rhs_and_broadcasting(rng):
    A, a, B, b, X = random_instance(rng, n=6, m=8, p=2, batch=4)
    shifts = rng.uniform(0.0, 0.5, (4, 8))
    a_batch = a + shifts  # (4, m): a per-sample right-hand side, shared A
    P = pp.Polyhedron(A=A, a=a_batch, B=B, b=b)
    assert P.batch_shape == (4,)
    x = torch.tensor(rng.standard_normal((3, 4, 6)))  # (3, 4): broadcasts against (4,)
    y = pp.project(x, P)
    assert y.shape == (3, 4, 6)
    for i in range(3):
        for s in range(4):
            ys = pp.project(x[i, s], pp.Polyhedron(A=A, a=a_batch[s], B=B, b=b))
            assert torch.allclose(y[i, s], ys, atol=1e-12, rtol=0)
    assert bool(P.contains(y).all()) and P.violation(y).shape == (3, 4)
    # a single point against the per-sample set projects onto every sample's polyhedron
    y1 = pp.project(x[0, 0], P)
    assert y1.shape == (4, 6) and torch.allclose(y1[2], pp.project(x[0, 0], pp.Polyhedron(A=A, a=a_batch[2], B=B, b=b)))


def _grad_problem(rng, N=3, n=5, m=4, p=1):
    """Random per-sample data with x far enough out that a few rows are strongly active and
    the rest clearly inactive (a point of differentiability)."""
    while True:
        A, a, B, b, X = _batched_instance(rng, N=N, n=n, m=m, p=p)
        P = pp.Polyhedron(A=A, a=a, B=B, b=b)
        y, info = pp.project(torch.tensor(X), P, return_info=True)
        slack = a - np.einsum("smn,sn->sm", A, y.numpy())
        x_minus_y = X - y.numpy()
        # nondegenerate: every row clearly active (with a positive multiplier) or clearly slack
        lam = []
        for s in range(N):
            M = np.vstack([A[s][info.active[s].numpy()], B[s]])
            lam.append(np.linalg.lstsq(M.T, x_minus_y[s], rcond=None)[0][: int(info.active[s].sum())])
        ok = all((lam_s > 1e-3).all() for lam_s in lam) and bool((slack[~info.active.numpy()] > 1e-3).all())
        if ok and bool(info.active.any()):
            return A, a, B, b, X


@pytest.mark.parametrize("shared", [False, True])
def test_gradcheck_all_constraint_tensors(rng, shared):
    A, a, B, b, X = _grad_problem(rng)
    if shared:  # shared matrices, per-sample right-hand sides
        A, B = A[0], B[0]
        y0 = np.linalg.lstsq(np.vstack([B]), b[0], rcond=None)[0]
        b = np.tile(B @ y0, (3, 1))
        a = np.tile(A @ y0, (3, 1)) + rng.uniform(0.05, 1.0, (3, A.shape[0]))
    tensors = [torch.tensor(t, dtype=F64, requires_grad=True) for t in (X, A, a, B, b)]

    def f(x, A_, a_, B_, b_):
        return pp.project(x, pp.Polyhedron(A=A_, a=a_, B=B_, b=b_, check_feasibility=False))

    assert torch.autograd.gradcheck(f, tensors, eps=1e-7, atol=1e-6, rtol=1e-5)


def test_only_constraint_data_requires_grad(rng):
    A, a, B, b, X = _grad_problem(rng)
    a_t = torch.tensor(a, requires_grad=True)
    y = pp.project(torch.tensor(X), pp.Polyhedron(A=A, a=a_t, B=B, b=b))
    assert y.requires_grad
    (y.sum()).backward()
    assert a_t.grad is not None and a_t.grad.shape == a_t.shape


def test_gradients_reach_float32_parameters_and_sum_over_broadcast(rng):
    A, a, B, b, X = random_instance(rng, n=5, m=6, p=1, batch=4)
    A_t = torch.tensor(A, dtype=torch.float32, requires_grad=True)  # shared, learned
    b_t = torch.tensor(b, dtype=torch.float32, requires_grad=True)
    x = torch.tensor(X, dtype=torch.float32)
    y = pp.project(x, pp.Polyhedron(A=A_t, a=a, B=B, b=b_t))
    g = torch.randn_like(y)
    (y * g).sum().backward()
    assert A_t.grad.dtype == torch.float32 and A_t.grad.shape == A_t.shape
    # the shared gradient is the sum of the per-sample ones
    total = torch.zeros_like(A_t)
    for s in range(4):
        A_s = torch.tensor(A, dtype=torch.float32, requires_grad=True)
        ys = pp.project(x[s], pp.Polyhedron(A=A_s, a=a, B=B, b=b))
        (ys * g[s]).sum().backward()
        total += A_s.grad
    assert torch.allclose(A_t.grad, total, atol=1e-4, rtol=1e-4)


def test_duplicate_rows_split_rhs_gradient():
    """y ≤ a₁, y ≤ a₂ with a₁ = a₂ and x outside: y = min(a₁, a₂); the gradient (½, ½) is a
    Clarke element and equals the central finite difference."""
    a = torch.tensor([1.0, 1.0], dtype=F64, requires_grad=True)
    x = torch.tensor([2.0], dtype=F64)
    y = pp.project(x, pp.Polyhedron(A=[[1.0], [1.0]], a=a))
    y.sum().backward()
    assert torch.allclose(a.grad, torch.tensor([0.5, 0.5], dtype=F64), atol=1e-12)
    h = 1e-6
    for i in range(2):
        e = torch.zeros(2, dtype=F64)
        e[i] = h
        fd = (pp.project(x, pp.Polyhedron(A=[[1.0], [1.0]], a=a.detach() + e))
              - pp.project(x, pp.Polyhedron(A=[[1.0], [1.0]], a=a.detach() - e))) / (2 * h)
        assert float(fd) == pytest.approx(0.5, abs=1e-9)


def _rhs_gradient(A, a, B, b, x, g):
    a_t = torch.tensor(a, requires_grad=True)
    b_t = torch.tensor(b, requires_grad=True)
    y = pp.project(torch.tensor(x), pp.Polyhedron(A=A, a=a_t, B=B, b=b_t, check_feasibility=False))
    (y * torch.tensor(g)).sum().backward()
    return np.concatenate([a_t.grad.numpy(), b_t.grad.numpy()])


def _in_convex_hull(point, vertices, tol):
    V = np.vstack(vertices).T  # columns are the candidate limits
    lhs = np.vstack([V, 1e3 * np.ones((1, V.shape[1]))])
    rhs = np.concatenate([point, [1e3]])
    w, res = nnls(lhs, rhs)
    return res <= tol * max(1.0, np.abs(point).max())


@pytest.mark.parametrize("case", ["duplicated", "weakly_active", "dependent"])
def test_rhs_gradient_is_a_clarke_element_at_degenerate_points(case):
    """At a degenerate point the (a, b)-gradient lies in the convex hull of the gradients at
    nearby points of differentiability (the Clarke generalised Jacobian, applied to g)."""
    rng = np.random.default_rng(7)
    n = 3
    y0 = np.zeros(n)
    B, b = np.array([[1.0, 1.0, 1.0]]), np.array([0.0])
    if case == "duplicated":
        A = np.array([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
        x = np.array([2.0, 0.5, -2.5])
    elif case == "weakly_active":
        A = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
        x = np.array([0.0, 1.0, -1.0])  # row 0 holds with zero slack and zero multiplier
    else:
        A = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [1.0, 1.0, 0.0]])
        x = np.array([2.0, 2.0, -4.0])
    a = A @ y0
    g = rng.standard_normal(n)
    grad = _rhs_gradient(A, a, B, b, x, g)
    limits = []
    for _ in range(40):
        da = 1e-5 * rng.standard_normal(a.shape)
        limits.append(_rhs_gradient(A, a + da, B, b, x, g))
    assert _in_convex_hull(grad, limits, 1e-6), (grad, np.unique(np.round(limits, 6), axis=0))


def test_per_sample_infeasibility_names_the_batch_indices(rng):
    A = np.array([[1.0], [-1.0]])
    a = np.array([[1.0, 0.0], [1.0, -2.0], [0.5, 0.5], [-1.0, 0.0]])  # samples 1 and 3 empty
    with pytest.raises(pp.InfeasibleError, match=r"2 sample\(s\) are empty, at batch indices \(1,\), \(3,\)") as err:
        pp.Polyhedron(A=A, a=a)
    assert err.value.indices == [(1,), (3,)]
    cert = err.value.certificate
    assert cert is not None and cert["rows"] == ["A[0]", "A[1]"]
    # without the construction check, the projection finds them and names them
    P = pp.Polyhedron(A=A, a=a, check_feasibility=False)
    with pytest.raises(pp.InfeasibleError, match=r"batch indices \(1,\), \(3,\)"):
        pp.project(torch.zeros(4, 1, dtype=F64), P)
    # the nonempty samples alone project fine
    y = pp.project(torch.tensor([[5.0], [-5.0]], dtype=F64), pp.Polyhedron(A=A, a=a[[0, 2]]))
    assert y.flatten().tolist() == [1.0, -0.5]


def test_set_is_a_snapshot_of_the_callers_data(rng):
    A, a, B, b, X = random_instance(rng, n=4, m=5, p=1, batch=2)
    a_t = torch.tensor(a)
    P = pp.Polyhedron(A=A, a=a_t, B=B, b=b)
    y = pp.project(torch.tensor(X), P)
    a_t += 100.0  # later in-place changes of the caller's tensor do not reach the set
    assert torch.equal(pp.project(torch.tensor(X), P), y)


def test_saved_state_with_constraint_gradients_is_linear_in_batch(rng):
    A, a, B, b, X = random_instance(rng, n=30, m=20, p=3, batch=64)
    a_t = torch.tensor(a, requires_grad=True)
    saved = []

    def pack(t):
        saved.append(t.numel() * t.element_size())
        return t

    x = torch.tensor(X, requires_grad=True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        pp.project(x, pp.Polyhedron(A=A, a=a_t, B=B, b=b))
    N, n, K = 64, 30, 23
    assert sum(saved) <= N * (n + 2 * K) * 8 + N * K
