"""Privacy-loss distributions (PLDs) of the Poisson-subsampled Gaussian, composed numerically.

The privacy loss of a pair of distributions (P, Q) is L(x) = log(P(x)/Q(x)) with x ~ P; the hockey-stick
divergence, i.e. the smallest δ for a given ε, is

    δ(ε) = E_P[(1 − e^{ε − L})_+] = P(L > ε) − e^ε Q(L > ε)                     (Meiser & Mohammadi 2018)

and PLDs of independent (adaptively composed) mechanisms convolve (Sommer, Meiser, Mohammadi 2019;
Koskela, Jälkö, Honkela 2020).

Mechanism. Under add/remove neighbours the Poisson-subsampled Gaussian with sampling rate q and noise
multiplier σ has two dominating pairs (Zhu, Dong, Wang 2022, Thm. 11):

* ``"remove"``: P = (1 − q)·N(0, σ²) + q·N(1, σ²),  Q = N(0, σ²),
  L(x) = log(1 − q + q·e^{(2x − 1)/(2σ²)}) ≥ log(1 − q);
* ``"add"``:    P = N(0, σ²),  Q = (1 − q)·N(0, σ²) + q·N(1, σ²),
  L(x) = −log(1 − q + q·e^{(2x − 1)/(2σ²)}) ≤ −log(1 − q).

A composition of T steps between one fixed pair of neighbouring datasets uses the same direction at every step,
so each direction is composed on its own and the larger ε (or δ) of the two is reported.

Discretisation. Losses live on the grid ℓ_k = kΔ (Δ = ``value_discretization_interval``).

* Pessimistic (the default, an upper bound): the "connect-the-dots" scheme of Doroshenko, Ghazi, Kamath, Kumar,
  Manurangsi 2022. The mass of each grid interval (ℓ_k, ℓ_{k+1}] is split between its two end points so that
  both its P-mass and its Q-mass are preserved; the δ(ε) curve of the result is, as a function of e^ε, the chord
  through the true curve's values at the grid points, hence above the (convex) true curve everywhere, and the
  discrete pair dominates the true one, which composition preserves. Mass below the grid is rounded up onto its
  lowest point; mass above it goes into an atom at +∞ that counts fully towards δ (composed as
  1 − ∏(1 − δ_∞,i)).
* Optimistic (a lower bound, used to test the upper bound): every loss rounded down onto the grid; mass below
  the grid dropped (a loss of −∞), mass above it put on the highest point.

Composition. All phases are placed, modulo N, on one cyclic grid of N = ``next_fast_len`` points covering the
window where the composed distribution can carry mass above ``tail_mass``; the T-fold self-composition is one
FFT power per phase (``rfft(p)**T``), i.e. O(N log N) whatever T. The window is chosen with Chernoff bounds
P(ΣL ≥ a) ≤ e^{−λa} ∏ E[e^{λL_i}]^{T_i} (and the mirror bound below), evaluated exactly on the discrete PMFs
over a ladder of λ. Mass that wraps around the cyclic grid only adds
non-negative mass to the window, so the bound U + D on the mass outside it is added to δ (pessimistic) or
subtracted from it (optimistic): aliasing never makes the upper bound optimistic.

Round-off. The FFT's error on each Fourier coefficient, about ε_mach·log₂N, grows T-fold in the power, so the
inverse transform can be off by about T·ε_mach·log₂N times the largest bin anywhere, the tails included (the most
negative output, as true values are ≥ 0, is a floor for it). Every bin is raised by that allowance (lowered for
the optimistic bound). Where the allowance would weigh more than 0.1 % of the δ asked about (δ ≲ 1e-10, or 10⁶
steps), the composition is redone with an exponential tilt p_ℓ ↦ p_ℓ e^{θℓ}/E[e^{θL}] that centres the tilted
distribution on the tail in question, so those bins keep full relative precision, and tilted back; the smaller
of the two upper bounds is reported.

Queries. ``delta(eps)`` evaluates the hockey-stick divergence of the discrete PLD exactly; ``epsilon(delta)``
finds the grid cell holding the answer and solves δ(ε) = target inside it in closed form (δ is linear in e^ε
between grid points), then rounds the result up by a relative 1e-12.

Error. The pessimistic ε exceeds the true one by a few Δ at most and, thanks to connect-the-dots, typically by
far less; the optimistic bound brackets the truth from below.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .errors import InvalidArgumentError
from . import validation as check

__all__ = [
    "DEFAULT_INTERVAL",
    "default_interval",
    "DEFAULT_TAIL_MASS",
    "MAX_GRID_POINTS",
    "Phase",
    "DiscretePld",
    "subsampled_gaussian_pld",
    "compose",
    "SubsampledGaussianPld",
]

#: the largest default grid interval Δ (in nats of privacy loss), see :func:`default_interval`
DEFAULT_INTERVAL = 1e-3
#: mass allowed outside the grid, per step and direction (single step) and per window side (composition)
DEFAULT_TAIL_MASS = 1e-24
#: the most points a single step's grid or the FFT window may have; Δ is coarsened (still pessimistic) to fit
MAX_GRID_POINTS = 1 << 20
#: the smallest default Δ (tiny q): below it the grid would be long and RDP is as tight anyway
MIN_DEFAULT_INTERVAL = 1e-5

_DIRECTIONS = ("remove", "add")
_EPS_ROUND_UP = 1e-12  # relative round-up of a reported ε
_ROUNDOFF_SHARE = 1e-3  # a query is recomposed with a tilt when the round-off allowance exceeds this share of δ
_SPLIT_SLACK = 64 * np.finfo(float).eps  # extra P-mass moved up per interval, covering round-off in the split


@dataclass(frozen=True)
class Phase:
    """``count`` steps of the Gaussian mechanism (noise multiplier ``sigma``) on a Poisson subsample of rate ``q``."""

    q: float
    sigma: float
    count: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "q", check.rate("q", self.q))
        object.__setattr__(self, "sigma", check.positive("sigma", self.sigma))
        object.__setattr__(self, "count", check.count("count", self.count))


@dataclass(frozen=True)
class DiscretePld:
    """A discrete privacy-loss distribution: ``pmf[j]`` is the P-mass at loss ``(offset + j) * interval``.

    ``infinity_mass`` is the P-mass at loss +∞ (pessimistic PLDs only) and ``slack`` a bound on the mass that
    truncation moved or dropped; ``pessimistic`` says whether queries return upper bounds (``slack`` added) or
    lower bounds (``slack`` subtracted). ``roundoff`` is the per-bin FFT round-off allowance already included in
    ``pmf`` (0 for a single step, and for a tilted composition, whose allowance varies per bin).
    """

    interval: float
    offset: int
    pmf: np.ndarray
    infinity_mass: float
    slack: float
    pessimistic: bool
    roundoff: float = 0.0

    def roundoff_above(self, eps: float) -> float:
        """The round-off allowance that :func:`compose` spread uniformly over the bins above ``eps``."""
        return self.roundoff * max(0, self.pmf.size - max(0, math.floor(eps / self.interval) - self.offset + 1))

    def losses(self, start: int = 0) -> np.ndarray:
        """The loss values of ``pmf[start:]``."""
        return (self.offset + start + np.arange(self.pmf.size - start)) * self.interval

    def _extra(self) -> float:
        return self.infinity_mass + self.slack if self.pessimistic else -self.slack

    def delta(self, eps: float) -> float:
        """Hockey-stick divergence δ(ε) = Σ_ℓ>ε p_ℓ (1 − e^{ε−ℓ}) + δ_∞ (± slack), clipped to [0, 1]."""
        first = max(0, math.floor(eps / self.interval) - self.offset + 1)
        losses = self.losses(first)
        above = losses > eps
        body = float(np.dot(self.pmf[first:][above], -np.expm1(eps - losses[above])))
        return min(1.0, max(0.0, body + self._extra()))

    def epsilon(self, delta: float) -> float:
        """The smallest ε ≥ 0 with δ(ε) ≤ ``delta`` for this discrete PLD (``inf`` if none: δ below its δ_∞)."""
        need = delta - self._extra()
        if need <= 0.0:
            return math.inf
        pmf, step = self.pmf, self.interval
        tail = np.cumsum(pmf[::-1])[::-1]  # tail[k] = Σ_{j≥k} p_j
        above = np.append(tail[1:], 0.0)  # above[k] = Σ_{j>k} p_j  (non-increasing)
        # k0: the first grid point whose strict upper tail fits; δ(ℓ_k0) ≤ extra + above[k0] ≤ delta.
        k0 = int(np.searchsorted(-above, -need, side="left"))
        if k0 >= pmf.size:
            return math.inf
        # δ decreases by a factor of at least (1 - e^{-50}) over 50 nats, so the answer lies within 50 nats of ℓ_k0.
        lo = max(0, k0 - math.ceil(50.0 / step))
        idx = np.arange(lo, pmf.size)
        weighted = pmf[lo:] * np.exp((k0 - idx) * step)  # p_j e^{ℓ_k0 − ℓ_j}
        w_above = np.append(np.cumsum(weighted[::-1])[::-1][1:], 0.0)  # Σ_{j>k} p_j e^{ℓ_k0 − ℓ_j}
        seg = slice(lo, k0 + 1)
        g = np.exp((idx[: k0 + 1 - lo] - k0) * step) * w_above[: k0 + 1 - lo]  # G_k = Σ_{j>k} p_j e^{ℓ_k − ℓ_j}
        deltas = above[seg] - g  # δ(ℓ_k) − extra
        k = lo + int(np.argmax(deltas <= need))  # the first grid point with δ(ℓ_k) ≤ delta
        if k > lo:
            # between ℓ_{k−1} and ℓ_k: δ(ε) = extra + tail[k] − e^{ε−ℓ_{k−1}} G_{k−1}, solved for ε
            g_prev = float(g[k - 1 - lo])
            ratio = (tail[k] - need) / g_prev if g_prev > 0 else 1.0
            eps = (self.offset + k - 1) * step + math.log(min(max(ratio, 1.0), math.exp(step)))
        elif lo == 0:
            # at or below the window's first point: δ(ε) = extra + tail[0] − e^{ε−ℓ_0} Σ_j p_j e^{ℓ_0−ℓ_j}
            numerator = tail[0] - need
            eps = self.offset * step + (math.log(numerator / float(pmf[0] + g[0])) if numerator > 0 else -math.inf)
        else:  # δ(ℓ_k) ≤ delta already at the search's lower end (excluded by the 50-nat argument): ℓ_k is safe
            eps = (self.offset + k) * step
        eps = max(eps, 0.0)
        return eps * (1.0 + _EPS_ROUND_UP)


def default_interval(phases: Sequence[Phase]) -> float:
    """The default grid interval: min(1e-3, s/8) over the phases, s = q·√(e^{1/σ²} − 1), but at least 1e-5.

    s is the standard deviation of one step's privacy loss for small q (the χ²-divergence of the Gaussian pair
    is e^{1/σ²} − 1); the connect-the-dots error shrinks like (Δ/s)² to (Δ/s)³, and Δ = s/8 kept the reported
    ε within 0.15 % of a 4–8× finer grid on DP-SGD settings from q = 1e-4 to 1, σ = 0.5 to 5 and up to 10⁵
    steps (docs/pld.md).
    """
    spreads = [p.q * math.sqrt(math.expm1(1.0 / (p.sigma * p.sigma))) if p.sigma > 0.04 else math.inf for p in phases]
    return min(DEFAULT_INTERVAL, max(MIN_DEFAULT_INTERVAL, min(spreads) / 8.0))


def _log1m(q: float) -> float:
    """log(1 − q), −∞ at q = 1."""
    return math.log1p(-q) if q < 1.0 else -math.inf


def _log_shift(loss: np.ndarray, log1mq: float) -> np.ndarray:
    """log(e^ℓ − (1 − q)) given log(1 − q), −∞ where ℓ ≤ log(1 − q)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        out = loss + np.log(-np.expm1(log1mq - loss))
    return np.where(loss > log1mq, out, -np.inf)


