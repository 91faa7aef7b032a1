r"""Deep graph matching on Willow-ObjectClass: PCA-GM whose final layer is pygmtools' Sinkhorn,
LinSATNet or polyproj's exact projection, trained identically (see ``README`` of the repository).

Every arm: the same network (:class:`.model.PCAGMWithFinalLayer`, hidden 256, two Siamese graph
convolutions with the cross-graph layer), the same initialisation per seed, Adam (lr 1e-3),
batch 16 pairs, 500 steps (the training loss is flat after ~300) and the same pairs per step; the same loss, binary
cross-entropy of the ground-truth (partial) permutation against ``ε + (1 − 2ε) X``
(ε = 1e-3: bounded away from 0 and 1, so exact zeros of a projection are finite); and at test
time the same Hungarian decode (``pygmtools.hungarian``).  Only the final layer differs.

Usage::

    polyproj graph-matching tune    --out runs/graph_matching          # hyper-parameters on validation
    polyproj graph-matching tune --outliers 4 --out runs/graph_matching   # … with 4 outliers (used for R > 0)
    polyproj graph-matching compare --out runs/graph_matching          # 3 seeds × layers, test set
    polyproj graph-matching compare --outliers 0 2 4 8 --out runs/graph_matching
    polyproj graph-matching compare --quick --out runs/gm-quick        # < 1 minute smoke run

Results: ``<out>/tuned.json`` and ``tuned_partial.json`` (grid and choice), ``<out>/records/*.json`` (one per trained
model: the resumable unit), ``<out>/results.json``, ``results.md`` and ``matches.png``.  Each
training run checkpoints every :data:`CKPT_EVERY` steps and a killed run resumes.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from experiment_tools import (LOSSES, format_hp, format_paired, mean_std, paired_difference, record_path,
                              save_outputs, train_steps, write_record)

from . import data, layers, model

LAYERS = ("sinkhorn", "linsat", "exact")
LINSAT_ITERS = 300
GRIDS = {  # tuned on the validation pairs (train on the first 15 training images per class)
    "sinkhorn": [{"tau": t, "iters": i} for t in (0.02, 0.05, 0.1, 0.2) for i in (10, 20)],
    # LinSATNet converges slowly: at τ = 0.05 its max violation on random scores is 0.56 after
    # 100 iterations, 2e-2 after 300 and 4e-3 after 1000 (0.5 s per forward at batch 16).
    "linsat": [{"tau": t, "iters": LINSAT_ITERS} for t in (0.05, 0.1)],
    "exact": [{"scale": s} for s in (0.01, 0.03, 0.1, 0.3, 1.0)],
}
HIDDEN = 256
BATCH = 16
LR = 1e-3
CKPT_EVERY = 200
TEST_PAIRS_PER_CLASS = 200
VALID_PAIRS_PER_CLASS = 20


def hungarian(X: torch.Tensor) -> torch.Tensor:
    import pygmtools

    return pygmtools.hungarian(X.detach().double(), backend="pytorch").to(X.dtype)


def decode(X: torch.Tensor, k_true: int) -> torch.Tensor:
    """Hungarian on X (B, k, k), then — with outliers — only the ``k_true`` assigned pairs the
    layer is most sure of."""
    H = hungarian(X)
    if k_true < X.shape[-1]:
        val = (H * X).flatten(1)
        keep = torch.zeros_like(val)
        keep.scatter_(1, val.topk(k_true, dim=1).indices, 1.0)
        H = H * keep.view_as(H)
    return H


def decode_metrics(X: torch.Tensor, gt: torch.Tensor, k_true: int) -> dict:
    """Per-sample precision/recall/F1 of the Hungarian + top-k decode and of the 0.5 threshold.
    With no outliers Hungarian's F1 is the matching accuracy."""
    H = decode(X, k_true)
    out = {}
    for name, pred in (("hungarian", H), ("threshold", (X > 0.5).to(X.dtype))):
        hit = (pred * gt).sum((1, 2))
        npred = pred.sum((1, 2))
        prec = torch.where(npred > 0, hit / npred.clamp_min(1), torch.zeros_like(hit))
        rec = hit / gt.sum((1, 2))
        f1 = torch.where(prec + rec > 0, 2 * prec * rec / (prec + rec).clamp_min(1e-12), torch.zeros_like(hit))
        out.update({f"{name}_precision": prec, f"{name}_recall": rec, f"{name}_f1": f1})
    return out


