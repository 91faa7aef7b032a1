"""Every set, both dtypes, inputs from 1e-6 to 1e8 times the set's scale: the returned point is
feasible at the *set's* scale (checked with the set's own ``violation()``, not with the
solver's residual), optimal by an independent NNLS certificate, and reported converged — or the
call raises.  The full sweep (more shapes, degenerate families) is ``benchmarks/fuzz_*.py``."""

import numpy as np
import pytest
import torch

import polyproj as pp
from polyproj.testing import certify_projection

# each test runs with both forward engines of a Polyhedron (conftest.forward_engine)
pytestmark = pytest.mark.usefixtures("forward_engine")

F64 = torch.float64
SCALES = [1e-6, 1e-2, 1.0, 1e2, 1e4, 1e6, 1e8]
N = 12


def _polyhedron():
    # the set: y ≥ 0, 1ᵀy = 1 and random rows through an interior point
    rng = np.random.default_rng(0)
    A = np.vstack([-np.eye(N), rng.standard_normal((4, N))])
    y0 = np.full(N, 1.0 / N)
    a = np.concatenate([np.zeros(N), A[N:] @ y0 + rng.uniform(0.1, 1.0, 4)])
    return pp.Polyhedron(A=A, a=a, B=np.ones((1, N)), b=[1.0]), (N,)


def _per_sample_polyhedron():
    rng = np.random.default_rng(1)
    A = rng.standard_normal((8, N))
    a = np.abs(rng.standard_normal((6, 8))) + 0.1  # 0 is interior for every sample
    return pp.Polyhedron(A=A, a=a, B=np.ones((1, N)), b=np.zeros((6, 1))), (N,)


def _box():
    return pp.Box(0.0, 1.0), (N,)


def _halfspace():
    return pp.HalfSpace(torch.linspace(-1.0, 2.0, N, dtype=F64), 0.7), (N,)


def _simplex():
    return pp.Simplex(), (N,)


def _capped():
    return pp.CappedSimplex(0.0, 0.2, 1.0), (N,)


def _birkhoff():
    return pp.Birkhoff(), (6, 6)


def _transportation():
    r = torch.tensor([0.5, 1.0, 0.0, 2.5], dtype=F64)  # a zero marginal too
    c = torch.tensor([1.0, 1.0, 1.0, 0.25, 0.75], dtype=F64)
    return pp.Transportation(r, c), (4, 5)


def _partial_matching():
    return pp.PartialMatching(3), (5, 4)


SETS = {"polyhedron": _polyhedron, "per_sample_polyhedron": _per_sample_polyhedron, "box": _box,
        "halfspace": _halfspace, "simplex": _simplex, "capped_simplex": _capped, "birkhoff": _birkhoff,
        "transportation": _transportation, "partial_matching": _partial_matching}


def _dense_rows(S, event):
    """The set as dense unit-norm-free rows ``(A, a, B, b)`` for the NNLS certificate (one
    sample's data: per-sample sets give their rows per sample)."""
    if isinstance(S, pp.Polyhedron):
        return S.A.numpy(), S.a.numpy(), S.B.numpy(), S.b.numpy()
    n = int(np.prod(event))
    P = S.as_polyhedron(event[0]) if isinstance(S, pp.Birkhoff) else S.as_polyhedron(*event) if isinstance(
        S, pp.PartialMatching) else (
        S.as_polyhedron() if isinstance(S, (pp.HalfSpace, pp.Transportation)) else S.as_polyhedron(n))
    return P.A.numpy(), P.a.numpy(), P.B.numpy(), P.b.numpy()


