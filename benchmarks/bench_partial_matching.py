"""Partial matching with outliers, float32 scores, forward + backward, side by side in one run:
the matching layers of the graph-matching experiment at its shapes ((10 + R)², k = 10 true
pairs, R ∈ {0, 2, 4, 8}, batch 64):

* polyproj ``PartialMatching(10)``: the exact Euclidean projection onto
  {X ≥ 0, X1 ≤ 1, Xᵀ1 ≤ 1, 1ᵀX1 = 10} (dedicated dual Newton solver);
* pygmtools' batched log-domain Sinkhorn, 20 iterations, τ = 0.05, with dustbins
  (``unmatch1``/``unmatch2``): an entropic map onto a different (augmented) polytope;
* LinSATNet with the same constraints, 100 and 300 iterations (timed once);
* the same polytope as a general ``pp.Polyhedron`` with (10 + R)² nonnegativity rows (timed
  once, at R = 8 only).

Each method's violation of the partial-matching polytope is reported next to its time.

    python benchmarks/bench_partial_matching.py [--out DIR] [--repeats 7] [--threads 1]

Prints a table, writes ``partial_matching.json`` and ``partial_matching.png``.
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
from bench_structured import interleaved  # noqa: E402

K = 10
BATCH = 64


def sinkhorn_dustbin(x, iters=20, tau=0.05):
    import pygmtools

    B, m, n = x.shape
    z = torch.zeros((), dtype=x.dtype)
    return pygmtools.sinkhorn(x, max_iter=iters, tau=tau, batched_operation=True, backend="pytorch",
                              unmatch1=z.expand(B, m), unmatch2=z.expand(B, n))


def linsatnet(iters):
    from LinSATNet import linsat_layer
    from LinSATNet.linsat import init_constraints

    cache = {}

    def f(x):
        B, m, n = x.shape
        if m not in cache:
            rows = torch.kron(torch.eye(m), torch.ones(1, n))
            cols = torch.kron(torch.ones(1, m), torch.eye(n))
            cache[m] = init_constraints(m * n, A=torch.cat([rows, cols]), b=torch.ones(m + n),
                                        E=torch.ones(1, m * n), f=torch.tensor([float(K)]))
        return linsat_layer(x.reshape(B, -1), constr_dict=cache[m], tau=0.05, max_iter=iters,
                            no_warning=True).reshape(B, m, n)

    return f


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-polyhedron", action="store_true", help="skip the general-polyhedron row (slow)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(0)
    S = pp.PartialMatching(K)
    rows = []
    for R in tqdm([0, 2, 4, 8], desc="shapes"):
        k = K + R
        x = torch.randn(BATCH, k, k, generator=gen)
        methods = {"polyproj": lambda z: pp.project(z, S), "sinkhorn20 (dustbins)": sinkhorn_dustbin,
                   "LinSATNet-100": linsatnet(100), "LinSATNet-300": linsatnet(300)}
        once = ["LinSATNet-100", "LinSATNet-300"]
        if R == 8 and not args.no_polyhedron:
            P = S.as_polyhedron(k, k)
            methods["polyproj Polyhedron (general)"] = lambda z, P=P: pp.project(z.reshape(BATCH, -1), P).reshape(z.shape)
            once.append("polyproj Polyhedron (general)")
        secs, outs = interleaved(methods, x, args.repeats, once=tuple(once))
        steps = pp.project(x, S, return_info=True)[1].iterations.float()
        for name in methods:
            row = {"R": R, "shape": [k, k], "batch": BATCH, "method": name, "seconds": secs[name],
                   "violation": float(S.violation(outs[name]).max())}
            if name == "polyproj":
                row.update(newton_steps_mean=float(steps.mean()), newton_steps_max=int(steps.max()))
            rows.append(row)
    print(f"{'R':>2} {'shape':>7}  {'method':<31} {'fwd+bwd [ms]':>12} {'× Sinkhorn':>10} {'violation':>10}")
    for r in rows:
        base = next(b["seconds"] for b in rows if b["method"].startswith("sinkhorn") and b["R"] == r["R"])
        steps = f"  Newton steps {r['newton_steps_mean']:.1f} (max {r['newton_steps_max']})" if "newton_steps_max" in r else ""
        print(f"{r['R']:>2} {r['shape'][0]:>3}×{r['shape'][1]:<3}  {r['method']:<31} {1e3 * r['seconds']:>12.2f} "
              f"{r['seconds'] / base:>10.2f} {r['violation']:>10.1e}{steps}")
    meta = {"commit": commit(), "dtype": "float32 inputs (polyproj solves in float64)", "device": "cpu",
            "threads": torch.get_num_threads(), "k": K, "versions": versions("polyproj", "pygmtools", "LinSATNet")}
    write_json(args.out / "partial_matching.json", {"meta": meta, "rows": rows})
    plot(rows, args.out / "partial_matching.png")
    print(f"wrote {args.out / 'partial_matching.json'} and {args.out / 'partial_matching.png'}")


def plot(rows, path):
    plot_methods(rows, path, lambda r: r["shape"][0], xlabel="matrix size 10 + R (k = 10, batch 64)",
                 title="partial matching layers")


if __name__ == "__main__":
    main()
