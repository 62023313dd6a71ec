"""From an RDP curve to (ε, δ)-DP, and the search for the best order.

Bounds, per order α > 1 with RDP value r = ε_RDP(α) of the whole composition:

* ``"improved"`` (default): Canonne, Kamath, Steinke 2020 ("The discrete Gaussian for differential privacy",
  Prop. 12) = Balle, Barthe, Gaboardi, Hsu, Sato 2020 ("Hypothesis testing interpretations and Rényi
  differential privacy", Thm. 21):  ε = r + log(1 - 1/α) - (log δ + log α)/(α - 1),
  equivalently log δ = (α - 1)(r - ε + log(1 - 1/α)) - log α.
  Tightened by two rules that are always valid: ε ≥ 0 can be clamped to 0 (an (ε', δ) guarantee with ε' < 0
  implies (0, δ)); and, since the KL divergence is at most every D_α (α > 1), the Bretagnolle–Huber bound
  TV ≤ sqrt(1 - exp(-KL)) gives δ(ε) ≤ δ(0) = TV ≤ sqrt(1 - exp(-r)), so ε = 0 once δ² ≥ 1 - exp(-r)
  (the rule dp_accounting applies too).
* ``"classic"``: Mironov 2017 ("Rényi differential privacy", Prop. 3): ε = r + log(1/δ)/(α - 1),
  log δ = (α - 1)(r - ε).

:func:`optimise_epsilon` / :func:`optimise_delta` minimise over orders. They use that the RDP of any mechanism
is non-decreasing in α (van Erven & Harremoës 2014), that K(α) = (α - 1)·RDP(α) is convex (a cumulant generating
function), and that both bounds are increasing in r: an order whose bound, evaluated at a lower bound of its
RDP derived from orders already evaluated, is no better than the best so far is skipped without changing the
minimum over the grid. Around the best grid order the search converges on the continuous optimum (to 1e-6
relative in α), so the reported ε is never larger than the grid's, often a little smaller, and monotone in the
mechanism's parameters.
"""

from __future__ import annotations

import math
import warnings
from typing import Callable, NamedTuple

import numpy as np
from numpy.typing import ArrayLike, NDArray

from .errors import InvalidArgumentError, OrderRangeWarning
from .rdp import DEFAULT_ORDERS, MIN_ORDER, check_orders
from . import validation as check

__all__ = [
    "METHODS",
    "Conversion",
    "epsilon_bounds",
    "log_delta_bounds",
    "rdp_to_epsilon",
    "rdp_to_delta",
    "optimise_epsilon",
    "optimise_delta",
]

METHODS = ("improved", "classic")

Curve = Callable[[NDArray[np.float64]], NDArray[np.float64]]

# Orders up to this bound are evaluated together in one vectorised batch; larger ones one at a time, so that
# the expensive high orders are skipped as soon as a smaller order shows they cannot win.
_BATCH_MAX_ORDER = 64.0
# The refinement around the best order: points of each even subdivision, the relative bracket width at which it
# stops, and a cap on its rounds.
_ZOOM_POINTS = 24
_ZOOM_RTOL = 1e-6
_ZOOM_MAX_ROUNDS = 40
_MAX_INTEGER_BATCH = 16
_SMALLEST_POSITIVE = float(np.finfo(np.float64).smallest_subnormal)


class Conversion(NamedTuple):
    """The result of a conversion: the bound (ε, or δ), the order attaining it, and whether that order is at the
    edge of the explored range (then a wider grid might do better)."""

    value: float
    order: float
    at_edge: bool


def _check_method(method: str) -> str:
    if method not in METHODS:
        raise InvalidArgumentError("method", method, "one of " + ", ".join(repr(m) for m in METHODS))
    return method


def _check_eps(eps: float) -> float:
    return check.non_negative("eps", eps)


