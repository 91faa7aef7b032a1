"""``SparsePolyhedron``: sparse constraint matrices kept sparse — the same projection, HS-Jacobian
and gradients (right-hand sides, bounds) as the dense bounded ``Polyhedron`` and an independent
reference, on random and degenerate sets, per-sample data, every input scale; errors."""

import numpy as np
import pytest
import scipy.sparse as sps
import torch

import polyproj as pp
from polyproj.functional.sparse_dual import pcg
from polyproj.testing import certify_projection, reference_projection

F64 = torch.float64


def _problem(n=300, K=40, p=4, seed=0, nnz_per_col=4):
    rng = np.random.default_rng(seed)
    A = sps.random(K, n, density=nnz_per_col / K, random_state=rng, format="csr")
    A.data = rng.standard_normal(A.nnz)
    y0 = rng.uniform(0.2, 0.8, n)
    c = A @ y0
    c[: K - p] += rng.uniform(0.0, 0.3, K - p)
    return A, c, K - p, rng


def _both(A, c, m, lower=0.0, upper=1.0, **kw):
    S = pp.SparsePolyhedron(A=A[:m], a=c[:m], B=A[m:], b=c[m:], lower=lower, upper=upper, **kw)
    D = A.toarray()
    P = pp.Polyhedron(A=D[:m], a=c[:m], B=D[m:], b=c[m:], lower=lower, upper=upper)
    return S, P


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("spread", [0.1, 2.0, 100.0])
def test_matches_the_dense_bounded_polyhedron_and_a_reference(seed, spread):
    A, c, m, rng = _problem(seed=seed)
    S, P = _both(A, c, m)
    x = torch.tensor(spread * rng.standard_normal((4, 300)) + 0.5)
    y, info = pp.project(x, S, return_info=True)
    assert bool(info.converged.all()) and bool(S.contains(y).all())
    assert torch.allclose(y, pp.project(x, P), atol=1e-8 * max(1.0, spread))
    D = A.toarray()
    eye = np.eye(300)
    Ai, ai = np.vstack([D[:m], eye, -eye]), np.concatenate([c[:m], np.ones(300), np.zeros(300)])
    for xk, yk in zip(x.numpy()[:2], y.numpy()[:2]):
        assert certify_projection(xk, yk, Ai, ai, D[m:], c[m:])["kkt"] <= 1e-9
        ref = reference_projection(xk, Ai, ai, D[m:], c[m:], tol=1e-10, solver="osqp")
        assert np.abs(ref - yk).max() <= 1e-6 * max(1.0, spread)


def test_backward_and_gradients_match_the_dense_polyhedron():
    A, c, m, rng = _problem(n=200, K=30, seed=4)
    D = A.toarray()
    a, b = torch.tensor(c[:m], requires_grad=True), torch.tensor(c[m:], requires_grad=True)
    lo = torch.zeros(200, dtype=F64, requires_grad=True)
    up = (0.7 + 0.3 * torch.rand(3, 200, dtype=F64)).requires_grad_()
    x = torch.tensor(2 * rng.standard_normal((3, 200)), requires_grad=True)
    y = pp.project(x, pp.SparsePolyhedron(A=A[:m], a=a, B=A[m:], b=b, lower=lo, upper=up))
    w = torch.randn_like(y)
    grads = torch.autograd.grad((y * w).sum(), (x, a, b, lo, up))
    a2, b2, lo2, up2, x2 = (t.detach().clone().requires_grad_() for t in (a, b, lo, up, x))
    y2 = pp.project(x2, pp.Polyhedron(A=D[:m], a=a2, B=D[m:], b=b2, lower=lo2, upper=up2))
    grads2 = torch.autograd.grad((y2 * w).sum(), (x2, a2, b2, lo2, up2))
    assert torch.allclose(y, y2, atol=1e-9)
    for name, g1, g2 in zip(["x", "a", "b", "lower", "upper"], grads, grads2):
        assert torch.allclose(g1, g2, atol=1e-7), (name, (g1 - g2).abs().max())


def test_degenerate_sets():
    A, c, m, rng = _problem(n=150, K=20, seed=5)
    D = A.toarray()
    cases = {
        "duplicated rows": (sps.vstack([A[:m], A[:3], A[m:]]).tocsr(), np.concatenate([c[:m], c[:3], c[m:]]), m + 3),
        "a row repeating a bound": (sps.vstack([A[:m], sps.csr_matrix(np.eye(150)[:1]), A[m:]]).tocsr(),
                                    np.concatenate([c[:m], [1.0], c[m:]]), m + 1),
        "equality rows only": (A[m:], c[m:], 0),
        "inequality rows only": (A[:m], c[:m], m),
    }
    x = torch.tensor(2 * rng.standard_normal((4, 150)))
    for name, (Am, cm, mm) in cases.items():
        S, P = _both(Am, cm, mm)
        y, info = pp.project(x, S, return_info=True)
        assert bool(info.converged.all()), name
        assert torch.allclose(y, pp.project(x, P), atol=1e-8), name
        assert torch.allclose(pp.hs_jacobian(x[:2], S), pp.hs_jacobian(x[:2], P), atol=1e-7), name
    del D