def _x_of_loss(loss: np.ndarray, q: float, sigma: float) -> np.ndarray:
    """The x at which the remove-direction loss log(1 − q + q e^{(2x−1)/(2σ²)}) equals ``loss`` (−∞ below range)."""
    return sigma * sigma * (_log_shift(loss, _log1m(q)) - math.log(q)) + 0.5


def _normal_masses(z: np.ndarray) -> np.ndarray:
    """Φ(z[i+1]) − Φ(z[i]) for increasing edges z, from whichever tail keeps full relative precision."""
    from scipy import special  # scipy.special and scipy.fft are imported on first use: `dpcalib --help` stays fast

    lower, upper = special.ndtr(z), special.ndtr(-z)
    right = upper[:-1] - upper[1:]
    left = lower[1:] - lower[:-1]
    return np.maximum(np.where(z[:-1] > 0, right, left), 0.0)


def _loss_range(q: float, sigma: float, direction: str, tail_mass: float) -> tuple[float, float]:
    """Losses below/above which each direction's P-mass is at most ``tail_mass``."""
    from scipy import special

    z = -float(special.ndtri(tail_mass))  # Φ̄(z) = tail_mass
    log1mq = _log1m(q)

    def remove_loss(x: float) -> float:
        y = (2 * x - 1) / (2 * sigma * sigma)
        return float(np.logaddexp(log1mq, math.log(q) + y))

    if direction == "remove":  # x ~ mixture, both components within [−zσ, 1 + zσ] up to tail_mass
        return remove_loss(-z * sigma), remove_loss(1 + z * sigma)
    return -remove_loss(z * sigma), -remove_loss(-z * sigma)  # x ~ N(0, σ²), loss decreasing in x


