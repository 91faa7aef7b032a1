r"""Evidence for :class:`polyproj.optim.TwoTimescaleAdam`: stationarity of a network with a
projection layer, against constant-step Adam and SGD, and against a wrong backward.

Problem.  A random polyhedron ``P ⊂ ℝ⁶`` with 16 inequality rows and one equality row; inputs
``u ∈ ℝ⁸`` (128 samples) and targets ``t`` produced by a random teacher and pushed *outside*
``P``, so that at the optimum the projected outputs sit on faces of ``P`` with several active
rows.  Model: ``y = Π_P(MLP(u))`` (8→32→32→6, tanh).  Loss: ``f(θ) = mean ½‖y − t‖²``.

Stationarity measure.  Every ``eval_every`` steps the full-batch HS-Jacobian gradient
``∇f(θ_j)`` is computed (the true one, even for the straight-through run); the measure at
step ``k`` is ``‖ mean of ∇f(θ_j) over the last window of evaluations ‖`` — the norm of an
averaged conservative-gradient element, which tends to 0 at D-critical points even where the
individual gradients jump across kinks of ``Π_P``.

Runs, each in (a) full-batch and (b) mini-batch (32) mode, same seed and initial network:

* ``two-timescale Adam`` — :class:`polyproj.optim.TwoTimescaleAdam`, schedules
  ``η_k = 1e-2/(1 + k/50)^0.75``, ``θ_k = ψ_k = 0.1/(1 + k/50)^0.5`` (inside the theorem);
* ``Adam (constant lr)`` — ``torch.optim.Adam(lr=1e-2)`` (the same initial step);
* ``SGD (constant lr)`` — ``torch.optim.SGD(lr=0.05)``;
* ``two-timescale Adam + identity backward`` — the same optimizer fed with a straight-through
  gradient (the projection's Jacobian replaced by the identity): a wrong backward, which
  should *not* drive the true measure to zero.

Usage::

    python experiments/adam_stationarity.py --out runs/adam            # ~6 min on 2 cores
    python experiments/adam_stationarity.py --out runs/adamq --quick   # smoke run

Writes ``results.json`` and ``adam_stationarity.png``; every run checkpoints every 250 steps
and a killed invocation resumes where it stopped.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

import polyproj as pp
from polyproj.optim import PowerDecay, TwoTimescaleAdam

METHODS = ("two-timescale Adam", "Adam (constant lr)", "SGD (constant lr)", "two-timescale Adam + identity backward")


def make_problem(seed: int = 0, n_in: int = 8, n: int = 6, m: int = 16, p: int = 1, samples: int = 128):
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(m, n, generator=g, dtype=torch.float64)
    B = torch.randn(p, n, generator=g, dtype=torch.float64)
    a = torch.rand(m, generator=g, dtype=torch.float64) + 0.5  # the origin is interior
    P = pp.Polyhedron(A=A, a=a, B=B, b=torch.zeros(p, dtype=torch.float64))
    U = torch.randn(samples, n_in, generator=g, dtype=torch.float64)
    W1 = torch.randn(n_in, 16, generator=g, dtype=torch.float64)
    W2 = torch.randn(16, n, generator=g, dtype=torch.float64)
    T = 3.0 * torch.tanh(U @ W1) @ W2 / 4.0  # mostly outside P: the optimum is on its faces
    return P, U, T


def make_net(seed: int, n_in: int = 8, n: int = 6) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(n_in, 32), torch.nn.Tanh(), torch.nn.Linear(32, 32), torch.nn.Tanh(),
                               torch.nn.Linear(32, n)).double()


def straight_through(z: torch.Tensor, P) -> torch.Tensor:
    """Forward Π_P(z), backward the identity (a wrong Jacobian, for the control run)."""
    return z + (pp.project(z.detach(), P) - z).detach()


def make_optimizer(method: str, params):
    if method.startswith("two-timescale"):
        return TwoTimescaleAdam(params, lr=PowerDecay(1e-2, 0.75, warmup=50),
                                momentum_rate=PowerDecay(0.1, 0.5, warmup=50),
                                second_moment_rate=PowerDecay(0.1, 0.5, warmup=50))
    if method == "Adam (constant lr)":
        return torch.optim.Adam(params, lr=1e-2)
    return torch.optim.SGD(params, lr=0.05)


def full_gradient(net, P, U, T) -> torch.Tensor:
    """The full-batch HS-Jacobian gradient of the loss, flattened."""
    net.zero_grad()
    loss = 0.5 * (pp.project(net(U), P) - T).square().sum(-1).mean()
    loss.backward()
    return torch.cat([prm.grad.flatten() for prm in net.parameters()]), loss.item()


def run_one(method: str, mode: str, args, P, U, T, ckpt: Path, position: int = 0) -> dict:
    net = make_net(args.seed)
    opt = make_optimizer(method, net.parameters())
    state = {"step": 0, "history": [], "grads": []}
    fingerprint = {"seed": args.seed, "batch": args.batch, "eval_every": args.eval_every, "window": args.window,
                   "problem": [tuple(P.A.shape), tuple(U.shape)]}
    if ckpt.exists():
        saved = torch.load(ckpt, weights_only=False)
        if saved.get("fingerprint") != fingerprint:
            raise SystemExit(f"{ckpt} was written by a run with other settings ({saved.get('fingerprint')}); "
                             f"use another --out or delete it")
        net.load_state_dict(saved["net"])
        opt.load_state_dict(saved["opt"])
        state = saved["state"]
    g = torch.Generator()
    wrong = method.endswith("identity backward")
    bar = tqdm(range(state["step"], args.steps), desc=f"{method} [{mode}]", leave=False, position=position)
    # full-batch runs with the true backward measure the gradient they step with
    reuse = mode == "full-batch" and not wrong

    def record(k, grad, loss):
        state["grads"].append(grad)
        window = torch.stack(state["grads"][-args.window:]).mean(0)
        state["history"].append({"step": k, "loss": loss, "grad_norm": float(grad.norm()),
                                 "averaged_grad_norm": float(window.norm())})
        bar.set_postfix(loss=f"{loss:.4f}", avg_grad=f"{float(window.norm()):.1e}")

    for k in bar:
        measure = k % args.eval_every == 0
        if measure and not reuse:
            record(k, *full_gradient(net, P, U, T))
        if mode == "full-batch":
            idx = slice(None)
        else:
            g.manual_seed(args.seed * 100003 + k)
            idx = torch.randint(0, len(U), (args.batch,), generator=g)
        z = net(U[idx])
        y = straight_through(z, P) if wrong else pp.project(z, P)
        loss = 0.5 * (y - T[idx]).square().sum(-1).mean()
        opt.zero_grad()
        loss.backward()
        if measure and reuse:
            record(k, torch.cat([prm.grad.flatten() for prm in net.parameters()]), loss.item())
        opt.step()
        state["step"] = k + 1
        if (k + 1) % 250 == 0 or k + 1 == args.steps:
            state["grads"] = state["grads"][-args.window:]
            torch.save({"net": net.state_dict(), "opt": opt.state_dict(), "state": state, "fingerprint": fingerprint}, ckpt)
    return {"method": method, "mode": mode, "history": state["history"]}


def plot(results: list, path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # pragma: no cover - optional
        return
    modes = sorted({r["mode"] for r in results})
    fig, axes = plt.subplots(1, len(modes), figsize=(6 * len(modes), 4), squeeze=False)
    for ax, mode in zip(axes[0], modes):
        for r in results:
            if r["mode"] != mode:
                continue
            steps = [h["step"] for h in r["history"]]
            ax.semilogy(steps, [h["averaged_grad_norm"] for h in r["history"]], label=r["method"],
                        linestyle="--" if "identity" in r["method"] else "-")
        ax.set_title(f"{mode}: window-averaged HS-Jacobian gradient")
        ax.set_xlabel("step")
        ax.set_ylabel("‖averaged full-batch gradient‖")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def summarise(results: list) -> str:
    rows = ["| mode | method | final loss | final ‖averaged gradient‖ | min over the run |", "|---|---|---|---|---|"]
    for r in results:
        h = r["history"]
        rows.append(f"| {r['mode']} | {r['method']} | {h[-1]['loss']:.5f} | {h[-1]['averaged_grad_norm']:.2e} | "
                    f"{min(x['averaged_grad_norm'] for x in h):.2e} |")
    return "\n".join(rows)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="runs/adam_stationarity")
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps per run (default 800, quick 100)")
    parser.add_argument("--batch", type=int, default=32, help="mini-batch size for the mini-batch runs")
    parser.add_argument("--eval-every", type=int, default=10, help="steps between full-gradient evaluations")
    parser.add_argument("--window", type=int, default=10, help="evaluations averaged by the stationarity measure")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=2, help="runs in parallel (processes)")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    args.steps = args.steps or (100 if args.quick else 800)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    P, U, T = make_problem(args.seed)
    with torch.no_grad():
        _, info = pp.project(T, P, return_info=True)
    start = time.perf_counter()
    jobs = []
    for mode in ("full-batch", "mini-batch"):
        for method in METHODS:
            tag = f"{mode}_{method}".replace(" ", "_").replace("(", "").replace(")", "").replace("+", "plus")
            jobs.append((method, mode, out / f"checkpoint_{tag}.pt"))
    if args.workers > 1:
        # independent runs in parallel processes, one thread each (small problems: the
        # time is per-op overhead, which does not shrink with more threads)
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(args.workers, mp_context=ctx, initializer=torch.set_num_threads, initargs=(1,)) as pool:
            futures = [pool.submit(run_one, method, mode, args, P, U, T, ckpt, 1 + i % args.workers)
                       for i, (method, mode, ckpt) in enumerate(jobs)]
            results = [f.result() for f in tqdm(futures, desc="runs", position=0)]
    else:
        results = [run_one(method, mode, args, P, U, T, ckpt) for method, mode, ckpt in tqdm(jobs, desc="runs")]
    summary = {
        "problem": {"n": P.n, "m": P.m, "p": P.p, "samples": len(U),
                    "mean_active_rows_at_projected_targets": float(info.active.sum(-1).double().mean())},
        "config": vars(args),
        "wall_time_s": time.perf_counter() - start,
        "runs": results,
    }
    (out / "results.json").write_text(json.dumps(summary, indent=1))
    plot(results, out / "adam_stationarity.png")
    print(summarise(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
