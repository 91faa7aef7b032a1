"""Structured sets with per-sample, differentiable parameters: Box bounds, CappedSimplex
bounds and total, Transportation marginals."""

import numpy as np
import pytest
import torch

import polyproj as pp

F64 = torch.float64


def _box_data(rng, N=4, n=6):
    lo = -rng.uniform(0.2, 1.0, (N, n))
    up = rng.uniform(0.2, 1.0, (N, n))
    x = 1.5 * rng.standard_normal((N, n))
    return lo, up, x


def _capped_data(rng, N=4, n=6):
    lo = rng.uniform(-0.3, 0.0, (N, n))
    up = rng.uniform(0.3, 0.8, (N, n))
    total = rng.uniform(0.5, 1.5, N)
    x = rng.standard_normal((N, n))
    return lo, up, total, x


def _transport_data(rng, N=3, m=3, n=4):
    r = rng.uniform(0.5, 1.5, (N, m))
    c = rng.uniform(0.5, 1.5, (N, n))
    c *= (r.sum(-1) / c.sum(-1))[:, None]
    x = rng.standard_normal((N, m, n))
    return r, c, x


def test_batched_parameters_equal_looping():
    rng = np.random.default_rng(0)
    lo, up, x = _box_data(rng)
    y = pp.project(torch.tensor(x), pp.Box(lo, up))
    for s in range(4):
        assert torch.equal(y[s], pp.project(torch.tensor(x[s]), pp.Box(lo[s], up[s])))
    lo, up, total, x = _capped_data(rng)
    S = pp.CappedSimplex(lo, up, torch.tensor(total))
    assert S.batch_shape == (4,)
    y = pp.project(torch.tensor(x), S)
    assert bool(S.contains(y).all())
    for s in range(4):
        ys = pp.project(torch.tensor(x[s]), pp.CappedSimplex(lo[s], up[s], float(total[s])))
        assert torch.allclose(y[s], ys, atol=1e-14, rtol=0)
    r, c, x = _transport_data(rng)
    T = pp.Transportation(r, c)
    y, info = pp.project(torch.tensor(x), T, return_info=True)
    assert bool(T.contains(y).all())
    for s in range(3):
        ys = pp.project(torch.tensor(x[s]), pp.Transportation(r[s], c[s]))
        assert torch.allclose(y[s], ys, atol=1e-11, rtol=0)


def test_parameters_broadcast_against_points():
    rng = np.random.default_rng(1)
    lo, up, x = _box_data(rng, N=3)
    B = pp.Box(torch.tensor(lo), torch.tensor(up[0]))  # per-sample lower, shared upper
    xs = torch.tensor(rng.standard_normal((2, 3, 6)))
    y = pp.project(xs, B)
    assert y.shape == (2, 3, 6)
    assert torch.equal(y[1, 2], pp.project(xs[1, 2], pp.Box(lo[2], up[0])))


def test_gradcheck_box_bounds():
    rng = np.random.default_rng(2)
    lo, up, x = _box_data(rng)
    assert np.abs(x - lo).min() > 1e-3 and np.abs(x - up).min() > 1e-3
    tensors = [torch.tensor(t, requires_grad=True) for t in (x, lo, up)]
    assert torch.autograd.gradcheck(lambda x_, l_, u_: pp.project(x_, pp.Box(l_, u_)), tensors)


def test_gradcheck_capped_simplex_bounds_and_total():
    rng = np.random.default_rng(3)
    lo, up, total, x = _capped_data(rng)
    S = pp.CappedSimplex(lo, up, torch.tensor(total))
    # a point of differentiability: the active set is stable under small perturbations
    _, info = pp.project(torch.tensor(x), S, return_info=True)
    _, info2 = pp.project(torch.tensor(x + 1e-5 * rng.standard_normal(x.shape)), S, return_info=True)
    assert torch.equal(info.active, info2.active)
    tensors = [torch.tensor(t, requires_grad=True) for t in (x, lo, up, total)]
    f = lambda x_, l_, u_, t_: pp.project(x_, pp.CappedSimplex(l_, u_, t_))  # noqa: E731
    assert torch.autograd.gradcheck(f, tensors)


def test_gradcheck_transportation_marginals():
    rng = np.random.default_rng(4)
    r, c, x = _transport_data(rng)
    r_t = torch.tensor(r, requires_grad=True)
    c_t = torch.tensor(c, requires_grad=True)
    x_t = torch.tensor(x, requires_grad=True)

    def f(x_, r_, c_):
        # keep Σr = Σc along the finite-difference perturbations: rescale c to r's total
        c_fixed = c_ * (r_.sum(-1) / c_.sum(-1))[:, None]
        return pp.project(x_, pp.Transportation(r_, c_fixed))

    assert torch.autograd.gradcheck(f, (x_t, r_t, c_t), eps=1e-7, atol=1e-6)


