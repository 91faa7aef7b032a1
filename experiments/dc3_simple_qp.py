r"""Learning to optimize with an exact projection layer: DC3's "simple QP" family.

Problem family (Donti, Rolnick & Kolter, "DC3: A learning method for optimization with hard
constraints", ICLR 2021, §5.1): for an input ``x ∈ ℝ⁵⁰``

.. math:: \min_{y ∈ ℝ^{100}}\ ½ yᵀQy + pᵀy \quad\text{s.t.}\quad A y = x,\ \ G y ≤ h ,

with ``Q, p, A, G, h`` fixed and ``x`` varying per sample.  The instances are regenerated
exactly as DC3 does (numpy's legacy ``np.random.seed(17)``, then ``Q = diag(random(100))``,
``p = random(100)``, ``A = normal(0, 1, (50, 100))``, ``X = uniform(-1, 1, (10000, 50))``,
``G = normal(0, 1, (50, 100))``, ``h = Σ|G A⁺|`` row-wise) and split as DC3 does (the last
8.33% of the samples for testing, the 8.33% before them for validation).

Model: an MLP maps ``x`` to a raw ``z ∈ ℝ¹⁰⁰``; the last layer projects ``z`` onto the
per-sample polyhedron ``{y : A y = x, G y ≤ h}`` (:class:`polyproj.Polyhedron` with a batched
right-hand side ``b = x``), so every output is feasible to solver precision.  Training is
self-supervised like DC3's: the loss is the objective value of the projected output; the
gradient flows through the HS-Jacobian.  Ground truth for validation and test comes from
Clarabel (interior point, tolerance 1e-10).

Usage::

    python experiments/dc3_simple_qp.py --out runs/dc3            # full run (a few minutes)
    python experiments/dc3_simple_qp.py --out runs/dc3q --quick   # smoke run (seconds)

Writes ``results.json`` (configuration, per-epoch history, test metrics, the figures DC3 and
HardNet publish), ``dc3_simple_qp.png`` and ``checkpoint.pt``; a killed run resumes from its
last completed epoch when started again with the same ``--out``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

import polyproj as pp

# Figures as published (their instances and their runs, not reproduced here).
PUBLISHED = {
    "DC3 (Donti et al. 2021, Table 1, simple QP)": {
        "objective": -13.455, "optimum": -15.047, "max_ineq_violation": 2.1e-4, "test_batch_time_s": 0.017},
    "HardNet (Min & Azizan 2024, nonconvex variant of the family)": {
        "objective": -14.10, "optimum": -14.28, "max_ineq_violation": 0.0},
}


def dc3_simple_instances(num_examples: int = 10000, seed: int = 17) -> dict:
    """DC3's simple-QP data, generated in DC3's order with numpy's legacy global RNG."""
    state = np.random.get_state()
    try:
        np.random.seed(seed)
        Q = np.diag(np.random.random(100))
        p = np.random.random(100)
        A = np.random.normal(loc=0, scale=1.0, size=(50, 100))
        X = np.random.uniform(-1, 1, size=(num_examples, 50))
        G = np.random.normal(loc=0, scale=1.0, size=(50, 100))
        h = np.sum(np.abs(G @ np.linalg.pinv(A)), axis=1)
    finally:
        np.random.set_state(state)
    return {"Q": Q, "p": p, "A": A, "X": X, "G": G, "h": h}


def dc3_split(num: int, valid_frac: float = 0.0833, test_frac: float = 0.0833):
    """DC3's chronological split: train, then validation, then test (the last samples)."""
    train = int(num * (1 - valid_frac - test_frac))
    valid = int(num * valid_frac)
    return slice(0, train), slice(train, train + valid), slice(train + valid, num)


