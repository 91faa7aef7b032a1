r"""A byte-level GPT whose residual stream is one of four arms, all built from the
``hyper-connections`` package (Zhu et al., arXiv 2409.19606; Xie et al., mHC, arXiv 2512.24880),
so that H_pre, H_post, norms, parameters and initialisation are shared and only the map that
turns the H_res logits into the residual mixing matrix differs:

- ``residual``: the plain residual stream (the package's ``disable=True``);
- ``hc``: hyper-connections, H_res = its logits (unconstrained);
- ``sinkhorn``: mHC, H_res = 20 Sinkhorn–Knopp iterations on exp(logits) (the package default);
- ``exact``: mHC with H_res = the Euclidean projection of the logits onto the Birkhoff polytope
  (``polyproj.Birkhoff()``), back-propagated with its HS-Jacobian.

Initialisation, matched between the two mHC arms: the package starts the static logits at
``I``, from which Sinkhorn reaches ``H0 = exp(I) / (e + 3)`` (diagonal 0.475, off-diagonal
0.175: ``exp(I)`` already has equal row and column sums).  The exact arm's static logits start
at ``H0`` itself, an interior point of the polytope, where the projection is the identity and
its Jacobian the projection onto {row and column sums zero}.  (Starting it at ``I``, a vertex,
would give a zero Jacobian: H_res could never learn.)

Symmetry: the ``num_streams`` copies of the embedding start apart by the package's stream
embedding, initialised here N(0, 0.02²) (the package starts it at zero); every
hyper-connection gets its ``layer_index`` (otherwise the package draws H_pre's initial stream from
Python's global random generator).
"""

from __future__ import annotations

import math
import time

import torch
import torch.nn.functional as F
from hyper_connections import mc_get_init_and_expand_reduce_stream_functions
from hyper_connections.manifold_constrained_hyper_connections import sinkhorn_knopps
from torch import nn

import polyproj as pp

ARMS = ("residual", "hc", "sinkhorn", "exact")
SINKHORN_ITERS = 20


def matched_start(n: int) -> torch.Tensor:
    """``H0``: the point Sinkhorn reaches from the package's initial logits ``I``."""
    return sinkhorn_knopps(torch.eye(n), iters=SINKHORN_ITERS)


class ResidualMix:
    """The H_res map of one arm (logits ``(..., n, n)`` → mixing matrix), with the seconds its
    forward passes took and, while ``recording``, the matrices it returned (detached)."""

    def __init__(self, arm: str):
        self.arm, self.seconds, self.recording, self.recorded = arm, 0.0, False, []
        self._birkhoff = pp.Birkhoff()

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        t0 = time.perf_counter()
        if self.arm == "hc":
            H = logits
        elif self.arm == "sinkhorn":
            H = sinkhorn_knopps(logits, iters=SINKHORN_ITERS)
        elif self.arm == "exact":
            H = pp.project(logits, self._birkhoff)
        else:
            raise ValueError(f"arm must be one of {ARMS[1:]} for a residual mix, got {self.arm!r}")
        self.seconds += time.perf_counter() - t0
        if self.recording:
            self.recorded.append(H.detach().reshape(-1, *H.shape[-2:]))
        return H


class CausalSelfAttention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.out = nn.Linear(dim, dim, bias=False)

    def forward(self, x):
        B, T, D = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.out(y.transpose(1, 2).reshape(B, T, D))


def _mlp(dim: int) -> nn.Module:
    return nn.Sequential(nn.Linear(dim, 4 * dim, bias=False), nn.GELU(), nn.Linear(4 * dim, dim, bias=False))


class ByteGPT(nn.Module):
    """Pre-RMSNorm GPT on bytes: ``blocks`` × (attention, MLP) sublayers, each wrapped in the
    arm's hyper-connection over ``streams`` residual streams."""

    def __init__(self, arm: str, *, dim: int = 128, heads: int = 4, blocks: int = 6, context: int = 128,
                 streams: int = 4, seed: int = 0):
        super().__init__()
        if arm not in ARMS:
            raise ValueError(f"arm must be one of {ARMS}, got {arm!r}")
        if dim % heads:
            raise ValueError(f"dim ({dim}) must be divisible by heads ({heads})")
        torch.manual_seed(seed)
        self.arm, self.context, self.streams = arm, context, streams
        self.mix = ResidualMix(arm) if arm != "residual" else None
        init_hc, self.expand, self.reduce = mc_get_init_and_expand_reduce_stream_functions(
            streams, dim=dim, add_stream_embed=True, disable=arm == "residual", residual_mix_constraint_fn=self.mix)
        self.embed = nn.Embedding(256, dim)
        self.pos = nn.Parameter(torch.zeros(context, dim))
        sublayers = []
        for i in range(blocks):
            sublayers.append(init_hc(branch=nn.Sequential(nn.RMSNorm(dim), CausalSelfAttention(dim, heads)), layer_index=2 * i))
            sublayers.append(init_hc(branch=nn.Sequential(nn.RMSNorm(dim), _mlp(dim)), layer_index=2 * i + 1))
        self.sublayers = nn.ModuleList(sublayers)
        self.norm = nn.RMSNorm(dim)
        self.head = nn.Linear(dim, 256, bias=False)
        self._init(blocks, streams)

    def _init(self, blocks, streams):
        for name, p in self.named_parameters():
            if p.dim() == 2 and ("weight" in name and "sublayers" in name or name.startswith("head")):
                nn.init.normal_(p, std=0.02)
                if name.endswith("out.weight") or name.endswith("2.weight"):  # residual projections
                    p.data.mul_(1 / math.sqrt(2 * blocks))
        nn.init.normal_(self.embed.weight, std=0.02)
        nn.init.normal_(self.pos, std=0.02)
        if self.arm != "residual":
            nn.init.normal_(self.expand.stream_embed, std=0.02)
        if self.arm == "exact":
            H0 = matched_start(streams)
            for hc in self.sublayers:
                hc.static_alpha.data[:, 1:] = H0

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None) -> torch.Tensor:
        """Next-byte logits ``(B, T, 256)``, or with ``targets`` the mean cross-entropy (nats)."""
        x = self.embed(idx) + self.pos[: idx.shape[1]]
        x = self.expand(x)
        for sub in self.sublayers:
            x = sub(x)
        logits = self.head(self.norm(self.reduce(x)))
        if targets is None:
            return logits
        return F.cross_entropy(logits.reshape(-1, 256), targets.reshape(-1))

    def loss(self, idx, targets):
        return self.forward(idx, targets)
