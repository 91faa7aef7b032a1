"""One-sample latency and small-problem throughput of projections onto dense random polyhedra,
CPU, float64, side by side in one run: polyproj (``engine="auto"``, which picks DAQP on CPU for
small problems, and ``engine="torch"``, the batched solver), proxsuite's QPLayer, qpth (in a
child process under a time limit: its batched LU can hang) and DAQP called in a Python loop.

* batch 1, forward and forward+backward (one torch thread);
* forward at batch 256 (and 128/64 at the larger sizes, two torch threads), against a Python
  loop over DAQP;
* forward+backward at batch ≥ 64 against QPLayer;
* forward time against the batch size at n = 20, 64, 256 (the PNG).

Every polyproj output is certified (relative KKT ≤ 1e-9, ``info.converged``); DAQP's and the
peers' outputs are compared with it.

    python benchmarks/bench_latency.py [--out DIR] [--repeats 30]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

import polyproj as pp

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _common import commit, versions, write_json  # noqa: E402
from bench_polyhedron import make_problem, run_qplayer, run_qpth  # noqa: E402

LATENCY = [(20, 10, 1), (40, 40, 1), (100, 50, 5)]  # batch 1 and batch 256, one thread
THROUGHPUT = [(64, 32, 4, 128), (256, 128, 8, 64)]  # two threads
CURVES = {20: (20, 10, 1), 64: (64, 32, 4), 256: (256, 128, 8)}
BATCHES = [1, 4, 16, 64, 256]
QPTH_LIMIT_S = 60


def median_ms(fn, repeats):
    fn()
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(ts)


def daqp_loop(A, a, B, b):
    import daqp
    from ctypes import c_int

    n = A.shape[1]
    C = np.ascontiguousarray(np.vstack([A, B]))
    up = np.concatenate([a, b])
    lo = np.concatenate([np.full(len(a), -1e30), b])
    sense = np.concatenate([np.zeros(len(a)), np.full(len(b), 5)]).astype(c_int)
    H = np.eye(n)

    def solve(X):
        return np.stack([daqp.solve(H, -xi, C, up, lo, sense.copy())[0] for xi in X])
    return solve


def _timed(make, A, a, B, b, X, weights, repeats, backward):
    layer = make(A, a, B, b)
    x = torch.tensor(X, requires_grad=backward)

    def step():
        y = layer(x)
        if backward:
            (y * weights).sum().backward()
        return y
    return median_ms(step, repeats), step().detach().numpy()


def _qpth_child(args, queue):
    torch.set_num_threads(args[-1])
    try:
        queue.put(_timed(run_qpth, *args[:-1])[0])
    except Exception as exc:  # a crash is a result
        queue.put(f"{type(exc).__name__}: {str(exc)[:120]}")


def time_qpth(A, a, B, b, X, weights, repeats, backward, threads):
    """qpth in a child process, ``None`` when it exceeds the time limit."""
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    proc = ctx.Process(target=_qpth_child, args=((A, a, B, b, X, weights, repeats, backward, threads), q))
    proc.start()
    proc.join(QPTH_LIMIT_S)
    if proc.is_alive():
        proc.kill()
        return f"no result within {QPTH_LIMIT_S} s"
    return q.get() if not q.empty() else "crashed"


def polyproj_layer(engine):
    def make(A, a, B, b):
        P = pp.Polyhedron(A=A, a=a, B=B, b=b)
        return lambda x: pp.project(x, P, engine=engine)
    return make


def certify(A, a, B, b, X, engine):
    P = pp.Polyhedron(A=A, a=a, B=B, b=b)
    y, info = pp.project(torch.tensor(X), P, engine=engine, return_info=True)
    return y.numpy(), float(info.kkt_residual.max()), bool(info.converged.all())


def size_row(n, m, p, batch, threads, repeats, with_qpth):
    torch.set_num_threads(threads)
    A, a, B, b, X = make_problem(n, m, p, batch)
    w = torch.randn(batch, n, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    row = {"n": n, "m": m, "p": p, "batch": batch, "threads": threads}
    y_ref, kkt, conv = certify(A, a, B, b, X, "torch")
    row["polyproj_kkt_max"], row["polyproj_converged"] = kkt, conv
    for engine in ("auto", "torch"):
        for bwd in (False, True):
            row[f"polyproj_{engine}_{'fwdbwd' if bwd else 'fwd'}_ms"], y = _timed(
                polyproj_layer(engine), A, a, B, b, X, w, repeats, bwd)
        row[f"polyproj_{engine}_diff"] = float(np.abs(y - y_ref).max())
        _, row[f"polyproj_{engine}_kkt"], _ = certify(A, a, B, b, X, engine)
    for bwd in (False, True):
        row[f"qplayer_{'fwdbwd' if bwd else 'fwd'}_ms"], y = _timed(run_qplayer, A, a, B, b, X, w, repeats, bwd)
    row["qplayer_diff"] = float(np.abs(y - y_ref).max())
    if with_qpth:
        row["qpth_fwdbwd_ms"] = time_qpth(A, a, B, b, X, w, max(3, repeats // 5), True, threads)
    solve = daqp_loop(A, a, B, b)
    row["daqp_loop_fwd_ms"] = median_ms(lambda: solve(X), repeats)
    row["daqp_diff"] = float(np.abs(solve(X) - y_ref).max())
    return row


def latency_profile(n, m, p, repeats):
    """Where one sample's forward+backward goes (engine "auto" = DAQP here): each stage timed
    alone, the rest of a ``project`` call (validation, operator dispatch, autograd) by
    difference."""
    from polyproj import _jacobian
    from polyproj.functional import active_set

    torch.set_num_threads(1)
    A, a, B, b, X = make_problem(n, m, p, 1)
    P = pp.Polyhedron(A=A, a=a, B=B, b=b)
    x = torch.tensor(X)
    data = P._bind(torch.Size([1])).data
    res = active_set.solve_polyhedron_active_set(data, x, tol=1e-9, max_iter=500)
    g = torch.randn_like(x)
    xr = x.clone().requires_grad_()
    stages = {
        "DAQP solve (C, via its Python wrapper)": lambda: active_set.solve_daqp(data, x),
        "certificate, face correction, active rows": None,
        "HS-Jacobian product (backward numerics)": lambda: _jacobian.masked_nullspace_product(data, res.active, g),
        "project() forward, total": lambda: pp.project(x, P),
        "project() forward + backward, total": lambda: pp.project(xr, P).backward(g),
    }
    t = {k: median_ms(f, repeats) for k, f in stages.items() if f is not None}
    solve_total = median_ms(lambda: active_set.solve_polyhedron_active_set(data, x, tol=1e-9, max_iter=500), repeats)
    t["certificate, face correction, active rows"] = solve_total - t["DAQP solve (C, via its Python wrapper)"]
    t["validation, operator dispatch, autograd (by difference)"] = (
        t["project() forward + backward, total"] - solve_total - t["HS-Jacobian product (backward numerics)"])
    return {"n": n, "m": m, "p": p, "ms": t}


def curve_rows(repeats):
    torch.set_num_threads(1)
    rows = []
    for n, (n_, m, p) in CURVES.items():
        for batch in BATCHES:
            A, a, B, b, X = make_problem(n_, m, p, batch)
            w = torch.zeros(batch, n_, dtype=torch.float64)
            r = {"n": n_, "m": m, "p": p, "batch": batch}
            for engine in ("auto", "torch"):
                r[f"polyproj_{engine}_fwd_ms"] = _timed(polyproj_layer(engine), A, a, B, b, X, w, repeats, False)[0]
            r["qplayer_fwd_ms"] = _timed(run_qplayer, A, a, B, b, X, w, repeats, False)[0]
            solve = daqp_loop(A, a, B, b)
            r["daqp_loop_fwd_ms"] = median_ms(lambda: solve(X), repeats)
            rows.append(r)
    return rows


def plot(curves, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(CURVES), figsize=(5 * len(CURVES), 3.8))
    for ax, n in zip(axes, CURVES):
        rs = [r for r in curves if r["n"] == n]
        for key, label in (("polyproj_auto_fwd_ms", "polyproj (auto)"), ("polyproj_torch_fwd_ms", "polyproj (torch)"),
                           ("daqp_loop_fwd_ms", "DAQP, Python loop"), ("qplayer_fwd_ms", "QPLayer")):
            ax.plot([r["batch"] for r in rs], [r[key] for r in rs], marker="o", label=label)
        ax.set(xscale="log", yscale="log", xlabel="batch", ylabel="forward ms", title=f"n = {n}")
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=HERE / "results")
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--no-qpth", action="store_true")
    args = parser.parse_args(argv)
    jobs = [(n, m, p, 1, 1) for n, m, p in LATENCY] + [(n, m, p, 256, 1) for n, m, p in LATENCY] + \
           [(n, m, p, batch, 2) for n, m, p, batch in THROUGHPUT]
    rows = [size_row(*j, repeats=args.repeats if j[3] == 1 else max(5, args.repeats // 5), with_qpth=not args.no_qpth)
            for j in tqdm(jobs, desc="sizes")]
    head = (f"{'n, m, p':>12} {'batch':>5} {'thr':>3} | {'polyproj auto fwd / fwd+bwd':>28} | {'torch engine fwd / fwd+bwd':>27} "
            f"| {'QPLayer fwd / fwd+bwd':>22} | {'qpth fwd+bwd':>12} | {'DAQP loop fwd':>13} | {'auto / DAQP':>11} | {'QPLayer / auto (f+b)':>20}")
    print(head)
    for r in rows:
        qpth = r.get("qpth_fwdbwd_ms", "—")
        qpth = f"{qpth:.2f}" if isinstance(qpth, float) else str(qpth)[:12]
        shape = f"{r['n']}, {r['m']}, {r['p']}"
        print(f"{shape:>12} {r['batch']:>5} {r['threads']:>3} | "
              f"{r['polyproj_auto_fwd_ms']:>12.3f} / {r['polyproj_auto_fwdbwd_ms']:>11.3f} | "
              f"{r['polyproj_torch_fwd_ms']:>11.3f} / {r['polyproj_torch_fwdbwd_ms']:>11.3f} | "
              f"{r['qplayer_fwd_ms']:>9.3f} / {r['qplayer_fwdbwd_ms']:>9.3f} | {qpth:>12} | {r['daqp_loop_fwd_ms']:>13.3f} | "
              f"{r['polyproj_auto_fwd_ms'] / r['daqp_loop_fwd_ms']:>11.2f} | "
              f"{r['qplayer_fwdbwd_ms'] / r['polyproj_auto_fwdbwd_ms']:>20.2f}")
    print("certified:", all(r["polyproj_converged"] for r in rows), " worst KKT (auto):",
          max(r["polyproj_auto_kkt"] for r in rows), " largest difference auto vs torch:",
          max(r["polyproj_auto_diff"] for r in rows))
    profile = [latency_profile(n, m, p, 4 * args.repeats) for n, m, p in LATENCY]
    print("\nbatch 1, where the time goes (ms):")
    for k in profile[0]["ms"]:
        print(f"  {k:<58}" + "".join(f"{pr['ms'][k]:>8.3f}" for pr in profile))
    curves = curve_rows(max(5, args.repeats // 3))
    meta = {"commit": commit(), "dtype": "float64", "device": "cpu",
            "versions": versions("polyproj", "proxsuite", "qpth", "daqp"), "repeats": args.repeats}
    write_json(args.out / "latency.json", {"meta": meta, "rows": rows, "profile": profile, "curves": curves})
    plot(curves, args.out / "latency.png")
    print(f"wrote {args.out / 'latency.json'} and latency.png")


if __name__ == "__main__":
    main()
