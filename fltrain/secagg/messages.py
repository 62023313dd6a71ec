"""The messages of the four rounds of secure aggregation, as frozen dataclasses that serialise to bytes.

Bonawitz et al. (CCS 2017), Fig. 4, semi-honest variant. ``C→S`` is a client's message to the server, ``S→C`` the
server's message to one client (it routes, never reads, what clients address to each other):

====  ===========================  ======================================================================
round  message                      content
====  ===========================  ======================================================================
0      :class:`AdvertiseKeys` C→S   two X25519 public keys: ``enc_public`` (share encryption), ``mask_public``
                                    (pairwise masks)
1      :class:`KeyDirectory` S→C    the public keys of the client's share holders that advertised
1      :class:`ShareKeys` C→S       a commitment to the self-mask seed; per holder, an AEAD ciphertext of its
                                    Shamir shares of the seed and of the mask private key
2      :class:`ShareDelivery` S→C   the ciphertexts addressed to the client (their senders form U2)
2      :class:`MaskedInput` C→S     the masked, fixed-point-encoded input vector
3      :class:`SurvivorList` S→C    which of the client's holders sent a masked input (U3)
3      :class:`UnmaskingShares` C→S the seed share of each survivor, the key share of each dropped client
====  ===========================  ======================================================================

Wire format: ``b"SA1"``, a one-byte type tag, the 16-byte session id, then the fields in declaration order:
integers as u32 big-endian, byte strings and sequences length-prefixed (u32). Parsing rejects a wrong magic, an
unknown tag, truncated or trailing bytes (:class:`ProtocolError`).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, fields
from typing import ClassVar

from .errors import ProtocolError

__all__ = [
    "SESSION_BYTES",
    "Message",
    "AdvertiseKeys",
    "KeyDirectory",
    "ShareKeys",
    "ShareDelivery",
    "MaskedInput",
    "SurvivorList",
    "UnmaskingShares",
    "parse",
]

SESSION_BYTES = 16
_MAGIC = b"SA1"
_U32 = struct.Struct(">I")

# Field kinds: "id" u32; "bytes" length-prefixed; "ids" a tuple of ids; "pairs" a tuple of (id, bytes);
# "keys" a tuple of (id, bytes, bytes).


class _Writer:
    def __init__(self) -> None:
        self.parts: list[bytes] = []

    def id(self, value: int) -> None:
        self.parts.append(_U32.pack(value))

    def bytes(self, value: bytes) -> None:
        self.id(len(value))
        self.parts.append(bytes(value))

    def ids(self, value: tuple[int, ...]) -> None:
        self.id(len(value))
        for v in value:
            self.id(v)

    def pairs(self, value: tuple[tuple[int, bytes], ...]) -> None:
        self.id(len(value))
        for i, b in value:
            self.id(i)
            self.bytes(b)

    def keys(self, value: tuple[tuple[int, bytes, bytes], ...]) -> None:
        self.id(len(value))
        for i, a, b in value:
            self.id(i)
            self.bytes(a)
            self.bytes(b)


class _Reader:
    def __init__(self, data: bytes, offset: int) -> None:
        self.data = memoryview(data)
        self.pos = offset

    def _take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise ProtocolError("truncated message")
        out = bytes(self.data[self.pos : self.pos + n])
        self.pos += n
        return out

    def id(self) -> int:
        return _U32.unpack(self._take(4))[0]

    def bytes(self) -> bytes:
        return self._take(self.id())

    def ids(self) -> tuple[int, ...]:
        return tuple(self.id() for _ in range(self.id()))

    def pairs(self) -> tuple[tuple[int, bytes], ...]:
        return tuple((self.id(), self.bytes()) for _ in range(self.id()))

    def keys(self) -> tuple[tuple[int, bytes, bytes], ...]:
        return tuple((self.id(), self.bytes(), self.bytes()) for _ in range(self.id()))


@dataclass(frozen=True)
class Message:
    """Base of every protocol message: the session it belongs to, then the subclass's fields.

    Subclasses set ``TAG`` (their wire type) and ``KINDS`` (each field's wire kind, in declaration order).
    """

    session: bytes

    TAG: ClassVar[int] = 0
    KINDS: ClassVar[tuple[str, ...]] = ()

    def to_bytes(self) -> bytes:
        """Serialise (see the module docstring for the format)."""
        if len(self.session) != SESSION_BYTES:
            raise ProtocolError(f"session id must be {SESSION_BYTES} bytes")
        writer = _Writer()
        for f, kind in zip(fields(self)[1:], self.KINDS):
            getattr(writer, kind)(getattr(self, f.name))
        return _MAGIC + bytes([self.TAG]) + self.session + b"".join(writer.parts)


@dataclass(frozen=True)
class AdvertiseKeys(Message):
    """Round 0, client → server."""

    sender: int
    enc_public: bytes
    mask_public: bytes
    TAG: ClassVar[int] = 1
    KINDS: ClassVar[tuple[str, ...]] = ("id", "bytes", "bytes")


@dataclass(frozen=True)
class KeyDirectory(Message):
    """Round 1, server → ``recipient``: ``(id, enc_public, mask_public)`` of its holders (itself included)."""

    recipient: int
    entries: tuple[tuple[int, bytes, bytes], ...]
    TAG: ClassVar[int] = 2
    KINDS: ClassVar[tuple[str, ...]] = ("id", "keys")


@dataclass(frozen=True)
class ShareKeys(Message):
    """Round 1, client → server: ``(recipient, sealed shares)`` per holder, and SHA-256 commitment to the seed."""

    sender: int
    seed_commitment: bytes
    ciphertexts: tuple[tuple[int, bytes], ...]
    TAG: ClassVar[int] = 3
    KINDS: ClassVar[tuple[str, ...]] = ("id", "bytes", "pairs")


@dataclass(frozen=True)
class ShareDelivery(Message):
    """Round 2, server → ``recipient``: ``(sender, sealed shares)`` addressed to it."""

    recipient: int
    ciphertexts: tuple[tuple[int, bytes], ...]
    TAG: ClassVar[int] = 4
    KINDS: ClassVar[tuple[str, ...]] = ("id", "pairs")


@dataclass(frozen=True)
class MaskedInput(Message):
    """Round 2, client → server: the masked vector, ring elements as bytes (:meth:`Ring.to_bytes`)."""

    sender: int
    masked: bytes
    TAG: ClassVar[int] = 5
    KINDS: ClassVar[tuple[str, ...]] = ("id", "bytes")


@dataclass(frozen=True)
class SurvivorList(Message):
    """Round 3, server → ``recipient``: its holders whose masked input arrived (U3 restricted to them)."""

    recipient: int
    survivors: tuple[int, ...]
    TAG: ClassVar[int] = 6
    KINDS: ClassVar[tuple[str, ...]] = ("id", "ids")


@dataclass(frozen=True)
class UnmaskingShares(Message):
    """Round 3, client → server: ``(owner, share)`` of self-mask seeds of survivors and mask keys of dropouts."""

    sender: int
    seed_shares: tuple[tuple[int, bytes], ...]
    key_shares: tuple[tuple[int, bytes], ...]
    TAG: ClassVar[int] = 7
    KINDS: ClassVar[tuple[str, ...]] = ("id", "pairs", "pairs")


_BY_TAG: dict[int, type[Message]] = {
    cls.TAG: cls
    for cls in (AdvertiseKeys, KeyDirectory, ShareKeys, ShareDelivery, MaskedInput, SurvivorList, UnmaskingShares)
}


def parse(data: bytes) -> Message:
    """Deserialise any protocol message; raises :class:`ProtocolError` on malformed input."""
    header = len(_MAGIC) + 1 + SESSION_BYTES
    if len(data) < header or data[: len(_MAGIC)] != _MAGIC:
        raise ProtocolError("not a secure-aggregation message")
    cls = _BY_TAG.get(data[len(_MAGIC)])
    if cls is None:
        raise ProtocolError(f"unknown message type {data[len(_MAGIC)]}")
    reader = _Reader(data, header)
    values = [getattr(reader, kind)() for kind in cls.KINDS]
    if reader.pos != len(data):
        raise ProtocolError("trailing bytes after message")
    return cls(bytes(data[len(_MAGIC) + 1 : header]), *values)
