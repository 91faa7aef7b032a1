"""Input validation and conversion shared by every public entry point.

Everything a user passes goes through these helpers once, at the boundary; the solvers
below assume clean float64 tensors.
"""

from __future__ import annotations

import numbers

import numpy as np
import torch

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def as_tensor(value, name: str, *, device=None, ndim: int | tuple[int, ...] | None = None,
              min_ndim: int | None = None, keep_grad: bool = False, allow_inf: bool = False) -> torch.Tensor:
    """Convert ``value`` (tensor, numpy array, scipy.sparse matrix, sequence or scalar) to a
    float64 tensor, checking its number of dimensions and that every entry is finite.

    The result never aliases the caller's memory.  With ``keep_grad`` a tensor that requires
    grad stays attached to its autograd graph (a differentiable copy), so gradients can flow
    back to it.  With ``allow_inf`` entries may be ±inf (bounds with a missing side), never NaN."""
    if value is None:
        raise ValueError(f"{name} must be given, got None")
    if hasattr(value, "toarray") and not isinstance(value, (torch.Tensor, np.ndarray)):
        value = value.toarray()  # scipy.sparse: the solvers work on dense data
    if isinstance(value, torch.Tensor):
        if value.is_complex() or value.dtype == torch.bool:
            raise ValueError(f"{name} must be a real tensor, got dtype {value.dtype}")
        source = value if (keep_grad and value.requires_grad) else value.detach()
        tensor = source.to(dtype=torch.float64, device=device if device is not None else value.device, copy=True)
    else:
        try:
            array = np.asarray(value)
        except Exception as exc:  # pragma: no cover - defensive
            raise ValueError(f"{name} could not be converted to an array: {exc}") from exc
        if array.dtype == object or not (np.issubdtype(array.dtype, np.number)) or np.iscomplexobj(array):
            raise ValueError(f"{name} must be a real numeric array, got dtype {array.dtype}")
        tensor = torch.as_tensor(np.array(array, dtype=np.float64), device=device)
    if ndim is not None:
        allowed = (ndim,) if isinstance(ndim, int) else ndim
        if tensor.ndim not in allowed:
            raise ValueError(
                f"{name} must have {' or '.join(map(str, allowed))} dimension(s), "
                f"got shape {tuple(tensor.shape)}"
            )
    if min_ndim is not None and tensor.ndim < min_ndim:
        raise ValueError(f"{name} must have at least {min_ndim} dimension(s), got shape {tuple(tensor.shape)}")
    if allow_inf:
        if bool(torch.isnan(tensor.detach()).any()):
            raise ValueError(f"{name} must not contain NaN")
    else:
        check_finite(tensor.detach(), name)
    return tensor


def broadcast_batch(x_batch, set_batch, name: str = "x") -> torch.Size:
    """The broadcast of an input's batch shape with a constraint set's batch shape."""
    if not set_batch:  # shared data (the common case): no broadcast to compute
        return torch.Size(x_batch)
    try:
        return torch.broadcast_shapes(tuple(x_batch), tuple(set_batch))
    except RuntimeError:
        raise ValueError(
            f"{name} has batch shape {tuple(x_batch)}, which does not broadcast against the constraint "
            f"set's batch shape {tuple(set_batch)} (per-sample constraint data)"
        ) from None


def check_finite(tensor: torch.Tensor, name: str) -> None:
    if tensor.device.type == "meta":
        return
    if tensor.numel() and not bool(torch.isfinite(tensor).all()):
        bad = (~torch.isfinite(tensor)).nonzero()[0].tolist()
        raise ValueError(f"{name} must be finite, found {tensor[tuple(bad)].item()} at index {tuple(bad)}")


def check_input(x, name: str, event_shape: tuple[int, ...], device: torch.device, *, check_values: bool = True) -> torch.Tensor:
    """Validate the point(s) to project: a floating-point tensor (float16, bfloat16, float32 or
    float64) of shape (..., *event_shape)."""
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in FLOAT_DTYPES:
        raise ValueError(f"{name} must have a floating dtype (float16, bfloat16, float32 or float64), got {x.dtype}")
    k = len(event_shape)
    trailing = tuple(x.shape[x.ndim - k:]) if x.ndim >= k else ()
    if x.ndim < k or any(e != -1 and t != e for t, e in zip(trailing, event_shape)) or (k and min(trailing) < 1):
        free = iter(("m", "n") if sum(e == -1 for e in event_shape) == 2 else ("n",))
        expected = "(..., " + ", ".join(next(free) if e == -1 else str(e) for e in event_shape) + ")"
        sizes = " with every event dimension >= 1" if -1 in event_shape else ""
        raise ValueError(f"{name} must have shape {expected}{sizes}, got {tuple(x.shape)}")
    if x.device != device and not (x.device.type == device.type and device.index is None) and x.device.type != "meta":
        raise ValueError(
            f"{name} is on device {x.device} but the constraint set is on {device}; "
            f"move one of them with .to()"
        )
    if check_values:
        check_finite(x.detach(), name)
    return x


DEFAULT_TOL = 1e-9  # every solve runs in float64, whatever the input dtype


def check_tolerance(tol, dtype: torch.dtype) -> float:
    if tol is None:
        return DEFAULT_TOL
    if not isinstance(tol, numbers.Real) or not (0 < float(tol) < 1) or not np.isfinite(tol):
        raise ValueError(f"tol must be a real number in (0, 1), got {tol!r}")
    return float(tol)


def check_positive_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def check_choice(value, name: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")
    return value
