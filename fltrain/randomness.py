"""The two sources of randomness of a run: a secret cryptographic one for DP noise and sampling, and the seed.

A differential-privacy guarantee holds against whoever cannot predict the noise. :class:`SecureRandom` is the
source of every DP noise vector and every sampling decision (records of DP-SGD batches, the cohort of clients):
AES-256 in counter mode (NIST SP 800-38A) keyed by 32 bytes from ``os.urandom``, through the ``cryptography``
package. Its key lives in memory only: it is never written to a checkpoint, a log or a metrics line, and it
cannot be pickled, so a checkpoint plus the config do not determine the noise of any round.

The keystream is turned into tensors as follows (all exact on the bit level):

- uniforms: float32 ``(u >> 8)·2^-24`` from 32-bit words (the multiples of ``2^-24`` in [0, 1), as
  ``torch.rand`` draws, so :class:`fltrain.sampling.PoissonSampler`'s rounding argument holds unchanged); float64
  ``(u >> 11)·2^-53`` from 64-bit words;
- Gaussians: Box–Muller (Box & Muller 1958) in float64 on 53-bit uniforms, ``√(−2 ln u₁)·cos(2π u₂)`` and
  ``·sin(2π u₂)`` with ``u₁ ∈ (0, 1]``, then cast to the requested dtype. Like every floating-point sampler
  (``torch.randn`` included) it is not an exact Gaussian: its tail stops at ``√(2·53·ln 2) ≈ 8.6`` standard
  deviations and its values lie on a floating-point grid (Mironov 2012, "On significance of the least
  significant bits for differential privacy"); fltrain does not defend against that attack;
- permutations: the argsort of float64 uniforms (a tie, probability below ``n²·2^-54``, would bias it
  negligibly);
- Poisson and Skellam integers (:func:`poisson`, :func:`skellam`, the noise shares of distributed discrete DP):
  inversion of the Poisson CDF at the midpoints ``u + 2^-54`` of 53-bit uniforms, by binary search in a table of
  the CDF (scipy's ``pdtr``, accurate to ~1e-15 relative) over ``λ ± (20√λ + 40)``, outside which the Poisson mass
  is below e^-60 ≈ 1e-26 on each side (Bernstein's inequality), far below the uniforms' 2^-54
  resolution; a Skellam integer ``Sk(v/2, v/2)`` is the difference of two such Poisson draws.
  Exact but for the 53-bit grid of the uniforms and the CDF's rounding (like the Gaussians, a floating-point
  sampler).

:class:`ReproducibleRandom` is ``torch.Generator`` seeded from ``--seed``: the same interface, and a state that
checkpoints save, so a run is repeatable bit for bit. It is what the seed drives (partitioning and model
initialisation are seeded separately) and, with ``--insecure-reproducible-noise``, a *simulation* of DP noise:
anyone holding the config can regenerate the noise, so against them the run has no guarantee. Runs made with it
say so in ``summary.json`` and on every metrics line (``"noise": "insecure-reproducible"``).

Both sources draw on the CPU, whatever ``--device`` says: a GPU run copies each noise vector and each batch's
indices to the device (:mod:`fltrain.device`), so the one documented generator (and the secret key, which stays
in host memory) serves every device, and the draws do not depend on the device.

Cost (``benchmarks/`` is where timings live; measured once here, see docs/fltrain.md): AES-CTR produces ~1 GB/s
with AES-NI, so the Gaussians of one DP-SGD step of 4 clients of the 26,010-parameter CNN cost ~1 ms, against
~45 ms for the step itself.
"""

from __future__ import annotations

import functools
import math
import os
from typing import Any, Protocol

import numpy as np
import torch
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from dpcalib import validation as check
from dpcalib.errors import InvalidArgumentError

__all__ = ["RandomSource", "SecureRandom", "ReproducibleRandom", "POISSON_RATE_MAX", "poisson", "skellam"]

_KEY_BYTES = 32  # AES-256
_TWO_PI = 2.0 * math.pi


