"""Every constraint tensor that requires grad receives its gradient (gradcheck), and per-sample
emptiness is reported by batch index for every set."""

import pytest
import torch

import polyproj as pp

F64 = torch.float64


def test_simplex_total_gradient_shared_and_per_sample():
    x = torch.randn(5, 4, dtype=F64, requires_grad=True)
    for total in (torch.tensor(2.0, dtype=F64, requires_grad=True), torch.rand(5, dtype=F64, requires_grad=True) + 0.1):
        assert torch.autograd.gradcheck(lambda x, t: pp.project(x, pp.Simplex(total=t)), (x, total))
    t = torch.tensor(2.0, dtype=F64, requires_grad=True)
    pp.project(x, pp.Simplex(total=t)).sum().backward()
    # Σ_i y_i = t for every sample, so d(Σ y)/dt = batch size
    assert float(t.grad) == pytest.approx(5.0, abs=1e-12)


def test_halfspace_normal_and_offset_gradients():
    x = torch.randn(6, 3, dtype=F64, requires_grad=True)
    c = torch.tensor([1.0, -2.0, 0.5], dtype=F64, requires_grad=True)
    for beta in (torch.tensor(0.3, dtype=F64, requires_grad=True), torch.randn(6, dtype=F64, requires_grad=True)):
        assert torch.autograd.gradcheck(lambda x, c, b: pp.project(x, pp.HalfSpace(c, b)), (x, c, beta))
    # inactive points: no gradient reaches the data
    c2 = c.detach().clone().requires_grad_()
    b2 = torch.tensor(1e6, dtype=F64, requires_grad=True)
    pp.project(x, pp.HalfSpace(c2, b2)).sum().backward()
    assert float(b2.grad) == 0.0 and float(c2.grad.abs().max()) == 0.0


def test_per_sample_empty_sets_name_their_batch_indices():
    with pytest.raises(pp.InfeasibleError) as err:
        pp.Box(torch.tensor([[0.0, 0.0], [2.0, 0.0], [0.0, 0.0]]), torch.ones(2))
    assert err.value.indices == [(1,)]
    with pytest.raises(pp.InfeasibleError) as err:
        pp.Simplex(total=torch.tensor([1.0, -1.0]))
    assert err.value.indices == [(1,)]
    with pytest.raises(pp.InfeasibleError) as err:
        pp.CappedSimplex(torch.zeros(2, 3), torch.ones(2, 3), torch.tensor([1.0, 5.0]))
    assert err.value.indices == [(1,)]