@pytest.mark.parametrize("scale", [1e-6, 1.0, 1e4, 1e8])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_every_input_scale(scale, dtype):
    """Certified from 1e-6 to 1e4 times the set's scale; at 1e8 the dual iteration may run out of
    steps, and then the call raises — a returned point is always certified."""
    A, c, m, rng = _problem(n=200, K=25, seed=6)
    S = pp.SparsePolyhedron(A=A[:m], a=c[:m], B=A[m:], b=c[m:], lower=0.0, upper=1.0)
    x = torch.tensor(scale * rng.standard_normal((3, 200)), dtype=dtype)
    tol = 1e-9 if dtype == torch.float64 else 4 * torch.finfo(torch.float32).eps
    try:
        y = pp.project(x, S)
    except pp.ConvergenceError as err:
        assert scale > 1e4, "certified at every scale up to 1e4"
        assert bool((err.info.kkt_residual > 1e-9).any())  # reported with its residual, never returned
        return
    assert float(S.violation(y, relative=True).max()) <= tol


def test_inputs_torch_sparse_and_per_sample_right_hand_sides():
    A, c, m, rng = _problem(n=120, K=16, seed=7)
    At = torch.tensor(A.toarray()).to_sparse_csr()
    a = torch.tensor(c[:m]) + torch.rand(5, m, dtype=F64)
    S1 = pp.SparsePolyhedron(A=At[:m].to_sparse_coo() if False else A[:m], a=a, lower=0.0)
    S2 = pp.SparsePolyhedron(A=torch.tensor(A[:m].toarray()).to_sparse_coo(), a=a, lower=0.0)
    x = torch.tensor(rng.standard_normal((5, 120)))
    assert S1.batch_shape == (5,)
    y1, y2 = pp.project(x, S1), pp.project(x, S2)
    assert torch.allclose(y1, y2, atol=1e-12)
    for k in range(5):
        assert torch.allclose(y1[k], pp.project(x[k], pp.SparsePolyhedron(A=A[:m], a=a[k], lower=0.0)), atol=1e-9)
    del At


def test_pcg_solves_a_batched_spd_system():
    rng = np.random.default_rng(8)
    M = rng.standard_normal((3, 20, 20))
    H = torch.tensor(M @ M.transpose(0, 2, 1) + 20 * np.eye(20))
    b = torch.tensor(rng.standard_normal((20, 3)))
    X, it = pcg(lambda P: torch.einsum("nij,jn->in", H, P), b, torch.diagonal(H, dim1=1, dim2=2).T, rtol=1e-12, max_iter=100)
    assert torch.allclose(torch.einsum("nij,jn->in", H, X), b, atol=1e-9) and bool((it <= 20).all())


def test_errors():
    A, c, m, _ = _problem(n=50, K=8, seed=9)
    with pytest.raises(ValueError, match="a must have shape"):
        pp.SparsePolyhedron(A=A[:m], a=c[: m - 1])
    with pytest.raises(ValueError, match="B must have n = 50 columns"):
        pp.SparsePolyhedron(A=A[:m], a=c[:m], B=sps.csr_matrix(np.ones((1, 49))), b=[1.0])
    bad = A[:m].copy()
    bad.data[0] = np.nan
    with pytest.raises(ValueError, match="A must be finite"):
        pp.SparsePolyhedron(A=bad, a=c[:m])
    with pytest.raises(ValueError, match="gradients for the entries of a sparse matrix"):
        pp.SparsePolyhedron(A=torch.ones(2, 3, requires_grad=True), a=[1.0, 1.0])
    with pytest.raises(pp.InfeasibleError):
        pp.SparsePolyhedron(A=sps.csr_matrix(np.ones((1, 50))), a=[-1.0], lower=0.0)
    with pytest.raises(pp.InfeasibleError, match="lower"):
        pp.SparsePolyhedron(A=A[:m], a=c[:m], lower=1.0, upper=0.0)


def test_certificate_sees_bound_violations():
    """The KKT certificate judges the bounds too: a point outside them is never certified, even
    with every row satisfied and stationarity exact (the face correction moves free coordinates,
    which could cross a bound)."""
    from polyproj.functional.sparse_dual import _kkt

    A, c, m, _ = _problem(n=60, K=8, seed=10)
    S = pp.SparsePolyhedron(A=A[:m], a=c[:m] + 10.0, B=None, b=None, lower=0.0, upper=1.0)
    data = S._bind(torch.Size([])).data
    y = torch.full((60, 1), 0.5, dtype=F64)
    x = y.clone()
    x[0], y[0] = 1e8, 1.0  # a far input coordinate: stationarity is judged at the input's scale
    x[3] = y[3] = 1.001  # above its upper bound by 1e-3 of the set's scale; the rows hold (slack ≥ 10)
    w = torch.zeros(data.K, 1, dtype=F64)
    # stationarity alone sees 1e-3 / 1e8; the bound, judged at the set's scale, sees 1e-3
    assert float(_kkt(data, x, y, w, x.abs().amax(0, keepdim=True))) >= 5e-4
