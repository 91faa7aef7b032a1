"""The learning-to-optimize example (experiments/dc3_simple_qp.py): exact regeneration of DC3's
instances and split, a reference solve, and one training step through the per-sample projection."""

import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "experiments"))

import dc3_simple_qp as dc3  # noqa: E402


def test_instances_follow_dc3_recipe_and_leave_global_rng_alone():
    np.random.seed(123)
    before = np.random.random()
    np.random.seed(123)
    data = dc3.dc3_simple_instances()
    assert np.random.random() == before  # the caller's legacy RNG state is restored
    np.random.seed(17)
    q = np.random.random(100)
    assert np.array_equal(np.diag(data["Q"]), q)
    assert data["A"].shape == (50, 100) and data["G"].shape == (50, 100) and data["X"].shape == (10000, 50)
    assert np.allclose(data["h"], np.abs(data["G"] @ np.linalg.pinv(data["A"])).sum(1))
    tr, va, te = dc3.dc3_split(10000)
    assert (tr.stop, va.stop - va.start, te.stop - te.start) == (8334, 833, 833)


def test_projected_network_is_feasible_and_near_reference_after_a_step():
    data = dc3.dc3_simple_instances()
    X = data["X"][:16]
    Y_ref, _ = dc3.solve_reference(data, X[:4])
    torch.manual_seed(0)
    model = dc3.ProjectedMLP(data, hidden=32)
    Q, p = torch.tensor(data["Q"]), torch.tensor(data["p"])
    x = torch.tensor(X)
    y = model(x)
    yd = y.detach()
    assert float((yd @ torch.tensor(data["A"]).T - x).abs().max()) <= 1e-10
    assert float((yd @ torch.tensor(data["G"]).T - torch.tensor(data["h"])).max()) <= 1e-10
    loss = dc3.objective(y, Q, p).mean()
    loss.backward()
    grads = [prm.grad for prm in model.parameters()]
    assert all(gr is not None and bool(torch.isfinite(gr).all()) for gr in grads)
    assert sum(float(gr.abs().sum()) for gr in grads) > 0
    # the reference is optimal: no network output beats it on its own sample
    f_ref = dc3.objective(torch.tensor(Y_ref), Q, p)
    assert bool((dc3.objective(y[:4].detach(), Q, p) >= f_ref - 1e-7).all())
    metrics = dc3.evaluate(model, data, X[:4], Y_ref)
    assert metrics["rel_gap_mean"] >= -1e-9 and metrics["max_eq_violation"] <= 1e-10
