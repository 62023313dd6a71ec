"""Privacy-loss distributions (PLDs) of the subsampled Gaussian mechanism, composed numerically.

The privacy loss of a pair of distributions (P, Q) is L(x) = log(P(x)/Q(x)) with x ~ P; the hockey-stick
divergence, i.e. the smallest δ for a given ε, is

    δ(ε) = E_P[(1 − e^{ε − L})_+] = P(L > ε) − e^ε Q(L > ε)                     (Meiser & Mohammadi 2018)

and PLDs of independent (adaptively composed) mechanisms convolve (Sommer, Meiser, Mohammadi 2019;
Koskela, Jälkö, Honkela 2020). Here ``sigma`` is the noise standard deviation per unit of L2 sensitivity: the
accountant (:class:`dpcalib.accountant.PldAccountant`) divides the public noise multiplier σ = noise std /
clipping norm C by the relation's sensitivity in units of C (1 under add/remove, 2 under replace-one, where
replacing one record moves the clipped sum by up to 2C).

Mechanisms (a :class:`Phase` is ``count`` steps of one of them):

* Poisson sampling, add/remove neighbours (``sampling="poisson"``). The Poisson-subsampled Gaussian with rate q
  has two dominating pairs (Zhu, Dong, Wang 2022, Thm. 11):

  - ``"remove"``: P = (1 − q)·N(0, σ²) + q·N(1, σ²),  Q = N(0, σ²),
    L(x) = log(1 − q + q·e^{(2x − 1)/(2σ²)}) ≥ log(1 − q);
  - ``"add"``:    P = N(0, σ²),  Q = (1 − q)·N(0, σ²) + q·N(1, σ²),
    L(x) = −log(1 − q + q·e^{(2x − 1)/(2σ²)}) ≤ −log(1 − q).

  A composition of T steps between one fixed pair of neighbouring datasets uses the same direction at every
  step, so each direction is composed on its own and the larger ε (or δ) of the two is reported.

* Fixed-size batches of b out of n records drawn without replacement, replace-one neighbours
  (``sampling="without_replacement"``, q = b/n; q = 1 is the plain Gaussian mechanism). In units of the
  sensitivity the base mechanism is dominated by (N(1, σ²), N(0, σ²)) (σ = std/(2C) for a clipped sum). For
  every pair of replace-one neighbours and every ε ≥ 0, δ(ε) ≤ q·δ_base(log(1 + (e^ε − 1)/q)) (Balle, Barthe,
  Gaboardi 2018, Thm. 10, by advanced joint convexity), which is exactly δ(ε) of the pair
  R = (q·N(1, σ²) + (1 − q)·N(0, σ²), N(0, σ²)), i.e. of the "remove" pair above.
  R is not symmetric, and it dominates only for ε ≥ 0; for ε < 0 the identity H_α(P‖Q) = 1 − α + α H_{1/α}(Q‖P)
  and the symmetry of the relation give the mirrored bound (Zhu, Dong, Wang 2022, §5, subsampling without
  replacement; Dong, Roth, Su 2022, Thm. 4.2, the same bound as the trade-off function C_q(G_{2/σ})). One pair
  dominating for all ε is the *symmetric* PLD that equals R's for losses ℓ > 0, carries P-mass e^{−ℓ}·ω_R(ℓ)
  at −ℓ and the remaining mass, (1 − q)(2Φ(1/(2σ)) − 1), at 0. It is its own mirror, so one direction is
  composed.

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
FFT power per phase (rfft(p)^T by binary powering), i.e. O(N log N + N log T) whatever T. The window is chosen
with Chernoff bounds P(ΣL ≥ a) ≤ e^{−λa} ∏ E[e^{λL_i}]^{T_i} (and the mirror bound below), evaluated exactly on
the discrete PMFs over a ladder of λ. Mass that wraps around the cyclic grid only adds non-negative mass to the
window, so the bound U + D on the mass outside it is added to δ (pessimistic) or subtracted from it
(optimistic): aliasing never makes the upper bound optimistic.

Round-off: a proven bound. Let y be the exact cyclic composition of the stored PMFs a_i and ŷ the computed one.
The FFT of length N is normwise stable, ‖fl(Fx) − Fx‖₂ ≤ ε_F‖Fx‖₂ (Higham 2002, Thm. 24.2; see
:func:`fft_relative_error`); Parseval turns the spectra's errors into ‖Â_i − A_i‖₂ ≤ ε_F √N ‖a_i‖₂; a product of
n = ΣT_i factors of modulus ≤ M changes by at most M^{n−1} Σ_i T_i |Â_i − A_i| per coefficient; binary powering
adds a relative error ρ = (1 + √2γ₂)^E − 1 (:func:`_power`); the inverse FFT adds ε_F of its input. Altogether

    ‖ŷ − y‖₂ ≤ B = (1 + ε_F)(1 + u)(1 + ρ)(Y₂ + E) − Y₂,   E = √2 ε_F M^{n−1} Σ_i T_i ‖a_i‖₂,

with Y₂ = M^{n−1} min_i ‖a_i‖₂ ≥ ‖y‖₂ (Young's inequality): the one-convolution bound c·u·log₂N·‖a‖₂‖b‖₂ carried
through the power (√2: the half spectrum of a real transform, extended by symmetry; u: the 1/N scaling; an
absolute 2^-1021 per multiplication covers underflow). Bins that wrap around the window are rounded sums: the
inputs are then exact only to a relative u, and y to a factor (1 ± u)^n, folded into the PMF and B. Clamping ŷ at
0 keeps the bound (y ≥ 0). A query weights the bins above ε by w_ℓ = 1 − e^{ε−ℓ} ∈ [0, 1], so by Cauchy–Schwarz its error is at most B·‖w‖₂, added to δ (subtracted for the optimistic bound): an error of
B per bin would cost B times the number of bins, ‖w‖₂ costs only its square root. Where B·‖w‖₂ would weigh more
than 0.1 % of the δ asked about (tiny δ), the composition is redone with an exponential tilt
p_ℓ ↦ p_ℓ e^{θℓ}/E[e^{θL}] that centres the tilted distribution on the tail in question (on a window that holds
the tilted distribution, valid for queries above its lowest loss, and on a coarser grid if that window would
exceed :data:`MAX_GRID_POINTS`); the same bound then
holds in the tilted domain and is carried back with the weights w_ℓ·E[e^{θL}]^T e^{−θℓ}, which are tiny away from
the tail, and the relative errors of the tilt's exponentials are bounded and folded into the PMF. The smaller of
the two upper bounds is reported.

Queries. ``delta(eps)`` evaluates the hockey-stick divergence of the discrete PLD exactly, plus the allowances;
``epsilon(delta)`` finds the grid cell holding the answer and solves δ(ε) = target inside it in closed form (δ is
linear in e^ε between grid points), then rounds the result up by a relative 1e-12. A PLD whose allowances
swamp the δ asked about (e.g. 10¹⁵ steps) answers ε = ∞ and δ = 1: vacuous, never optimistic.

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
    "SAMPLINGS",
    "Phase",
    "DiscretePld",
    "subsampled_gaussian_pld",
    "without_replacement_gaussian_pld",
    "fft_relative_error",
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
#: the samplings a :class:`Phase` can describe: Poisson (add/remove) and fixed-size without replacement (replace-one)
SAMPLINGS = ("poisson", "without_replacement")

_DIRECTIONS = ("remove", "add")
_EPS_ROUND_UP = 1e-12  # relative round-up of a reported ε
_ROUNDOFF_SHARE = 1e-3  # a query is recomposed with a tilt when the round-off allowance exceeds this share of δ
_SPLIT_SLACK = 64 * np.finfo(float).eps  # extra P-mass moved up per interval, covering round-off in the split
_TILT_WRAP = 1e-12  # tilted mass allowed to wrap around the window of a tilted composition (see compose)
_MAX_GRID_INDEX = 2.0**52  # grid indices beyond this lose integer precision in float64: the PLD is vacuous there
_MAX_COARSENINGS = 12  # attempts at fitting the FFT window by coarsening Δ before the PLD is declared vacuous
_UNIT_ROUNDOFF = 2.0**-53  # u (a Python float: overflow in the bound gives inf, not a numpy warning)
#: relative error of one complex multiplication, √2·γ₂ (Higham 2002, Lemma 3.5; ≥ 2u, so it also covers an FMA)
_COMPLEX_MULT = math.sqrt(2.0) * 2 * _UNIT_ROUNDOFF / (1 - 2 * _UNIT_ROUNDOFF)
_TWIDDLE = 2 * _UNIT_ROUNDOFF  # μ: the error of a computed twiddle factor


@dataclass(frozen=True)
class Phase:
    """``count`` steps of the Gaussian mechanism with noise std ``sigma`` per unit of L2 sensitivity.

    ``sampling="poisson"``: each record is in the batch independently with probability ``q``; add/remove
    neighbours (sensitivity C: ``sigma`` is noise std / C). ``sampling="without_replacement"``: a batch of fixed
    size b out of n records, ``q = b/n`` (1 for the whole dataset); replace-one neighbours (sensitivity 2C:
    ``sigma`` is noise std / (2C), the accountant halves the noise multiplier). A phase with q = 1 is the plain
    Gaussian mechanism, symmetric, and may join either kind.
    """

    q: float
    sigma: float
    count: int
    sampling: str = "poisson"

    def __post_init__(self) -> None:
        object.__setattr__(self, "q", check.rate("q", self.q))
        object.__setattr__(self, "sigma", check.positive("sigma", self.sigma))
        object.__setattr__(self, "count", check.count("count", self.count))
        if self.sampling not in SAMPLINGS:
            raise InvalidArgumentError("sampling", self.sampling, "one of " + ", ".join(map(repr, SAMPLINGS)))


@dataclass(frozen=True)
class DiscretePld:
    """A discrete privacy-loss distribution: ``pmf[j]`` is the P-mass at loss ``(offset + j) * interval``.

    ``infinity_mass`` is the P-mass at loss +∞ (pessimistic PLDs only) and ``slack`` a bound on the mass that
    truncation moved or dropped; ``pessimistic`` says whether queries return upper bounds (``slack`` added) or
    lower bounds (``slack`` subtracted). ``roundoff`` bounds ‖pmf − exact‖₂ after weighting bin ℓ by
    g_ℓ = exp(a − θℓ), ``(a, θ) = roundoff_tilt`` ((0, 0) unless the composition was tilted); a query adds (or
    subtracts) ``roundoff_above(eps)``. It is 0 for a single step and ``inf`` when the round-off could not be
    bounded usefully (queries are then vacuous). Mass below ``floor`` (a tilted composition's window) was dropped:
    queries certify only ε ≥ ``floor`` (``delta`` answers 1 below it, ``epsilon`` ``inf`` if the answer would be).
    """

    interval: float
    offset: int
    pmf: np.ndarray
    infinity_mass: float
    slack: float
    pessimistic: bool
    roundoff: float = 0.0
    roundoff_tilt: tuple[float, float] = (0.0, 0.0)
    floor: float = -math.inf

    def _first_above(self, eps: float) -> int:
        """The index of the first bin whose loss may exceed ``eps`` (``pmf.size`` if none; ``eps`` may be ±inf)."""
        if eps == -math.inf:
            return 0
        if eps / self.interval >= self.offset + self.pmf.size:  # also +inf
            return self.pmf.size
        return max(0, math.floor(eps / self.interval) - self.offset + 1)

    def roundoff_above(self, eps: float) -> float:
        """The round-off allowance of a query at ``eps``: ``roundoff`` · ‖(w_ℓ g_ℓ)_{ℓ>ε}‖₂, w_ℓ = 1 − e^{ε−ℓ}
        (without a tilt, g = 1 and w ≤ 1, so ``roundoff`` · √(number of bins above ε) is used)."""
        if self.roundoff == 0.0:
            return 0.0
        if not math.isfinite(self.roundoff):
            return math.inf
        first = self._first_above(eps)
        scale, theta = self.roundoff_tilt
        if scale == 0.0 and theta == 0.0:
            return self.roundoff * math.sqrt(self.pmf.size - first)
        losses = self.losses(first)
        with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
            log_w = np.log(-np.expm1(eps - losses)) if eps > -math.inf else np.zeros(losses.size)
            terms = 2.0 * (log_w + scale - theta * losses)
            top = float(terms.max()) if terms.size else -math.inf
            if top == -math.inf:
                return 0.0
            norm = math.exp(0.5 * (top + math.log(float(np.exp(terms - top).sum()))))
        return self.roundoff * norm

    def losses(self, start: int = 0) -> np.ndarray:
        """The loss values of ``pmf[start:]``."""
        return (self.offset + start + np.arange(self.pmf.size - start)) * self.interval

    def _extra(self) -> float:
        return self.infinity_mass + self.slack if self.pessimistic else -self.slack

    def delta(self, eps: float) -> float:
        """Hockey-stick divergence δ(ε) = Σ_ℓ>ε p_ℓ (1 − e^{ε−ℓ}) + δ_∞ (± slack, ± round-off), clipped to [0, 1]."""
        if eps < self.floor:
            return 1.0 if self.pessimistic else 0.0
        first = self._first_above(eps)
        losses = self.losses(first)
        above = losses > eps
        body = float(np.dot(self.pmf[first:][above], -np.expm1(eps - losses[above])))
        roundoff = self.roundoff_above(eps)
        value = body + self._extra() + (roundoff if self.pessimistic else -roundoff)
        if math.isnan(value):
            return 1.0 if self.pessimistic else 0.0
        return min(1.0, max(0.0, value))

    def epsilon(self, delta: float) -> float:
        """The smallest ε ≥ 0 with δ(ε) ≤ ``delta`` for this discrete PLD (``inf`` if none: δ below its δ_∞ or
        its allowances).

        The round-off allowance R(ε) does not increase with ε. Without a tilt the largest, R(−∞), is subtracted
        from δ if it is smaller (it differs little: most bins lie above the answer). Otherwise, with ε₀ the answer
        without R, the answer for the target δ − R(ε₀) is ≥ ε₀, so its own allowance is at most R(ε₀) and it
        meets δ. The optimistic bound adds R(−∞) to δ.
        """
        eps = self._epsilon(delta)
        return eps if eps >= self.floor else math.inf

    def _epsilon(self, delta: float) -> float:
        need = delta - self._extra()
        if not need > 0.0:
            return math.inf
        if self.roundoff == 0.0:
            return self._solve(need)
        if not self.pessimistic:
            return self._solve(need + self.roundoff_above(-math.inf))
        if self.roundoff_tilt == (0.0, 0.0) and need > self.roundoff_above(-math.inf):
            return self._solve(need - self.roundoff_above(-math.inf))  # R(−∞) is the largest allowance
        first = self._solve(need)
        need -= self.roundoff_above(min(first, 1e300))
        return self._solve(need) if need > 0.0 else math.inf

    def estimate(self, delta: float) -> float:
        """ε(δ) of the PMF as computed, without the round-off allowance: not a bound, a place to look."""
        need = delta - self._extra()
        return self._solve(need) if need > 0.0 else math.inf

    def _solve(self, need: float) -> float:
        """The smallest ε ≥ 0 with Σ_ℓ>ε p_ℓ (1 − e^{ε−ℓ}) ≤ ``need``, rounded up by a relative 1e-12."""
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
        with np.errstate(over="ignore"):
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
            eps = (self.offset + k - 1) * step + min(math.log(max(ratio, 1.0)), step)
        elif lo == 0:
            # at or below the window's first point: δ(ε) = extra + tail[0] − e^{ε−ℓ_0} Σ_j p_j e^{ℓ_0−ℓ_j}
            numerator = tail[0] - need
            eps = self.offset * step + (math.log(numerator / float(pmf[0] + g[0])) if numerator > 0 else -math.inf)
        else:  # δ(ℓ_k) ≤ delta already at the search's lower end (excluded by the 50-nat argument): ℓ_k is safe
            eps = (self.offset + k) * step
        eps = max(eps, 0.0)
        return eps * (1.0 + _EPS_ROUND_UP)


def _spread(phase: Phase) -> float:
    """q·√(e^{1/σ²} − 1) for the phase (∞ for σ ≤ 0.04, where it overflows)."""
    sigma = phase.sigma
    return phase.q * math.sqrt(math.expm1(1.0 / (sigma * sigma))) if sigma > 0.04 else math.inf


def default_interval(phases: Sequence[Phase]) -> float:
    """The default grid interval: min(1e-3, s/8) over the phases, s = q·√(e^{1/σ²} − 1), but at least 1e-5.

    σ is the noise std per unit of sensitivity (:class:`Phase`). s is the standard deviation of one step's
    privacy loss for small q (the χ²-divergence of the Gaussian pair is e^{1/σ²} − 1); the
    connect-the-dots error shrinks like (Δ/s)² to (Δ/s)³, and Δ = s/8 kept the reported ε within 0.15 % of a
    4–8× finer grid on DP-SGD settings from q = 1e-4 to 1, σ = 0.5 to 5 and up to 10⁵ steps (docs/pld.md).
    """
    return min(DEFAULT_INTERVAL, max(MIN_DEFAULT_INTERVAL, min(_spread(p) for p in phases) / 8.0))


def _log1m(q: float) -> float:
    """log(1 − q), −∞ at q = 1."""
    return math.log1p(-q) if q < 1.0 else -math.inf


def _log_shift(loss: np.ndarray, log1mq: float) -> np.ndarray:
    """log(e^ℓ − (1 − q)) given log(1 − q), −∞ where ℓ ≤ log(1 − q)."""
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):  # overflow: ℓ ≪ log(1 − q), masked below
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
        with np.errstate(over="ignore"):  # σ ≲ 1e-154: ±inf, which the caller turns into a vacuous PLD
            y = np.float64(2 * x - 1) / np.float64(2 * sigma) / sigma
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


def without_replacement_gaussian_pld(
    q: float,
    sigma: float,
    *,
    interval: float = DEFAULT_INTERVAL,
    pessimistic: bool = True,
    tail_mass: float = DEFAULT_TAIL_MASS,
) -> DiscretePld:
    """The discretised, symmetric PLD of one step of the Gaussian mechanism (noise std ``sigma`` per unit of
    sensitivity) on a batch of b = q·n records drawn without replacement, under replace-one neighbours.

    For a sum of gradients clipped to C, replacing a record moves the sum by up to 2C, so ``sigma`` = noise
    std / (2C) (:class:`PldAccountant <dpcalib.accountant.PldAccountant>` passes the noise multiplier / 2). For
    ε ≥ 0 every pair of neighbours has δ(ε) ≤ q·δ_{N(1,σ²)‖N(0,σ²)}(log(1 + (e^ε − 1)/q)) (Balle, Barthe,
    Gaboardi 2018, Thm. 10), the δ(ε) of the pair R = (q·N(1, σ²) + (1 − q)·N(0, σ²), N(0, σ²)), i.e. the
    "remove" pair of :func:`subsampled_gaussian_pld`. For ε < 0 the mirrored bound holds
    (H_α(P‖Q) = 1 − α + α H_{1/α}(Q‖P) and the relation is symmetric; Zhu, Dong, Wang 2022, §5; Dong, Roth, Su
    2022, Thm. 4.2, trade-off function C_q(G_{1/σ})), so the pair dominating for every ε is the symmetric PLD ω
    with ω(ℓ) = ω_R(ℓ) for ℓ > 0, ω(−ℓ) = e^{−ℓ} ω(ℓ), and the rest of the mass at ℓ = 0.

    It is built from R's discretisation (connect-the-dots if pessimistic, which dominates R for ε ≥ 0; rounded
    down if optimistic) by the same mirroring, which keeps the discrete δ(ε) for ε ≥ 0 and therefore (by the
    identity) dominates, or is dominated by, ω for every ε. If round-off leaves the mass at 0 negative, mass is
    moved from the lowest positive losses to +∞ (pessimistic) or to 0 (optimistic) until it is not.
    """
    q, sigma = check.rate("q", q), check.positive("sigma", sigma)
    base = subsampled_gaussian_pld(q, sigma, "remove", interval=interval, pessimistic=pessimistic,
                                   tail_mass=tail_mass)
    first = max(0, 1 - base.offset)  # the first bin with a loss ≥ Δ > 0
    top = base.offset + base.pmf.size - 1  # the largest grid index
    if first >= base.pmf.size:  # no mass above 0 (only possible for a degenerate, very coarse grid)
        return DiscretePld(base.interval, 0, np.ones(1), base.infinity_mass, 0.0, pessimistic)
    positive = base.pmf[first:].copy()
    losses = (base.offset + first + np.arange(positive.size)) * base.interval
    mirror = np.exp(-losses)
    infinity_mass = base.infinity_mass
    zero_mass = 1.0 - infinity_mass - float(np.dot(positive, 1.0 + mirror))
    if zero_mass < 0.0:
        gain = mirror if pessimistic else 1.0 + mirror  # how much the mass at 0 grows per unit of P-mass moved
        before = np.concatenate(([0.0], np.cumsum(positive * gain)[:-1]))  # gained by moving all lower bins
        moved = np.minimum(positive, np.maximum(0.0, -zero_mass - before) / gain)
        positive -= moved
        if pessimistic:
            infinity_mass += float(moved.sum())
        zero_mass = max(0.0, 1.0 - infinity_mass - float(np.dot(positive, 1.0 + mirror)))
    pmf = np.concatenate(((positive * mirror)[::-1], [zero_mass], positive))  # losses −top·Δ … top·Δ
    return DiscretePld(base.interval, -top, pmf, infinity_mass, 0.0, pessimistic)


def _log_mgf(pld: DiscretePld, lambdas: np.ndarray) -> np.ndarray:
    """log E_P[e^{λL}] over the finite part of ``pld``, one value per λ (negative λ bound the lower tail)."""
    keep = pld.pmf > 0
    log_pmf, losses = np.log(pld.pmf[keep]), pld.losses()[keep]
    out = np.empty(lambdas.size)
    for i, lam in enumerate(lambdas):  # one λ at a time: memory O(grid), and 3× faster than one big matrix
        terms = log_pmf + lam * losses
        top = terms.max()
        out[i] = top + math.log(np.exp(terms - top).sum())
    return out


def _chernoff_lambdas(steps: Sequence[tuple[DiscretePld, int]], log_tail: float) -> np.ndarray:
    """Exponents λ for the Chernoff bounds: from 0.05 (heavy tails) to 8× the optimum √(2 log(1/τ)/Var) of a
    Gaussian tail, in steps of 4 (:func:`_chernoff` refines around the best). Any λ > 0 gives a valid bound; a
    good one only makes the window narrower.
    """
    variance = 0.0
    with np.errstate(all="ignore"):  # losses beyond ~1e154 (σ ≲ 1e-77): no finite window, the PLD is vacuous
        for pld, count in steps:
            losses = pld.losses()
            mass = pld.pmf.sum()
            mean = float(np.dot(pld.pmf, losses)) / mass
            variance += count * float(np.dot(pld.pmf, (losses - mean) ** 2)) / mass
    if not math.isfinite(variance):
        raise _GridTooLarge(math.inf)
    best = math.sqrt(-2.0 * log_tail / max(variance, steps[0][0].interval ** 2))
    low, high = min(0.05, best / 64.0), best * 8.0
    return np.geomspace(low, high, math.ceil(math.log(high / low, 4.0)) + 1)


def _chernoff(
    steps: Sequence[tuple[DiscretePld, int]], lambdas: np.ndarray, log_tail: float, sign: float, shift: float = 0.0
) -> tuple[np.ndarray, np.ndarray]:
    """(λ, K(λ)) for the Chernoff bounds of one side (sign = +1: upper tail, −1: lower tail) of the composition,
    K(λ) = Σ_i T_i (K_i(shift + sign·λ) − K_i(shift)), K_i(0) = 0 taken for a PMF of mass ≤ 1 (the log-MGF of the composition tilted by ``shift``): the
    ladder, plus points a factor 2, then √2, either side of the best edge (K(λ) − log τ)/λ found so far."""

    def log_mgf(lam: np.ndarray) -> np.ndarray:
        total = np.zeros(lam.size)
        for pld, count in steps:
            if shift:
                values = _log_mgf(pld, np.append(shift + sign * lam, shift))
                total += count * (values[:-1] - values[-1])
            else:
                total += count * _log_mgf(pld, sign * lam)
        return total

    values = log_mgf(lambdas)
    for factor in (2.0, 2.0**0.5):  # two refinements: the ladder's best edge ×/÷ 2, then ×/÷ √2
        with np.errstate(all="ignore"):
            best = lambdas[np.argmin((values - log_tail) / lambdas)]
        extra = best * np.array([1.0 / factor, factor])
        lambdas, values = np.concatenate((lambdas, extra)), np.concatenate((values, log_mgf(extra)))
    return lambdas, values


class _GridTooLarge(Exception):
    """The FFT window would exceed :data:`MAX_GRID_POINTS`; carries the factor by which Δ must grow (``inf`` if
    no finite window was found)."""

    def __init__(self, factor: float) -> None:
        super().__init__(factor)
        self.factor = factor


def fft_relative_error(size: int) -> float:
    """A bound ε_F on ‖fl(F x) − F x‖₂ / ‖F x‖₂ for the (real or inverse) FFT of length ``size``.

    Higham 2002 ("Accuracy and Stability of Numerical Algorithms", 2nd ed., Thm. 24.2) proves, for the radix-2
    Cooley–Tukey FFT of length 2^t whose twiddle factors are computed to within μ, the normwise bound
    t·η/(1 − t·η), η = μ + γ₄(√2 + μ), γ₄ = 4u/(1 − 4u). Here t = ⌈log₂ N⌉ + 2 (a real transform's extra pass,
    and a length that need not be a power of 2), μ = 2u (pocketfft's twiddles are accurate to about one ulp), and
    η is doubled for the larger butterflies (radix 3, 4, 5, …) of pocketfft's mixed-radix transform.
    """
    u = _UNIT_ROUNDOFF
    gamma4 = 4 * u / (1 - 4 * u)
    eta = 2.0 * (_TWIDDLE + gamma4 * (math.sqrt(2.0) + _TWIDDLE))
    t = math.ceil(math.log2(max(size, 2))) + 2
    return t * eta / (1 - t * eta)


def _power(z: np.ndarray, n: int) -> tuple[np.ndarray, int]:
    """z**n element-wise by binary powering, and E ≤ n − 1 such that each computed entry is z^n·∏(1 + β_k)^{e_k}
    with Σ e_k = E and every |β_k| the error of one complex multiplication: the square that makes z^(2^j) carries
    the errors of all the squares before it (2^j − 1 in all), and each multiplication into the result adds one.
    (Computing z**n as exp(n·log z), as numpy does for n ≥ 100, has no such bound.)"""
    result: np.ndarray | None = None
    base, base_mults, mults, bit = z.copy(), 0, 0, 1
    while True:
        if n & bit:
            if result is None:
                result, mults = base.copy(), base_mults
            else:
                np.multiply(result, base, out=result)
                mults += base_mults + 1
        bit <<= 1
        if bit > n:
            return result, mults  # type: ignore[return-value]
        np.multiply(base, base, out=base)
        base_mults = 2 * base_mults + 1


def _saddle_point(steps: Sequence[tuple[DiscretePld, int]], centre: float) -> float:
    """θ ≥ 0 with Σ_i T_i K_i'(θ) = ``centre`` (K the log-MGF of a discrete PMF, K' the tilted mean), by bisection
    on a bracket grown by doubling; 0 if the untilted mean is already above ``centre`` or no θ ≤ 2^12 reaches it."""

    def mean(theta: float) -> float:
        out = 0.0
        for pld, count in steps:
            keep = pld.pmf > 0
            losses = pld.losses()[keep]
            terms = np.log(pld.pmf[keep]) + theta * losses
            weights = np.exp(terms - terms.max())
            out += count * float(np.dot(weights, losses)) / float(weights.sum())
        return out

    if mean(0.0) >= centre:
        return 0.0
    low, high = 0.0, 1.0
    while mean(high) < centre:
        low, high = high, 2.0 * high
        if high > 4096.0:
            return 0.0
    for _ in range(30):
        middle = 0.5 * (low + high)
        low, high = (middle, high) if mean(middle) < centre else (low, middle)
    return high


def _exp_error(spread: float) -> float:
    """Relative error bound of exp(x̂), x̂ a sum of three computed terms of total magnitude ≤ ``spread``."""
    return math.expm1(4.0 * _UNIT_ROUNDOFF * (spread + 1.0))


def compose(
    steps: Sequence[tuple[DiscretePld, int]],
    *,
    tail_mass: float = DEFAULT_TAIL_MASS,
    centre: float | None = None,
) -> DiscretePld:
    """The composition of ``count`` runs of each single-step PLD, by one FFT power per phase.

    All PLDs must share one grid interval and one kind (pessimistic or optimistic). The result lives on a window
    of N grid points whose outside carries at most about ``tail_mass`` per side (Chernoff bound); the exact
    bound on that outside mass becomes the result's ``slack``, and the proven bound B on the FFT's round-off
    (module docstring; Higham 2002, Thm. 24.2) its ``roundoff``. Raises ``_GridTooLarge`` if N would exceed
    :data:`MAX_GRID_POINTS`.

    ``centre`` (pessimistic only): a loss value, typically the ε of a query, around which the composition is
    resolved to full relative precision. The PMFs are then exponentially tilted, p_ℓ ↦ p_ℓ e^{θℓ}/E[e^{θL}], with
    θ ≥ 0 such that the tilted composition has its mean at ``centre`` (the saddle point of importance sampling),
    composed, and tilted back (Koskela et al. 2020 discuss the same loss of relative precision in the tails). The
    round-off bound then holds in the tilted domain and is carried back with the weights E[e^{θL}]^T e^{−θℓ},
    which are small above ``centre``; the relative errors of the exponentials of the tilt, r_in per input and
    r_out on the way back, are folded into the PMF as the factor (1 − r_in)^{−T}/(1 − r_out) (r_in also covers
    the rounding of bins that wrap around the window, untilted too). Any θ gives a
    valid bound; a good one only makes it tighter.
    """
    from scipy import fft as sp_fft

    step, pessimistic = steps[0][0].interval, steps[0][0].pessimistic
    if centre is not None and not pessimistic:
        raise InvalidArgumentError("centre", centre, "None for an optimistic PLD (tilting is for upper bounds)")
    log_tail = math.log(tail_mass)
    ladder = _chernoff_lambdas(steps, log_tail)
    lam_up, log_up = _chernoff(steps, ladder, log_tail, 1.0)
    lam_down, log_down = _chernoff(steps, ladder, log_tail, -1.0)
    with np.errstate(all="ignore"):
        lo_edge = float(np.max((log_tail - log_down) / lam_down)) / step
        hi_edge = float(np.min((log_up - log_tail) / lam_up)) / step
    if not (abs(lo_edge) < _MAX_GRID_INDEX and abs(hi_edge) < _MAX_GRID_INDEX):  # also catches inf and nan
        raise _GridTooLarge(math.inf)
    tilt = 0.0 if centre is None else _saddle_point(steps, centre)
    floor = -math.inf
    if tilt:
        # The window follows the tilted distribution (log-MGF of the tilted PMF at λ: K(θ + λ) − K(θ)), all but
        # _TILT_WRAP of it on either side, and still reaches the untilted upper edge. Tilted mass that wraps around
        # is only added (sound); back-tilted it weighs at most about _TILT_WRAP relative to δ near the centre.
        # Losses below the window are dropped: the result is valid for queries at ε ≥ its lowest loss (``floor``),
        # where they do not count, so the lower Chernoff slack is not needed either.
        log_wrap = math.log(_TILT_WRAP)
        lam_tilted, log_tilted = _chernoff(steps, ladder, log_wrap, 1.0, tilt)
        lam_below, log_below = _chernoff(steps, ladder, log_wrap, -1.0, tilt)
        with np.errstate(all="ignore"):
            tilted_hi = float(np.min((log_tilted - log_wrap) / lam_tilted)) / step
            tilted_lo = float(np.max((log_wrap - log_below) / lam_below)) / step
        if not (abs(tilted_lo) < _MAX_GRID_INDEX and abs(tilted_hi) < _MAX_GRID_INDEX):
            raise _GridTooLarge(math.inf)
        hi_edge = max(hi_edge, tilted_hi, centre / step + 1.0)
        lo_edge = min(max(lo_edge, tilted_lo), centre / step - 1.0)
    if hi_edge - lo_edge + 1 > MAX_GRID_POINTS:
        raise _GridTooLarge((hi_edge - lo_edge + 1) / MAX_GRID_POINTS)
    k_lo, k_hi = math.floor(lo_edge), math.ceil(hi_edge)
    size = sp_fft.next_fast_len(max(k_hi - k_lo + 1, 2), real=True)
    if size > MAX_GRID_POINTS:
        raise _GridTooLarge(size / MAX_GRID_POINTS)
    k_hi = k_lo + size - 1
    # Chernoff: mass at losses ≥ (k_hi + 1)Δ and ≤ (k_lo − 1)Δ
    with np.errstate(over="ignore"):
        slack = float(np.exp(np.min(log_up - lam_up * (k_hi + 1) * step)))
        if not tilt:
            slack += float(np.exp(np.min(log_down + lam_down * (k_lo - 1) * step)))
        else:
            floor = k_lo * step
    total = sum(count for _, count in steps)
    spectrum: np.ndarray | None = None
    log_finite = log_scale = 0.0
    log_m = -math.inf  # log M, M ≥ every |exact or computed Fourier coefficient| of every input
    weighted_norm, min_norm, mults, r_in = 0.0, math.inf, 0, 0.0
    for pld, count in steps:
        weights = pld.pmf
        if tilt:
            log_mgf_one = float(_log_mgf(pld, np.array([tilt]))[0])
            with np.errstate(divide="ignore"):
                log_pmf = np.log(pld.pmf)
            tilted = tilt * pld.losses()
            weights = np.exp(log_pmf + tilted - log_mgf_one)
            finite = log_pmf[np.isfinite(log_pmf)]
            spread = float(np.abs(finite).max(initial=0.0)) + float(np.abs(tilted).max()) + abs(log_mgf_one)
            r_this = _exp_error(spread)
            log_scale += count * log_mgf_one
        else:
            r_this = 0.0
        if pld.pmf.size > size:  # bins that wrap around are sums, rounded: a relative u more
            r_this += _UNIT_ROUNDOFF * (1.0 + r_this)
        r_in = max(r_in, r_this)
        placed = np.bincount((pld.offset + np.arange(pld.pmf.size)) % size, weights=weights, minlength=size)
        coefficients = sp_fft.rfft(placed)
        mass = float(placed.sum()) * (1.0 + 2.0 * size * _UNIT_ROUNDOFF)  # ≥ the exact sum ≥ |A_k|
        log_m = max(log_m, math.log(max(mass, float(np.abs(coefficients).max()), np.finfo(float).tiny)))
        norm = math.sqrt(float(np.dot(placed, placed)))
        weighted_norm += count * norm
        min_norm = min(min_norm, norm)
        powered, used = _power(coefficients, count)
        if spectrum is None:
            spectrum, mults = powered, used
        else:
            spectrum *= powered
            mults += used + 1
        log_finite += count * math.log1p(-pld.infinity_mass)
    raw = sp_fft.irfft(spectrum, size)
    composed = np.roll(np.maximum(raw, 0.0), -(k_lo % size))  # clamping keeps ‖ŷ − y‖₂ ≤ B, as y ≥ 0
    roundoff = _roundoff_bound(size, total, log_m, weighted_norm, min_norm, mults)
    infinity_mass = -math.expm1(log_finite)
    if not tilt:
        if r_in:  # inputs within a relative r_in of the placed ones: y within a factor (1 ± r_in)^T
            log_factor = total * math.log1p(-min(r_in, 0.5)) * (-1.0 if pessimistic else 1.0)
            if not (r_in < 0.5 and abs(log_factor) < 1.0):
                return DiscretePld(step, k_lo, composed, infinity_mass, slack, pessimistic, math.inf)
            composed *= math.exp(log_factor)
            roundoff *= math.exp(log_factor)
        return DiscretePld(step, k_lo, composed, infinity_mass, slack, pessimistic, roundoff)
    # back to P: multiply by E[e^{θL}]^T e^{−θℓ}, capped at 1 (no bin can hold more than all the mass)
    tilted_back = tilt * (k_lo + np.arange(size)) * step
    with np.errstate(divide="ignore"):
        log_back = np.log(composed) + log_scale - tilted_back
    finite = log_back[np.isfinite(log_back)]
    r_out = _exp_error(float(np.abs(finite).max(initial=0.0)) + abs(log_scale) + float(np.abs(tilted_back).max()))
    inflate = -total * math.log1p(-min(r_in, 0.5)) - math.log1p(-min(r_out, 0.5))
    if not (r_in < 0.5 and r_out < 0.5 and inflate < 1.0):  # the tilt's own round-off would swamp the answer
        return DiscretePld(step, k_lo, composed, infinity_mass, slack, pessimistic, math.inf, (0.0, 0.0), floor)
    with np.errstate(over="ignore"):
        pmf = np.exp(np.minimum(log_back + inflate, 0.0))
    roundoff *= math.exp(inflate - math.log1p(-r_out))
    return DiscretePld(step, k_lo, pmf, infinity_mass, slack, pessimistic, roundoff, (log_scale, tilt), floor)


def _roundoff_bound(size: int, total: int, log_m: float, weighted_norm: float, min_norm: float, mults: int) -> float:
    """B ≥ ‖ŷ − y‖₂ for :func:`compose` (module docstring): B = (1 + ε_F)(1 + u)(1 + ρ)(Y₂ + E) − Y₂ with
    E = √2 ε_F M^{n−1} Σ_i T_i ‖a_i‖₂ (+ 2^-1021 M^{n−1} per multiplication for underflow), Y₂ = M^{n−1} min_i ‖a_i‖₂
    and ρ = (1 + √2γ₂)^E_mults − 1; ``inf`` if it overflows or is ≥ 1 (then it bounds nothing useful)."""
    eps_f = fft_relative_error(size)
    log_growth = (total - 1) * log_m
    if log_growth > 700.0:
        return math.inf
    growth = math.exp(log_growth)
    rho_log = mults * math.log1p(_COMPLEX_MULT)
    if rho_log > 700.0:
        return math.inf
    factor = math.expm1(math.log1p(eps_f) + math.log1p(_UNIT_ROUNDOFF) + rho_log)
    error = math.sqrt(2.0) * eps_f * growth * float(weighted_norm)  # Python floats: overflow gives inf, no warning
    error += mults * growth * 2.0**-1021  # underflow: an absolute error below 2^-1022 per multiplication
    bound = growth * float(min_norm) * factor + (1.0 + factor) * error
    return bound if bound < 1.0 else math.inf  # ‖ŷ − y‖₂ ≥ 1 bounds nothing: every query is vacuous


class SubsampledGaussianPld:
    """The composed PLD of DP-SGD phases (subsampled Gaussian), in every direction that needs accounting.

    Poisson phases (add/remove) are composed in the "remove" and the "add" direction and the worse is reported;
    without-replacement phases (replace-one) have one symmetric PLD (:func:`without_replacement_gaussian_pld`).
    The two kinds cannot be mixed (they assume different neighbouring relations), except that a phase with
    q = 1, the plain Gaussian mechanism, is symmetric and joins either. With ``pessimistic=True``
    (default) ``epsilon(delta)`` and ``delta(eps)`` are upper bounds of the true values (connect-the-dots,
    Doroshenko et al. 2022; proven round-off bound), otherwise lower bounds. When the round-off allowance would
    weigh more than 0.1 % of the δ asked about (tiny δ, many steps), the direction is composed again with an
    exponential tilt that resolves that δ (see :func:`compose`) and the smaller of the two upper bounds is
    returned. A PLD that cannot be represented usefully (e.g. 10¹⁵ steps, where the FFT round-off bound alone
    exceeds any δ) answers ε = ∞ and δ = 1 (pessimistic), never a small number.

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
        if not phases or not all(isinstance(p, Phase) for p in phases):
            raise InvalidArgumentError("phases", phases, "a non-empty sequence of Phase")
        self.symmetric = any(p.sampling == "without_replacement" for p in phases)
        if self.symmetric and any(p.sampling == "poisson" and p.q < 1.0 for p in phases):
            raise InvalidArgumentError(
                "phases", phases, "phases of one neighbouring relation (Poisson with q < 1 is add/remove only)"
            )
        interval = default_interval(phases) if interval is None else check.positive("interval", interval)
        self.phases = tuple(phases)
        self.pessimistic = pessimistic
        self.tail_mass = check.open_unit("tail_mass", tail_mass)
        directions = ("replace_one",) if self.symmetric else _DIRECTIONS
        widest = 0.0
        for p in self.phases:
            for d in ("remove",) if self.symmetric else _DIRECTIONS:
                low, high = _loss_range(p.q, p.sigma, d, tail_mass)
                widest = max(widest, 2.0 * max(abs(low), abs(high)) if self.symmetric else high - low)
        interval = max(interval, widest / MAX_GRID_POINTS)
        self.by_direction: dict[str, DiscretePld | None] = {}
        for _ in range(_MAX_COARSENINGS if math.isfinite(interval) else 0):
            try:
                self.steps = {d: [(self._single(p, d, interval), p.count) for p in self.phases] for d in directions}
                self.by_direction = {d: compose(steps, tail_mass=tail_mass) for d, steps in self.steps.items()}
                break
            except _GridTooLarge as too_large:
                if not math.isfinite(too_large.factor):
                    break
                interval *= 1.05 * too_large.factor
        else:
            self.by_direction = {}
        if not self.by_direction:  # no window fits: a vacuous PLD (ε = ∞, δ = 1), never an optimistic one
            self.by_direction = {d: None for d in directions}
        self.interval = interval

    def _single(self, phase: Phase, direction: str, interval: float) -> DiscretePld:
        options = dict(interval=interval, pessimistic=self.pessimistic, tail_mass=self.tail_mass)
        if phase.sampling == "without_replacement":  # (a Poisson phase with q = 1 is symmetric: "remove" serves)
            return without_replacement_gaussian_pld(phase.q, phase.sigma, **options)  # type: ignore[arg-type]
        direction = direction if direction in _DIRECTIONS else "remove"
        return subsampled_gaussian_pld(phase.q, phase.sigma, direction, **options)  # type: ignore[arg-type]

    @property
    def vacuous(self) -> bool:
        """Whether no composition could be represented (queries answer ε = ∞, δ = 1 if pessimistic)."""
        return any(pld is None for pld in self.by_direction.values())

    def _tilted(self, direction: str, centre: float) -> DiscretePld | None:
        """The direction composed to resolve the losses around ``centre`` (see :func:`compose`), on a coarser grid
        if the tilted window does not fit in :data:`MAX_GRID_POINTS` points (still a valid bound)."""
        if not self.pessimistic or not math.isfinite(centre):
            return None
        steps, interval = self.steps[direction], self.interval
        for _ in range(4):
            try:
                return compose(steps, tail_mass=self.tail_mass, centre=centre)
            except _GridTooLarge as too_large:
                if not math.isfinite(too_large.factor):
                    return None
                interval *= 1.05 * too_large.factor
                steps = [(self._single(p, direction, interval), p.count) for p in self.phases]
        return None

    def epsilon(self, delta: float) -> float:
        """ε(δ) of the worse direction (an upper bound if pessimistic); ``inf`` if δ is below the truncated mass
        and round-off allowances, or the PLD is vacuous."""
        delta = check.open_unit("delta", delta)
        worst = 0.0
        with np.errstate(all="ignore"):
            for direction, pld in self.by_direction.items():
                if pld is None:
                    return math.inf if self.pessimistic else 0.0
                eps = pld.epsilon(delta)
                if pld.roundoff_above(-math.inf) > _ROUNDOFF_SHARE * delta:  # the largest allowance, then the one
                    centre = pld.estimate(delta)  # where the answer is
                    if pld.roundoff_above(min(centre, 1e300)) > _ROUNDOFF_SHARE * delta:
                        tilted = self._tilted(direction, centre)
                        eps = eps if tilted is None else min(eps, tilted.epsilon(delta))
                worst = max(worst, eps)
        return worst

    def delta(self, eps: float) -> float:
        """δ(ε) of the worse direction (an upper bound if pessimistic; 1 if the PLD is vacuous)."""
        if not (eps >= 0.0 and math.isfinite(eps)):
            raise InvalidArgumentError("eps", eps, "a finite number >= 0")
        worst = 0.0
        with np.errstate(all="ignore"):
            for direction, pld in self.by_direction.items():
                if pld is None:
                    return 1.0 if self.pessimistic else 0.0
                delta = pld.delta(eps)
                if delta > 0.0 and pld.roundoff_above(eps) > _ROUNDOFF_SHARE * delta:
                    tilted = self._tilted(direction, eps)
                    delta = delta if tilted is None else min(delta, tilted.delta(eps))
                worst = max(worst, delta)
        return worst
