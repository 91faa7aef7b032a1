"""Forward pass of the general polyhedron against exact constructions, an independent KKT
certificate (NNLS) and reference solvers (Clarabel, OSQP)."""

import numpy as np
import pytest
import torch

import polyproj as pp
from polyproj.testing import certify_projection, reference_projection

from problems import FAMILIES, known_projection, random_instance

# each test runs with both forward engines of a Polyhedron (conftest.forward_engine)
pytestmark = pytest.mark.usefixtures("forward_engine")


def _project(X, A, a, B, b, **kw):
    P = pp.Polyhedron(A=A if A.shape[0] else None, a=a if A.shape[0] else None,
                      B=B if B.shape[0] else None, b=b if B.shape[0] else None)
    return pp.project(torch.tensor(X), P, return_info=True, **kw)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("n", [3, 8, 20])
def test_known_projection(family, n, rng):
    A, a, B, b, X, Y = known_projection(family, rng, n=n)
    y, info = _project(X, A, a, B, b)
    scale = np.abs(X).max()
    assert np.abs(y.numpy() - Y).max() <= 1e-9 * scale
    assert bool(info.converged.all())
    assert float(info.kkt_residual.max()) <= 1e-9
    for xk, yk in zip(X, y.numpy()):
        assert certify_projection(xk, yk, A, a, B, b)["kkt"] <= 1e-9


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("shape", [(5, 8, 1), (12, 30, 3), (30, 10, 0), (16, 0, 6)])
def test_random_against_reference(seed, shape, rng):
    n, m, p = shape
    rng = np.random.default_rng(seed)
    A, a, B, b, X = random_instance(rng, n=n, m=m, p=p, batch=5)
    y, info = _project(X, A, a, B, b)
    assert float(info.kkt_residual.max()) <= 1e-9
    for xk, yk in zip(X, y.numpy()):
        ref = reference_projection(xk, A, a, B, b, solver="osqp", tol=1e-12)
        cert = certify_projection(xk, yk, A, a, B, b)
        assert cert["kkt"] <= 1e-9, cert
        # the reference is accurate to its own tolerance only; our output is certified above
        assert np.abs(yk - ref).max() <= 1e-6 * max(1.0, np.abs(xk).max())
    # Clarabel too, on the first point
    ref = reference_projection(X[0], A, a, B, b, solver="clarabel")
    assert np.abs(y.numpy()[0] - ref).max() <= 1e-6 * max(1.0, np.abs(X[0]).max())


@pytest.mark.parametrize("scale", [1e-6, 1e-3, 1.0, 1e3, 1e6])
def test_scale_invariance(scale, rng):
    A, a, B, b, X = random_instance(rng, n=10, m=15, p=2, batch=6)
    y1, _ = _project(X, A, a, B, b)
    ys, info = _project(X * scale, A, a * scale, B, b * scale)
    assert float(info.kkt_residual.max()) <= 1e-9
    assert np.abs(ys.numpy() / scale - y1.numpy()).max() <= 1e-9 * np.abs(X).max()


@pytest.mark.parametrize("row_scale", [1e-6, 1e6])
def test_badly_scaled_rows(row_scale, rng):
    A, a, B, b, X = random_instance(rng, n=10, m=15, p=2, batch=6)
    D = np.where(np.arange(15) % 2 == 0, row_scale, 1.0)
    y1, _ = _project(X, A, a, B, b)
    y2, info = _project(X, D[:, None] * A, D * a, B, b)
    assert bool(info.converged.all())
    assert np.abs(y1.numpy() - y2.numpy()).max() <= 1e-9 * np.abs(X).max()


def test_idempotent_on_boundary_points(rng):
    A, a, B, b, X = random_instance(rng, n=6, m=10, p=1, batch=6)
    y, info = _project(X, A, a, B, b)
    assert bool(info.active.any())
    y2, _ = _project(y.numpy(), A, a, B, b)
    assert np.abs(y2.numpy() - y.numpy()).max() <= 1e-12 * np.abs(X).max()
    assert bool(pp.Polyhedron(A=A, a=a, B=B, b=b).contains(y).all())


def test_interior_points_unchanged(rng):
    A = rng.standard_normal((12, 5))
    y0 = rng.standard_normal(5)
    a = A @ y0 + 1.0
    X = y0 + 0.01 * rng.standard_normal((7, 5))
    y, info = _project(X, A, a, A[:0], a[:0])
    assert torch.equal(y, torch.tensor(X))
    assert not bool(info.active.any())


def test_float32_input(rng):
    A, a, B, b, X = random_instance(rng, n=10, m=12, p=2, batch=8)
    y64, _ = _project(X, A, a, B, b)
    P = pp.Polyhedron(A=A, a=a, B=B, b=b)
    y32, info = pp.project(torch.tensor(X, dtype=torch.float32), P, return_info=True)
    assert y32.dtype == torch.float32
    # float32 inputs are solved in float64 to the same default tolerance, then rounded
    assert info.tol == 1e-9
    assert np.abs(y32.double().numpy() - y64.numpy()).max() <= 1e-7 * np.abs(y64.numpy()).max()
    assert bool(P.contains(y32).all())
    assert float(P.violation(y32, relative=True).max()) <= 4 * torch.finfo(torch.float32).eps


def test_batch_shapes_and_batched_equals_looped(rng):
    A, a, B, b, X = random_instance(rng, n=7, m=9, p=1, batch=12)
    P = pp.Polyhedron(A=A, a=a, B=B, b=b)
    x = torch.tensor(X).reshape(3, 4, 7)
    y, info = pp.project(x, P, return_info=True)
    assert y.shape == (3, 4, 7) and info.active.shape == (3, 4, 9) and info.kkt_residual.shape == (3, 4)
    looped = torch.stack([pp.project(xi, P) for xi in torch.tensor(X)])
    assert torch.allclose(y.reshape(12, 7), looped, atol=1e-12, rtol=0)
    assert pp.project(torch.tensor(X[0]), P).shape == (7,)
    empty = pp.project(torch.zeros(0, 7, dtype=torch.float64), P)
    assert empty.shape == (0, 7)


def test_large_problem(rng):
    n, m, p = 300, 300, 10
    A, a, B, b, X = random_instance(rng, n=n, m=m, p=p, batch=3)
    y, info = _project(X, A, a, B, b)
    assert float(info.kkt_residual.max()) <= 1e-9
    for xk, yk in zip(X, y.numpy()):
        assert certify_projection(xk, yk, A, a, B, b)["kkt"] <= 1e-9


def test_info_fields(rng):
    A, a, B, b, X = random_instance(rng, n=5, m=6, p=1, batch=3)
    y, info = _project(X, A, a, B, b)
    assert info.active.dtype == torch.bool and info.converged.dtype == torch.bool
    assert info.iterations.dtype == torch.int64
    slack = a - y.numpy() @ A.T
    assert np.array_equal(info.active.numpy(), slack <= 1e-9 * np.abs(X).max())
