"""Rényi-DP curves of the (subsampled) Gaussian mechanism, in log space and vectorised over orders.

Every function takes an array of orders α > 1 and returns the RDP ε(α) of *one* run of the mechanism at each
order (Mironov 2017, "Rényi differential privacy"). Composition adds curves (Mironov 2017, Prop. 1).

Notation: ``sigma`` is the noise std per unit of L2 sensitivity (the accountants divide the user's noise
multiplier by the relation's sensitivity, :meth:`dpcalib.accountant.Accountant.unit_sigma`), ``s = 1/sigma``,
``r(z) = exp((2z - 1) / (2 sigma^2))`` the likelihood ratio N(1, σ²)/N(0, σ²), and for the Poisson-subsampled
Gaussian with rate q (Mironov, Talwar, Zhang 2019, "Rényi differential privacy of the sampled Gaussian
mechanism", eq. for A_α)

    A_α = E_{z ~ N(0, σ²)} [ (1 - q + q r(z))^α ],        ε(α) = log(A_α) / (α - 1).

All three ways of computing A_α below return ``log(A_α - 1)`` first and then ``log A_α = log1p(A_α - 1)``, so that
tiny curves (q = 1e-8, σ = 1e5: A_α - 1 ≈ 1e-26) keep full relative precision instead of rounding to 0.
"""

from __future__ import annotations

import functools
import math

import numpy as np
from numpy.typing import ArrayLike, NDArray

from .errors import InvalidArgumentError
from . import validation as check

__all__ = [
    "DEFAULT_ORDERS",
    "MIN_ORDER",
    "gaussian_rdp",
    "poisson_gaussian_rdp",
    "poisson_curve",
    "without_replacement_gaussian_rdp",
    "check_orders",
]

#: dp_accounting 0.6.0's default grid (1.1 … 10.9 by 0.1, 11 … 63, 128 … 1024) extended by 2048 … 8192.
#: :func:`dpcalib.conversion.optimise_epsilon` refines around the best of these, so the reported ε is never
#: larger than dp_accounting's (or Opacus') default grid would give for the same curve.
DEFAULT_ORDERS: NDArray[np.float64] = np.array(
    [1.0 + x / 10.0 for x in range(1, 100)] + list(range(11, 64)) + [128, 256, 512, 1024, 2048, 4096, 8192],
    dtype=np.float64,
)
DEFAULT_ORDERS.setflags(write=False)

#: The smallest order the refinement explores below the grid (as in dp_accounting, orders closer to 1 are not used).
MIN_ORDER = 1.01

# Fractional orders (Mironov–Talwar–Zhang series): terms summed beyond ceil(α) + 1, and the number of
# repeated averagings of the last partial sums (Euler transform of the alternating tail).
_TAIL_TERMS = 16
_EULER_AVERAGINGS = 10
_EULER_WEIGHTS = np.array([math.comb(_EULER_AVERAGINGS, j) for j in range(_EULER_AVERAGINGS + 1)]) / 2.0**_EULER_AVERAGINGS
# Small-noise-difference regime (σ ≥ 1/_MOMENT_MAX_S and α q / σ ≤ _MOMENT_MAX_AQS): moment series.
_MOMENT_MAX_S = 0.05
_MOMENT_MAX_AQS = 0.1
_MOMENT_TERMS = 24
_HERMITE_NODES = 60
# Integer orders up to this one share a per-q table of their binomial terms (see _integer_table).
_TABLE_TOP = 64
_SMALLEST_POSITIVE = float(np.finfo(np.float64).smallest_subnormal)


def check_orders(orders: ArrayLike) -> NDArray[np.float64]:
    """Return ``orders`` as a 1-d float array, raising :class:`InvalidArgumentError` unless every order is finite and > 1."""
    raw = np.asarray(orders)
    if raw.dtype.kind not in "iuf":  # booleans, strings, objects: not orders
        raise InvalidArgumentError("orders", orders, "a non-empty sequence of finite numbers > 1")
    arr = np.atleast_1d(raw.astype(np.float64))
    if arr.ndim != 1 or arr.size == 0 or not np.all(np.isfinite(arr)) or np.any(arr <= 1.0):
        raise InvalidArgumentError("orders", orders, "a non-empty sequence of finite numbers > 1")
    return arr