def epsilon_bounds(
    orders: ArrayLike, rdp: ArrayLike, delta: float, method: str = "improved", kl: bool = True
) -> NDArray[np.float64]:
    """ε(δ) implied by the RDP value at each order (see the module docstring for the bounds); never negative.
    ``kl=False`` leaves out the KL rule (used by the order search once the smallest order has been tried)."""
    delta = check.open_unit("delta", delta)
    _check_method(method)
    alpha = np.asarray(orders, dtype=np.float64)
    r = np.asarray(rdp, dtype=np.float64)
    log_delta = math.log(delta)
    if method == "classic":
        return np.maximum(r - log_delta / (alpha - 1.0), 0.0)
    eps = r + np.log1p(-1.0 / alpha) - (log_delta + np.log(alpha)) / (alpha - 1.0)
    if not kl:
        return np.maximum(eps, 0.0)
    with np.errstate(over="ignore"):
        kl_zero = delta * delta + np.expm1(-r) >= 0.0
    return np.where(kl_zero, 0.0, np.maximum(eps, 0.0))


def log_delta_bounds(
    orders: ArrayLike, rdp: ArrayLike, eps: float, method: str = "improved", kl: bool = True
) -> NDArray[np.float64]:
    """log δ(ε) implied by the RDP value at each order (see the module docstring); never above log 1 = 0.
    ``kl=False`` leaves out the KL rule (used by the order search once the smallest order has been tried)."""
    eps = _check_eps(eps)
    _check_method(method)
    alpha = np.asarray(orders, dtype=np.float64)
    r = np.asarray(rdp, dtype=np.float64)
    if method == "classic":
        return np.minimum((alpha - 1.0) * (r - eps), 0.0)
    bound = (alpha - 1.0) * (r - eps + np.log1p(-1.0 / alpha)) - np.log(alpha)
    if not kl:
        return np.minimum(bound, 0.0)
    with np.errstate(divide="ignore"):
        kl = 0.5 * np.log(-np.expm1(-r))
    return np.minimum(np.minimum(bound, kl), 0.0)


def _check_rdp(rdp: ArrayLike, alpha: NDArray[np.float64]) -> NDArray[np.float64]:
    """``rdp`` as a float array of one value ≥ 0 (or +∞) per order, else :class:`InvalidArgumentError`."""
    raw = np.asarray(rdp)
    values = np.atleast_1d(raw.astype(np.float64)) if raw.dtype.kind in "iuf" else None
    if values is None or values.shape != alpha.shape or np.any(np.isnan(values)) or np.any(values < 0.0):
        raise InvalidArgumentError("rdp", rdp, f"{alpha.size} numbers >= 0, one per order")
    return values


def rdp_to_epsilon(orders: ArrayLike, rdp: ArrayLike, delta: float, method: str = "improved") -> tuple[float, float]:
    """The smallest ε(δ) over the given (order, RDP) pairs, and the order attaining it (no refinement)."""
    alpha = check_orders(orders)
    values = epsilon_bounds(alpha, _check_rdp(rdp, alpha), delta, method)
    i = int(np.argmin(values))
    return float(values[i]), float(alpha[i])


def rdp_to_delta(orders: ArrayLike, rdp: ArrayLike, eps: float, method: str = "improved") -> tuple[float, float]:
    """The smallest δ(ε) over the given (order, RDP) pairs, and the order attaining it (no refinement)."""
    alpha = check_orders(orders)
    values = log_delta_bounds(alpha, _check_rdp(rdp, alpha), eps, method)
    i = int(np.argmin(values))
    return _delta_of(float(values[i])), float(alpha[i])


def _delta_of(log_delta: float) -> float:
    """δ from log δ, rounded up: a δ > 0 below the smallest double is that double, not 0 (log δ = −∞ gives 0)."""
    return 0.0 if log_delta == -math.inf else max(math.exp(log_delta), _SMALLEST_POSITIVE)


def optimise_epsilon(
    curve: Curve,
    delta: float,
    orders: ArrayLike | None = None,
    method: str = "improved",
    refine: bool = True,
    warn: bool = True,
) -> Conversion:
    """The smallest ε(δ) over ``orders`` (default :data:`~dpcalib.rdp.DEFAULT_ORDERS`) and, with ``refine``, a
    finer local grid around the best one. ``curve(orders)`` returns the RDP of the composition at those orders.
    Warns :class:`~dpcalib.errors.OrderRangeWarning` (if ``warn``) when the best order is at the edge."""
    delta = check.open_unit("delta", delta)
    _check_method(method)
    result = _minimise(curve, lambda a, r, kl: epsilon_bounds(a, r, delta, method, kl), orders, refine)
    if warn and result.at_edge and result.value > 0.0:
        _warn_edge(result)
    return result


