"""Rényi-DP curves of the Skellam mechanism, unsampled and Poisson-subsampled, in log space and vectorised over orders.

The Skellam mechanism releases an integer vector plus independent noise ``Sk(μ/2, μ/2) = Poi(μ/2) − Poi(μ/2)`` on
each coordinate (variance μ per coordinate). Sums of independent Skellam variables are Skellam, so clients of a
secure sum can each add a share and the server sees one Skellam mechanism (Agarwal, Kairouz, Liu 2021, "The
Skellam Mechanism for Differentially Private Federated Learning", NeurIPS 2021).

* Unsampled (AKL 2021, Theorem 3.5 with the symmetric parametrisation of their Corollary 3.6): for neighbouring
  integer inputs whose difference has ℓ1 norm ≤ Δ1 and ℓ2 norm ≤ Δ2, and integer α > 1,

      ε(α) ≤ α Δ2² / (2μ) + min( ((2α − 1) Δ2² + 6 Δ1) / (4μ²),  3 Δ1 / (2μ) ).

  The first term is the Gaussian mechanism's; the ``min`` is the price of the discrete noise, which vanishes as
  μ grows. The bound depends only on the norms of the difference, so it holds in both directions of every
  neighbouring pair. At a fractional order α the bound at ⌈α⌉ is used: Rényi divergence is non-decreasing in its
  order (van Erven & Harremoës 2014, Theorem 3), so this is an upper bound too.
* Poisson-subsampled with rate q under add/remove: the general upper bound of Zhu & Wang 2019 ("Poisson subsampled
  Rényi differential privacy", ICML 2019, Theorem 6), for any mechanism with RDP ε(·) at integer orders, stated in
  that paper for the add/remove relation (their RDP takes the supremum over both orders of a neighbouring pair):

      A_α ≤ (1−q)^{α−1} (1 + (α−1) q) + C(α,2) q² (1−q)^{α−2} e^{ε(2)} + 3 Σ_{ℓ=3}^{α} C(α,ℓ) q^ℓ (1−q)^{α−ℓ} e^{(ℓ−1) ε(ℓ)},

  ε_q(α) = log A_α / (α − 1). The first term is the ℓ = 0, 1 part of the binomial expansion of 1, so
  ``A_α − 1 = Σ_{ℓ≥2} C(α,ℓ) q^ℓ (1−q)^{α−ℓ} (c_ℓ e^{(ℓ−1)ε(ℓ)} − 1)`` with c_2 = 1, c_ℓ = 3: a sum of positive terms,
  summed in log space (as :func:`dpcalib.rdp.poisson_gaussian_rdp` does for the Gaussian), so tiny rates keep full
  relative precision. The subsampled mechanism is never worse than the unsampled one (joint quasi-convexity of
  the Rényi divergence), so the smaller of the two bounds is returned; and since the true curve is non-decreasing
  in the order, the bound at α is also lowered to the smallest bound at the orders ≥ α that were asked for (the
  general bound's log(3)/(α−1) slack makes it decrease at small orders).
* A uniformly random subset of ``batch`` of ``n`` under replace-one (a fixed-size cohort): Wang, Balle,
  Kasiviswanathan 2019, Theorem 9, with ε(∞) = ∞ (:func:`without_replacement_skellam_rdp`), treated the same way.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import ArrayLike, NDArray

from .errors import InvalidArgumentError

from . import rdp
from . import validation as check

__all__ = [
    "skellam_rdp",
    "poisson_skellam_rdp",
    "without_replacement_skellam_rdp",
    "skellam_curve",
    "poisson_skellam_curve",
    "without_replacement_skellam_curve",
]

_LOG_2, _LOG_3, _LOG_4 = math.log(2.0), math.log(3.0), math.log(4.0)


def _akl(mu: float, l1: float, l2: float, alpha: NDArray[np.float64]) -> NDArray[np.float64]:
    """AKL 2021, Theorem 3.5 at integer orders ``alpha`` (see the module docstring)."""
    ratio2, ratio1 = l2 * l2 / mu, l1 / mu  # finite in the domain of dpcalib.validation.skellam_parameters
    with np.errstate(over="ignore"):  # the first term of the min may overflow to inf; the second is finite
        discrete = np.minimum(((2.0 * alpha - 1.0) * ratio2 + 6.0 * ratio1) / (4.0 * mu), 1.5 * ratio1)
    return alpha * ratio2 / 2.0 + discrete


def skellam_rdp(mu: float, l1_sensitivity: float, l2_sensitivity: float, orders: ArrayLike) -> NDArray[np.float64]:
    """RDP upper bound of the Skellam mechanism with noise variance ``mu`` per coordinate and sensitivities
    ``l1_sensitivity``, ``l2_sensitivity`` (in the units of the integers released), at each order (AKL 2021,
    Theorem 3.5; fractional orders take the bound at ⌈α⌉)."""
    return skellam_curve(*check.skellam_parameters(mu, l1_sensitivity, l2_sensitivity), rdp.check_orders(orders))


def skellam_curve(mu: float, l1: float, l2: float, alpha: NDArray[np.float64]) -> NDArray[np.float64]:
    """:func:`skellam_rdp` for validated arguments (floats, and a 1-d float array of orders > 1)."""
    return _akl(mu, l1, l2, np.ceil(alpha))


def poisson_skellam_rdp(
    q: float, mu: float, l1_sensitivity: float, l2_sensitivity: float, orders: ArrayLike
) -> NDArray[np.float64]:
    """RDP upper bound of the Skellam mechanism on a Poisson subsample of rate ``q`` under add/remove: Zhu & Wang
    2019, Theorem 6, applied to AKL 2021's bound, at ⌈α⌉ (see the module docstring). q = 1 is :func:`skellam_rdp`."""
    q = check.rate("q", q)
    return poisson_skellam_curve(q, *check.skellam_parameters(mu, l1_sensitivity, l2_sensitivity), rdp.check_orders(orders))