@pytest.mark.parametrize("which", ["box", "capped"])
def test_parameter_gradients_equal_generic_polyhedron(which):
    """The closed-form data gradients equal the generic polyhedron's g_a, g_b (DESIGN §7)."""
    rng = np.random.default_rng(5)
    n = 6
    if which == "box":
        lo, up, x = _box_data(rng, N=1, n=n)
        total = None
    else:
        lo, up, total, x = _capped_data(rng, N=1, n=n)
    lo, up, x = lo[0], up[0], x[0]
    g = torch.tensor(rng.standard_normal(n))
    lo_t, up_t = torch.tensor(lo, requires_grad=True), torch.tensor(up, requires_grad=True)
    eye = np.eye(n)
    if which == "box":
        y = pp.project(torch.tensor(x), pp.Box(lo_t, up_t))
        a_t = torch.tensor(np.concatenate([up, -lo]), requires_grad=True)
        yp = pp.project(torch.tensor(x), pp.Polyhedron(A=np.vstack([eye, -eye]), a=a_t))
    else:
        t_t = torch.tensor(float(total[0]), requires_grad=True)
        y = pp.project(torch.tensor(x), pp.CappedSimplex(lo_t, up_t, t_t))
        a_t = torch.tensor(np.concatenate([up, -lo]), requires_grad=True)
        b_t = torch.tensor([float(total[0])], requires_grad=True)
        yp = pp.project(torch.tensor(x), pp.Polyhedron(A=np.vstack([eye, -eye]), a=a_t, B=np.ones((1, n)), b=b_t))
    (y * g).sum().backward()
    (yp * g).sum().backward()
    assert torch.allclose(y, yp, atol=1e-12)
    assert torch.allclose(up_t.grad, a_t.grad[:n], atol=1e-10)
    assert torch.allclose(lo_t.grad, -a_t.grad[n:], atol=1e-10)
    if which == "capped":
        assert torch.allclose(t_t.grad, b_t.grad[0], atol=1e-10)


@pytest.mark.parametrize("m,n", [(3, 3), (2, 4), (4, 2)])
def test_transport_marginal_gradient_equals_generic_polyhedron(m, n):
    """Also with m ≠ n: the solvers work on the transposed problem when m < n."""
    rng = np.random.default_rng(6)
    r, c, x = _transport_data(rng, N=1, m=m, n=n)
    r_t, c_t = torch.tensor(r[0], requires_grad=True), torch.tensor(c[0], requires_grad=True)
    T = pp.Transportation(r_t, c_t)
    y = pp.project(torch.tensor(x[0]), T)
    g = torch.tensor(rng.standard_normal((m, n)))
    (y * g).sum().backward()
    P = T.as_polyhedron()
    b_t = P.b.clone().requires_grad_(True)
    yp = pp.project(torch.tensor(x[0]).reshape(-1), pp.Polyhedron(A=P.A, a=P.a, B=P.B, b=b_t))
    (yp * g.reshape(-1)).sum().backward()
    # The equality rows are dependent (Σ rows = Σ columns): a gradient is defined up to the
    # direction (1, −1), along which no admissible change of (r, c) moves.  Transportation
    # returns the minimum-norm one; the generic solver's is minimum-norm in its row-normalised
    # constraints, which differs along (1, −1) when m ≠ n.  Compare the rest.
    v = torch.cat([torch.ones(m, dtype=F64), -torch.ones(n, dtype=F64)]) / (m + n) ** 0.5
    ours = torch.cat([r_t.grad, c_t.grad])
    assert abs(float(ours @ v)) <= 1e-12
    assert torch.allclose(ours, b_t.grad - (b_t.grad @ v) * v, atol=1e-9)


def test_shared_parameter_gradient_sums_over_the_batch():
    rng = np.random.default_rng(7)
    lo, up, x = _box_data(rng, N=5)
    up_t = torch.tensor(up[0], requires_grad=True)
    y = pp.project(torch.tensor(x), pp.Box(torch.tensor(lo), up_t))
    y.sum().backward()
    expected = (torch.tensor(x) >= up_t.detach()).to(F64).sum(0)
    assert torch.equal(up_t.grad, expected)
