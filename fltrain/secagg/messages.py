"""The messages of the five rounds of secure aggregation, as frozen dataclasses that serialise to bytes.

Bonawitz et al. (CCS 2017), Fig. 4, the variant secure against an active (malicious) server: every message a
client sends carries its Ed25519 signature (:mod:`.crypto`), and a consistency-check round precedes unmasking.
``C→S`` is a client's message to the server, ``S→C`` the server's message to one client (it routes, never reads,
what clients address to each other):

=====  ==============================  ===================================================================
round  message                         content
=====  ==============================  ===================================================================
0      :class:`AdvertiseKeys` C→S      two X25519 public keys: ``enc_public`` (share encryption),
                                       ``mask_public`` (pairwise masks); signed
1      :class:`KeyDirectory` S→C       the signed advertised keys of the client's share holders
1      :class:`ShareKeys` C→S          a commitment to the self-mask seed; per holder, an AEAD ciphertext of
                                       its Shamir shares of the seed and of the mask private key; signed
2      :class:`ShareDelivery` S→C      the ciphertexts addressed to the client (their senders form U2)
2      :class:`MaskedInput` C→S        the masked, fixed-point-encoded input vector; signed
3      :class:`SurvivorList` S→C       the clients whose masked input arrived (U3, the same list for all)
3      :class:`ConsistencyCheck` C→S   the survivor list the client was shown, signed
4      :class:`UnmaskingRequest` S→C   the consistency signatures of the client's holders (at least ``t``)
4      :class:`UnmaskingShares` C→S    the seed share of each survivor, the key share of each dropped client;
                                       signed
=====  ==============================  ===================================================================

Wire format: ``b"SA2"``, a one-byte type tag, the 16-byte session id, then the fields in declaration order:
integers as u32 big-endian, byte strings and sequences length-prefixed (u32). A signature is the last field and
signs every byte before it (:meth:`Message.signed_bytes`: magic, tag, session and the other fields), so it binds
the message's type and session. Client ids are in [1, 2^32 - 1]. Parsing rejects a wrong magic, an unknown tag,
truncated or trailing bytes and id 0; serialising rejects an id or a field that does not fit
(:class:`ProtocolError` either way).
"""

from __future__ import annotations

import dataclasses
import struct
from dataclasses import dataclass, fields
from typing import ClassVar, TypeVar

from .crypto import sign, verify
from .errors import ProtocolError

__all__ = [
    "SESSION_BYTES",
    "MAX_ID",
    "Message",
    "AdvertiseKeys",
    "KeyDirectory",
    "ShareKeys",
    "ShareDelivery",
    "MaskedInput",
    "SurvivorList",
    "ConsistencyCheck",
    "UnmaskingRequest",
    "UnmaskingShares",
    "parse",
]

SESSION_BYTES = 16
MAX_ID = 2**32 - 1  # client ids travel as u32
_MAGIC = b"SA2"
_U32 = struct.Struct(">I")

# Field kinds: "id" a client id; "bytes" length-prefixed; "ids" a tuple of ids; "pairs" a tuple of (id, bytes);
# "keys" a tuple of (id, bytes, bytes, bytes).


class _Writer:
    def __init__(self) -> None:
        self.parts: list[bytes] = []

    def _u32(self, value: int, what: str) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_ID:
            raise ProtocolError(f"{what} {value!r} does not fit the wire format (an integer in [0, 2^32 - 1])")
        self.parts.append(_U32.pack(value))

    def id(self, value: int) -> None:
        if isinstance(value, int) and value == 0:
            raise ProtocolError("client id 0: ids are in [1, 2^32 - 1]")
        self._u32(value, "client id")

    def bytes(self, value: bytes) -> None:
        if not isinstance(value, bytes):
            raise ProtocolError(f"a byte-string field holds a {type(value).__name__}")
        self._u32(len(value), "length")
        self.parts.append(value)

    def _count(self, value: tuple) -> None:
        if not isinstance(value, tuple):
            raise ProtocolError(f"a sequence field holds a {type(value).__name__}, not a tuple")
        self._u32(len(value), "count")

    def ids(self, value: tuple[int, ...]) -> None:
        self._count(value)
        if not all(type(v) is int and 1 <= v <= MAX_ID for v in value):
            for v in value:
                self.id(v)  # raises, naming the offending id
        self.parts.append(struct.pack(f">{len(value)}I", *value))

    def pairs(self, value: tuple[tuple[int, bytes], ...]) -> None:
        self._count(value)
        for i, b in value:
            self.id(i)
            self.bytes(b)

    def keys(self, value: tuple[tuple[int, bytes, bytes, bytes], ...]) -> None:
        self._count(value)
        for i, a, b, c in value:
            self.id(i)
            self.bytes(a)
            self.bytes(b)
            self.bytes(c)


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

    def _u32(self) -> int:
        return _U32.unpack(self._take(4))[0]

    def id(self) -> int:
        value = self._u32()
        if value == 0:
            raise ProtocolError("client id 0: ids are in [1, 2^32 - 1]")
        return value

    def bytes(self) -> bytes:
        return self._take(self._u32())

    def ids(self) -> tuple[int, ...]:
        count = self._u32()
        if 4 * count > len(self.data) - self.pos:
            raise ProtocolError("truncated message")
        values = struct.unpack(f">{count}I", self._take(4 * count))
        if 0 in values:
            raise ProtocolError("client id 0: ids are in [1, 2^32 - 1]")
        return values

    def pairs(self) -> tuple[tuple[int, bytes], ...]:
        return tuple((self.id(), self.bytes()) for _ in range(self._u32()))

    def keys(self) -> tuple[tuple[int, bytes, bytes, bytes], ...]:
        return tuple((self.id(), self.bytes(), self.bytes(), self.bytes()) for _ in range(self._u32()))


