"""Structured sets, float32 inputs, forward + backward, side by side in one run:

* Birkhoff (exact Euclidean projection) vs 20-iteration log-domain Sinkhorn with unrolled
  autograd (an entropic map, not a projection) and LinSATNet, at (n=16, batch 256),
  (n=4, batch 65536: the hyper-connection shape) and (n=64, batch 16); with each method's
  doubly-stochastic violation.
* Simplex at n=1000, batch 1024 vs one ``torch.sort`` of the same tensor.
* Growth of the Birkhoff time with n (batch 16) and with the batch size (n=8).

    python benchmarks/bench_structured.py [--out DIR] [--repeats 3] [--no-linsatnet]

Prints tables, writes ``structured.json`` and ``structured.png``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

import polyproj as pp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import commit, versions, write_json  # noqa: E402


def sinkhorn20(x, iters=20):
    logp = x
    for _ in range(iters):
        logp = logp - logp.logsumexp(-1, keepdim=True)
        logp = logp - logp.logsumexp(-2, keepdim=True)
    return logp.exp()


def linsatnet_birkhoff(x):
    from LinSATNet import linsat_layer

    n = x.shape[-1]
    E = torch.cat([torch.kron(torch.eye(n), torch.ones(1, n)), torch.kron(torch.ones(1, n), torch.eye(n))]).to(x.dtype)
    f = torch.ones(2 * n, dtype=x.dtype)
    return linsat_layer(x.reshape(x.shape[0], -1), E=E, f=f, no_warning=True).reshape(x.shape)


def fwd_bwd(fn, x, g):
    xr = x.clone().requires_grad_()
    t0 = time.perf_counter()
    y = fn(xr)
    if y.requires_grad:
        (y * g).sum().backward()
    return time.perf_counter() - t0, y.detach()


def interleaved(fns: dict, x, repeats: int, once=()):
    """Median forward+backward seconds per method, repetitions interleaved across methods (so
    drifting load on a shared machine hits all alike); methods in ``once`` are timed once."""
    g = torch.randn_like(x)
    outs = {k: fwd_bwd(f, x, g)[1] for k, f in fns.items() if k not in once}  # warm-up
    times = {k: [] for k in fns}
    for r in range(repeats):
        for k, f in fns.items():
            if k in once and r:
                continue
            dt, y = fwd_bwd(f, x, g)
            times[k].append(dt)
            outs[k] = y
    return {k: float(np.median(v)) for k, v in times.items()}, outs


def ds_violation(y):
    return float(torch.maximum((y.sum(-1) - 1).abs().max(), (y.sum(-2) - 1).abs().max()).clamp_min((-y).max()))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--no-linsatnet", action="store_true")
    args = parser.parse_args(argv)
    gen = torch.Generator().manual_seed(0)
    birkhoff_rows = []
    methods = {"polyproj": lambda x: pp.project(x, pp.Birkhoff()), "sinkhorn20": sinkhorn20}
    if not args.no_linsatnet:
        methods["linsatnet"] = linsatnet_birkhoff
    for n, batch in tqdm([(16, 256), (4, 65536), (64, 16)], desc="Birkhoff"):
        x = torch.randn(batch, n, n, generator=gen)
        secs, outs = interleaved(methods, x, args.repeats, once=("linsatnet",))
        steps = pp.project(x, pp.Birkhoff(), return_info=True)[1].iterations.float()
        for name in methods:
            birkhoff_rows.append({"n": n, "batch": batch, "method": name, "seconds": secs[name],
                                  "violation": ds_violation(outs[name])})
            if name == "polyproj":  # Newton steps after the block-coordinate start
                birkhoff_rows[-1].update(newton_steps_mean=float(steps.mean()), newton_steps_max=int(steps.max()))
    x = torch.randn(1024, 1000, generator=gen)
    secs, _ = interleaved({"simplex": lambda z: pp.project(z, pp.Simplex()),
                           "sort": lambda z: torch.sort(z.detach(), dim=-1, descending=True)[0]}, x, args.repeats)
    simplex_sec, sort_sec = secs["simplex"], secs["sort"]
    scaling_n, scaling_batch = [], []
    birk = {"polyproj": lambda z: pp.project(z, pp.Birkhoff())}
    for n in tqdm([4, 8, 16, 32, 64, 128, 256], desc="Birkhoff vs n"):
        secs, _ = interleaved(birk, torch.randn(16, n, n, generator=gen), args.repeats)
        scaling_n.append({"n": n, "batch": 16, "seconds": secs["polyproj"]})
    for batch in tqdm([256, 1024, 4096, 16384], desc="Birkhoff vs batch"):
        secs, _ = interleaved(birk, torch.randn(batch, 8, 8, generator=gen), args.repeats)
        scaling_batch.append({"n": 8, "batch": batch, "seconds": secs["polyproj"]})

    print(f"{'n':>4} {'batch':>6}  {'method':<11} {'fwd+bwd [s]':>11} {'× polyproj':>10} {'DS violation':>12}")
    for r in birkhoff_rows:
        base = next(b["seconds"] for b in birkhoff_rows if b["method"] == "polyproj" and b["n"] == r["n"])
        steps = f"  Newton steps {r['newton_steps_mean']:.1f} (max {r['newton_steps_max']})" if "newton_steps_max" in r else ""
        print(f"{r['n']:>4} {r['batch']:>6}  {r['method']:<11} {r['seconds']:>11.4f} {r['seconds'] / base:>10.2f} "
              f"{r['violation']:>12.1e}{steps}")
    print(f"simplex n=1000 batch 1024: fwd+bwd {simplex_sec:.4f} s; one torch.sort {sort_sec:.4f} s; ratio {simplex_sec / sort_sec:.2f}")
    print("Birkhoff, batch 16:   " + "  ".join(f"n={r['n']}: {r['seconds']:.4f}s" for r in scaling_n))
    print("Birkhoff, n=8:        " + "  ".join(f"batch={r['batch']}: {r['seconds']:.4f}s" for r in scaling_batch))
    meta = {"commit": commit(), "dtype": "float32 inputs (solves in float64)", "device": "cpu",
            "threads": torch.get_num_threads(), "versions": versions("polyproj", "LinSATNet")}
    write_json(args.out / "structured.json", {"meta": meta, "birkhoff": birkhoff_rows,
                                                "simplex": {"seconds": simplex_sec, "sort_seconds": sort_sec},
                                                "scaling_n": scaling_n, "scaling_batch": scaling_batch})
    plot(scaling_n, scaling_batch, args.out / "structured.png")
    print(f"wrote {args.out / 'structured.json'} and {args.out / 'structured.png'}")


def plot(scaling_n, scaling_batch, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    axes[0].loglog([r["n"] for r in scaling_n], [r["seconds"] for r in scaling_n], "o-")
    axes[0].set(xlabel="n (batch 16)", ylabel="fwd+bwd [s]", title="Birkhoff: time vs n")
    axes[1].loglog([r["batch"] for r in scaling_batch], [r["seconds"] for r in scaling_batch], "o-")
    axes[1].set(xlabel="batch (n = 8)", ylabel="fwd+bwd [s]", title="Birkhoff: time vs batch")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
