"""Fuzz the partial-matching projection: random, low-rank (like trained affinities), rounded
(ties) and constant inputs, shapes 1..18 × 1..18, every k from 0 to min(m, n), input scales
1e-6 … 1e8, float64 and float32 inputs.  Each output is checked with the set's own
``violation(relative=True)`` and, for float64, by the independent NNLS KKT certificate of
``polyproj.testing`` on the set written as a polyhedron; a raised ``ConvergenceError`` counts as
refused, a certified point as certified, anything else as wrong.

    python benchmarks/fuzz_partial_matching.py [--trials 400] [--out DIR]

Prints a table per scale and writes ``fuzz_partial_matching.json``.
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
from polyproj.testing import certify_projection

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import commit, versions, write_json  # noqa: E402

SCALES = [1e-6, 1e-2, 1.0, 1e2, 1e4, 1e6, 1e8]
FAMILIES = ("random", "low rank", "rounded", "constant")
BATCH = 8


def inputs(family, m, n, rng):
    if family == "random":
        Y = rng.standard_normal((BATCH, m, n))
    elif family == "low rank":
        Y = 3 * np.abs(rng.standard_normal((BATCH, m, 1))) * rng.standard_normal((BATCH, 1, n))
        Y = Y + 0.3 * rng.standard_normal((BATCH, m, n))
    elif family == "rounded":
        Y = np.round(2 * rng.standard_normal((BATCH, m, n)))
    else:
        Y = np.full((BATCH, m, n), rng.standard_normal())
    return Y


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=400, help="(shape, k, family) draws per scale")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = parser.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    t0 = time.perf_counter()
    counts = {"certified": 0, "wrong": 0, "refused": 0}
    by_scale, failures = [], []
    for scale in tqdm(SCALES, desc="scales"):
        row = {"scale": scale, "points": 0, "certified": 0, "wrong": 0, "refused": 0, "steps": []}
        for _ in range(args.trials):
            m, n = (int(v) for v in rng.integers(1, 19, 2))
            k = float(rng.integers(0, min(m, n) + 1)) if rng.random() < 0.8 else rng.random() * min(m, n)
            family = FAMILIES[rng.integers(len(FAMILIES))]
            dtype = torch.float64 if rng.random() < 0.75 else torch.float32
            S = pp.PartialMatching(k)
            x = torch.tensor(scale * inputs(family, m, n, rng), dtype=dtype)
            row["points"] += BATCH
            try:
                y, info = pp.project(x, S, return_info=True)
            except pp.ConvergenceError as err:
                row["refused"] += BATCH
                failures.append({"scale": scale, "m": m, "n": n, "k": k, "family": family, "refused": str(err)[:200]})
                continue
            row["steps"] += info.iterations.tolist()
            if dtype == torch.float64:
                P = S.as_polyhedron(m, n)
                A, a, B, b = (t.numpy() for t in (P.A, P.a, P.B, P.b))
                ok = [certify_projection(x[i].flatten().numpy(), y[i].flatten().numpy(), A, a, B, b)["kkt"] <= 1e-9
                      for i in range(BATCH)]
            else:
                ok = S.contains(y).tolist()
            good = int(sum(ok))
            row["certified"] += good
            row["wrong"] += BATCH - good
            if good < BATCH:
                failures.append({"scale": scale, "m": m, "n": n, "k": k, "family": family, "dtype": str(dtype)})
        steps = np.array(row.pop("steps") or [0])
        row.update(mean_steps=float(steps.mean()), max_steps=int(steps.max()))
        for key in counts:
            counts[key] += row[key]
        by_scale.append(row)
    print(f"{'scale':>8} {'points':>7} {'certified':>9} {'wrong':>6} {'refused':>7} {'steps mean/max':>15}")
    for r in by_scale:
        print(f"{r['scale']:>8.0e} {r['points']:>7} {r['certified']:>9} {r['wrong']:>6} {r['refused']:>7} "
              f"{r['mean_steps']:>9.1f} / {r['max_steps']}")
    print(f"total: {counts}")
    meta = {"commit": commit(), "seed": args.seed, "trials_per_scale": args.trials, "batch": BATCH,
            "seconds": time.perf_counter() - t0, "certificate_tol": 1e-9, "versions": versions("polyproj", "scipy")}
    write_json(args.out / "fuzz_partial_matching.json", {"meta": meta, "counts": counts, "by_scale": by_scale,
                                                         "failures": failures[:200]})
    print(f"wrote {args.out / 'fuzz_partial_matching.json'}")
    return 0 if counts["wrong"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