def objective(Y: torch.Tensor, Q: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    return 0.5 * ((Y @ Q) * Y).sum(-1) + Y @ p


def solve_reference(data: dict, X: np.ndarray) -> tuple[np.ndarray, float]:
    """Each QP solved by Clarabel (tolerances 1e-10); returns the solutions and the total time."""
    import clarabel
    import scipy.sparse as sp

    Q, p, A, G, h = (data[k] for k in ("Q", "p", "A", "G", "h"))
    P = sp.csc_matrix(np.triu(Q))
    K = sp.csc_matrix(np.vstack([A, G]))
    settings = clarabel.DefaultSettings()
    settings.verbose = False
    settings.tol_gap_abs = settings.tol_gap_rel = settings.tol_feas = 1e-10
    cones = [clarabel.ZeroConeT(A.shape[0]), clarabel.NonnegativeConeT(G.shape[0])]
    Y = np.empty((len(X), Q.shape[0]))
    start = time.perf_counter()
    for i, x in enumerate(tqdm(X, desc="reference (Clarabel)", leave=False)):
        sol = clarabel.DefaultSolver(P, p, K, np.concatenate([x, h]), cones, settings).solve()
        if str(sol.status) != "Solved":
            raise RuntimeError(f"Clarabel did not solve sample {i}: {sol.status}")
        Y[i] = sol.x
    return Y, time.perf_counter() - start


class ProjectedMLP(torch.nn.Module):
    """x ↦ Π_{P(x)}(MLP(x)) with ``P(x) = {y : A y = x, G y ≤ h}``."""

    def __init__(self, data: dict, hidden: int = 200):
        super().__init__()
        self.net = torch.nn.Sequential(
            torch.nn.Linear(50, hidden), torch.nn.ReLU(),
            torch.nn.Linear(hidden, hidden), torch.nn.ReLU(),
            torch.nn.Linear(hidden, 100),
        ).double()
        for name in ("A", "G", "h"):
            self.register_buffer(name, torch.tensor(data[name]))

    def forward(self, x: torch.Tensor, *, raw: bool = False) -> torch.Tensor:
        z = self.net(x)
        if raw:
            return z
        # one polyhedron per sample: shared A, G, h and the batch of right-hand sides b = x
        P = pp.Polyhedron(A=self.G, a=self.h, B=self.A, b=x, check_feasibility=False)
        return pp.project(z, P)


def evaluate(model, data, X, Y_ref, *, return_gaps: bool = False):
    """Objective, relative optimality gap and violations of the model on ``X``; with
    ``return_gaps`` also the per-sample relative gaps (a tensor)."""
    Q, p = torch.tensor(data["Q"]), torch.tensor(data["p"])
    x = torch.tensor(X)
    with torch.no_grad():
        Y = model(x)
    f, f_ref = objective(Y, Q, p), objective(torch.tensor(Y_ref), Q, p)
    eq = (Y @ torch.tensor(data["A"]).T - x).abs().amax()
    ineq = (Y @ torch.tensor(data["G"]).T - torch.tensor(data["h"])).clamp_min(0).amax()
    gap = (f - f_ref) / f_ref.abs()
    metrics = {
        "objective_mean": float(f.mean()), "optimum_mean": float(f_ref.mean()),
        "rel_gap_mean": float(gap.mean()), "rel_gap_median": float(gap.median()), "rel_gap_max": float(gap.max()),
        "max_eq_violation": float(eq), "max_ineq_violation": float(ineq),
    }
    return (metrics, gap) if return_gaps else metrics


def time_inference(model, X, repeats: int = 5) -> float:
    x = torch.tensor(X)
    times = []
    with torch.no_grad():
        for _ in range(repeats):
            t = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - t)
    return float(np.median(times))


