"""The interior-point finish of the polyhedron solver: the Mehrotra iteration alone on every
degenerate family, the hand-over from a stalled ALM, the SVD/NNLS face certificate, the step
budget, and the Maros–Mészáros set (QPCBOEI2) whose degenerate vertices the ALM cannot certify."""

from pathlib import Path

import numpy as np
import pytest
import scipy.io as sio
import torch

import polyproj as pp
from polyproj.functional import polyhedron as ph
from polyproj.functional.interior_point import interior_point
from polyproj.testing import certify_projection
from problems import FAMILIES, known_projection

F64 = torch.float64
TOL = 1e-9
DATA = Path(__file__).resolve().parent / "data"


def _polyhedron(A, a, B, b, **bounds):
    return pp.Polyhedron(A=A if A.shape[0] else None, a=a if A.shape[0] else None,
                         B=B if B.shape[0] else None, b=b if B.shape[0] else None, **bounds)


def _bound(P, X):
    """``X`` as a float64 tensor and the set's normalised solver data for that batch."""
    x = torch.as_tensor(X, dtype=F64)
    return x, P._bind(torch.Size([x.shape[0]])).data


def _interior_only(P, X, *, cold=True):
    """The interior point alone (no ALM) from ``X`` itself, certified by the solver's certifier."""
    x, data = _bound(P, X)
    cert = ph._IterateCertifier(data, x, x.abs().amax(-1), TOL)
    steps = interior_point(data.matrix(), data.c, data.eq, x, x, x.new_zeros(x.shape[0], data.K), max_iter=100,
                           certify=cert, margin=1.0 if cold else 1e-2)
    return cert, steps


@pytest.mark.parametrize("family", FAMILIES)
def test_interior_point_alone_finds_the_known_projection(family):
    rng = np.random.default_rng(sum(map(ord, family)))
    A, a, B, b, X, Y = known_projection(family, rng)
    cert, steps = _interior_only(_polyhedron(A, a, B, b), X)
    assert bool((cert.kkt <= TOL).all()), cert.kkt
    scale = max(1.0, float(np.abs(X).max()))
    np.testing.assert_allclose(cert.y.numpy(), Y, atol=1e-8 * scale)
    assert int(steps.max()) <= 60  # a few dozen Mehrotra steps, as interior points take
    for xk, yk in zip(X, cert.y.numpy()):
        assert certify_projection(xk, yk, A, a, B, b)["kkt"] <= 1e-8


def test_interior_point_alone_with_native_bounds():
    rng = np.random.default_rng(3)
    n = 12
    A, a = rng.standard_normal((5, n)), rng.uniform(0.5, 1.0, 5)
    B, b = np.ones((1, n)), np.array([1.0])
    P = pp.Polyhedron(A=A, a=a, B=B, b=b, lower=0.0, upper=0.4)
    X = 3.0 * rng.standard_normal((6, n))
    cert, _ = _interior_only(P, X)
    assert bool((cert.kkt <= TOL).all())
    ref = pp.project(torch.as_tensor(X), P, engine="torch")
    torch.testing.assert_close(cert.y, ref, atol=1e-8, rtol=0)


def test_interior_point_alone_with_per_sample_data():
    rng = np.random.default_rng(4)
    probs = [known_projection(f, rng, batch=1) for f in ("random", "duplicated_rows", "weakly_active")]
    A, a, B, b, X, Y = (np.stack([p[k] for p in probs]) for k in range(6))
    P = pp.Polyhedron(A=A, a=a, B=B, b=b)  # batch shape (3,): one set per sample
    cert, _ = _interior_only(P, X[:, 0])
    assert bool((cert.kkt <= TOL).all())
    np.testing.assert_allclose(cert.y.numpy(), Y[:, 0], atol=1e-8 * max(1.0, float(np.abs(X).max())))


def test_interior_point_respects_its_budget():
    rng = np.random.default_rng(5)
    A, a, B, b, X, _ = known_projection("random", rng)
    P = _polyhedron(A, a, B, b)
    x, data = _bound(P, X)
    never = lambda idx, y, nu: torch.zeros(idx.shape[0], dtype=torch.bool)  # noqa: E731
    budget = torch.arange(1, x.shape[0] + 1)
    steps = interior_point(data.matrix(), data.c, data.eq, x, x, x.new_zeros(x.shape[0], data.K),
                           max_iter=budget, certify=never, margin=1.0)
    assert bool((steps <= budget).all()) and int(steps.max()) >= 1


