r"""Sorting handwritten numbers: a shared CNN scores each 3-digit number, a permutation layer
turns the n scores into a soft permutation matrix, trained against the true sorting permutation.

Every layer reads the same matrix, NeuralSort's (Grover et al., ICLR 2019)

.. math:: M_{ij} = (n + 1 − 2i)\,s_j − \textstyle\sum_k |s_j − s_k| \qquad (i: \text{position},\ j: \text{item}),

whose row-wise argmax is the sorting permutation of ``s``, and maps it to a soft permutation:

- ``neuralsort``: row-wise ``softmax(M/τ)`` (unimodal row-stochastic, NeuralSort);
- ``sinkhorn``: log-domain Sinkhorn of ``M/τ``, 20 iterations;
- ``gumbel_sinkhorn``: the same with Gumbel noise added to ``M/τ`` during training (Mena et al.,
  ICLR 2018);
- ``linsat``: LinSATNet with the Birkhoff constraints, temperature τ, 100 iterations;
- ``exact``: polyproj's Euclidean projection of ``scale · M`` onto the Birkhoff polytope.

Shared: the CNN (two 3×3 convolutions, max-pool, two linear layers) and its initialisation per
seed, Adam (lr 1e-3), batch 32 sequences, :data:`STEPS` steps, the same sequences per step, the
loss (binary cross-entropy against ``ε + (1 − 2ε) P̂``, ε = 1e-3) and the decode (Hungarian on
P̂).  Metrics on 1000 fixed test sequences per n: exact-permutation accuracy (all n positions
right) and element-wise accuracy (share of positions right).

Usage::

    polyproj sorting tune    --out runs/sorting        # τ / scale per layer, on validation images, n = 5
    polyproj sorting compare --out runs/sorting        # n ∈ {3, 5, 9, 15}, 3 seeds, test images
    polyproj sorting compare --quick --out runs/sorting-quick
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch

import polyproj as pp

from experiment_tools import (LOSSES, format_hp, format_paired, mean_std, paired_difference, record_path,
                              save_outputs, train_steps, write_record)

from . import data

LAYERS = ("neuralsort", "sinkhorn", "gumbel_sinkhorn", "linsat", "exact")
GRIDS = {
    "neuralsort": [{"tau": t} for t in (0.3, 1.0, 3.0)],
    "sinkhorn": [{"tau": t} for t in (0.3, 1.0, 3.0)],
    "gumbel_sinkhorn": [{"tau": t} for t in (0.3, 1.0, 3.0)],
    "linsat": [{"tau": t} for t in (0.3, 1.0, 3.0)],
    "exact": [{"scale": s} for s in (0.01, 0.03, 0.1, 0.3, 1.0, 3.0)],
}
STEPS = 1000
BATCH = 32
LR = 1e-3
TEST_SEQUENCES = 1000
SINKHORN_ITERS = 20
LINSAT_ITERS = 100


def neuralsort_matrix(s: torch.Tensor) -> torch.Tensor:
    """M (B, n, n) from scores s (B, n): row i (position) peaks at the item of rank i."""
    n = s.shape[1]
    A = (s[:, :, None] - s[:, None, :]).abs().sum(-1)  # (B, n): Σ_k |s_j − s_k|
    i = torch.arange(1, n + 1, dtype=s.dtype, device=s.device)
    return (n + 1 - 2 * i)[None, :, None] * s[:, None, :] - A[:, None, :]


def log_sinkhorn(logits: torch.Tensor, iters: int) -> torch.Tensor:
    for _ in range(iters):
        logits = logits - logits.logsumexp(-1, keepdim=True)
        logits = logits - logits.logsumexp(-2, keepdim=True)
    return logits.exp()


class PermutationLayer(torch.nn.Module):
    def __init__(self, name: str, n: int, **hp):
        super().__init__()
        if name not in LAYERS:
            raise ValueError(f"layer must be one of {LAYERS}, got {name!r}")
        self.name, self.hp = name, hp
        if name == "linsat":
            from LinSATNet.linsat import init_constraints

            E = torch.cat([torch.kron(torch.eye(n), torch.ones(1, n)), torch.kron(torch.ones(1, n), torch.eye(n))])
            self.constr = init_constraints(n * n, E=E, f=torch.ones(2 * n))
        if name == "exact":
            self.project = pp.Projection(pp.Birkhoff())

    def forward(self, M: torch.Tensor) -> torch.Tensor:
        if self.name == "neuralsort":
            return torch.softmax(M / self.hp["tau"], -1)
        if self.name in ("sinkhorn", "gumbel_sinkhorn"):
            z = M / self.hp["tau"]
            if self.name == "gumbel_sinkhorn" and self.training:
                u = torch.rand_like(z).clamp(1e-10, 1 - 1e-10)
                z = z - torch.log(-torch.log(u))
            return log_sinkhorn(z, SINKHORN_ITERS)
        if self.name == "linsat":
            from LinSATNet import linsat_layer

            B, n, _ = M.shape
            return linsat_layer(M.reshape(B, n * n), constr_dict=self.constr, tau=self.hp["tau"],
                                max_iter=LINSAT_ITERS, no_warning=True).reshape(B, n, n)
        return self.project((self.hp["scale"] * M).double()).float()


class Scorer(torch.nn.Module):
    """A small CNN: (…, 1, 8, 24) images → (…) scores."""

    def __init__(self):
        super().__init__()
        self.net = torch.nn.Sequential(
            torch.nn.Conv2d(1, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(16, 32, 3, padding=1),
            torch.nn.ReLU(), torch.nn.MaxPool2d(2), torch.nn.Flatten(), torch.nn.Linear(32 * 4 * 12, 64),
            torch.nn.ReLU(), torch.nn.Linear(64, 1))

    def forward(self, x):
        lead = x.shape[:-3]
        return self.net(x.reshape(-1, *x.shape[-3:])).reshape(lead)


class Sorter(torch.nn.Module):
    def __init__(self, layer: PermutationLayer, seed: int):
        super().__init__()
        torch.manual_seed(seed)  # the same CNN initialisation for every layer at a seed
        self.scorer, self.layer = Scorer(), layer

    def forward(self, images):
        return self.layer(neuralsort_matrix(self.scorer(images)))


def decode(P_hat: torch.Tensor) -> torch.Tensor:
    """Hungarian decode (B, n, n) → 0/1 permutation matrices."""
    from scipy.optimize import linear_sum_assignment

    out = torch.zeros_like(P_hat)
    for b, M in enumerate(P_hat.detach().double().numpy()):
        r, c = linear_sum_assignment(-M)
        out[b, r, c] = 1.0
    return out


def train(model: Sorter, ds: data.Digits, part: str, n: int, steps: int, seed: int, ckpt: Path | None,
          loss_name: str = "bce") -> dict:
    def batch(step):
        imgs, _, P = data.sequences(ds, part, n, BATCH, np.random.default_rng([seed, n, step]))
        torch.manual_seed(seed * 1_000_003 + step)  # Gumbel noise
        return imgs, P

    return train_steps(model, steps, ckpt, batch, lambda b: LOSSES[loss_name](model(b[0]), b[1]), lr=LR, every=250,
                       desc=f"{model.layer.name} n={n} seed {seed}")


@torch.no_grad()
def evaluate(model: Sorter, ds: data.Digits, part: str, n: int, count: int, save_to: Path | None = None) -> dict:
    model.eval()
    imgs, _, P = data.sequences(ds, part, n, count, np.random.default_rng([4242, n]))
    P_hat = torch.cat([model(imgs[i:i + 250]) for i in range(0, count, 250)])
    model.train()
    if save_to is not None:
        save_outputs(save_to, P_hat=P_hat.numpy())
    D = decode(P_hat)
    right = (D * P).sum(-1)  # (count, n): position i right
    return {"exact_accuracy": float((right.sum(-1) == n).float().mean()), "elementwise_accuracy": float(right.mean()),
            "max_violation": float(pp.Birkhoff().violation(P_hat).max()),
            "exact_01_share": float(((P_hat == 0) | (P_hat == 1)).float().mean())}


def run_one(ds, out: Path, kind: str, layer: str, hp: dict, n: int, seed: int, steps: int, test_count: int,
            loss_name: str = "bce") -> dict:
    path = record_path(out, kind, layer, hp, f"n{n}", seed, steps, loss_name)
    if path.exists():
        return json.loads(path.read_text())
    path.parent.mkdir(parents=True, exist_ok=True)
    model = Sorter(PermutationLayer(layer, n, **hp), seed)
    t0 = time.perf_counter()
    log = train(model, ds, "train" if kind == "tune" else "trainval", n, steps, seed, path.with_suffix(".ckpt"), loss_name)
    train_s = time.perf_counter() - t0
    outputs = path.with_suffix(".outputs.npz") if kind == "compare" else None
    ev = evaluate(model, ds, "valid" if kind == "tune" else "test", n, test_count, save_to=outputs)
    rec = {"kind": kind, "layer": layer, "hp": hp, "n": n, "seed": seed, "steps": steps, "loss": loss_name,
           "train_seconds": train_s,
           "outputs_file": str(outputs) if outputs else None,
           "step_ms_median": statistics.median(log["step_ms"]), "final_loss": float(np.mean(log["losses"][-50:])), **ev}
    write_record(path, rec)
    return rec


def _job(job):
    torch.set_num_threads(1)
    return run_one(*job)


def run_many(jobs: list, args, desc: str) -> list:
    """``run_one(*job)`` for every job, on ``args.workers`` processes (one thread each; records
    make each job resumable on its own)."""
    from tqdm.auto import tqdm

    if args.workers <= 1:
        return [run_one(*j) for j in tqdm(jobs, desc=desc, disable=args.no_progress)]
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(args.workers, mp_context=multiprocessing.get_context("spawn")) as ex:
        futures = [ex.submit(_job, j) for j in jobs]
        return [f.result() for f in tqdm(futures, desc=desc, disable=args.no_progress)]


def tune(args) -> dict:
    ds, out = data.load(), Path(args.out)
    chosen, grid = {}, []
    todo = [(L, hp) for L in args.layers for hp in GRIDS[L]]
    recs = run_many([(ds, out, "tune", L, hp, args.tune_n, args.tune_seed, args.steps, args.test_sequences, args.loss)
                     for L, hp in todo], args, "tune")
    for (L, hp), rec in zip(todo, recs):
        grid.append({"layer": L, "hp": hp, "valid_exact_accuracy": rec["exact_accuracy"],
                     "valid_elementwise_accuracy": rec["elementwise_accuracy"]})
    for L in args.layers:
        best = max((g for g in grid if g["layer"] == L), key=lambda g: (g["valid_elementwise_accuracy"], g["valid_exact_accuracy"]))
        chosen[L] = best["hp"]
    (out / "tuned.json").write_text(json.dumps({"chosen": chosen, "grid": grid, "n": args.tune_n}, indent=2))
    print(json.dumps(chosen))
    return chosen


def compare(args) -> list:
    ds, out = data.load(), Path(args.out)
    tuned = Path(args.tuned) if args.tuned else out / "tuned.json"
    chosen = json.loads(tuned.read_text())["chosen"] if tuned.exists() else {}
    default = {"neuralsort": {"tau": 1.0}, "sinkhorn": {"tau": 1.0}, "gumbel_sinkhorn": {"tau": 1.0},
               "linsat": {"tau": 1.0}, "exact": {"scale": 1.0}}
    todo = [(n, L, s) for n in args.n for L in args.layers for s in args.seeds]
    records = run_many([(ds, out, "compare", L, chosen.get(L, default[L]), n, s, args.steps, args.test_sequences, args.loss)
                        for n, L, s in todo], args, "compare")
    rows = []
    for n in args.n:
        by = {L: sorted([r for r in records if r["n"] == n and r["layer"] == L], key=lambda r: r["seed"]) for L in args.layers}
        base = [L for L in args.layers if L != "exact"]
        best = max(base, key=lambda L: np.mean([r["exact_accuracy"] for r in by[L]])) if base else None
        for L in args.layers:
            rec = by[L]
            row = {"n": n, "layer": L, "hp": rec[0]["hp"], "seeds": [r["seed"] for r in rec]}
            for m in ("exact_accuracy", "elementwise_accuracy", "step_ms_median", "train_seconds"):
                row[m] = mean_std([r[m] for r in rec])
            saved = [np.load(r["outputs_file"])["P_hat"] for r in rec]  # recomputed from the saved outputs
            row["max_violation"] = max(float(pp.Birkhoff().violation(torch.from_numpy(X)).max()) for X in saved)
            row["exact_01_share"] = mean_std([float(((X == 0) | (X == 1)).mean()) for X in saved])
            if best and L != best:
                row["paired_diff_vs"] = best
                row["paired_diff"] = paired_difference({r["seed"]: r["exact_accuracy"] for r in rec},
                                                       {r["seed"]: r["exact_accuracy"] for r in by[best]})
            rows.append(row)
    md = markdown(rows)
    (out / "results.json").write_text(json.dumps({"tuned": chosen, "summary": rows, "records": records,
                                                  "config": {k: v for k, v in vars(args).items() if k != "func"}}, indent=2))
    (out / "results.md").write_text(md)
    print(md)
    plot(rows, args, out / "sorting.png")
    return rows


def markdown(rows) -> str:
    lines = ["| n | layer | hyper-parameters | exact-permutation acc | element-wise acc | Δ exact acc vs best baseline (paired) "
             "| max violation | exact 0/1 | step ms | train s |", "|" + "---|" * 10]
    f = lambda d: f"{d['mean']:.3f} ± {d['std']:.3f}"  # noqa: E731
    for r in rows:
        lines.append(f"| {r['n']} | {r['layer']} | {format_hp(r['hp'])} | {f(r['exact_accuracy'])} | "
                     f"{f(r['elementwise_accuracy'])} | {format_paired(r)} "
                     f"| {r['max_violation']:.1e} | {r['exact_01_share']['mean']:.2f} | {r['step_ms_median']['mean']:.1f} "
                     f"| {r['train_seconds']['mean']:.0f} |")
    return "\n".join(lines) + "\n"


def plot(rows, args, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    for L in args.layers:
        pts = [r for r in rows if r["layer"] == L]
        for ax, m in zip(axes, ("exact_accuracy", "elementwise_accuracy")):
            ax.errorbar([r["n"] for r in pts], [r[m]["mean"] for r in pts], yerr=[r[m]["std"] for r in pts],
                        marker="o", capsize=3, label=L)
    axes[0].set(xlabel="n", ylabel="exact-permutation accuracy")
    axes[1].set(xlabel="n", ylabel="element-wise accuracy")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def parser():
    p = argparse.ArgumentParser(prog="polyproj sorting", description="sorting handwritten numbers with permutation layers")
    p.add_argument("command", choices=["tune", "compare"])
    p.add_argument("--out", default="runs/sorting")
    p.add_argument("--layers", nargs="+", default=list(LAYERS), choices=LAYERS)
    p.add_argument("--n", nargs="+", type=int, default=[3, 5, 9, 15])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=STEPS)
    p.add_argument("--test-sequences", type=int, default=TEST_SEQUENCES)
    p.add_argument("--tune-n", type=int, default=5)
    p.add_argument("--tune-seed", type=int, default=100)
    p.add_argument("--loss", choices=sorted(LOSSES), default="bce",
                   help="the shared training loss (default: BCE against ε + (1 − 2ε) P̂)")
    p.add_argument("--tuned", default=None, help="tuned.json to read (default: <out>/tuned.json)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--workers", type=int, default=2, help="training processes (one thread each)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--quick", action="store_true", help="smoke run: n ∈ {3, 5}, 1 seed, 30 steps, 100 test sequences")
    return p


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quick:
        args.n, args.seeds, args.steps, args.test_sequences = [n for n in args.n if n <= 5] or [3], args.seeds[:1], 30, 100
        args.workers = 1
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (tune if args.command == "tune" else compare)(args)
    return 0