def plot(results: dict, path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # pragma: no cover - optional
        return
    hist = results["history"]
    fig, ax = plt.subplots(1, 2, figsize=(10, 3.8))
    ep = [h["epoch"] for h in hist]
    ax[0].semilogy(ep, [h["valid_rel_gap_mean"] for h in hist], marker="o")
    ax[0].set_xlabel("epoch")
    ax[0].set_ylabel("validation mean relative optimality gap")
    ax[0].set_title("polyproj projection layer, DC3 simple QP")
    ax[0].grid(alpha=0.3)
    gaps = np.array(results["test_rel_gaps"])
    ax[1].hist(gaps, bins=40)
    ax[1].set_xlabel("relative optimality gap (test)")
    ax[1].set_ylabel("samples")
    ax[1].set_title(f"test: mean {gaps.mean():.2e}, max violation {results['test']['max_ineq_violation']:.0e}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run(args) -> dict:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)
    data = dc3_simple_instances()
    tr, va, te = dc3_split(len(data["X"]))
    X_train, X_valid, X_test = data["X"][tr], data["X"][va], data["X"][te]
    if args.quick:
        X_train, X_valid = X_train[:1000], X_valid[:200]
    ref_path = out / "reference.npz"
    if ref_path.exists():
        ref = np.load(ref_path)
        Y_valid, Y_test, ref_time = ref["valid"], ref["test"], float(ref["test_time"])
    else:
        Y_valid, _ = solve_reference(data, X_valid)
        Y_test, ref_time = solve_reference(data, X_test)
        np.savez(ref_path, valid=Y_valid, test=Y_test, test_time=ref_time)

    model = ProjectedMLP(data, hidden=args.hidden)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=args.epochs)
    ckpt_path = out / "checkpoint.pt"
    history, start_epoch = [], 0
    if ckpt_path.exists():
        ckpt = torch.load(ckpt_path, weights_only=False)
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        sched.load_state_dict(ckpt["scheduler"])
        history, start_epoch = ckpt["history"], ckpt["epoch"]
        print(f"resuming from epoch {start_epoch}")
    Q, p = torch.tensor(data["Q"]), torch.tensor(data["p"])
    xt = torch.tensor(X_train)
    g = torch.Generator().manual_seed(args.seed)
    for epoch in range(start_epoch, args.epochs):
        g.manual_seed(args.seed + epoch)
        perm = torch.randperm(len(xt), generator=g)
        model.train()
        t0 = time.perf_counter()
        losses = []
        bar = tqdm(range(0, len(xt), args.batch), desc=f"epoch {epoch + 1}/{args.epochs}", leave=False)
        for i in bar:
            x = xt[perm[i:i + args.batch]]
            loss = objective(model(x), Q, p).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
            bar.set_postfix(objective=f"{losses[-1]:.3f}")
        sched.step()
        model.eval()
        metrics = evaluate(model, data, X_valid, Y_valid)
        history.append({"epoch": epoch + 1, "train_objective": float(np.mean(losses)),
                        "epoch_time_s": time.perf_counter() - t0,
                        **{f"valid_{k}": v for k, v in metrics.items()}})
        print(f"epoch {epoch + 1:3d}: train objective {history[-1]['train_objective']:.4f}  "
              f"valid objective {metrics['objective_mean']:.4f} (optimum {metrics['optimum_mean']:.4f}, "
              f"mean rel. gap {metrics['rel_gap_mean']:.2e})  [{history[-1]['epoch_time_s']:.1f} s]")
        torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                    "history": history, "epoch": epoch + 1}, ckpt_path)

    model.eval()
    test, gaps = evaluate(model, data, X_test, Y_test, return_gaps=True)
    results = {
        "problem": "DC3 simple QP: min ½yᵀQy + pᵀy s.t. Ay = x, Gy ≤ h; n=100, 50 eq, 50 ineq",
        "data": "regenerated with DC3's recipe (np.random.seed(17)); split as DC3 (train/valid/test = "
                f"{tr.stop}/{va.stop - va.start}/{te.stop - te.start})",
        "config": {k: v for k, v in vars(args).items() if k != "func"},
        "history": history,
        "test": test,
        "test_samples": len(X_test),
        "test_batch_time_s": time_inference(model, X_test),
        "reference_solver": "Clarabel (tol 1e-10), one problem at a time",
        "reference_test_time_s": ref_time,
        "test_rel_gaps": gaps.tolist(),
        "published_for_comparison": PUBLISHED,
    }
    (out / "results.json").write_text(json.dumps(results, indent=1))
    plot(results, out / "dc3_simple_qp.png")
    print(table(results))
    return results


def table(results: dict) -> str:
    t = results["test"]
    rows = [
        "| method | mean objective | optimum | mean rel. gap | max eq. viol. | max ineq. viol. | time per test batch |",
        "|---|---|---|---|---|---|---|",
        f"| polyproj (MLP + exact projection), this run | {t['objective_mean']:.3f} | {t['optimum_mean']:.3f} | "
        f"{t['rel_gap_mean']:.2e} | {t['max_eq_violation']:.1e} | {t['max_ineq_violation']:.1e} | "
        f"{results['test_batch_time_s'] * 1e3:.0f} ms ({results['test_samples']} samples) |",
        f"| Clarabel, this run (one QP at a time) | {t['optimum_mean']:.3f} | {t['optimum_mean']:.3f} | 0 | — | — | "
        f"{results['reference_test_time_s'] * 1e3:.0f} ms |",
    ]
    for name, f in PUBLISHED.items():
        timing = f"{f['test_batch_time_s'] * 1e3:.0f} ms" if "test_batch_time_s" in f else "—"
        rows.append(f"| {name}: published, their instances | {f['objective']} | {f['optimum']} | "
                    f"{(f['objective'] - f['optimum']) / abs(f['optimum']):.2e} | — | {f['max_ineq_violation']:.1e} | {timing} |")
    return "\n".join(rows)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/dc3", help="output folder (results.json, PNG, checkpoint)")
    parser.add_argument("--epochs", type=int, default=None, help="training epochs (default 12, quick: 2)")
    parser.add_argument("--batch", type=int, default=200, help="mini-batch size (DC3 uses 200)")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--hidden", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="a short smoke run (1000 training samples)")
    args = parser.parse_args(argv)
    if args.epochs is None:
        args.epochs = 2 if args.quick else 12
    run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
