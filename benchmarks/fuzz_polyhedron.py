"""Fuzz the general polyhedron: many random degenerate polyhedra (``tests/problems.py::
fuzz_instance``: duplicated, scaled and summed rows, rank-deficient ``B``, rows through a common
point, set scales 1e-6…1e6), with inputs at 1e-6…1e8 times the set's scale, in float64 and
float32.

* float64 outputs are certified by their own KKT system (``polyproj.testing.certify_projection``:
  NNLS multipliers, feasibility relative to the set's scale), independently of the solver, and
  projecting the output again must return it;
* float32 outputs must satisfy ``P.contains(y)`` at the dtype's default tolerance (4 ulps of the
  set's scale) and equal the float64 projection of the same input, rounded.

Counts certified / wrong / crashed / refused per input scale; writes JSON.

    python benchmarks/fuzz_polyhedron.py [--count 10000] [--seed 0] [--bounds]

``--bounds`` adds variable bounds around the instance's feasible point (many tight: weakly
active, fixed coordinates) and passes them natively; the certificate sees them as rows.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import scipy.sparse as sps
import torch
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import polyproj as pp  # noqa: E402
from _common import commit, versions, write_json  # noqa: E402
from polyproj.testing import certify_projection, set_scale  # noqa: E402
from problems import fuzz_bounds, fuzz_instance  # noqa: E402

RATIOS = [10.0**k for k in range(-6, 9)]
CERT_TOL = 1e-9


def check(A, a, B, b, X, dtype, bounds=None, engine="auto", sparse=False):
    """``(kind, detail)`` for one instance: kind is certified / wrong / refused / crashed.  With
    ``bounds = (lower, upper)`` the set gets them natively and ``A, a`` (used by the certificate)
    already hold them as rows."""
    cls = pp.SparsePolyhedron if sparse else pp.Polyhedron
    mat = (lambda M: sps.csr_matrix(M)) if sparse else (lambda M: M)  # noqa: E731
    try:
        if bounds is None:
            P = cls(A=mat(A) if A.shape[0] else None, a=a if A.shape[0] else None,
                    B=mat(B) if B.shape[0] else None, b=b if B.shape[0] else None)
        else:
            m = A.shape[0] - int(np.isfinite(bounds[0]).sum() + np.isfinite(bounds[1]).sum())
            P = cls(A=mat(A[:m]) if m else None, a=a[:m] if m else None, B=mat(B) if B.shape[0] else None,
                    b=b if B.shape[0] else None, lower=bounds[0], upper=bounds[1])
        y = pp.project(torch.tensor(X, dtype=dtype), P, engine=engine)
        if dtype == torch.float32:
            y64 = pp.project(torch.tensor(X, dtype=torch.float32).double(), P, engine=engine)
            ok = bool(P.contains(y).all()) and torch.equal(y, y64.float())
            return ("certified" if ok else "wrong"), {"relative_violation": float(P.violation(y, relative=True).max())}
        y2 = pp.project(y, P, engine=engine)
    except (pp.ConvergenceError, pp.InfeasibleError) as err:
        return "refused", {"error": str(err)[:200]}
    except Exception as err:  # noqa: BLE001 - a crash is a finding
        return "crashed", {"error": f"{type(err).__name__}: {str(err)[:200]}"}
    yn = y.numpy()
    worst = max(certify_projection(xk, yk, A, a, B, b)["kkt"] for xk, yk in zip(X, yn))
    # a point feasible to tol·(set scale) moves by at most about that much when projected again
    scale = max(max(set_scale(yk, A, a, B, b) for yk in yn), float(y.abs().max()), 1e-300)
    twice = float((y2 - y).abs().max()) / scale
    ok = worst <= CERT_TOL and twice <= CERT_TOL
    return ("certified" if ok else "wrong"), {"certified_kkt": worst, "twice": twice}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=10000, help="instances per dtype")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    parser.add_argument("--bounds", action="store_true",
                        help="add variable bounds (tests/problems.py::fuzz_bounds) passed natively (lower=, upper=); "
                             "writes fuzz_polyhedron_bounds.json")
    parser.add_argument("--engine", choices=("auto", "torch", "daqp"), default="auto",
                        help="the forward engine (auto picks DAQP for these small sets on CPU)")
    parser.add_argument("--sparse", action="store_true", help="the same sets as SparsePolyhedron (scipy.sparse data)")
    args = parser.parse_args(argv)
    if args.sparse:
        args.engine = "auto"  # (one engine)
    table = defaultdict(lambda: {"certified": 0, "wrong": 0, "crashed": 0, "refused": 0})
    failures, worst = [], {"certified_kkt": 0.0, "twice": 0.0, "relative_violation_float32": 0.0}
    t0 = time.perf_counter()
    for k in tqdm(range(args.count), desc="polyhedron fuzz"):
        rng = np.random.default_rng([args.seed, k])
        ratio = RATIOS[int(rng.integers(len(RATIOS)))]
        A, a, B, b, X, y0 = fuzz_instance(rng, input_ratio=ratio, return_point=True)
        bounds = None
        if args.bounds:
            scale = max(float(np.abs(y0).max()), 1e-300)
            bounds = fuzz_bounds(rng, y0, scale)
            eye = np.eye(A.shape[1])
            up, lo = np.isfinite(bounds[1]), np.isfinite(bounds[0])
            A = np.vstack([A, eye[up], -eye[lo]])
            a = np.concatenate([a, bounds[1][up], -bounds[0][lo]])
        for dtype in (torch.float64, torch.float32):
            kind, detail = check(A, a, B, b, X, dtype, bounds, args.engine, args.sparse)
            name = str(dtype).removeprefix("torch.")
            table[(name, ratio)][kind] += 1
            if dtype == torch.float64 and kind == "certified":
                worst["certified_kkt"] = max(worst["certified_kkt"], detail["certified_kkt"])
                worst["twice"] = max(worst["twice"], detail["twice"])
            if dtype == torch.float32 and "relative_violation" in detail:
                worst["relative_violation_float32"] = max(worst["relative_violation_float32"], detail["relative_violation"])
            if kind != "certified":
                failures.append({"case": k, "dtype": name, "input_ratio": ratio, "kind": kind, **detail})
    seconds = time.perf_counter() - t0
    totals = {kind: sum(row[kind] for row in table.values()) for kind in ("certified", "wrong", "crashed", "refused")}
    print(f"{args.count} fuzzed polyhedra × 2 dtypes, {seconds:.0f} s: {totals}")
    print(f"worst certified KKT (float64) {worst['certified_kkt']:.1e}; |Π(Π(x)) − Π(x)| / set scale {worst['twice']:.1e}; "
          f"worst float32 relative violation {worst['relative_violation_float32']:.1e}")
    print("| dtype | input / set scale | certified | wrong | crashed | refused |\n|---|---:|---:|---:|---:|---:|")
    for (name, ratio), row in sorted(table.items()):
        print(f"| {name} | {ratio:.0e} | {row['certified']} | {row['wrong']} | {row['crashed']} | {row['refused']} |")
    for f in failures[:20]:
        print("  ", f)
    name = "fuzz_polyhedron" + ("_sparse" if args.sparse else "") + ("_bounds" if args.bounds else "") + ("" if args.engine == "auto" else f"_{args.engine}") + ".json"
    write_json(args.out / name, {
        "meta": {"commit": commit(), "seed": args.seed, "count": args.count, "seconds": seconds, "bounds": args.bounds,
                 "engine": args.engine, "sparse": args.sparse,
                 "certificate_tol": CERT_TOL, "versions": versions("polyproj", "scipy")},
        "counts": totals, "worst": worst,
        "by_scale": [{"dtype": name, "input_ratio": ratio, **row} for (name, ratio), row in sorted(table.items())],
        "failures": failures})
    print(f"wrote {args.out / name}")


if __name__ == "__main__":
    main()
