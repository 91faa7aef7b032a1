"""Variable bounds handled natively by ``Polyhedron(lower=, upper=)``: the same projection,
HS-Jacobian and constraint gradients as the same set written with one row per bound, against
Clarabel, on random and degenerate problems, with both forward engines; the structured sets
(Box, Simplex, CappedSimplex) agree with their bounded-polyhedron form; the masked Schur
elimination of the bound rows equals the dense masked solve."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import polyproj as pp
from polyproj.functional._masked_linalg import masked_factor, pinv_solve, solve_consistent
from polyproj.functional.bounded import BoundedData
from polyproj.functional.polyhedron import PolyhedronData
from polyproj.testing import certify_projection, reference_projection

F64 = torch.float64
pytestmark = pytest.mark.usefixtures("forward_engine")


def _as_rows(A, a, B, b, lower, upper):
    """The same set with one inequality row per finite bound (the reference formulation)."""
    n = (A if A is not None else B).shape[-1]
    lo = np.broadcast_to(np.asarray(lower, float), (n,))
    up = np.broadcast_to(np.asarray(upper, float), (n,))
    eye = np.eye(n)
    rows = [eye[np.isfinite(up)], -eye[np.isfinite(lo)]]
    rhs = [up[np.isfinite(up)], -lo[np.isfinite(lo)]]
    if A is not None:
        rows.insert(0, np.asarray(A))
        rhs.insert(0, np.asarray(a))
    return np.vstack(rows), np.concatenate(rhs), B, b


def _random_problem(rng, n=15, m=5, p=2, lower=0.0, upper=1.0):
    y0 = rng.uniform(0.2, 0.8, n)
    A = rng.standard_normal((m, n))
    a = A @ y0 + rng.uniform(0.0, 0.5, m)
    B = rng.standard_normal((p, n)) if p else None
    b = B @ y0 if p else None
    return (A if m else None), (a if m else None), B, b, lower, upper


def _degenerate_problems(rng):
    n = 10
    out = {}
    A, a, B, b, lo, up = _random_problem(rng, n)
    out["duplicated general rows"] = (np.vstack([A, A[:2]]), np.concatenate([a, a[:2]]), B, b, lo, up)
    # a general row that repeats a bound, and one that is a sum of two bounds: dependent active rows
    e = np.eye(n)
    out["rows that repeat bounds"] = (np.vstack([A, e[0], e[1] + e[2]]), np.concatenate([a, [1.0, 2.0]]), B, b, lo, up)
    lo_f = np.zeros(n)
    up_f = np.ones(n)
    up_f[3] = lo_f[3] = 0.5  # a fixed coordinate
    out["fixed coordinate"] = (A, a, B, b, lo_f, up_f)
    out["equality rows and bounds"] = (None, None, B, b, lo, up)
    out["inequality rows and bounds"] = (A, a, None, None, lo, up)
    up_half = np.where(np.arange(n) % 2 == 0, 1.0, np.inf)
    out["one-sided bounds"] = (A, a, B, b, -np.inf, up_half)
    return out


def _certified_reference(x, A, a, B, b):
    """Clarabel's projection, or OSQP's (polished) where Clarabel's does not certify to 1e-9
    (interior-point answers to far inputs can stop 1e-7 short); asserts the one used certifies."""
    for solver in ("clarabel", "osqp"):
        ref = reference_projection(x, A, a, B, b, tol=1e-10, solver=solver)
        if certify_projection(x, ref, A, a, B, b)["kkt"] <= 1e-9:
            return ref
    raise AssertionError("no reference solver certifies this projection")


def _project_both(x, A, a, B, b, lower, upper, **kw):
    P = pp.Polyhedron(A=A, a=a, B=B, b=b, lower=lower, upper=upper)
    R = pp.Polyhedron(*_as_rows(A, a, B, b, lower, upper))
    return pp.project(x, P, return_info=True, **kw), pp.project(x, R, **kw), (P, R)


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("spread", [0.1, 1.0, 30.0])
def test_random_problems_match_rows_and_reference(seed, spread):
    rng = np.random.default_rng(seed)
    prob = _random_problem(rng)
    x = torch.tensor(spread * rng.standard_normal((6, 15)) + 0.5)
    (y, info), y_rows, (P, _) = _project_both(x, *prob)
    assert bool(info.converged.all()) and bool(P.contains(y).all())
    assert torch.allclose(y, y_rows, atol=1e-9 * max(1.0, spread), rtol=0)
    A, a, B, b = _as_rows(*prob)
    for xk, yk in zip(x.numpy(), y.numpy()):
        assert certify_projection(xk, yk, A, a, B, b)["kkt"] <= 1e-9
        assert np.abs(_certified_reference(xk, A, a, B, b) - yk).max() <= 1e-7 * max(1.0, spread)


@pytest.mark.parametrize("case", list(_degenerate_problems(np.random.default_rng(0))))
def test_degenerate_problems(case):
    rng = np.random.default_rng(1)
    prob = _degenerate_problems(np.random.default_rng(0))[case]
    x = torch.tensor(2.0 * rng.standard_normal((8, 10)))
    (y, info), y_rows, (P, R) = _project_both(x, *prob)
    assert bool(info.converged.all())
    assert float(P.violation(y, relative=True).max()) <= 1e-9
    assert torch.allclose(y, y_rows, atol=1e-8, rtol=0)
    A, a, B, b = _as_rows(*prob)
    for xk, yk in zip(x.numpy(), y.numpy()):
        assert certify_projection(xk, yk, A, a, B, b)["kkt"] <= 1e-8, case
    # the backward: the same HS-Jacobian element as the row formulation
    J, J_rows = pp.hs_jacobian(x, P), pp.hs_jacobian(x, R)
    assert torch.allclose(J, J_rows, atol=1e-8), (J - J_rows).abs().max()


@pytest.mark.parametrize("scale", [1e-6, 1.0, 1e4, 1e8])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_every_input_scale_is_feasible_at_the_sets_scale(scale, dtype):
    rng = np.random.default_rng(4)
    prob = _random_problem(rng)
    P = pp.Polyhedron(A=prob[0], a=prob[1], B=prob[2], b=prob[3], lower=0.0, upper=1.0)
    x = torch.tensor(scale * rng.standard_normal((8, 15)), dtype=dtype)
    y = pp.project(x, P)
    tol = 1e-9 if dtype == torch.float64 else 4 * torch.finfo(torch.float32).eps
    assert float(P.violation(y, relative=True).max()) <= tol


def test_gradients_for_every_tensor_match_the_row_formulation():
    rng = np.random.default_rng(5)
    A, a, B, b, _, _ = _random_problem(rng, n=12)
    lo = torch.tensor(rng.uniform(-0.2, 0.1, 12), requires_grad=True)
    up = torch.tensor(rng.uniform(0.6, 1.0, 12), requires_grad=True)
    At, at, Bt, bt = (torch.tensor(t, requires_grad=True) for t in (A, a, B, b))
    x = torch.tensor(1.5 * rng.standard_normal((5, 12)) + 0.4, requires_grad=True)
    g = torch.tensor(rng.standard_normal((5, 12)))
    y = pp.project(x, pp.Polyhedron(A=At, a=at, B=Bt, b=bt, lower=lo, upper=up))
    grads = torch.autograd.grad((y * g).sum(), (x, At, at, Bt, bt, lo, up))
    # the same set with explicit bound rows, built from clones of the same tensors
    lo2, up2, At2, at2, Bt2, bt2, x2 = (t.detach().clone().requires_grad_() for t in (lo, up, At, at, Bt, bt, x))
    eye = torch.eye(12, dtype=F64)
    y2 = pp.project(x2, pp.Polyhedron(A=torch.cat([At2, eye, -eye]), a=torch.cat([at2, up2, -lo2]), B=Bt2, b=bt2))
    grads2 = torch.autograd.grad((y2 * g).sum(), (x2, At2, at2, Bt2, bt2, lo2, up2))
    assert torch.allclose(y, y2, atol=1e-10)
    for name, g1, g2 in zip(["x", "A", "a", "B", "b", "lower", "upper"], grads, grads2):
        assert torch.allclose(g1, g2, atol=1e-8), (name, (g1 - g2).abs().max())
    assert float(grads[5].abs().sum()) > 0 and float(grads[6].abs().sum()) > 0  # bounds are active


def test_gradcheck_with_bounds_that_require_grad():
    rng = np.random.default_rng(6)
    A, a, B, b, _, _ = _random_problem(rng, n=6, m=2, p=1)
    lo = torch.tensor(rng.uniform(0.0, 0.1, 6), requires_grad=True)
    up = torch.tensor(rng.uniform(0.7, 0.9, 6), requires_grad=True)
    x = torch.tensor(rng.standard_normal((2, 6)) + 0.4, requires_grad=True)
    f = lambda x, lo, up: pp.project(x, pp.Polyhedron(A=A, a=a, B=B, b=b, lower=lo, upper=up))  # noqa: E731
    assert torch.autograd.gradcheck(f, (x, lo, up), eps=1e-6, atol=1e-6)


def test_per_sample_bounds_and_batched_equals_looped():
    rng = np.random.default_rng(7)
    A, a, B, b, _, _ = _random_problem(rng, n=9)
    lo = torch.tensor(rng.uniform(-0.5, 0.1, (4, 9)))
    up = lo + torch.tensor(rng.uniform(0.5, 1.5, (4, 9)))
    x = torch.tensor(2 * rng.standard_normal((4, 9)))
    P = pp.Polyhedron(A=A, a=a + 2.0, lower=lo, upper=up)
    assert P.batch_shape == (4,)
    y = pp.project(x, P)
    for k in range(4):
        yk = pp.project(x[k], pp.Polyhedron(A=A, a=a + 2.0, lower=lo[k], upper=up[k]))
        assert torch.allclose(y[k], yk, atol=1e-10)


@pytest.mark.parametrize("make", ["box", "simplex", "capped"])
def test_structured_sets_equal_their_bounded_polyhedron(make):
    n = 9
    x = torch.tensor(np.random.default_rng(8).standard_normal((6, n)) * 2)
    lo, up = torch.linspace(-1.0, 0.0, n, dtype=F64), torch.linspace(0.3, 1.0, n, dtype=F64)
    if make == "box":
        S, P = pp.Box(lo, up), pp.Polyhedron(lower=lo, upper=up)
    elif make == "simplex":
        S, P = pp.Simplex(2.0), pp.Polyhedron(B=np.ones((1, n)), b=[2.0], lower=0.0)
    else:
        S, P = pp.CappedSimplex(lo, up, 1.0), pp.Polyhedron(B=np.ones((1, n)), b=[1.0], lower=lo, upper=up)
    y, yp = pp.project(x, S), pp.project(x, P)
    assert torch.allclose(y, yp, atol=1e-10, rtol=0)
    J, Jp = pp.hs_jacobian(x, S), pp.hs_jacobian(x, P)
    assert torch.allclose(J, Jp, atol=1e-9)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), m=st.integers(0, 6), p=st.integers(0, 3), spread=st.sampled_from([0.3, 3.0, 1e3]))
def test_property_bounded_equals_rows(seed, m, p, spread):
    rng = np.random.default_rng(seed)
    n = 8
    if m + p == 0:
        m = 1
    prob = _random_problem(rng, n=n, m=m, p=min(p, n - 1), lower=-0.2, upper=np.where(rng.random(n) < 0.7, 1.0, np.inf))
    x = torch.tensor(spread * rng.standard_normal((3, n)))
    (y, info), y_rows, (P, _) = _project_both(x, *prob)
    assert bool(info.converged.all()) and bool(P.contains(y).all())
    assert torch.allclose(y, y_rows, atol=1e-8 * max(1.0, spread), rtol=0)


def test_explicit_jacobian_is_the_bounded_hs_element():
    """J = D − D Mᵀ(M D Mᵀ)⁺ M D with D the free coordinates and M the active general rows."""
    rng = np.random.default_rng(9)
    A, a, B, b, _, _ = _random_problem(rng, n=10)
    P = pp.Polyhedron(A=A, a=a, B=B, b=b, lower=0.0, upper=1.0)
    x = torch.tensor(2 * rng.standard_normal((4, 10)))
    y, info = pp.project(x, P, return_info=True)
    J = pp.hs_jacobian(x, P)
    for k in range(4):
        yk = y[k].numpy()
        free = (yk > 1e-9) & (yk < 1 - 1e-9)
        D = np.diag(free.astype(float))
        M = np.vstack([A[info.active[k].numpy()], B])
        Jk = D - D @ M.T @ np.linalg.pinv(M @ D @ M.T) @ M @ D
        assert np.abs(J[k].numpy() - Jk).max() <= 1e-9


def test_errors_name_the_argument():
    A = np.ones((1, 3))
    with pytest.raises(pp.InfeasibleError, match="lower"):
        pp.Polyhedron(A=A, a=[1.0], lower=[0.0, 2.0, 0.0], upper=1.0)
    with pytest.raises(ValueError, match=r"shape \(\.\.\., 3\)"):
        pp.Polyhedron(A=A, a=[1.0], lower=np.zeros(4))
    with pytest.raises(ValueError, match="lower must not contain NaN"):
        pp.Polyhedron(A=A, a=[1.0], lower=[0.0, float("nan"), 0.0])
    with pytest.raises(ValueError, match=r"\+inf"):
        pp.Polyhedron(A=A, a=[1.0], lower=float("inf"))
    with pytest.raises(ValueError, match="no dimension"):
        pp.Polyhedron(lower=0.0, upper=1.0)
    with pytest.raises(ValueError, match="same coordinates in every sample"):
        pp.Polyhedron(A=A, a=[1.0], upper=[[1.0, 1.0, 1.0], [1.0, float("inf"), 1.0]])
    with pytest.raises(pp.InfeasibleError):  # bounds and rows that exclude each other
        pp.Polyhedron(A=A, a=[-1.0], lower=0.0)


def test_set_keeps_a_snapshot_of_the_bounds():
    lo = torch.zeros(3, dtype=F64)
    P = pp.Polyhedron(B=np.ones((1, 3)), b=[1.0], lower=lo)
    lo.fill_(5.0)
    y = pp.project(torch.tensor([2.0, -1.0, 0.0], dtype=F64), P)
    assert torch.allclose(y, torch.tensor([1.0, 0.0, 0.0], dtype=F64))


# --- the masked linear algebra with bounds eliminated ------------------------------------


def _pair(rng, n=12, m=4, p=2, N=10):
    A = rng.standard_normal((m + p, n))
    Cg = torch.tensor(A / np.linalg.norm(A, axis=1, keepdims=True))
    var = torch.cat([torch.arange(n), torch.arange(0, n, 2)])
    sign = torch.cat([torch.ones(n, dtype=F64), -torch.ones((n + 1) // 2, dtype=F64)])
    c = torch.tensor(rng.standard_normal(var.numel() + m + p))
    bounded = BoundedData.from_rows(var, sign, Cg, c, m, n)
    dense = PolyhedronData.from_rows(bounded.matrix(), c, bounded.m)
    return bounded, dense


@pytest.mark.parametrize("delta", [1.0, 1e-2, 1e-5])
def test_schur_factor_equals_the_dense_masked_solve(delta):
    rng = np.random.default_rng(10)
    bounded, dense = _pair(rng)
    mask = torch.tensor(rng.random((10, bounded.K)) < 0.5)
    mask[0, 0] = mask[0, 12] = True  # both bounds of coordinate 0 selected
    r = torch.tensor(rng.standard_normal((10, bounded.K)))
    fb, fd = masked_factor(bounded.G, mask, delta), masked_factor(dense.G, mask, delta)
    assert torch.allclose(fb.solve(r), fd.solve(r), atol=1e-9 / delta)
    assert torch.allclose(fb.matvec(r), fd.matvec(r), atol=1e-13)
    r3 = torch.tensor(rng.standard_normal((10, bounded.K, 3)))
    assert torch.allclose(fb.solve(r3), fd.solve(r3), atol=1e-9 / delta)


def test_consistent_and_pseudo_inverse_solves_with_bounds():
    rng = np.random.default_rng(11)
    bounded, dense = _pair(rng)
    mask = torch.tensor(rng.random((10, bounded.K)) < 0.4)
    g = torch.tensor(rng.standard_normal((10, 12)))
    rhs = bounded.rows(g) * mask
    nb, _ = solve_consistent(bounded.G, mask, rhs)
    nd, _ = solve_consistent(dense.G, mask, rhs)
    assert torch.allclose(bounded.combine(nb), dense.combine(nd), atol=1e-10)
    # the pseudo-inverse path: an exact solution (not necessarily the minimum-norm one), so the
    # same product Cᵀw and the same residual
    pb, pd = pinv_solve(bounded.G, mask, rhs), pinv_solve(dense.G, mask, rhs)
    assert torch.allclose(bounded.combine(pb), dense.combine(pd), atol=1e-10)
    assert torch.allclose(masked_factor(bounded.G, mask, 1.0).matvec(pb), rhs, atol=1e-10)
