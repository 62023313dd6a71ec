"""Shamir's (t, m) threshold secret sharing over the prime field GF(2^521 - 1) (Shamir, CACM 1979).

A secret ``s`` (up to 64 bytes, here 32-byte X25519 private keys and PRG seeds) is the constant term of a random
polynomial ``f`` of degree ``t - 1``; holder ``x`` (a non-zero client id) receives ``f(x)``. Any ``t`` shares give
``s = f(0)`` by Lagrange interpolation; any ``t - 1`` shares are uniformly distributed and independent of ``s``.
The modulus is the Mersenne prime ``2^521 - 1`` so that every 32-byte value is a field element. Coefficients come
from :mod:`secrets` (the OS CSPRNG). This is arithmetic, not a cipher: confidentiality of the shares in transit is
the AEAD's job (:mod:`fltrain.secagg.crypto`).
"""

from __future__ import annotations

import functools
import secrets
from collections.abc import Iterable, Mapping

from dpcalib.errors import InvalidArgumentError

from .errors import IntegrityError

__all__ = ["PRIME", "SHARE_BYTES", "split", "combine"]

PRIME = (1 << 521) - 1
SHARE_BYTES = (PRIME.bit_length() + 7) // 8  # 66: a field element on the wire


def split(secret: bytes, holders: Iterable[int], threshold: int) -> dict[int, bytes]:
    """Share ``secret`` among ``holders`` (distinct ids in [1, PRIME)) so that any ``threshold`` of them recover it.

    Returns ``{holder: share}`` with each share ``SHARE_BYTES`` long (big-endian field element).
    """
    xs = sorted(set(holders))
    if not 1 <= threshold <= len(xs):
        raise InvalidArgumentError("threshold", threshold, f"in [1, {len(xs)}] (the number of holders)")
    if any(not 0 < x < PRIME for x in xs):
        raise InvalidArgumentError("holders", xs, "ids in [1, 2^521 - 1)")
    if len(secret) > 64:
        raise InvalidArgumentError("secret", f"{len(secret)} bytes", "at most 64 bytes")
    value = int.from_bytes(secret, "big")
    coefficients = [value] + [secrets.randbelow(PRIME) for _ in range(threshold - 1)]
    shares = {}
    for x in xs:
        acc = 0
        for c in reversed(coefficients):  # Horner
            acc = (acc * x + c) % PRIME
        shares[x] = acc.to_bytes(SHARE_BYTES, "big")
    return shares


def combine(shares: Mapping[int, bytes], threshold: int, secret_len: int) -> bytes:
    """Recover the secret from at least ``threshold`` shares ``{holder: share}`` (the first ``threshold`` ids in
    sorted order are used): ``f(0) = Σ_i y_i Π_{j≠i} x_j / (x_j - x_i)``.

    Raises:
        InvalidArgumentError: fewer than ``threshold`` shares (the caller's mistake: it would give a wrong secret).
        IntegrityError: a share that cannot be a share (not ``SHARE_BYTES`` long, or not a field element), or shares
            that interpolate to a value longer than ``secret_len`` bytes — wrong shares, detected. Wrong shares that
            pass these checks give a wrong secret, which is why callers also check it against a public commitment.
    """
    if len(shares) < threshold:
        raise InvalidArgumentError("shares", len(shares), f"at least threshold={threshold} shares")
    xs = tuple(sorted(shares)[:threshold])
    if any(len(shares[x]) != SHARE_BYTES for x in xs):
        raise IntegrityError(f"a Shamir share is not {SHARE_BYTES} bytes long")
    ys = [int.from_bytes(shares[x], "big") for x in xs]
    if any(y >= PRIME for y in ys):
        raise IntegrityError("a Shamir share is not a field element (>= 2^521 - 1)")
    secret = sum(y * c for y, c in zip(ys, _lagrange_at_zero(xs))) % PRIME
    if secret >= 1 << (8 * secret_len):
        raise IntegrityError(f"Shamir shares are inconsistent: they do not interpolate to a {secret_len}-byte secret")
    return secret.to_bytes(secret_len, "big")


@functools.lru_cache(maxsize=64)
def _lagrange_at_zero(xs: tuple[int, ...]) -> tuple[int, ...]:
    """The coefficients ``Π_{j≠i} x_j / (x_j - x_i)`` mod PRIME; cached, since a server combines the secrets of
    many clients from the same holders."""
    out = []
    for i, xi in enumerate(xs):
        num, den = 1, 1
        for j, xj in enumerate(xs):
            if j != i:
                num = num * xj % PRIME
                den = den * (xj - xi) % PRIME
        out.append(num * pow(den, -1, PRIME) % PRIME)
    return tuple(out)
