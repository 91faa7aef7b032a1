"""Reliability suite on the Maros–Mészáros feasible sets (n ≤ 1000).

For each problem ``{x : l ≤ A x ≤ u}`` (OSQP form; ±1e20/±inf mark a missing side, l = u an
equality) the script projects several points — the unconstrained minimiser ``−P⁺q`` of the
original QP and Gaussians at 0.1×, 1× and 10× the data scale — and certifies every output by
its own KKT system (primal violation, NNLS multipliers on the active rows, stationarity),
independently of the solver.  Each problem is classified as

* solved — every output certified (relative KKT ≤ 1e-7, with the library's tolerance semantics:
  feasibility row by row at the set's scale, stationarity at the input's),
* wrong — an output was returned that fails its certificate,
* crashed — an unexpected exception,
* refused — an honest ``InfeasibleError`` or ``ConvergenceError``.  A refusal is explained by
  the geometry at the answer: for the worst refused point the Clarabel solution gives the
  active rows (slack ≤ 1e-9 of their row's scale), their rank and smallest nonzero singular value, and the
  largest NNLS multiplier relative to the data scale (huge multipliers on nearly dependent
  active rows are what slows the augmented-Lagrangian multiplier update), and the relative KKT
  residual with which the same certificate accepts Clarabel's point (whether the projection
  can be certified in double precision at all).

    python benchmarks/reliability_maros_meszaros.py [--data DIR] [--out DIR] [--only NAME ...] [--bounds]

With ``--bounds`` the single-variable rows go in as native bounds (``lower=``/``upper=``) and
the results go to ``maros_meszaros_bounds.json``.

Writes ``maros_meszaros.json`` (resumable: finished problems are skipped) and prints a table.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import scipy.io as sio
import torch
from tqdm import tqdm

import polyproj as pp
from polyproj.testing import active_system, certify_projection, reference_projection, row_scales

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "maros_meszaros"
BIG = 1e19


def load_polyhedron_data(path: Path):
    """(A, a, B, b, P, q): inequalities A y ≤ a and equalities B y = b from l ≤ A x ≤ u."""
    d = sio.loadmat(path)
    A = d["A"].toarray() if hasattr(d["A"], "toarray") else np.asarray(d["A"])
    l, u = d["l"].ravel().astype(float), d["u"].ravel().astype(float)
    P = d["P"].toarray() if hasattr(d["P"], "toarray") else np.asarray(d["P"])
    q = d["q"].ravel().astype(float)
    eq = np.isfinite(l) & np.isfinite(u) & (np.abs(l) < BIG) & (l == u)
    up = ~eq & np.isfinite(u) & (np.abs(u) < BIG)
    lo = ~eq & np.isfinite(l) & (np.abs(l) < BIG)
    A_ineq = np.vstack([A[up], -A[lo]])
    a_ineq = np.concatenate([u[up], -l[lo]])
    return A_ineq, a_ineq, A[eq], u[eq], P, q


def points(A, a, B, b, P, q, rng):
    n = A.shape[1] if A.shape[0] else B.shape[1]
    scale = max(1.0, float(np.abs(np.concatenate([a, b])).max(initial=0.0)))
    pts = [("-pinv(P) q", -np.linalg.lstsq(P, q, rcond=None)[0])]
    for s in (0.1, 1.0, 10.0):
        pts.append((f"gaussian x{s:g}", s * scale * rng.standard_normal(n)))
    return pts


def split_bounds(A, a):
    """Inequality rows with a single nonzero, ``α y_j ≤ β``, as bounds (the tightest per side),
    and the remaining rows: ``(A_rest, a_rest, lower, upper)``."""
    n = A.shape[1]
    nz = A != 0
    single = nz.sum(1) == 1
    j = np.argmax(nz, axis=1)
    alpha = A[np.arange(A.shape[0]), j]
    lower, upper = np.full(n, -np.inf), np.full(n, np.inf)
    for i in np.flatnonzero(single):
        v = a[i] / alpha[i]
        if alpha[i] > 0:
            upper[j[i]] = min(upper[j[i]], v)
        else:
            lower[j[i]] = max(lower[j[i]], v)
    return A[~single], a[~single], lower, upper


def run_problem(path: Path, seed: int = 0, bounds: bool = False) -> dict:
    A, a, B, b, Pq, q = load_polyhedron_data(path)
    rng = np.random.default_rng(seed)
    row = {"problem": path.stem, "n": int(Pq.shape[0]), "m": int(A.shape[0]), "p": int(B.shape[0])}
    t0 = time.perf_counter()
    try:
        if bounds:  # single-variable rows as native bounds; the certificate still uses every row
            A_r, a_r, lower, upper = split_bounds(A, a)
            row["bounds"] = int(np.isfinite(lower).sum() + np.isfinite(upper).sum())
            P = pp.Polyhedron(A=A_r if A_r.shape[0] else None, a=a_r if A_r.shape[0] else None,
                              B=B if B.shape[0] else None, b=b if B.shape[0] else None, lower=lower, upper=upper)
        else:
            P = pp.Polyhedron(A=A if A.shape[0] else None, a=a if A.shape[0] else None,
                              B=B if B.shape[0] else None, b=b if B.shape[0] else None)
    except pp.InfeasibleError as err:
        return dict(row, status="refused", detail=f"InfeasibleError: {str(err)[:160]}", seconds=time.perf_counter() - t0)
    except Exception as err:  # noqa: BLE001 - a crash is a result here
        return dict(row, status="crashed", detail=f"{type(err).__name__}: {str(err)[:160]}", seconds=time.perf_counter() - t0)
    pts = points(A, a, B, b, Pq, q, rng)
    X = np.stack([p for _, p in pts])
    try:
        y, info = pp.project(torch.tensor(X), P, return_info=True)
    except pp.ConvergenceError as err:
        seconds = time.perf_counter() - t0
        worst = int(err.info.kkt_residual.reshape(-1).nan_to_num(float("inf")).argmax())
        return dict(row, status="refused", detail=f"ConvergenceError: {str(err)[:160]}", seconds=seconds,
                    reported_kkt=float(err.info.kkt_residual.max()), diagnosis=diagnose(X[worst], A, a, B, b))
    except Exception as err:  # noqa: BLE001
        return dict(row, status="crashed", detail=f"{type(err).__name__}: {str(err)[:160]}", seconds=time.perf_counter() - t0)
    seconds = time.perf_counter() - t0
    certs = [certify_projection(xk, yk, A, a, B, b) for xk, yk in zip(X, y.numpy())]
    worst = max(c["kkt"] for c in certs)
    return dict(row, status="solved" if worst <= 1e-7 else "wrong", seconds=seconds, worst_certified_kkt=worst,
                reported_kkt=float(info.kkt_residual.max()), iterations=int(info.iterations.max()),
                max_active=int(info.active.sum(-1).max()), points=[name for name, _ in pts])


def diagnose(x, A, a, B, b) -> dict:
    """Geometry of the projection of ``x`` at the Clarabel reference solution: active rows,
    their rank and smallest nonzero singular value (rows normalised), and the largest NNLS
    multiplier relative to the scale max(‖x‖∞, ‖y‖∞, 1)."""
    data = (A if A.shape[0] else None, a if A.shape[0] else None, B if B.shape[0] else None, b if B.shape[0] else None)
    try:
        y = reference_projection(x, *data, tol=1e-9)
    except RuntimeError as err:
        return {"reference": str(err)}
    cert = certify_projection(x, y, *data)
    rows = active_system(y, *data, scale=row_scales(y, *data))
    M = np.vstack([rows["active"], rows["B"]])
    sv = np.linalg.svd(M, compute_uv=False) if M.shape[0] else np.zeros(0)
    rank = int((sv > 1e-10 * sv.max(initial=0)).sum())
    return {"active_rows": int(M.shape[0]), "rank": rank, "n": int(x.shape[0]),
            "smallest_singular_value": float(sv[rank - 1]) if rank else None,
            "largest_multiplier_over_scale": cert["largest_multiplier"],
            # the same certificate applied to Clarabel's point: whether double precision can
            # certify this projection at all
            "reference_certified_kkt": cert["kkt"]}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    parser.add_argument("--only", nargs="*", default=None)
    parser.add_argument("--bounds", action="store_true",
                        help="pass single-variable rows as native bounds (lower=, upper=); writes maros_meszaros_bounds.json")
    args = parser.parse_args(argv)
    files = sorted(args.data.glob("*.mat"))
    if args.only:
        files = [f for f in files if f.stem in args.only]
    out = args.out / ("maros_meszaros_bounds.json" if args.bounds else "maros_meszaros.json")
    done = {r["problem"]: r for r in json.loads(out.read_text())["rows"]} if out.exists() and not args.only else {}
    rows = []
    for f in tqdm(files, desc="Maros-Meszaros"):
        r = done.get(f.stem) or run_problem(f, bounds=args.bounds)
        rows.append(r)
        if not args.only:
            args.out.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps({"rows": rows}, indent=1))
    print(f"{'problem':<10} {'n':>5} {'m':>5} {'p':>4} {'status':<8} {'certified KKT':>13} {'iters':>5} {'seconds':>8}")
    for r in rows:
        kkt = f"{r['worst_certified_kkt']:.1e}" if "worst_certified_kkt" in r else "-"
        print(f"{r['problem']:<10} {r['n']:>5} {r['m']:>5} {r['p']:>4} {r['status']:<8} {kkt:>13} "
              f"{r.get('iterations', '-'):>5} {r['seconds']:>8.2f}  {r.get('detail', '')}")
    counts = {s: sum(r["status"] == s for r in rows) for s in ("solved", "wrong", "crashed", "refused")}
    print(counts)
    for r in rows:
        if "diagnosis" in r and "rank" in r["diagnosis"]:
            d = r["diagnosis"]
            print(f"{r['problem']:<10} refused: {d['active_rows']} active rows of rank {d['rank']} (n = {d['n']}), "
                  f"smallest singular value {d['smallest_singular_value']:.1e}, "
                  f"largest multiplier {d['largest_multiplier_over_scale']:.1e} × scale; "
                  f"Clarabel's point certifies to {d['reference_certified_kkt']:.1e}")


if __name__ == "__main__":
    main()
