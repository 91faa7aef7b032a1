"""CUDA check of the structured sets: CPU and CUDA agree (outputs, gradients, active sets),
and a float32 forward+backward timing of Birkhoff vs 20-iteration log-domain Sinkhorn on the GPU.

    python benchmarks/cuda_check_structured.py [--out DIR]
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import polyproj as pp  # noqa: E402
from _common import cuda_check_args  # noqa: E402
from bench_structured import sinkhorn20, ds_violation  # noqa: E402


def sets(dev):
    n = 12
    return {
        "box": (pp.Box(torch.linspace(-1, 0, n, device=dev), torch.linspace(0.5, 2, n, device=dev)), (n,)),
        "halfspace": (pp.HalfSpace(torch.linspace(-1, 2, n, device=dev), 0.3), (n,)),
        "simplex": (pp.Simplex(2.0).to(dev), (n,)),
        "capped_simplex": (pp.CappedSimplex(torch.zeros(n, device=dev), torch.full((n,), 0.3, device=dev), 1.5), (n,)),
        "birkhoff": (pp.Birkhoff().to(dev), (6, 6)),
        "transportation": (pp.Transportation(torch.tensor([1.0, 2.0, 3.0], device=dev),
                                             torch.tensor([2.0, 2.0, 1.0, 1.0], device=dev)), (3, 4)),
    }


def correctness(dev):
    rows = []
    cpu_sets = sets("cpu")
    for name, (S, shape) in sets(dev).items():
        x = torch.tensor(np.random.default_rng(0).standard_normal((64, *shape)))
        g = torch.randn_like(x)
        out = {}
        for where, SS in ((dev, S), ("cpu", cpu_sets[name][0])):
            xr = x.to(where).clone().requires_grad_()
            y, info = pp.project(xr, SS, return_info=True)
            (y * g.to(where)).sum().backward()
            out[where] = (y.detach().cpu(), xr.grad.cpu(), info.active.cpu())
        rows.append({"set": name, "y_diff": float((out[dev][0] - out["cpu"][0]).abs().max()),
                     "grad_diff": float((out[dev][1] - out["cpu"][1]).abs().max()),
                     "active_equal": bool(torch.equal(out[dev][2], out["cpu"][2]))})
        print(rows[-1], flush=True)
    return rows


def timing(dev):
    rows = []
    for n, batch in [(4, 65536), (4, 1048576), (16, 256), (64, 16)]:
        x = torch.randn(batch, n, n, device=dev)
        g = torch.randn_like(x)
        for name, fn in (("polyproj", lambda z: pp.project(z, pp.Birkhoff().to(dev))), ("sinkhorn20", sinkhorn20)):
            ts = []
            for _ in range(4):
                xr = x.clone().requires_grad_()
                torch.cuda.synchronize()
                t0 = time.perf_counter()
                y = fn(xr)
                (y * g).sum().backward()
                torch.cuda.synchronize()
                ts.append(time.perf_counter() - t0)
            rows.append({"n": n, "batch": batch, "method": name, "seconds": float(np.median(ts[1:])),
                         "violation": ds_violation(y.detach())})
            print(rows[-1], flush=True)
    return rows


def main():
    args = cuda_check_args()
    corr = correctness("cuda")
    times = timing("cuda")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "cuda_check_structured.json").write_text(json.dumps(
        {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "correctness": corr, "timing": times}, indent=2))


if __name__ == "__main__":
    main()
