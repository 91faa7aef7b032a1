"""PartialMatching(k): {X ≥ 0, X1 ≤ 1, Xᵀ1 ≤ 1, 1ᵀX1 = k}.  Forward against Clarabel and an
independent KKT certificate on random and degenerate inputs (ties, duplicated rows, k = 0,
k = min(m, n), rectangular, tiny and huge scales); the backward against the generic HS element
P₀ of the same set written as a polyhedron; gradcheck; errors."""

from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import polyproj as pp
from polyproj.testing import certify_projection, reference_projection

F64 = torch.float64


def _rows(S, m, n):
    P = S.as_polyhedron(m, n)
    return P.A.numpy(), P.a.numpy(), P.B.numpy(), P.b.numpy()


def _families(m, n, rng):
    base = rng.standard_normal((m, n))
    dup = base.copy()
    dup[1] = dup[0]  # duplicated rows: ties between two rows' entries
    ties = np.round(base)  # many exactly equal entries
    const = np.full((m, n), 0.3)  # every entry equal: the solution is k/(mn) everywhere
    return {"random": base, "duplicated rows": dup, "ties": ties, "constant": const,
            "one dominant": np.eye(m, n) * 5 + 0.01 * base}


@pytest.mark.parametrize("m,n,k", [(4, 4, 2), (5, 3, 3), (3, 6, 1), (4, 4, 4), (5, 5, 0), (6, 6, 3.5)])
@pytest.mark.parametrize("scale", [1e-4, 1.0, 1e3])
def test_forward_matches_clarabel_and_certifies(m, n, k, scale):
    S = pp.PartialMatching(k)
    A, a, B, b = _rows(S, m, n)
    rng = np.random.default_rng(m * 100 + n * 10 + int(2 * k))
    for name, Y in _families(m, n, rng).items():
        x = torch.tensor(scale * Y)
        y, info = pp.project(x, S, return_info=True)
        assert bool(info.converged), name
        cert = certify_projection(x.flatten().numpy(), y.flatten().numpy(), A, a, B, b)
        assert cert["kkt"] <= 1e-9, (name, scale, cert)
        # the projection is unique, so the certified point is it; an interior-point reference is
        # only as exact as its own tolerance on degenerate faces (Clarabel: ~5e-6 on the ties)
        ref = reference_projection(x.flatten().numpy(), A, a, B, b)
        assert np.abs(ref - y.flatten().numpy()).max() <= 2e-5 * max(1.0, scale), (name, scale)


