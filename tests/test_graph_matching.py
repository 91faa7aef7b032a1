"""The graph-matching experiment (experiments/graph_matching): the Willow protocol and pair
construction, the decode metrics, every layer's output checked against the same polytope, and
a resumable smoke run of ``polyproj graph-matching`` on a 6-images-per-class fixture."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "experiments"))

from graph_matching import data, layers, run  # noqa: E402

MINI = Path(__file__).resolve().parent / "data" / "willow_mini"


@pytest.fixture(scope="module")
def ds(tmp_path_factory):
    return data.load(MINI, cache_dir=tmp_path_factory.mktemp("cache"), n_train=4, n_valid=1)


def test_split_follows_the_protocol(ds):
    tr, va, te = ds.split("train"), ds.split("valid"), ds.split("test")
    for c in range(len(data.CLASSES)):
        names = sorted(ds.names[ds.cls == c])
        assert [ds.names[i] for i in np.concatenate([tr[c], va[c]])] == names[:4]  # first images by name
        assert [ds.names[i] for i in te[c]] == names[4:]
        assert not set(tr[c]) & set(te[c])


@pytest.mark.parametrize("outliers", [0, 3])
def test_pairs_ground_truth_is_the_shuffled_identity_on_inliers(ds, outliers):
    sampler = data.PairSampler(ds, ds.split("train"), outliers)
    rng = np.random.default_rng(0)
    b = sampler.batch(sampler.random_pairs(rng, 8), rng)
    k = data.N_INLIERS + outliers
    assert b.feat1.shape == (8, k, ds.features.shape[2]) and b.A1.shape == (8, k, k)
    assert torch.equal(b.gt.sum((1, 2)), torch.full((8,), float(data.N_INLIERS)))
    for s in range(8):
        i, j = b.pairs[s]
        assert ds.cls[i] == ds.cls[j] and i != j
        p1, p2 = b.perm[s]
        for a, bb in zip(*np.nonzero(b.gt[s].numpy())):
            assert p1[a] == p2[bb] < data.N_INLIERS  # node a of graph 1 and node bb of graph 2: one keypoint
        # features follow the shuffle
        assert np.allclose(b.feat1[s].numpy(), ds.features[i, p1].astype(np.float32))
        assert torch.equal(b.A1[s], b.A1[s].T)


def test_decode_metrics_on_a_known_matching():
    gt = torch.zeros(1, 12, 12)
    gt[0, torch.arange(10), torch.arange(10)] = 1.0
    X = gt.clone()
    X[0, 0, 0], X[0, 0, 1] = 0.0, 1.0  # one wrong pair (row 0 → column 1)
    X[0, 1, 1] = 0.0
    X[0, 1, 0] = 1.0  # and its swap
    m = run.decode_metrics(X, gt, 10)
    assert float(m["hungarian_f1"]) == pytest.approx(0.8)
    assert float(m["threshold_precision"]) == pytest.approx(0.8)
    assert float(m["threshold_recall"]) == pytest.approx(0.8)


@pytest.mark.parametrize("k", [10, 13])
def test_every_layer_maps_scores_and_the_exact_one_is_feasible(k):
    s = torch.randn(4, k, k, generator=torch.Generator().manual_seed(0), requires_grad=True)
    for name, hp in (("sinkhorn", {"tau": 0.1, "iters": 20}), ("linsat", {"tau": 0.1, "iters": 20}),
                     ("exact", {"scale": 1.0})):
        X = layers.make_layer(name, k, 10, **hp)(s)
        assert X.shape == s.shape and X.dtype == torch.float32
        X.square().sum().backward()
        viol = layers.violation(X.detach(), 10)
        if name == "exact":
            assert float(viol.max()) <= 1e-6  # float32 rounding of a certified float64 point
            if k > 10:
                assert torch.allclose(X.detach().sum((1, 2)), torch.full((4,), 10.0))
    with pytest.raises(ValueError, match="layer must be one of"):
        layers.make_layer("softmax", 10, 10)


def test_quick_run_writes_results_and_resumes(tmp_path, monkeypatch):
    monkeypatch.setenv("POLYPROJ_NO_PROGRESS", "1")
    argv = ["compare", "--quick", "--data", str(MINI), "--train-images", "4", "--valid-images", "1",
            "--outliers", "0", "2", "--out", str(tmp_path)]
    assert run.main(argv) == 0
    res = json.loads((tmp_path / "results.json").read_text())
    got = {(r["layer"], r["outliers"]) for r in res["summary"]}
    assert got == {("sinkhorn", 0), ("linsat", 0), ("exact", 0), ("sinkhorn", 2), ("exact", 2)}
    for r in res["summary"]:
        assert 0.0 <= r["hungarian_f1"]["mean"] <= 1.0
        if r["layer"] == "exact":
            assert r["max_violation"] <= 1e-6  # recomputed from the layer's outputs
            assert r["paired_diff_vs"] == "sinkhorn" if r["outliers"] else r["paired_diff_vs"] in ("sinkhorn", "linsat")
    assert (tmp_path / "matches.png").stat().st_size > 0 and (tmp_path / "results.md").exists()
    # every trained model is a record; a rerun resumes from them instead of training again
    records = sorted((tmp_path / "records").glob("*.json"))
    assert len(records) == 5 and not list((tmp_path / "records").glob("*.ckpt"))
    stamps = [p.stat().st_mtime_ns for p in records]
    assert run.main(argv) == 0
    assert [p.stat().st_mtime_ns for p in records] == stamps


def test_training_resumes_from_a_checkpoint_exactly(ds, tmp_path):
    sampler = data.PairSampler(ds, ds.split("train"), 0)
    full = run.build("exact", {"scale": 0.1}, 10, 0, ds.features.shape[2])
    run.train(full, sampler, 6, seed=0, ckpt=None, desc="full")
    ckpt = tmp_path / "c.ckpt"
    part = run.build("exact", {"scale": 0.1}, 10, 0, ds.features.shape[2])
    run.CKPT_EVERY, saved = 3, run.CKPT_EVERY
    try:
        run.train(part, sampler, 3, seed=0, ckpt=ckpt, desc="first half")  # "killed" after 3 steps
        resumed = run.build("exact", {"scale": 0.1}, 10, 0, ds.features.shape[2])
        run.train(resumed, sampler, 6, seed=0, ckpt=ckpt, desc="resumed")
    finally:
        run.CKPT_EVERY = saved
    for a, b in zip(full.parameters(), resumed.parameters()):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
