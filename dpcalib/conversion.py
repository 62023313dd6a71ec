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
minimum over the grid. Around the best order the search converges on the continuous optimum (to 1e-6 relative
in α), so the reported ε is never larger than the grid's, often a little smaller, and monotone in the mechanism's
parameters (see :class:`_OrderSearch`).
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
_ZOOM_POINTS = 16
_ZOOM_RTOL = 1e-6
_ZOOM_MAX_ROUNDS = 40
_MAX_INTEGER_BATCH = 16
# The guarded model rounds of the refinement (see _OrderSearch.zoom): the offsets around the predicted minimum, in
# units of 0.45 × the tolerance (1, 2, 3, then 4 × 16^j), and the least shrink of the bracket per round that keeps
# the model in use (below it, a round of even subdivision).
_CLUSTER_OFFSETS = np.concatenate([[1.0, 2.0, 3.0], 4.0 * 16.0 ** np.arange(8)])
_GUARD = 4.0
# The grid on which the refinement's model of the objective is minimised, as fractions of the bracket.
_MODEL_GRID = np.linspace(0.0, 1.0, 64)
_MODEL_POINTS = 6
# The relative half-width of the window around a warm start that a local search (optimise_epsilon's `local`) explores.
_NEAR_WIDTH = 1.0 / 16.0
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
    return _epsilon_bounds(np.asarray(orders, dtype=np.float64), np.asarray(rdp, dtype=np.float64), delta, method, kl)


def _epsilon_bounds(
    alpha: NDArray[np.float64], r: NDArray[np.float64], delta: float, method: str, kl: bool
) -> NDArray[np.float64]:
    """:func:`epsilon_bounds` for validated arguments (float arrays, δ in (0, 1), a known method)."""
    log_delta = math.log(delta)
    if method == "classic":
        return np.maximum(r - log_delta / (alpha - 1.0), 0.0)
    eps = np.maximum(r + np.log1p(-1.0 / alpha) - (log_delta + np.log(alpha)) / (alpha - 1.0), 0.0)
    if not kl:
        return eps
    return np.where(delta * delta + np.expm1(-r) >= 0.0, 0.0, eps)  # r ≥ 0: expm1(-r) cannot overflow


def log_delta_bounds(
    orders: ArrayLike, rdp: ArrayLike, eps: float, method: str = "improved", kl: bool = True
) -> NDArray[np.float64]:
    """log δ(ε) implied by the RDP value at each order (see the module docstring); never above log 1 = 0.
    ``kl=False`` leaves out the KL rule (used by the order search once the smallest order has been tried)."""
    eps = _check_eps(eps)
    _check_method(method)
    return _log_delta_bounds(np.asarray(orders, dtype=np.float64), np.asarray(rdp, dtype=np.float64), eps, method, kl)


def _log_delta_bounds(
    alpha: NDArray[np.float64], r: NDArray[np.float64], eps: float, method: str, kl: bool
) -> NDArray[np.float64]:
    """:func:`log_delta_bounds` for validated arguments (float arrays, ε ≥ 0, a known method)."""
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
    start: float | None = None,
    local: bool = False,
) -> Conversion:
    """The smallest ε(δ) over ``orders`` (default :data:`~dpcalib.rdp.DEFAULT_ORDERS`) and, with ``refine``, the
    continuous minimum around the best one. ``curve(orders)`` returns the RDP of the composition at those orders.
    ``start``: an order near which the minimum is expected (e.g. the one found for a nearby mechanism); the
    refinement tries it first, which saves rounds when it is close and costs little when it is not. The result is
    the same minimum either way, to the refinement's tolerance (~1e-12 relative in ε), not bit for bit.
    ``local`` (with ``start`` and ``refine``): converge on the minimum within ±1/16 of ``start`` alone, without
    the grid, whenever evaluated orders bracket it there (else the whole search runs): the same value when the
    objective is unimodal in α, as the refinement assumes anyway, at a fraction of the cost; for the intermediate
    points of a root search, whose answer is then evaluated without it.
    Warns :class:`~dpcalib.errors.OrderRangeWarning` (if ``warn``) when the best order is at the edge."""
    delta = check.open_unit("delta", delta)
    _check_method(method)
    result = _minimise(curve, lambda a, r, kl: _epsilon_bounds(a, r, delta, method, kl), orders, refine, start, local)
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
    start: float | None = None,
) -> Conversion:
    """The smallest δ(ε) over ``orders`` (see :func:`optimise_epsilon`); the value returned is δ, not log δ."""
    eps = _check_eps(eps)
    _check_method(method)
    result = _minimise(curve, lambda a, r, kl: _log_delta_bounds(a, r, eps, method, kl), orders, refine, start)
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
    start: float | None = None,
    local: bool = False,
) -> Conversion:
    """Minimise ``objective(α, curve(α), kl)`` over the grid and, with ``refine``, converge on the continuous
    minimum (see :class:`_OrderSearch`)."""
    grid = DEFAULT_ORDERS if orders is None else np.unique(check_orders(orders))  # the default is sorted, unique
    return _OrderSearch(curve, objective, grid).run(refine, start, local)


