"""The forward engines of a Polyhedron (``engine="auto" | "torch" | "daqp"``): the same
certified projection from each, DAQP's answers certified rather than trusted, the fallback to
the batched solver, the automatic choice, and clear errors."""

import pytest
import torch

import polyproj as pp
from polyproj.functional import active_set
from polyproj.testing import certify_projection

F64 = torch.float64


def _problem(n=12, m=20, p=2, batch=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    A, B = torch.randn(m, n, generator=g, dtype=F64), torch.randn(p, n, generator=g, dtype=F64)
    y0 = torch.randn(n, generator=g, dtype=F64)
    a = A @ y0 + torch.rand(m, generator=g, dtype=F64)
    P = pp.Polyhedron(A=A, a=a, B=B, b=B @ y0)
    return P, (A, a, B, B @ y0), y0 + 3 * torch.randn(batch, n, generator=g, dtype=F64)


def test_engines_agree_and_certify():
    P, _, x = _problem()
    y_t, info_t = pp.project(x, P, engine="torch", return_info=True)
    y_d, info_d = pp.project(x, P, engine="daqp", return_info=True)
    assert bool(info_t.converged.all()) and bool(info_d.converged.all())
    assert torch.allclose(y_t, y_d, atol=1e-10, rtol=0)
    assert torch.equal(info_t.active, info_d.active)
    assert torch.equal(pp.project(x, P), y_d)  # auto picks DAQP here
    # the backward is the same HS-Jacobian
    g = torch.randn_like(x)
    grads = []
    for engine in ("torch", "daqp"):
        xr = x.clone().requires_grad_()
        (pp.project(xr, P, engine=engine) * g).sum().backward()
        grads.append(xr.grad)
    assert torch.allclose(*grads, atol=1e-10)


def test_daqp_answers_are_certified_not_trusted(monkeypatch):
    """A wrong answer that DAQP reports as solved is rejected by the certificate and solved
    again by the batched solver."""
    P, (A, a, B, b), x = _problem(batch=6)
    real = active_set.solve_daqp

    def lying(data, xs, max_iter=1000):
        y, nu, it, ok = real(data, xs, max_iter)
        y[::2] += 0.1  # every other answer off, still flagged solved
        return y, nu, it, ok

    monkeypatch.setattr(active_set, "solve_daqp", lying)
    y, info = pp.project(x, P, engine="daqp", return_info=True)
    assert bool(info.converged.all())
    for xk, yk in zip(x.numpy(), y.numpy()):
        assert certify_projection(xk, yk, A.numpy(), a.numpy(), B.numpy(), b.numpy())["kkt"] <= 1e-9
    assert info.iterations[0] > 0  # the batched solver's Newton steps for the redone samples


def test_daqp_failure_flag_falls_back(monkeypatch):
    P, _, x = _problem(batch=4)
    monkeypatch.setattr(active_set, "solve_daqp", lambda data, xs, max_iter=1000: (
        xs.clone(), torch.zeros(xs.shape[0], data.K, dtype=F64), torch.zeros(xs.shape[0], dtype=torch.long),
        torch.zeros(xs.shape[0], dtype=torch.bool)))
    y, info = pp.project(x, P, engine="daqp", return_info=True)
    assert bool(info.converged.all()) and torch.allclose(y, pp.project(x, P, engine="torch"), atol=1e-10)


def test_max_iter_bounds_the_active_set_changes():
    P, _, x = _problem(batch=4)
    with pytest.warns(pp.ConvergenceWarning):
        _, info = pp.project(x, P, engine="daqp", max_iter=1, on_failure="warn", return_info=True)
    assert not bool(info.converged.all())


def test_automatic_choice():
    P, _, x = _problem()
    data = P._bind(torch.Size([16])).data
    assert active_set.applicable(data, x)
    big, _, xb = _problem(n=active_set.AUTO_MAX_N + 1, m=10, p=1)
    assert not active_set.applicable(big._bind(torch.Size([16])).data, xb)
    many_rows, _, xr = _problem(n=10, m=active_set.AUTO_MAX_K + 1, p=0)
    assert not active_set.applicable(many_rows._bind(torch.Size([16])).data, xr)


def test_layer_passes_its_engine(monkeypatch):
    P, _, x = _problem(batch=3)
    calls = []
    real = active_set.solve_daqp
    monkeypatch.setattr(active_set, "solve_daqp", lambda *a, **k: calls.append(1) or real(*a, **k))
    pp.Projection(P, engine="torch")(x)
    assert calls == []
    pp.Projection(P, engine="daqp")(x)
    assert calls == [1]
    assert "engine='daqp'" in repr(pp.Projection(P, engine="daqp"))


def test_engine_errors():
    P, _, x = _problem(batch=2)
    with pytest.raises(ValueError, match="engine"):
        pp.project(x, P, engine="gurobi")
    with pytest.raises(ValueError, match="engine='daqp' is not available for Birkhoff"):
        pp.project(torch.rand(2, 3, 3), pp.Birkhoff(), engine="daqp")
    with pytest.raises(ValueError, match="engine='daqp' is not available for Simplex"):
        pp.Projection(pp.Simplex(), engine="daqp")
    assert torch.allclose(pp.project(torch.rand(2, 3, 3), pp.Birkhoff(), engine="torch").sum(-1),
                          torch.ones(2, 3))


def test_shared_equalities_are_eliminated_once():
    """Shared equality rows of full rank are eliminated (a smaller, inequality-only problem per
    sample, multipliers recovered from stationarity); dependent ones are solved as they are.
    Both give the batched solver's certified projection, with per-sample right-hand sides too."""
    g = torch.Generator().manual_seed(3)
    n, m, p, N = 40, 12, 4, 10
    A, B = torch.randn(m, n, generator=g, dtype=F64), torch.randn(p, n, generator=g, dtype=F64)
    y0 = torch.randn(N, n, generator=g, dtype=F64)
    a, b = y0 @ A.T + torch.rand(N, m, generator=g, dtype=F64), y0 @ B.T  # per-sample right-hand sides
    x = y0 + 3 * torch.randn(N, n, generator=g, dtype=F64)
    for Bs, bs in ((B, b), (torch.cat([B, B[:1]]), torch.cat([b, b[:, :1]], 1))):  # full rank; a duplicated row
        P = pp.Polyhedron(A=A, a=a, B=Bs, b=bs)
        data = P._bind(torch.Size([N])).data
        reduced = active_set._eliminated_equalities(data, x, 100)
        assert (reduced is None) == (Bs.shape[0] > p)
        y_d, info = pp.project(x, P, engine="daqp", return_info=True)
        assert bool(info.converged.all())
        assert torch.allclose(y_d, pp.project(x, P, engine="torch"), atol=1e-10, rtol=0)
        for k in range(N):
            cert = certify_projection(x[k].numpy(), y_d[k].numpy(), A.numpy(), a[k].numpy(), Bs.numpy(), bs[k].numpy())
            assert cert["kkt"] <= 1e-9
    # the eliminated solve's own multipliers certify (no fallback needed)
    P = pp.Polyhedron(A=A, a=a, B=B, b=b)
    data = P._bind(torch.Size([N])).data
    y, nu, _, ok = active_set._eliminated_equalities(data, x, 100)
    from polyproj.functional.polyhedron import kkt_residual
    assert bool(ok.all()) and float(kkt_residual(data, x, y, nu, x.abs().amax(-1)).max()) <= 1e-12


def test_daqp_certifies_bounded_sets_without_falling_back(monkeypatch):
    """Bounds are DAQP's own simple bounds: its answers (multipliers mapped back to the bound
    rows) certify on their own, so the batched solver is never needed here."""
    import numpy as np

    from polyproj.functional import active_set

    def no_fallback(*args, **kwargs):
        raise AssertionError("DAQP's answer was not certified")

    monkeypatch.setattr(active_set, "solve_polyhedron", no_fallback)
    rng = np.random.default_rng(3)
    A = rng.standard_normal((4, 12))
    P = pp.Polyhedron(A=A, a=A @ np.full(12, 0.5) + 0.2, B=np.ones((1, 12)), b=[6.0], lower=0.0,
                      upper=np.where(np.arange(12) % 3 == 0, 0.55, np.inf))
    x = torch.tensor(3.0 * rng.standard_normal((16, 12)))
    y, info = pp.project(x, P, engine="daqp", return_info=True)
    assert bool(info.converged.all()) and bool(P.contains(y).all())
    assert bool(((y <= 1e-12) | (y >= 0.55 - 1e-12)).any())  # bounds are active somewhere
