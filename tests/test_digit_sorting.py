"""The number-sorting experiment (experiments/digit_sorting): an image-level split, targets that
sort the numbers, NeuralSort's matrix, every permutation layer, and a resumable smoke run of
``polyproj sorting``."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import polyproj as pp

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "experiments"))

from digit_sorting import data, run  # noqa: E402


@pytest.fixture(scope="module")
def ds():
    return data.load()


def test_split_is_at_the_image_level_and_fixed(ds):
    p = ds.parts
    assert not set(p["trainval"]) & set(p["test"]) and not set(p["train"]) & set(p["valid"])
    assert len(p["trainval"]) + len(p["test"]) == len(ds.images)
    assert np.array_equal(data.load().parts["test"], p["test"])


def test_targets_sort_the_numbers(ds):
    imgs, values, P = data.sequences(ds, "test", 5, 64, np.random.default_rng(0))
    assert imgs.shape == (64, 5, 1, 8, 24)
    for s in range(64):
        assert len(set(values[s].tolist())) == 5
        order = P[s].argmax(1)  # item at each position
        assert torch.all(values[s][order][:-1] > values[s][order][1:])  # decreasing
    # the number's pixels are its three digits side by side
    idx = ds.parts["test"]
    assert set(np.unique(imgs.numpy())) <= set(np.unique(ds.images[idx]))


def test_neuralsort_matrix_rows_peak_at_the_ranked_items():
    s = torch.tensor([[0.3, 2.0, -1.0, 0.9]])
    M = run.neuralsort_matrix(s)
    assert M[0].argmax(-1).tolist() == [1, 3, 0, 2]


@pytest.mark.parametrize("name", run.LAYERS)
def test_every_layer_returns_a_soft_permutation(name):
    hp = {"scale": 1.0} if name == "exact" else {"tau": 1.0}
    layer = run.PermutationLayer(name, 4, **hp)
    M = run.neuralsort_matrix(torch.randn(6, 4, requires_grad=True))
    X = layer(M)
    assert X.shape == (6, 4, 4)
    X.square().sum().backward()
    viol = pp.Birkhoff().violation(X.detach())
    if name == "exact":
        assert float(viol.max()) <= 1e-6
    if name == "neuralsort":  # rows only
        torch.testing.assert_close(X.sum(-1), torch.ones(6, 4))


def test_quick_run_writes_results_and_resumes(tmp_path):
    argv = ["compare", "--quick", "--n", "3", "--no-progress", "--out", str(tmp_path)]
    assert run.main(argv) == 0
    res = json.loads((tmp_path / "results.json").read_text())
    assert {r["layer"] for r in res["summary"]} == set(run.LAYERS)
    exact = next(r for r in res["summary"] if r["layer"] == "exact")
    assert exact["max_violation"] <= 1e-6 and "paired_diff" in exact
    assert (tmp_path / "sorting.png").stat().st_size > 0
    records = sorted((tmp_path / "records").glob("*.json"))
    stamps = [p.stat().st_mtime_ns for p in records]
    assert run.main(argv) == 0
    assert [p.stat().st_mtime_ns for p in records] == stamps
