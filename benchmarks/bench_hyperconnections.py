"""The H_res map of mHC at the hyper-connection experiment's shape, side by side in one run
(float32, one torch thread):

* the map alone, forward + backward, on ``tokens`` 4×4 logits (batch × context of one sublayer):
  polyproj's Birkhoff projection (exact arm), the ``hyper-connections`` package's Sinkhorn
  (20 iterations, the mHC arm), its log-domain Sinkhorn, and the identity (HC); near the start
  (logits 0.01 from the start) and far from it (0.3), with each map's doubly-stochastic violation;
* one training step of the whole model per arm (forward, backward, Adam), with the step-time
  ratio of the exact arm to the Sinkhorn arm (target ≤ 1.1);
* a profile of one exact-arm step: the operators where its time goes.

    python benchmarks/bench_hyperconnections.py [--out DIR] [--repeats 7]

Prints tables, writes ``hyperconnections.json`` and ``hyperconnections.png``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from hyper_connections.manifold_constrained_hyper_connections import log_domain_sinkhorn_knopps, sinkhorn_knopps

import polyproj as pp

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "experiments"))
from _common import commit, versions, write_json  # noqa: E402
from bench_structured import interleaved  # noqa: E402
from hyperconnections import data, model, run  # noqa: E402

BIRKHOFF = pp.Birkhoff()
MAPS = {"exact (polyproj)": lambda z: pp.project(z, BIRKHOFF), "sinkhorn-20 (package)": sinkhorn_knopps,
        "log-sinkhorn-20 (package)": log_domain_sinkhorn_knopps, "identity (HC)": lambda z: z * 1.0}


def map_rows(tokens: int, repeats: int) -> list[dict]:
    g = torch.Generator().manual_seed(0)
    H0 = model.matched_start(4)
    rows = []
    for spread in (0.01, 0.3):
        noise = spread * torch.randn(tokens, 4, 4, generator=g)
        # each map at its own arm's logits for the same start: Sinkhorn's I + noise, exact's H0 + noise
        inputs = {k: (H0 if k.startswith("exact") else torch.eye(4)) + noise for k in MAPS}
        times = {}
        for k, fn in MAPS.items():
            t, outs = interleaved({k: fn}, inputs[k], repeats)
            times[k] = (t[k], outs[k])
        ref = times["sinkhorn-20 (package)"][0]
        for k, (t, y) in times.items():
            viol = float(BIRKHOFF.violation(y.double()).max())
            rows.append({"spread": spread, "tokens": tokens, "map": k, "ms": 1e3 * t, "ratio_to_sinkhorn": t / ref,
                         "ds_violation": viol, "zero_share": float((y == 0).float().mean())})
    return rows


def step_rows(repeats: int) -> list[dict]:
    cfg = run.FULL
    corpus = data.load(max_bytes=2_000_000)
    models = {arm: model.ByteGPT(arm, dim=cfg["dim"], heads=cfg["heads"], blocks=cfg["blocks"],
                                 context=cfg["context"], seed=0) for arm in model.ARMS}
    opts = {arm: torch.optim.Adam(m.parameters(), lr=1e-3) for arm, m in models.items()}
    x, y = data.windows(corpus.train, data.train_starts(corpus.train, cfg["batch"], cfg["context"], 0, 0), cfg["context"])
    times = {arm: [] for arm in models}
    mix = {arm: [] for arm in models}

    def step(arm):
        m = models[arm]
        if m.mix is not None:
            m.mix.seconds = 0.0
        t0 = time.perf_counter()
        loss = m(x, y)
        opts[arm].zero_grad()
        loss.backward()
        opts[arm].step()
        return time.perf_counter() - t0, (m.mix.seconds if m.mix is not None else 0.0)

    for arm in models:
        step(arm)  # warm-up
    for _ in range(repeats):
        for arm in models:  # interleaved, so drifting load hits all arms alike
            t, s = step(arm)
            times[arm].append(t)
            mix[arm].append(s)
    ref = statistics.median(times["sinkhorn"])
    return [{"arm": arm, "step_ms": 1e3 * statistics.median(times[arm]), "mix_fwd_ms": 1e3 * statistics.median(mix[arm]),
             "ratio_to_sinkhorn": statistics.median(times[arm]) / ref, "batch": cfg["batch"], "context": cfg["context"]}
            for arm in models]


def profile_exact(top: int = 12) -> list[dict]:
    cfg = run.FULL
    corpus = data.load(max_bytes=2_000_000)
    m = model.ByteGPT("exact", dim=cfg["dim"], heads=cfg["heads"], blocks=cfg["blocks"], context=cfg["context"])
    x, y = data.windows(corpus.train, data.train_starts(corpus.train, cfg["batch"], cfg["context"], 0, 0), cfg["context"])
    m(x, y).backward()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        m(x, y).backward()
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events)
    return [{"op": e.key, "self_ms": e.self_cpu_time_total / 1e3, "share": e.self_cpu_time_total / total,
             "calls": e.count} for e in events[:top]]


def plot(maps, steps, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 2, figsize=(11, 3.8))
    names = list(MAPS)
    for i, spread in enumerate((0.01, 0.3)):
        ms = [next(r["ms"] for r in maps if r["map"] == k and r["spread"] == spread) for k in names]
        ax[0].bar([j + 0.4 * i for j in range(len(names))], ms, width=0.4, label=f"logits ± {spread}")
    ax[0].set_xticks([j + 0.2 for j in range(len(names))], [n.split(" ")[0] for n in names])
    ax[0].set(ylabel="H_res map fwd+bwd (ms)", title=f"{maps[0]['tokens']} tokens × 4×4")
    ax[0].legend()
    ax[1].bar([r["arm"] for r in steps], [r["step_ms"] for r in steps])
    ax[1].set(ylabel="training step (ms)", title="whole model, one step")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=HERE / "results")
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    tokens = run.FULL["batch"] * run.FULL["context"]
    maps = map_rows(tokens, args.repeats)
    print(f"{'logits':>8}  {'map':<27} {'fwd+bwd ms':>10} {'× Sinkhorn':>10} {'DS violation':>12} {'zeros':>6}")
    for r in maps:
        print(f"{r['spread']:>8}  {r['map']:<27} {r['ms']:>10.2f} {r['ratio_to_sinkhorn']:>10.2f} "
              f"{r['ds_violation']:>12.1e} {100 * r['zero_share']:>5.1f}%")
    steps = step_rows(args.repeats)
    print(f"\n{'arm':<10} {'step ms':>8} {'map fwd ms':>10} {'× Sinkhorn arm':>14}")
    for r in steps:
        print(f"{r['arm']:<10} {r['step_ms']:>8.0f} {r['mix_fwd_ms']:>10.1f} {r['ratio_to_sinkhorn']:>14.2f}")
    prof = profile_exact()
    print("\nexact arm, one forward+backward, by operator (self CPU time):")
    for r in prof:
        print(f"  {r['op']:<40} {r['self_ms']:8.1f} ms {100 * r['share']:5.1f}%  ({r['calls']} calls)")
    payload = {"meta": {"commit": commit(), "versions": versions("polyproj", "hyper-connections"), "threads": 1,
                        "repeats": args.repeats, "config": run.FULL},
               "maps": maps, "steps": steps, "profile_exact": prof}
    write_json(args.out / "hyperconnections.json", payload)
    plot(maps, steps, args.out / "hyperconnections.png")
    print(f"wrote {args.out / 'hyperconnections.json'} and hyperconnections.png")


if __name__ == "__main__":
    main()