def gaussian_rdp(sigma: float, orders: ArrayLike) -> NDArray[np.float64]:
    """RDP of the Gaussian mechanism with sensitivity 1 and noise multiplier ``sigma``: α / (2σ²) (Mironov 2017, Prop. 7)."""
    sigma = check.noise_multiplier("sigma", sigma)
    return check_orders(orders) / (2.0 * sigma * sigma)


def poisson_gaussian_rdp(q: float, sigma: float, orders: ArrayLike) -> NDArray[np.float64]:
    """RDP of the Poisson-subsampled Gaussian mechanism under add/remove neighbouring, exactly.

    Integer orders: the binomial expansion of A_α (Mironov, Talwar, Zhang 2019, Sec. 3.3), written as
    ``A_α - 1 = Σ_{k=2}^{α} C(α,k) (1-q)^{α-k} q^k (exp(k(k-1)/(2σ²)) - 1)``, a sum of positive terms.
    Fractional orders: the two-series formula of the same paper (Sec. 3.3), with the signs of the generalised
    binomial coefficients kept, or, when the two Gaussians are close (σ ≥ 20, αq/σ ≤ 0.1), the moment series
    ``A_α - 1 = Σ_k C(α,k) q^k E[(r - 1)^k]`` (same paper, Sec. 3.2). q = 1 is the Gaussian α/(2σ²).
    """
    return poisson_curve(check.rate("q", q), check.noise_multiplier("sigma", sigma), check_orders(orders))


def poisson_curve(q: float, sigma: float, alpha: NDArray[np.float64]) -> NDArray[np.float64]:
    """:func:`poisson_gaussian_rdp` for arguments already validated (a float q in (0, 1], a float σ > 0, and a
    1-d float array of orders > 1): the accountants' inner loop, which evaluates the same curve many times."""
    if q == 1.0:
        return alpha / (2.0 * sigma * sigma)
    integer = alpha == np.round(alpha)
    s = 1.0 / sigma
    if integer.all():
        log_am1 = _log_a_minus_1_int(q, sigma, alpha)
    elif s > _MOMENT_MAX_S and not integer.any():  # the order search's fractional rounds: one series call
        log_am1 = _log_a_minus_1_frac(q, sigma, alpha)
    else:
        log_am1 = np.empty_like(alpha)
        if integer.any():
            log_am1[integer] = _log_a_minus_1_int(q, sigma, alpha[integer])
        frac = ~integer
        moment = frac & (s <= _MOMENT_MAX_S) & (alpha * q * s <= _MOMENT_MAX_AQS)
        series = frac & ~moment
        if moment.any():
            log_am1[moment] = _log_a_minus_1_moments(q, sigma, alpha[moment])
        if series.any():
            log_am1[series] = _log_a_minus_1_frac(q, sigma, alpha[series])
    # a true RDP > 0 below the smallest double (q = 1e-181, σ = 1e6) rounds up to it, never down to 0: a curve of 0
    # would let the conversion certify ε = 0 (the KL rule) where the true δ(0) is 3e-188
    return np.maximum(np.logaddexp(0.0, log_am1) / (alpha - 1.0), _SMALLEST_POSITIVE)


