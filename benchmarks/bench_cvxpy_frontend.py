"""Coming from cvxpylayers: one cvxpy model, two layers, in one run.

The model is the projection onto {y ≥ 0, 1ᵀy = 1, F y ≤ g, y ≤ u} with parameters x (the
point), F, g and a per-sample u — n variables, m = n/4 coupling rows — written once in cvxpy and
turned into

* ``CvxpyLayer(problem, parameters=[x, F, g, u], variables=[y])`` with its default solver
  settings and with tight ones (``eps = 1e-10``);
* ``pp.from_cvxpy(problem, parameters=[x, F, g, u])``.

Forward + backward (gradients for every parameter), float64, batch 64, median of repeats.
Each output's largest violation of the set and its distance to polyproj's certified
projection are reported.  ``python benchmarks/bench_cvxpy_frontend.py [--out DIR]`` prints a
table and writes ``cvxpy_frontend.json``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import cvxpy as cp
import numpy as np
import torch
from tqdm import tqdm

import polyproj as pp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import commit, versions, write_json  # noqa: E402

BATCH = 64
SIZES = (20, 60, 120)


def model(n: int):
    m = max(1, n // 4)
    y, x = cp.Variable(n), cp.Parameter(n)
    F, g, u = cp.Parameter((m, n)), cp.Parameter(m), cp.Parameter(n)
    problem = cp.Problem(cp.Minimize(cp.sum_squares(y - x)), [y >= 0, cp.sum(y) == 1, F @ y <= g, y <= u])
    return problem, [x, F, g, u], y


def values(n: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    m = max(1, n // 4)
    x = torch.randn(BATCH, n, dtype=torch.float64, generator=gen) / n**0.5
    F = torch.randn(m, n, dtype=torch.float64, generator=gen)
    g = 0.2 + torch.rand(m, dtype=torch.float64, generator=gen)
    u = 2.0 / n + torch.rand(BATCH, n, dtype=torch.float64, generator=gen) * 4.0 / n
    return [x, F, g, u]


def timed(layer, vals, repeats):
    ts, y = [], None
    for _ in range(repeats):
        inputs = [v.clone().requires_grad_() for v in vals]
        t0 = time.perf_counter()
        y = layer(*inputs)
        y = y[0] if isinstance(y, tuple) else y
        (y * torch.arange(y.shape[-1], dtype=y.dtype)).sum().backward()
        ts.append(time.perf_counter() - t0)
    return float(np.median(ts)), y.detach()


def main(argv=None):
    from cvxpylayers.torch import CvxpyLayer

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = []
    for n in tqdm(SIZES, desc="sizes"):
        problem, params, y = model(n)
        vals = values(n)
        ours = pp.from_cvxpy(problem, parameters=params)
        theirs = CvxpyLayer(problem, parameters=params, variables=[y])
        layers = {"polyproj from_cvxpy": ours,
                  "CvxpyLayer (default)": theirs,
                  "CvxpyLayer (eps 1e-10)": lambda *v: theirs(*v, solver_args={"eps": 1e-10, "max_iters": 100_000})}
        P = ours.polyhedron(*vals[1:])
        y_ref, info = pp.project(vals[0], P, return_info=True)
        for name, layer in layers.items():
            layer(*vals)  # warm-up (cvxpylayers compiles its problem on the first call)
            sec, out = timed(layer, vals, args.repeats)
            rows.append({"n": n, "m": n // 4, "batch": BATCH, "method": name, "seconds": sec,
                         "violation": float(P.violation(out).max()),
                         "max_diff_to_polyproj": float((out - y_ref).abs().max()),
                         **({"kkt_max": float(info.kkt_residual.max())} if name.startswith("polyproj") else {})})
    print(f"{'n':>4}  {'method':<24} {'fwd+bwd [ms]':>12} {'× polyproj':>10} {'violation':>10} {'max |Δy|':>9}")
    for r in rows:
        base = next(b["seconds"] for b in rows if b["n"] == r["n"] and b["method"].startswith("polyproj"))
        print(f"{r['n']:>4}  {r['method']:<24} {1e3 * r['seconds']:>12.1f} {r['seconds'] / base:>10.1f} "
              f"{r['violation']:>10.1e} {r['max_diff_to_polyproj']:>9.1e}")
    meta = {"commit": commit(), "dtype": "float64", "device": "cpu", "threads": torch.get_num_threads(), "batch": BATCH,
            "repeats": args.repeats, "versions": versions("polyproj", "cvxpy", "cvxpylayers", "diffcp")}
    write_json(args.out / "cvxpy_frontend.json", {"meta": meta, "rows": rows})
    print(f"wrote {args.out / 'cvxpy_frontend.json'}")


if __name__ == "__main__":
    main()