class RandomSource(Protocol):
    """What the training code draws from: uniforms, standard Gaussians and permutations as CPU tensors (copied to
    the training device by the caller)."""

    #: whether the draws are unpredictable to anyone holding the run's config and checkpoints
    secure: bool

    def rand(self, shape: tuple[int, ...] | int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Uniforms in [0, 1): float32 multiples of ``2^-24``, float64 multiples of ``2^-53``."""
        ...

    def randn(self, shape: tuple[int, ...] | int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Independent standard Gaussians."""
        ...

    def randperm(self, n: int) -> torch.Tensor:
        """A uniformly random permutation of ``0..n-1`` (int64)."""
        ...


def _shape(shape: tuple[int, ...] | int) -> tuple[int, ...]:
    return (shape,) if isinstance(shape, int) else tuple(int(s) for s in shape)


class SecureRandom:
    """AES-256-CTR keyed from ``os.urandom``: unpredictable, never stored (see the module docstring)."""

    secure = True

    def __init__(self) -> None:
        # the key and the nonce are used once and kept only inside the encryptor (the counter never repeats:
        # 2^128 blocks)
        self._stream = Cipher(algorithms.AES(os.urandom(_KEY_BYTES)), modes.CTR(os.urandom(16))).encryptor()

    def __reduce__(self) -> Any:
        raise TypeError("SecureRandom holds a secret key and cannot be pickled or checkpointed")

    def _words(self, count: int, bits: int) -> torch.Tensor:
        """``count`` uniform unsigned words of ``bits`` (32 or 64) bits, as int64 (64-bit ones reinterpreted)."""
        width = bits // 8
        raw = bytearray(self._stream.update(bytes(count * width)))
        dtype = torch.int32 if bits == 32 else torch.int64
        return torch.frombuffer(raw, dtype=dtype) if count else torch.zeros(0, dtype=dtype)

    def _uniform64(self, count: int) -> torch.Tensor:
        """float64 multiples of 2^-53 in [0, 1)."""
        words = self._words(count, 64)
        return (words >> 11 & ((1 << 53) - 1)).to(torch.float64) * 2.0**-53

    def rand(self, shape: tuple[int, ...] | int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        size = _shape(shape)
        count = math.prod(size)
        if dtype == torch.float32:
            words = self._words(count, 32).to(torch.int64) & 0xFFFFFFFF
            return ((words >> 8).to(torch.float32) * 2.0**-24).reshape(size)
        if dtype == torch.float64:
            return self._uniform64(count).reshape(size)
        raise TypeError(f"rand: dtype float32 or float64, not {dtype}")

    def randn(self, shape: tuple[int, ...] | int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        size = _shape(shape)
        count = math.prod(size)
        pairs = (count + 1) // 2
        u = self._uniform64(2 * pairs)
        radius = torch.sqrt(-2.0 * torch.log1p(-u[:pairs]))  # 1 − u ∈ (0, 1]: log is finite
        angle = _TWO_PI * u[pairs:]
        normals = torch.cat([radius * torch.cos(angle), radius * torch.sin(angle)])[:count]
        return normals.to(dtype).reshape(size)

    def randperm(self, n: int) -> torch.Tensor:
        return torch.argsort(self._uniform64(n))


class ReproducibleRandom:
    """``torch.Generator`` seeded from ``seed``: repeatable, checkpointable, and NOT secret (see the module
    docstring): for partitions-independent simulation and for ``--insecure-reproducible-noise`` only."""

    secure = False

    def __init__(self, seed: int) -> None:
        self.generator = torch.Generator().manual_seed(seed)

    def rand(self, shape: tuple[int, ...] | int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return torch.rand(_shape(shape), generator=self.generator, dtype=dtype)

    def randn(self, shape: tuple[int, ...] | int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return torch.randn(_shape(shape), generator=self.generator, dtype=dtype)

    def randperm(self, n: int) -> torch.Tensor:
        return torch.randperm(n, generator=self.generator)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.generator.set_state(state["generator"])


#: Poisson rates :func:`poisson` accepts (its CDF table spans λ ± (20√λ + 40): ~1.3 million entries at the top)
POISSON_RATE_MAX = 1e9


@functools.lru_cache(maxsize=16)
def _poisson_table(rate: float) -> tuple[int, np.ndarray]:
    """(the table's first value k₀, the Poisson(``rate``) CDF at k₀, k₀ + 1, …) over λ ± (20√λ + 40)."""
    from scipy import special

    width = 20.0 * math.sqrt(rate) + 40.0
    low, high = max(0, math.floor(rate - width)), math.ceil(rate + width)
    cdf = special.pdtr(np.arange(low, high + 1, dtype=np.float64), rate)
    cdf.setflags(write=False)
    return low, cdf


def poisson(source: RandomSource, rate: float, count: int) -> torch.Tensor:
    """``count`` independent Poisson(``rate``) integers (int64) by inversion of 53-bit uniforms from ``source``
    (see the module docstring); ``rate`` in (0, :data:`POISSON_RATE_MAX`]."""
    rate = check.positive("rate", rate)
    if rate > POISSON_RATE_MAX:
        raise InvalidArgumentError("rate", rate, f"in (0, {POISSON_RATE_MAX:g}]")
    count = check.count("count", count, minimum=0)
    low, cdf = _poisson_table(rate)
    u = source.rand(count, dtype=torch.float64).numpy() + 2.0**-54
    index = np.minimum(np.searchsorted(cdf, u, side="left"), cdf.size - 1)
    return torch.from_numpy(index.astype(np.int64) + low)


def skellam(source: RandomSource, variance: float, count: int) -> torch.Tensor:
    """``count`` independent Skellam integers ``Poi(v/2) − Poi(v/2)`` of variance ``variance`` (int64)."""
    return poisson(source, variance / 2.0, count) - poisson(source, variance / 2.0, count)
