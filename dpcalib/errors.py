"""Typed exceptions of dpcalib.

Every error names the argument at fault and the range it must lie in, so that the library user sees
``InvalidArgumentError: delta=1.5 is out of range: delta must lie in (0, 1)`` and the CLI can print that one line
and exit with status 2.
"""

from __future__ import annotations

__all__ = [
    "DpcalibError",
    "InvalidArgumentError",
    "UnreachableTargetError",
    "UnsupportedEventError",
    "DpcalibWarning",
    "OrderRangeWarning",
    "check_positive",
    "check_open_unit",
    "check_rate",
    "check_count",
]


class DpcalibError(Exception):
    """Base class of every exception dpcalib raises on purpose."""


class InvalidArgumentError(DpcalibError, ValueError):
    """An argument lies outside its allowed range.

    Attributes:
        name: the argument's name as the user wrote it (``"delta"``, ``"q"``, ...).
        value: the value received.
        allowed: a human-readable description of the allowed range, e.g. ``"(0, 1)"``.
    """

    def __init__(self, name: str, value: object, allowed: str) -> None:
        self.name = name
        self.value = value
        self.allowed = allowed
        super().__init__(f"{name}={value!r} is out of range: {name} must be {allowed}")


class UnreachableTargetError(DpcalibError):
    """A calibration target cannot be met inside the search range (or is met with no noise at all)."""


class UnsupportedEventError(DpcalibError, TypeError):
    """An accountant was given an event it cannot account for (e.g. a neighbouring relation it does not support)."""


class DpcalibWarning(UserWarning):
    """Base class of every warning dpcalib issues."""


class OrderRangeWarning(DpcalibWarning):
    """The RDP order that attains the bound lies at the edge of the order grid: a wider grid may give a smaller ε."""


def _is_real(value: object) -> bool:
    try:
        return float(value) == float(value)  # rejects NaN
    except (TypeError, ValueError):
        return False


def check_positive(name: str, value: float) -> float:
    """Return ``float(value)`` if it is finite and > 0, else raise :class:`InvalidArgumentError`."""
    if not _is_real(value) or not (0.0 < float(value) < float("inf")):
        raise InvalidArgumentError(name, value, "a finite number > 0")
    return float(value)


def check_open_unit(name: str, value: float) -> float:
    """Return ``float(value)`` if it lies in the open interval (0, 1), else raise :class:`InvalidArgumentError`."""
    if not _is_real(value) or not (0.0 < float(value) < 1.0):
        raise InvalidArgumentError(name, value, "in (0, 1)")
    return float(value)


def check_rate(name: str, value: float) -> float:
    """Return ``float(value)`` if it lies in (0, 1] (a sampling rate), else raise :class:`InvalidArgumentError`."""
    if not _is_real(value) or not (0.0 < float(value) <= 1.0):
        raise InvalidArgumentError(name, value, "in (0, 1]")
    return float(value)


def check_count(name: str, value: int, minimum: int = 1) -> int:
    """Return ``int(value)`` if it is an integer ≥ ``minimum``, else raise :class:`InvalidArgumentError`."""
    try:
        as_int = int(value)
        ok = as_int == value and as_int >= minimum
    except (TypeError, ValueError, OverflowError):
        ok = False
    if not ok:
        raise InvalidArgumentError(name, value, f"an integer >= {minimum}")
    return as_int
