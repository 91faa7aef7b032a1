r"""Adam in the two-timescale form with diminishing step sizes, for training networks whose
layers back-propagate with conservative Jacobians (e.g. the HS-Jacobian of a projection).

The update
----------
With ``g_k`` the (mini-batch) gradient returned by autograd — an element of a conservative
field ``D_f`` of the loss, plus zero-mean noise — and the schedules ``η_k`` (parameter step),
``θ_k`` (first-moment rate) and ``ψ_k`` (second-moment rate), evaluated at ``k = 0, 1, …``:

.. math::

    m_{k+1} &= (1 − θ_k)\, m_k + θ_k\, g_k ,\\
    v_{k+1} &= (1 − ψ_k)\, v_k + ψ_k\, g_k ⊙ g_k ,\\
    x_{k+1} &= x_k − η_k\, m_{k+1} ⊘ \sqrt{v_{k+1} + ε} ,

from ``m_0 = v_0 = 0``, without bias correction, with ``ε > 0`` inside the square root, and —
in the clipped variant — ``g_k`` replaced by ``g_k · min(1, c / ‖g_k‖)`` (the norm of each
parameter tensor's gradient).

The theorem it follows
----------------------
Xiao, Hu, Liu & Toh, "Adam-family methods for nonsmooth optimization with convergence
guarantees", JMLR 25 (2024), arXiv:2305.03938, treat Adam-family updates as a two-timescale
stochastic approximation of a differential inclusion built on a conservative field and prove
that, almost surely, every limit point of the iterates is ``D_f``-stationary (Clarke-stationary
under random initialisation), and that the clipped variant tolerates noise that is merely
integrable (heavy tails).  As implemented here, the conditions on the schedules are:

* ``η_k > 0``, ``η_k → 0``, ``Σ η_k = ∞`` and ``η_k = o(1/log k)`` — enforced for the
  :class:`PowerDecay` schedules by requiring the exponent ``a ∈ (0, 1]``;
* the moment rates ``θ_k, ψ_k ∈ (0, 1]``, ``→ 0`` with ``Σ = ∞``, on the faster timescale:
  ``η_k / θ_k → 0`` and ``η_k / ψ_k → 0`` — enforced by requiring their exponents ``b`` to satisfy
  ``0 < b < a``;
* ``ε > 0`` (default ``1e-6``; plain Adam's ``1e-8`` outside the root gives poor constants).

Left to the user (the optimizer cannot check them): the iterates stay bounded almost surely
(weight decay is *not* added, because it changes the objective); the loss is path-differentiable
and its set of critical values has empty interior (true for networks built from definable
pieces, such as ReLU/tanh layers composed with ``Π_P``, which is piecewise affine); the gradient
noise is a martingale difference sequence with the moment bound the theorem asks (integrable
for the clipped variant).

What could not be checked here: the precise form of the timescale condition for the
second-moment rate and any constant in it were recalled from the paper's framework, not
re-derived from its text; if a future reading shows a stronger requirement (e.g. a summability
condition on ``θ_k²``), the :class:`PowerDecay` exponents allowed by ``theory=True`` must be
narrowed accordingly.  With ``theory=False`` any schedules are accepted (e.g. to reproduce
constant-step behaviour) and the optimizer says nothing about convergence.
"""

from __future__ import annotations

import math
import numbers

import torch

__all__ = ["PowerDecay", "Constant", "TwoTimescaleAdam"]


def _positive(value, name: str, *, upper: float | None = None, closed_upper: bool = True) -> float:
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value) and value > 0
    if ok and upper is not None:
        ok = value <= upper if closed_upper else value < upper
    if not ok:
        bound = f" and {'≤' if closed_upper else '<'} {upper}" if upper is not None else ""
        raise ValueError(f"{name} must be a finite real number > 0{bound}, got {value!r}")
    return float(value)


class PowerDecay:
    r"""``s_k = initial / (1 + k / warmup)^power`` for ``k = 0, 1, …`` (capped at ``cap``).

    ``power ∈ (0, 1]`` makes the sequence diminishing with a divergent sum; ``warmup`` (> 0
    iterations) keeps it near ``initial`` for the first ``warmup`` steps.  Schedules are
    stateless: the optimizer stores ``k``.
    """

    def __init__(self, initial: float, power: float, warmup: float = 1.0, cap: float | None = None):
        self.initial = _positive(initial, "initial")
        self.power = _positive(power, "power", upper=1.0)
        self.warmup = _positive(warmup, "warmup")
        self.cap = None if cap is None else _positive(cap, "cap")

    def __call__(self, k: int) -> float:
        value = self.initial / (1.0 + k / self.warmup) ** self.power
        return min(value, self.cap) if self.cap is not None else value

    def __repr__(self):
        return f"PowerDecay(initial={self.initial}, power={self.power}, warmup={self.warmup}, cap={self.cap})"


