"""Fuzz the transportation and Birkhoff projections: shapes 1×1 … 64×64, inputs from 10⁻⁶ to
10⁸ times the marginals, float64 and float32, uniform / random / partly zero marginals, integer
ties, duplicated rows and near-permutations.

float64 outputs are certified independently of the solver's duals: HiGHS (through scipy) finds
the dual pair (α, β) that minimises the largest KKT violation

    on the support:  |Y_ij − X_ij − α_i − β_j| ≤ t,      off the support:  Y_ij − α_i − β_j ≤ t,

and the point counts as certified when the marginal residual and negativity are ≤ 1e-9 of the
set's scale (max of r, c and the marginals of |X|: the library's tolerance semantics) and t is
≤ 1e-9 of the input's scale max(|Y|, |X|).  float32 outputs must satisfy ``T.contains(X)`` (4
ulps of the set's scale) and equal the float64 projection of the same input, rounded.  Counts
certified / wrong / crashed / refused and the Newton steps per input scale; writes JSON.

    python benchmarks/fuzz_transport.py [--seed 0] [--batch 16]
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from pathlib import Path

import numpy as np
import scipy.optimize
import scipy.sparse as sp
import torch
from tqdm import tqdm

import polyproj as pp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import commit, versions, write_json  # noqa: E402

SHAPES = [(1, 1), (1, 5), (5, 1), (2, 2), (3, 7), (7, 3), (4, 4), (8, 8), (16, 16), (17, 33), (64, 64)]
SCALES = [1e-6, 1e-2, 1.0, 1e2, 1e4, 1e6, 1e8]
FAMILIES = ["uniform", "random marginals", "zero row", "ties", "duplicated rows", "near-permutation"]
CERT_TOL = 1e-9


def instance(rng, family, m, n, scale, batch):
    """``(Y, r, c)`` as float64 arrays, ``r`` and ``c`` per sample."""
    Y = rng.standard_normal((batch, m, n)) * scale
    r, c = np.full((batch, m), float(n)), np.full((batch, n), float(m))
    if family in ("random marginals", "zero row"):
        r = rng.uniform(0.0, 1.0, (batch, m))
        if family == "zero row" and m > 1:
            r[:, 0] = 0.0
        c = rng.uniform(0.0, 1.0, (batch, n))
        c *= r.sum(1, keepdims=True) / c.sum(1, keepdims=True)
    elif family == "ties":
        Y = rng.integers(-3, 4, (batch, m, n)) * scale
    elif family == "duplicated rows":
        Y[:, -1] = Y[:, 0]
    elif family == "near-permutation":
        r, c = np.ones((batch, m)), np.ones((batch, n))
        Y = np.stack([np.eye(n)[rng.permutation(n)] for _ in range(batch)]) * max(scale, 1.0)
        Y += 1e-9 * rng.standard_normal(Y.shape)
    return Y, r, c


def certify(Y, X, r, c):
    """Largest relative KKT violation of ``X`` as the projection of ``Y`` (one sample), with the
    dual pair chosen by an LP (HiGHS), not taken from the solver.  The measure is invariant to
    scaling (Y, X, r, c) together, so the LP is posed in units of the input's scale: HiGHS
    reported an unknown model status on inputs of 3e8 posed as they are."""
    m, n = Y.shape
    unit = max(np.abs(Y).max(), np.abs(X).max(), 1e-300)
    Y, X, r, c = Y / unit, X / unit, r / unit, c / unit
    aX = np.abs(X)
    s_set = max(r.max(), c.max(), aX.sum(1).max(), aX.sum(0).max(), np.finfo(float).eps * np.abs(Y).max(), 1e-300)
    s_in = max(np.abs(Y).max(), aX.max(), 1e-300)
    marg = max(np.abs(X.sum(1) - r).max(), np.abs(X.sum(0) - c).max()) / s_set
    if X.min() < 0:
        return max(marg, -X.min() / s_set)
    support = X > 1e-12 * s_set
    rows, cols = np.nonzero(support)
    orow, ocol = np.nonzero(~support)
    # variables (α, β, t); constraints A x ≤ b
    def block(ri, ci, sign):
        k = len(ri)
        A = sp.hstack([sp.csr_matrix((np.full(k, sign), (np.arange(k), ri)), shape=(k, m)),
                       sp.csr_matrix((np.full(k, sign), (np.arange(k), ci)), shape=(k, n)),
                       sp.csr_matrix(-np.ones((k, 1)))])
        return A
    resid = (Y - X)[rows, cols]
    A = sp.vstack([block(rows, cols, 1.0), block(rows, cols, -1.0), block(orow, ocol, -1.0)]).tocsr()
    b = np.concatenate([resid, -resid, -Y[orow, ocol]])
    cost = np.zeros(m + n + 1)
    cost[-1] = 1.0
    lp = scipy.optimize.linprog(cost, A_ub=A, b_ub=b, bounds=[(None, None)] * (m + n) + [(0, None)], method="highs")
    if lp.status != 0:
        return float("inf")
    return max(marg, lp.x[-1] / s_in)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch", type=int, default=16, help="samples per (shape, scale, family); 4 for 64×64")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = parser.parse_args(argv)
    counts = {"certified": 0, "wrong": 0, "crashed": 0, "refused": 0}
    failures, groups = [], []
    worst_kkt, worst_steps = 0.0, 0
    t0 = time.perf_counter()
    cases = list(itertools.product(SHAPES, SCALES, FAMILIES, ("float64", "float32")))
    for k, ((m, n), scale, family, dtype) in enumerate(tqdm(cases, desc="transport fuzz")):
        if family == "near-permutation" and m != n:
            continue
        batch = 4 if m * n > 1000 else args.batch
        Y, r, c = instance(np.random.default_rng([args.seed, k // 2]), family, m, n, scale, batch)
        label = {"m": m, "n": n, "scale": scale, "family": family, "dtype": dtype}
        try:
            T = pp.Transportation(torch.tensor(r), torch.tensor(c))
            Yt = torch.tensor(Y, dtype=getattr(torch, dtype))
            X, info = pp.project(Yt, T, return_info=True)
            if dtype == "float32":
                ok = T.contains(X) & (X == pp.project(Yt.double(), T).float()).flatten(1).all(1)
                counts["certified"] += int(ok.sum())
                counts["wrong"] += batch - int(ok.sum())
                if not bool(ok.all()):
                    failures.append({**label, "kind": "wrong", "relative_violation": float(T.violation(X, relative=True).max())})
                continue
        except (pp.ConvergenceError, pp.InfeasibleError) as err:
            counts["refused"] += batch
            failures.append({**label, "kind": "refused", "error": str(err)[:200]})
            continue
        except Exception as err:  # noqa: BLE001 - a crash is a finding
            counts["crashed"] += batch
            failures.append({**label, "kind": "crashed", "error": f"{type(err).__name__}: {str(err)[:200]}"})
            continue
        kkt = [certify(Y[i], X[i].numpy(), r[i], c[i]) for i in range(batch)]
        steps = int(info.iterations.max())
        worst_kkt, worst_steps = max(worst_kkt, max(kkt)), max(worst_steps, steps)
        ok = int(sum(v <= CERT_TOL for v in kkt))
        counts["certified"] += ok
        counts["wrong"] += batch - ok
        if ok < batch:
            failures.append({**label, "kind": "wrong", "worst_kkt": max(kkt)})
        groups.append({**label, "batch": batch, "worst_kkt": max(kkt), "mean_steps": float(info.iterations.float().mean()),
                       "max_steps": steps})
    seconds = time.perf_counter() - t0
    total = sum(counts.values())
    print(f"{total} transportation/Birkhoff projections, {seconds:.0f} s: {counts}; worst certified KKT "
          f"{worst_kkt:.1e}; most Newton steps {worst_steps}")
    slow = sorted(groups, key=lambda g: -g["max_steps"])[:5]
    print("most steps: " + "; ".join(f"{g['m']}x{g['n']} scale {g['scale']:g} {g['family']}: mean {g['mean_steps']:.1f}, "
                                     f"max {g['max_steps']}" for g in slow))
    by_scale = []
    print("| input / marginals | mean Newton steps | max | mean at 64×64 | max at 64×64 |\n|---:|---:|---:|---:|---:|")
    for scale in SCALES:
        rows = [g for g in groups if g["scale"] == scale]
        big = [g for g in rows if g["m"] * g["n"] > 1000]
        w = sum(g["batch"] for g in rows)
        row = {"scale": scale, "mean_steps": sum(g["mean_steps"] * g["batch"] for g in rows) / max(w, 1),
               "max_steps": max((g["max_steps"] for g in rows), default=0),
               "mean_steps_64": sum(g["mean_steps"] for g in big) / max(len(big), 1),
               "max_steps_64": max((g["max_steps"] for g in big), default=0)}
        by_scale.append(row)
        print(f"| {scale:.0e} | {row['mean_steps']:.1f} | {row['max_steps']} | {row['mean_steps_64']:.1f} | {row['max_steps_64']} |")
    for f in failures[:20]:
        print("  ", f)
    write_json(args.out / "fuzz_transport.json", {
        "meta": {"commit": commit(), "seed": args.seed, "batch": args.batch, "seconds": seconds,
                 "certificate_tol": CERT_TOL, "versions": versions("polyproj", "scipy")},
        "counts": counts, "worst_certified_kkt": worst_kkt, "most_newton_steps": worst_steps,
        "by_scale": by_scale, "failures": failures, "groups": groups})
    print(f"wrote {args.out / 'fuzz_transport.json'}")


if __name__ == "__main__":
    main()