def optimise_delta(
    curve: Curve,
    eps: float,
    orders: ArrayLike | None = None,
    method: str = "improved",
    refine: bool = True,
    warn: bool = True,
) -> Conversion:
    """The smallest δ(ε) over ``orders`` (see :func:`optimise_epsilon`); the value returned is δ, not log δ."""
    eps = _check_eps(eps)
    _check_method(method)
    result = _minimise(curve, lambda a, r, kl: log_delta_bounds(a, r, eps, method, kl), orders, refine)
    converted = Conversion(_delta_of(result.value), result.order, result.at_edge)
    if warn and converted.at_edge and converted.value > 0.0:
        _warn_edge(converted)
    return converted


def _warn_edge(result: Conversion) -> None:
    warnings.warn(
        f"the optimal RDP order {result.order:g} lies at the edge of the order grid; "
        "pass a wider grid (orders=...) for a possibly tighter bound",
        OrderRangeWarning,
        stacklevel=3,
    )


def _minimise(
    curve: Curve,
    objective: Callable[[NDArray[np.float64], NDArray[np.float64], bool], NDArray[np.float64]],
    orders: ArrayLike | None,
    refine: bool,
) -> Conversion:
    """Minimise ``objective(α, curve(α), kl=True)`` over the grid (and a zoom around its best point).

    The KL rule is strongest at the smallest order (ε_RDP is non-decreasing in α), so once the smallest grid
    order is evaluated, candidates above it are screened without it."""
    grid = np.unique(DEFAULT_ORDERS if orders is None else check_orders(orders))
    # known points of the cumulant K(α) = (α - 1) ε_RDP(α), sorted by α; K(1) = 0 for every mechanism
    known = [np.array([1.0]), np.array([0.0])]
    seen = {1.0}
    best = [math.inf, float(grid[0])]

    def evaluate(points: NDArray[np.float64]) -> None:
        points = points[[p not in seen for p in points.tolist()]] if points.size else points
        if points.size == 0:
            return
        r = np.asarray(curve(points), dtype=np.float64)
        seen.update(points.tolist())
        a = np.concatenate([known[0], points])
        idx = np.argsort(a)
        known[0], known[1] = a[idx], np.concatenate([known[1], (points - 1.0) * r])[idx]
        values = objective(points, r, True)
        i = int(np.argmin(values))
        if values[i] < best[0] or (values[i] == best[0] and points[i] < best[1]):
            best[0], best[1] = float(values[i]), float(points[i])

    def promising(points: NDArray[np.float64]) -> NDArray[np.float64]:
        """The points whose bound could still beat the best: evaluated with a lower bound on their RDP."""
        if points.size == 0:
            return points
        lower = _rdp_lower_bound(known[0], known[1], points)
        bounds = np.where(points > grid[0], objective(points, lower, False), objective(points, lower, True))
        return points[bounds < best[0]]

    anchors = (grid == np.round(grid)) & (grid <= _BATCH_MAX_ORDER)
    anchors[0] = anchors[0] or not anchors.any()
    evaluate(grid[anchors])
    rest = grid[~anchors]
    small = rest[rest <= _BATCH_MAX_ORDER]
    evaluate(np.union1d(small[:1], promising(small)) if small.size and small[0] == grid[0] else promising(small))
    large = promising(rest[rest > _BATCH_MAX_ORDER])
    while large.size:  # one at a time, smallest first: each evaluation sharpens the bounds on the others
        evaluate(large[:1])
        large = promising(large[1:])

    low_edge = min(MIN_ORDER, float(grid[0])) if refine else float(grid[0])
    if refine:
        _zoom(evaluate, promising, grid, best, low_edge)
    at_edge = best[1] <= low_edge or best[1] >= float(grid[-1])
    return Conversion(best[0], best[1], bool(at_edge))


