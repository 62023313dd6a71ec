"""Argument validation: dpcalib's public, deliberate API for checking a number before it reaches the maths.

Each function returns the value in its canonical type (``float`` or ``int``) or raises
:class:`~dpcalib.errors.InvalidArgumentError` naming the argument and the allowed range, so a library user sees
``InvalidArgumentError: delta=1.5 is out of range: delta must be in (0, 1)`` and a command line can print that one
line and exit with status 2.  fltrain and any other caller validate through these functions, never through
dpcalib's internals::

    from dpcalib import validation as check
    rounds = check.count("rounds", cfg_value)

Types are checked, not coerced: booleans, strings, bytes and ``None`` are refused (``q=True`` is not the rate 1,
``eps="2"`` is not 2); a count must be an integer or an integral float (``3.0`` is accepted as 3, ``2.5`` is not).
Integers too large for a float (``10**400``) are out of every range, never an ``OverflowError``.

The supported domain of dpcalib's accounting is stated here, once, and enforced by the events, the accountants,
the queries, the calibrators and the command line alike:

* :data:`STEPS_MAX` = 10^12 compositions: a DP-SGD run's ``steps``, a ``Repeated`` count, and the total number
  of runs an accountant composes (:func:`steps`). It is the step calibrator's search limit, no training runs
  that long, and it keeps every product of a count and a per-step quantity far from the limits of float
  arithmetic (counts stay exact below 2^53 ≈ 9e15).
* :data:`SIGMA_RANGE` = [1e-100, 1e6] for a Gaussian noise multiplier (:func:`noise_multiplier`). At 1e-100 the
  RDP of 10^12 steps at the grid's largest order, 8192 × 10^12 / (2σ²) ≈ 4e215, is still a finite double; below
  about 1e-154 σ² itself underflows to 0. (Such a σ protects nothing: at σ = 1e-3 one unsampled step already costs
  ε > 10^5 at δ = 1e-5; tests use σ = 1e-9 as "no noise".) 1e6 is the σ calibrator's upper search limit, where
  one unsampled step costs ε ≈ 5e-6.
* :data:`SIZE_MAX` = 2^53 records for a dataset or batch size (:func:`size`): every such count, and the
  ratio of two of them, is exact in float arithmetic.
"""

from __future__ import annotations

import math
import numbers

from .errors import InvalidArgumentError

__all__ = [
    "STEPS_MAX",
    "SIGMA_RANGE",
    "real",
    "positive",
    "non_negative",
    "open_unit",
    "rate",
    "count",
    "steps",
    "size",
    "noise_multiplier",
    "skellam_parameters",
    "SKELLAM_L1_RATIO_MAX",
    "SIZE_MAX",
]

#: The most compositions dpcalib accounts for (steps of a run, runs composed by one accountant in total).
STEPS_MAX = 10**12
#: The noise multipliers σ (noise standard deviation / L2 sensitivity) dpcalib accounts for, both ends included.
SIGMA_RANGE = (1e-100, 1e6)
#: The largest dataset or batch size dpcalib accounts for (2^53: exact as a float).
SIZE_MAX = 2**53