def build(layer: str, hp: dict, k: int, seed: int, in_channel: int) -> model.PCAGMWithFinalLayer:
    torch.manual_seed(seed)  # same network initialisation for every layer at a seed
    net = model.PCAGMWithFinalLayer(in_channel, HIDDEN, layers.make_layer(layer, k, data.N_INLIERS, **hp))
    return net


def train(net, sampler: data.PairSampler, steps: int, seed: int, ckpt: Path | None, desc: str,
          loss_name: str = "bce") -> dict:
    """Adam on random pairs; the pairs and shuffles are a function of (seed, step) only, so every
    layer sees the same data and a resumed run continues exactly."""
    def batch(step):
        rng = np.random.default_rng([seed, step])
        return sampler.batch(sampler.random_pairs(rng, BATCH), rng)

    return train_steps(net, steps, ckpt, batch, lambda b: LOSSES[loss_name](net(b.feat1, b.feat2, b.A1, b.A2), b.gt),
                       lr=LR, every=CKPT_EVERY, desc=desc, progress=os.environ.get("POLYPROJ_NO_PROGRESS") != "1")


@torch.no_grad()
def evaluate(net, sampler: data.PairSampler, pairs: dict[int, np.ndarray], seed: int, keep_outputs: bool = False,
             save_to: Path | None = None):
    """Metrics per class on fixed pairs (the same shuffles for every layer).  With ``save_to``
    every output matrix is saved (float32 ``.npz``, one array per class) for :func:`output_stats`."""
    net.eval()
    k_true = data.N_INLIERS
    per_class, outputs, saved = {}, [], {}
    viol, exact01, total = 0.0, 0, 0
    for c, P in pairs.items():
        rng = np.random.default_rng([seed, 7, c])
        rows = []
        for i in range(0, len(P), 64):
            b = sampler.batch(P[i:i + 64], rng)
            X = net(b.feat1, b.feat2, b.A1, b.A2)
            viol = max(viol, float(layers.violation(X, k_true).max()))
            exact01 += int(((X == 0) | (X == 1)).sum())
            total += X.numel()
            rows.append(decode_metrics(X, b.gt, k_true))
            saved.setdefault(data.CLASSES[c], []).append(X.numpy())
            if keep_outputs and i == 0:
                outputs.append({"class": c, "pair": b.pairs[0].tolist(), "perm": b.perm[0].tolist(),
                                "X": X[0].tolist(), "gt": b.gt[0].tolist()})
        per_class[data.CLASSES[c]] = {k: float(torch.cat([r[k] for r in rows]).mean()) for k in rows[0]}
    mean = {k: float(np.mean([v[k] for v in per_class.values()])) for k in next(iter(per_class.values()))}
    net.train()
    if save_to is not None:
        save_outputs(save_to, **{c: np.concatenate(v) for c, v in saved.items()})
    return {"per_class": per_class, "mean": mean, "max_violation": viol, "exact_01_share": exact01 / total,
            "examples": outputs}


def output_stats(path: Path) -> dict:
    """Violation of the (partial) matching polytope and share of exact 0/1 entries, recomputed
    from the saved test outputs of one trained model."""
    with np.load(path) as z:
        X = torch.from_numpy(np.concatenate([z[c] for c in z.files]))
    Xd = X.double()
    capacity = torch.maximum(torch.maximum((Xd.sum(-1) - 1).clamp_min(0).amax(-1), (Xd.sum(-2) - 1).clamp_min(0).amax(-1)),
                             (-Xd).clamp_min(0).flatten(1).amax(-1))
    return {"max_violation": float(layers.violation(X, data.N_INLIERS).max()),
            "max_capacity_violation": float(capacity.max()),  # X ≥ 0, X1 ≤ 1, Xᵀ1 ≤ 1 only
            "max_total_gap": float((Xd.sum((1, 2)) - data.N_INLIERS).abs().max()),
            "exact_01_share": float(((X == 0) | (X == 1)).double().mean()), "outputs": int(X.shape[0])}


def layer_timing(net, k: int, reps: int = 30) -> float:
    """Median fwd+bwd ms of the final layer alone on a (16, k, k) batch of scores."""
    g = torch.Generator().manual_seed(0)
    s = torch.randn(BATCH, k, k, generator=g)
    times = []
    for _ in range(reps + 3):
        x = s.clone().requires_grad_(True)
        t0 = time.perf_counter()
        net.final(x).square().sum().backward()
        times.append(1e3 * (time.perf_counter() - t0))
    return statistics.median(times[3:])