def subsampled_gaussian_pld(
    q: float,
    sigma: float,
    direction: str,
    *,
    interval: float = DEFAULT_INTERVAL,
    pessimistic: bool = True,
    tail_mass: float = DEFAULT_TAIL_MASS,
) -> DiscretePld:
    """The discretised PLD of one step of the Poisson-subsampled Gaussian (Zhu, Dong, Wang 2022 dominating pairs).

    Pessimistic: connect-the-dots (Doroshenko et al. 2022) inside the grid, lower tail rounded up, upper tail to
    +∞. Optimistic: losses rounded down, lower tail dropped. ``tail_mass`` bounds each truncated tail's P-mass.
    """
    if direction not in _DIRECTIONS:
        raise InvalidArgumentError("direction", direction, "'remove' or 'add'")
    q, sigma = check.rate("q", q), check.positive("sigma", sigma)
    interval, tail_mass = check.positive("interval", interval), check.open_unit("tail_mass", tail_mass)
    lo_loss, hi_loss = _loss_range(q, sigma, direction, tail_mass)
    k_lo, k_hi = math.floor(lo_loss / interval), math.ceil(hi_loss / interval)
    k_hi = max(k_hi, k_lo + 1)
    grid = np.arange(k_lo, k_hi + 1) * interval
    edges = np.concatenate(([-np.inf], grid, [np.inf]))  # loss cells: lower tail, grid cells, upper tail
    if direction == "remove":  # P = (1−q)N0 + qN1, Q = N0; x increasing in the loss
        x = _x_of_loss(edges, q, sigma)
        p_weights, q_weights = (1 - q, q), (1.0, 0.0)
    else:  # P = N0, Q = (1−q)N0 + qN1; loss ℓ ↔ remove-loss −ℓ, x decreasing in the loss
        x = _x_of_loss(-edges[::-1], q, sigma)
        p_weights, q_weights = (1.0, 0.0), (1 - q, q)
    n0, n1 = _normal_masses(x / sigma), _normal_masses((x - 1) / sigma)  # per loss cell, in increasing x
    if direction == "add":
        n0, n1 = n0[::-1], n1[::-1]
    p_mass = p_weights[0] * n0 + p_weights[1] * n1
    pmf = np.zeros(grid.size)
    if pessimistic:
        q_mass = q_weights[0] * n0 + q_weights[1] * n1
        inner_p, inner_q = p_mass[1:-1], q_mass[1:-1]
        # P-mass sent up: (P(I) − e^{ℓ_k} Q(I)) / (1 − e^{−Δ}), written in log space (e^{ℓ_k} overflows past 709)
        with np.errstate(divide="ignore", invalid="ignore"):
            log_ratio = grid[:-1] + np.log(inner_q) - np.log(inner_p)
            up = inner_p * (-np.expm1(log_ratio)) / -math.expm1(-interval)
        up = np.clip(np.nan_to_num(up, nan=0.0) + _SPLIT_SLACK / interval * inner_p, 0.0, inner_p)
        pmf[:-1] += inner_p - up
        pmf[1:] += up
        pmf[0] += p_mass[0]
        return DiscretePld(interval, k_lo, pmf, float(p_mass[-1]), 0.0, True)
    pmf[:-1] += p_mass[1:-1]
    pmf[-1] += p_mass[-1]
    return DiscretePld(interval, k_lo, pmf, 0.0, 0.0, False)


