"""HS-Jacobian of the general polyhedron: algebra, agreement with the generic pseudo-inverse
formula, finite differences at differentiable points, and the Han–Sun identity at
degenerate points (DESIGN §9 items 2–4, 9)."""

import numpy as np
import pytest
import torch

import polyproj as pp

from problems import FAMILIES, known_projection, random_instance

# each test runs with both forward engines of a Polyhedron (conftest.forward_engine)
pytestmark = pytest.mark.usefixtures("forward_engine")


def _polyhedron(A, a, B, b):
    return pp.Polyhedron(A=A if A.shape[0] else None, a=a if A.shape[0] else None,
                         B=B if B.shape[0] else None, b=b if B.shape[0] else None)


def _generic_P0(A, B, active_row):
    M = np.vstack([A[active_row], B])
    n = A.shape[1] if A.shape[0] else B.shape[1]
    if M.shape[0] == 0:
        return np.eye(n)
    return np.eye(n) - np.linalg.pinv(M, rcond=1e-10) @ M


@pytest.mark.parametrize("family", FAMILIES)
def test_jacobian_algebra_and_generic_formula(family, rng):
    A, a, B, b, X, _ = known_projection(family, rng, n=7)
    P = _polyhedron(A, a, B, b)
    x = torch.tensor(X)
    y, info = pp.project(x, P, return_info=True)
    J = pp.hs_jacobian(x, P).numpy()
    for k in range(X.shape[0]):
        Jk = J[k]
        assert np.abs(Jk - Jk.T).max() <= 1e-10
        assert np.abs(Jk @ Jk - Jk).max() <= 1e-10
        act = info.active[k].numpy()
        M = np.vstack([A[act], B])
        if M.shape[0]:
            assert np.abs(M @ Jk).max() <= 1e-9 * np.abs(M).max()
        assert np.abs(Jk - _generic_P0(A, B, act)).max() <= 1e-9
    # the backward is the same operator, applied matrix-free
    g = torch.randn_like(x)
    xr = x.clone().requires_grad_()
    (pp.project(xr, P) * g).sum().backward()
    expected = torch.einsum("bij,bj->bi", torch.tensor(J), g)
    assert torch.allclose(xr.grad, expected, atol=1e-10, rtol=0)
    assert bool((xr.grad.norm(dim=-1) <= g.norm(dim=-1) + 1e-12).all())


@pytest.mark.parametrize("seed", range(4))
def test_finite_differences_at_random_points(seed):
    rng = np.random.default_rng(seed)
    A, a, B, b, X = random_instance(rng, n=8, m=10, p=2, batch=4)
    P = _polyhedron(A, a, B, b)
    x = torch.tensor(X)
    J = pp.hs_jacobian(x, P)
    h = 1e-6
    for k in range(X.shape[0]):
        E = torch.eye(8, dtype=torch.float64) * h
        fd = (pp.project(x[k] + E, P) - pp.project(x[k] - E, P)).T / (2 * h)
        assert torch.allclose(fd, J[k], atol=1e-7, rtol=0)


