"""The byte-level corpus: the ``.py`` files of Python's standard library.

Source, in order of preference:

1. the pinned archive ``cpython-3.11.7-stdlib-py.tar.gz`` (``../shared/data/pystdlib`` next to the
   repository, or ``--corpus PATH``): CPython 3.11.7's 674 files, byte-for-byte reproducible
   (its SHA-256 is recorded with every result);
2. otherwise the standard library of the running interpreter, with the same exclusions
   (``site-packages``, ``test``, ``tests``, ``idlelib``, ``__pycache__``); its Python version and
   the SHA-256 of the concatenated files are recorded, so the corpus can be rebuilt.

Files are sorted by path and assigned to train, tune (learning-rate selection) or validation
(the reported loss) by a hash of the path (whole files on one side); each file ends with a newline, and the files of a side are concatenated.
"""

from __future__ import annotations

import hashlib
import sys
import sysconfig
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

PINNED = Path(__file__).resolve().parents[3] / "shared" / "data" / "pystdlib" / "cpython-3.11.7-stdlib-py.tar.gz"
EXCLUDED = {"site-packages", "test", "tests", "idlelib", "__pycache__"}
SHARES = {"tune": 0.05, "valid": 0.10}  # of the files, by path hash; the rest is "train"


@dataclass
class Corpus:
    train: torch.Tensor  # uint8 bytes
    tune: torch.Tensor
    valid: torch.Tensor
    meta: dict


def _side(path: str) -> str:
    """``tune`` (learning-rate selection), ``valid`` (the reported loss) or ``train``."""
    h = int.from_bytes(hashlib.sha256(path.encode()).digest()[:8], "big") / 2.0**64
    if h < SHARES["tune"]:
        return "tune"
    return "valid" if h < SHARES["tune"] + SHARES["valid"] else "train"


def _from_archive(path: Path):
    with tarfile.open(path) as tar:
        members = sorted((m for m in tar.getmembers() if m.isfile() and m.name.endswith(".py")), key=lambda m: m.name)
        return [(m.name, tar.extractfile(m).read()) for m in members]


def _from_interpreter():
    root = Path(sysconfig.get_paths()["stdlib"])
    files = [p for p in root.rglob("*.py") if not EXCLUDED & set(p.relative_to(root).parts[:-1])]
    return [(str(p.relative_to(root)), p.read_bytes()) for p in sorted(files, key=lambda p: str(p.relative_to(root)))]


def load(path: Path | None = None, max_bytes: int | None = None) -> Corpus:
    """The corpus split into train, tune and validation bytes.  ``max_bytes`` caps each side (for
    smoke runs); the metadata records where the files came from and their SHA-256."""
    path = PINNED if path is None else Path(path)
    if path.exists():
        files = _from_archive(path)
        meta = {"source": f"archive {path.name}", "archive_sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
                "python": "3.11.7 (pinned archive)"}
    else:
        files = _from_interpreter()
        meta = {"source": "standard library of the running interpreter", "python": sys.version.split()[0]}
    digest = hashlib.sha256()
    sides = {"train": [], "tune": [], "valid": []}
    for name, text in files:
        text = text if text.endswith(b"\n") else text + b"\n"
        digest.update(name.encode() + b"\0" + text)
        sides[_side(name)].append(text)
    meta |= {"files": len(files), "corpus_sha256": digest.hexdigest()} | {f"{k}_files": len(v) for k, v in sides.items()}
    out = {}
    for k, parts in sides.items():
        blob = b"".join(parts)[:max_bytes]
        out[k] = torch.from_numpy(np.frombuffer(blob, dtype=np.uint8).copy())
        meta[f"{k}_bytes"] = len(blob)
    return Corpus(out["train"], out["tune"], out["valid"], meta)


def windows(data: torch.Tensor, starts: torch.Tensor, context: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs ``data[s : s + context]`` and next-byte targets for each start ``s``."""
    idx = starts[:, None] + torch.arange(context + 1)
    chunk = data[idx].long()
    return chunk[:, :-1], chunk[:, 1:]


def train_starts(data: torch.Tensor, batch: int, context: int, seed: int, step: int) -> torch.Tensor:
    """The global batch of step ``step``: uniform window starts, a function of (seed, step)
    only, so a resumed run and every data-parallel layout see the same windows."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + step)
    return torch.randint(0, len(data) - context - 1, (batch,), generator=g)


def valid_starts(data: torch.Tensor, count: int, context: int) -> torch.Tensor:
    """``count`` fixed, evenly spaced validation windows."""
    return torch.linspace(0, len(data) - context - 2, count).long()
