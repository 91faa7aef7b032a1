"""Property-based fuzzing of the general polyhedron (hypothesis): duplicated, scaled and
dependent rows, weakly active constraints, more than n active rows, empty sets, scales
1e-6…1e6, float32 and float64."""

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import polyproj as pp
from polyproj.testing import certify_projection

# each test runs with both forward engines of a Polyhedron (conftest.forward_engine)
pytestmark = pytest.mark.usefixtures("forward_engine")


@st.composite
def polyhedra(draw):
    n = draw(st.integers(1, 8))
    m = draw(st.integers(0, 14))
    p = draw(st.integers(0, min(3, n)))
    if m + p == 0:
        m = 1
    seed = draw(st.integers(0, 2**32 - 1))
    scale = 10.0 ** draw(st.integers(-6, 6))
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((m, n))
    B = rng.standard_normal((p, n))
    for _ in range(draw(st.integers(0, 3))):  # degenerate rows: duplicates, multiples, sums
        if m >= 2:
            i, j, k = rng.integers(0, m, 3)
            kind = rng.integers(0, 3)
            A[k] = A[i] if kind == 0 else (rng.uniform(0.1, 10) * A[i] if kind == 1 else A[i] + A[j])
    if p >= 2 and draw(st.booleans()):
        B[-1] = B[0] * 2.0  # rank-deficient B
    y0 = rng.standard_normal(n)
    tight = rng.random(m) < draw(st.floats(0.0, 1.0))  # rows through y0: weakly/strongly active, > n active
    a = A @ y0 + np.where(tight, 0.0, rng.uniform(0.0, 1.0, m))
    b = B @ y0
    X = y0 + draw(st.sampled_from([0.1, 1.0, 10.0])) * rng.standard_normal((4, n))
    return A * 1.0, a * scale, B, b * scale, X * scale, y0 * scale


def _make(A, a, B, b):
    return pp.Polyhedron(A=A if A.shape[0] else None, a=a if A.shape[0] else None,
                         B=B if B.shape[0] else None, b=b if B.shape[0] else None)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(polyhedra())
def test_projection_is_certified_and_idempotent(problem):
    A, a, B, b, X, y0 = problem
    P = _make(A, a, B, b)
    y, info = pp.project(torch.tensor(X), P, return_info=True)
    assert bool(info.converged.all())
    for xk, yk in zip(X, y.numpy()):
        cert = certify_projection(xk, yk, A, a, B, b)
        assert cert["kkt"] <= 1e-8, cert
    y2 = pp.project(y, P)
    # y lies in P up to rounding; re-projecting moves it by that rounding times the
    # conditioning of the active rows (cond ≈ 600 gives ~5e-12)
    assert float((y2 - y).abs().max()) <= 1e-10 * max(1.0, float(np.abs(X).max()))
    # a point of P comes back unchanged
    y0t = torch.tensor(y0)
    assert float((pp.project(y0t, P) - y0t).abs().max()) <= 1e-12 * max(1.0, float(np.abs(y0).max()))
    J = pp.hs_jacobian(torch.tensor(X), P)
    assert torch.allclose(J, J.mT, atol=1e-10) and torch.allclose(J @ J, J, atol=1e-9)


@settings(max_examples=40, deadline=None)
@given(polyhedra())
def test_float32_matches_float64(problem):
    A, a, B, b, X, _ = problem
    P = _make(A, a, B, b)
    y64 = pp.project(torch.tensor(X), P)
    y32, info = pp.project(torch.tensor(X, dtype=torch.float32), P, return_info=True)
    assert y32.dtype == torch.float32 and bool(info.converged.all())
    scale = max(1.0, float(np.abs(X).max()))
    assert float((y32.double() - y64).abs().max()) <= 1e-5 * scale


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 6), st.integers(0, 2**32 - 1), st.floats(1e-3, 10.0))
def test_empty_polyhedra_are_refused(n, seed, gap):
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((5, n))
    a = A @ rng.standard_normal(n) + 1.0
    c = rng.standard_normal(n)
    # c·y ≤ −gap and −c·y ≤ 0 cannot both hold, whatever the other rows
    A = np.vstack([A, c, -c])
    a = np.concatenate([a, [-gap, 0.0]])
    try:
        pp.Polyhedron(A=A, a=a)
    except pp.InfeasibleError as err:
        cert = err.certificate
        u = cert["inequality_weights"]
        assert (u >= -1e-12).all() and np.abs(A.T @ u).max() <= 1e-7 * np.abs(u).sum() and a @ u < 0
    else:
        raise AssertionError("empty polyhedron accepted")
