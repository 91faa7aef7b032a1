"""CUDA check: the same projections on CPU and CUDA agree (forward, active sets, backward,
explicit Jacobian, exact constructions), then a forward+backward timing table CPU vs CUDA.

    python benchmarks/cuda_check.py [--out DIR]
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import polyproj as pp  # noqa: E402
from _common import cuda_check_args  # noqa: E402
from bench_polyhedron import make_problem  # noqa: E402
from problems import FAMILIES, known_projection  # noqa: E402


def check_correctness(dev) -> list[dict]:
    rows = []
    rng = np.random.default_rng(0)
    for family in FAMILIES:
        for n in (4, 12, 40):
            A, a, B, b, X, Y = known_projection(family, rng, n=n, batch=16)
            kw = {}
            if A.shape[0]:
                kw.update(A=torch.tensor(A, device=dev), a=torch.tensor(a, device=dev))
            if B.shape[0]:
                kw.update(B=torch.tensor(B, device=dev), b=torch.tensor(b, device=dev))
            Pg = pp.Polyhedron(**kw)
            Pc = Pg.to("cpu")
            xg = torch.tensor(X, device=dev, requires_grad=True)
            xc = torch.tensor(X, requires_grad=True)
            g = torch.randn(X.shape, dtype=torch.float64)
            yg, ig = pp.project(xg, Pg, return_info=True)
            yc, ic = pp.project(xc, Pc, return_info=True)
            (yg * g.to(dev)).sum().backward()
            (yc * g).sum().backward()
            scale = float(np.abs(X).max())
            rows.append({
                "family": family, "n": n,
                "y_vs_exact": float((yg.detach().cpu() - torch.tensor(Y)).abs().max()) / scale,
                "y_cuda_vs_cpu": float((yg.detach().cpu() - yc.detach()).abs().max()) / scale,
                "grad_cuda_vs_cpu": float((xg.grad.cpu() - xc.grad).abs().max()),
                "active_equal": bool(torch.equal(ig.active.cpu(), ic.active)),
                "jac_cuda_vs_cpu": float((pp.hs_jacobian(xg.detach(), Pg).cpu() - pp.hs_jacobian(xc.detach(), Pc)).abs().max()),
                "kkt_max": float(ig.kkt_residual.max()),
                "converged": bool(ig.converged.all()),
                "float32_ok": bool(pp.project(xg.detach().float(), Pg, return_info=True)[1].converged.all()),
            })
    return rows


def timing(dev) -> list[dict]:
    rows = []
    for size in [(64, 32, 4, 128), (256, 128, 8, 64), (64, 32, 4, 8192), (256, 128, 8, 2048), (1000, 500, 20, 64)]:
        A, a, B, b, X = make_problem(*size)
        for device in ("cpu", dev):
            P = pp.Polyhedron(A=torch.tensor(A, device=device), a=torch.tensor(a, device=device),
                              B=torch.tensor(B, device=device), b=torch.tensor(b, device=device))
            x = torch.tensor(X, device=device, requires_grad=True)

            def step():
                y = pp.project(x, P)
                y.sum().backward()
                if device != "cpu":
                    torch.cuda.synchronize()

            step()
            ts = []
            for _ in range(5):
                t0 = time.perf_counter()
                step()
                ts.append(time.perf_counter() - t0)
            rows.append({"n": size[0], "m": size[1], "p": size[2], "batch": size[3], "device": device,
                         "seconds": float(np.median(ts))})
            print(rows[-1], flush=True)
    return rows


def main():
    args = cuda_check_args()
    dev = "cuda"
    corr = check_correctness(dev)
    worst = {k: max(r[k] for r in corr) for k in ("y_vs_exact", "y_cuda_vs_cpu", "grad_cuda_vs_cpu", "jac_cuda_vs_cpu", "kkt_max")}
    ok = all(r["active_equal"] and r["converged"] and r["float32_ok"] for r in corr)
    print("correctness worst:", worst, "all active sets equal / converged / float32 ok:", ok, flush=True)
    times = timing(dev)
    print(f"{'n':>5} {'m':>4} {'p':>3} {'batch':>6} {'cpu [s]':>9} {'cuda [s]':>9}")
    for i in range(0, len(times), 2):
        c, g = times[i], times[i + 1]
        print(f"{c['n']:>5} {c['m']:>4} {c['p']:>3} {c['batch']:>6} {c['seconds']:>9.4f} {g['seconds']:>9.4f}")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "cuda_check.json").write_text(json.dumps(
        {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "correctness": corr,
         "worst": worst, "all_ok": ok, "timing": times}, indent=2))


if __name__ == "__main__":
    main()