@pytest.mark.parametrize("family", ["random", "duplicated_rows", "more_than_n_active", "weakly_active", "equality_only"])
def test_every_sample_handed_to_the_interior_point_is_still_exact(family, monkeypatch):
    # a hand-over after the first ALM round: the interior point finishes every sample
    monkeypatch.setattr(ph, "_HANDOFF_STEPS", 0)
    rng = np.random.default_rng(7 + len(family))
    A, a, B, b, X, Y = known_projection(family, rng)
    y, info = pp.project(torch.as_tensor(X), _polyhedron(A, a, B, b), engine="torch", return_info=True)
    assert bool(info.converged.all())
    np.testing.assert_allclose(y.numpy(), Y, atol=1e-8 * max(1.0, float(np.abs(X).max())))


def test_max_iter_bounds_the_interior_point_too():
    A, a, B, b, lower, upper = _qpcboei2()
    P = _polyhedron(A, a, B, b, lower=lower, upper=upper)
    x = torch.as_tensor(_qpcboei2_points()[3:])
    with pytest.warns(pp.ConvergenceWarning):
        _, info = pp.project(x, P, engine="torch", max_iter=30, on_failure="warn", return_info=True)
    assert int(info.iterations.max()) <= 30


def _degenerate_vertex(rng, n=6, extra=10, sigma=1e-6):
    """A vertex ``y*`` with ``n + extra`` tight rows, the extra ones within ``sigma`` of
    combinations of the first ``n`` (nearly dependent), and ``x = y* + Σ λ_i A_i`` with
    multipliers ~1e3: the geometry of the Maros–Mészáros refusals, at small size.  Returns
    ``(A, a, X, y*)``."""
    base = rng.standard_normal((n, n))
    comb = rng.uniform(0.2, 1.0, (extra, n))
    near = comb @ base + sigma * rng.standard_normal((extra, n))
    A = np.vstack([base, near])
    A /= np.linalg.norm(A, axis=1, keepdims=True)
    y_star = rng.standard_normal(n)
    a = A @ y_star
    lam = rng.uniform(0.0, 1e3, (4, A.shape[0]))
    return A, a, y_star + lam @ A, y_star


def test_face_certificate_on_a_degenerate_vertex():
    rng = np.random.default_rng(11)
    A, a, X, y_star = _degenerate_vertex(rng)
    P = pp.Polyhedron(A=A, a=a)
    x, data = _bound(P, X)
    face = torch.ones(x.shape[0], data.K, dtype=torch.bool)
    y0 = torch.as_tensor(y_star).expand_as(x) + 1e-7 * torch.randn(x.shape, dtype=F64)  # a nearly exact vertex
    zero = x.new_zeros(x.shape[0], data.K)
    _, nearest, _ = ph._face_certificate(data, x, x.abs().amax(-1), y0, zero, face, 1.0)  # tol 1: no NNLS
    assert bool((nearest < 0).any())  # the multiplier nearest to 0 (minimum norm) is not a valid one here
    y, nu, kkt = ph._face_certificate(data, x, x.abs().amax(-1), y0, zero, face, TOL)
    assert bool((kkt <= TOL).all()), kkt
    np.testing.assert_allclose(y.numpy(), np.broadcast_to(y_star, X.shape), atol=1e-10)
    assert bool((nu >= 0).all())  # the NNLS multiplier


def test_degenerate_vertex_projection_is_certified():
    rng = np.random.default_rng(13)
    A, a, X, y_star = _degenerate_vertex(rng)
    P = pp.Polyhedron(A=A, a=a)
    y, info = pp.project(torch.as_tensor(X), P, engine="torch", return_info=True)
    assert bool(info.converged.all())
    np.testing.assert_allclose(y.numpy(), np.broadcast_to(y_star, X.shape), atol=1e-9)
    for xk, yk in zip(X, y.numpy()):
        assert certify_projection(xk, yk, A, a, None, None)["kkt"] <= TOL


