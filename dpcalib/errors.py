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
        super().__init__(f"{name}={_short_repr(value)} is out of range: {name} must be {allowed}")


def _short_repr(value: object, limit: int = 60) -> str:
    """``repr(value)``, cut in the middle to at most ``limit`` characters (a 400-digit integer stays one short line)."""
    try:
        text = repr(value)
    except ValueError:  # an int with more digits than Python will print
        text = f"<{type(value).__name__} too large to print>"
    if len(text) <= limit:
        return text
    keep = (limit - 5) // 2
    return f"{text[:keep]} ... {text[-keep:]}"


class UnreachableTargetError(DpcalibError):
    """A calibration target cannot be met inside the search range (or is met with no noise at all)."""


class UnsupportedEventError(DpcalibError, TypeError):
    """An accountant was given an event it cannot account for (e.g. a neighbouring relation it does not support)."""


class DpcalibWarning(UserWarning):
    """Base class of every warning dpcalib issues."""


class OrderRangeWarning(DpcalibWarning):
    """The RDP order that attains the bound lies at the edge of the order grid: a wider grid may give a smaller ε."""

