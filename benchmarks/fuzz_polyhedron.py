"""Fuzz the general polyhedron: many random degenerate polyhedra (``tests/problems.py::
fuzz_instance``), each output certified by its own KKT system (NNLS), and projecting the output
again must return it (to the solver tolerance; the largest discrepancy is reported).  Counts
certified / wrong / crashed / refused; writes JSON.

    python benchmarks/fuzz_polyhedron.py [--count 10000] [--seed 0] [--dtype float64]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import polyproj as pp  # noqa: E402
from polyproj.testing import certify_projection  # noqa: E402
from problems import fuzz_instance  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=10000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dtype", choices=["float64", "float32"], default="float64")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = parser.parse_args(argv)
    dtype = getattr(torch, args.dtype)
    cert_tol = 1e-8 if dtype == torch.float64 else 1e-5
    counts = {"certified": 0, "wrong": 0, "crashed": 0, "refused": 0}
    failures = []
    worst_kkt = worst_twice = 0.0
    t0 = time.perf_counter()
    for k in tqdm(range(args.count), desc="fuzz"):
        rng = np.random.default_rng([args.seed, k])
        A, a, B, b, X = fuzz_instance(rng)
        try:
            P = pp.Polyhedron(A=A if A.shape[0] else None, a=a if A.shape[0] else None,
                              B=B if B.shape[0] else None, b=b if B.shape[0] else None)
            y = pp.project(torch.tensor(X, dtype=dtype), P)
            y2 = pp.project(y, P)
        except (pp.ConvergenceError, pp.InfeasibleError) as err:
            counts["refused"] += 1
            failures.append({"case": k, "kind": "refused", "error": str(err)[:200]})
            continue
        except Exception as err:  # noqa: BLE001 - a crash is a finding
            counts["crashed"] += 1
            failures.append({"case": k, "kind": "crashed", "error": f"{type(err).__name__}: {str(err)[:200]}"})
            continue
        yn = y.double().numpy()
        worst = max(certify_projection(xk, yk, A, a, B, b)["kkt"] for xk, yk in zip(X, yn))
        scale = max(1.0, float(np.abs(X).max()))
        twice = float((y2.double() - y.double()).abs().max()) / scale
        worst_kkt, worst_twice = max(worst_kkt, worst), max(worst_twice, twice)
        if worst <= cert_tol and twice <= cert_tol:
            counts["certified"] += 1
        else:
            counts["wrong"] += 1
            failures.append({"case": k, "kind": "wrong", "certified_kkt": worst, "twice": twice})
    seconds = time.perf_counter() - t0
    print(f"{args.count} fuzzed polyhedra ({args.dtype}), {seconds:.0f} s: {counts}; worst certified KKT "
          f"{worst_kkt:.1e}, worst |Π(Π(x)) − Π(x)| / scale {worst_twice:.1e}")
    for f in failures[:20]:
        print("  ", f)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"fuzz_polyhedron_{args.dtype}.json").write_text(json.dumps(
        {"count": args.count, "seed": args.seed, "dtype": args.dtype, "counts": counts, "seconds": seconds,
         "worst_certified_kkt": worst_kkt, "worst_twice": worst_twice, "failures": failures}, indent=1))


if __name__ == "__main__":
    main()