def test_square_full_total_is_birkhoff():
    x = torch.randn(8, 5, 5, dtype=F64, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(pp.project(x, pp.PartialMatching(5)), pp.project(x, pp.Birkhoff()), atol=1e-10, rtol=0)


def test_k_zero_gives_zero_and_a_vertex_stays():
    x = torch.randn(3, 4, 4, dtype=F64)
    assert float(pp.project(x, pp.PartialMatching(0)).abs().max()) == 0.0
    V = torch.zeros(4, 5, dtype=F64)
    V[0, 2] = V[3, 0] = 1.0
    torch.testing.assert_close(pp.project(V, pp.PartialMatching(2)), V, atol=1e-12, rtol=0)


@pytest.mark.parametrize("scale", [1e-6, 1e4, 1e8])
def test_far_inputs_feasible_at_the_sets_scale(scale):
    x = scale * torch.randn(16, 12, 12, dtype=F64, generator=torch.Generator().manual_seed(3))
    S = pp.PartialMatching(7)
    y, info = pp.project(x, S, return_info=True)
    assert bool(info.converged.all())
    assert float(S.violation(y).max()) <= 1e-12
    assert float(S.violation(y, relative=True).max()) <= 1e-9


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_jacobian_equals_generic_element(seed):
    m, n, k = 4, 5, 3
    S = pp.PartialMatching(k)
    P = S.as_polyhedron(m, n)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(6, m, n, dtype=F64, generator=g)
    x[0, 1] = x[0, 0]  # a degenerate sample (duplicated rows)
    x[1] = 0.3  # constant: many ties
    J = pp.hs_jacobian(x, S)
    J0 = pp.hs_jacobian(x.reshape(6, m * n), P)
    torch.testing.assert_close(J, J0, atol=1e-8, rtol=0)
    # a projector: symmetric and idempotent
    torch.testing.assert_close(J, J.mT, atol=1e-10, rtol=0)
    torch.testing.assert_close(J @ J, J, atol=1e-8, rtol=0)


def test_gradcheck_at_a_differentiable_point():
    x = torch.randn(2, 4, 5, dtype=F64, generator=torch.Generator().manual_seed(5))
    S = pp.PartialMatching(2)
    y, info = pp.project(x, S, return_info=True)
    # away from kinks: no entry and no row/column slack is near zero unless active
    assert torch.autograd.gradcheck(lambda z: pp.project(z, S), (x.clone().requires_grad_(),))


def test_backward_runs_in_float32_and_returns_float32():
    x = torch.randn(7, 6, 6, generator=torch.Generator().manual_seed(1), requires_grad=True)
    y = pp.Projection(pp.PartialMatching(4))(x)
    assert y.dtype == torch.float32 and bool(pp.PartialMatching(4).contains(y).all())
    (y * torch.randn_like(y)).sum().backward()
    assert x.grad.dtype == torch.float32 and bool(torch.isfinite(x.grad).all())


def test_errors_name_the_argument():
    with pytest.raises(pp.InfeasibleError, match="k = -1"):
        pp.PartialMatching(-1)
    with pytest.raises(pp.InfeasibleError, match=r"k = 4.*min\(m, n\) = 3"):
        pp.project(torch.zeros(3, 5, dtype=F64), pp.PartialMatching(4))
    with pytest.raises(ValueError, match="k must be finite"):
        pp.PartialMatching(float("nan"))
    with pytest.raises(ValueError, match="x"):
        pp.project(torch.tensor([[float("nan"), 0.0], [0.0, 1.0]], dtype=F64), pp.PartialMatching(1))
    with pytest.raises(ValueError):
        pp.project(torch.zeros(4, dtype=F64), pp.PartialMatching(1))


@settings(max_examples=40, deadline=None)
@given(m=st.integers(1, 6), n=st.integers(1, 6), frac=st.floats(0, 1), seed=st.integers(0, 2**16),
       scale=st.sampled_from([1e-3, 1.0, 1e2]))
def test_property_feasible_optimal_idempotent(m, n, frac, seed, scale):
    k = frac * min(m, n)
    S = pp.PartialMatching(k)
    x = scale * torch.randn(3, m, n, dtype=F64, generator=torch.Generator().manual_seed(seed))
    y = pp.project(x, S)
    assert bool(S.contains(y).all())
    A, a, B, b = _rows(S, m, n)
    for i in range(3):
        assert certify_projection(x[i].flatten().numpy(), y[i].flatten().numpy(), A, a, B, b)["kkt"] <= 1e-9
    torch.testing.assert_close(pp.project(y, S), y, atol=1e-12 * max(1.0, k), rtol=0)


def test_regression_stalled_newton_is_rescued_by_block_coordinate_rounds():
    """Scores from a PCA-GM training run on which the projected Newton iteration once stalled
    (relative residual 0.39 after 500 steps): now certified."""
    Y = torch.tensor(np.loadtxt(Path(__file__).resolve().parent / "data" / "partial_matching_stall_12.txt"))
    S = pp.PartialMatching(10)
    y, info = pp.project(Y, S, return_info=True)
    assert bool(info.converged) and int(info.iterations) <= 60
    A, a, B, b = _rows(S, 12, 12)
    assert certify_projection(Y.flatten().numpy(), y.flatten().numpy(), A, a, B, b)["kkt"] <= 1e-9


@pytest.mark.parametrize("family", ["low rank", "rounded", "wide scale"])
def test_families_that_resemble_trained_scores(family):
    g = torch.Generator().manual_seed(11)
    for m, n, k in ((12, 12, 10), (18, 14, 10), (10, 10, 3)):
        if family == "low rank":
            Y = 3 * torch.randn(32, m, 1, generator=g, dtype=F64).abs() * torch.randn(32, 1, n, generator=g, dtype=F64)
            Y = Y + 0.3 * torch.randn(32, m, n, generator=g, dtype=F64)
        elif family == "rounded":
            Y = torch.round(2 * torch.randn(32, m, n, generator=g, dtype=F64))
        else:
            Y = torch.randn(32, m, n, generator=g, dtype=F64) * torch.logspace(-3, 5, 32, dtype=F64)[:, None, None]
        y, info = pp.project(Y, pp.PartialMatching(k), return_info=True)
        assert bool(info.converged.all()) and int(info.iterations.max()) <= 60
        assert float(pp.PartialMatching(k).violation(y, relative=True).max()) <= 1e-9


def test_empty_batch_and_degenerate_shapes():
    x = torch.zeros(0, 3, 4, dtype=F64, requires_grad=True)
    y = pp.project(x, pp.PartialMatching(2))
    assert y.shape == (0, 3, 4)
    y.sum().backward()
    assert x.grad.shape == (0, 3, 4)
    torch.testing.assert_close(pp.project(torch.zeros(2, 1, 1, dtype=F64), pp.PartialMatching(1)),
                               torch.ones(2, 1, 1, dtype=F64))
    with pytest.raises(ValueError, match=r"x must have shape \(\.\.\., m, n\) with every event dimension >= 1"):
        pp.project(torch.zeros(2, 0, 3, dtype=F64), pp.PartialMatching(0))