def without_replacement_gaussian_rdp(n: int, batch: int, sigma: float, orders: ArrayLike) -> NDArray[np.float64]:
    """RDP upper bound of the Gaussian mechanism on a uniformly random batch of ``batch`` out of ``n`` records.

    Replace-one neighbouring; ``sigma`` is the noise std per unit of L2 sensitivity (the accountants pass σ/2 for
    a sum of contributions clipped to C: replacing one moves it by up to 2C, see
    :meth:`dpcalib.accountant.Accountant.unit_sigma`). Integer orders α ≥ 2: Wang, Balle, Kasiviswanathan 2019
    ("Subsampled Rényi differential privacy and analytical moments accountant"), Theorem 9 with γ = batch/n,
    ε(j) = j/(2σ²) and
    ε(∞) = ∞:  ``A_α ≤ 1 + γ² C(α,2) min(4(e^{ε(2)} - 1), 2 e^{ε(2)}) + Σ_{j≥3} 2 γ^j C(α,j) e^{(j-1)ε(j)}``.
    Fractional orders: the cumulant generating function (α - 1)ε(α) is convex, so linear interpolation of the
    bounds at ⌊α⌋ and ⌈α⌉ is an upper bound (same paper, Corollary 10; (α - 1)ε(α) = 0 at α = 1).
    """
    n = check.size("n", n)
    batch = check.size("batch", batch)
    if batch > n:
        raise InvalidArgumentError("batch", batch, f"an integer in [1, n={n}]")
    sigma = check.noise_multiplier("sigma", sigma)
    alpha = check_orders(orders)
    if batch == n:
        return alpha / (2.0 * sigma * sigma)
    gamma = batch / n
    lo = np.floor(alpha)
    hi = np.ceil(alpha)
    points = np.unique(np.concatenate([lo, hi]))
    points = points[points >= 2]
    cgf = dict(zip(points.tolist(), _wor_log_a_int(gamma, sigma, points).tolist()))
    cgf[1.0] = 0.0
    cgf_lo = np.array([cgf[a] for a in lo.tolist()])
    cgf_hi = np.array([cgf[a] for a in hi.tolist()])
    t = alpha - lo
    return np.maximum(((1.0 - t) * cgf_lo + t * cgf_hi) / (alpha - 1.0), _SMALLEST_POSITIVE)  # rounded up, as above


# --------------------------------------------------------------------------------------------------- helpers


def _log_expm1(x: NDArray[np.float64]) -> NDArray[np.float64]:
    """log(exp(x) - 1) for x > 0 without overflow or loss of precision."""
    small = np.minimum(x, 1.0)
    return np.where(x > 1.0, x + np.log1p(-np.exp(-np.maximum(x, 1.0))), np.log(np.expm1(small)))


def _segments(alpha: NDArray[np.float64], first: int) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.intp]]:
    """Flattened (α, k) pairs for k = first … α of each integer α, and the start of each α's segment."""
    a = alpha.astype(np.int64)
    lengths = a - first + 1
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.intp)
    total = int(lengths.sum())
    k = np.arange(total, dtype=np.float64) - np.repeat(starts, lengths) + first
    return np.repeat(alpha, lengths), k, starts


def _segment_logsumexp(terms: NDArray[np.float64], starts: NDArray[np.intp]) -> NDArray[np.float64]:
    top = np.maximum.reduceat(terms, starts)
    lengths = np.diff(np.append(starts, terms.size))
    return top + np.log(np.add.reduceat(np.exp(terms - np.repeat(top, lengths)), starts))


def _log_binom(alpha: NDArray[np.float64], k: NDArray[np.float64]) -> NDArray[np.float64]:
    """log |C(α, k)| for real α and integer k ≥ 0 (scipy's gammaln is log|Γ|)."""
    from scipy import special  # imported on first use: keeps `import dpcalib` and `dpcalib --help` fast

    return special.gammaln(alpha + 1.0) - special.gammaln(k + 1.0) - special.gammaln(alpha - k + 1.0)


def _log_a_minus_1_int(q: float, sigma: float, alpha: NDArray[np.float64]) -> NDArray[np.float64]:
    """log(A_α - 1) at integer orders: a log-sum-exp of positive binomial terms (see poisson_gaussian_rdp).

    Orders up to :data:`_TABLE_TOP` (the ones every order search evaluates) use :func:`_integer_table`, which
    holds everything but the σ-dependent factor exp(k(k-1)/(2σ²)) - 1 for all of them at once."""
    if alpha.max() <= _TABLE_TOP:
        k_index, base, starts = _integer_table(q)
        kk = np.arange(2.0, _TABLE_TOP + 1.0)
        terms = base + _log_expm1(kk * (kk - 1.0) / (2.0 * sigma * sigma))[k_index]
        return _segment_logsumexp(terms, starts)[alpha.astype(np.intp) - 2]
    a, k, starts = _segments(alpha, 2)
    terms = (
        _log_binom(a, k)
        + (a - k) * math.log1p(-q)
        + k * math.log(q)
        + _log_expm1(k * (k - 1.0) / (2.0 * sigma * sigma))
    )
    return _segment_logsumexp(terms, starts)


