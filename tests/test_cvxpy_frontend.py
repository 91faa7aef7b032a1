"""``pp.from_cvxpy``: constraints modelled in cvxpy give the same projections and gradients as the
hand-built sets (portfolio mandates, partial matching) and as a tightly solved CvxpyLayer;
bounds are recognised as bounds, a parameter-free matrix stays shared, parameters receive
gradients, and anything that is not an affine projection is refused naming the culprit."""

import sys
from pathlib import Path

import cvxpy as cp
import numpy as np
import pytest
import torch

import polyproj as pp
from polyproj.functional.bounded import BoundedData

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "experiments"))
from portfolio.mandates import CAP, DEFENSIVE, DEFENSIVE_MIN, SECTOR_CAP, SECTORS, TURNOVER, Mandate  # noqa: E402

F64 = torch.float64
TICKERS = list(SECTORS)


def _model(n=6, m=3):
    y, x = cp.Variable(n), cp.Parameter(n)
    F, g, u = cp.Parameter((m, n)), cp.Parameter(m), cp.Parameter(n)
    cons = [y >= 0, cp.sum(y) == 1, F @ y <= g, y <= u, 2 * y[0] >= -1]
    return cp.Problem(cp.Minimize(cp.sum_squares(y - x)), cons), (x, F, g, u)


