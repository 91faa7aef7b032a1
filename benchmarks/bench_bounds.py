"""Variable bounds handled natively against the same set written with one row per bound, in one
run: the partial-matching polytope {X ≥ 0, X1 ≤ 1, Xᵀ1 ≤ 1, 1ᵀX1 = k} on k×k matrices
(k² variables, 2k + 1 general rows), batch 64, float64, forward + backward:

* ``Polyhedron(A=, a=, B=, b=, lower=0)`` — bounds native (the masked systems factorise only the
  2k + 1 general rows restricted to the free variables);
* ``Polyhedron`` with the k² nonnegativity rows as rows of ``A`` (the Gram matrix is
  (k² + 2k + 1)²);
* polyproj's dedicated ``PartialMatching`` solver (what a structured set buys on top);
* proxsuite's QPLayer on the row formulation (its QP layer has no bound argument).

Every output is checked against the polytope (largest violation) and against the bounded
answer.  ``python benchmarks/bench_bounds.py [--out DIR] [--repeats 5] [--threads 1]`` prints a
table and writes ``bounds.json`` and ``bounds.png``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from tqdm import tqdm

import polyproj as pp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import commit, plot_methods, versions, write_json  # noqa: E402
from bench_polyhedron import run_qplayer  # noqa: E402
from bench_structured import interleaved  # noqa: E402

BATCH = 64
SIZES = (10, 20, 30)


def partial_matching_sets(k: int, total: float):
    """(bounded polyhedron, row polyhedron, dedicated set) of the same polytope on k×k."""
    S = pp.PartialMatching(total)
    R = S.as_polyhedron(k, k)  # every constraint a row, the nonnegativity ones included
    nonneg = ((R.A < 0).sum(1) == 1) & ((R.A != 0).sum(1) == 1)
    P = pp.Polyhedron(A=R.A[~nonneg], a=R.a[~nonneg], B=R.B, b=R.b, lower=0.0)
    return P, R, S


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(0)
    rows = []
    for k in tqdm(SIZES, desc="sizes"):
        P, R, S = partial_matching_sets(k, k / 2)
        x = torch.randn(BATCH, k * k, generator=gen, dtype=torch.float64)
        qp = run_qplayer(R.A.numpy(), R.a.numpy(), R.B.numpy(), R.b.numpy())
        methods = {
            "bounds native": lambda z: pp.project(z, P),
            "bounds as rows": lambda z: pp.project(z, R),
            "PartialMatching (dedicated)": lambda z: pp.project(z.reshape(-1, k, k), S).reshape(z.shape),
            "QPLayer (rows)": qp,
        }
        secs, outs = interleaved(methods, x, args.repeats, once=("bounds as rows", "QPLayer (rows)"))
        info = pp.project(x, P, return_info=True)[1]
        ref = outs["bounds native"]
        for name in methods:
            y = outs[name].detach()
            rows.append({"k": k, "n": k * k, "general_rows": 2 * k + 1, "batch": BATCH, "method": name,
                         "seconds": secs[name], "violation": float(R.violation(y).max()),
                         "max_diff_to_bounded": float((y - ref).abs().max()),
                         **({"kkt_max": float(info.kkt_residual.max()), "newton_steps_mean": float(info.iterations.float().mean())}
                            if name == "bounds native" else {})})
    print(f"{'k':>3} {'n':>5}  {'method':<28} {'fwd+bwd [ms]':>12} {'× native':>9} {'violation':>10} {'max |Δy|':>9}")
    for r in rows:
        base = next(b["seconds"] for b in rows if b["k"] == r["k"] and b["method"] == "bounds native")
        print(f"{r['k']:>3} {r['n']:>5}  {r['method']:<28} {1e3 * r['seconds']:>12.1f} {r['seconds'] / base:>9.2f} "
              f"{r['violation']:>10.1e} {r['max_diff_to_bounded']:>9.1e}")
    meta = {"commit": commit(), "dtype": "float64", "device": "cpu", "threads": torch.get_num_threads(),
            "batch": BATCH, "repeats": args.repeats, "versions": versions("polyproj", "proxsuite")}
    write_json(args.out / "bounds.json", {"meta": meta, "rows": rows})
    plot(rows, args.out / "bounds.png")
    print(f"wrote {args.out / 'bounds.json'} and {args.out / 'bounds.png'}")


def plot(rows, path):
    plot_methods(rows, path, lambda r: r["n"], xlabel="variables n = k² (2k + 1 general rows, batch 64)",
                 title="partial-matching polytope: bounds native vs rows", loglog=True)


if __name__ == "__main__":
    main()
