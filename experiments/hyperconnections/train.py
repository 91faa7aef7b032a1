"""One training run of the byte-level GPT (one arm, one seed), on one process or data-parallel
under ``torchrun``.

Single process::

    polyproj hyperconnections train --arm exact --seed 0 --out runs/hc/exact_seed0

Data-parallel (one machine, N processes; or several machines with ``--nnodes``/``--rdzv-endpoint``)::

    torchrun --nproc_per_node=N -m polyproj.cli hyperconnections train --arm exact --seed 0 --out DIR

What is synchronised: the model starts identical on every rank (seeded, then broadcast by
DistributedDataParallel); each step's global batch is a function of (seed, step) and rank ``r``
of ``W`` takes rows ``r, r + W, …`` of it, so the average of the ranks' gradients (DDP's
all-reduce) is the gradient of the global batch and the parameters follow the single-process run;
the logged training loss, validation loss and the stop flag are all-reduced.  Not synchronised:
step timings and peak memory are rank 0's; the H_res statistics are computed by rank 0 on its
copy of the (identical) model.  Rank 0 alone prints progress and writes files; checkpoints are
written atomically (to a temporary file, then renamed) and read by every rank on resume.

Stopping: SIGTERM or SIGINT finishes the current step on every rank, writes a checkpoint and
exits with status 143; the next run with the same ``--out`` resumes from it and loses no
completed step (the batches depend on the step only).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import signal
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from . import data
from .model import ARMS, ByteGPT

EXIT_STOPPED = 143


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="polyproj hyperconnections train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arm", choices=ARMS, required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, required=True, help="folder of this run: checkpoint.pt, record.json")
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--batch", type=int, default=16, help="global batch (sequences), split across ranks")
    p.add_argument("--lr", type=float, default=3e-3, help="peak Adam learning rate (warm-up, then cosine to 10%%)")
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--blocks", type=int, default=6)
    p.add_argument("--context", type=int, default=128)
    p.add_argument("--streams", type=int, default=4)
    p.add_argument("--eval-every", type=int, default=50)
    p.add_argument("--eval-windows", type=int, default=64, help="fixed held-out windows per evaluation")
    p.add_argument("--eval-split", choices=("tune", "valid"), default="valid")
    p.add_argument("--checkpoint-every", type=int, default=50)
    p.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    p.add_argument("--threads", type=int, default=1, help="torch threads per process")
    p.add_argument("--corpus", type=Path, default=None, help="the pinned archive (default: ../shared/data/pystdlib)")
    p.add_argument("--max-bytes", type=int, default=None, help="cap each corpus side (smoke runs)")
    p.add_argument("--stop-at", type=int, default=None, help="stop as if signalled after this step (tests)")
    p.add_argument("--progress", action="store_true")
    return p


class _StopFlag:
    """Set by SIGTERM/SIGINT; the loop checks it between steps."""

    def __init__(self):
        self.set = False
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._handler)

    def _handler(self, signum, frame):
        self.set = True


def _lr_at(step: int, steps: int, peak: float) -> float:
    warm = max(1, steps // 20)
    if step < warm:
        return peak * (step + 1) / warm
    progress = (step - warm) / max(1, steps - warm)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def mixing_statistics(mats: list[torch.Tensor]) -> dict:
    """Statistics of the H_res of each sublayer (a list over depth of ``(tokens, n, n)``) and of
    their products across depth ``C_k = H_1 ⋯ H_k``.  With the package's convention (stream ``t``
    after the mix is ``Σ_s H[s, t] x_s``) the forward gain of a matrix is its largest absolute
    column sum and the backward gain its largest absolute row sum; a doubly stochastic matrix has
    both equal to 1."""
    H = torch.stack(mats).double()  # (depth, tokens, n, n)

    def gains(M):
        return M.abs().sum(-2).amax(-1), M.abs().sum(-1).amax(-1)  # forward, backward: (..., tokens)

    C, comp = H[0], []
    for k in range(H.shape[0]):
        C = H[0] if k == 0 else C @ H[k]
        comp.append(C)
    C = torch.stack(comp)
    out = {}
    for name, M in (("sublayer", H), ("composite", C)):
        fwd, bwd = gains(M)
        out[name] = {"forward_gain_mean": fwd.mean(1).tolist(), "forward_gain_worst": fwd.amax(1).tolist(),
                     "backward_gain_mean": bwd.mean(1).tolist(), "backward_gain_worst": bwd.amax(1).tolist(),
                     "max_abs_gain_minus_1": float(torch.maximum((fwd - 1).abs().max(), (bwd - 1).abs().max()))}
    viol = torch.maximum((H.sum(-1) - 1).abs().amax(-1), (H.sum(-2) - 1).abs().amax(-1))
    out["ds_violation"] = float(torch.maximum(viol.max(), (-H).clamp_min(0).max()))
    out["zero_share"] = float((H == 0).double().mean())
    out["min_entry"] = float(H.min())
    return out


@torch.no_grad()
def evaluate(model: ByteGPT, split: torch.Tensor, windows: int, context: int, rank: int, world: int, device) -> float:
    """Mean next-byte cross-entropy (nats) on the fixed windows, each rank taking its share."""
    model.eval()
    starts = data.valid_starts(split, windows, context)[rank::world]
    total = torch.zeros(2, dtype=torch.float64, device=device)
    for chunk in starts.split(16):
        x, y = (t.to(device) for t in data.windows(split, chunk, context))
        total[0] += model.loss(x, y).double() * y.numel()
        total[1] += y.numel()
    if world > 1:
        dist.all_reduce(total)
    model.train()
    return float(total[0] / total[1])


@torch.no_grad()
def mixing_probe(model: ByteGPT, split: torch.Tensor, context: int, device) -> dict | None:
    """H_res statistics on 8 fixed held-out windows (``None`` for the plain residual)."""
    if model.mix is None:
        return None
    model.eval()
    x, _ = data.windows(split, data.valid_starts(split, 8, context), context)
    model.mix.recording, model.mix.recorded = True, []
    try:
        model(x.to(device))
        return mixing_statistics(model.mix.recorded)
    finally:
        model.mix.recording, model.mix.recorded = False, []
        model.train()


def _peak_memory_mb(device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kB


def _save_atomic(obj, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp) if path.suffix == ".pt" else tmp.write_text(json.dumps(obj))
    tmp.replace(path)


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    if args.batch % world:
        raise ValueError(f"--batch ({args.batch}) must be divisible by the number of processes ({world})")
    if torch.cuda.is_available():
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    corpus = data.load(args.corpus, args.max_bytes)
    model = ByteGPT(args.arm, dim=args.dim, heads=args.heads, blocks=args.blocks, context=args.context,
                    streams=args.streams, seed=args.seed).to(device=device, dtype=dtype)
    net = torch.nn.parallel.DistributedDataParallel(model) if world > 1 else model
    opt = torch.optim.Adam(model.parameters(), lr=args.lr, betas=(0.9, 0.95))
    ckpt, record_path = args.out / "checkpoint.pt", args.out / "record.json"
    log = {"train_loss": [], "step_ms": [], "mix_ms": [], "evals": []}
    start = 0
    if ckpt.exists():
        state = torch.load(ckpt, map_location=device, weights_only=False)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        start, log = state["step"], state["log"]
    if rank == 0:
        args.out.mkdir(parents=True, exist_ok=True)
    stop = _StopFlag()
    split = getattr(corpus, args.eval_split)
    local = slice(rank, None, world)

    def checkpoint(step):
        if rank == 0:
            _save_atomic({"model": model.state_dict(), "opt": opt.state_dict(), "step": step, "log": log,
                          "args": vars(args) | {"out": str(args.out), "corpus": str(args.corpus)}}, ckpt)
        if world > 1:
            dist.barrier()

    def evaluation(step):
        row = {"step": step, "wall_s": sum(log["step_ms"]) / 1e3,
               "loss": evaluate(model, split, args.eval_windows, args.context, rank, world, device)}
        if rank == 0:
            row["mixing"] = mixing_probe(model, split, args.context, device)
        log["evals"].append(row)

    from tqdm.auto import tqdm

    if start == 0:
        evaluation(0)
    bar = tqdm(range(start, args.steps), initial=start, total=args.steps, desc=f"{args.arm} seed {args.seed}",
               disable=rank != 0 or not args.progress, leave=False)
    for step in bar:
        for group in opt.param_groups:
            group["lr"] = _lr_at(step, args.steps, args.lr)
        starts = data.train_starts(corpus.train, args.batch, args.context, args.seed, step)[local]
        x, y = (t.to(device) for t in data.windows(corpus.train, starts, args.context))
        if model.mix is not None:
            model.mix.seconds = 0.0
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        loss = net(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        log["step_ms"].append(1e3 * (time.perf_counter() - t0))
        log["mix_ms"].append(1e3 * model.mix.seconds if model.mix is not None else 0.0)
        flags = torch.tensor([loss.detach().double().item(), float(stop.set or step + 1 == args.stop_at)],
                             dtype=torch.float64, device=device)
        if world > 1:
            dist.all_reduce(flags)
            flags[0] /= world
        log["train_loss"].append(float(flags[0]))
        if not math.isfinite(log["train_loss"][-1]):
            raise FloatingPointError(f"{args.arm} seed {args.seed}: training loss {log['train_loss'][-1]} at step {step}")
        if (step + 1) % args.eval_every == 0 or step + 1 == args.steps:
            evaluation(step + 1)
            bar.set_postfix(loss=f"{log['evals'][-1]['loss']:.3f}")
        if flags[1] > 0:
            checkpoint(step + 1)
            if rank == 0:
                print(f"stopped after step {step + 1}; checkpoint {ckpt}", file=sys.stderr)
            return EXIT_STOPPED
        if (step + 1) % args.checkpoint_every == 0 or step + 1 == args.steps:
            checkpoint(step + 1)
    if rank == 0:
        ms = np.array(log["step_ms"])
        record = {"arm": args.arm, "seed": args.seed, "lr": args.lr, "steps": args.steps, "batch": args.batch,
                  "world_size": world, "device": str(device), "dtype": args.dtype,
                  "config": {k: getattr(args, k) for k in ("dim", "heads", "blocks", "context", "streams")},
                  "parameters": sum(p.numel() for p in model.parameters()), "corpus": corpus.meta,
                  "python": sys.version.split()[0], "torch": torch.__version__,
                  "eval_split": args.eval_split, "final_loss": log["evals"][-1]["loss"],
                  "step_ms_median": float(np.median(ms)), "step_ms_p90": float(np.percentile(ms, 90)),
                  "mix_ms_median": float(np.median(log["mix_ms"])), "peak_memory_mb": _peak_memory_mb(device),
                  "log": log}
        _save_atomic(record, record_path)
    if world > 1:
        dist.barrier()
    return 0


if __name__ == "__main__":
    sys.exit(main())
