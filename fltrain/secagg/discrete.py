"""Integer vectors for secure aggregation: the client and server halves of the discrete pipeline of distributed DP.

Client (:meth:`DiscreteCodec.encode`), following Kairouz, Liu, Steinke 2021 (the distributed discrete Gaussian) and
Agarwal, Kairouz, Liu 2021 (the Skellam mechanism):

1. clip x (length ``dim``) to ℓ2 norm ``clip`` and zero-pad it to ``d = 2^⌈log2 dim⌉``;
2. rotate: ``y = scale · H D x``, with H the orthonormal Walsh–Hadamard matrix and D diagonal random signs drawn
   from the round's *public* seed (every client and the server use the same D). The rotation keeps the norm and
   spreads the vector over all coordinates, so that each coordinate is small (sub-Gaussian, see
   :func:`dpcalib.wrap_probability`) and the modular range can be narrow;
3. conditional randomised rounding: each coordinate goes to ⌊y_i⌋ + 1 with probability y_i − ⌊y_i⌋, else
   ⌊y_i⌋ (unbiased), drawn again until ``‖ỹ‖₂ ≤ norm_bound`` — the bound the accounting assumes
   (:func:`dpcalib.rounded_l2_bound`), so it holds for every vector sent;
4. add the integer noise share it is handed (secagg knows nothing of DP beyond this share);
5. reduce modulo 2^bits: an element of the ring :class:`~fltrain.secagg.encoding.Ring` that the protocol masks.

Server (:meth:`DiscreteCodec.decode`): the modular sum (what secure aggregation returns, :class:`RingCodec`) is
lifted to ``[-2^(bits-1), 2^(bits-1))``, un-rotated (``D H``: H is its own inverse) and divided by ``scale``. The
lifted sum equals the integer sum of the clients' vectors unless a coordinate of that sum left the range (a
*wrap-around*); :meth:`DiscreteCodec.wrap_probability` bounds the chance of that, and a wrapped coordinate decodes to
the integer sum minus a multiple of 2^bits — a corrupted round, never a privacy loss (the release is a function of
the integer sum).

:class:`RingCodec` is the protocol's codec for such vectors (:class:`~fltrain.secagg.protocol.SecAggParams`
accepts it in place of the fixed-point one): it masks integers of Z_(2^bits) as they are and returns the lifted sum.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

import dpcalib
from dpcalib import validation as check
from dpcalib.discrete import BITS_RANGE, padded_dim
from dpcalib.errors import InvalidArgumentError

from ..randomness import RandomSource
from .encoding import Ring
from .errors import SecAggError

__all__ = ["RoundingError", "RingCodec", "DiscreteCodec", "hadamard", "rotation_signs", "conditional_round"]

#: Conditional rounding gives up after this many draws (each is rejected with probability at most β ≈ 0.61 for
#: :data:`dpcalib.discrete.DEFAULT_BETA`: 200 rejections in a row have probability below 1e-40).
MAX_ROUNDING_DRAWS = 200


class RoundingError(SecAggError):
    """Conditional randomised rounding found no rounding within the norm bound (the bound is too tight)."""


def hadamard(x: np.ndarray) -> np.ndarray:
    """The orthonormal Walsh–Hadamard transform ``H x`` along the last axis (a power of two long), O(d log d).
    H is symmetric and orthogonal: ``hadamard(hadamard(x)) == x`` up to rounding."""
    values = np.array(x, dtype=np.float64)
    shape, d = values.shape, values.shape[-1]
    if d & (d - 1):
        raise InvalidArgumentError("x", shape, "a last axis whose length is a power of two")
    h = 1
    while h < d:
        pairs = values.reshape(-1, d // (2 * h), 2, h)
        values = np.stack([pairs[:, :, 0] + pairs[:, :, 1], pairs[:, :, 0] - pairs[:, :, 1]], axis=2)
        h *= 2
    return values.reshape(shape) / math.sqrt(d)


def rotation_signs(seed: int, length: int) -> np.ndarray:
    """The diagonal of D: ``length`` random signs ±1 from the round's public ``seed`` (PCG64; public by design,
    shared by all clients and the server; not DP randomness)."""
    seed = check.count("seed", seed, minimum=0)
    return np.random.default_rng(seed).integers(0, 2, size=length).astype(np.float64) * 2.0 - 1.0


def conditional_round(y: np.ndarray, norm_bound: float, rng: RandomSource) -> np.ndarray:
    """Unbiased randomised rounding of ``y`` to integers (int64), drawn again until the ℓ2 norm is at most
    ``norm_bound`` (Kairouz, Liu, Steinke 2021, conditional randomised rounding). Uniforms from ``rng``.

    Raises:
        RoundingError: no draw within :data:`MAX_ROUNDING_DRAWS` met the bound.
    """
    bound = check.positive("norm_bound", norm_bound)
    floor = np.floor(y)
    fraction = y - floor
    for _ in range(MAX_ROUNDING_DRAWS):
        rounded = floor + (rng.rand(y.size, dtype=torch.float64).numpy() < fraction)
        if float(np.dot(rounded, rounded)) <= bound * bound:
            return rounded.astype(np.int64)
    raise RoundingError(f"no randomised rounding of a vector of norm {np.linalg.norm(y):.6g} within the norm bound "
                        f"{bound:.6g} in {MAX_ROUNDING_DRAWS} draws")


@dataclass(frozen=True)
class RingCodec:
    """The protocol's codec for integer vectors in Z_(2^bits): :meth:`encode` reduces integers, :meth:`decode`
    lifts the modular sum to signed int64 (``[-2^(bits-1), 2^(bits-1))``)."""

    bits: int

    @property
    def ring(self) -> Ring:
        return Ring(self.bits)

    def encode(self, values: np.ndarray) -> np.ndarray:
        """Integers (any integer dtype, or ring elements) as elements of Z_(2^bits)."""
        array = np.asarray(values)
        if array.dtype.kind not in "iu":
            raise InvalidArgumentError("x", str(array.dtype), "an integer vector (the discrete pipeline's output)")
        return self.ring.reduce(array)

    def decode(self, total: np.ndarray) -> np.ndarray:
        """The signed representative of each coordinate of a modular sum."""
        return self.ring.lift(total)


@dataclass(frozen=True)
class DiscreteCodec:
    """The discrete pipeline of one round's clients (see the module docstring).

    Args:
        bits: bits per coordinate of the ring, in [2, 62].
        scale: multiplier from the float vector to integer units (> 0).
        clip: ℓ2 clip norm of each client's float vector (> 0).
        dim: the float vectors' length; they are padded to :attr:`padded_dim`.
        norm_bound: the ℓ2 bound of each rounded integer vector (at least :func:`dpcalib.rounded_l2_bound`
            ``(scale·clip, dim)`` is sensible; smaller makes rounding fail more often).

    :func:`dpcalib.plan_skellam` chooses all of them (``plan.l2_sensitivity`` is ``norm_bound``).
    """

    bits: int
    scale: float
    clip: float
    dim: int
    norm_bound: float

    def __post_init__(self) -> None:
        check.count("bits", self.bits, *BITS_RANGE)
        for name in ("scale", "clip", "norm_bound"):
            check.positive(name, getattr(self, name))
        check.size("dim", self.dim)

    @property
    def padded_dim(self) -> int:
        return padded_dim(self.dim)

    @property
    def ring_codec(self) -> RingCodec:
        """The codec under which secure aggregation sums this pipeline's vectors."""
        return RingCodec(self.bits)

    def encode(self, x: np.ndarray, *, seed: int, noise: np.ndarray, rng: RandomSource) -> np.ndarray:
        """One client's ring vector (uint64, :attr:`padded_dim` long): clip, pad, rotate with ``seed``, scale,
        round within :attr:`norm_bound` with uniforms from ``rng``, add the integer ``noise`` share, reduce."""
        values = np.asarray(x, dtype=np.float64)
        if values.shape != (self.dim,) or not np.all(np.isfinite(values)):
            raise InvalidArgumentError("x", values.shape, f"a finite vector of shape ({self.dim},)")
        share = np.asarray(noise)
        if share.shape != (self.padded_dim,) or share.dtype.kind not in "iu":
            raise InvalidArgumentError("noise", share.shape, f"an integer vector of shape ({self.padded_dim},)")
        norm = float(np.linalg.norm(values))
        if norm > self.clip:
            values = values * (self.clip / norm)
        padded = np.zeros(self.padded_dim)
        padded[: self.dim] = values
        y = self.scale * hadamard(rotation_signs(seed, self.padded_dim) * padded)
        rounded = conditional_round(y, self.norm_bound, rng)
        return self.ring_codec.encode(rounded + share.astype(np.int64))

    def decode(self, lifted: np.ndarray, *, seed: int) -> np.ndarray:
        """The float sum (length :attr:`dim`) from the lifted integer sum (:meth:`RingCodec.decode` of the
        modular sum): un-rotate with the round's ``seed``, divide by ``scale``, drop the padding."""
        total = np.asarray(lifted)
        if total.shape != (self.padded_dim,):
            raise InvalidArgumentError("lifted", total.shape, f"a vector of shape ({self.padded_dim},)")
        rotated = hadamard(total.astype(np.float64) / self.scale)
        return (rotation_signs(seed, self.padded_dim) * rotated)[: self.dim]

    def wrap_probability(self, clients: int, variance: float) -> float:
        """The bound :func:`dpcalib.wrap_probability` on a wrap-around of the sum of ``clients`` vectors carrying
        Skellam noise of total ``variance`` per coordinate."""
        return dpcalib.wrap_probability(bits=self.bits, scale=self.scale, clip=self.clip, dim=self.dim,
                                        clients=clients, variance=variance)
