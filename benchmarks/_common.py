"""Helpers shared by the benchmark scripts: timing, metadata and result files."""

from __future__ import annotations

import json
import platform
import subprocess
from importlib import metadata
from pathlib import Path

import torch


def versions(*packages: str) -> dict:
    out = {"python": platform.python_version(), "torch": torch.__version__}
    for name in packages:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    except Exception:
        return None


def write_json(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, default=str))


def cuda_check_args():
    """Arguments of the CUDA check scripts; fails clearly without a CUDA device."""
    import argparse

    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("no CUDA device: these checks need a GPU")
    print(torch.cuda.get_device_name(), torch.__version__, flush=True)
    return args


def plot_methods(rows, path, x, *, xlabel: str, title: str, loglog: bool = False) -> None:
    """One line per ``row["method"]``: ``x(row)`` against the row's fwd+bwd milliseconds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    draw = ax.loglog if loglog else ax.semilogy
    for name in dict.fromkeys(r["method"] for r in rows):
        pts = [(x(r), 1e3 * r["seconds"]) for r in rows if r["method"] == name]
        draw(*zip(*pts), "o-", label=name)
    ax.set(xlabel=xlabel, ylabel="fwd+bwd [ms]", title=title)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