def run_one(ds, out: Path, kind: str, layer: str, hp: dict, outliers: int, seed: int, steps: int,
            train_split: str, eval_pairs: dict, keep_outputs: bool = False, loss_name: str = "bce") -> dict:
    path = record_path(out, kind, layer, hp, f"R{outliers}", seed, steps, loss_name)
    if path.exists():
        return json.loads(path.read_text())
    path.parent.mkdir(parents=True, exist_ok=True)
    k = data.N_INLIERS + outliers
    net = build(layer, hp, k, seed, ds.features.shape[2])
    sampler = data.PairSampler(ds, ds.split(train_split), outliers)
    t0 = time.perf_counter()
    log = train(net, sampler, steps, seed, path.with_suffix(".ckpt"), f"{kind} {layer} {hp} R={outliers} seed {seed}",
                loss_name)
    train_s = time.perf_counter() - t0
    ev = evaluate(net, data.PairSampler(ds, ds.split("test" if kind == "compare" else "valid"), outliers),
                  eval_pairs, seed=1234, keep_outputs=keep_outputs,
                  save_to=path.with_suffix(".outputs.npz") if kind == "compare" else None)
    rec = {"kind": kind, "layer": layer, "hp": hp, "outliers": outliers, "seed": seed, "steps": steps, "loss": loss_name,
           "outputs_file": str(path.with_suffix(".outputs.npz")) if kind == "compare" else None,
           "train_seconds": train_s, "step_ms_median": statistics.median(log["step_ms"]),
           "layer_fwd_bwd_ms": layer_timing(net, k), "final_loss": float(np.mean(log["losses"][-50:])),
           "loss_curve": [float(np.mean(log["losses"][i:i + 50])) for i in range(0, len(log["losses"]), 50)], **ev}
    write_record(path, rec)
    return rec


def tune(args) -> dict:
    ds = _load(args)
    out = Path(args.out)
    valid = data.fixed_pairs(ds.split("valid"), VALID_PAIRS_PER_CLASS, seed=99)
    R = args.outliers[0]  # 0: the full matching; > 0: the choice used for every outlier count
    chosen, grid_log = {}, []
    for layer in args.layers:
        if layer == "linsat" and R > 0 and not args.linsat_partial:
            continue
        best = None
        for hp in GRIDS[layer]:
            rec = run_one(ds, out, "tune", layer, hp, R, args.tune_seed, args.steps, "train", valid, loss_name=args.loss)
            score = rec["mean"]["hungarian_f1"]
            grid_log.append({"layer": layer, "hp": hp, "valid_accuracy": score,
                             "max_violation": rec["max_violation"]})
            print(f"tune R={R} {layer:9s} {hp}: validation F1 {score:.4f}, violation {rec['max_violation']:.1e}")
            if best is None or score > best[0]:
                best = (score, hp)
        chosen[layer] = best[1]
    result = {"chosen": chosen, "grid": grid_log, "steps": args.steps, "seed": args.tune_seed, "outliers": R}
    path = out / ("tuned.json" if R == 0 else "tuned_partial.json")
    path.write_text(json.dumps(result, indent=2))
    print(f"chosen: {chosen}  →  {path}")
    return result


def _load(args) -> data.Willow:
    return data.load(args.data, n_train=args.train_images, n_valid=args.valid_images)


def _default_hp(layer: str, quick: bool = False) -> dict:
    """Hyper-parameters without a tuned.json (``--quick``: LinSATNet at 30 iterations)."""
    return {"sinkhorn": {"tau": 0.05, "iters": 20}, "linsat": {"tau": 0.05, "iters": 30 if quick else LINSAT_ITERS},
            "exact": {"scale": 0.1}}[layer]


