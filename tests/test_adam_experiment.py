"""The stationarity experiment (experiments/adam_stationarity.py) runs, writes its outputs and
resumes from its checkpoints."""

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "experiments"))

import adam_stationarity as exp  # noqa: E402


def test_problem_has_active_rows_at_the_optimum_and_straight_through_is_wrong():
    P, U, T = exp.make_problem(0)
    _, info = exp.pp.project(T, P, return_info=True)
    assert float(info.active.sum(-1).double().mean()) >= 2.0  # several active rows per sample
    z = T.clone().requires_grad_(True)
    exp.straight_through(z, P).sum().backward()
    assert torch.equal(z.grad, torch.ones_like(z))  # identity backward, unlike the HS-Jacobian


def test_runs_and_resumes(tmp_path):
    out = tmp_path / "adam"
    assert exp.main(["--out", str(out), "--steps", "4", "--eval-every", "2", "--window", "2", "--workers", "1"]) == 0
    first = json.loads((out / "results.json").read_text())
    assert len(first["runs"]) == 8 and all(len(r["history"]) == 2 for r in first["runs"])
    assert (out / "adam_stationarity.png").exists()
    # a longer run in the same folder continues from the checkpoints (same first entries)
    assert exp.main(["--out", str(out), "--steps", "8", "--eval-every", "2", "--window", "2", "--workers", "2"]) == 0
    second = json.loads((out / "results.json").read_text())
    for a, b in zip(first["runs"], second["runs"]):
        assert len(b["history"]) == 4 and b["history"][:2] == a["history"]