def _log_mgf(pld: DiscretePld, lambdas: np.ndarray) -> np.ndarray:
    """log E_P[e^{λL}] over the finite part of ``pld``, one value per λ (negative λ bound the lower tail)."""
    keep = pld.pmf > 0
    log_pmf, losses = np.log(pld.pmf[keep]), pld.losses()[keep]
    out = np.empty(lambdas.size)
    for i, lam in enumerate(lambdas):  # one λ at a time: memory O(grid), and faster than one big matrix
        terms = log_pmf + lam * losses
        top = terms.max()
        out[i] = top + math.log(np.exp(terms - top).sum())
    return out


def _chernoff_lambdas(steps: Sequence[tuple[DiscretePld, int]], log_tail: float) -> np.ndarray:
    """Exponents λ for the Chernoff bounds: from 0.05 (heavy tails) to 8× the optimum √(2 log(1/τ)/Var) of a
    Gaussian tail, in steps of √2. Any λ > 0 gives a valid bound; a good one only makes the window narrower.
    """
    variance = 0.0
    for pld, count in steps:
        mass = pld.pmf.sum()
        mean = float(np.dot(pld.pmf, pld.losses())) / mass
        variance += count * float(np.dot(pld.pmf, (pld.losses() - mean) ** 2)) / mass
    best = math.sqrt(-2.0 * log_tail / max(variance, steps[0][0].interval ** 2))
    low, high = min(0.05, best / 64.0), best * 8.0
    return np.geomspace(low, high, math.ceil(2.0 * math.log2(high / low)) + 1)


