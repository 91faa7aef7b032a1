"""The projection among the rest of PyTorch: learned constraint data stay live, mixed
precision and autocast, and the module's data follow state_dict and .to()."""

import pytest
import torch

import polyproj as pp

F64 = torch.float64


def test_learned_right_hand_side_is_read_at_every_call():
    a = torch.nn.Parameter(torch.ones(3, dtype=F64))
    layer = pp.Projection(pp.Polyhedron(A=torch.eye(3, dtype=F64), a=a))
    assert [n for n, _ in layer.named_parameters()] == ["data_a"] and "data_A" in layer.state_dict()
    opt = torch.optim.SGD(layer.parameters(), lr=0.3)
    x = torch.full((2, 3), 5.0, dtype=F64)
    seen = []
    for _ in range(3):
        y = layer(x)
        seen.append(float(y[0, 0]))
        y.sum().backward()  # dy/da = 1 on the active rows: a moves by −0.3·2 per step
        opt.step()
        opt.zero_grad()
    assert seen == pytest.approx([1.0, 0.4, -0.2], abs=1e-12)


@pytest.mark.parametrize("make", [lambda p: pp.Box(torch.zeros(3, dtype=F64), p),
                                  lambda p: pp.CappedSimplex(torch.zeros(3, dtype=F64), p, 1.0),
                                  lambda p: pp.HalfSpace(p, 0.5),
                                  lambda p: pp.Transportation(p, p)])
def test_every_set_with_a_parameter_stays_live(make):
    p = torch.nn.Parameter(torch.tensor([0.9, 1.0, 1.1], dtype=F64))
    layer = pp.Projection(make(p))
    x = torch.randn(4, 3, 3, dtype=F64) if isinstance(layer.set, pp.Transportation) else torch.randn(4, 3, dtype=F64)
    before = layer(x)
    with torch.no_grad():
        p.mul_(1.5)
    after = layer(x)
    assert torch.equal(after, pp.project(x, make(p.detach())))
    assert not torch.equal(before, after)


def test_a_set_whose_data_changed_in_place_refuses_to_project():
    a = torch.nn.Parameter(torch.ones(2, dtype=F64))
    P = pp.Polyhedron(A=torch.eye(2, dtype=F64), a=a)
    x = torch.full((1, 2), 3.0, dtype=F64)
    pp.project(x, P)
    with torch.no_grad():
        a.sub_(0.5)
    with pytest.raises(ValueError, match=r"constraint data 'a' of this Polyhedron changed in place"):
        pp.project(x, P)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_inputs(dtype):
    x = torch.randn(8, 6).to(dtype).requires_grad_()
    for S in (pp.Simplex(), pp.Box(-0.5, 0.5), pp.CappedSimplex(0.0, 0.3, 1.0)):
        y = pp.project(x, S)
        assert y.dtype == dtype and bool(S.contains(y).all())
        assert torch.equal(y, pp.project(x.detach().double(), S).to(dtype))
        y.float().square().sum().backward()
        assert x.grad.dtype == dtype and bool(torch.isfinite(x.grad).all())
        x.grad = None


def test_autocast_region_ending_in_a_projection():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(5, 4), pp.Projection(pp.Simplex()))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = net(torch.randn(8, 5))
    assert y.dtype == torch.bfloat16 and bool(pp.Simplex().contains(y).all())
    (y.float() * torch.arange(4.0)).sum().backward()
    assert net[0].weight.grad is not None and float(net[0].weight.grad.abs().sum()) > 0


def test_loading_a_state_dict_changes_the_set():
    A = torch.eye(2, dtype=F64)
    layer = pp.Projection(pp.Polyhedron(A=A, a=torch.ones(2, dtype=F64)))
    x = torch.full((1, 2), 5.0, dtype=F64)
    assert torch.equal(layer(x), torch.ones(1, 2, dtype=F64))
    other = pp.Projection(pp.Polyhedron(A=A, a=torch.full((2,), 0.5, dtype=F64)))
    layer.load_state_dict(other.state_dict())
    assert torch.equal(layer(x), torch.full((1, 2), 0.5, dtype=F64))
