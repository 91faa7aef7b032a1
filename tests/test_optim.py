"""polyproj.optim: the two-timescale Adam update, its schedules and its checks."""

import copy
import io
import math

import pytest
import torch

import polyproj as pp
from polyproj.optim import Constant, PowerDecay, TwoTimescaleAdam


def _hand_sequence(grads, eta, theta, psi, eps, x0, clip=None):
    """The update of the module docstring, written out with Python floats."""
    x, m, v, out = x0, 0.0, 0.0, []
    for k, g in enumerate(grads):
        if clip is not None and abs(g) > clip:
            g = g * clip / abs(g)
        m = (1 - theta(k)) * m + theta(k) * g
        v = (1 - psi(k)) * v + psi(k) * g * g
        x = x - eta(k) * m / math.sqrt(v + eps)
        out.append(x)
    return out


@pytest.mark.parametrize("clip", [None, 0.7])
def test_update_equals_the_written_formula(clip):
    grads = [1.0, -2.0, 0.5, 3.0, -0.25, 1.5]
    lr, th, ps = PowerDecay(0.1, 0.75, warmup=2.0), PowerDecay(0.5, 0.5), PowerDecay(0.3, 0.25, warmup=3.0)
    expected = _hand_sequence(grads, lr, th, ps, 1e-6, 2.0, clip)
    x = torch.tensor([2.0], dtype=torch.float64, requires_grad=True)
    opt = TwoTimescaleAdam([x], lr=lr, momentum_rate=th, second_moment_rate=ps, eps=1e-6, clip=clip)
    for g, want in zip(grads, expected):
        x.grad = torch.tensor([g], dtype=torch.float64)
        opt.step()
        assert float(x.detach()) == pytest.approx(want, rel=1e-15, abs=1e-15)
    assert opt.state[x]["step"] == len(grads)


def test_schedules_values():
    s = PowerDecay(1.0, 0.5, warmup=4.0)
    assert s(0) == 1.0 and s(12) == pytest.approx(0.5)
    assert PowerDecay(2.0, 0.5, cap=1.0)(0) == 1.0
    assert Constant(0.3)(10**9) == 0.3


def _train(opt_factory, steps, state=None, start=0):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3)).double()
    P = pp.Simplex()
    opt = opt_factory(net.parameters())
    if state is not None:
        net.load_state_dict(state["net"])
        opt.load_state_dict(state["opt"])
    g = torch.Generator().manual_seed(1)
    data = torch.randn(200, 3, generator=g, dtype=torch.float64)
    target = pp.project(torch.randn(200, 3, generator=g, dtype=torch.float64), P)
    for k in range(start, steps):
        idx = torch.arange(k * 16, k * 16 + 16) % 200
        loss = (pp.project(net(data[idx]), P) - target[idx]).square().sum(-1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net, opt


def test_state_dict_round_trip_reproduces_the_trajectory_bit_for_bit():
    factory = lambda params: TwoTimescaleAdam(params, clip=5.0)  # noqa: E731
    net_full, _ = _train(factory, 40)
    net_half, opt_half = _train(factory, 20)
    buffer = io.BytesIO()
    torch.save({"net": net_half.state_dict(), "opt": opt_half.state_dict()}, buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=False)
    net_resumed, _ = _train(factory, 40, state=state, start=20)
    for a, b in zip(net_full.parameters(), net_resumed.parameters()):
        assert torch.equal(a, b)


def test_param_groups_have_their_own_schedules():
    a = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    b = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    opt = TwoTimescaleAdam([{"params": [a]}, {"params": [b], "lr": PowerDecay(0.5, 1.0)}],
                           lr=PowerDecay(0.1, 0.75))
    a.grad = torch.ones(1, dtype=torch.float64)
    b.grad = torch.ones(1, dtype=torch.float64)
    opt.step()
    # first step: m = θ₀ g, v = ψ₀ g², x = −η₀ θ₀ / √(ψ₀ + ε)
    scale = 0.1 / math.sqrt(0.1 + 1e-6)
    assert float(a.detach()) == pytest.approx(-0.1 * scale) and float(b.detach()) == pytest.approx(-0.5 * scale)
    group = copy.deepcopy(opt.state_dict()["param_groups"][1])
    assert group["lr"].initial == 0.5


BAD = [
    (dict(lr=Constant(1e-3)), r"lr must be a diminishing PowerDecay"),
    (dict(momentum_rate=PowerDecay(0.1, 0.8)), r"momentum_rate must decay more slowly than lr"),
    (dict(second_moment_rate=PowerDecay(0.1, 0.75)), r"second_moment_rate must decay more slowly than lr"),
    (dict(momentum_rate=Constant(0.1)), r"momentum_rate must be a diminishing PowerDecay"),
    (dict(momentum_rate=PowerDecay(1.5, 0.5)), r"momentum_rate must stay in \(0, 1\]"),
    (dict(eps=0.0), r"eps must be a finite real number > 0"),
    (dict(eps=float("nan")), r"eps must be a finite real number > 0"),
    (dict(clip=-1.0), r"clip must be a finite real number > 0"),
    (dict(lr=0.001), r"lr must be a schedule object"),
    (dict(theory="yes"), r"theory must be a bool"),
]


@pytest.mark.parametrize("kwargs, pattern", BAD)
def test_bad_hyper_parameters_raise(kwargs, pattern):
    x = torch.zeros(2, requires_grad=True)
    with pytest.raises(ValueError, match=pattern):
        TwoTimescaleAdam([x], **kwargs)


@pytest.mark.parametrize("call, pattern", [
    (lambda: PowerDecay(0.0, 0.5), r"initial must be a finite real number > 0"),
    (lambda: PowerDecay(1.0, 1.5), r"power must be a finite real number > 0 and ≤ 1.0"),
    (lambda: PowerDecay(1.0, 0.5, warmup=-1), r"warmup must be"),
    (lambda: Constant(-1.0), r"value must be"),
])
def test_bad_schedules_raise(call, pattern):
    with pytest.raises(ValueError, match=pattern):
        call()


def test_outside_theory_any_schedule_is_accepted_and_groups_are_validated():
    x = torch.zeros(2, requires_grad=True)
    opt = TwoTimescaleAdam([x], lr=Constant(1e-3), momentum_rate=Constant(0.1), theory=False)
    x.grad = torch.ones(2)
    opt.step()
    assert bool((x < 0).all())
    with pytest.raises(ValueError, match=r"momentum_rate must be a diminishing PowerDecay"):
        opt.add_param_group({"params": [torch.zeros(1, requires_grad=True)], "theory": True,
                             "lr": PowerDecay(1e-3, 0.5)})
    assert len(opt.param_groups) == 1  # the invalid group was not added