def compare(args) -> dict:
    ds = _load(args)
    out = Path(args.out)
    tuned_path = Path(args.tuned) if args.tuned else out / "tuned.json"
    chosen = json.loads(tuned_path.read_text())["chosen"] if tuned_path.exists() else {}
    partial_path = Path(args.tuned_partial) if args.tuned_partial else out / "tuned_partial.json"  # tune --outliers R
    chosen_partial = json.loads(partial_path.read_text())["chosen"] if partial_path.exists() else chosen
    test = data.fixed_pairs(ds.split("test"), args.test_pairs, seed=2024)
    records = []
    for R in args.outliers:
        for layer in args.layers:
            if layer == "linsat" and R > 0 and not args.linsat_partial:
                print(f"R={R}: LinSATNet skipped (see --linsat-partial): on the partial-matching constraints it "
                      f"takes ~16 s per fwd+bwd at batch 16 and 300 iterations (benchmarks/bench_partial_matching.py)")
                continue
            hp = (chosen if R == 0 else chosen_partial).get(layer, _default_hp(layer, args.quick))
            for seed in args.seeds:
                records.append(run_one(ds, out, "compare", layer, hp, R, seed, args.steps, "trainval", test,
                                       keep_outputs=True, loss_name=args.loss))
    summary = summarise(records, args)
    (out / "results.json").write_text(json.dumps({"tuned": chosen, "tuned_from": str(tuned_path) if chosen else None,
                                                  "tuned_partial": chosen_partial,
                                                  "summary": summary, "records": records,
                                                  "config": vars(args) | {"func": None}}, indent=2))
    (out / "results.md").write_text(markdown(summary))
    print(markdown(summary))
    plot_matches(ds, records, out)
    print(f"wrote {out / 'results.json'}, {out / 'results.md'}, {out / 'matches.png'}")
    return summary


def summarise(records, args) -> list[dict]:
    rows = []
    metric = "hungarian_f1"
    for R in args.outliers:
        by_layer = {L: sorted([r for r in records if r["layer"] == L and r["outliers"] == R], key=lambda r: r["seed"])
                    for L in args.layers}
        by_layer = {L: v for L, v in by_layer.items() if v}
        baselines = [L for L in by_layer if L != "exact"]
        best_base = max(baselines, key=lambda L: np.mean([r["mean"][metric] for r in by_layer[L]])) if baselines else None
        for L, recs in by_layer.items():
            row = {"outliers": R, "layer": L, "hp": recs[0]["hp"], "seeds": [r["seed"] for r in recs]}
            for m in recs[0]["mean"]:
                row[m] = mean_std([r["mean"][m] for r in recs])
            for c in data.CLASSES:
                row[f"acc_{c}"] = mean_std([r["per_class"][c][metric] for r in recs])
            stats = [output_stats(Path(r["outputs_file"])) for r in recs if Path(r.get("outputs_file", "")).is_file()]
            if len(stats) != len(recs):
                raise FileNotFoundError(f"saved test outputs missing for {L}, R={R}: rerun compare to regenerate them")
            for key in ("max_violation", "max_capacity_violation", "max_total_gap"):  # from the saved outputs
                row[key] = max(s[key] for s in stats)
            row["exact_01_share"] = mean_std([s["exact_01_share"] for s in stats])
            row["layer_fwd_bwd_ms"] = mean_std([r["layer_fwd_bwd_ms"] for r in recs])
            row["step_ms"] = mean_std([r["step_ms_median"] for r in recs])
            row["train_seconds"] = mean_std([r["train_seconds"] for r in recs])
            if best_base is not None and L != best_base:
                row["paired_diff_vs"] = best_base
                row["paired_diff"] = paired_difference({r["seed"]: r["mean"][metric] for r in recs},
                                                       {r["seed"]: r["mean"][metric] for r in by_layer[best_base]})
            rows.append(row)
    return rows


