"""Inputs far from the set: the largest violation of the returned points and whether they were
reported converged, for the sets and scales where earlier versions returned points outside the
set (by up to 0.3, with ``converged = True``).  Every row must show a violation at rounding
level of the set's scale or a raised ``ConvergenceError``.

    python benchmarks/far_inputs.py [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

import polyproj as pp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import commit, versions, write_json  # noqa: E402


def issue_polyhedron(n=50, seed=0):
    """y ≥ 0, 1ᵀy = 1 and 10 random rows through an interior point; the solution has entries of order 1."""
    rng = np.random.default_rng(seed)
    A = np.vstack([-np.eye(n), rng.standard_normal((10, n))])
    y0 = np.full(n, 1.0 / n)
    a = np.concatenate([np.zeros(n), A[n:] @ y0 + rng.uniform(0.1, 1.0, 10)])
    return pp.Polyhedron(A=A, a=a, B=np.ones((1, n)), b=[1.0])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    P = issue_polyhedron()
    cases = [("Polyhedron n=50 (y ≥ 0, 1ᵀy = 1, 10 rows)", P, (50,)),
             ("Birkhoff 16×16", pp.Birkhoff(), (16, 16)),
             ("CappedSimplex n=50, caps 0.1", pp.CappedSimplex(0.0, 0.1, 1.0), (50,)),
             ("Simplex n=50", pp.Simplex(), (50,))]
    rows = []
    print("| set | dtype | input scale | max violation | max violation / set scale | converged | Newton steps (mean / max) |")
    print("|---|---|---:|---:|---:|---|---:|")
    for name, S, event in cases:
        for dtype in (torch.float32, torch.float64):
            for scale in (1e2, 1e4, 1e6, 1e8):
                x = scale * torch.randn(64, *event, dtype=dtype)
                row = {"set": name, "dtype": str(dtype).removeprefix("torch."), "scale": scale}
                try:
                    y, info = pp.project(x, S, return_info=True)
                    row.update(violation=max(0.0, float(S.violation(y).max())), relative=max(0.0, float(S.violation(y, relative=True).max())),
                               converged=bool(info.converged.all()), mean_steps=float(info.iterations.float().mean()),
                               max_steps=int(info.iterations.max()))
                    print(f"| {name} | {row['dtype']} | {scale:.0e} | {row['violation']:.1e} | {row['relative']:.1e} | "
                          f"{row['converged']} | {row['mean_steps']:.1f} / {row['max_steps']} |")
                except pp.ConvergenceError as err:
                    row.update(error=str(err)[:200])
                    print(f"| {name} | {row['dtype']} | {scale:.0e} | — | — | raised ConvergenceError | — |")
                rows.append(row)
    write_json(args.out / "far_inputs.json", {"meta": {"commit": commit(), "versions": versions("polyproj")}, "rows": rows})
    print(f"wrote {args.out / 'far_inputs.json'}")


if __name__ == "__main__":
    main()