@pytest.mark.parametrize("name", list(SETS))
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_feasible_at_the_sets_scale_for_every_input_scale(name, dtype):
    S, event = SETS[name]()
    rng = np.random.default_rng(7)
    batch = S.batch_shape[0] if S.batch_shape else 6
    A, a, B, b = _dense_rows(S, event)
    for scale in SCALES:
        x = torch.tensor(scale * rng.standard_normal((batch, *event)), dtype=dtype)
        y, info = pp.project(x, S, return_info=True)
        assert y.dtype == dtype and bool(info.converged.all()), (name, scale)
        if dtype == F64:
            rel = S.violation(y, relative=True)
            assert float(rel.max()) <= 1e-9, (name, scale, float(rel.max()))
            assert bool((info.kkt_residual <= 1e-9).all())
            for k in range(batch):
                rows = (A, a[k], B, b[k]) if a.ndim == 2 else (A, a, B, b)
                cert = certify_projection(x[k].flatten().numpy(), y[k].flatten().numpy(), *rows)
                assert cert["kkt"] <= 1e-9, (name, scale, cert)
        else:
            # the float64 solution rounded to float32: each constraint within half an ulp of the
            # set's scale, so the dtype's default membership tolerance (4 eps) holds
            assert bool(S.contains(y).all()), (name, scale, float(S.violation(y, relative=True).max()))
            y64 = pp.project(x.double(), S)
            assert torch.equal(y, y64.float())


def test_absolute_violation_is_at_the_sets_scale_not_the_inputs():
    """The issue's table: far inputs once returned points outside the set by up to 0.3 while
    reporting success.  The solutions have entries of order 1; the violation must be too."""
    P, _ = _polyhedron()
    for S, x in ((P, 1e6 * torch.randn(32, N, dtype=F64)), (pp.Birkhoff(), 1e4 * torch.randn(32, 16, 16)),
                 (pp.CappedSimplex(0.0, 0.1, 1.0), 1e4 * torch.randn(32, 50)),
                 (P, 1e4 * torch.randn(32, N))):
        y = pp.project(x, S)
        tol = 1e-12 if x.dtype == F64 else 1e-6
        assert float(S.violation(y).max()) <= tol, (S, float(S.violation(y).max()))


def test_contains_is_relative_to_the_sets_scale():
    S = pp.Simplex(total=1e-6)
    y = torch.full((1, 4), 0.25e-6, dtype=F64)
    assert bool(S.contains(y).all())
    # 1e-12 off the sum: a violation |1ᵀy − r|/√n = 5e-13 of a set of scale r/√n = 5e-7, i.e. 1e-6
    assert not bool(S.contains(y + torch.tensor([1e-12, 0, 0, 0], dtype=F64)).all())
    assert float(S.violation(y + torch.tensor([1e-12, 0, 0, 0], dtype=F64), relative=True)) == pytest.approx(1e-6, rel=0.01)
    with pytest.raises(ValueError, match="tol must be"):
        S.contains(y, tol=-1.0)


@pytest.mark.parametrize("make", [lambda: pp.Box(0.0, 1.0), lambda: pp.CappedSimplex(0.0, 0.5, 1.0)])
def test_scalar_bounds_broadcast_to_the_points_dimension(make):
    S = make()
    x = torch.tensor([[2.0, -1.0, 0.3], [0.1, 0.2, 0.3]], dtype=F64)
    y = pp.project(x, S)
    lo = 0.0
    hi = 1.0 if isinstance(S, pp.Box) else 0.5
    V = torch.full((3,), 1.0, dtype=F64)
    ref = pp.Box(lo * V, hi * V) if isinstance(S, pp.Box) else pp.CappedSimplex(lo * V, hi * V, 1.0)
    assert torch.equal(y, pp.project(x, ref))
    assert torch.equal(pp.hs_jacobian(x, S), pp.hs_jacobian(x, ref))


def test_scalar_capped_simplex_checks_emptiness_per_dimension():
    S = pp.CappedSimplex(0.0, 0.1, 1.0)  # needs n ≥ 10
    assert bool(S.contains(pp.project(torch.zeros(10, dtype=F64), S)))
    with pytest.raises(pp.InfeasibleError, match=r"total = 1.0 is outside .* \(n = 5\)"):
        pp.project(torch.zeros(5, dtype=F64), S)


def test_scalar_bound_gradients_are_summed_over_coordinates():
    lo = torch.tensor(0.0, dtype=F64, requires_grad=True)
    hi = torch.tensor(1.0, dtype=F64, requires_grad=True)
    x = torch.tensor([[2.0, -1.0, 0.3, 3.0]], dtype=F64)
    g = torch.tensor([[1.0, 2.0, 3.0, 4.0]], dtype=F64)
    (pp.project(x, pp.Box(lo, hi)) * g).sum().backward()
    assert float(hi.grad) == 5.0 and float(lo.grad) == 2.0  # coordinates 0, 3 at 1; 1 at 0