def test_gradcheck_at_random_points(rng):
    A, a, B, b, X = random_instance(rng, n=6, m=8, p=1, batch=3)
    P = _polyhedron(A, a, B, b)
    x = torch.tensor(X, requires_grad=True)
    assert torch.autograd.gradcheck(lambda z: pp.project(z, P), (x,), eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("family", ["weakly_active", "duplicated_rows", "sum_rows", "more_than_n_active", "rank_deficient_B"])
def test_han_sun_identity_at_degenerate_points(family, rng):
    """Π(w) = Π(x) + P₀(w)(w − x) for w near a degenerate x (HS97, Lemma 2.1)."""
    A, a, B, b, X, Y = known_projection(family, rng, n=6)
    P = _polyhedron(A, a, B, b)
    for xk, yk in zip(X, Y):
        for _ in range(5):
            w = torch.tensor(xk + 1e-4 * rng.standard_normal(6))
            Jw = pp.hs_jacobian(w, P)
            lhs = pp.project(w, P)
            rhs = torch.tensor(yk) + Jw @ (w - torch.tensor(xk))
            assert torch.allclose(lhs, rhs, atol=1e-10, rtol=0)


def test_P0_is_limit_of_jacobians_beside_weakly_active_point(rng):
    """At a weakly active x, P₀(x) equals the finite-difference Jacobian at x + A_Iᵀδ, δ > 0."""
    A, a, B, b, X, Y = known_projection("weakly_active", rng, n=6)
    P = _polyhedron(A, a, B, b)
    x = torch.tensor(X[0])
    y, info = pp.project(x, P, return_info=True)
    act = info.active.numpy()
    x_in = x + torch.tensor(A[act].T @ np.full(act.sum(), 1e-3))
    J0 = pp.hs_jacobian(x, P)
    h = 1e-7
    E = torch.eye(6, dtype=torch.float64) * h
    fd = (pp.project(x_in + E, P) - pp.project(x_in - E, P)).T / (2 * h)
    assert torch.allclose(fd, J0, atol=1e-6, rtol=0)


def test_chain_rule_along_curve_keeping_weakly_active_row(rng):
    """d/dt Π(γ(t)) = P₀(γ(t)) γ'(t) along γ(t) = x + t(v + A_Sᵀe): v moves along the active
    face (v ∈ ker M), e ≥ 0 changes only the strongly active multipliers, so every weakly
    active row stays weakly active and Π(γ(t)) = y* + t v."""
    A, a, B, b, X, Y = known_projection("weakly_active", rng, n=6)
    P = _polyhedron(A, a, B, b)
    x0 = torch.tensor(X[0])
    y0, info = pp.project(x0, P, return_info=True)
    J0 = pp.hs_jacobian(x0, P)
    v = J0 @ torch.randn(6, dtype=torch.float64)
    lam = np.linalg.lstsq(np.vstack([A[info.active.numpy()], B]).T, X[0] - Y[0], rcond=None)[0]
    strong = np.flatnonzero(info.active.numpy())[lam[: int(info.active.sum())] > 1e-6]
    e = torch.tensor(A[strong].T @ rng.uniform(0.1, 1.0, strong.size))
    dgamma = 1e-3 * (v + e)
    h = 1e-6
    for t in (0.0, 0.5, 1.0):
        xt = x0 + t * dgamma
        fd = (pp.project(xt + h * dgamma, P) - pp.project(xt - h * dgamma, P)) / (2 * h)
        assert torch.allclose(fd, 1e-3 * v, atol=1e-9, rtol=0)
        assert torch.allclose(pp.hs_jacobian(xt, P) @ dgamma, 1e-3 * v, atol=1e-12, rtol=0)


class TestHandExamples:
    """DESIGN §9 item 8."""

    def test_interval(self):
        P = pp.Polyhedron(A=[[1.0], [-1.0]], a=[1.0, 0.0])
        cases = [(0.5, 0.5, 1.0), (2.0, 1.0, 0.0), (1.0, 1.0, 0.0)]
        for x, y, J in cases:
            xt = torch.tensor([x], dtype=torch.float64)
            assert pp.project(xt, P).item() == pytest.approx(y, abs=1e-15)
            assert pp.hs_jacobian(xt, P).item() == pytest.approx(J, abs=1e-12)

    def test_simplex_2d(self):
        P = pp.Polyhedron(A=-np.eye(2), a=np.zeros(2), B=np.ones((1, 2)), b=[1.0])
        x = torch.tensor([0.8, 0.1], dtype=torch.float64)
        assert torch.allclose(pp.project(x, P), torch.tensor([0.85, 0.15], dtype=torch.float64), atol=1e-15)
        assert torch.allclose(pp.hs_jacobian(x, P), 0.5 * torch.tensor([[1.0, -1.0], [-1.0, 1.0]], dtype=torch.float64), atol=1e-12)
        for xv in ([2.0, 0.0], [1.5, 0.5]):  # the second is weakly active (τ = 0.5)
            x = torch.tensor(xv, dtype=torch.float64)
            assert torch.allclose(pp.project(x, P), torch.tensor([1.0, 0.0], dtype=torch.float64), atol=1e-15)
            assert torch.allclose(pp.hs_jacobian(x, P), torch.zeros(2, 2, dtype=torch.float64), atol=1e-12)

    def test_duplicate_rows_split_gradient(self):
        """y ≤ a₁, y ≤ a₂ with a₁ = a₂: the min-norm multiplier splits (½, ½) (DESIGN §7)."""
        P = pp.Polyhedron(A=[[1.0], [1.0]], a=[1.0, 1.0])
        x = torch.tensor([[2.0]], dtype=torch.float64)
        y, info = pp.project(x, P, return_info=True)
        assert y.item() == 1.0 and info.active.all()
        from polyproj._jacobian import masked_nullspace_product

        D = P._data
        gx, nu = masked_nullspace_product(D, torch.ones(1, 2, dtype=torch.bool), torch.ones(1, 1, dtype=torch.float64))
        assert gx.item() == pytest.approx(0.0, abs=1e-12)
        assert torch.allclose(nu, torch.tensor([[0.5, 0.5]], dtype=torch.float64), atol=1e-9)


def test_float32_and_float64_gradients_agree(rng):
    A, a, B, b, X = random_instance(rng, n=8, m=10, p=1, batch=6)
    P = _polyhedron(A, a, B, b)
    g = torch.randn(6, 8, dtype=torch.float64)
    grads = []
    for dtype in (torch.float64, torch.float32):
        x = torch.tensor(X, dtype=dtype, requires_grad=True)
        (pp.project(x, P) * g.to(dtype)).sum().backward()
        grads.append(x.grad.double())
    assert torch.allclose(grads[0], grads[1], atol=1e-5, rtol=0)
