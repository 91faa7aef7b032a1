"""What the permutation-learning experiments (graph matching, number sorting) share: the two
losses the protocol allows, the checkpointed training loop, atomic result files, and the seed
statistics of their tables."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch

BCE_EPS = 1e-3


def bce_loss(X: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy of ``target`` against ``ε + (1 − 2ε) X`` (ε = 1e-3: finite at the exact
    zeros and ones of a projection), summed over entries, averaged over the batch."""
    P = BCE_EPS + (1 - 2 * BCE_EPS) * X
    return torch.nn.functional.binary_cross_entropy(P, target, reduction="sum") / X.shape[0]


def frobenius_loss(X: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``‖X − target‖²_F`` averaged over the batch."""
    return (X - target).square().sum() / X.shape[0]


LOSSES = {"bce": bce_loss, "frobenius": frobenius_loss}


def train_steps(model: torch.nn.Module, steps: int, ckpt: Path | None, batch, loss_of, *, lr: float,
                every: int, desc: str = "", progress: bool = False) -> dict:
    """Adam on ``loss_of(batch(step))`` for ``step`` in ``[start, steps)``.  ``batch`` builds the
    step's data (untimed; a function of the step only, so a resumed run continues exactly), the
    forward, backward and update are timed.  The model, optimizer, step and logs are saved to
    ``ckpt`` (write, then rename) every ``every`` steps and at the end, and resumed from it.
    Raises FloatingPointError on a non-finite loss.  Returns ``{"step_ms", "losses"}``."""
    from tqdm.auto import tqdm

    opt = torch.optim.Adam(model.parameters(), lr=lr)
    start, step_ms, losses = 0, [], []
    if ckpt is not None and ckpt.exists():
        state = torch.load(ckpt, weights_only=False)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        start, step_ms, losses = state["step"], state["step_ms"], state["losses"]
    for step in tqdm(range(start, steps), desc=desc, initial=start, total=steps, leave=False, disable=not progress):
        b = batch(step)
        t0 = time.perf_counter()
        loss = loss_of(b)
        opt.zero_grad()
        loss.backward()
        opt.step()
        step_ms.append(1e3 * (time.perf_counter() - t0))
        losses.append(loss.item())
        if not np.isfinite(losses[-1]):
            raise FloatingPointError(f"{desc}: loss is {losses[-1]} at step {step}")
        if ckpt is not None and ((step + 1) % every == 0 or step + 1 == steps):
            tmp = ckpt.with_suffix(".tmp")
            torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "step": step + 1,
                        "step_ms": step_ms, "losses": losses}, tmp)
            tmp.replace(ckpt)
    return {"step_ms": step_ms, "losses": losses}


def record_path(out: Path, kind: str, layer: str, hp: dict, where: str, seed: int, steps: int, loss_name: str) -> Path:
    """The record file of one trained model (``where`` names the task's setting, e.g. ``R4``)."""
    tag = "_".join(f"{k}{v}" for k, v in sorted(hp.items())) + ("" if loss_name == "bce" else f"_{loss_name}")
    return out / "records" / f"{kind}_{layer}_{tag}_{where}_seed{seed}_steps{steps}.json"


def write_record(path: Path, rec: dict) -> None:
    """Write a record atomically and drop the checkpoint it came from."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(rec))
    tmp.replace(path)
    path.with_suffix(".ckpt").unlink(missing_ok=True)


def save_outputs(path: Path, **arrays) -> None:
    """Save test outputs (``.npz``) atomically."""
    tmp = path.with_suffix(".tmp.npz")
    np.savez_compressed(tmp, **arrays)
    tmp.replace(path)


def mean_std(values) -> dict:
    return {"mean": float(np.mean(values)), "std": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0}


def paired_difference(values: dict, reference: dict) -> dict:
    """Mean ± std of ``values[seed] − reference[seed]`` over the seeds both have, with the
    per-seed differences."""
    diffs = [values[s] - reference[s] for s in sorted(values) if s in reference]
    return mean_std(diffs) | {"per_seed": diffs}


def format_paired(row: dict) -> str:
    """The table cell of a row's paired difference (``—`` for the reference itself)."""
    if "paired_diff" not in row:
        return "—"
    d = row["paired_diff"]
    signs = "".join("+" if x > 0 else ("−" if x < 0 else "0") for x in d["per_seed"])
    return f"{d['mean']:+.3f} ± {d['std']:.3f} vs {row['paired_diff_vs']} ({signs})"


def format_hp(hp: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in hp.items())
