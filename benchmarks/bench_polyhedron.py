"""Forward+backward time and accuracy of projection layers onto a general polyhedron.

polyproj side by side with proxsuite's QPLayer, qpth and cvxpylayers, on dense random
problems ``{y : A y ≤ a, B y = b}`` whose points ``x`` are drawn wide enough that many rows
are active.  Every method projects the same batch; repetitions are interleaved across
methods.  Accuracy: the error against OSQP (polished, eps 1e-12, per sample) and the KKT
residual of each output certified independently by NNLS (``polyproj.testing``).  Prints a table with time ratios to polyproj, writes JSON and a PNG.

    python benchmarks/bench_polyhedron.py [--out benchmarks/results] [--repeats 5]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

import polyproj as pp
from polyproj.testing import certify_projection, reference_projection

from _common import commit, versions, write_json

SIZES = [  # (n, m, p, batch)
    (64, 32, 4, 128),
    (256, 128, 8, 64),
]


def make_problem(n, m, p, batch, seed=0):
    """Random feasible polyhedron around an interior point y0 and points x far outside."""
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((m, n))
    B = rng.standard_normal((p, n))
    y0 = rng.standard_normal(n)
    a = A @ y0 + rng.uniform(0.1, 1.0, m)
    b = B @ y0
    x = y0 + 3.0 * rng.standard_normal((batch, n))
    return A, a, B, b, x


def run_polyproj(A, a, B, b):
    P = pp.Polyhedron(A=A, a=a, B=B, b=b)
    return lambda x: pp.project(x, P)


def run_qplayer(A, a, B, b):
    from proxsuite.torch.qplayer import QPFunction

    n = A.shape[1]
    Q = torch.eye(n, dtype=torch.float64)
    At, at, Bt, bt = (torch.as_tensor(v) for v in (A, a, B, b))
    lower = torch.full_like(at, -1e20)
    layer = QPFunction(eps=1e-9)
    return lambda x: layer(Q, -x, Bt, bt, At, lower, at)[0]


def run_qpth(A, a, B, b):
    from qpth.qp import QPFunction

    n = A.shape[1]
    Q = torch.eye(n, dtype=torch.float64)
    At, at, Bt, bt = (torch.as_tensor(v) for v in (A, a, B, b))
    layer = QPFunction(verbose=-1)
    return lambda x: layer(Q, -x, At, at, Bt, bt)


def run_cvxpylayers(A, a, B, b):
    import cvxpy as cp
    from cvxpylayers.torch import CvxpyLayer

    n = A.shape[1]
    xp = cp.Parameter(n)
    y = cp.Variable(n)
    prob = cp.Problem(cp.Minimize(0.5 * cp.sum_squares(y - xp)), [A @ y <= a, B @ y == b])
    layer = CvxpyLayer(prob, parameters=[xp], variables=[y])
    return lambda x: layer(x)[0]


METHODS = {"polyproj": run_polyproj, "qplayer": run_qplayer, "qpth": run_qpth, "cvxpylayers": run_cvxpylayers}


def measure_size(size, methods, repeats):
    """Time every method on one problem, interleaving the repetitions (round robin) so that
    drifting load on a shared machine affects all methods alike; then check accuracy."""
    n, m, p, batch = size
    A, a, B, b, x_np = make_problem(*size)
    weights = torch.randn(batch, n, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    steps, rows = {}, {}
    for method in methods:
        rows[method] = {"method": method, "seconds": None, "error": None}
        try:
            layer = METHODS[method](A, a, B, b)
            x = torch.tensor(x_np, requires_grad=True)

            def step(layer=layer, x=x):
                y = layer(x)
                (y * weights).sum().backward()
                return y

            step()  # warm-up; a peer that crashes here is a result to report
            steps[method] = step
        except Exception as exc:
            rows[method]["error"] = f"{type(exc).__name__}: {str(exc)[:200]}"
    times = {k: [] for k in steps}
    for r in range(repeats):
        for method, step in steps.items():
            if method == "cvxpylayers" and r > 0:
                continue  # seconds per call; one timed call is enough
            t0 = time.perf_counter()
            step()
            times[method].append(time.perf_counter() - t0)
    for method, step in steps.items():
        y = step().detach().numpy()
        ref = np.stack([reference_projection(xi, A, a, B, b, solver="osqp", tol=1e-12) for xi in x_np])
        certs = [certify_projection(xi, yi, A, a, B, b) for xi, yi in zip(x_np, y)]
        viol = max(float(np.max(y @ A.T - a, initial=0)), float(np.abs(y @ B.T - b).max(initial=0)))
        rows[method].update(
            seconds=float(np.median(times[method])),
            max_rel_error_vs_osqp=float(np.abs(y - ref).max() / np.abs(x_np).max()),
            max_kkt_certificate=float(max(c["kkt"] for c in certs)),
            max_violation=max(viol, 0.0),
        )
    return [dict(rows[k], n=n, m=m, p=p, batch=batch) for k in methods]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    args = parser.parse_args(argv)

    rows = []
    for size in tqdm(SIZES, desc="polyhedron benchmark"):
        rows += measure_size(size, args.methods, args.repeats)
    for size in SIZES:
        base = next(r["seconds"] for r in rows if r["method"] == "polyproj" and (r["n"], r["m"], r["p"], r["batch"]) == size)
        for r in rows:
            if (r["n"], r["m"], r["p"], r["batch"]) == size:
                r["ratio_to_polyproj"] = None if (r["seconds"] is None or base is None) else r["seconds"] / base

    header = (f"{'n':>4} {'m':>4} {'p':>3} {'batch':>5}  {'method':<12} {'fwd+bwd [s]':>11} {'× polyproj':>10} "
              f"{'err vs OSQP':>11} {'KKT cert.':>9} {'max viol':>9}")
    print(header)
    print("-" * len(header))
    for r in rows:
        if r["seconds"] is None:
            print(f"{r['n']:>4} {r['m']:>4} {r['p']:>3} {r['batch']:>5}  {r['method']:<12} failed: {r['error']}")
            continue
        print(f"{r['n']:>4} {r['m']:>4} {r['p']:>3} {r['batch']:>5}  {r['method']:<12} {r['seconds']:>11.4f} "
              f"{r['ratio_to_polyproj']:>10.1f} {r['max_rel_error_vs_osqp']:>11.1e} {r['max_kkt_certificate']:>9.1e} "
              f"{r['max_violation']:>9.1e}")

    meta = {"commit": commit(), "dtype": "float64", "device": "cpu", "threads": torch.get_num_threads(),
            "versions": versions("polyproj", "proxsuite", "qpth", "cvxpylayers", "clarabel")}
    write_json(args.out / "polyhedron.json", {"meta": meta, "rows": rows})
    plot(rows, args.out / "polyhedron.png")
    print(f"wrote {args.out / 'polyhedron.json'} and {args.out / 'polyhedron.png'}")


def plot(rows, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = sorted({(r["n"], r["m"], r["p"], r["batch"]) for r in rows})
    methods = list(dict.fromkeys(r["method"] for r in rows))
    fig, ax = plt.subplots(figsize=(7, 4))
    width = 0.8 / len(methods)
    for j, method in enumerate(methods):
        vals = []
        for s in sizes:
            r = next(r for r in rows if r["method"] == method and (r["n"], r["m"], r["p"], r["batch"]) == s)
            vals.append(r["seconds"] if r["seconds"] is not None else np.nan)
        ax.bar(np.arange(len(sizes)) + j * width, vals, width, label=method)
    ax.set_xticks(np.arange(len(sizes)) + 0.4 - width / 2)
    ax.set_xticklabels([f"n={s[0]} m={s[1]} p={s[2]}\nbatch {s[3]}" for s in sizes])
    ax.set_yscale("log")
    ax.set_ylabel("forward + backward [s] (log)")
    ax.set_title("Projection onto a polyhedron, float64, CPU")
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
