"""Backward storage stays O(batch·(n + m)); the nn.Module front end."""

import numpy as np
import torch

import polyproj as pp

from problems import random_instance


def _saved_bytes(fn):
    sizes = []

    def pack(t):
        sizes.append(t.numel() * t.element_size())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return out, sum(sizes)


def test_backward_storage_is_linear_in_batch(rng):
    n, m, p = 60, 80, 4
    A, a, B, b, _ = random_instance(rng, n=n, m=m, p=p, batch=1)
    P = pp.Polyhedron(A=A, a=a, B=B, b=b)
    for N in (16, 64):
        x = torch.tensor(3 * rng.standard_normal((N, n)), requires_grad=True)
        y, saved = _saved_bytes(lambda: pp.project(x, P))
        assert saved <= N * (n + m + p) * 8 + 1024, saved  # a mask of the rows; never N·n²
        y.sum().backward()


def test_projection_module(rng):
    A, a, B, b, X = random_instance(rng, n=5, m=7, p=1, batch=4)
    P = pp.Polyhedron(A=A, a=a, B=B, b=b)
    layer = pp.Projection(P)
    x = torch.tensor(X)
    assert torch.equal(layer(x), pp.project(x, P))
    assert layer.last_info.kkt_residual.shape == (4,)
    assert "Polyhedron(n=5, m=7, p=1" in repr(layer)
    net = torch.nn.Sequential(torch.nn.Linear(3, 5), layer)
    out = net(torch.randn(10, 3))
    assert out.dtype == torch.float32 and bool(P.contains(out, tol=1e-6).all())
    out.sum().backward()
    assert net[0].weight.grad is not None and bool(torch.isfinite(net[0].weight.grad).all())
    net.to("cpu")  # moving the module moves the set
    assert layer.set.device.type == "cpu"