@functools.lru_cache(maxsize=32)
def _integer_table(q: float) -> tuple[NDArray[np.intp], NDArray[np.float64], NDArray[np.intp]]:
    """For the integer orders 2 … _TABLE_TOP at rate q: the flattened (α, k) pairs' index k - 2, their σ-free part
    log C(α,k) + (α-k) log(1-q) + k log q, and each order's segment start (built once per q)."""
    a, k, starts = _segments(np.arange(2.0, _TABLE_TOP + 1.0), 2)
    base = _log_binom(a, k) + (a - k) * math.log1p(-q) + k * math.log(q)
    for array in (base, starts):
        array.setflags(write=False)
    return (k - 2.0).astype(np.intp), base, starts


def _log_w_m_phi(x: NDArray[np.float64], t: NDArray[np.float64], z0: float, sigma: float, log_w: float) -> NDArray[np.float64]:
    """log( w^x · exp(x(x-1)/(2σ²)) · Φ(t) ) where t = ±(z0 - x)/σ and w = q/(1-q).

    Uses the identity x log w + x(x-1)/(2σ²) = t²/2 - z0²/(2σ²) for the Φ(t) < 1/2 side, where
    e^{t²/2} Φ(t) = erfcx(-t/√2)/2 stays accurate however far in the tail t lies.
    """
    from scipy import special

    # both forms everywhere, then the accurate one of each (erfcx overflows to inf on the t ≥ 0 side, unused)
    direct = x * (log_w + (x - 1.0) * (0.5 / (sigma * sigma)))
    direct += special.log_ndtr(t)
    tail = np.log(special.erfcx(t * -math.sqrt(0.5)))
    tail += math.log(0.5) - z0 * z0 / (2.0 * sigma * sigma)
    return np.where(t >= 0.0, direct, tail)


def _log_a_minus_1_frac(q: float, sigma: float, alpha: NDArray[np.float64]) -> NDArray[np.float64]:
    """log(A_α - 1) at fractional orders by the two series of Mironov, Talwar, Zhang 2019 (Sec. 3.3).

    Split the integral at z0 = σ² log(1/q - 1) + 1/2, where (1 - q) = q r(z). With w = q/(1-q),
    M_x = exp(x(x-1)/(2σ²)) and c_k = C(α, k) (signed: negative for odd k - ⌈α⌉ ≥ 1):

        A_α = (1-q)^α Σ_{k≥0} c_k [ w^k M_k Φ((z0 - k)/σ) + w^{α-k} M_{α-k} Φ((α - k - z0)/σ) ].

    The k = 0, 1 terms of the first series equal (1-q)^{α-1}(1 + (α-1)q) minus their Φ-complements, so
    A_α - 1 = B - (1-q)^α [Φ̄(z0/σ) + α w Φ̄((z0-1)/σ)] + (rest), B = (1-q)^{α-1}(1 + (α-1)q) - 1, which keeps
    relative precision when A_α - 1 is tiny. The alternating tail (terms ~ k^{-α-2}) is summed to ⌈α⌉ + 28
    terms and its last 11 partial sums averaged 10 times (Euler transform), which is exact to ~1e-10 relative
    even for α = 1.01 and q near 1 (tested against mpmath quadrature of the defining integral; summing 32 more
    terms changes no value by more than 1e-11 relative, the rounding of the sum). The terms of both series are
    weighted and summed in one product (:func:`_euler_weights`).
    """
    with np.errstate(divide="ignore", invalid="ignore"):  # log 0 = -inf is meant (equal terms, B = 0)
        return _log_a_minus_1_frac_terms(q, sigma, alpha)