def poisson_skellam_curve(q: float, mu: float, l1: float, l2: float, alpha: NDArray[np.float64]) -> NDArray[np.float64]:
    """:func:`poisson_skellam_rdp` for validated arguments."""
    if q == 1.0:
        return skellam_curve(mu, l1, l2, alpha)
    log_q, log_1mq = math.log(q), math.log1p(-q)

    def log_terms(a: NDArray[np.float64], ell: NDArray[np.float64], eps: NDArray[np.float64]) -> NDArray[np.float64]:
        growth = (ell - 1.0) * eps + np.where(ell >= 3.0, _LOG_3, 0.0)
        return rdp._log_binom(a, ell) + (a - ell) * log_1mq + ell * log_q + rdp._log_expm1(growth)

    return _subsampled(mu, l1, l2, alpha, log_terms)


def without_replacement_skellam_rdp(
    n: int, batch: int, mu: float, l1_sensitivity: float, l2_sensitivity: float, orders: ArrayLike
) -> NDArray[np.float64]:
    """RDP upper bound of the Skellam mechanism on a uniformly random subset of ``batch`` of ``n`` (replace-one;
    the sensitivities are those of the replace-one relation): Wang, Balle, Kasiviswanathan 2019 ("Subsampled
    Rényi differential privacy and analytical moments accountant"), Theorem 9, for a mechanism with ε(∞) = ∞,

        A_α ≤ 1 + γ² C(α,2) min(4(e^{ε(2)} − 1), 2 e^{ε(2)}) + Σ_{j=3}^{α} 2 γ^j C(α,j) e^{(j−1) ε(j)},   γ = batch/n,

    with ε(j) AKL 2021's bound, at ⌈α⌉, never above the unsampled bound and lowered to the smallest bound at the
    larger orders asked for (see the module docstring)."""
    n, batch = check.size("n", n), check.size("batch", batch)
    if batch > n:
        raise InvalidArgumentError("batch", batch, f"an integer in [1, n={n}]")
    mu, l1, l2 = check.skellam_parameters(mu, l1_sensitivity, l2_sensitivity)
    return without_replacement_skellam_curve(batch / n, mu, l1, l2, rdp.check_orders(orders))


def without_replacement_skellam_curve(
    gamma: float, mu: float, l1: float, l2: float, alpha: NDArray[np.float64]
) -> NDArray[np.float64]:
    """:func:`without_replacement_skellam_rdp` for validated arguments (``gamma`` = batch/n in (0, 1])."""
    if gamma == 1.0:
        return skellam_curve(mu, l1, l2, alpha)
    log_gamma = math.log(gamma)

    def log_terms(a: NDArray[np.float64], ell: NDArray[np.float64], eps: NDArray[np.float64]) -> NDArray[np.float64]:
        second = np.minimum(_LOG_4 + rdp._log_expm1(eps), _LOG_2 + eps)
        weight = np.where(ell == 2.0, second, _LOG_2 + (ell - 1.0) * eps)
        return rdp._log_binom(a, ell) + ell * log_gamma + weight

    return _subsampled(mu, l1, l2, alpha, log_terms)


def _subsampled(mu: float, l1: float, l2: float, alpha: NDArray[np.float64], log_terms) -> NDArray[np.float64]:
    """The subsampled curve at ⌈α⌉ from ``log_terms(α, ℓ, ε(ℓ))``, the logs of the positive terms ℓ = 2 … α of
    ``A_α − 1`` (summed in log space), rounded up to the smallest double, lowered to its smallest value at larger
    orders (the true curve is non-decreasing in the order), and never above the unsampled bound."""
    orders, inverse = np.unique(np.ceil(alpha), return_inverse=True)
    a, ell, starts = rdp._segments(orders, 2)
    log_am1 = rdp._segment_logsumexp(log_terms(a, ell, _akl(mu, l1, l2, ell)), starts)
    sampled = np.maximum(np.logaddexp(0.0, log_am1) / (orders - 1.0), rdp._SMALLEST_POSITIVE)
    sampled = np.minimum.accumulate(sampled[::-1])[::-1]
    return np.minimum(sampled[inverse], skellam_curve(mu, l1, l2, alpha))
