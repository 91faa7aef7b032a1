"""``polyproj`` command line: ``polyproj portfolio`` runs the portfolio experiment (the main
job), ``polyproj graph-matching`` the Willow keypoint-matching experiment, ``polyproj sorting``
the handwritten-number sorting experiment, ``polyproj hyperconnections`` the hyper-connection
language-model experiment, ``polyproj demo`` trains a small network with a projection layer onto a random polyhedron."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .nn import Projection
from .project import project
from .sets import Polyhedron


def _demo_problem(seed: int, n_in: int = 8, n_out: int = 10, m: int = 24, p: int = 2, samples: int = 2048):
    """A random polyhedron in ℝ^10 and a teacher whose outputs are projected onto it, so every
    target lies in P and many lie on its boundary (active constraints)."""
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(m, n_out, generator=g, dtype=torch.float64)
    B = torch.randn(p, n_out, generator=g, dtype=torch.float64)
    y0 = 0.1 * torch.randn(n_out, generator=g, dtype=torch.float64)
    a = A @ y0 + torch.rand(m, generator=g, dtype=torch.float64) + 0.2
    b = B @ y0
    P = Polyhedron(A=A, a=a, B=B, b=b)
    U = torch.randn(samples, n_in, generator=g, dtype=torch.float64)
    W1 = torch.randn(n_in, 32, generator=g, dtype=torch.float64)
    W2 = torch.randn(32, n_out, generator=g, dtype=torch.float64) / 2
    T = project(torch.tanh(U @ W1) @ W2, P)
    return P, U.float(), T.float()


def demo(args) -> int:
    torch.manual_seed(args.seed)
    P, U, T = _demo_problem(args.seed)
    n_train = int(0.8 * len(U))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ckpt_path = out / "demo_checkpoint.pt"

    def mlp():
        return torch.nn.Sequential(torch.nn.Linear(U.shape[1], 64), torch.nn.Tanh(), torch.nn.Linear(64, 64),
                                   torch.nn.Tanh(), torch.nn.Linear(64, T.shape[1]))

    models = {"projected": torch.nn.Sequential(mlp(), Projection(P)), "unconstrained": mlp()}
    opts = {k: torch.optim.Adam(mdl.parameters(), lr=args.lr) for k, mdl in models.items()}
    history, start = [], 0
    if ckpt_path.exists() and not args.restart:
        ckpt = torch.load(ckpt_path, weights_only=False)
        for k in models:
            models[k].load_state_dict(ckpt["models"][k])
            opts[k].load_state_dict(ckpt["opts"][k])
        history, start = ckpt["history"], ckpt["epoch"]
        print(f"resuming from {ckpt_path} at epoch {start}")
    gen = torch.Generator().manual_seed(args.seed + 1)
    bar = tqdm(range(start, args.epochs), desc="demo", initial=start, total=args.epochs)
    for epoch in bar:
        perm = torch.randperm(n_train, generator=gen)
        for k, mdl in models.items():
            mdl.train()
            for i in range(0, n_train, args.batch_size):
                idx = perm[i:i + args.batch_size]
                loss = torch.nn.functional.mse_loss(mdl(U[idx]), T[idx])
                opts[k].zero_grad()
                loss.backward()
                opts[k].step()
        row = {"epoch": epoch + 1}
        with torch.no_grad():
            for k, mdl in models.items():
                pred = mdl(U[n_train:])
                row[f"{k}_test_mse"] = float(torch.nn.functional.mse_loss(pred, T[n_train:]))
                row[f"{k}_max_violation"] = float(P.violation(pred.double()).max())
        history.append(row)
        torch.save({"models": {k: m.state_dict() for k, m in models.items()},
                    "opts": {k: o.state_dict() for k, o in opts.items()}, "history": history, "epoch": epoch + 1}, ckpt_path)
        bar.write(f"epoch {epoch + 1:3d}  projected: mse {row['projected_test_mse']:.4f} max violation "
                  f"{row['projected_max_violation']:.1e}   unconstrained: mse {row['unconstrained_test_mse']:.4f} "
                  f"max violation {row['unconstrained_max_violation']:.1e}")
    (out / "demo.json").write_text(json.dumps(history, indent=2))
    _plot_demo(history, out / "demo.png")
    last = history[-1]
    print(f"\nfinal test MSE: projection layer {last['projected_test_mse']:.4f} "
          f"(max constraint violation {last['projected_max_violation']:.1e}); "
          f"unconstrained MLP {last['unconstrained_test_mse']:.4f} (max violation {last['unconstrained_max_violation']:.1e})")
    print(f"wrote {out / 'demo.json'} and {out / 'demo.png'}")
    return 0


def _plot_demo(history, path):
    try:
        import matplotlib
    except ImportError:
        print(f"matplotlib is not installed (pip install 'polyproj[demo]'); skipping {path}")
        return

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ep = [r["epoch"] for r in history]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    for k in ("projected", "unconstrained"):
        axes[0].plot(ep, [r[f"{k}_test_mse"] for r in history], label=k)
        axes[1].plot(ep, [max(r[f"{k}_max_violation"], 1e-17) for r in history], label=k)
    axes[0].set(xlabel="epoch", ylabel="test MSE", yscale="log")
    axes[1].set(xlabel="epoch", ylabel="max constraint violation", yscale="log")
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def _experiments_dir() -> Path:
    """The ``experiments/`` folder of the source checkout this package runs from."""
    root = Path(__file__).resolve().parents[2] / "experiments"
    if not (root / "portfolio").is_dir():
        raise SystemExit("the portfolio experiment lives in the source repository (experiments/portfolio); "
                         "run polyproj from an editable install of a checkout (pip install -e .)")
    return root


def portfolio(argv) -> int:
    sys.path.insert(0, str(_experiments_dir()))
    from portfolio.run import main as run_portfolio

    return run_portfolio(argv)


def graph_matching(argv) -> int:
    sys.path.insert(0, str(_experiments_dir()))
    from graph_matching.run import main as run_graph_matching

    return run_graph_matching(argv)


def sorting(argv) -> int:
    sys.path.insert(0, str(_experiments_dir()))
    from digit_sorting.run import main as run_sorting

    return run_sorting(argv)


def hyperconnections(argv) -> int:
    sys.path.insert(0, str(_experiments_dir()))
    from hyperconnections.run import main as run_hyperconnections

    return run_hyperconnections(argv)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["portfolio"]:
        # the experiment owns its arguments (``polyproj portfolio --help``)
        return portfolio(argv[1:])
    if argv[:1] == ["graph-matching"]:
        return graph_matching(argv[1:])
    if argv[:1] == ["sorting"]:
        return sorting(argv[1:])
    if argv[:1] == ["hyperconnections"]:
        return hyperconnections(argv[1:])
    parser = argparse.ArgumentParser(prog="polyproj", description="polyproj command line")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("portfolio", help="end-to-end portfolio allocation on S&P 500 data (see polyproj portfolio --help)")
    sub.add_parser("graph-matching", help="deep graph matching on Willow-ObjectClass (see polyproj graph-matching --help)")
    sub.add_parser("sorting", help="sorting handwritten numbers with permutation layers (see polyproj sorting --help)")
    sub.add_parser("hyperconnections", help="doubly stochastic hyper-connections in a byte-level language model, "
                                            "single-process or under torchrun (see polyproj hyperconnections --help)")
    d = sub.add_parser("demo", help="train an MLP with a projection layer onto a random polyhedron")
    d.add_argument("--epochs", type=int, default=15)
    d.add_argument("--batch-size", type=int, default=128)
    d.add_argument("--lr", type=float, default=3e-3)
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--out", default="runs/demo", help="folder for the checkpoint, JSON and PNG")
    d.add_argument("--restart", action="store_true", help="ignore an existing checkpoint")
    d.set_defaults(func=demo)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