def _log_a_minus_1_frac_terms(q: float, sigma: float, alpha: NDArray[np.float64]) -> NDArray[np.float64]:
    n_terms = int(math.ceil(alpha.max())) + 2 + _TAIL_TERMS + _EULER_AVERAGINGS
    # the cached rows are built 64 terms at a time, so that one (q, σ) serves every order near the last ones
    first, log_k, z0 = _first_series(q, sigma, -(-n_terms // 64) * 64)
    log_k = log_k[:, :n_terms]
    a = alpha[:, None]
    log_1mq = math.log1p(-q)
    # both series' log-terms side by side: [:, 0] the first (x = k, with -Φ̄ for k = 0, 1: its σ-only part is
    # cached), [:, 1] the second (x = α - k); C(α,k) = Π_{i=1}^{k} (α - i + 1)/i, its log-magnitude and its sign
    # (which flips with every i > α + 1)
    x = a - log_k[0]  # α - k, k = 0 … n_terms - 1
    factors = x[:, :-1]  # α - i + 1 for i = 1 … n_terms - 1
    terms = np.empty((alpha.size, 2, n_terms))
    log_c = terms[:, 0]
    log_c[:, 0] = a[:, 0] * log_1mq
    np.cumsum(np.log(np.abs(factors)) - log_k[1, 1:], axis=1, out=log_c[:, 1:])
    log_c[:, 1:] += log_c[:, :1]
    sign_c = np.ones(x.shape)
    np.cumprod(np.sign(factors), axis=1, out=sign_c[:, 1:])
    terms[:, 1] = _log_w_m_phi(x, (x - z0) / sigma, z0, sigma, math.log(q) - log_1mq)
    terms[:, 1] += log_c
    log_c += first[:n_terms]
    log_b = _log_b(q, alpha)
    top = np.maximum(terms.max(axis=(1, 2)), log_b)
    np.subtract(terms, top[:, None, None], out=terms)
    np.exp(terms, out=terms)
    terms *= sign_c[:, None, :]
    # the Euler transform (the last 11 partial sums averaged 10 times) as one weighted sum of the terms, and B < 0
    total = terms.reshape(alpha.size, 2 * n_terms) @ _euler_weights(n_terms) - np.exp(log_b - top)
    return top + np.log(np.maximum(total, 0.0))


@functools.lru_cache(maxsize=16)
def _euler_weights(n_terms: int) -> NDArray[np.float64]:
    """The weights of the 2 × ``n_terms`` terms of :func:`_log_a_minus_1_frac_terms` (first series, then second)
    in its sum: each term's weight in the average of the last m + 1 partial sums, m times repeated (weights
    C(m, j)/2^m on the partial sums), i.e. 1 up to the first averaged partial sum, then Σ_{j ≥ i} C(m, j)/2^m;
    times the sign -1 of the first series' k = 0, 1 terms (their Φ-complements)."""
    weights = np.ones((2, n_terms))
    weights[:, n_terms - _EULER_AVERAGINGS:] = np.cumsum(_EULER_WEIGHTS[::-1])[::-1][1:]
    weights[0, :2] = -1.0
    weights = weights.ravel()
    weights.setflags(write=False)
    return weights


@functools.lru_cache(maxsize=8)
def _first_series(
    q: float, sigma: float, n_terms: int
) -> tuple[NDArray[np.float64], NDArray[np.float64], float]:
    """The order-independent parts of :func:`_log_a_minus_1_frac` at (q, σ), kept for the next order (an order
    search evaluates one (q, σ) at many orders): log(w^k M_k Φ((z0 - k)/σ)) for k < n_terms, with the
    Φ-complement instead for k = 0, 1 (whose sign -1 :func:`_euler_weights` carries); the rows k and log k;
    the split point z0."""
    log_w = math.log(q) - math.log1p(-q)
    z0 = sigma * sigma * (-log_w) + 0.5
    k = np.arange(n_terms, dtype=np.float64)
    t = (z0 - k) / sigma
    t[:2] = -t[:2]  # k = 0, 1: the complement Φ̄((z0 - k)/σ) = Φ(-(z0 - k)/σ)
    with np.errstate(divide="ignore", invalid="ignore"):
        first = _log_w_m_phi(k, t, z0, sigma, log_w)
        log_k = np.stack([k, np.log(k)])
    for array in (first, log_k):
        array.setflags(write=False)
    return first, log_k, z0


def _log_b(q: float, alpha: NDArray[np.float64]) -> NDArray[np.float64]:
    """log|B| (B itself is -|B|) for B = (1-q)^{α-1} (1 + (α-1)q) - 1 ≤ 0, accurate for tiny q (log 0 = -inf if B = 0).

    log(1 + B) = (α-1) log(1-q) + log(1 + (α-1)q) = Σ_{n≥2} qⁿ/n [(-1)^{n+1} (α-1)ⁿ - (α-1)] (power series,
    used while q < 0.1 and (α-1)q < 0.1, so that the first-order terms cancel exactly).
    """
    am1 = alpha - 1.0
    series = am1 * q < 0.1 if q < 0.1 else np.zeros(am1.shape, dtype=bool)
    if series.all():
        log1pb = _b_series(q, am1)
    else:
        log1pb = am1 * math.log1p(-q) + np.log1p(am1 * q)
        if series.any():
            log1pb[series] = _b_series(q, am1[series])
    return np.log(-np.expm1(log1pb))


def _b_series(q: float, am1: NDArray[np.float64]) -> NDArray[np.float64]:
    """Σ_{n=2}^{39} qⁿ/n [(-1)^{n+1} (α-1)ⁿ - (α-1)] for q < 0.1 and (α-1)q < 0.1 (see :func:`_log_b`)."""
    signed, q_sum = _b_series_coefficients(q)
    u = am1 * q
    return (u[:, None] ** _B_POWERS) @ signed - am1 * q_sum


_B_POWERS = np.arange(2, 40, dtype=np.float64)


@functools.lru_cache(maxsize=32)
def _b_series_coefficients(q: float) -> tuple[NDArray[np.float64], float]:
    """(-1)^{n+1}/n for n = 2 … 39, and Σ_n qⁿ/n over the same n (constants of :func:`_b_series` at rate q)."""
    signed = np.where(_B_POWERS % 2.0 == 0.0, -1.0, 1.0) / _B_POWERS
    signed.setflags(write=False)
    return signed, float(np.sum(q**_B_POWERS / _B_POWERS))


@functools.lru_cache(maxsize=1)
def _hermite() -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Gauss–Hermite nodes and weights for E over N(0, 1) (a constant rule, built once on first use)."""
    nodes, weights = np.polynomial.hermite_e.hermegauss(_HERMITE_NODES)
    return nodes, weights / math.sqrt(2.0 * math.pi)


def _log_a_minus_1_moments(q: float, sigma: float, alpha: NDArray[np.float64]) -> NDArray[np.float64]:
    """log(A_α - 1) by the moment series Σ_{k≥2} C(α,k) q^k E[(r - 1)^k] (Mironov, Talwar, Zhang 2019, Sec. 3.2).

    Used only when σ ≥ 20 and αq/σ ≤ 0.1: then q(r - 1) exceeds 1 in absolute value only beyond 14 standard
    deviations, the series converges geometrically, and E[(r-1)^k] (log r ~ N(-1/(2σ²), 1/σ²)) is computed by
    60-point Gauss–Hermite quadrature of expm1, exact to rounding for such smooth integrands.
    """
    from scipy import special

    s = 1.0 / sigma
    nodes, weights = _hermite()
    e = np.expm1(-0.5 * s * s + s * nodes)
    k = np.arange(2, _MOMENT_TERMS + 2, dtype=np.float64)
    moments = (weights[None, :] * e[None, :] ** k[:, None]).sum(axis=1)
    a = alpha[:, None]
    # the sign of C(α, k) flips with every k > ⌊α⌋ + 1 (gammasgn(α - k + 1) is nan where α - k + 1 rounds to a pole)
    sign = np.where(np.maximum(k - np.floor(a) - 1.0, 0.0) % 2.0 == 1.0, -1.0, 1.0)
    coef = sign * np.exp(_log_binom(a, k[None, :]) + k * math.log(q))
    return np.log((coef * moments[None, :]).sum(axis=1))


def _wor_log_a_int(gamma: float, sigma: float, alpha: NDArray[np.float64]) -> NDArray[np.float64]:
    """log of the Wang–Balle–Kasiviswanathan 2019 Theorem 9 bound on A_α at integer orders α ≥ 2."""
    a, k, starts = _segments(alpha, 2)
    eps2 = 1.0 / (sigma * sigma)
    gauss = np.where(
        k == 2.0,
        np.minimum(math.log(4.0) + _log_expm1(np.array([eps2]))[0], math.log(2.0) + eps2),
        math.log(2.0) + k * (k - 1.0) / (2.0 * sigma * sigma),
    )
    terms = _log_binom(a, k) + k * math.log(gamma) + gauss
    return np.logaddexp(0.0, _segment_logsumexp(terms, starts))
