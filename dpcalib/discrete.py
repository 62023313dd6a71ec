"""Planning distributed discrete noise: a secure sum of integer vectors in Z_(2^bits) with Skellam noise.

The client pipeline this plans for (Kairouz, Liu, Steinke 2021, "The distributed discrete Gaussian mechanism for
federated learning with secure aggregation", ICML 2021; Agarwal, Kairouz, Liu 2021, the Skellam mechanism): each
client clips its vector x (length ``dim``) to ℓ2 norm ``clip``, zero-pads it to ``d = 2^⌈log2 dim⌉``, multiplies it by
``scale``, rotates it by the randomised Hadamard transform HD (public random signs D; ℓ2 norm unchanged), rounds
it to integers by conditional randomised rounding, adds its noise share ``Sk(mu/t)`` and reduces modulo 2^bits.
The server adds the vectors modulo 2^bits, lifts the result to [−2^(bits−1), 2^(bits−1)), un-rotates and divides
by ``scale``.

**Sensitivity.** Randomised rounding of a vector y with ‖y‖₂ ≤ c to integers gives, with probability ≥ 1 − β,

    ‖ỹ‖₂² ≤ c² + d/4 + √(2 log(1/β)) (c + √d/2),     and always ‖ỹ‖₂ ≤ c + √d

(Kairouz, Liu, Steinke 2021, Sec. 4, conditional randomised rounding): *conditional* rounding
draws the rounding again until the bound :func:`rounded_l2_bound` holds, so every client's integer vector meets it
deterministically (β only sets the expected number of draws, at most 1/(1−β)); the accounting uses no other
property of the rounding. An integer vector's ℓ1 norm is at most √d times its ℓ2 norm and at most its squared ℓ2
norm (|v_i| ≤ v_i² for integers): :func:`rounded_l1_bound`, the ℓ1 bound AKL 2021 account with.

**Wrap-around.** The lifted sum equals the integer sum unless some coordinate leaves [−2^(bits−1), 2^(bits−1)).
Coordinate i of the sum of n clients is Y_i + R_i + N_i: Y = scale·HD(Σ x) with ‖Σ x‖₂ ≤ n·clip, so over the
random signs Y_i = Σ_j H_ij D_j (scale·Σx)_j, a Rademacher sum with Σ_j H_ij² (scale·Σx)_j² ≤ (scale·n·clip)²/d =: v,
is sub-Gaussian with variance proxy v (Hoeffding's lemma);
|R_i| < n (each client's rounding moves a coordinate by less than 1); N_i is the total Skellam noise of variance V,
with E e^{λN} = exp(V (cosh λ − 1)). A Chernoff bound and a union bound over the d coordinates give

    P(wrap) ≤ 2d · min_λ exp(λ² v/2 + V (cosh λ − 1) − λ T),   T = 2^(bits−1) − n

(:func:`wrap_probability`). A wrap only spoils the round's sum; the release (the sum modulo 2^bits) is
post-processing of the accounted integer sum, so it costs no privacy.

:func:`plan_skellam` chooses the largest ``scale`` (the finest resolution) whose wrap bound is at most ``wrap``,
with the smallest Skellam variance meeting (ε, δ) at that scale under the accountant.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .calibrate import _check_target, calibrate_sigma_for
from .errors import InvalidArgumentError
from .events import Event, PoissonSampled, Repeated, SampledWithoutReplacement, Skellam
from . import validation as check

__all__ = [
    "DEFAULT_BETA",
    "BITS_RANGE",
    "padded_dim",
    "rounded_l2_bound",
    "rounded_l1_bound",
    "wrap_probability",
    "SkellamPlan",
    "plan_skellam",
    "skellam_event",
]

#: β of the conditional rounding (as in Kairouz, Liu, Steinke 2021's experiments): at most 1/(1 − e^{-1/2}) ≈ 2.5
#: rounding draws are expected per client.
DEFAULT_BETA = math.exp(-0.5)
#: bits per coordinate of the ring Z_(2^bits) (62 keeps every lifted sum and its arithmetic inside int64).
BITS_RANGE = (2, 62)
# relative tolerance of the scale search (in log scale) and of the variance calibration at each scale
_SCALE_RTOL = 1e-3
_SIGMA_RTOL = 1e-5


def padded_dim(dim: int) -> int:
    """The length the Hadamard transform works on: the smallest power of two ≥ ``dim``."""
    dim = check.size("dim", dim)
    return 1 << (dim - 1).bit_length()


def rounded_l2_bound(l2: float, dim: int, beta: float = DEFAULT_BETA) -> float:
    """The ℓ2 norm bound that conditional randomised rounding enforces on an integer vector rounded from a
    vector of norm ≤ ``l2`` (in integer units) padded to :func:`padded_dim` ``(dim)`` coordinates (KLS 2021,
    see the module docstring)."""
    c = check.non_negative("l2", l2)
    d = float(padded_dim(dim))
    beta = check.open_unit("beta", beta)
    squared = c * c + d / 4.0 + math.sqrt(2.0 * math.log(1.0 / beta)) * (c + math.sqrt(d) / 2.0)
    return min(c + math.sqrt(d), math.sqrt(squared))


def rounded_l1_bound(l2_bound: float, dim: int) -> float:
    """The ℓ1 norm bound of an integer vector of :func:`padded_dim` ``(dim)`` coordinates with ℓ2 norm ≤
    ``l2_bound``: min(√d·Δ2, Δ2²) (Cauchy–Schwarz; |v_i| ≤ v_i² for integers)."""
    l2 = check.positive("l2_bound", l2_bound)
    return min(math.sqrt(padded_dim(dim)) * l2, l2 * l2)


def wrap_probability(*, bits: int, scale: float, clip: float, dim: int, clients: int, variance: float) -> float:
    """An upper bound on the probability that some coordinate of the secure sum of ``clients`` vectors wraps
    around modulo 2^``bits`` (see the module docstring): ``scale`` and ``clip`` as in the pipeline, ``dim`` the
    vector length before padding, ``variance`` the total Skellam variance per coordinate of the sum (all shares
    present). 1.0 when the rounding alone may reach the range."""
    from scipy.optimize import brentq  # imported on first use: keeps `import dpcalib` fast

    bits = check.count("bits", bits, *BITS_RANGE)
    scale = check.positive("scale", scale)
    clip = check.positive("clip", clip)
    d = padded_dim(dim)
    n = check.size("clients", clients)
    noise = check.non_negative("variance", variance)
    room = 2.0 ** (bits - 1) - n
    if room <= 0.0:
        return 1.0
    v = (scale * n * clip) ** 2 / d

    def exponent(lam: float) -> float:
        return lam * lam * v / 2.0 + noise * (math.cosh(lam) - 1.0) - lam * room

    top = room / v if noise == 0.0 else min(room / v, math.asinh(room / noise))
    slope = lambda lam: lam * v + noise * math.sinh(lam) - room  # noqa: E731  (increasing; ≥ 0 at `top`)
    lam = top if slope(top) <= 0.0 else brentq(slope, 0.0, top, xtol=1e-12 * top + 1e-300)
    return float(min(1.0, math.exp(math.log(2.0 * d) + exponent(lam))))


@dataclass(frozen=True)
class SkellamPlan:
    """The settings of a distributed Skellam run (:func:`plan_skellam`); every quantity in the integer units of
    the ring after scaling, unless said otherwise.

    Attributes:
        bits, scale, clip, dim: the pipeline (see the module docstring); ``padded_dim`` the Hadamard length.
        clients: the most vectors summed in a round; ``min_survivors``: the dropout floor t.
        l2_sensitivity, l1_sensitivity: the rounded vector's norm bounds (one client's contribution).
        mu: the accounted Skellam variance per coordinate (the floor's: t shares); ``share_variance`` = mu / t,
            what each client adds.
        noise_multiplier: √mu / l2_sensitivity, the Gaussian-equivalent multiplier that was calibrated.
        wrap_probability: the bound of :func:`wrap_probability` with all ``clients`` present.
        round_event: the accounted event of one round; ``event`` that of the whole run (``steps`` rounds);
            ``eps``, ``delta`` its target.
    """

    bits: int
    scale: float
    clip: float
    dim: int
    padded_dim: int
    clients: int
    min_survivors: int
    l2_sensitivity: float
    l1_sensitivity: float
    mu: float
    share_variance: float
    noise_multiplier: float
    wrap_probability: float
    round_event: Event
    steps: int
    eps: float
    delta: float

    @property
    def event(self) -> Event:
        """The accounted event of the whole run: ``steps`` rounds of :attr:`round_event`."""
        return Repeated(self.round_event, self.steps)

    @property
    def noise_std(self) -> float:
        """The accounted noise std per coordinate of the decoded (float) sum: √mu / scale."""
        return math.sqrt(self.mu) / self.scale


def skellam_event(*, mu: float, l1_sensitivity: float, l2_sensitivity: float, q: float = 1.0,
                  population: int | None = None, cohort: int | None = None) -> Event:
    """One round of ``Skellam(mu, l1, l2)``: on a Poisson sample of rate ``q`` (q = 1: no sampling), or, with
    ``population``, on a fixed cohort of exactly ``cohort`` of ``population`` drawn without replacement."""
    noise = Skellam(mu, l1_sensitivity, l2_sensitivity)
    if population is not None:
        return SampledWithoutReplacement(population, cohort, noise)  # type: ignore[arg-type]
    return noise if check.rate("q", q) == 1.0 else PoissonSampled(q, noise)


def plan_skellam(
    *,
    eps: float,
    delta: float,
    steps: int,
    bits: int,
    clip: float,
    dim: int,
    clients: int,
    q: float = 1.0,
    population: int | None = None,
    min_survivors: int | None = None,
    wrap: float = 1e-6,
    beta: float = DEFAULT_BETA,
    accountant: str = "rdp",
    neighbouring: str | None = None,
) -> SkellamPlan:
    """The distributed Skellam plan with the finest scale whose wrap bound is ≤ ``wrap`` and, at that scale, the
    smallest noise variance meeting (``eps``, ``delta``) over ``steps`` rounds of Poisson rate ``q`` (q = 1: every
    client in every round; add/remove) or, with ``population``, of a fixed cohort of exactly ``clients`` of
    ``population`` (replace-one, :func:`dpcalib.skellam.without_replacement_skellam_rdp`).
    ``clients``: the most vectors a round sums; ``min_survivors`` (default ``clients``):
    the fewest a released sum covers, whose shares alone carry the accounted noise. The returned plan's event
    meets the target under the accountant (verified by :func:`dpcalib.calibrate_sigma_for`).

    Raises:
        InvalidArgumentError: a bad argument, or ``bits`` too few for these settings (the message gives the
            fewest bits that suffice, if any up to 62 do).
        UnreachableTargetError: the target cannot be met (or needs no noise) at some scale.
    """
    eps, delta, _ = _check_target(eps, delta, 1e-6)
    q, steps = check.rate("q", q), check.steps("steps", steps)
    clients = check.size("clients", clients)
    if population is not None:
        population = check.size("population", population)
        if q != 1.0 or clients > population:
            raise InvalidArgumentError("population", population, f">= clients={clients}, with q omitted (a fixed "
                                       "cohort of clients out of population)")
        if neighbouring not in (None, "replace_one"):
            raise InvalidArgumentError("neighbouring", neighbouring, "'replace_one' (or omitted) with a fixed cohort")
        neighbouring = "replace_one"
    bits = check.count("bits", bits, *BITS_RANGE)
    clip = check.positive("clip", clip)
    dim = check.size("dim", dim)
    round_of = dict(q=q, population=population, cohort=clients)
    floor = clients if min_survivors is None else check.count("min_survivors", min_survivors, 1, clients)
    wrap = check.open_unit("wrap", wrap)
    beta = check.open_unit("beta", beta)
    options = {} if neighbouring is None else {"neighbouring": neighbouring}

    def plan_at(scale: float, ring_bits: int = bits) -> SkellamPlan:
        l2 = rounded_l2_bound(scale * clip, dim, beta)
        l1 = rounded_l1_bound(l2, dim)
        sigma = calibrate_sigma_for(
            lambda s: Repeated(skellam_event(mu=(s * l2) ** 2, l1_sensitivity=l1, l2_sensitivity=l2, **round_of), steps),
            eps=eps, delta=delta, accountant=accountant, rtol=_SIGMA_RTOL, **options,
        )
        mu = (sigma * l2) ** 2
        chance = wrap_probability(bits=ring_bits, scale=scale, clip=clip, dim=dim, clients=clients,
                                  variance=mu * clients / floor)
        return SkellamPlan(ring_bits, scale, clip, dim, padded_dim(dim), clients, floor, l2, l1, mu, mu / floor,
                           sigma, chance,
                           skellam_event(mu=mu, l1_sensitivity=l1, l2_sensitivity=l2, **round_of), steps, eps, delta)

    good = plan_at(1.0 / clip)  # the whole vector's norm is one integer unit: the coarsest sensible scale
    if good.wrap_probability > wrap:
        needed = next((b for b in range(bits + 1, BITS_RANGE[1] + 1)
                       if wrap_probability(bits=b, scale=good.scale, clip=clip, dim=dim, clients=clients,
                                           variance=good.mu * clients / floor) <= wrap), None)
        allowed = f">= {needed} for these settings" if needed else f"larger than {BITS_RANGE[1]} for these settings"
        raise InvalidArgumentError("bits", bits, f"{allowed} (at {bits} bits even scale=1/clip wraps with "
                                   f"probability up to {good.wrap_probability:.3g} > wrap={wrap:g})")
    bad = plan_at(2.0 * good.scale)
    while bad.wrap_probability <= wrap:
        good, bad = bad, plan_at(2.0 * bad.scale)
    while math.log(bad.scale / good.scale) > _SCALE_RTOL:
        middle = plan_at(math.sqrt(good.scale * bad.scale))
        good, bad = (middle, bad) if middle.wrap_probability <= wrap else (good, middle)
    return good