def _values(N=5, n=6, m=3, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(N, n, dtype=F64, generator=gen, requires_grad=True)
    F = torch.randn(m, n, dtype=F64, generator=gen, requires_grad=True)
    g = (torch.rand(m, dtype=F64, generator=gen) + 0.5).requires_grad_()
    u = (0.3 + 0.5 * torch.rand(N, n, dtype=F64, generator=gen)).requires_grad_()
    return x, F, g, u


def test_problem_matches_the_hand_built_polyhedron_with_gradients():
    problem, params = _model()
    layer = pp.from_cvxpy(problem, parameters=list(params))
    x, F, g, u = _values()
    y = layer(x, F, g, u)
    w = torch.randn_like(y)
    grads = torch.autograd.grad((y * w).sum(), (x, F, g, u))
    x2, F2, g2, u2 = (t.detach().clone().requires_grad_() for t in (x, F, g, u))
    # the tightest of y₀ ≥ 0 and 2y₀ ≥ −1 is y₀ ≥ 0
    P = pp.Polyhedron(A=F2, a=g2, B=torch.ones(1, 6), b=torch.ones(1), lower=0.0, upper=u2)
    y2 = pp.project(x2, P)
    grads2 = torch.autograd.grad((y2 * w).sum(), (x2, F2, g2, u2))
    assert torch.allclose(y, y2, atol=1e-12)
    for a, b in zip(grads, grads2):
        assert torch.allclose(a, b, atol=1e-10)
    assert float(grads[3].abs().sum()) > 0  # upper bounds are active somewhere and get gradient


def test_bounds_are_native_and_a_parameter_free_matrix_is_shared():
    problem, params = _model()
    layer = pp.from_cvxpy(problem, parameters=list(params))
    assert not layer.shared_matrix  # F is a parameter
    _, F, g, u = _values()
    P = layer.polyhedron(F.detach(), g.detach(), u.detach())
    assert isinstance(P._data, BoundedData) and P._data.nb == 12 and P.m == 3 and P.p == 1
    assert P.batch_shape == (5,)  # per-sample upper bounds
    y, c = cp.Variable(4), cp.Parameter(2)
    shared = pp.from_cvxpy([y >= -1, np.ones((2, 4)) @ y <= c], parameters=[c])
    assert shared.shared_matrix
    Ps = shared.polyhedron(torch.rand(7, 2, dtype=F64) + 1)
    assert Ps.A.ndim == 2 and Ps.a.shape == (7, 2)  # one matrix for the batch, per-sample right-hand sides


def test_agrees_with_a_tightly_solved_cvxpylayer():
    from cvxpylayers.torch import CvxpyLayer

    problem, params = _model()
    ours = pp.from_cvxpy(problem, parameters=list(params))
    ref = CvxpyLayer(problem, parameters=list(params), variables=[problem.variables()[0]])
    x, F, g, u = _values(seed=3)
    y = ours(x, F, g, u)
    (y_ref,) = ref(x, F, g, u, solver_args={"eps": 1e-12, "max_iters": 100_000})
    assert torch.allclose(y, y_ref, atol=1e-8)
    w = torch.randn_like(y)
    for a, b in zip(torch.autograd.grad((y * w).sum(), (x, g)), torch.autograd.grad((y_ref * w).sum(), (x, g))):
        assert torch.allclose(a, b, atol=1e-5)


@pytest.mark.parametrize("level", [1, 2, 3])
def test_portfolio_mandates_written_in_cvxpy(level):
    n = len(TICKERS)
    w = cp.Variable(n)
    cons = [w >= 0, cp.sum(w) == 1]
    if level >= 2:
        cons.append(w <= CAP)
    if level >= 3:
        for sector in sorted(set(SECTORS.values())):
            cons.append(cp.sum([w[i] for i, t in enumerate(TICKERS) if SECTORS[t] == sector]) <= SECTOR_CAP)
        cons.append(cp.sum([w[i] for i, t in enumerate(TICKERS) if SECTORS[t] in DEFENSIVE]) >= DEFENSIVE_MIN)
    layer = pp.from_cvxpy(cons)
    z = torch.randn(16, n, dtype=F64, generator=torch.Generator().manual_seed(level))
    mandate = Mandate(level, TICKERS)
    assert torch.allclose(layer(z), pp.project(z, mandate.weight_set()), atol=1e-10)
    assert mandate.violation(layer(z).numpy()).max() <= 1e-12


def test_turnover_mandate_with_a_per_sample_parameter():
    """Mandate 4, lifted to (w, s) with |w − w_prev| ≤ s, as one cvxpy variable and a parameter."""
    n = len(TICKERS)
    mandate = Mandate(4, TICKERS)
    v, w_prev = cp.Variable(2 * n), cp.Parameter(n)
    w, s = v[:n], v[n:]
    cons = [mandate.A @ w <= mandate.a, cp.sum(w) == 1, w - w_prev <= s, w_prev - w <= s, cp.sum(s) <= TURNOVER]
    layer = pp.from_cvxpy(cons, parameters=[w_prev])
    gen = torch.Generator().manual_seed(4)
    prev = pp.project(torch.randn(8, n, dtype=F64, generator=gen), mandate.weight_set())
    z = torch.randn(8, 2 * n, dtype=F64, generator=gen)
    assert torch.allclose(layer(z, prev), pp.project(z, mandate.lifted(prev)), atol=1e-10)


def test_matrix_variable_partial_matching():
    k = 6
    X, S = cp.Variable((k, k)), cp.Parameter((k, k))
    cons = [X >= 0, cp.sum(X, axis=1) <= 1, cp.sum(X, axis=0) <= 1, cp.sum(X) == 3]
    layer = pp.from_cvxpy(cp.Problem(cp.Minimize(cp.sum_squares(X - S)), cons), parameters=[S])
    scores = torch.randn(4, k, k, dtype=F64, generator=torch.Generator().manual_seed(5))
    assert torch.allclose(layer(scores), pp.project(scores, pp.PartialMatching(3)), atol=1e-10)


def test_norm_objective_is_a_projection_too():
    y, x = cp.Variable(3), cp.Parameter(3)
    layer = pp.from_cvxpy(cp.Problem(cp.Minimize(2 * cp.norm(y - x, 2)), [cp.sum(y) == 1, y >= 0]), parameters=[x])
    z = torch.tensor([[0.5, 2.0, -1.0]], dtype=F64)
    assert torch.allclose(layer(z), pp.project(z, pp.Simplex()), atol=1e-12)


def test_refusals_name_the_culprit():
    y, x, c = cp.Variable(3), cp.Parameter(3), cp.Parameter(1)
    with pytest.raises(ValueError, match="not affine|SOC|affine equalities"):
        pp.from_cvxpy([cp.norm(y, 2) <= 1])
    with pytest.raises(ValueError, match="PSD|affine equalities"):
        pp.from_cvxpy([cp.diag(y) >> 0])
    with pytest.raises(ValueError, match="objective must be a projection"):
        pp.from_cvxpy(cp.Problem(cp.Minimize(cp.sum(y) + cp.sum_squares(y - x)), [y >= 0]), parameters=[x])
    with pytest.raises(ValueError, match="objective must be a projection"):
        pp.from_cvxpy(cp.Problem(cp.Minimize(cp.sum_squares(2 * y - x)), [y >= 0]), parameters=[x])
    z = cp.Variable(3)
    with pytest.raises(ValueError, match="exactly one cvxpy Variable"):
        pp.from_cvxpy([y + z <= 1])
    with pytest.raises(ValueError, match="not listed"):
        pp.from_cvxpy([cp.sum(y) <= c])
    with pytest.raises(ValueError, match="DPP"):
        pp.from_cvxpy([c * c * cp.sum(y) <= 1], parameters=[c])
    layer = pp.from_cvxpy([cp.sum(y) <= c, y >= 0], parameters=[c])
    with pytest.raises(ValueError, match=r"parameter .* must have shape \(1,\)"):
        layer(torch.zeros(3, dtype=F64), torch.ones(2, dtype=F64))
    with pytest.raises(ValueError, match="expected 1 parameter"):
        layer(torch.zeros(3, dtype=F64))
    with pytest.raises(ValueError, match="x must have shape"):
        layer(torch.zeros(4, dtype=F64), torch.ones(1, dtype=F64))
    with pytest.raises(pp.InfeasibleError):  # an empty set at these values is reported, never projected onto
        layer(torch.zeros(3, dtype=F64), -torch.ones(1, dtype=F64))


def test_sparse_models_stay_sparse():
    """A parameter-free matrix from cvxpy goes to a SparsePolyhedron as cvxpy canonicalised it
    (scipy.sparse, never densified): the same projections and gradients as the dense layer; the
    default picks it for large variables; a parametric matrix cannot be sparse."""
    import scipy.sparse as sps

    rng = np.random.default_rng(11)
    n = 300
    M = sps.random(40, n, density=0.05, random_state=rng, format="csr")
    y, c = cp.Variable(n), cp.Parameter(40)
    cons = [M @ y <= c, cp.sum(y) == n / 4, y >= 0, y <= 1]
    dense, sparse = pp.from_cvxpy(cons, parameters=[c], sparse=False), pp.from_cvxpy(cons, parameters=[c], sparse=True)
    c_t = torch.tensor(M @ np.full(n, 0.25) + 0.1, requires_grad=True)
    assert isinstance(sparse.polyhedron(c_t.detach()), pp.SparsePolyhedron)
    assert isinstance(dense.polyhedron(c_t.detach()), pp.Polyhedron)
    x = torch.tensor(rng.standard_normal((4, n)), requires_grad=True)
    w = torch.tensor(rng.standard_normal((4, n)))
    ys, yd = sparse(x, c_t), dense(x, c_t)
    assert torch.allclose(ys, yd, atol=1e-9)
    gs = torch.autograd.grad((ys * w).sum(), (x, c_t))
    gd = torch.autograd.grad((yd * w).sum(), (x, c_t))
    for a, b in zip(gs, gd):
        assert torch.allclose(a, b, atol=1e-8)
    z = cp.Variable(2500)
    assert isinstance(pp.from_cvxpy([cp.sum(z) == 1, z >= 0]).polyhedron(), pp.SparsePolyhedron)
    F = cp.Parameter((2, n))
    with pytest.raises(ValueError, match="sparse=True needs a constraint matrix without parameters"):
        pp.from_cvxpy([F @ y <= 1], parameters=[F], sparse=True)
