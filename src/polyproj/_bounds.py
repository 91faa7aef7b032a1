"""Validation of variable bounds ``lower ≤ y ≤ upper``, shared by :class:`~polyproj.Box`,
:class:`~polyproj.CappedSimplex` and the bounded :class:`~polyproj.Polyhedron`."""

from __future__ import annotations

import torch

from ._errors import InfeasibleError
from ._validation import as_tensor


def _bounds(lower, upper, what):
    """Validate a pair of bounds: scalars (the same bound on every coordinate, any ``n``) or
    arrays ``(..., n)`` (batch dimensions broadcast; a scalar broadcasts against an array);
    ±inf allowed (a missing side), NaN not.  Tensors that require grad stay attached to their
    graph.  Returns ``(lower, upper, event_shape)`` with ``event_shape = (-1,)`` when both are
    scalars."""
    device = next((t.device for t in (lower, upper) if isinstance(t, torch.Tensor)), torch.device("cpu"))
    lo = _as_bound(lower, "lower", device)
    up = _as_bound(upper, "upper", device)
    if lo.ndim and up.ndim and lo.shape[-1] != up.shape[-1]:
        raise ValueError(f"lower and upper must have the same length n, got shapes {tuple(lo.shape)} and {tuple(up.shape)}")
    _broadcast("lower and upper", lo.shape[:-1], up.shape[:-1])
    if bool((lo == float("inf")).any()) or bool((up == -float("inf")).any()):
        raise ValueError("lower may not contain +inf and upper may not contain -inf")
    lo_b, up_b = torch.broadcast_tensors(lo.detach(), up.detach())
    if lo_b.ndim <= 1:
        bad = (lo_b > up_b).nonzero()
        if bad.shape[0]:
            i = tuple(bad[0].tolist())
            at = i[-1] if i else ""
            raise InfeasibleError(f"the {what} is empty: lower[{at}] = {float(lo_b[i])} > upper[{at}] = {float(up_b[i])}")
    else:  # per-sample bounds: name the empty samples by batch index
        _raise_empty_where((lo_b > up_b).any(-1), True, lambda i, where: (
            f"the {what} is empty{where}: lower > upper at coordinate "
            f"{int((lo_b[i] > up_b[i]).nonzero()[0])} of sample {i}"))
    n = max(lo.shape[-1] if lo.ndim else -1, up.shape[-1] if up.ndim else -1)
    return lo, up, (n,)


def _per_coordinate(t: torch.Tensor, n: int) -> torch.Tensor:
    """A bound (scalar, or ``(..., n)``) as a detached ``(..., n)`` tensor."""
    return torch.broadcast_to(t.detach(), (*t.shape[:-1], n) if t.ndim else (n,))


def _as_bound(value, name, device):
    t = as_tensor(value, name, device=device, keep_grad=True, allow_inf=True)
    if t.ndim >= 1 and t.shape[-1] < 1:
        raise ValueError(f"{name} must be a scalar or an array of shape (..., n) with n >= 1, got shape {tuple(t.shape)}")
    return t


def _broadcast(what, *shapes):
    try:
        return tuple(torch.broadcast_shapes(*shapes))
    except RuntimeError:
        raise ValueError(f"the batch dimensions of {what} do not broadcast: {', '.join(map(str, map(tuple, shapes)))}") from None


def _raise_empty_where(bad: torch.Tensor, batched: bool, message):
    """Raise :class:`InfeasibleError` if any entry of ``bad`` (over the set's batch shape) is
    True; ``message(i)`` describes the first empty sample ``i``; per-sample sets name the batch
    indices.  Not checked inside a compiled graph: a set rebuilt there from its buffers was
    validated when it was built (learned data run the layer eagerly)."""
    if torch.compiler.is_compiling() or not bool(bad.any()):
        return
    idx = [tuple(i) for i in bad.nonzero().tolist()]
    where = f" at batch indices {', '.join(map(str, idx[:10]))}" if batched else ""
    raise InfeasibleError(message(idx[0], where), indices=idx if batched else None)
