"""The projection as a PyTorch operator: torch.compile(fullgraph=True), vmap, jacrev and
jacfwd for every set (equal to hs_jacobian), meta tensors, double backward."""

import numpy as np
import pytest
import torch

import polyproj as pp

F64 = torch.float64


def _sets():
    rng = np.random.default_rng(0)
    A = rng.standard_normal((6, 4))
    y0 = rng.standard_normal(4)
    P = pp.Polyhedron(A=A, a=A @ y0 + 0.3, B=np.ones((1, 4)), b=[y0.sum()])
    return {
        "polyhedron": (P, (4,)),
        "box": (pp.Box(-0.5, 0.5), (4,)),
        "halfspace": (pp.HalfSpace(torch.tensor([1.0, -1.0, 0.5, 2.0], dtype=F64), 0.2), (4,)),
        "simplex": (pp.Simplex(), (4,)),
        "capped_simplex": (pp.CappedSimplex(0.0, 0.4, 1.0), (4,)),
        "birkhoff": (pp.Birkhoff(), (3, 3)),
        "partial_matching": (pp.PartialMatching(2), (3, 4)),
        "transportation": (pp.Transportation(torch.tensor([1.0, 2.0], dtype=F64), torch.tensor([1.5, 0.5, 1.0], dtype=F64)), (2, 3)),
        "bounded_polyhedron": (pp.Polyhedron(A=A, a=A @ y0 + 0.3, lower=y0 - 0.5, upper=y0 + 0.2), (4,)),
        "sparse_polyhedron": (pp.SparsePolyhedron(A=A, a=A @ y0 + 0.3, B=np.ones((1, 4)), b=[y0.sum()], lower=-2.0,
                                                  upper=2.0), (4,)),
    }


SETS = _sets()


@pytest.mark.parametrize("name", list(SETS))
def test_jacrev_jacfwd_vmap_match_hs_jacobian(name):
    S, event = SETS[name]
    x = torch.randn(5, *event, dtype=F64, generator=torch.Generator().manual_seed(1))
    d = int(np.prod(event))
    J = pp.hs_jacobian(x, S)  # (5, d, d)
    f = lambda v: pp.project(v, S)  # noqa: E731
    for k in range(2):
        Jr = torch.func.jacrev(f)(x[k]).reshape(d, d)
        Jf = torch.func.jacfwd(f)(x[k]).reshape(d, d)
        assert torch.allclose(Jr, J[k], atol=1e-12) and torch.allclose(Jf, J[k], atol=1e-12)
    assert torch.equal(torch.func.vmap(f)(x), pp.project(x, S))
    # per-sample Jacobians of the whole batch at once
    Jb = torch.func.vmap(torch.func.jacrev(f))(x).reshape(5, d, d)
    assert torch.allclose(Jb, J, atol=1e-12)


@pytest.mark.parametrize("name", list(SETS))
def test_meta_tensors_give_shapes(name):
    S, event = SETS[name]
    y, info = pp.project(torch.empty(7, 2, *event, dtype=F64, device="meta"), S, return_info=True)
    assert y.shape == (7, 2, *event) and y.device.type == "meta"
    assert info.kkt_residual.shape == (7, 2) and info.converged.dtype == torch.bool


def test_double_backward_is_the_hs_jacobian_again():
    S, _ = SETS["polyhedron"]
    x = torch.randn(3, 4, dtype=F64, requires_grad=True)
    g = torch.randn(3, 4, dtype=F64)
    (gx,) = torch.autograd.grad((pp.project(x, S) * g).sum(), x, create_graph=True)
    J = pp.hs_jacobian(x.detach(), S)
    assert torch.allclose(gx, torch.einsum("bij,bj->bi", J, g), atol=1e-12)
    v = torch.randn(3, 4, dtype=F64)
    # d/dx of J(x) g is zero almost everywhere (J is piecewise constant): no graph back to x
    assert not gx.requires_grad
    # and the backward is linear in the cotangent: its derivative in g is J
    gg = g.clone().requires_grad_()
    (gx2,) = torch.autograd.grad((pp.project(x, S) * gg).sum(), x, create_graph=True)
    (hg,) = torch.autograd.grad((gx2 * v).sum(), gg)
    assert torch.allclose(hg, torch.einsum("bij,bj->bi", J, v), atol=1e-12)


def test_second_derivative_in_constraint_data_is_a_clear_error():
    a = torch.ones(2, dtype=F64, requires_grad=True)
    x = torch.full((1, 2), 3.0, dtype=F64, requires_grad=True)
    w = torch.ones(1, 2, dtype=F64, requires_grad=True)
    y = pp.project(x, pp.Polyhedron(A=torch.eye(2, dtype=F64), a=a))
    (ga,) = torch.autograd.grad((y * w).sum(), a, create_graph=True)
    assert torch.equal(ga.detach(), torch.ones(2, dtype=F64))
    with pytest.raises(NotImplementedError, match="second derivatives .* constraint data"):
        torch.autograd.grad(ga.sum(), w)


@pytest.mark.parametrize("name", ["polyhedron", "simplex", "birkhoff"])
def test_compile_fullgraph_matches_eager(name):
    S, event = SETS[name]
    torch._dynamo.reset()
    net = torch.nn.Sequential(torch.nn.Identity(), pp.Projection(S))
    compiled = torch.compile(net, fullgraph=True, backend="eager")
    x = torch.randn(6, *event, dtype=F64, requires_grad=True)
    y = compiled(x)
    assert torch.equal(y, net(x))
    (g,) = torch.autograd.grad((y * torch.arange(y.numel(), dtype=F64).reshape(y.shape)).sum(), x)
    (ge,) = torch.autograd.grad((net(x) * torch.arange(y.numel(), dtype=F64).reshape(y.shape)).sum(), x)
    assert torch.equal(g, ge)


@pytest.mark.parametrize("name", list(SETS))
def test_compile_fullgraph_for_inference(name):
    """Inputs that do not require grad (inference) and ``torch.no_grad``: the compiled layer is
    the operator alone and equals eager."""
    S, event = SETS[name]
    torch._dynamo.reset()
    net = torch.nn.Sequential(torch.nn.Identity(), pp.Projection(S))
    compiled = torch.compile(net, fullgraph=True, backend="eager")
    x = torch.randn(6, *event, dtype=F64)
    assert torch.equal(compiled(x), net(x))
    with torch.no_grad():
        assert torch.equal(compiled(x.requires_grad_()), net(x))


def test_compile_with_learned_constraint_data_runs_the_layer_eagerly():
    a = torch.nn.Parameter(torch.ones(3, dtype=F64))
    layer = pp.Projection(pp.Polyhedron(A=torch.eye(3, dtype=F64), a=a))
    torch._dynamo.reset()
    compiled = torch.compile(layer, backend="eager")
    x = torch.full((2, 3), 5.0, dtype=F64)
    compiled(x).sum().backward()
    assert torch.equal(a.grad, torch.full((3,), 2.0, dtype=F64))
    with torch.no_grad():
        a.sub_(0.5)
    assert torch.equal(compiled(x), torch.full((2, 3), 0.5, dtype=F64))  # the new values, no stale graph
