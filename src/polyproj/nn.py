"""``torch.nn`` front end."""

from __future__ import annotations

import torch

from ._validation import check_choice, check_positive_int, check_tolerance
from .project import check_engine, project
from .sets import ConvexSet

__all__ = ["Projection"]


class Projection(torch.nn.Module):
    r"""A layer computing the exact Euclidean projection :math:`y = \Pi_P(x)`.

    ``layer(x) == polyproj.project(x, P, tol=tol, max_iter=max_iter, on_failure=on_failure, engine=engine)``.
    Moving the module (``.to(device)``, ``.cuda()``) moves the set with it.  The last call's
    :class:`polyproj.ProjectionInfo` is kept in ``layer.last_info`` for monitoring.

    Learned constraint data stay live: the tensors the set was built from become the module's
    (``nn.Parameter`` s as parameters ``data_<name>``, other tensors as buffers), so optimizers,
    ``state_dict``, ``.to()`` and DDP see them, and a set with data that require grad is
    rebuilt from their current values at every call::

        a = torch.nn.Parameter(torch.ones(3))
        layer = pp.Projection(pp.Polyhedron(A=torch.eye(3), a=a))   # a is layer.data_a
        opt = torch.optim.Adam(layer.parameters())                  # trains a; the next call sees it

    Example
    -------
    >>> import torch, polyproj as pp
    >>> layer = pp.Projection(pp.Polyhedron(A=torch.eye(3), a=torch.ones(3)))
    >>> layer(torch.tensor([[0.5, 2.0, -1.0]], dtype=torch.float64))
    tensor([[ 0.5000,  1.0000, -1.0000]], dtype=torch.float64)
    """

    def __init__(self, P: ConvexSet, *, tol: float | None = None, max_iter: int = 500, on_failure: str = "raise",
                 engine: str = "auto"):
        super().__init__()
        if not isinstance(P, ConvexSet):
            raise ValueError(f"P must be a polyproj constraint set, got {type(P).__name__}")
        if tol is not None:
            check_tolerance(tol, torch.float64)
        self.set = P
        self.tol = tol
        self.max_iter = check_positive_int(max_iter, "max_iter")
        self.on_failure = check_choice(on_failure, "on_failure", ("raise", "warn"))
        self.engine = check_engine(engine, P)
        self.last_info = None
        # The set's tensor data become the module's: parameters (nn.Parameter) are trained and
        # read at every call, other tensors are buffers; both follow .to(), state_dict and DDP.
        self._data_names = {}
        for name, value in P._init_args.items():
            if isinstance(value, torch.nn.Parameter):
                self.register_parameter(f"data_{name}", value)
            elif isinstance(value, torch.Tensor):
                self.register_buffer(f"data_{name}", value)
            else:
                continue
            self._data_names[name] = f"data_{name}"
        self._live = any(isinstance(v, torch.Tensor) and v.requires_grad for v in P._init_args.values())
        self._built_from = self._data_stamp()

    def _data_stamp(self):
        return tuple((t.data_ptr(), t._version) for t in (getattr(self, a) for a in self._data_names.values()))

    def current_set(self) -> ConvexSet:
        """The set built from the module's current data: rebuilt at every call when the data
        require grad (learned), and whenever a buffer changed (``load_state_dict``, in-place
        edits) — a set is a snapshot and must not keep projecting onto old values."""
        data = {name: getattr(self, attr) for name, attr in self._data_names.items()}
        if self._live:
            return self.set._rebuild(data)
        if not torch.compiler.is_compiling() and data and self._data_stamp() != self._built_from:
            self.set = self.set._rebuild(data)
            self._built_from = self._data_stamp()
        return self.set

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._project_eagerly(x) if self._live else self._project(x)

    def _project(self, x: torch.Tensor) -> torch.Tensor:
        y, self.last_info = project(x, self.current_set(), tol=self.tol, max_iter=self.max_iter,
                                    on_failure=self.on_failure, return_info=True, engine=self.engine)
        return y

    # A set rebuilt from learned data at every call is a new Python object: under torch.compile
    # such a layer runs eagerly (a graph break; fullgraph=True needs fixed constraint data).
    _project_eagerly = torch.compiler.disable(_project)

    def _apply(self, fn, *args, **kwargs):
        out = super()._apply(fn, *args, **kwargs)
        if not self._live:
            probe = fn(torch.zeros((), device=self.set.device))
            self.set = self.set.to(probe.device)
            self._built_from = self._data_stamp()
        return out

    def extra_repr(self) -> str:
        return f"{self.set!r}, tol={self.tol}, max_iter={self.max_iter}, engine={self.engine!r}"