def _as_real(value: object) -> float | None:
    """``float(value)`` if ``value`` is a real number (not a bool, string or NaN), else ``None``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None
    try:
        as_float = float(value)
    except (OverflowError, ValueError):  # an int too large for a float
        return math.inf if value > 0 else -math.inf
    return None if math.isnan(as_float) else as_float


def real(name: str, value: object) -> float:
    """Return ``float(value)`` if it is a finite real number, else raise :class:`InvalidArgumentError`."""
    x = _as_real(value)
    if x is None or not math.isfinite(x):
        raise InvalidArgumentError(name, value, "a finite number")
    return x


def positive(name: str, value: object) -> float:
    """Return ``float(value)`` if it is a finite real number > 0, else raise :class:`InvalidArgumentError`."""
    x = _as_real(value)
    if x is None or not (0.0 < x < math.inf):
        raise InvalidArgumentError(name, value, "a finite number > 0")
    return x


def non_negative(name: str, value: object) -> float:
    """Return ``float(value)`` if it is a finite real number ≥ 0, else raise :class:`InvalidArgumentError`."""
    x = _as_real(value)
    if x is None or not (0.0 <= x < math.inf):
        raise InvalidArgumentError(name, value, "a finite number >= 0")
    return x


def open_unit(name: str, value: object) -> float:
    """Return ``float(value)`` if it lies in the open interval (0, 1) (a δ), else raise :class:`InvalidArgumentError`."""
    x = _as_real(value)
    if x is None or not (0.0 < x < 1.0):
        raise InvalidArgumentError(name, value, "in (0, 1)")
    return x


def rate(name: str, value: object) -> float:
    """Return ``float(value)`` if it lies in (0, 1] (a sampling rate), else raise :class:`InvalidArgumentError`."""
    x = _as_real(value)
    if x is None or not (0.0 < x <= 1.0):
        raise InvalidArgumentError(name, value, "in (0, 1]")
    return x


def count(name: str, value: object, minimum: int = 1, maximum: int | None = None) -> int:
    """Return ``value`` as an ``int`` if it is integral and in ``[minimum, maximum]``, else raise.

    Integers (Python or numpy) and integral finite floats are accepted; booleans, strings, fractions and
    non-finite values raise :class:`InvalidArgumentError`.
    """
    allowed = f"an integer >= {minimum}" if maximum is None else f"an integer in [{minimum}, {maximum}]"
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise InvalidArgumentError(name, value, allowed)
    if isinstance(value, numbers.Integral):
        as_int = int(value)
    else:
        x = float(value)
        if not math.isfinite(x) or x != math.floor(x):
            raise InvalidArgumentError(name, value, allowed)
        as_int = int(x)
    if as_int < minimum or (maximum is not None and as_int > maximum):
        raise InvalidArgumentError(name, value, allowed)
    return as_int


def steps(name: str, value: object) -> int:
    """Return ``value`` as an ``int`` if it is a number of compositions in [1, :data:`STEPS_MAX`], else raise."""
    return count(name, value, minimum=1, maximum=STEPS_MAX)


def size(name: str, value: object) -> int:
    """Return ``value`` as an ``int`` if it is a number of records in [1, :data:`SIZE_MAX`], else raise."""
    return count(name, value, minimum=1, maximum=SIZE_MAX)


def noise_multiplier(name: str, value: object) -> float:
    """Return ``float(value)`` if it is a noise multiplier in :data:`SIGMA_RANGE` (both ends included), else raise."""
    lo, hi = SIGMA_RANGE
    x = _as_real(value)
    if x is None or not (lo <= x <= hi):
        raise InvalidArgumentError(name, value, f"in [{lo:g}, {hi:g}]")
    return x



#: The largest ratio ℓ1 sensitivity / μ of a Skellam mechanism (:func:`skellam_parameters`).
SKELLAM_L1_RATIO_MAX = 1e200


def skellam_parameters(mu: object, l1_sensitivity: object, l2_sensitivity: object) -> tuple[float, float, float]:
    """``(μ, Δ1, Δ2)`` of a Skellam mechanism as floats, or :class:`InvalidArgumentError` naming the argument.

    All finite and > 0, with Δ2 ≤ Δ1 (every vector's ℓ2 norm is at most its ℓ1 norm); the Gaussian-equivalent
    multiplier √μ/Δ2 in :data:`SIGMA_RANGE` (as a Gaussian's σ, so that every RDP value stays a finite, positive
    double), and Δ1/μ ≤ :data:`SKELLAM_L1_RATIO_MAX` (the discretisation term 3Δ1/(2μ) stays finite likewise)."""
    m = positive("mu", mu)
    l1 = positive("l1_sensitivity", l1_sensitivity)
    l2 = positive("l2_sensitivity", l2_sensitivity)
    if l1 < l2:
        raise InvalidArgumentError("l1_sensitivity", l1_sensitivity, f">= l2_sensitivity={l2:g} (||v||_1 >= ||v||_2)")
    lo, hi = SIGMA_RANGE
    if not lo <= math.sqrt(m) / l2 <= hi:
        raise InvalidArgumentError("mu", mu, f"such that sqrt(mu)/l2_sensitivity is in [{lo:g}, {hi:g}] (l2_sensitivity={l2:g})")
    if l1 / m > SKELLAM_L1_RATIO_MAX:
        raise InvalidArgumentError("mu", mu, f">= l1_sensitivity/{SKELLAM_L1_RATIO_MAX:g} (l1_sensitivity={l1:g})")
    return m, l1, l2
