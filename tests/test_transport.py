"""Transportation and Birkhoff polytopes: the same contract as the vector sets, on matrices,
including a support graph with several connected components."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import polyproj as pp
from polyproj.testing import certify_projection

F64 = torch.float64


def _sets():
    T = pp.Transportation(torch.tensor([0.5, 1.0, 1.5], dtype=F64), torch.tensor([1.0, 0.2, 0.8, 1.0], dtype=F64))
    # more rows than columns: the solvers work on the transposed problem
    T2 = pp.Transportation(torch.tensor([1.0, 0.2, 0.8, 1.0], dtype=F64), torch.tensor([0.5, 1.0, 1.5], dtype=F64))
    return [(T, T.as_polyhedron(), (3, 4)), (pp.Birkhoff(), pp.Birkhoff().as_polyhedron(4), (4, 4)),
            (T2, T2.as_polyhedron(), (4, 3))]


@pytest.mark.parametrize("k", [0, 1, 2])
def test_agrees_with_generic_polyhedron_and_certificate(k):
    S, P, shape = _sets()[k]
    x = torch.tensor(np.random.default_rng(k).standard_normal((5, *shape)))
    y, info = pp.project(x, S, return_info=True)
    yp, infop = pp.project(x.reshape(5, -1), P, return_info=True)
    assert info.active.shape == (5, *shape)
    assert torch.allclose(y.reshape(5, -1), yp, atol=1e-10, rtol=0)
    assert torch.equal(info.active.reshape(5, -1), infop.active)
    assert bool(S.contains(y).all()) and float(y.min()) >= 0
    D = P._data
    C, c = D.C.numpy(), D.c.numpy()
    for xk, yk in zip(x.reshape(5, -1).numpy(), y.reshape(5, -1).numpy()):
        assert certify_projection(xk, yk, C[: D.m], c[: D.m], C[D.m:], c[D.m:])["kkt"] <= 1e-9


@pytest.mark.parametrize("k", [0, 1, 2])
def test_jacobian_equals_generic_and_backward(k):
    S, P, shape = _sets()[k]
    x = torch.tensor(np.random.default_rng(10 + k).standard_normal((4, *shape)))
    J = pp.hs_jacobian(x, S)
    Jp = pp.hs_jacobian(x.reshape(4, -1), P)
    assert torch.allclose(J, Jp, atol=1e-9)
    assert torch.allclose(J, J.mT, atol=1e-12) and torch.allclose(J @ J, J, atol=1e-10)
    g = torch.randn_like(x)
    xr = x.clone().requires_grad_()
    (pp.project(xr, S) * g).sum().backward()
    assert torch.allclose(xr.grad.reshape(4, -1), torch.einsum("bij,bj->bi", J, g.reshape(4, -1)), atol=1e-10)


def test_support_with_two_components():
    """A block-diagonal support: the signless Laplacian has a two-dimensional kernel."""
    big = torch.tensor([[3.0, 2.5, -9, -9], [2.0, 3.5, -9, -9], [-9, -9, 1.0, 2.0], [-9, -9, 2.2, 1.1]], dtype=F64)
    y, info = pp.project(big, pp.Birkhoff(), return_info=True)
    support = ~info.active
    assert bool(support[:2, 2:].logical_not().all()) and bool(support[2:, :2].logical_not().all())
    J = pp.hs_jacobian(big, pp.Birkhoff())
    Jp = pp.hs_jacobian(big.reshape(16), pp.Birkhoff().as_polyhedron(4))
    assert torch.allclose(J, Jp, atol=1e-10)
    g = torch.randn(4, 4, dtype=F64)
    xr = big.clone().requires_grad_()
    (pp.project(xr, pp.Birkhoff()) * g).sum().backward()
    assert torch.allclose(xr.grad.reshape(16), J @ g.reshape(16), atol=1e-10)


def test_gradcheck_birkhoff():
    x = torch.tensor(np.random.default_rng(5).standard_normal((2, 3, 3)), requires_grad=True)
    assert torch.autograd.gradcheck(lambda z: pp.project(z, pp.Birkhoff()), (x,), eps=1e-6, atol=1e-6)


def test_batched_equals_looped_and_float32():
    x = torch.tensor(np.random.default_rng(6).standard_normal((2, 3, 5, 5)))
    y = pp.project(x, pp.Birkhoff())
    looped = torch.stack([pp.project(v, pp.Birkhoff()) for v in x.reshape(6, 5, 5)]).reshape(2, 3, 5, 5)
    assert torch.allclose(y, looped, atol=1e-12, rtol=0)
    y32 = pp.project(x.float(), pp.Birkhoff())
    assert y32.dtype == torch.float32 and torch.allclose(y32.double(), y, atol=1e-6)
    assert float((y.sum(-1) - 1).abs().max()) <= 1e-11 and float((y.sum(-2) - 1).abs().max()) <= 1e-11


def test_hand_example():
    X = pp.project(torch.tensor([[0.0, 0.0], [0.0, 0.0]], dtype=F64), pp.Birkhoff())
    assert torch.allclose(X, torch.full((2, 2), 0.5, dtype=F64), atol=1e-14)


@pytest.mark.parametrize("call, exc, pattern", [
    (lambda: pp.Transportation([1.0, -1.0], [0.0, 0.0]), pp.InfeasibleError, r"row_sums\[1\] = -1.0 < 0"),
    (lambda: pp.Transportation([1.0, 1.0], [1.0, 2.0]), pp.InfeasibleError, r"sum\(row_sums\) = 2.0 != sum\(col_sums\) = 3.0"),
    (lambda: pp.Transportation(1.0, [1.0]), ValueError, r"row_sums must have at least 1 dimension"),
    (lambda: pp.Transportation(np.ones((3, 2)), np.ones((2, 2))), ValueError, r"batch dimensions of row_sums and col_sums do not broadcast"),
    (lambda: pp.Transportation(np.ones((2, 2)), np.array([[1.0, 1.0], [1.0, 2.0]])), pp.InfeasibleError,
     r"empty at batch indices \(1,\): sum\(row_sums\) = 2.0 != sum\(col_sums\) = 3.0"),
    (lambda: pp.Transportation([1.0, np.nan], [1.0, 1.0]), ValueError, r"row_sums must be finite"),
    (lambda: pp.project(torch.zeros(3, 4, dtype=F64), pp.Birkhoff()), ValueError, r"\(\.\.\., n, n\)"),
    (lambda: pp.project(torch.zeros(3, 3, dtype=F64), pp.Transportation([1.0, 1.0], [1.0, 1.0])), ValueError,
     r"x must have shape \(\.\.\., 2, 2\)"),
])
def test_errors(call, exc, pattern):
    with pytest.raises(exc, match=pattern):
        call()


def test_degenerate_support_converges_to_rounding():
    """Eight support components joined by weakly active entries: rounding noise along the kernel
    of the support Laplacian must not stall the Newton iteration (it once sat at 2.6e-10)."""
    from pathlib import Path

    from polyproj.functional.transport import project_transport

    x = torch.tensor(np.loadtxt(Path(__file__).parent / "data" / "birkhoff_degenerate_16.txt"))[None]
    one = torch.ones(16, dtype=F64)
    X, _, _, kkt, iters = project_transport(x, one, one, tol=1e-13, max_iter=100)
    assert float(kkt) <= 1e-13 and int(iters) <= 20
    y, info = pp.project(x, pp.Birkhoff(), return_info=True)
    assert int(info.iterations) <= 20 and float((y.sum(-1) - 1).abs().max()) <= 1e-12
    D = pp.Birkhoff().as_polyhedron(16)._data
    C, c = D.C.numpy(), D.c.numpy()
    cert = certify_projection(x.flatten().numpy(), y.flatten().numpy(), C[: D.m], c[: D.m], C[D.m:], c[D.m:])
    assert cert["kkt"] <= 1e-9


@pytest.mark.parametrize("scale", [1e-6, 1e-2, 1.0, 1e2, 1e4, 1e8])
@pytest.mark.parametrize("shape", [(2, 2), (3, 7), (7, 3), (16, 16)])
def test_scales_marginals_and_ties(scale, shape):
    """Random marginals (one row empty), ties and duplicated rows, inputs from 10⁻⁶ to 10⁸
    times the marginals: KKT to 1e-9 relative.  (Inputs 10⁴ times the marginals once crept for
    500 steps: the Newton regularisation was tied to the absolute residual.)"""
    from polyproj.functional.transport import project_transport

    m, n = shape
    rng = np.random.default_rng(m * 100 + n)
    r = torch.tensor(rng.uniform(0, 1, (16, m)))
    r[:4, 0] = 0.0
    c = torch.tensor(rng.uniform(0, 1, (16, n)))
    c = c / c.sum(1, keepdim=True) * r.sum(1, keepdim=True)
    Y = torch.tensor(rng.standard_normal((16, m, n))) * scale
    Y[4:8] = torch.tensor(rng.integers(-2, 3, (4, m, n))) * scale  # ties
    Y[8:12, -1] = Y[8:12, 0]  # duplicated rows
    X, alpha, beta, kkt, iters = project_transport(Y, r, c, tol=1e-9, target=1e-12, max_iter=500)
    s = torch.maximum(Y.abs().flatten(1).amax(1), torch.maximum(r.amax(1), c.amax(1)))
    marg = torch.maximum((X.sum(2) - r).abs().amax(1), (X.sum(1) - c).abs().amax(1)) / s
    Z = Y - alpha[:, :, None] - beta[:, None, :]
    compl = (X - Z.clamp_min(0)).abs().flatten(1).amax(1) / s
    assert float(X.min()) >= 0 and float(marg.max()) <= 1e-9 and float(compl.max()) <= 1e-9
    assert torch.equal(kkt <= 1e-9, torch.ones_like(kkt, dtype=torch.bool)) and int(iters.max()) < 500


def test_marginal_gradients_have_no_gauge_component():
    """The (r, c) gradient is the minimum-norm one: orthogonal to (1, −1), along which no
    admissible change of the marginals moves (rounding noise amplified there reached 2e-5)."""
    rng = np.random.default_rng(11)
    r = torch.tensor(rng.uniform(0.5, 1.5, (64, 16)), requires_grad=True)
    c0 = rng.uniform(0.5, 1.5, (64, 16))
    c = torch.tensor(c0 * (r.detach().numpy().sum(1) / c0.sum(1))[:, None], requires_grad=True)
    x = torch.tensor(rng.standard_normal((64, 16, 16))) * 3
    (pp.project(x, pp.Transportation(r, c)) * torch.tensor(rng.standard_normal((64, 16, 16)))).sum().backward()
    gauge = (r.grad.sum(1) - c.grad.sum(1)).abs()
    assert float(gauge.max()) <= 1e-10 * float(r.grad.abs().max())


def test_empty_batch():
    x = torch.zeros(0, 3, 3, dtype=F64, requires_grad=True)
    y, info = pp.project(x, pp.Birkhoff(), return_info=True)
    y.sum().backward()
    assert y.shape == (0, 3, 3) and x.grad.shape == (0, 3, 3) and info.iterations.shape == (0,)
    T = pp.Transportation(torch.ones(3, dtype=F64), torch.full((2,), 1.5, dtype=F64))
    assert pp.project(torch.zeros(2, 0, 3, 2, dtype=F64), T).shape == (2, 0, 3, 2)


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 12), st.integers(1, 12), st.floats(0.0, 0.4), st.integers(0, 2**31 - 1))
def test_support_components_match_scipy(m, n, density, seed):
    """The batched component labelling against scipy's connected components of the same
    bipartite graph: the same partition, numbered by first node."""
    import scipy.sparse as sp
    from scipy.sparse.csgraph import connected_components

    from polyproj.functional.transport import support_components

    support = torch.rand(3, m, n, generator=torch.Generator().manual_seed(seed)) < density
    comp, K = support_components(support)
    for b in range(3):
        S = sp.csr_matrix(support[b].numpy())
        k, labels = connected_components(sp.bmat([[None, S], [S.T, None]]), directed=False)
        ours = comp[b].numpy()
        assert len(set(ours)) == k and K >= k
        assert all((ours[i] == ours[j]) == (labels[i] == labels[j]) for i in range(m + n) for j in range(m + n))
        assert list(dict.fromkeys(ours)) == list(range(k))  # numbered in the order of first nodes


def _theta(Y, ab, r, c):
    """The dual objective ½‖(Y − α1ᵀ − 1βᵀ)₊‖² + rᵀα + cᵀβ."""
    m = Y.shape[1]
    Z = Y - ab[:, :m, None] - ab[:, None, m:]
    return 0.5 * Z.clamp_min(0).square().flatten(1).sum(1) + (r * ab[:, :m]).sum(1) + (c * ab[:, m:]).sum(1)


def test_merge_step_joins_components_without_moving_x():
    """The merge step on supports split into many components out of balance (inputs 10⁴ times
    random marginals, after the block-coordinate start): X is unchanged, the dual objective
    falls, every component of the support plus the joined entries is in balance, and the
    duals match the new Z."""
    from polyproj.functional import transport as tr

    rng = np.random.default_rng(3)
    N, m, n = 8, 12, 9
    r = torch.tensor(rng.uniform(0, 1, (N, m)))
    c = torch.tensor(rng.uniform(0, 1, (N, n)))
    c = c / c.sum(1, keepdim=True) * r.sum(1, keepdim=True)
    Y = torch.tensor(rng.standard_normal((N, m, n))) * 1e4
    rc = torch.cat([r, c], 1)
    ab = torch.cat([Y.amax(2) - 1.0, torch.zeros(N, n, dtype=F64)], 1)  # each row's largest entry barely positive
    Z = Y - ab[:, :m, None] - ab[:, None, m:]
    X, g, _ = tr._trial_point(Z, rc, torch.ones(N, dtype=F64))
    comp, K = tr.support_components(X > 0)
    signed = torch.cat([g[:, :m], -g[:, m:]], 1)
    imbalance = torch.zeros(N, K, dtype=F64).scatter_add_(1, comp, signed)
    size = torch.zeros(N, K, dtype=F64).scatter_add_(1, comp, torch.ones_like(signed))
    noise = torch.full((N,), 1e-12, dtype=F64)
    assert bool((imbalance.abs() > 1e-9).any(1).all())  # every sample starts out of balance
    Z2, dab, joined = tr._merge_components(Z.clone(), comp, imbalance, size, m, noise)
    ab2 = ab + dab
    assert torch.equal(Z2.clamp_min(0), X)  # entries join at zero: X does not move
    assert bool(joined.flatten(1).any(1).all()) and bool((Z2[joined] == 0).all())
    torch.testing.assert_close(Z2, Y - ab2[:, :m, None] - ab2[:, None, m:], rtol=0, atol=1e-10)
    assert bool((_theta(Y, ab2, r, c) < _theta(Y, ab, r, c) - 1e-9).all())
    comp2, K2 = tr.support_components((X > 0) | joined)
    _, g2, _ = tr._trial_point(Z2, rc, torch.ones(N, dtype=F64))
    signed2 = torch.cat([g2[:, :m], -g2[:, m:]], 1)
    imbalance2 = torch.zeros(N, K2, dtype=F64).scatter_add_(1, comp2, signed2)
    assert float(imbalance2.abs().max()) <= 1e-12


def _far_instance(seed, N, m, n, scale):
    """Gaussian inputs ``scale`` times random marginals (uniform rows, columns rescaled to the
    rows' total): ``(Y, r, c)``, float64."""
    rng = np.random.default_rng(seed)
    r = torch.tensor(rng.uniform(0, 1, (N, m)))
    c = torch.tensor(rng.uniform(0, 1, (N, n)))
    c = c / c.sum(1, keepdim=True) * r.sum(1, keepdim=True)
    return torch.tensor(rng.standard_normal((N, m, n))) * scale, r, c


@pytest.mark.parametrize("scale", [1e2, 1e4, 1e8])
def test_far_inputs_take_few_newton_steps(scale, monkeypatch):
    """Random marginals at 64×64, inputs 10²–10⁸ times the marginals: certified in at most 20
    Newton steps.  Without the merge step the same inputs take over 20 (the support splits into
    components out of balance, and each Newton step joins one pair)."""
    from polyproj.functional import transport as tr

    Y, r, c = _far_instance(int(np.log10(scale)), 4, 64, 64, scale)
    X, _, _, kkt, iters = tr.project_transport(Y, r, c, tol=1e-9, target=1e-11, max_iter=200)
    assert int(iters.max()) <= 20 and float(kkt.max()) <= 1e-9
    T = pp.Transportation(r, c)
    assert bool(T.contains(X).all())
    monkeypatch.setattr(tr, "_MERGE", False)
    _, _, _, kkt0, iters0 = tr.project_transport(Y, r, c, tol=1e-9, target=1e-11, max_iter=200)
    assert float(iters0.float().mean()) > 20


def test_merge_in_chunks_equals_one_pass(monkeypatch):
    """The merge step bounds its memory by running on chunks of samples: the same points and
    step counts as one pass over the batch."""
    from polyproj.functional import transport as tr

    Y, r, c = _far_instance(5, 12, 16, 16, 1e4)
    X, _, _, _, iters = tr.project_transport(Y, r, c, tol=1e-9, target=1e-11, max_iter=200)
    monkeypatch.setattr(tr, "_MERGE_ELEMENTS", 2 * 33**2)
    X2, _, _, _, iters2 = tr.project_transport(Y, r, c, tol=1e-9, target=1e-11, max_iter=200)
    assert torch.equal(iters, iters2) and torch.equal(X, X2)


def test_merge_joins_in_numpy_equal_torch(monkeypatch):
    """On the CPU the joins run in NumPy; the torch code path (other devices) gives the same
    points and step counts."""
    from polyproj.functional import transport as tr

    Y, r, c = _far_instance(6, 6, 24, 20, 1e6)
    X, _, _, kkt, iters = tr.project_transport(Y, r, c, tol=1e-9, target=1e-11, max_iter=200)
    monkeypatch.setattr(tr, "_HOST_JOINS", False)
    X2, _, _, kkt2, iters2 = tr.project_transport(Y, r, c, tol=1e-9, target=1e-11, max_iter=200)
    assert float(kkt.max()) <= 1e-9 and torch.equal(iters, iters2) and torch.equal(X, X2)
