"""The hyper-connection language-model experiment (experiments/hyperconnections): the corpus
split, the four residual-mix arms and their matched start, the mixing statistics, data-parallel
training under torchrun equal to one process, a killed run that resumes without losing a
step, and a smoke run of ``polyproj hyperconnections compare --quick``."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import polyproj as pp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "experiments"))

from hyperconnections import data, model, train  # noqa: E402

TINY = ["--dim", "16", "--heads", "2", "--blocks", "6", "--context", "16", "--batch", "4", "--eval-every", "2",
        "--eval-windows", "4", "--max-bytes", "50000", "--checkpoint-every", "1"]
ENV = os.environ | {"OMP_NUM_THREADS": "1"}


def test_corpus_split_keeps_files_whole_and_is_reproducible():
    c = data.load(max_bytes=100_000)
    assert c.meta["train_files"] + c.meta["tune_files"] + c.meta["valid_files"] == c.meta["files"]
    assert c.meta["tune_files"] > 0 and c.meta["valid_files"] > 0
    assert len(c.meta["corpus_sha256"]) == 64 and c.train.dtype == torch.uint8
    # the interpreter's own standard library is the fallback when the pinned archive is absent
    d = data.load(path=Path("/nonexistent.tar.gz"), max_bytes=1000)
    assert d.meta["source"].startswith("standard library") and d.meta["python"] == sys.version.split()[0]
    # each file lands on one side only, decided by its path
    assert {data._side(f"pkg/mod{i}.py") for i in range(200)} == {"train", "tune", "valid"}
    assert data._side("json/decoder.py") == data._side("json/decoder.py")


def test_batches_depend_on_seed_and_step_only():
    c = data.load(max_bytes=50_000)
    a = data.train_starts(c.train, 8, 16, 3, 7)
    assert torch.equal(a, data.train_starts(c.train, 8, 16, 3, 7))
    assert not torch.equal(a, data.train_starts(c.train, 8, 16, 3, 8))
    x, y = data.windows(c.train, a, 16)
    assert x.shape == (8, 16) and torch.equal(x[:, 1:], y[:, :-1])


def _mixes(arm, seed=0):
    m = model.ByteGPT(arm, dim=16, heads=2, blocks=6, context=8, seed=seed)
    m.mix.recording = True
    idx = torch.randint(0, 256, (2, 8), generator=torch.Generator().manual_seed(1))
    logits = m(idx)
    return m, m.mix.recorded, logits


def test_mhc_arms_start_at_the_same_interior_doubly_stochastic_matrix():
    _, sink, _ = _mixes("sinkhorn")
    _, exact, _ = _mixes("exact")
    H0 = model.matched_start(4)
    assert bool((H0 > 0.1).all())  # interior: the projection's Jacobian is not zero there
    for Hs, He in zip(sink, exact):
        assert torch.allclose(Hs, He, atol=1e-3)  # the dynamic part is 1e-2-scaled at init
        assert float(pp.Birkhoff().violation(He.double()).max()) < 1e-6


def test_exact_arm_learns_its_residual_mix():
    m, _, logits = _mixes("exact")
    m.mix.recording = False
    logits.square().mean().backward()
    for hc in m.sublayers[1:-1]:  # the first and last get no gradient by symmetry (docstring of model)
        g = hc.static_alpha.grad[:, 1:]
        assert float(g.abs().max()) > 0
        # the HS-Jacobian at an interior point: the gradient has zero row and column sums
        assert torch.allclose(g.sum(0), torch.zeros(4), atol=1e-6) and torch.allclose(g.sum(1), torch.zeros(4), atol=1e-6)


def test_arms_differ_only_in_the_residual_mix():
    ref = dict(model.ByteGPT("sinkhorn", dim=16, heads=2, blocks=6, context=8, seed=4).named_parameters())
    for arm in ("hc", "exact"):
        other = dict(model.ByteGPT(arm, dim=16, heads=2, blocks=6, context=8, seed=4).named_parameters())
        assert ref.keys() == other.keys()
        diff = [k for k in ref if not torch.equal(ref[k], other[k])]
        assert diff == ([] if arm == "hc" else [f"sublayers.{i}.static_alpha" for i in range(12)])
    with pytest.raises(ValueError, match="arm must be one of"):
        model.ByteGPT("softmax")


def test_mixing_statistics():
    perm = torch.eye(4)[[1, 2, 3, 0]]
    stats = train.mixing_statistics([perm.expand(5, 4, 4), torch.full((5, 4, 4), 0.25)])
    assert stats["ds_violation"] == 0 and stats["composite"]["max_abs_gain_minus_1"] < 1e-15
    assert stats["zero_share"] == pytest.approx(0.375)  # 12 of 16 zeros in the first of two
    M = torch.eye(4) * 2
    M[0, 1] = -1
    stats = train.mixing_statistics([M.expand(3, 4, 4)] * 2)
    # forward gain: largest |column sum| (col 1: 1 + 2 = 3); backward: largest |row sum| (row 0: 3)
    assert stats["sublayer"]["forward_gain_worst"] == [3.0, 3.0]
    assert stats["composite"]["forward_gain_worst"][1] == float((M @ M).abs().sum(0).max())
    assert stats["ds_violation"] == 1.0  # row and column sums 2, and the entry −1


def _final_parameters(out: Path) -> dict:
    return torch.load(out / "checkpoint.pt", weights_only=False)["model"]


def _max_diff(a, b):
    return max(float((a[k] - b[k]).abs().max()) for k in a)


@pytest.mark.parametrize("arm, param_tol", [("residual", 1e-6), ("exact", 1e-4)])
def test_two_processes_under_torchrun_match_one_process(tmp_path, arm, param_tol):
    """Global batch 4 on one process vs 2 × 2 under torchrun (gloo), float64.  The plain
    residual arm is float64 end to end and matches to rounding (measured 2e-16).  The
    hyper-connection module computes H_pre, H_res and H_post in float32 whatever the model's
    dtype (``.float()`` in the package), and Adam normalises the static logits' small gradients,
    so float32 rounding that differs with the batch split moves those by ~1e-5 after 3 steps;
    the losses still agree to 1e-6."""
    args = ["--arm", arm, "--steps", "3", "--dtype", "float64", *TINY]
    one = subprocess.run([sys.executable, "-m", "polyproj.cli", "hyperconnections", "train", "--out",
                          str(tmp_path / "one"), *args], env=ENV, capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          "-m", "polyproj.cli", "hyperconnections", "train", "--out", str(tmp_path / "two"), *args],
                         env=ENV, capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr
    assert _max_diff(_final_parameters(tmp_path / "one"), _final_parameters(tmp_path / "two")) <= param_tol
    r1, r2 = (json.loads((tmp_path / k / "record.json").read_text()) for k in ("one", "two"))
    assert r2["world_size"] == 2 and r1["world_size"] == 1
    assert r1["log"]["train_loss"] == pytest.approx(r2["log"]["train_loss"], abs=1e-6)
    assert r1["final_loss"] == pytest.approx(r2["final_loss"], abs=1e-6)


def test_killed_run_resumes_without_losing_a_step(tmp_path):
    args = ["--arm", "exact", "--steps", "6", "--dtype", "float64", *TINY]
    cmd = [sys.executable, "-m", "polyproj.cli", "hyperconnections", "train"]
    assert subprocess.run([*cmd, "--out", str(tmp_path / "whole"), *args], env=ENV, timeout=300).returncode == 0
    # a real SIGTERM once a checkpoint exists: the step in flight completes and is saved
    proc = subprocess.Popen([*cmd, "--out", str(tmp_path / "killed"), *args, "--steps", "400"], env=ENV,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (tmp_path / "killed" / "checkpoint.pt").exists() and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == train.EXIT_STOPPED, err
    state = torch.load(tmp_path / "killed" / "checkpoint.pt", weights_only=False)
    assert 1 <= state["step"] < 400 and len(state["log"]["train_loss"]) == state["step"]
    # an interrupted run of the same length, stopped after step 2, then resumed
    out = tmp_path / "stopped"
    assert subprocess.run([*cmd, "--out", str(out), *args, "--stop-at", "2"], env=ENV, timeout=300).returncode == train.EXIT_STOPPED
    assert torch.load(out / "checkpoint.pt", weights_only=False)["step"] == 2
    assert subprocess.run([*cmd, "--out", str(out), *args], env=ENV, timeout=300).returncode == 0
    assert _max_diff(_final_parameters(tmp_path / "whole"), _final_parameters(out)) == 0
    whole, resumed = (json.loads((p / "record.json").read_text()) for p in (tmp_path / "whole", out))
    assert whole["log"]["train_loss"] == resumed["log"]["train_loss"]
    assert [e["loss"] for e in whole["log"]["evals"]] == [e["loss"] for e in resumed["log"]["evals"]]


def test_batch_must_split_evenly_across_processes(tmp_path):
    with pytest.raises(ValueError, match="--batch"):
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("WORLD_SIZE", "3")
            mp.setattr(torch.distributed, "is_initialized", lambda: True)
            train.main(["--arm", "exact", "--out", str(tmp_path), *TINY])


def test_quick_compare_smoke(tmp_path):
    out = tmp_path / "hc"
    done = subprocess.run([sys.executable, "-m", "polyproj.cli", "hyperconnections", "compare", "--quick", "--out",
                           str(out), "--steps", "4"], env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    res = json.loads((out / "results.json").read_text())
    rows = {r["arm"]: r for r in res["rows"]}
    assert set(rows) == set(model.ARMS)
    assert rows["exact"]["ds_violation"] < 1e-6 and rows["exact"]["composite_gain_dev"] < 1e-5
    assert "ds_violation" not in rows["residual"]
    assert (out / "hyperconnections.png").stat().st_size > 0 and "| exact |" in (out / "results.md").read_text()
    assert res["meta"]["corpus"]["corpus_sha256"]
