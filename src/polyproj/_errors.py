"""Exceptions raised by polyproj."""

from __future__ import annotations

__all__ = ["InfeasibleError", "ConvergenceError"]


class InfeasibleError(ValueError):
    """The constraint set is empty.

    Attributes
    ----------
    certificate : dict or None
        A Farkas certificate when one could be computed: nonnegative weights ``u`` on the
        inequality rows and free weights ``v`` on the equality rows with
        ``Aᵀu + Bᵀv = 0`` and ``aᵀu + bᵀv < 0``.  Keys ``"inequality_weights"``,
        ``"equality_weights"`` (numpy arrays) and ``"rows"`` (the names of the rows
        with nonzero weight, e.g. ``"A[3]"``, ``"B[0]"``); for per-sample data, the
        certificate of the first empty sample.
    indices : list of tuples or None
        For per-sample constraint data: the batch indices of the empty samples.
    """

    def __init__(self, message: str, certificate: dict | None = None, indices: list | None = None):
        super().__init__(message)
        self.certificate = certificate
        self.indices = indices


class ConvergenceError(RuntimeError):
    """A projection did not reach its requested tolerance.

    Raised by :func:`polyproj.project` unless ``on_failure="warn"``.  The attribute
    ``info`` carries the :class:`polyproj.ProjectionInfo` of the failed call.
    """

    def __init__(self, message: str, info=None):
        super().__init__(message)
        self.info = info


class ConvergenceWarning(RuntimeWarning):
    """Warning issued instead of :class:`ConvergenceError` when ``on_failure="warn"``."""
