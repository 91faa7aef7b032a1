"""One contract every constraint set must pass: feasibility, idempotence, agreement with the
generic polyhedron solver and with an NNLS KKT certificate, batched = looped, gradcheck at
nondegenerate points, and a Jacobian that is symmetric, idempotent and equal to the generic
element P₀ of the same set written as a polyhedron (also at degenerate points)."""

import numpy as np
import pytest
import torch

import polyproj as pp
from polyproj.testing import certify_projection, reference_projection

F64 = torch.float64
N = 7


def _polyhedron():
    rng = np.random.default_rng(3)
    A = rng.standard_normal((9, N))
    y0 = rng.standard_normal(N)
    a = A @ y0 + rng.uniform(0.1, 1.0, 9)
    B = rng.standard_normal((2, N))
    P = pp.Polyhedron(A=A, a=a, B=B, b=B @ y0)
    return P, P


def _box():
    S = pp.Box(torch.linspace(-1.0, 0.0, N, dtype=F64), torch.linspace(0.5, 2.0, N, dtype=F64))
    return S, S.as_polyhedron()


def _halfspace():
    S = pp.HalfSpace(torch.linspace(-1.0, 2.0, N, dtype=F64), 0.7)
    return S, S.as_polyhedron()


def _simplex():
    S = pp.Simplex(total=2.0)
    return S, S.as_polyhedron(N)


def _capped():
    S = pp.CappedSimplex(torch.full((N,), -0.1, dtype=F64), torch.linspace(0.2, 1.0, N, dtype=F64), 1.5)
    return S, S.as_polyhedron()


SETS = {"polyhedron": _polyhedron, "box": _box, "halfspace": _halfspace, "simplex": _simplex, "capped_simplex": _capped}


def _points(seed=0, batch=6, spread=2.0):
    return torch.tensor(spread * np.random.default_rng(seed).standard_normal((batch, N)))


def _dense(P):
    D = P._data
    C, c = D.C.numpy(), D.c.numpy()
    return C[: D.m], c[: D.m], C[D.m:], c[D.m:]


@pytest.fixture(params=list(SETS))
def sets(request):
    return SETS[request.param]()


def test_feasible_idempotent_and_certified(sets):
    S, P = sets
    x = _points()
    y, info = pp.project(x, S, return_info=True)
    assert bool(info.converged.all()) and bool(S.contains(y).all()) and bool(P.contains(y).all())
    assert torch.allclose(pp.project(y, S), y, atol=1e-12, rtol=0)
    A, a, B, b = _dense(P)
    for xk, yk in zip(x.numpy(), y.numpy()):
        assert certify_projection(xk, yk, A, a, B, b)["kkt"] <= 1e-9


def test_agrees_with_an_independent_reference(sets):
    """Clarabel (interior point, tol 1e-10) on the same rows, point by point."""
    S, P = sets
    x = _points(7)
    y = pp.project(x, S)
    A, a, B, b = _dense(P)
    for xk, yk in zip(x.numpy(), y.numpy()):
        ref = reference_projection(xk, A, a, B, b, tol=1e-10)
        assert np.abs(ref - yk).max() <= 1e-7 * max(1.0, np.abs(xk).max()), np.abs(ref - yk).max()


@pytest.mark.parametrize("name", [k for k in SETS if k != "polyhedron"])
def test_structured_sets_agree_with_the_general_polyhedron_solver(name):
    S, P = SETS[name]()
    x = _points(1)
    y, info = pp.project(x, S, return_info=True)
    yp, infop = pp.project(x, P, return_info=True)
    assert torch.allclose(y, yp, atol=1e-10, rtol=0)
    if not isinstance(S, pp.Box):  # a Box's polyhedron drops infinite rows; here all finite
        assert torch.equal(info.active, infop.active)


def test_batched_equals_looped_and_shapes(sets):
    S, _ = sets
    x = _points(2, batch=6).reshape(2, 3, N)
    y = pp.project(x, S)
    looped = torch.stack([pp.project(v, S) for v in x.reshape(6, N)]).reshape(2, 3, N)
    assert y.shape == x.shape and torch.allclose(y, looped, atol=1e-13, rtol=0)
    assert pp.project(x.float(), S).dtype == torch.float32


def test_gradcheck(sets):
    S, _ = sets
    x = _points(4, batch=3).requires_grad_()
    assert torch.autograd.gradcheck(lambda z: pp.project(z, S), (x,), eps=1e-6, atol=1e-6)


def _degenerate_points(S, P):
    """Points whose projection sits exactly on a face with weakly active rows."""
    x = _points(5, batch=4)
    y = pp.project(x, S)
    A, a, B, b = _dense(P)
    act = (a[None] - y.numpy() @ A.T) <= 1e-12
    out = []
    for yk, ak in zip(y.numpy(), act):
        lam = np.where(ak, 0.5, 0.0)
        lam[np.flatnonzero(ak)[:1]] = 0.0  # one weakly active row
        out.append(yk + A.T @ lam + (B.T @ np.ones(B.shape[0]) * 0.3 if B.shape[0] else 0.0))
    return torch.tensor(np.array(out)), y


def test_jacobian_is_the_generic_P0(sets):
    S, P = sets
    for x in (_points(6), _degenerate_points(S, P)[0]):
        J = pp.hs_jacobian(x, S)
        Jp = pp.hs_jacobian(x, P)
        assert torch.allclose(J, J.mT, atol=1e-12) and torch.allclose(J @ J, J, atol=1e-10)
        assert torch.allclose(J, Jp, atol=1e-9), (J - Jp).abs().max()
        g = torch.randn_like(x)
        xr = x.clone().requires_grad_()
        (pp.project(xr, S) * g).sum().backward()
        assert torch.allclose(xr.grad, torch.einsum("bij,bj->bi", J, g), atol=1e-12)


def test_degenerate_points_project_onto_the_face(sets):
    S, P = sets
    x, y = _degenerate_points(S, P)
    assert torch.allclose(pp.project(x, S), y, atol=1e-10, rtol=0)