class Constant:
    """``s_k = value`` for every ``k`` — outside the theorem; for comparisons only."""

    power = 0.0

    def __init__(self, value: float):
        self.value = _positive(value, "value")

    def __call__(self, k: int) -> float:
        return self.value

    def __repr__(self):
        return f"Constant({self.value})"


def _check_schedule(schedule, name):
    if not callable(schedule) or not hasattr(schedule, "power"):
        raise ValueError(f"{name} must be a schedule object (PowerDecay or Constant), got {schedule!r}")
    return schedule


class TwoTimescaleAdam(torch.optim.Optimizer):
    r"""Adam with diminishing two-timescale schedules (see the module docstring for the exact
    update, the theorem and its assumptions).

    Parameters
    ----------
    params : iterable of tensors or of parameter-group dicts
        As for any ``torch.optim.Optimizer``; groups may override every option below.
    lr : PowerDecay
        Parameter step ``η_k``.  Default ``PowerDecay(1e-3, 0.75, warmup=100)``.
    momentum_rate : PowerDecay
        First-moment rate ``θ_k`` (plain Adam's ``1 − β₁``).  Default
        ``PowerDecay(0.1, 0.5, warmup=100)``.
    second_moment_rate : PowerDecay
        Second-moment rate ``ψ_k`` (plain Adam's ``1 − β₂``).  Default
        ``PowerDecay(0.1, 0.5, warmup=100)``.
    eps : float
        ``ε > 0`` inside ``√(v + ε)``; default 1e-6.
    clip : float or None
        Clipped variant: each parameter tensor's gradient is scaled to norm ≤ ``clip``.
    theory : bool
        Check that the schedules satisfy the conditions listed in the module docstring
        (raise ``ValueError`` naming the offending one).  Default True.

    ``state_dict()`` / ``load_state_dict()`` round-trip the moments and the step counter, so a
    resumed run continues the same trajectory bit for bit.
    """

    def __init__(self, params, lr=None, momentum_rate=None, second_moment_rate=None, eps: float = 1e-6,
                 clip: float | None = None, theory: bool = True):
        lr = PowerDecay(1e-3, 0.75, warmup=100) if lr is None else lr
        momentum_rate = PowerDecay(0.1, 0.5, warmup=100) if momentum_rate is None else momentum_rate
        second_moment_rate = PowerDecay(0.1, 0.5, warmup=100) if second_moment_rate is None else second_moment_rate
        defaults = dict(lr=lr, momentum_rate=momentum_rate, second_moment_rate=second_moment_rate,
                        eps=eps, clip=clip, theory=theory)
        super().__init__(params, defaults)
        for group in self.param_groups:
            self._validate(group)

    @staticmethod
    def _validate(group):
        lr = _check_schedule(group["lr"], "lr")
        rates = {"momentum_rate": _check_schedule(group["momentum_rate"], "momentum_rate"),
                 "second_moment_rate": _check_schedule(group["second_moment_rate"], "second_moment_rate")}
        _positive(group["eps"], "eps")
        if group["clip"] is not None:
            _positive(group["clip"], "clip")
        for name, rate in rates.items():
            if rate(0) > 1.0:
                raise ValueError(f"{name} must stay in (0, 1], got {rate(0)} at k = 0 (use cap=1.0)")
        if not isinstance(group["theory"], bool):
            raise ValueError(f"theory must be a bool, got {group['theory']!r}")
        if group["theory"]:
            if not isinstance(lr, PowerDecay):
                raise ValueError(f"lr must be a diminishing PowerDecay schedule (power in (0, 1]) when theory=True, got {lr!r}")
            for name, rate in rates.items():
                if not isinstance(rate, PowerDecay):
                    raise ValueError(f"{name} must be a diminishing PowerDecay schedule when theory=True, got {rate!r}")
                if not rate.power < lr.power:
                    raise ValueError(
                        f"{name} must decay more slowly than lr (two timescales: η_k/θ_k → 0), i.e. "
                        f"{name}.power < lr.power; got {rate.power} and {lr.power}")

    def add_param_group(self, param_group):
        super().add_param_group(param_group)
        try:
            self._validate(self.param_groups[-1])
        except ValueError:
            self.param_groups.pop()  # an invalid group never joins the optimizer
            raise

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                if g.is_sparse:
                    raise ValueError("TwoTimescaleAdam does not support sparse gradients")
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["m"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["v"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                k = state["step"]
                eta, theta, psi = group["lr"](k), group["momentum_rate"](k), group["second_moment_rate"](k)
                if group["clip"] is not None:
                    norm = float(g.norm())
                    if norm > group["clip"]:
                        g = g * (group["clip"] / norm)
                m, v = state["m"], state["v"]
                m.mul_(1.0 - theta).add_(g, alpha=theta)
                v.mul_(1.0 - psi).addcmul_(g, g, value=psi)
                p.addcdiv_(m, (v + group["eps"]).sqrt_(), value=-eta)
                state["step"] = k + 1
        return loss