M = TypeVar("M", bound="Message")


@dataclass(frozen=True)
class Message:
    """Base of every protocol message: the session it belongs to, then the subclass's fields.

    Subclasses set ``TAG`` (their wire type) and ``KINDS`` (each field's wire kind, in declaration order). A
    client's message ends with a ``signature`` field (empty until :meth:`signed`).
    """

    session: bytes

    TAG: ClassVar[int] = 0
    KINDS: ClassVar[tuple[str, ...]] = ()

    def _encode(self, with_signature: bool) -> bytes:
        if not isinstance(self.session, bytes) or len(self.session) != SESSION_BYTES:
            raise ProtocolError(f"session id must be {SESSION_BYTES} bytes")
        writer = _Writer()
        for f, kind in zip(fields(self)[1:], self.KINDS):
            if f.name != "signature" or with_signature:
                try:
                    getattr(writer, kind)(getattr(self, f.name))
                except (TypeError, ValueError) as exc:  # e.g. a pair that is not a pair
                    raise ProtocolError(f"field {f.name!r} of {type(self).__name__} is malformed: {exc}") from exc
        return _MAGIC + bytes([self.TAG]) + self.session + b"".join(writer.parts)

    def to_bytes(self) -> bytes:
        """Serialise (see the module docstring for the format)."""
        return self._encode(with_signature=True)

    def signed_bytes(self) -> bytes:
        """What the ``signature`` field signs: the serialised message without that field."""
        return self._encode(with_signature=False)

    def signed(self: M, signing_key: bytes) -> M:
        """This message with its ``signature`` field set: Ed25519 over :meth:`signed_bytes`."""
        return dataclasses.replace(self, signature=sign(signing_key, self.signed_bytes()))

    def signature_valid(self, public: bytes) -> bool:
        """Whether the ``signature`` field is a valid signature of this message under ``public``."""
        return verify(public, getattr(self, "signature"), self.signed_bytes())


@dataclass(frozen=True)
class AdvertiseKeys(Message):
    """Round 0, client → server."""

    sender: int
    enc_public: bytes
    mask_public: bytes
    signature: bytes = b""
    TAG: ClassVar[int] = 1
    KINDS: ClassVar[tuple[str, ...]] = ("id", "bytes", "bytes", "bytes")


@dataclass(frozen=True)
class KeyDirectory(Message):
    """Round 1, server → ``recipient``: ``(id, enc_public, mask_public, signature)`` of its holders (itself
    included), each the content of that holder's :class:`AdvertiseKeys`."""

    recipient: int
    entries: tuple[tuple[int, bytes, bytes, bytes], ...]
    TAG: ClassVar[int] = 2
    KINDS: ClassVar[tuple[str, ...]] = ("id", "keys")


@dataclass(frozen=True)
class ShareKeys(Message):
    """Round 1, client → server: SHA-256 commitment to the seed, and ``(recipient, sealed shares)`` per holder."""

    sender: int
    seed_commitment: bytes
    ciphertexts: tuple[tuple[int, bytes], ...]
    signature: bytes = b""
    TAG: ClassVar[int] = 3
    KINDS: ClassVar[tuple[str, ...]] = ("id", "bytes", "pairs", "bytes")


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
    signature: bytes = b""
    TAG: ClassVar[int] = 5
    KINDS: ClassVar[tuple[str, ...]] = ("id", "bytes", "bytes")


@dataclass(frozen=True)
class SurvivorList(Message):
    """Round 3, server → ``recipient``: every client whose masked input arrived (U3), in increasing order."""

    recipient: int
    survivors: tuple[int, ...]
    TAG: ClassVar[int] = 6
    KINDS: ClassVar[tuple[str, ...]] = ("id", "ids")


@dataclass(frozen=True)
class ConsistencyCheck(Message):
    """Round 3, client → server: the survivor list the client was shown, signed. The signature is what the
    server relays to the client's peers; each peer verifies it against the list *it* was shown."""

    sender: int
    survivors: tuple[int, ...]
    signature: bytes = b""
    TAG: ClassVar[int] = 8
    KINDS: ClassVar[tuple[str, ...]] = ("id", "ids", "bytes")


@dataclass(frozen=True)
class UnmaskingRequest(Message):
    """Round 4, server → ``recipient``: ``(signer, signature)`` of the :class:`ConsistencyCheck` of each of its
    holders that answered round 3."""

    recipient: int
    signatures: tuple[tuple[int, bytes], ...]
    TAG: ClassVar[int] = 9
    KINDS: ClassVar[tuple[str, ...]] = ("id", "pairs")


@dataclass(frozen=True)
class UnmaskingShares(Message):
    """Round 4, client → server: ``(owner, share)`` of self-mask seeds of survivors and mask keys of dropouts."""

    sender: int
    seed_shares: tuple[tuple[int, bytes], ...]
    key_shares: tuple[tuple[int, bytes], ...]
    signature: bytes = b""
    TAG: ClassVar[int] = 7
    KINDS: ClassVar[tuple[str, ...]] = ("id", "pairs", "pairs", "bytes")


_BY_TAG: dict[int, type[Message]] = {
    cls.TAG: cls
    for cls in (AdvertiseKeys, KeyDirectory, ShareKeys, ShareDelivery, MaskedInput, SurvivorList, ConsistencyCheck,
                UnmaskingRequest, UnmaskingShares)
}


def parse(data: bytes) -> Message:
    """Deserialise any protocol message; raises :class:`ProtocolError` on malformed input."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ProtocolError(f"a message is bytes, not {type(data).__name__}")
    data = bytes(data)
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
    return cls(data[len(_MAGIC) + 1 : header], *values)
