"""Every documented argument and ``info`` field is checked by value (each of these tests fails
under one of the seeded defects of ``scripts/seeded_defects.py``)."""

import warnings

import numpy as np
import pytest
import scipy.sparse as sp
import torch

import polyproj as pp
from polyproj.testing import certify_projection

F64 = torch.float64


def _problem(seed=0, n=6, m=9, p=1, batch=5, spread=3.0):
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((m, n))
    y0 = rng.standard_normal(n)
    a = A @ y0 + rng.uniform(0.1, 1.0, m)
    B = rng.standard_normal((p, n))
    b = B @ y0
    x = torch.tensor(y0 + spread * rng.standard_normal((batch, n)))
    return A, a, B, b, x


def test_info_fields_by_value():
    A, a, B, b, x = _problem()
    P = pp.Polyhedron(A=A, a=a, B=B, b=b)
    y, info = pp.project(x, P, return_info=True)
    # iterations: Newton steps actually taken (an interior point needs none)
    assert bool((info.iterations >= 1).all()) and bool((info.iterations <= 500).all())
    _, inside = pp.project(torch.tensor(np.linalg.lstsq(B, b, rcond=None)[0] * 0 + y[0].numpy()), P, return_info=True)
    assert int(inside.iterations) <= 2
    # kkt_residual: at most tol, and not below what an independent certificate measures by more
    # than rounding (a residual reported as 0 for points that are not exact would fail here)
    certs = [certify_projection(xk, yk, A, a, B, b)["kkt"] for xk, yk in zip(x.numpy(), y.numpy())]
    assert bool((info.kkt_residual <= 1e-9).all()) and bool(info.converged.all()) and info.tol == 1e-9
    loose = pp.project(x, P, tol=1e-2, return_info=True)[1]
    assert loose.tol == 1e-2
    assert max(certs) <= 1e-9
    # active: exactly the rows with zero slack at the output
    slack = a - y.numpy() @ A.T
    assert np.array_equal(info.active.numpy(), slack <= 1e-9 * np.abs(A).sum(1).max() * 10)


def test_kkt_residual_is_the_residual_of_the_returned_point():
    # a budget too small to finish: the reported residual is that of the returned point
    A, a, B, b, x = _problem(1, spread=30.0)
    P = pp.Polyhedron(A=A, a=a, B=B, b=b)
    with pytest.warns(pp.ConvergenceWarning):
        y, info = pp.project(x, P, max_iter=1, on_failure="warn", return_info=True)
    rel = P.violation(y, relative=True)
    assert bool((info.kkt_residual >= rel - 1e-14).all())
    assert bool((info.converged == (info.kkt_residual <= info.tol)).all())
    assert not bool(info.converged.all())


def test_violation_by_value():
    P = pp.Polyhedron(A=[[3.0, 4.0]], a=[5.0], B=[[0.0, 2.0]], b=[2.0])
    y = torch.tensor([[3.0, 1.0], [1.0, 1.5]], dtype=F64)
    # rows normalised: (3y₁ + 4y₂ − 5)/5 = 1.6 and 0.8; |2y₂ − 2|/2 = 0 and 0.5
    assert torch.allclose(P.violation(y), torch.tensor([1.6, 0.8], dtype=F64))
    assert torch.equal(P.contains(y), torch.tensor([False, False]))
    assert bool(P.contains(torch.tensor([0.0, 1.0], dtype=F64)))
    S = pp.Simplex()
    assert float(S.violation(torch.tensor([0.5, 0.7, -0.1], dtype=F64))) == pytest.approx(0.1)


def test_layer_passes_tol_max_iter_and_on_failure():
    A, a, B, b, x = _problem(2, spread=30.0)
    P = pp.Polyhedron(A=A, a=a, B=B, b=b)
    with pytest.raises(pp.ConvergenceError):
        pp.Projection(P, max_iter=1)(x)
    with pytest.warns(pp.ConvergenceWarning):
        pp.Projection(P, max_iter=1, on_failure="warn")(x)
    layer = pp.Projection(P, tol=1e-3)
    layer(x)
    assert layer.last_info.tol == 1e-3


def test_hs_jacobian_passes_its_options():
    A, a, B, b, x = _problem(3, spread=30.0)
    P = pp.Polyhedron(A=A, a=a, B=B, b=b)
    with pytest.raises(pp.ConvergenceError):
        pp.hs_jacobian(x, P, max_iter=1)
    with pytest.warns(pp.ConvergenceWarning):
        pp.hs_jacobian(x, P, max_iter=1, on_failure="warn")
    with pytest.raises(ValueError, match="tol must be"):
        pp.hs_jacobian(x, P, tol=2.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        J = pp.hs_jacobian(x, P, tol=1e-6)
    assert J.shape == (5, 6, 6)


def test_scipy_sparse_constraints_equal_dense():
    A, a, B, b, x = _problem(4)
    dense = pp.project(x, pp.Polyhedron(A=A, a=a, B=B, b=b))
    sparse = pp.project(x, pp.Polyhedron(A=sp.csr_matrix(A), a=a, B=sp.coo_matrix(B), b=b))
    assert torch.equal(dense, sparse)


def test_projection_module_moves_its_set():
    A, a, B, b, _ = _problem(5)
    # (meta: a device every machine has; moving back would need data)
    assert pp.Projection(pp.Polyhedron(A=A, a=a, B=B, b=b)).to("meta").set.device.type == "meta"
    assert pp.Projection(pp.Simplex()).to("meta").set.device.type == "meta"


def test_the_certificate_is_strict():
    """A point a little inside the set is not the projection of a point outside it; nor is a
    point whose multiplier sits on a row it has left."""
    A, a = np.array([[1.0, 0.0], [0.0, 1.0]]), np.array([1.0, 1.0])
    x = np.array([3.0, 0.5])
    assert certify_projection(x, np.array([1.0, 0.5]), A, a)["kkt"] <= 1e-15
    assert certify_projection(x, np.array([1.0 - 1.5e-8, 0.5]), A, a)["kkt"] > 1e-9
    assert certify_projection(x, np.array([1.0 - 5e-7, 0.5]), A, a)["kkt"] > 1e-9
