"""Transportation/Birkhoff projections of inputs far from the set: Newton steps and time of the
solver with its merge step against the same Newton iteration without it, in one run.

Families: uniform marginals (the Birkhoff polytope, scaled) and random marginals (uniform on
[0, 1], columns rescaled to the rows' total); Gaussian inputs at 1, 10², 10⁴ and 10⁸ times the
marginals; shapes (n, batch) = (16, 256), (64, 1), (64, 64); float64, one thread, the forward
solve only (``functional.transport.project_transport``, tol 1e-9, target 1e-11).  Repetitions
are interleaved across the two arms; the median is reported.  Every output is checked: its
relative marginal residual must be ≤ 1e-9.

    python benchmarks/bench_transport_far.py [--repeats 3] [--out DIR]

Prints a table, writes ``transport_far.json`` and ``transport_far.png``.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from polyproj.functional import transport

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import commit, plot_methods, versions, write_json  # noqa: E402

FAMILIES = ["uniform", "random marginals"]
SCALES = [1.0, 1e2, 1e4, 1e8]
SHAPES = [(16, 256), (64, 1), (64, 64)]
ARMS = {"merge step": True, "plain Newton": False}


def instance(family, n, batch, scale, seed=0):
    rng = np.random.default_rng([seed, n, batch, int(np.log10(scale))])
    if family == "uniform":
        r, c = np.ones((batch, n)), np.ones((batch, n))
    else:
        r, c = rng.uniform(0, 1, (batch, n)), rng.uniform(0, 1, (batch, n))
        c *= r.sum(1, keepdims=True) / c.sum(1, keepdims=True)
    return (torch.tensor(a) for a in (rng.standard_normal((batch, n, n)) * scale, r, c))


def solve(Y, r, c, merge):
    transport._MERGE = merge
    try:
        t0 = time.perf_counter()
        X, _, _, kkt, iters = transport.project_transport(Y, r, c, tol=1e-9, target=1e-11, max_iter=500)
        return time.perf_counter() - t0, X, kkt, iters
    finally:
        transport._MERGE = True


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    rows = []
    cases = list(itertools.product(FAMILIES, SCALES, SHAPES))
    for family, scale, (n, batch) in tqdm(cases, desc="far transport"):
        Y, r, c = instance(family, n, batch, scale)
        times = {arm: [] for arm in ARMS}
        steps = {}
        for rep in range(args.repeats + 1):  # the first round warms up
            for arm, merge in ARMS.items():
                dt, X, kkt, iters = solve(Y, r, c, merge)
                marg = torch.maximum((X.sum(2) - r).abs().amax(1), (X.sum(1) - c).abs().amax(1))
                if float(kkt.max()) > 1e-9 or float(marg.max()) > 1e-9 * float(torch.cat([r, c], 1).abs().max()):
                    raise SystemExit(f"{arm} not certified: {family} scale {scale:g} n {n}: kkt {float(kkt.max()):.1e}")
                steps[arm] = iters
                if rep:
                    times[arm].append(dt)
        for arm in ARMS:
            rows.append({"family": family, "scale": scale, "n": n, "batch": batch, "method": arm,
                         "seconds": float(np.median(times[arm])), "mean_steps": float(steps[arm].float().mean()),
                         "max_steps": int(steps[arm].max())})
    print("| marginals | input / marginals | n | batch | steps with merge (mean / max) | plain Newton | "
          "time with merge [ms] | plain Newton [ms] | ratio |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for a, b in zip(rows[::2], rows[1::2]):
        print(f"| {a['family']} | {a['scale']:.0e} | {a['n']} | {a['batch']} | {a['mean_steps']:.1f} / {a['max_steps']} | "
              f"{b['mean_steps']:.1f} / {b['max_steps']} | {1e3 * a['seconds']:.1f} | {1e3 * b['seconds']:.1f} | "
              f"{a['seconds'] / b['seconds']:.2f} |")
    write_json(args.out / "transport_far.json", {
        "meta": {"commit": commit(), "repeats": args.repeats, "threads": 1, "versions": versions("polyproj")},
        "rows": rows})
    plot_methods([dict(r, method=f"{r['method']}, {r['family']}") for r in rows if (r["n"], r["batch"]) == (64, 64)],
                 args.out / "transport_far.png", lambda r: r["scale"], xlabel="input scale / marginals",
                 title="transportation 64×64, batch 64 (forward, float64)", loglog=True)
    print(f"wrote {args.out / 'transport_far.json'}")


if __name__ == "__main__":
    main()
