r"""Train, evaluate and report the portfolio experiment.

Every method uses the same network (an MLP on the per-stock features of :mod:`.data`, 200 → 64
→ 20 scores), the same initialisation, optimizer (``--optimizer``: Adam with lr 1e-3 by default,
or the two-timescale Adam of :mod:`polyproj.optim`), batch (64 rebalancing dates) and number of
epochs; only the output layer differs.  Loss: the negative Sharpe ratio of the
batch's next-week portfolio returns, ``−mean(r)/std(r)`` with ``r = Σ_i w_i R_i``.

For mandate 4 the previous weights enter the constraint.  During training, where dates are
drawn at random, ``w_prev`` is the network's own mandate-3 portfolio at the previous
rebalancing date (detached); at evaluation the test period is rolled forward week by week
with the actual previous weights (starting from equal weights).

Usage::

    polyproj portfolio --quick             # a minute: polyproj, softmax, penalty, skfolio baselines
    polyproj portfolio --out runs/portfolio --peers    # full table incl. LinSATNet, cvxpylayers, qpth

(``python -m portfolio.run`` from ``experiments/`` does the same.)  Writes ``results.json``,
``results.md`` (the table), ``wealth.png`` and ``weights.png``; each trained model is
checkpointed every epoch and a killed run resumes.
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

from . import baselines, data
from .layers import FACTORIES
from .mandates import Mandate

WEEKS_PER_YEAR = 52
PENALTY = 100.0

METHODS = {  # mandate level → trained methods (peers marked by *)
    1: ["polyproj", "softmax", "LinSATNet*", "cvxpylayers*", "qpth*", "penalty + repair"],
    2: ["polyproj", "LinSATNet*", "cvxpylayers*", "qpth*", "penalty + repair"],
    3: ["polyproj", "LinSATNet*", "cvxpylayers*", "qpth*", "penalty + repair"],
    4: ["polyproj", "cvxpylayers*", "qpth*"],
}


def make_model(n_features: int, n: int, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(n_features, 64), torch.nn.ReLU(),
                               torch.nn.Linear(64, n)).double()


def negative_sharpe(w: torch.Tensor, R: torch.Tensor) -> torch.Tensor:
    r = (w * R).sum(-1)
    return -r.mean() / (r.std() + 1e-8)


def penalty(w: torch.Tensor, mandate: Mandate) -> torch.Tensor:
    A, a = torch.tensor(mandate.A), torch.tensor(mandate.a)
    B, b = torch.tensor(mandate.B), torch.tensor(mandate.b)
    return ((w @ A.T - a).clamp_min(0).square().sum(-1) + (w @ B.T - b).square().sum(-1)).mean()


class Method:
    """A trained network plus its output layer for one mandate."""

    def __init__(self, name: str, mandate: Mandate, ds: data.Dataset, seed: int):
        self.name, self.mandate = name, mandate
        n, F = ds.features.shape[1:]
        self.model = make_model(n * F, n, seed)
        self.penalised = name == "penalty + repair"
        key = name.rstrip("*")
        self.layer = FACTORIES["polyproj"](mandate) if self.penalised else FACTORIES[key](mandate)
        self.m3 = FACTORIES["polyproj"](Mandate(3, mandate.tickers)) if mandate.level == 4 else None

    def weights(self, X: torch.Tensor, w_prev=None, training=False) -> torch.Tensor:
        z = self.model(X)
        if self.penalised and training:
            return z  # unconstrained during training; repaired by projection at inference
        return self.layer(z, w_prev)

    def proxy_previous(self, X_prev: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.m3(self.model(X_prev))


def make_optimizer(kind: str, params):
    """``adam``: ``torch.optim.Adam(lr=1e-3)``; ``two-timescale``: :class:`polyproj.optim.TwoTimescaleAdam`
    with diminishing schedules starting from the same step (inside its convergence theorem)."""
    if kind == "adam":
        return torch.optim.Adam(params, lr=1e-3)
    from polyproj.optim import PowerDecay, TwoTimescaleAdam

    return TwoTimescaleAdam(params, lr=PowerDecay(1e-3, 0.75, warmup=100), momentum_rate=PowerDecay(0.1, 0.5, warmup=100),
                            second_moment_rate=PowerDecay(0.1, 0.5, warmup=100))


def train(method: Method, ds: data.Dataset, idx: np.ndarray, args, ckpt: Path) -> dict:
    opt = make_optimizer(args.optimizer, method.model.parameters())
    state = {"epoch": 0, "epoch_times": [], "losses": []}
    if ckpt.exists():
        saved = torch.load(ckpt, weights_only=False)
        method.model.load_state_dict(saved["model"])
        opt.load_state_dict(saved["opt"])
        state = saved["state"]
    X, R = torch.tensor(ds.features), torch.tensor(ds.targets)
    g = torch.Generator()
    for epoch in tqdm(range(state["epoch"], args.epochs), desc=f"{method.name} [{method.mandate.name}]", leave=False):
        g.manual_seed(args.seed * 1000 + epoch)
        order = idx[torch.randperm(len(idx), generator=g).numpy()]
        start, losses = time.perf_counter(), []
        for i in range(0, len(order), args.batch):
            b = order[i:i + args.batch]
            if len(b) < 8:
                continue
            w_prev = method.proxy_previous(X[b - 1]) if method.mandate.level == 4 else None
            w = method.weights(X[b], w_prev, training=True)
            loss = negative_sharpe(w, R[b])
            if method.penalised:
                loss = loss + PENALTY * penalty(w, method.mandate)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        state["epoch_times"].append(time.perf_counter() - start)
        state["losses"].append(float(np.mean(losses)))
        state["epoch"] = epoch + 1
        torch.save({"model": method.model.state_dict(), "opt": opt.state_dict(), "state": state}, ckpt)
    return state


def rollout(weight_fn, mandate: Mandate, idx: np.ndarray, n: int) -> np.ndarray:
    """Weights at every date of ``idx`` in order; mandate 4 is rolled forward one week at a time
    with the actual previous weights (from equal weights)."""
    if mandate.level < 4:
        return weight_fn(idx, None)
    w_prev = np.full(n, 1.0 / n)
    out = []
    for k in range(len(idx)):
        w_prev = weight_fn(idx[k:k + 1], w_prev[None])[0]
        out.append(w_prev)
    return np.stack(out)


def metrics(W: np.ndarray, R: np.ndarray, mandate: Mandate) -> dict:
    r = (W * R).sum(-1)
    wealth = np.cumprod(1 + r)
    drawdown = 1 - wealth / np.maximum.accumulate(np.r_[1.0, wealth])[1:]
    prev = np.vstack([np.full(W.shape[1], 1.0 / W.shape[1]), W[:-1]])
    viol = mandate.violation(W, prev if mandate.level == 4 else None)
    return {
        "annual_return": float(r.mean() * WEEKS_PER_YEAR), "annual_volatility": float(r.std() * np.sqrt(WEEKS_PER_YEAR)),
        "sharpe": float(r.mean() / r.std() * np.sqrt(WEEKS_PER_YEAR)), "max_drawdown": float(drawdown.max()),
        "turnover": float(np.abs(np.diff(W, axis=0)).sum(1).mean()), "max_violation": float(viol.max()),
        "wealth": wealth.tolist(),
    }


def evaluate_trained(method: Method, ds, idx) -> tuple[np.ndarray, float]:
    X = torch.tensor(ds.features)

    def weight_fn(rows, w_prev):
        with torch.no_grad():
            wp = None if w_prev is None else torch.tensor(w_prev)
            return method.weights(X[rows], wp).numpy()

    start = time.perf_counter()
    W = rollout(weight_fn, method.mandate, idx, ds.targets.shape[1])
    return W, time.perf_counter() - start


def evaluate_baseline(name, mandate, ds, idx) -> tuple[np.ndarray, float]:
    fn = baselines.BASELINES[name]

    def weight_fn(rows, w_prev):
        prev = None if w_prev is None else w_prev[0]
        return np.stack([fn(ds.returns, ds.rebalance[i], mandate, prev) for i in rows])

    start = time.perf_counter()
    W = rollout(weight_fn, mandate, idx, ds.targets.shape[1])
    return W, time.perf_counter() - start


def run(args) -> dict:
    out = Path(args.out)
    (out / "checkpoints").mkdir(parents=True, exist_ok=True)
    ds = data.build()
    train_idx, valid_idx, test_idx = (ds.split(s) for s in ("train", "valid", "test"))
    if args.quick:
        train_idx = train_idx[-520:]  # the last ten years before the validation period
    rows, weights_log = [], {}
    levels = [int(v) for v in args.mandates.split(",")]
    for level in levels:
        mandate = Mandate(level, ds.tickers)
        for name in METHODS[level]:
            peer = name.endswith("*")
            if (peer and not args.peers) or (args.quick and name == "penalty + repair" and level != 3):
                continue
            label = name.rstrip("*")
            try:
                method = Method(name, mandate, ds, args.seed)
            except ImportError as err:
                rows.append({"mandate": mandate.name, "method": label, "skipped": f"not installed: {err.name}"})
                continue
            tag = f"m{level}_{label}_{args.optimizer}".replace(" ", "_").replace("+", "plus")
            state = train(method, ds, train_idx, args, out / "checkpoints" / f"{tag}.pt")
            W, t_inf = evaluate_trained(method, ds, test_idx)
            rows.append({"mandate": mandate.name, "method": label, **metrics(W, ds.targets[test_idx], mandate),
                         "train_time_per_epoch_s": float(np.mean(state["epoch_times"])) if state["epoch_times"] else None,
                         "inference_time_s": t_inf})
            weights_log[(level, label)] = W
        for name, allowed in baselines.LEVELS.items():
            if level not in allowed:
                continue
            W, t_inf = evaluate_baseline(name, mandate, ds, test_idx)
            rows.append({"mandate": mandate.name, "method": f"{name} (skfolio)" if name != "minimum variance" or level < 4
                         else "minimum variance (cvxpy)", **metrics(W, ds.targets[test_idx], mandate),
                         "train_time_per_epoch_s": None, "inference_time_s": t_inf})
            weights_log[(level, name)] = W
    test_dates = [str(d) for d in ds.dates[ds.rebalance[test_idx]]]
    result = {"config": {k: v for k, v in vars(args).items()}, "test_period": [test_dates[0], test_dates[-1]],
              "n_train_dates": int(len(train_idx)), "n_test_dates": int(len(test_idx)), "rows": rows,
              "command": "polyproj portfolio " + " ".join(sys.argv[2:] if sys.argv[1:2] == ["portfolio"] else sys.argv[1:])}
    (out / "results.json").write_text(json.dumps(result, indent=1))
    table = markdown_table(rows)
    (out / "results.md").write_text(table + "\n")
    plot(rows, weights_log, ds, test_idx, out)
    print(table)
    return result


def markdown_table(rows) -> str:
    lines = ["| mandate | method | ann. return | ann. vol | Sharpe | max DD | turnover/wk | max violation | train s/epoch | inference s |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "skipped" in r:
            lines.append(f"| {r['mandate']} | {r['method']} | — | — | — | — | — | — | {r['skipped']} | — |")
            continue
        tr = f"{r['train_time_per_epoch_s']:.2f}" if r["train_time_per_epoch_s"] is not None else "—"
        lines.append(f"| {r['mandate']} | {r['method']} | {100 * r['annual_return']:.1f}% | {100 * r['annual_volatility']:.1f}% | "
                     f"{r['sharpe']:.2f} | {100 * r['max_drawdown']:.1f}% | {r['turnover']:.3f} | {r['max_violation']:.1e} | "
                     f"{tr} | {r['inference_time_s']:.2f} |")
    return "\n".join(lines)


def plot(rows, weights_log, ds, test_idx, out: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # pragma: no cover - optional
        return
    dates = ds.dates[ds.rebalance[test_idx]]
    mandates = list(dict.fromkeys(r["mandate"] for r in rows))
    fig, axes = plt.subplots(1, len(mandates), figsize=(5 * len(mandates), 3.8), squeeze=False)
    for ax, m in zip(axes[0], mandates):
        for r in rows:
            if r["mandate"] == m and "wealth" in r:
                ax.plot(dates, r["wealth"], label=r["method"], linewidth=1.2)
        ax.set_title(f"mandate: {m}")
        ax.set_ylabel("wealth (test period)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        ax.tick_params(axis="x", rotation=30)
    fig.tight_layout()
    fig.savefig(out / "wealth.png", dpi=110)
    plt.close(fig)
    key = next((k for k in weights_log if k[1] == "polyproj" and k[0] == 3), next(iter(weights_log), None))
    if key is not None:
        fig, ax = plt.subplots(figsize=(9, 3.8))
        ax.stackplot(dates, weights_log[key].T, labels=ds.tickers)
        ax.set_title(f"{key[1]} weights over the test period (mandate {key[0]})")
        ax.set_ylim(0, 1)
        ax.legend(fontsize=6, ncol=2, loc="center left", bbox_to_anchor=(1.0, 0.5))
        fig.tight_layout()
        fig.savefig(out / "weights.png", dpi=110)
        plt.close(fig)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="polyproj portfolio", description="Predictive portfolio allocation on S&P 500 data "
                                "(skfolio) with mandate-constrained output layers.")
    p.add_argument("--out", default="runs/portfolio", help="output folder (results.json/.md, PNGs, checkpoints)")
    p.add_argument("--quick", action="store_true", help="about a minute: 10 training years, 3 epochs, no peers")
    p.add_argument("--peers", action="store_true", help="also train LinSATNet, cvxpylayers and qpth (pip install '.[bench]')")
    p.add_argument("--epochs", type=int, default=None, help="epochs per method (default 10, quick 3)")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--optimizer", choices=("adam", "two-timescale"), default="adam",
                   help="torch Adam (lr 1e-3) or polyproj.optim.TwoTimescaleAdam, for every method")
    p.add_argument("--mandates", default="1,2,3,4", help="comma-separated mandate levels")
    p.add_argument("--seed", type=int, default=0)
    return p


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    if args.epochs is None:
        args.epochs = 3 if args.quick else 10
    if any(v.strip() not in "1234" or not v.strip() for v in args.mandates.split(",")):
        raise SystemExit(f"--mandates must list levels among 1,2,3,4, got {args.mandates!r}")
    run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
