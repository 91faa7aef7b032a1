"""The differentiable QP layers people use for projections, through the same reliability suites
as polyproj: QPLayer (proxsuite), qpth and cvxpylayers, side by side with polyproj.

Suites (float64, forward pass):

* ``scale`` — the polyhedron ``{y ≥ 0, 1ᵀy = 1}`` plus 10 random rows through an interior point
  (n = 50), inputs at 1e-2 … 1e8 times the set's scale (8 points each);
* ``maros`` — the Maros–Mészáros feasible sets with n ≤ 1000 (``../shared/data/maros_meszaros``),
  the four points of ``reliability_maros_meszaros.py``.

Every output is certified with ``polyproj.testing.certify_projection`` (NNLS multipliers;
feasibility relative to the set's scale, stationarity to the input's).  A problem is

* solved — every output certified to 1e-7,
* wrong — an output came back silently that fails its certificate (infeasible, or far from the
  projection); the worst relative violation is recorded,
* crashed — an exception or a non-finite output,
* timeout — no answer within ``--timeout`` seconds (qpth's batched LU can hang),

and polyproj can also be *refused* (an honest ``ConvergenceError``).  Each call runs in a child
process with a time limit.  Results are written after each problem (resumable).

    python benchmarks/reliability_peers.py [--suite scale maros] [--timeout 60] [--only NAME ...]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))

import polyproj as pp  # noqa: E402
from _common import commit, versions  # noqa: E402
from bench_polyhedron import run_cvxpylayers, run_qpth, run_qplayer  # noqa: E402
from polyproj.testing import certify_projection, set_scale  # noqa: E402
from reliability_maros_meszaros import DATA, load_polyhedron_data, points  # noqa: E402

CERT_TOL = 1e-7
SCALES = [1e-2, 1.0, 1e2, 1e4, 1e6, 1e8]


def _polyproj(A, a, B, b):
    P = pp.Polyhedron(A=A if A.shape[0] else None, a=a if A.shape[0] else None,
                      B=B if B.shape[0] else None, b=b if B.shape[0] else None)
    return lambda x: pp.project(x, P)


def _with_rows(make):
    """Peers that need both blocks get a loose inequality ``y₁ ≤ 10¹²`` when there is none and
    no equality block when there is none (their APIs accept an empty equality block only)."""
    def build(A, a, B, b):
        if A.shape[0] == 0:
            A = np.eye(1, B.shape[1])
            a = np.array([1e12])
        return make(A, a, B, b)
    return build


PEERS = {"polyproj": _polyproj, "qplayer": _with_rows(run_qplayer), "qpth": _with_rows(run_qpth),
         "cvxpylayers": _with_rows(run_cvxpylayers)}


def _child(method, data, X, queue):
    torch.set_num_threads(1)
    try:
        with torch.no_grad():
            y = PEERS[method](*data)(torch.tensor(X))
        queue.put(("ok", y.detach().numpy()))
    except pp.ConvergenceError as err:
        queue.put(("refused", str(err)[:160]))
    except Exception as err:  # noqa: BLE001 - a crash is a result here
        queue.put(("crashed", f"{type(err).__name__}: {str(err)[:160]}"))


def run_one(method, data, X, timeout):
    """Classify one method on one problem (several points)."""
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(method, data, X, queue))
    t0 = time.perf_counter()
    proc.start()
    try:
        kind, payload = queue.get(timeout=timeout)
    except Exception:  # noqa: BLE001 - queue.Empty: no answer in time
        proc.kill()
        proc.join()
        return {"status": "timeout", "seconds": timeout}
    proc.join()
    seconds = time.perf_counter() - t0
    if kind != "ok":
        return {"status": kind, "detail": payload, "seconds": seconds}
    y = payload
    if not np.isfinite(y).all():
        return {"status": "crashed", "detail": "non-finite output", "seconds": seconds}
    A, a, B, b = data
    certs = [certify_projection(xk, yk, A, a, B, b) for xk, yk in zip(X, y)]
    worst = max(c["kkt"] for c in certs)
    viol = max(c["primal"] for c in certs)
    return {"status": "solved" if worst <= CERT_TOL else "wrong", "worst_certified_kkt": worst,
            "worst_relative_violation": viol, "seconds": seconds}


def scale_problems(seed=0):
    rng = np.random.default_rng(seed)
    n = 50
    A = np.vstack([-np.eye(n), rng.standard_normal((10, n))])
    y0 = np.full(n, 1.0 / n)
    a = np.concatenate([np.zeros(n), A[n:] @ y0 + rng.uniform(0.1, 1.0, 10)])
    B, b = np.ones((1, n)), np.array([1.0])
    for scale in SCALES:
        yield f"scale {scale:.0e}", (A, a, B, b), scale * rng.standard_normal((8, n))


def maros_problems(only=None):
    for path in sorted(DATA.glob("*.mat")):
        if only and path.stem not in only:
            continue
        A, a, B, b, P, q = load_polyhedron_data(path)
        X = np.stack([p for _, p in points(A, a, B, b, P, q, np.random.default_rng(0))])
        yield path.stem, (A, a, B, b), X


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suite", nargs="*", default=["scale", "maros"], choices=["scale", "maros"])
    parser.add_argument("--methods", nargs="*", default=list(PEERS), choices=list(PEERS))
    parser.add_argument("--timeout", type=float, default=60.0)
    parser.add_argument("--only", nargs="*", default=None, help="Maros-Meszaros problem names")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = parser.parse_args(argv)
    out = args.out / "reliability_peers.json"
    rows = json.loads(out.read_text())["rows"] if out.exists() else []
    done = {(r["suite"], r["problem"], r["method"]) for r in rows}
    for suite in args.suite:
        problems = list(scale_problems() if suite == "scale" else maros_problems(args.only))
        for name, data, X in tqdm(problems, desc=suite):
            for method in args.methods:
                if (suite, name, method) in done:
                    continue
                r = run_one(method, data, X, args.timeout)
                rows.append({"suite": suite, "problem": name, "method": method, "n": int(X.shape[1]),
                             "set_scale": float(max(set_scale(y0, *data) for y0 in X[:1])), **r})
                args.out.mkdir(parents=True, exist_ok=True)
                out.write_text(json.dumps({"meta": {"commit": commit(), "timeout": args.timeout,
                                                    "certificate_tol": CERT_TOL,
                                                    "versions": versions("proxsuite", "qpth", "cvxpylayers", "cvxpy")},
                                           "rows": rows}, indent=1, default=float))
    statuses = ("solved", "wrong", "crashed", "timeout", "refused")
    for suite in args.suite:
        print(f"\n{suite}: | method | " + " | ".join(statuses) + " |")
        for method in args.methods:
            mine = [r for r in rows if r["suite"] == suite and r["method"] == method]
            print(f"| {method} | " + " | ".join(str(sum(r["status"] == s for r in mine)) for s in statuses) + " |")
        if suite == "scale":
            print("\n| input scale | " + " | ".join(args.methods) + " |  (worst relative violation / status)")
            for name in dict.fromkeys(r["problem"] for r in rows if r["suite"] == "scale"):
                cells = []
                for method in args.methods:
                    r = next((r for r in rows if r["suite"] == suite and r["problem"] == name and r["method"] == method), None)
                    cells.append("—" if r is None else (f"{r['worst_relative_violation']:.1e} {r['status']}"
                                                          if "worst_relative_violation" in r else r["status"]))
                print(f"| {name} | " + " | ".join(cells) + " |")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