class _GridTooLarge(Exception):
    """The FFT window would exceed :data:`MAX_GRID_POINTS`; carries the factor by which Δ must grow."""

    def __init__(self, factor: float) -> None:
        super().__init__(factor)
        self.factor = factor


def compose(
    steps: Sequence[tuple[DiscretePld, int]],
    *,
    tail_mass: float = DEFAULT_TAIL_MASS,
    resolve: float | None = None,
) -> DiscretePld:
    """The composition of ``count`` runs of each single-step PLD, by one FFT power per phase.

    All PLDs must share one grid interval and one kind (pessimistic or optimistic). The result lives on a window
    of N grid points whose outside carries at most about ``tail_mass`` per side (Chernoff bound); the exact
    bound on that outside mass becomes the result's ``slack``. Raises ``_GridTooLarge`` if N would exceed
    :data:`MAX_GRID_POINTS`.

    ``resolve``: a tail probability δ* to resolve to full relative precision. The PMFs are then exponentially
    tilted, p_ℓ ↦ p_ℓ e^{θℓ}/E[e^{θL}], with θ the Chernoff exponent of the δ*-quantile, composed, and tilted
    back; the round-off allowance is added in the tilted domain, where it is tiny relative to the bins near
    ε(δ*) (Koskela et al. 2020 discuss the same loss of relative precision in the tails).
    """
    from scipy import fft as sp_fft

    step, pessimistic = steps[0][0].interval, steps[0][0].pessimistic
    log_tail = math.log(tail_mass)
    lambdas = _chernoff_lambdas(steps, log_tail)
    log_mgf = sum(count * _log_mgf(pld, np.concatenate((lambdas, -lambdas))) for pld, count in steps)
    log_up, log_down = log_mgf[: lambdas.size], log_mgf[lambdas.size :]
    k_lo = math.floor(float(np.max((log_tail - log_down) / lambdas)) / step)
    k_hi = math.ceil(float(np.min((log_up - log_tail) / lambdas)) / step)
    size = sp_fft.next_fast_len(max(k_hi - k_lo + 1, 2), real=True)
    if size > MAX_GRID_POINTS:
        raise _GridTooLarge(size / MAX_GRID_POINTS)
    k_hi = k_lo + size - 1
    # Chernoff: mass at losses ≥ (k_hi + 1)Δ and ≤ (k_lo − 1)Δ
    slack = float(np.exp(np.min(log_up - lambdas * (k_hi + 1) * step)))
    slack += float(np.exp(np.min(log_down + lambdas * (k_lo - 1) * step)))
    tilt = 0.0 if resolve is None else float(lambdas[np.argmin((log_up - math.log(resolve)) / lambdas)])
    spectrum = np.ones(size // 2 + 1, dtype=complex)
    log_finite = log_scale = 0.0
    for pld, count in steps:
        weights = pld.pmf
        if tilt:
            log_mgf_one = float(_log_mgf(pld, np.array([tilt]))[0])
            with np.errstate(divide="ignore"):
                weights = np.exp(np.log(pld.pmf) + tilt * pld.losses() - log_mgf_one)
            log_scale += count * log_mgf_one
        placed = np.bincount((pld.offset + np.arange(pld.pmf.size)) % size, weights=weights, minlength=size)
        spectrum *= sp_fft.rfft(placed) ** count
        log_finite += count * math.log1p(-pld.infinity_mass)
    raw = sp_fft.irfft(spectrum, size)
    # Round-off allowance per bin: the FFT's error on each coefficient, about ε_mach log₂N, grows T-fold in the
    # power, and the inverse transform spreads it as about T ε_mach log₂N times the largest bin; true values are
    # ≥ 0, so the most negative output is a floor. Every bin is raised (pessimistic) or lowered (optimistic).
    total = sum(count for _, count in steps)
    noise = max(-float(raw.min()), total * np.finfo(float).eps * math.log2(size) * float(raw.max()))
    composed = np.roll(np.maximum(raw + (noise if pessimistic else -noise), 0.0), -(k_lo % size))
    if tilt:  # back to P: multiply by E[e^{θL}]^T e^{−θℓ}, capped at 1 (no bin can hold more than all the mass)
        with np.errstate(divide="ignore"):
            log_back = np.log(composed) + log_scale - tilt * (k_lo + np.arange(size)) * step
        return DiscretePld(step, k_lo, np.exp(np.minimum(log_back, 0.0)), -math.expm1(log_finite), slack,
                           pessimistic)
    return DiscretePld(step, k_lo, composed, -math.expm1(log_finite), slack, pessimistic, noise)


class SubsampledGaussianPld:
    """The composed PLD of DP-SGD phases (Poisson-subsampled Gaussian, add/remove), both directions.

    ``epsilon(delta)`` and ``delta(eps)`` return the worse direction. With ``pessimistic=True`` (default) they
    are upper bounds of the true values (connect-the-dots, Doroshenko et al. 2022), otherwise lower bounds.
    When the FFT round-off allowance would weigh more than 0.1 % of the δ asked about (tiny δ, many steps), the
    direction is composed again with an exponential tilt that resolves that δ (see :func:`compose`) and the
    smaller of the two upper bounds is returned.

    Args:
        phases: the phases, composed in any order.
        interval: the grid interval Δ (default :func:`default_interval`); it is coarsened (answers stay valid
            bounds, but looser) when the grid of a single step or of the composition would exceed
            :data:`MAX_GRID_POINTS` points, e.g. for σ ≪ 1 or 10⁶ steps at q = 1. The Δ used is :attr:`interval`.
        tail_mass: the mass each truncation may leave outside a grid (added to δ in full).
    """

    def __init__(
        self,
        phases: Sequence[Phase],
        *,
        interval: float | None = None,
        pessimistic: bool = True,
        tail_mass: float = DEFAULT_TAIL_MASS,
    ) -> None:
        if not phases:
            raise InvalidArgumentError("phases", phases, "a non-empty sequence of Phase")
        interval = default_interval(phases) if interval is None else check.positive("interval", interval)
        self.phases = tuple(phases)
        self.pessimistic = pessimistic
        self.tail_mass = tail_mass
        widest = max(
            np.subtract(*_loss_range(p.q, p.sigma, d, tail_mass)[::-1]) for p in self.phases for d in _DIRECTIONS
        )
        interval = max(interval, widest / MAX_GRID_POINTS)
        while True:
            try:
                self.steps = {
                    d: [
                        (subsampled_gaussian_pld(p.q, p.sigma, d, interval=interval, pessimistic=pessimistic,
                                                 tail_mass=tail_mass), p.count)
                        for p in self.phases
                    ]
                    for d in _DIRECTIONS
                }
                self.by_direction = {d: compose(steps, tail_mass=tail_mass) for d, steps in self.steps.items()}
                break
            except _GridTooLarge as too_large:
                interval *= 1.05 * too_large.factor
        self.interval = interval

    def _tilted(self, direction: str, target: float) -> DiscretePld | None:
        """The direction composed to resolve δ ≈ ``target``, if its plain composition's round-off would matter."""
        if not self.pessimistic or not target > 0.0:
            return None
        return compose(self.steps[direction], tail_mass=self.tail_mass, resolve=target)

    def epsilon(self, delta: float) -> float:
        """ε(δ) of the worse direction (an upper bound if pessimistic); ``inf`` if δ is below the truncated mass."""
        delta = check.open_unit("delta", delta)
        worst = 0.0
        for direction, pld in self.by_direction.items():
            eps = pld.epsilon(delta)
            if pld.roundoff_above(min(eps, 1e300)) > _ROUNDOFF_SHARE * delta:
                tilted = self._tilted(direction, delta)
                eps = eps if tilted is None else min(eps, tilted.epsilon(delta))
            worst = max(worst, eps)
        return worst

    def delta(self, eps: float) -> float:
        """δ(ε) of the worse direction (an upper bound if pessimistic)."""
        if not (eps >= 0.0 and math.isfinite(eps)):
            raise InvalidArgumentError("eps", eps, "a finite number >= 0")
        worst = 0.0
        for direction, pld in self.by_direction.items():
            delta = pld.delta(eps)
            if pld.roundoff_above(eps) > _ROUNDOFF_SHARE * delta:
                tilted = self._tilted(direction, delta)
                delta = delta if tilted is None else min(delta, tilted.delta(eps))
            worst = max(worst, delta)
        return worst
