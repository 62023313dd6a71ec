"""Fixed-point encoding of float vectors into the ring Z_(2^k), where secure aggregation adds them.

Masking only hides a vector when the arithmetic is modular, so each client's float update ``x`` is first clipped to
``[-clip, clip]`` coordinate-wise, scaled by ``2^f`` and rounded to the nearest integer, and that integer is stored
modulo ``2^k`` (two's complement). The sum of ``n`` encoded vectors lies in ``[-n*M, n*M]`` with
``M = ceil(clip * 2^f)``; choosing ``k = bitlength(n*M) + 1`` makes ``n*M < 2^(k-1)``, so the modular sum never wraps
and decodes exactly to the sum of the rounded integers (Bonawitz et al., CCS 2017, §3 assume exactly this: inputs in
Z_R with R large enough that the sum does not overflow).

Precision: rounding moves each coordinate by at most ``2^(-f-1)``, so the decoded sum of ``m`` vectors differs from
the float sum of the clipped vectors by at most ``m * 2^(-f-1)`` per coordinate (:meth:`FixedPoint.sum_error_bound`).
Values outside ``[-clip, clip]`` are clipped, which is the caller's choice of range, not a protocol error.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from dpcalib.errors import InvalidArgumentError
from dpcalib import validation as check

__all__ = ["Ring", "FixedPoint"]

_WIDTHS = (1, 2, 4, 8)


@dataclass(frozen=True)
class Ring:
    """The additive group Z_(2^bits), 1 ≤ bits ≤ 64, with elements held in ``numpy.uint64``.

    Reduction mod 2^bits is a bit mask because 2^bits divides 2^64, so numpy's silent uint64 wrap-around is
    consistent with it. On the wire (and in the PRG) an element takes ``width`` bytes, the smallest of 1, 2, 4, 8
    that holds ``bits`` bits.
    """

    bits: int

    def __post_init__(self) -> None:
        if not (isinstance(self.bits, int) and 1 <= self.bits <= 64):
            raise InvalidArgumentError("bits", self.bits, "an integer in [1, 64]")

    @property
    def mask(self) -> np.uint64:
        """``2^bits - 1``, the reduction mask."""
        return np.uint64((1 << self.bits) - 1)

    @property
    def width(self) -> int:
        """Bytes per element on the wire and in the mask stream."""
        return next(w for w in _WIDTHS if 8 * w >= self.bits)

    def reduce(self, values: np.ndarray) -> np.ndarray:
        """``values mod 2^bits`` as uint64."""
        return np.bitwise_and(values.astype(np.uint64, copy=False), self.mask)

    def add(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """``(a + b) mod 2^bits``."""
        return np.bitwise_and(a + b, self.mask)

    def sub(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """``(a - b) mod 2^bits``."""
        return np.bitwise_and(a - b, self.mask)

    def lift(self, values: np.ndarray) -> np.ndarray:
        """The signed representatives in ``[-2^(bits-1), 2^(bits-1))`` of ring elements, as int64 (two's complement)."""
        shift = np.uint64(64 - self.bits)
        return np.left_shift(self.reduce(np.asarray(values)), shift).view(np.int64) >> shift.astype(np.int64)

    def from_stream(self, stream: bytes, dim: int) -> np.ndarray:
        """Read ``dim`` uniform ring elements from ``dim * width`` uniform bytes (a PRG output).

        Masking the low ``bits`` bits of a uniform ``8*width``-bit integer gives a uniform element of Z_(2^bits).
        """
        return self.reduce(np.frombuffer(stream, dtype=f"<u{self.width}", count=dim))

    def to_bytes(self, values: np.ndarray) -> bytes:
        """Little-endian, ``width`` bytes per element."""
        return values.astype(f"<u{self.width}").tobytes()

    def from_bytes(self, data: bytes) -> np.ndarray:
        """Inverse of :meth:`to_bytes`; rejects elements outside the ring."""
        if len(data) % self.width:
            raise ValueError(f"{len(data)} bytes is not a whole number of {self.width}-byte ring elements")
        values = np.frombuffer(data, dtype=f"<u{self.width}").astype(np.uint64)
        if np.any(values > self.mask):
            raise ValueError(f"ring element out of range for Z_(2^{self.bits})")
        return values


@dataclass(frozen=True)
class FixedPoint:
    """Encode floats in ``[-clip, clip]`` with ``frac_bits`` fractional bits so that ``max_clients`` encoded
    vectors sum without overflow.

    Args:
        clip: coordinate-wise range; values outside are clipped to it (> 0).
        frac_bits: fractional bits ``f``; the resolution is ``2^-f`` (an integer ≥ 0).
        max_clients: the largest number of vectors that will be summed (≥ 1).

    Raises:
        InvalidArgumentError: a bad argument, or a combination that needs more than 64 bits.
    """

    clip: float
    frac_bits: int
    max_clients: int

    def __post_init__(self) -> None:
        check.positive("clip", self.clip)
        check.count("frac_bits", self.frac_bits, minimum=0)
        check.count("max_clients", self.max_clients, minimum=1)
        if self._bits_needed() > 64:
            raise InvalidArgumentError(
                "frac_bits",
                self.frac_bits,
                f"small enough that max_clients * ceil(clip * 2^frac_bits) < 2^63 (needs {self._bits_needed()} bits)",
            )

    def _max_abs(self) -> int:
        return math.ceil(self.clip * 2.0**self.frac_bits)

    def _bits_needed(self) -> int:
        return (self.max_clients * self._max_abs()).bit_length() + 1

    @property
    def ring(self) -> Ring:
        """Z_(2^k) with ``k = bitlength(max_clients * ceil(clip * 2^f)) + 1``: the smallest k with no overflow."""
        return Ring(self._bits_needed())

    @property
    def resolution(self) -> float:
        """``2^-f``, the spacing of representable values."""
        return 2.0**-self.frac_bits

    def sum_error_bound(self, count: int) -> float:
        """Largest coordinate-wise |decoded sum − float sum| for ``count`` vectors inside the range:
        ``count * 2^(-f-1)``."""
        return count * self.resolution / 2.0

    def encode(self, x: np.ndarray) -> np.ndarray:
        """Clip to ``[-clip, clip]``, scale by ``2^f``, round to nearest, reduce mod 2^k (two's complement)."""
        values = np.asarray(x, dtype=np.float64)
        if not np.all(np.isfinite(values)):
            raise InvalidArgumentError("x", "non-finite values", "finite floats")
        scaled = np.rint(np.clip(values, -self.clip, self.clip) * 2.0**self.frac_bits).astype(np.int64)
        return self.ring.reduce(scaled.astype(np.uint64))

    def decode(self, z: np.ndarray) -> np.ndarray:
        """Read a ring vector (a sum of at most ``max_clients`` encodings) as signed, divided by ``2^f``."""
        return self.ring.lift(z).astype(np.float64) * self.resolution