class _OrderSearch:
    """The order search of :func:`optimise_epsilon` / :func:`optimise_delta`, and what it knows so far.

    1. The integer grid orders up to 64 (cheap and exact: one vectorised call) — or the smallest grid order if
       there are none; then the larger grid orders one at a time, smallest first, each skipped when a lower bound
       of its value (:func:`_rdp_lower_bound`) cannot beat the best so far.
    2. With ``refine``: :meth:`zoom` converges on the continuous minimum around the best order.
    3. The remaining grid orders are screened against that best and the survivors evaluated (one call; usually
       none survive); if one of them wins, step 2 is repeated around it. So the result is never larger than the
       grid minimum, and without ``refine`` it is the grid minimum exactly.
    """

    def __init__(
        self,
        curve: Curve,
        objective: Callable[[NDArray[np.float64], NDArray[np.float64], bool], NDArray[np.float64]],
        grid: NDArray[np.float64],
    ) -> None:
        self.curve, self.objective, self.grid = curve, objective, grid
        # known points of the cumulant K(α) = (α - 1) ε_RDP(α), sorted by α; K(1) = 0 for every mechanism
        self.orders = np.array([1.0])
        self.cumulants = np.array([0.0])
        self.values: dict[float, float] = {}
        self.best_value, self.best_order = math.inf, float(grid[0])
        self.low_edge = float(grid[0])

    def evaluate(self, points: NDArray[np.float64]) -> None:
        """Evaluate the curve and the objective at the points not yet evaluated; update the best."""
        points = np.sort(points[~self.known(points)])
        if points.size == 0:
            return
        points = points[np.append(True, points[1:] != points[:-1])]  # each order once
        r = np.asarray(self.curve(points), dtype=np.float64)
        a = np.concatenate([self.orders, points])
        idx = np.argsort(a)
        self.orders, self.cumulants = a[idx], np.concatenate([self.cumulants, (points - 1.0) * r])[idx]
        values = self.objective(points, r, True)
        values[np.isnan(values)] = math.inf  # an order without a finite bound gives none (and must not win)
        self.values.update(zip(points.tolist(), values.tolist()))
        i = int(np.argmin(values))
        if values[i] < self.best_value or (values[i] == self.best_value and points[i] < self.best_order):
            self.best_value, self.best_order = float(values[i]), float(points[i])

    def known(self, points: NDArray[np.float64]) -> NDArray[np.bool_]:
        """Which of ``points`` have been evaluated (a vectorised lookup in the sorted known orders)."""
        i = np.minimum(np.searchsorted(self.orders, points), self.orders.size - 1)
        return self.orders[i] == points

    def promising(self, points: NDArray[np.float64]) -> NDArray[np.float64]:
        """The points whose objective could still beat the best: evaluated at a lower bound of their RDP. The KL
        rule is left out above the smallest evaluated order (ε_RDP is non-decreasing in α, so the rule is
        strongest there and already counted in the best)."""
        if points.size == 0:
            return points
        lower = _rdp_lower_bound(self.orders, self.cumulants, points)
        above = points > self.orders[1]
        if above.all():
            bounds = self.objective(points, lower, False)
        else:
            bounds = np.where(above, self.objective(points, lower, False), self.objective(points, lower, True))
        return points[bounds < self.best_value]

    def run(self, refine: bool, start: float | None = None, local: bool = False) -> Conversion:
        grid = self.grid
        if local and refine and start is not None and self.near(start):
            return self.result()
        anchors = (grid == np.round(grid)) & (grid <= _BATCH_MAX_ORDER)
        anchors[0] = anchors[0] or not anchors.any()
        self.evaluate(grid[anchors])
        large = grid[grid > max(_BATCH_MAX_ORDER, float(grid[0]))]
        while large.size:  # one at a time, smallest first: each evaluation sharpens the bounds on the others
            large = self.promising(large)
            self.evaluate(large[:1])
            large = large[1:]
        self.low_edge = min(MIN_ORDER, float(grid[0])) if refine else float(grid[0])
        while True:
            if refine:
                self.zoom(start)
                start = None
            before = self.best_order
            self.evaluate(self.promising(grid[~self.known(grid)]))
            if not refine or self.best_order == before:
                break
        return self.result()

    def result(self) -> Conversion:
        at_edge = self.best_order <= self.low_edge or self.best_order >= float(self.grid[-1])
        return Conversion(self.best_value, self.best_order, bool(at_edge))

    def near(self, start: float) -> bool:
        """:meth:`zoom` from ``start`` inside start × (1 ± ``_NEAR_WIDTH``) alone (see :func:`optimise_epsilon`'s
        ``local``); whether the best order found has evaluated orders on both sides (a bracketed minimum)."""
        self.low_edge = min(MIN_ORDER, float(self.grid[0]))
        lo = max(start * (1.0 - _NEAR_WIDTH), self.low_edge)
        hi = min(start * (1.0 + _NEAR_WIDTH), float(self.grid[-1]))
        if not lo < start < hi or hi - lo >= 4.0:  # (wider windows would be narrowed by integer orders first)
            return False
        self.zoom(start, (lo, hi))
        b = self.best_order
        i = int(np.searchsorted(self.orders, b))
        return lo < b < hi and i + 1 < self.orders.size and self.orders[i - 1] >= lo and self.orders[i + 1] <= hi

    def bracket(self) -> tuple[float, float]:
        """The evaluated orders next to the best one: the continuous minimum lies between them if the objective is
        unimodal in α. Below the smallest evaluated order the bracket ends at ``low_edge``; above the largest, at
        the next grid order (its lower bound did not beat the best), or at the best order at the top of the grid."""
        b = self.best_order
        i = int(np.searchsorted(self.orders, b))
        lo = float(self.orders[i - 1]) if i > 1 else self.low_edge
        if i + 1 < self.orders.size:
            return lo, float(self.orders[i + 1])
        above = self.grid[self.grid > b]
        return lo, float(above[0]) if above.size else b

    def narrow(self, points: NDArray[np.float64], lo: float, hi: float, screen: bool) -> tuple[float, float]:
        """Evaluate ``points`` inside (lo, hi) (screened or not) and return the new bracket around the best.

        An unscreened call also evaluates the smallest grid order if that is still pending (no extra call): the
        KL rule is strongest there, and screening below the smallest evaluated order has to keep it, which with a
        loose lower bound of the RDP lets every small order through."""
        candidates = points[points != self.best_order]
        if screen:
            candidates = self.promising(candidates)
        elif float(self.grid[0]) not in self.values:
            candidates = np.append(candidates, self.grid[0])
        self.evaluate(candidates)
        if not lo <= self.best_order <= hi:  # the smallest grid order won: start again around it
            return self.bracket()
        b = self.best_order  # the new bracket: the nearest points on either side (screened-out ones included)
        below, above = points[points < b], points[points > b]
        return (max(lo, float(below.max())) if below.size else lo), (min(hi, float(above.min())) if above.size else hi)

    def zoom(self, start: float | None = None, bracket: tuple[float, float] | None = None) -> None:
        """Converge on the best order inside :meth:`bracket`, to a bracket narrower than ``_ZOOM_RTOL`` × the order.

        Where the bracket is at least 4 wide, integer orders (exact and cheap) narrow it: a geometric sample of at
        most 16 of them, repeated until all remaining ones fit. Then rounds of one vectorised call each: the first
        subdivides the bracket evenly (``_ZOOM_POINTS`` points; a model through orders a unit apart can miss the
        minimum by 0.1), unless ``start`` lies in the bracket; the next ones are guarded model rounds, in which
        :meth:`vertex` predicts the minimum v (``start`` instead, in the first round, if it lies in the bracket),
        and the round evaluates v, v ± d, 2d, 3d, and v ± 4d·16^j out to the bracket's ends (d = 0.45 × the
        tolerance × v), plus the bracket's quarter points. A prediction within 4d of the minimum ends the search
        in that round; a worse one still shrinks the bracket about 16-fold, and a wrong one halves it. Where a
        round shrank the bracket less than 4-fold (the curve is not smooth at that scale: at small q it turns up
        steeply once the top binomial term q^α e^{α(α-1)/(2σ²)} wakes up — q = 1e-4, σ = 4: ε_RDP grows 100-fold
        between α = 294 and 296 — and the optimum sits at the foot of that cliff), the next round subdivides the
        bracket evenly (``_ZOOM_POINTS`` points), which assumes only that the objective is unimodal in α. The
        result is the continuous minimum to ~1e-6 in α: ε then depends monotonically on q, σ and the step count,
        which a fixed-size local grid would not guarantee (its points move with the optimum). Every value
        reported was evaluated at a real order, so it is a valid bound regardless.
        """
        lo, hi = self.bracket() if bracket is None else bracket
        while hi - lo >= 4.0:
            inside = np.arange(math.floor(lo) + 1, math.ceil(hi), dtype=np.float64)
            inside = inside[(inside > lo) & (inside < hi)]
            if inside.size <= _MAX_INTEGER_BATCH:
                lo, hi = self.narrow(inside, lo, hi, screen=True)
                break
            sample = np.unique(np.round(np.geomspace(inside[0], inside[-1], _MAX_INTEGER_BATCH)))
            lo, hi = self.narrow(sample, lo, hi, screen=True)
        modelled = False
        for _ in range(_ZOOM_MAX_ROUNDS):
            width = hi - lo
            if width <= _ZOOM_RTOL * self.best_order:
                return
            if start is not None and lo < start < hi:
                vertex, start = start, None
            else:
                vertex = self.vertex(lo, hi) if modelled else None
            if vertex is None:
                points = np.linspace(lo, hi, _ZOOM_POINTS + 2)[1:-1]
            else:
                d = 0.45 * _ZOOM_RTOL * vertex * _CLUSTER_OFFSETS
                d = d[d < width]
                points = np.concatenate([[vertex], vertex - d, vertex + d, lo + width * np.array([0.25, 0.5, 0.75])])
                points = points[(points > lo) & (points < hi)]
            if bracket is not None:  # a local search: its window's ends too, in the first round
                points, ends, bracket = np.append(points, bracket), bracket, None
                lo, hi = self.narrow(points, lo, hi, screen=False)
                if self.best_order in ends:
                    return  # the minimum is not inside the window
            else:
                lo, hi = self.narrow(points, lo, hi, screen=False)
            modelled = hi - lo <= width / _GUARD

    def vertex(self, lo: float, hi: float) -> float | None:
        """Where a model of the objective is smallest inside (lo, hi); None with fewer than four evaluated orders,
        or where the best value is shared by a neighbour.

        Only the RDP part is modelled: the logarithm of the cumulant K(α) = (α - 1) ε_RDP(α) (K is smooth, convex
        and positive; its logarithm also follows the steep rise at small q, where K itself grows like exp(α²)) is
        interpolated by the polynomial through the ``_MODEL_POINTS`` = 6 evaluated orders nearest the best one
        (fewer if fewer are known, at least four; with six, one round from an even subdivision of a unit bracket
        usually lands within the final tolerance), and the conversion is applied exactly to
        the model, which is then minimised on a grid of 64 points (``_MODEL_GRID``) and by a parabola through the
        grid's best three (a Newton-like step that also follows the conversion's own asymmetry about the minimum).
        A guess only: it picks where to evaluate.
        """
        b = self.best_order
        i = int(np.searchsorted(self.orders, b))
        n = min(_MODEL_POINTS, self.orders.size - 1)
        first = min(max(i - n // 2, 1), self.orders.size - n)
        if n < 4 or not lo < b < hi or self.best_value in (self.values.get(lo), self.values.get(hi)):
            return None  # too few points, or a plateau (a clamped bound): no model can tell where the dip is
        xs = self.orders[first:first + n].tolist()
        coef = [math.log(k) if k > 0.0 else -math.inf for k in self.cumulants[first:first + n].tolist()]
        for j in range(1, n):  # Newton's divided differences of the polynomial through the points
            for m in range(n - 1, j - 1, -1):
                coef[m] = (coef[m] - coef[m - 1]) / (xs[m] - xs[m - j])
        x = lo + (hi - lo) * _MODEL_GRID
        model = (x - xs[n - 2]) * coef[n - 1] + coef[n - 2]
        for j in range(n - 3, -1, -1):
            model *= x - xs[j]
            model += coef[j]
        with np.errstate(over="ignore"):
            g = self.objective(x, np.exp(model) / (x - 1.0), False).tolist()
        k = min(max(int(np.argmin(g)), 1), len(g) - 2)
        curvature = g[k - 1] - 2.0 * g[k] + g[k + 1]  # then the parabola through the grid's best three points
        shift = 0.5 * (g[k - 1] - g[k + 1]) / curvature if curvature > 0.0 else 0.0
        v = float(x[k]) + max(min(shift, 1.0), -1.0) * (hi - lo) / (len(g) - 1)
        return v if lo < v < hi and math.isfinite(v) else None


def _rdp_lower_bound(a: NDArray[np.float64], k: NDArray[np.float64], points: NDArray[np.float64]) -> NDArray[np.float64]:
    """A lower bound on ε_RDP at ``points`` from known values ``k`` of K(α) = (α - 1) ε_RDP(α) at sorted orders ``a``.

    ε_RDP is non-decreasing in α, and K is convex (it is the cumulant generating function of the privacy loss),
    so K lies above the extensions of the chords through neighbouring known points. A relative margin of 1e-9
    absorbs rounding in the known values.
    """
    r = np.empty_like(k)
    r[0] = 0.0
    np.divide(k[1:], a[1:] - 1.0, out=r[1:])
    np.maximum.accumulate(r, out=r)
    # the chord slopes, padded so that a missing neighbour gives a chord of -inf
    i = np.searchsorted(a, points, side="right") - 1  # a[i] ≤ point < a[i+1]; i ≥ 0 since a[0] = 1 < point
    with np.errstate(invalid="ignore"):  # (an infinite K gives NaN slopes: no bound from them)
        slope = (k[1:] - k[:-1]) / (a[1:] - a[:-1])
        left = np.concatenate([[-math.inf], slope])  # left[i]: the chord through a[i-1], a[i]
        right = np.concatenate([slope[1:], [math.inf, math.inf]])  # right[i]: through a[i+1], a[i+2]
        a_next, k_next = np.append(a[1:], math.inf), np.append(k[1:], -math.inf)
        lb_k = np.fmax((points - 1.0) * r[i], k[i] + (points - a[i]) * left[i])
        lb_k = np.fmax(lb_k, k_next[i] - (a_next[i] - points) * right[i])
        lb_k -= 1e-9 * np.abs(lb_k)
    return np.maximum(lb_k, 0.0) / (points - 1.0)
