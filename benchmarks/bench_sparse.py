"""Sparse constraint sets at scale, peers in the same run.

Random sparse set: n variables, K = n/10 rows with ~10 nonzeros per column (nnz ≈ 10 n), 10 % of
the rows equalities, bounds 0 ≤ y ≤ 1, built around an interior point; batch 8, float64.

* ``pp.SparsePolyhedron`` (matrix-free dual semismooth Newton, CG), forward + backward;
* Clarabel (interior point, sparse, tol 1e-10) once per sample, **forward only**;
* cvxpylayers (``CvxpyLayer``, default solver), forward + backward, in a child process under a
  time limit.

Every polyproj output is certified by its KKT residual; each peer's distance to it and largest
violation are reported.  The main row is n = 2·10⁴; a curve of polyproj's time against n
(10³ … 10⁵) shows the growth with nnz.  ``python benchmarks/bench_sparse.py [--out DIR]
[--sizes ...]`` prints tables and writes ``sparse.json`` (resumable: finished sizes are kept)
and ``sparse.png``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import sys
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sps
import torch
from tqdm import tqdm

import polyproj as pp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import commit, versions, write_json  # noqa: E402

BATCH = 8
MAIN_N = 20_000
CURVE = (1_000, 3_000, 10_000, 30_000, 100_000)
PEER_LIMIT_S = 600


def make_problem(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    K = n // 10
    A = sps.random(K, n, density=10 / K, random_state=rng, format="csr")
    A.data = rng.standard_normal(A.nnz)
    y0 = rng.uniform(0.2, 0.8, n)
    c = A @ y0
    p = K // 10
    c[: K - p] += rng.uniform(0.0, 0.5, K - p)
    X = 2.0 * rng.standard_normal((BATCH, n))
    return A, c, K - p, X


def polyproj_run(A, c, m, X):
    S = pp.SparsePolyhedron(A=A[:m], a=c[:m], B=A[m:], b=c[m:], lower=0.0, upper=1.0, check_feasibility=False)
    x = torch.tensor(X, requires_grad=True)
    t0 = time.perf_counter()
    y, info = pp.project(x, S, return_info=True)
    t1 = time.perf_counter()
    (y * torch.arange(X.shape[1], dtype=torch.float64)).sum().backward()
    t2 = time.perf_counter()
    return {"fwd_s": t1 - t0, "bwd_s": t2 - t1, "fwdbwd_s": t2 - t0, "kkt_max": float(info.kkt_residual.max()),
            "newton_steps": int(info.iterations.max())}, y.detach().numpy(), S


def clarabel_run(A, c, m, X):
    import clarabel

    n = A.shape[1]
    I = sps.identity(n, format="csc")
    Acon = sps.vstack([A[m:], A[:m], I, -I]).tocsc()
    b = np.concatenate([c[m:], c[:m], np.ones(n), np.zeros(n)])
    cones = [clarabel.ZeroConeT(A.shape[0] - m), clarabel.NonnegativeConeT(m + 2 * n)]
    settings = clarabel.DefaultSettings()
    settings.verbose = False
    settings.tol_gap_abs = settings.tol_gap_rel = settings.tol_feas = 1e-10
    out, statuses = [], []
    t0 = time.perf_counter()
    for xk in X:
        sol = clarabel.DefaultSolver(sps.identity(n, format="csc"), -xk, Acon, b, cones, settings).solve()
        out.append(np.array(sol.x))
        statuses.append(str(sol.status))
    return time.perf_counter() - t0, np.stack(out), statuses


def _cvxpylayers_child(args, queue):
    A, c, m, X = args
    try:
        import cvxpy as cp
        from cvxpylayers.torch import CvxpyLayer

        n = A.shape[1]
        y, x = cp.Variable(n), cp.Parameter(n)
        problem = cp.Problem(cp.Minimize(cp.sum_squares(y - x)), [A[:m] @ y <= c[:m], A[m:] @ y == c[m:], y >= 0, y <= 1])
        t0 = time.perf_counter()
        layer = CvxpyLayer(problem, parameters=[x], variables=[y])
        setup = time.perf_counter() - t0
        xt = torch.tensor(X, requires_grad=True)
        t0 = time.perf_counter()
        (out,) = layer(xt)
        (out * torch.arange(n, dtype=torch.float64)).sum().backward()
        queue.put({"setup_s": setup, "fwdbwd_s": time.perf_counter() - t0, "y": out.detach().numpy()})
    except Exception as exc:  # a crash is a result
        queue.put({"error": f"{type(exc).__name__}: {str(exc)[:160]}"})


def cvxpylayers_run(A, c, m, X):
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    proc = ctx.Process(target=_cvxpylayers_child, args=((A, c, m, X), q))
    proc.start()
    proc.join(PEER_LIMIT_S)
    if proc.is_alive():
        proc.kill()
        return {"error": f"no result within {PEER_LIMIT_S} s"}
    return q.get() if not q.empty() else {"error": "crashed"}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    parser.add_argument("--sizes", type=int, nargs="*", default=list(CURVE))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-cvxpylayers", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    path = args.out / "sparse.json"
    saved = json.loads(path.read_text()) if path.exists() else {}
    main_row, curve = saved.get("main"), {r["n"]: r for r in saved.get("curve", [])}
    meta = {"commit": commit(), "dtype": "float64", "device": "cpu", "threads": torch.get_num_threads(), "batch": BATCH,
            "versions": versions("polyproj", "clarabel", "cvxpylayers", "cvxpy")}

    def save():
        write_json(path, {"meta": meta, "main": main_row, "curve": sorted(curve.values(), key=lambda r: r["n"])})

    if main_row is None:
        A, c, m, X = make_problem(MAIN_N)
        ours, y, S = polyproj_run(A, c, m, X)
        ours, y, S = polyproj_run(A, c, m, X)  # (second run: the first pays for lazy initialisation)
        cl_s, y_cl, statuses = clarabel_run(A, c, m, X)
        # both points feasible: the one with the smaller ½‖y − x‖² is nearer the projection, and by
        # strong convexity the other lies within √(2·difference) of it
        objective_gap = 0.5 * ((y_cl - X) ** 2).sum(1) - 0.5 * ((y - X) ** 2).sum(1)
        main_row = {"n": MAIN_N, "rows": A.shape[0], "nnz": int(A.nnz), "polyproj": ours,
                    "clarabel": {"fwd_s": cl_s, "status": statuses, "max_diff": float(np.abs(y_cl - y).max()),
                                 "violation": float(S.violation(torch.tensor(y_cl)).max()),
                                 "objective_minus_polyproj": [float(v) for v in objective_gap]}}
        if not args.no_cvxpylayers:
            r = cvxpylayers_run(A, c, m, X)
            if "y" in r:
                r["max_diff"] = float(np.abs(r["y"] - y).max())
                r["violation"] = float(S.violation(torch.tensor(r.pop("y"))).max())
            main_row["cvxpylayers"] = r
        save()
    for n in tqdm([s for s in args.sizes if s not in curve], desc="sizes"):
        A, c, m, X = make_problem(n)
        ours, _, _ = polyproj_run(A, c, m, X)
        curve[n] = {"n": n, "rows": A.shape[0], "nnz": int(A.nnz), **ours}
        save()
    r = main_row
    print(f"n = {r['n']}, {r['rows']} rows, nnz {r['nnz']}, batch {BATCH}")
    print(f"  polyproj SparsePolyhedron fwd+bwd  {r['polyproj']['fwdbwd_s']:8.2f} s   (KKT ≤ {r['polyproj']['kkt_max']:.1e})")
    cl = r["clarabel"]
    print(f"  Clarabel per sample, fwd only      {cl['fwd_s']:8.2f} s   ({cl['fwd_s'] / r['polyproj']['fwdbwd_s']:.1f}× polyproj; "
          f"max |Δy| {cl['max_diff']:.1e}, violation {cl['violation']:.1e})")
    gap = cl.get("objective_minus_polyproj")
    if gap:
        print(f"  Clarabel's ½‖y − x‖² minus polyproj's, per sample: min {min(gap):.1e}, max {max(gap):.1e}")
    if "cvxpylayers" in r:
        cv = r["cvxpylayers"]
        if "error" in cv:
            print(f"  cvxpylayers fwd+bwd                {cv['error']}")
        else:
            print(f"  cvxpylayers fwd+bwd                {cv['fwdbwd_s']:8.2f} s   ({cv['fwdbwd_s'] / r['polyproj']['fwdbwd_s']:.1f}× "
                  f"polyproj; setup {cv['setup_s']:.1f} s; max |Δy| {cv['max_diff']:.1e}, violation {cv['violation']:.1e})")
    print(f"{'n':>7} {'rows':>6} {'nnz':>8} {'fwd [s]':>8} {'bwd [s]':>8} {'KKT':>8} {'Newton':>6}")
    for c_ in sorted(curve.values(), key=lambda r: r["n"]):
        print(f"{c_['n']:>7} {c_['rows']:>6} {c_['nnz']:>8} {c_['fwd_s']:>8.2f} {c_['bwd_s']:>8.2f} {c_['kkt_max']:>8.1e} "
              f"{c_['newton_steps']:>6}")
    plot(sorted(curve.values(), key=lambda r: r["n"]), args.out / "sparse.png")
    print(f"wrote {path} and {args.out / 'sparse.png'}")


def plot(curve, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    nnz = [r["nnz"] for r in curve]
    ax.loglog(nnz, [r["fwdbwd_s"] for r in curve], "o-", label="SparsePolyhedron fwd+bwd (batch 8)")
    ref = curve[0]["fwdbwd_s"] * np.array(nnz) / nnz[0]
    ax.loglog(nnz, ref, "--", color="gray", label="linear in nnz")
    ax.set(xlabel="nonzeros of the constraint matrix", ylabel="seconds", title="sparse sets: time against size")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