def _rdp_lower_bound(a: NDArray[np.float64], k: NDArray[np.float64], points: NDArray[np.float64]) -> NDArray[np.float64]:
    """A lower bound on ε_RDP at ``points`` from known values ``k`` of K(α) = (α - 1) ε_RDP(α) at sorted orders ``a``.

    ε_RDP is non-decreasing in α, and K is convex (it is the cumulant generating function of the privacy loss),
    so K lies above the extensions of the chords through neighbouring known points. A relative margin of 1e-9
    absorbs rounding in the known values.
    """
    r = np.zeros_like(k)
    r[1:] = k[1:] / (a[1:] - 1.0)
    r = np.maximum.accumulate(r)
    last = a.size - 1
    i = np.clip(np.searchsorted(a, points, side="right") - 1, 0, last)
    il, i1, i2 = np.maximum(i - 1, 0), np.minimum(i + 1, last), np.minimum(i + 2, last)
    with np.errstate(divide="ignore", invalid="ignore"):
        chord_left = np.where(i >= 1, k[i] + (points - a[i]) * (k[i] - k[il]) / (a[i] - a[il]), -np.inf)
        chord_right = np.where(i + 2 <= last, k[i1] - (a[i1] - points) * (k[i2] - k[i1]) / (a[i2] - a[i1]), -np.inf)
    lb_k = np.maximum(np.maximum((points - 1.0) * r[i], chord_left), chord_right)
    lb_k = lb_k - 1e-9 * np.abs(lb_k)
    return np.maximum(lb_k, 0.0) / (points - 1.0)


def _zoom(
    evaluate: Callable[[NDArray[np.float64]], None],
    promising: Callable[[NDArray[np.float64]], NDArray[np.float64]],
    grid: NDArray[np.float64],
    best: list[float],
    low_edge: float,
) -> None:
    """Converge on the best order between the neighbours of the best grid order.

    Where the bracket is at least 4 wide, integer orders (exact and cheap) narrow it: a geometric sample of at most
    16 of them, repeated until all remaining ones fit. Then the bracket around the best point is subdivided evenly
    (``_ZOOM_POINTS`` interior points a round) until it is narrower than ``_ZOOM_RTOL`` × the order. Even
    subdivision assumes only that the bound is unimodal in α, not that it is smooth: at small q the RDP curve of
    the subsampled Gaussian turns up steeply once the top binomial term q^α e^{α(α-1)/(2σ²)} wakes up (q = 1e-4,
    σ = 4: ε_RDP grows 100-fold between α = 294 and 296), the optimum sits at the foot of that cliff, and
    parabolic steps converge badly there. The result is the continuous minimum to ~1e-6 in α: ε then depends
    monotonically on q, σ and the step count, which a fixed-size local grid would not guarantee (its points move
    with the optimum). Every value reported was evaluated at a real order, so it is a valid bound regardless.
    ``promising`` screens the integer samples (they may be far apart); the subdivisions, all close to the best
    point, are evaluated without screening, which would cost more than it saves there.
    """
    b = best[1]
    i = int(np.searchsorted(grid, b))
    lo = float(grid[i - 1]) if i > 0 else low_edge
    hi = float(grid[i + 1]) if i + 1 < grid.size else b

    def narrow(points: NDArray[np.float64], screen: bool) -> tuple[float, float]:
        candidates = points[points != best[1]]
        evaluate(promising(candidates) if screen else candidates)
        edges = np.unique(np.concatenate([[lo, hi, best[1]], points]))
        j = int(np.searchsorted(edges, best[1]))
        return float(edges[max(j - 1, 0)]), float(edges[min(j + 1, edges.size - 1)])

    while hi - lo >= 4.0:
        inside = np.arange(math.floor(lo) + 1, math.ceil(hi), dtype=np.float64)
        inside = inside[(inside > lo) & (inside < hi)]
        if inside.size <= _MAX_INTEGER_BATCH:
            lo, hi = narrow(inside, screen=True)
            break
        lo, hi = narrow(np.unique(np.round(np.geomspace(inside[0], inside[-1], _MAX_INTEGER_BATCH))), screen=True)
    for _ in range(_ZOOM_MAX_ROUNDS):
        if hi - lo <= _ZOOM_RTOL * best[1]:
            return
        lo, hi = narrow(np.linspace(lo, hi, _ZOOM_POINTS + 2)[1:-1], screen=False)