def markdown(rows) -> str:
    head = ("| R | layer | hyper-parameters | Hungarian (+top-k) F1 | " + " | ".join(data.CLASSES) +
            " | Δ vs best baseline (paired) | thr-0.5 P / R / F1 | max violation (capacities; total) | exact 0/1 | layer fwd+bwd ms | step ms | train s |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    f = lambda d: f"{d['mean']:.3f} ± {d['std']:.3f}"  # noqa: E731
    for r in rows:
        lines.append(f"| {r['outliers']} | {r['layer']} | {format_hp(r['hp'])} | {f(r['hungarian_f1'])} | "
                     + " | ".join(f"{r[f'acc_{c}']['mean']:.3f}" for c in data.CLASSES)
                     + f" | {format_paired(r)} | {r['threshold_precision']['mean']:.3f} / {r['threshold_recall']['mean']:.3f} / "
                       f"{f(r['threshold_f1'])} | {r['max_violation']:.1e} ({r['max_capacity_violation']:.1e}; "
                       f"{r['max_total_gap']:.1e}) | "
                       f"{r['exact_01_share']['mean']:.2f} | {r['layer_fwd_bwd_ms']['mean']:.2f} | "
                       f"{r['step_ms']['mean']:.1f} | {r['train_seconds']['mean']:.0f} |")
    return "\n".join(lines) + "\n"


def plot_matches(ds, records, out: Path) -> None:
    """Per outlier count, one test pair per layer (first seed): keypoints (inliers yellow,
    outliers cyan) and the decoded matches, green where right and red where wrong.  Writes
    ``matches.png`` (fewest outliers) and ``matches_R{R}.png`` for the others."""
    import cv2
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    Rs = sorted({r["outliers"] for r in records})
    for R in Rs:
        chosen = {}
        for r in records:
            if r["outliers"] == R and r["layer"] not in chosen and r["examples"]:
                chosen[r["layer"]] = r
        if not chosen:
            continue
        fig, axes = plt.subplots(1, len(chosen), figsize=(5 * len(chosen), 3.2), squeeze=False)
        for ax, (L, r) in zip(axes[0], chosen.items()):
            ex = r["examples"][0]
            i, j = ex["pair"]
            p1, p2 = np.array(ex["perm"])
            im = [cv2.imread(str(ds.root / "images" / f"{ds.names[t]}.jpg"))[:, :, ::-1] for t in (i, j)]
            ax.imshow(np.concatenate(im, 1))
            H = decode(torch.tensor(ex["X"])[None], data.N_INLIERS)[0].numpy()
            gt = np.array(ex["gt"])
            P1, P2 = ds.points[i][p1], ds.points[j][p2] + np.array([data.IMAGE_SIZE, 0])
            for P, p in ((P1, p1), (P2, p2)):
                ax.scatter(P[:, 0], P[:, 1], s=12, c=np.where(p < data.N_INLIERS, "yellow", "cyan"))
            for a, b in zip(*np.nonzero(H)):
                ok = gt[a, b] == 1
                ax.plot([P1[a, 0], P2[b, 0]], [P1[a, 1], P2[b, 1]], color="lime" if ok else "red", lw=1.2)
            f1 = 2 * (H * gt).sum() / (H.sum() + gt.sum())
            ax.set_title(f"{L}: {data.CLASSES[ex['class']]}, R = {R}, F1 {f1:.0%}", fontsize=9)
            ax.axis("off")
        fig.tight_layout()
        fig.savefig(out / ("matches.png" if R == Rs[0] else f"matches_R{R}.png"), dpi=110)
        plt.close(fig)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="polyproj graph-matching", description=__doc__.split("\n\n")[0])
    p.add_argument("command", choices=["tune", "compare"])
    p.add_argument("--out", default="runs/graph_matching")
    p.add_argument("--layers", nargs="+", default=list(LAYERS), choices=LAYERS)
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--outliers", nargs="+", type=int, default=[0])
    p.add_argument("--steps", type=int, default=500)
    p.add_argument("--test-pairs", type=int, default=TEST_PAIRS_PER_CLASS, help="test pairs per class")
    p.add_argument("--tuned", default=None, help="tuned.json to read (default: <out>/tuned.json)")
    p.add_argument("--tuned-partial", default=None, help="tuned_partial.json to read (default: <out>/tuned_partial.json)")
    p.add_argument("--loss", choices=sorted(LOSSES), default="bce",
                   help="the shared training loss (default: BCE against ε + (1 − 2ε) X)")
    p.add_argument("--tune-seed", type=int, default=100)
    p.add_argument("--linsat-partial", action="store_true",
                   help="also train LinSATNet with outliers (hours: its partial-matching kernel is slow)")
    p.add_argument("--data", default=None, help="Willow folder (default ../shared/data/willow or $POLYPROJ_WILLOW)")
    p.add_argument("--train-images", type=int, default=data.N_TRAIN_IMAGES, help="training images per class")
    p.add_argument("--valid-images", type=int, default=data.N_VALID, help="of which validation images")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--quick", action="store_true", help="a smoke run: 1 seed, 20 steps, 10 test pairs per class")
    return p


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quick:
        args.seeds, args.steps, args.test_pairs = args.seeds[:1], 20, 10
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (tune if args.command == "tune" else compare)(args)
    return 0
