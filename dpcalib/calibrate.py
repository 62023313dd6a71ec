"""Privacy queries and calibration for DP-SGD, under any registered accountant.

Queries: :func:`epsilon`, :func:`delta` (DP-SGD with Poisson rate q, noise multiplier σ, T steps) and
:func:`event_epsilon`, :func:`event_delta` (any event). Calibrations answer the inverse questions by root finding
on a monotone budget: ε decreases with σ and increases with q and T.

Method (all calibrations): a doubling bracket, then Brent's method (Brent 1973, via ``scipy.optimize.brentq``) on
log ε as a function of log σ or log q to a relative tolerance ``rtol`` (default 1e-6), or integer bisection on T. The value returned is
always the conservative end of the final bracket and has been evaluated under the same accountant: its ε is ≤ the
target (never "within tolerance" above it). A target that cannot be met in the search range (σ up to 1e6, q down
to 1e-12, one step), or that is met without the parameter mattering (σ down to 0.05, q = 1 is returned as 1,
every T up to 1e12), raises :class:`~dpcalib.errors.UnreachableTargetError` with the reason.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Callable

from .accountant import make_accountant
from .errors import (
    InvalidArgumentError,
    OrderRangeWarning,
    UnreachableTargetError,
)
from .events import Event, dpsgd_event
from . import validation as check

__all__ = [
    "SIGMA_MIN",
    "SIGMA_MAX",
    "Q_MIN",
    "STEPS_MAX",
    "epsilon",
    "delta",
    "event_epsilon",
    "event_delta",
    "calibrate_sigma",
    "calibrate_sigma_for",
    "calibrate_steps",
    "calibrate_steps_for",
    "calibrate_q",
]

SIGMA_MIN = 0.05
SIGMA_MAX = check.SIGMA_RANGE[1]
Q_MIN = 1e-12
STEPS_MAX = check.STEPS_MAX
#: first step of the σ bracket, in log σ; the step then doubles. A small first step gives a tight bracket when σ is
#: near 1 (the typical DP-SGD answer), which matters for accountants whose ε is costly (PLD), and reaches σ = 1e6
#: in fewer evaluations than doubling σ would.
_SIGMA_FIRST_STEP = 0.05


def event_epsilon(event: Event, *, delta: float, accountant: str = "rdp", **options: Any) -> float:
    """ε(δ) of ``event`` under the named accountant (an upper bound; see that accountant's docstring)."""
    delta = check.open_unit("delta", delta)
    return make_accountant(accountant, **options).compose(event).epsilon(delta)


def event_delta(event: Event, *, eps: float, accountant: str = "rdp", **options: Any) -> float:
    """δ(ε) of ``event`` under the named accountant (an upper bound)."""
    eps = check.positive("eps", eps)
    return make_accountant(accountant, **options).compose(event).delta(eps)


def epsilon(*, sigma: float, q: float, steps: int, delta: float, accountant: str = "rdp", **options: Any) -> float:
    """ε(δ) after ``steps`` DP-SGD steps with Poisson rate ``q`` and noise multiplier ``sigma``.

    With ``accountant="rdp"``: the exact RDP of the sampled Gaussian (Mironov, Talwar, Zhang 2019) composed over
    steps and converted by Canonne–Kamath–Steinke 2020 / Balle et al. 2020 at the best order.
    """
    return event_epsilon(_dpsgd(sigma, q, steps), delta=delta, accountant=accountant, **options)


def delta(*, sigma: float, q: float, steps: int, eps: float, accountant: str = "rdp", **options: Any) -> float:
    """δ(ε) after ``steps`` DP-SGD steps with Poisson rate ``q`` and noise multiplier ``sigma``."""
    return event_delta(_dpsgd(sigma, q, steps), eps=eps, accountant=accountant, **options)


def calibrate_sigma(
    *, eps: float, delta: float, q: float, steps: int, accountant: str = "rdp", rtol: float = 1e-6, **options: Any
) -> float:
    """The smallest noise multiplier σ (to relative tolerance ``rtol``) with ε(σ) ≤ ``eps`` at ``delta`` for
    ``steps`` DP-SGD steps with Poisson rate ``q``. The σ returned is verified: ε(σ) ≤ eps."""
    q = check.rate("q", q)
    steps = check.steps("steps", steps)
    return calibrate_sigma_for(
        lambda sigma: dpsgd_event(sigma=sigma, q=q, steps=steps),
        eps=eps,
        delta=delta,
        accountant=accountant,
        rtol=rtol,
        **options,
    )


def calibrate_sigma_for(
    make_event: Callable[[float], Event],
    *,
    eps: float,
    delta: float,
    accountant: str = "rdp",
    rtol: float = 1e-6,
    **options: Any,
) -> float:
    """The smallest σ in [0.05, 1e6] (to relative tolerance ``rtol``) with ε(make_event(σ)) ≤ ``eps``; verified.

    ``make_event`` must give events whose ε decreases with σ (e.g. heterogeneous training phases sharing σ).
    """
    eps, delta, rtol = _check_target(eps, delta, rtol)

    def solve(local: bool) -> float:
        excess = _Excess(lambda x: make_event(math.exp(x)), eps, delta, accountant, options, order_slope=2.0,
                         local=local)
        if excess(0.0) > 0.0:
            bracket = _walk(excess, start=0.0, limit=math.log(SIGMA_MAX), first_step=_SIGMA_FIRST_STEP, growth=2.0)
            if bracket is None:
                raise UnreachableTargetError(
                    f"eps={eps:g} at delta={delta:g} cannot be met with any noise multiplier up to sigma={SIGMA_MAX:g}"
                )
            lo, hi = bracket
        else:
            bracket = _walk(excess, start=0.0, limit=math.log(SIGMA_MIN), first_step=_SIGMA_FIRST_STEP, growth=2.0)
            if bracket is None:
                raise UnreachableTargetError(
                    f"eps={eps:g} at delta={delta:g} is met even with sigma={SIGMA_MIN:g}: the target does not "
                    "constrain the noise (is eps meant to be this large?)"
                )
            hi, lo = bracket
        return math.exp(_conservative_root(excess, ok=hi, bad=lo, rtol=rtol))

    return _solve(solve)


def calibrate_q(
    *, eps: float, delta: float, sigma: float, steps: int, accountant: str = "rdp", rtol: float = 1e-6, **options: Any
) -> float:
    """The largest Poisson rate q ≤ 1 (to relative tolerance ``rtol``) with ε ≤ ``eps`` for ``steps`` steps at
    noise ``sigma``; 1.0 if even q = 1 meets the target. Verified: ε(q) ≤ eps."""
    eps, delta, rtol = _check_target(eps, delta, rtol)
    sigma = check.noise_multiplier("sigma", sigma)
    steps = check.steps("steps", steps)

    def solve(local: bool) -> float:
        excess = _Excess(lambda x: dpsgd_event(sigma=sigma, q=min(math.exp(x), 1.0), steps=steps), eps, delta,
                         accountant, options, local=local)
        if excess(0.0) <= 0.0:
            return 1.0
        bracket = _walk(excess, start=0.0, limit=math.log(Q_MIN), first_step=math.log(2.0), growth=1.0)  # halve q
        if bracket is None:
            raise UnreachableTargetError(
                f"eps={eps:g} at delta={delta:g} cannot be met for {steps} steps at sigma={sigma:g} even with "
                f"q={Q_MIN:g}"
            )
        bad, ok = bracket
        return min(math.exp(_conservative_root(excess, ok=ok, bad=bad, rtol=rtol)), 1.0)

    return _solve(solve)


def calibrate_steps(
    *, eps: float, delta: float, sigma: float, q: float, accountant: str = "rdp", **options: Any
) -> int:
    """The largest number of DP-SGD steps with ε ≤ ``eps`` at ``delta`` (Poisson rate ``q``, noise ``sigma``).

    Doubling then integer bisection; the count returned has been evaluated and meets the target.
    """
    eps, delta, _ = _check_target(eps, delta, 1e-6)
    sigma = check.noise_multiplier("sigma", sigma)
    q = check.rate("q", q)
    return _largest_count(
        lambda steps: dpsgd_event(sigma=sigma, q=q, steps=steps), eps, delta, accountant, options, f"sigma={sigma:g}, q={q:g}"
    )


def calibrate_steps_for(
    make_event: Callable[[int], Event], *, eps: float, delta: float, accountant: str = "rdp", **options: Any
) -> int:
    """The largest step count T with ε(make_event(T)) ≤ ``eps`` at ``delta``; verified. ``make_event`` must give
    events whose ε does not decrease with T (e.g. ``lambda t: training_event("shuffle", sigma=1, steps=t, ...)``,
    constant within an epoch, so the count returned ends an epoch)."""
    eps, delta, _ = _check_target(eps, delta, 1e-6)
    return _largest_count(make_event, eps, delta, accountant, options, "these settings")


# ------------------------------------------------------------------------------------------------ helpers


def _largest_count(
    make_event: Callable[[int], Event], eps: float, delta: float, accountant: str, options: dict[str, Any], what: str
) -> int:
    """Doubling then integer bisection for the largest T in [1, STEPS_MAX] with ε(make_event(T)) ≤ eps."""

    def fits(steps: int) -> bool:
        return _quiet_epsilon(make_event(steps), delta, accountant, options) <= eps

    if not fits(1):
        raise UnreachableTargetError(f"even one step at {what} exceeds eps={eps:g} at delta={delta:g}")
    good, bad = 1, 2
    while fits(bad):
        good = bad
        if bad >= STEPS_MAX:
            raise UnreachableTargetError(
                f"eps={eps:g} at delta={delta:g} is met for every step count up to {STEPS_MAX:g}: the budget does not "
                f"limit training at {what}"
            )
        bad = min(2 * bad, STEPS_MAX)
    while bad - good > 1:
        mid = (good + bad) // 2
        if fits(mid):
            good = mid
        else:
            bad = mid
    return good


def _dpsgd(sigma: float, q: float, steps: int) -> Event:
    return dpsgd_event(sigma=check.noise_multiplier("sigma", sigma), q=check.rate("q", q), steps=check.steps("steps", steps))


def _check_target(eps: float, delta: float, rtol: float) -> tuple[float, float, float]:
    eps = check.positive("eps", eps)
    delta = check.open_unit("delta", delta)
    rtol = check.positive("rtol", rtol)
    if rtol > 0.1:
        raise InvalidArgumentError("rtol", rtol, "in (0, 0.1]")
    return eps, delta, rtol


def _quiet_epsilon(event: Event, delta: float, accountant: str, options: dict[str, Any]) -> float:
    """ε of ``event`` without edge-of-grid warnings (intermediate points of a search are not the answer)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", OrderRangeWarning)
        return make_accountant(accountant, **options).compose(event).epsilon(delta)


class _Excess:
    """x ↦ ε(make_event(x)) - eps; ≤ 0 means the target is met. Remembers its own values (the solver asks for
    the bracket ends again), and starts each RDP order search at the optimal order predicted from the evaluations
    so far (:meth:`predicted_order`), searching near it alone where that brackets the minimum (``local`` in
    :func:`dpcalib.conversion.optimise_epsilon`: the same bound to the search's tolerance, ~1e-12 relative, when ε
    is unimodal in the order, in a fraction of the time). :meth:`verified` re-evaluates a point exactly as
    :func:`epsilon` / :func:`event_epsilon` would, for the answer returned. ``order_slope``: d log(order) / dx
    expected, for the prediction from a single point (2 for x = log σ: the optimal order grows about like σ²)."""

    def __init__(
        self,
        make_event: Callable[[float], Event],
        eps: float,
        delta: float,
        accountant: str,
        options: dict[str, Any],
        order_slope: float = 0.0,
        local: bool = True,
    ) -> None:
        self.make_event, self.eps, self.delta, self.accountant, self.options = make_event, eps, delta, accountant, options
        self.order_slope, self.local = order_slope, local
        self.seen: dict[float, float] = {}
        self.orders: dict[float, float] = {}

    def __call__(self, x: float) -> float:
        if x not in self.seen:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", OrderRangeWarning)
                acc = make_accountant(self.accountant, **self.options).compose(self.make_event(x))
                value, order = acc.epsilon_and_order(self.delta, start=self.predicted_order(x), local=self.local)
            if order is not None:
                self.orders[x] = order
            self.seen[x] = value - self.eps
        return self.seen[x]

    def predicted_order(self, x: float) -> float | None:
        """The optimal order at x: the polynomial through the logarithms of the orders at the (up to) three nearest
        evaluated points, at x (the optimal order grows about like σ², so its logarithm is nearly linear in log σ)."""
        nearest = sorted(self.orders.items(), key=lambda item: abs(item[0] - x))[:3]
        if len(nearest) < 2:
            return nearest[0][1] * math.exp(self.order_slope * (x - nearest[0][0])) if nearest else None
        log_order = 0.0
        for i, (xi, ai) in enumerate(nearest):  # Lagrange's form
            weight = math.log(ai)
            for j, (xj, _) in enumerate(nearest):
                if j != i:
                    weight *= (x - xj) / (xi - xj)
            log_order += weight
        return math.exp(log_order)

    def verified(self, x: float) -> bool:
        """Whether the target is met at x by the same evaluation as :func:`event_epsilon` (no warm start)."""
        return _quiet_epsilon(self.make_event(x), self.delta, self.accountant, self.options) <= self.eps


class _LocalSearchMissed(Exception):
    """The warm-started local order searches misled a calibration (see :func:`_conservative_root`)."""


def _solve(solve: Callable[[bool], float]) -> float:
    """``solve(local=True)``: a calibration with warm-started local order searches, which assume ε unimodal in the
    order near the predicted optimum. Where that fails (a curve with plateaus, such as the Skellam bound's at ⌈α⌉,
    can hold a local search on the wrong plateau), an intermediate ε is overstated, the root is found too far on the
    safe side, and the full search meets the target just beyond it, on the side the solver took as failing
    (:func:`_conservative_root` checks that point): the calibration is then done again with full searches at every
    point, as without warm starts at all."""
    try:
        return solve(True)
    except _LocalSearchMissed:
        return solve(False)



def _walk(
    excess: Callable[[float], float], *, start: float, limit: float, first_step: float, growth: float
) -> tuple[float, float] | None:
    """Step from ``start`` toward ``limit`` (steps of ``first_step``, each ``growth`` times the last; the last one
    clamped to ``limit``) until whether the target is met (excess ≤ 0) differs from ``start``'s. Returns (the last
    point on ``start``'s side, the first point on the other), or None if ``limit`` is reached with no change."""
    met = excess(start) <= 0.0
    direction = math.copysign(1.0, limit - start)
    previous, x, step = start, start, first_step
    while True:
        x += direction * step
        step *= growth
        if direction * (x - limit) >= 0.0:
            x = limit
        if (excess(x) <= 0.0) != met:
            return previous, x
        if x == limit:
            return None
        previous = x


def _conservative_root(excess: _Excess, *, ok: float, bad: float, rtol: float) -> float:
    """A point within ``rtol`` (in x = log of the parameter) of the boundary between ``bad`` (excess > 0) and
    ``ok`` (excess ≤ 0), on the ``ok`` side and verified there (:meth:`_Excess.verified`)."""
    from scipy.optimize import brentq  # imported on first use: keeps `dpcalib --help` fast

    step = math.copysign(rtol / 2.0, ok - bad)
    if abs(ok - bad) <= rtol:
        x, below = ok, bad
    else:  # on log ε, nearly linear in log σ or log q: fewer steps than on ε; same sign as the excess
        log_ratio = lambda y: math.log(max(excess(y) + excess.eps, 1e-300) / excess.eps)  # noqa: E731
        root = brentq(log_ratio, min(ok, bad), max(ok, bad), xtol=rtol / 4.0)
        x, below = root + step, root - step
    if excess.local and excess.verified(below):  # a warm-started search overstated ε (see _solve)
        raise _LocalSearchMissed
    while not excess.verified(x):  # the answer is checked without the warm start, as event_epsilon would
        x += step
    return x
