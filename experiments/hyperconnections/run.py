r"""Exactly doubly stochastic hyper-connections in a byte-level language model: the residual
stream, hyper-connections (HC), mHC with Sinkhorn and mHC with polyproj's exact Birkhoff
projection, on the ``.py`` files of Python's standard library (:mod:`.data`, :mod:`.model`).

Usage::

    polyproj hyperconnections tune    --out runs/hc     # peak learning rate per arm, seed 0, tune split
    polyproj hyperconnections compare --out runs/hc     # every arm × 3 seeds at its tuned rate
    polyproj hyperconnections compare --quick --out runs/hc-quick   # a tiny model, one seed, < 1 min
    polyproj hyperconnections train --arm exact --out DIR          # one run (also under torchrun)

Every run is its own process (``train``, one torch thread; ``--workers`` at a time), writes
``record.json`` and resumes from its checkpoint, so a killed ``tune``/``compare`` continues where
it stopped.  ``compare`` writes ``results.json``, ``results.md`` and ``hyperconnections.png``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

import numpy as np

from experiment_tools import mean_std, paired_difference

from .model import ARMS

FULL = {"steps": 400, "batch": 16, "dim": 128, "heads": 4, "blocks": 6, "context": 128, "eval_every": 50,
        "eval_windows": 64}
QUICK = {"steps": 12, "batch": 4, "dim": 32, "heads": 2, "blocks": 6, "context": 32, "eval_every": 6,
         "eval_windows": 8, "max_bytes": 300_000}
TUNE_LRS = (1e-3, 3e-3, 1e-2)
TUNE_STEPS = 150
DEFAULT_LR = 3e-3
SEEDS = (0, 1, 2)
BASELINES = ("residual", "hc", "sinkhorn")


def _train_command(arm, seed, lr, out: Path, config: dict, split: str) -> list[str]:
    cmd = [sys.executable, "-m", "polyproj.cli", "hyperconnections", "train", "--arm", arm, "--seed", str(seed),
           "--lr", str(lr), "--out", str(out), "--eval-split", split]
    for k, v in config.items():
        cmd += [f"--{k.replace('_', '-')}", str(v)]
    return cmd


def run_many(jobs: list[tuple], workers: int, desc: str) -> list[dict]:
    """Run ``(arm, seed, lr, out, config, split)`` jobs as ``train`` processes, ``workers`` at a
    time with one torch thread each; a job whose record exists is read, not rerun."""
    from tqdm.auto import tqdm

    env = os.environ | {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}

    def one(job):
        arm, seed, lr, out, config, split = job
        record = out / "record.json"
        if not record.exists():
            out.mkdir(parents=True, exist_ok=True)
            with open(out / "train.log", "a") as logf:
                done = subprocess.run(_train_command(*job), env=env, stdout=logf, stderr=subprocess.STDOUT)
            if done.returncode != 0:
                raise RuntimeError(f"{arm} seed {seed} lr {lr} failed (exit {done.returncode}); see {out / 'train.log'}")
        return json.loads(record.read_text())

    results = [None] * len(jobs)
    with ThreadPoolExecutor(workers) as pool:
        futures = {pool.submit(one, j): i for i, j in enumerate(jobs)}
        for f in tqdm(as_completed(futures), total=len(jobs), desc=desc):
            results[futures[f]] = f.result()
    return results


def _config(args) -> dict:
    return dict(QUICK if args.quick else FULL) | ({"steps": args.steps} if args.steps else {})


def tune(args) -> dict:
    config = _config(args) | {"steps": args.steps or (4 if args.quick else TUNE_STEPS)}
    lrs = TUNE_LRS[:2] if args.quick else TUNE_LRS
    jobs = [(arm, 0, lr, args.out / "tune" / f"{arm}_lr{lr:g}", config, "tune") for arm in ARMS for lr in lrs]
    recs = run_many(jobs, args.workers, "tune")
    table = {}
    for arm in ARMS:
        losses = {r["lr"]: r["final_loss"] for r in recs if r["arm"] == arm}
        table[arm] = {"lr": min(losses, key=losses.get), "tune_loss": losses}
    (args.out / "tuned.json").write_text(json.dumps(table, indent=2))
    for arm, row in table.items():
        print(f"{arm:9s} lr {row['lr']:g}   " + "  ".join(f"{lr:g}: {v:.4f}" for lr, v in row["tune_loss"].items()))
    return table


def _tuned_lrs(args) -> dict:
    path = args.tuned or args.out / "tuned.json"
    if Path(path).exists():
        return {arm: row["lr"] for arm, row in json.loads(Path(path).read_text()).items()}
    return {arm: DEFAULT_LR for arm in ARMS}


def _reach(rec: dict, loss: float, key: str) -> float | None:
    """The training step (``key="step"``) or wall-clock (``"wall_s"``) at which the evaluated
    loss first reaches ``loss`` (linear interpolation between evaluations; ``None`` if never)."""
    ev = rec["log"]["evals"]
    for a, b in zip(ev, ev[1:]):
        if b["loss"] <= loss:
            if a["loss"] <= loss:
                return a[key]
            f = (a["loss"] - loss) / (a["loss"] - b["loss"])
            return a[key] + f * (b[key] - a[key])
    return None


def summarise(recs: list[dict]) -> list[dict]:
    by_arm = {arm: {r["seed"]: r for r in recs if r["arm"] == arm} for arm in ARMS}
    final = {arm: {s: r["final_loss"] for s, r in rs.items()} for arm, rs in by_arm.items()}
    present = [a for a in BASELINES if final[a]]
    best = min(present, key=lambda a: np.mean(list(final[a].values()))) if present else None
    rows = []
    for arm, rs in by_arm.items():
        if not rs:
            continue
        last = [r["log"]["evals"][-1]["mixing"] for r in rs.values()]
        row = {"arm": arm, "lr": next(iter(rs.values()))["lr"], "seeds": sorted(rs),
               "final_loss": mean_std(list(final[arm].values())),
               "step_ms_median": mean_std([r["step_ms_median"] for r in rs.values()]),
               "step_ms_p90": mean_std([r["step_ms_p90"] for r in rs.values()]),
               "mix_ms_median": mean_std([r["mix_ms_median"] for r in rs.values()]),
               "peak_memory_mb": mean_std([r["peak_memory_mb"] for r in rs.values()]),
               "wall_s": mean_std([r["log"]["evals"][-1]["wall_s"] for r in rs.values()])}
        if last[0] is not None:
            worst = lambda key: max(m[key] for m in last)  # noqa: E731
            row |= {"ds_violation": worst("ds_violation"),
                    "composite_gain_dev": max(m["composite"]["max_abs_gain_minus_1"] for m in last),
                    "composite_forward_gain_worst": max(m["composite"]["forward_gain_worst"][-1] for m in last),
                    "composite_backward_gain_worst": max(m["composite"]["backward_gain_worst"][-1] for m in last),
                    "sublayer_gain_dev": max(m["sublayer"]["max_abs_gain_minus_1"] for m in last),
                    "zero_share": mean_std([m["zero_share"] for m in last]),
                    "min_entry": min(m["min_entry"] for m in last)}
        if best is not None and arm != best:
            row["paired_diff"] = paired_difference(final[arm], final[best])
            row["paired_diff_vs"] = best
        if arm == "exact" and final["sinkhorn"]:
            row["paired_diff_sinkhorn"] = paired_difference(final[arm], final["sinkhorn"])
            walls, steps = [], []
            for s, r in rs.items():
                ref = by_arm["sinkhorn"].get(s)
                if ref is not None:  # the share of Sinkhorn's budget the exact arm needs for its loss
                    t, k = _reach(r, ref["final_loss"], "wall_s"), _reach(r, ref["final_loss"], "step")
                    walls.append(None if t is None else t / ref["log"]["evals"][-1]["wall_s"])
                    steps.append(None if k is None else k / ref["log"]["evals"][-1]["step"])
            row["wall_to_sinkhorn_loss"], row["steps_to_sinkhorn_loss"] = walls, steps
            row["step_time_ratio_to_sinkhorn"] = row["step_ms_median"]["mean"] / np.mean(
                [r["step_ms_median"] for r in by_arm["sinkhorn"].values()])
        rows.append(row)
    return rows


def markdown(rows: list[dict]) -> str:
    def pm(d, f="{:.4f}"):
        return f"{f.format(d['mean'])} ± {f.format(d['std'])}"

    head = ("| arm | lr | validation loss (nats/byte) | paired diff vs best baseline | step ms (median / p90) "
            "| H_res map ms / step (fwd) | DS violation | composite gain − 1 (worst, any depth) | exact zeros in H_res | peak MB |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        diff = "—"
        if "paired_diff" in r:
            d = r["paired_diff"]
            signs = "".join("+" if x > 0 else "−" for x in d["per_seed"])
            diff = f"{d['mean']:+.4f} ± {d['std']:.4f} vs {r['paired_diff_vs']} ({signs})"
        mixing = ("—", "—", "—") if "ds_violation" not in r else (
            f"{r['ds_violation']:.1e}", f"{r['composite_gain_dev']:.1e}", f"{100 * r['zero_share']['mean']:.1f} %")
        lines.append(f"| {r['arm']} | {r['lr']:g} | {pm(r['final_loss'])} | {diff} | "
                     f"{r['step_ms_median']['mean']:.0f} / {r['step_ms_p90']['mean']:.0f} | "
                     f"{r['mix_ms_median']['mean']:.0f} | {mixing[0]} | {mixing[1]} | {mixing[2]} | "
                     f"{r['peak_memory_mb']['mean']:.0f} |")
    return "\n".join(lines) + "\n"


def plot(recs: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = dict(zip(ARMS, ("tab:gray", "tab:orange", "tab:blue", "tab:green")))
    fig, ax = plt.subplots(1, 3, figsize=(15, 4))
    for r in recs:
        ev = r["log"]["evals"]
        kw = {"color": colours[r["arm"]], "alpha": 0.8, "label": r["arm"] if r["seed"] == min(
            q["seed"] for q in recs if q["arm"] == r["arm"]) else None}
        ax[0].plot([e["step"] for e in ev], [e["loss"] for e in ev], **kw)
        ax[1].plot([e["wall_s"] for e in ev], [e["loss"] for e in ev], **kw)
        mix = ev[-1]["mixing"]
        if mix is not None:
            depth = np.arange(1, len(mix["composite"]["forward_gain_worst"]) + 1)
            ax[2].plot(depth, mix["composite"]["forward_gain_worst"], **kw)
    ax[0].set(xlabel="step", ylabel="validation loss (nats/byte)", ylim=(None, None))
    ax[1].set(xlabel="training wall-clock (s)", ylabel="validation loss (nats/byte)")
    ax[2].set(xlabel="sublayers composed", ylabel="composite forward gain (worst token)", yscale="log")
    for a in ax:
        a.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def compare(args) -> list[dict]:
    config = _config(args)
    lrs = _tuned_lrs(args)
    seeds = args.seeds or ((0,) if args.quick else SEEDS)
    jobs = [(arm, s, lrs[arm], args.out / "runs" / f"{arm}_lr{lrs[arm]:g}_seed{s}_steps{config['steps']}", config, "valid")
            for s in seeds for arm in ARMS]
    recs = run_many(jobs, args.workers, "compare")
    rows = summarise(recs)
    meta = {k: recs[0][k] for k in ("corpus", "python", "torch", "config", "batch", "steps", "dtype", "device")}
    (args.out / "results.json").write_text(json.dumps({"meta": meta | {"workers": args.workers}, "rows": rows}, indent=2))
    md = markdown(rows)
    (args.out / "results.md").write_text(md)
    plot(recs, args.out / "hyperconnections.png")
    print(md)
    for r in rows:
        if "wall_to_sinkhorn_loss" in r:
            share = lambda v: ", ".join("never" if x is None else f"{x:.2f}" for x in v)  # noqa: E731
            print(f"exact − sinkhorn (paired, per seed): {r['paired_diff_sinkhorn']['mean']:+.4f} ± "
                  f"{r['paired_diff_sinkhorn']['std']:.4f}; to reach Sinkhorn's final loss the exact arm needs "
                  f"{share(r['steps_to_sinkhorn_loss'])} of its steps and {share(r['wall_to_sinkhorn_loss'])} of its "
                  f"training wall-clock; step-time ratio {r['step_time_ratio_to_sinkhorn']:.2f}")
    print(f"wrote {args.out / 'results.md'}, results.json, hyperconnections.png")
    return rows


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="polyproj hyperconnections", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("command", choices=("tune", "compare"))
    p.add_argument("--out", type=Path, default=Path("runs/hyperconnections"))
    p.add_argument("--quick", action="store_true", help="a tiny model and one seed (smoke run, under a minute)")
    p.add_argument("--workers", type=int, default=2, help="training processes at a time")
    p.add_argument("--steps", type=int, default=None, help="override the number of steps")
    p.add_argument("--seeds", type=int, nargs="+", default=None)
    p.add_argument("--tuned", type=Path, default=None, help="tuned.json of a tune run (default: OUT/tuned.json)")
    return p


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["train"]:
        from .train import main as train_main

        return train_main(argv[1:])
    args = parser().parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    (tune if args.command == "tune" else compare)(args)
    return 0