def _qpcboei2():
    """QPCBOEI2's feasible set {x : l ≤ A x ≤ u} (``tests/data/README.md``) as ``(A, a, B, b,
    lower, upper)``: general rows ``A y ≤ a``, ``B y = b``, and the single-variable rows as bounds."""
    d = sio.loadmat(DATA / "maros_meszaros_QPCBOEI2.mat")
    M = d["A"].toarray()
    lo, up = d["l"].ravel().astype(float), d["u"].ravel().astype(float)
    lo[np.abs(lo) >= 1e19], up[np.abs(up) >= 1e19] = -np.inf, np.inf
    eq = np.isfinite(lo) & (lo == up)
    single = ((M != 0).sum(1) == 1) & ~eq
    j = np.argmax(M != 0, axis=1)
    coef = M[np.arange(M.shape[0]), j]
    lower, upper = np.full(M.shape[1], -np.inf), np.full(M.shape[1], np.inf)
    for i in np.flatnonzero(single):  # α y_j within [l, u]: the tightest bound per side
        lo_i, up_i = sorted((lo[i] / coef[i], up[i] / coef[i]))
        lower[j[i]], upper[j[i]] = max(lower[j[i]], lo_i), min(upper[j[i]], up_i)
    gen = ~single & ~eq
    has_up, has_lo = gen & np.isfinite(up), gen & np.isfinite(lo)
    A = np.vstack([M[has_up], -M[has_lo]])
    return A, np.concatenate([up[has_up], -lo[has_lo]]), M[eq], up[eq], lower, upper


def _qpcboei2_rows():
    """The same set with every constraint a row (for the independent certificate)."""
    A, a, B, b, lower, upper = _qpcboei2()
    n = A.shape[1]
    fin_u, fin_l = np.isfinite(upper), np.isfinite(lower)
    return (np.vstack([A, np.eye(n)[fin_u], -np.eye(n)[fin_l]]), np.concatenate([a, upper[fin_u], -lower[fin_l]]), B, b)


def _qpcboei2_points():
    A, a, B, b, _, _ = _qpcboei2()
    scale = max(1.0, float(np.abs(np.concatenate([a, b])).max()))
    rng = np.random.default_rng(0)
    return np.stack([s * scale * rng.standard_normal(A.shape[1]) for s in (0.1, 1.0, 10.0, 10.0)])


def test_maros_meszaros_qpcboei2_is_certified():
    A, a, B, b, lower, upper = _qpcboei2()
    P = _polyhedron(A, a, B, b, lower=lower, upper=upper)
    X = _qpcboei2_points()
    y, info = pp.project(torch.as_tensor(X), P, engine="torch", return_info=True)
    assert bool(info.converged.all())
    rows = _qpcboei2_rows()
    for xk, yk in zip(X, y.numpy()):
        assert certify_projection(xk, yk, *rows)["kkt"] <= TOL


def test_the_alm_alone_does_not_certify_qpcboei2():
    # why the interior point is there: without it, the far point stalls at the penalty cap
    A, a, B, b, lower, upper = _qpcboei2()
    P = _polyhedron(A, a, B, b, lower=lower, upper=upper)
    x, data = _bound(P, _qpcboei2_points()[2:3])
    res = ph.solve_polyhedron(data, x, tol=TOL, max_iter=500, _interior=False)
    assert not bool(res.converged.all())


def test_face_certificate_of_an_empty_face():
    # an interior iterate may name no active row at all; scipy's NNLS aborts the process on a
    # basis without columns, so that case must never reach it
    rng = np.random.default_rng(17)
    A, a, B, b, X, _ = known_projection("inequality_only", rng)
    P = _polyhedron(A, a, B, b)
    x, data = _bound(P, X)
    face = torch.zeros(x.shape[0], data.K, dtype=torch.bool)
    y, nu, kkt = ph._face_certificate(data, x, x.abs().amax(-1), x, x.new_zeros(x.shape[0], data.K), face, TOL)
    torch.testing.assert_close(y, x)  # the face without rows: the whole space
    assert bool(torch.isfinite(kkt).all()) and bool((nu == 0).all())


def test_samples_certified_by_the_interior_point_keep_their_point():
    # Fuzz instance (seed 0, case 5886; inputs 1e7 times the set's scale): one sample returned to
    # the ALM after the interior point while another was certified by it; the second one once came
    # back as the ALM's stale point with the interior point's residual (violation 6.7e-5, reported
    # converged).  Every returned point must certify independently.
    from problems import fuzz_instance

    rng = np.random.default_rng([0, 5886])
    ratio = 10.0 ** (int(rng.integers(15)) - 6)
    A, a, B, b, X, _ = fuzz_instance(rng, input_ratio=ratio, return_point=True)
    X = X.astype(np.float32).astype(np.float64)
    P = _polyhedron(A, a, B, b)
    y, info = pp.project(torch.as_tensor(X), P, return_info=True)
    assert bool(info.converged.all())
    assert float(P.violation(y, relative=True).max()) <= TOL
    for xk, yk in zip(X, y.numpy()):
        assert certify_projection(xk, yk, A, a, B, b)["kkt"] <= TOL
