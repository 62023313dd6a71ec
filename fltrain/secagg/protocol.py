"""The secure-aggregation protocol of Bonawitz et al. (CCS 2017) in its variant against an active (malicious)
server, with dropouts at any stage and an optional sparse graph (SecAgg+, Bell et al., CCS 2020):
:class:`Client`, :class:`Server`, and :func:`run_secure_aggregation`, which plays one round in process with every
message passed as bytes.

Client ``u`` with input ``x_u`` (encoded in Z_(2^k), :mod:`.encoding`) sends

    y_u = x_u + PRG(b_u) + Σ_{v ∈ N(u) ∩ U2, v > u} PRG(s_uv) − Σ_{v ∈ N(u) ∩ U2, v < u} PRG(s_uv)   (mod 2^k)

where ``b_u`` is a fresh self-mask seed, ``s_uv`` the X25519 agreement of the two clients' mask keys (the same
from both sides, so the pairwise masks of two survivors cancel in the sum) and ``U2`` the clients whose Shamir
shares were delivered. For the survivors ``U3`` (masked input received) the server asks the survivors'
share holders for the shares of ``b_u``, and for each client ``v`` in ``U2 \\ U3`` (dropped after sharing its keys)
for the shares of ``v``'s mask private key, from which it recomputes and removes ``v``'s pairwise masks. The
server thus learns ``Σ_{u ∈ U3} x_u`` and nothing else about the inputs (Bonawitz et al., Thm 6.2 for the
semi-honest case, §6.2 with the consistency check for the active one) as long as it never holds ``t`` shares of
both secrets of one client.

Against a server that deviates, the clients enforce that themselves (Bonawitz et al., §4 and Fig. 4, active
variant):

- **PKI.** Every client has a long-term Ed25519 identity key; every party knows every client's public identity
  key from a PKI that the server cannot alter (``pki``: client id → 32-byte key). Every message a client sends is
  signed; a client accepts only key directories whose entries carry their owner's signature, so the server cannot
  invent clients (Sybils) or substitute keys.
- **Threshold against the holders shown.** A client shares its secrets only if ``t`` exceeds half of the holders
  its key directory names (``2t > |holders|``: two disjoint groups of holders can never both reach ``t``) and ``t``
  is at least the client's own floor ``min_threshold`` — whatever threshold the server's graph would allow.
- **Consistency check** (round 3). The server sends every survivor the same list U3; each client checks it
  against what it saw, signs it and returns the signature; the server must relay to each client the signatures of
  at least ``t`` of its holders, and the client reveals shares only if every relayed signature is a valid
  signature over the list *it* was shown (:class:`ConsistencyError` otherwise). Each client answers the
  unmasking request once per session, revealing for every peer either the seed share (peer in U3) or the key
  share (peer dropped), never both.

Aborts (typed, never a wrong sum): a client's share holders that remain fall below ``t`` at any stage
(:class:`TooFewClientsError`); a threshold that would not protect a client (:class:`UnsafeThresholdError`); an
AEAD or signature failure, a reconstructed secret that does not match its public key or commitment
(:class:`IntegrityError`); relayed signatures over another survivor list (:class:`ConsistencyError`); a message
from another session, a closed stage, or twice (:class:`ReplayError`); any other malformed or inconsistent
message (:class:`ProtocolError`). docs/secagg.md ("Threat model") says what is and is not protected.
"""

from __future__ import annotations

import hashlib
import os
import struct
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np

from dpcalib import validation as check
from dpcalib.errors import InvalidArgumentError

from . import shamir
from .crypto import (
    KEY_BYTES,
    agree,
    expand_mask,
    generate_private_key,
    generate_signing_key,
    open_sealed,
    public_key,
    random_seed,
    seal,
    verifying_key,
)
from .discrete import RingCodec
from .encoding import FixedPoint
from .errors import (
    ConsistencyError,
    IntegrityError,
    ProtocolError,
    ReplayError,
    TooFewClientsError,
    UnsafeThresholdError,
)
from .graph import Graph, complete_graph
from .messages import (
    MAX_ID,
    SESSION_BYTES,
    AdvertiseKeys,
    ConsistencyCheck,
    KeyDirectory,
    MaskedInput,
    Message,
    ShareDelivery,
    ShareKeys,
    SurvivorList,
    UnmaskingRequest,
    UnmaskingShares,
    parse,
)

__all__ = [
    "STAGES",
    "DEFAULT_MIN_THRESHOLD",
    "SecAggParams",
    "Client",
    "Server",
    "AggregationResult",
    "RoundCost",
    "new_session",
    "new_identities",
    "run_secure_aggregation",
]

STAGES = ("advertise_keys", "share_keys", "masked_input", "consistency_check", "unmasking")
#: A client's default floor on ``t``: no single other party (the server with one client) can reconstruct a secret.
DEFAULT_MIN_THRESHOLD = 2
_IDS = struct.Struct(">II")
_SEED_BYTES = 32
_CLIENT_STAGE = {AdvertiseKeys: 0, ShareKeys: 1, MaskedInput: 2, ConsistencyCheck: 3, UnmaskingShares: 4}


@dataclass(frozen=True)
class SecAggParams:
    """What every party agrees on before a round (announced by the server; each client checks ``threshold``
    against the holders it is shown, see :class:`Client`).

    Args:
        dim: length of the input vectors.
        codec: the fixed-point encoding (its ``max_clients`` must cover every client of the round), or a
            :class:`~fltrain.secagg.discrete.RingCodec` for integer inputs (the discrete pipeline of distributed DP).
        threshold: ``t``, the number of share holders needed to reconstruct a secret; with the complete graph a
            round survives ``n - t`` dropouts. Must exceed half of each client's holders (the client itself and
            its neighbours), so that no minority can reconstruct.
        min_survivors: the server, and every client in the consistency check, abort when fewer clients than this
            sent a masked input, so that a sum, when there is one, covers at least ``min_survivors`` inputs
            (default 1: only the threshold rule). With the complete graph ``t`` survivors are implied; with
            SecAgg+ the per-neighbourhood rule alone allows much smaller sums, and distributed DP needs a floor on
            the number of noise shares.
    """

    dim: int
    codec: FixedPoint | RingCodec
    threshold: int
    min_survivors: int = 1

    def __post_init__(self) -> None:
        check.count("dim", self.dim, minimum=1)
        check.count("threshold", self.threshold, minimum=1)
        check.count("min_survivors", self.min_survivors, minimum=1)
        if not isinstance(self.codec, (FixedPoint, RingCodec)):
            raise InvalidArgumentError("codec", self.codec, "a FixedPoint encoding or a RingCodec")


def new_session() -> bytes:
    """A fresh random session id (binds every message and key of one round to that round)."""
    return os.urandom(SESSION_BYTES)


def new_identities(ids: Iterable[int]) -> tuple[dict[int, bytes], dict[int, bytes]]:
    """Fresh Ed25519 identity keys for the clients ``ids`` and the PKI that publishes them:
    ``(signing keys, pki)``, both keyed by client id.

    For simulations (:func:`run_secure_aggregation`) and tests. In a deployment each client generates its signing
    key once and keeps it; the PKI (an authority the server does not control) binds its public half to its id.
    """
    signing = {u: generate_signing_key() for u in ids}
    return signing, {u: verifying_key(k) for u, k in signing.items()}


def _check_id(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_ID:
        raise InvalidArgumentError(name, value, "an integer in [1, 2^32 - 1]")
    return value


def _check_pki(pki: Mapping[int, bytes]) -> dict[int, bytes]:
    if not isinstance(pki, Mapping) or not pki:
        raise InvalidArgumentError("pki", type(pki).__name__, "a non-empty mapping client id -> Ed25519 public key")
    out = {}
    for u, key in pki.items():
        _check_id("pki", u)
        if not isinstance(key, bytes) or len(key) != KEY_BYTES:
            raise InvalidArgumentError("pki", f"key of client {u}", f"{KEY_BYTES} bytes (an Ed25519 public key)")
        out[u] = key
    return out


def _label(purpose: bytes, a: int, b: int) -> bytes:
    return purpose + _IDS.pack(min(a, b), max(a, b))


def _share_context(session: bytes, sender: int, recipient: int) -> bytes:
    return b"secagg/v2/shares" + session + _IDS.pack(sender, recipient)


def _seed_commitment(session: bytes, owner: int, seed: bytes) -> bytes:
    return hashlib.sha256(b"secagg/v2/seed" + session + _IDS.pack(owner, 0) + seed).digest()


def _pairwise_mask(private: bytes, peer_public: bytes, session: bytes, u: int, v: int, params: SecAggParams):
    seed = agree(private, peer_public, salt=session, label=_label(b"secagg/v2/mask", u, v))
    return expand_mask(seed, params.codec.ring, params.dim)


class Client:
    """One client's side of a round. Call, in order, :meth:`advertise_keys`, :meth:`share_keys`,
    :meth:`masked_input`, :meth:`consistency_check`, :meth:`unmask`; each consumes the server's message of that
    stage and answers it with a signed message. Keys and the self-mask seed are fresh per instance: one instance,
    one session. A stage is entered once: a message that makes it fail aborts the client's part of the round.

    Args:
        client_id: this client's id, in [1, 2^32 - 1] (its Shamir evaluation point).
        params: the round's parameters as the server announced them.
        session: the round's session id (16 bytes).
        signing_key: this client's Ed25519 identity key (raw 32 bytes); ``pki[client_id]`` must be its public key.
        pki: client id → Ed25519 public identity key, for every client that may take part; assumed authentic
            (see the module docstring).
        min_threshold: this client's floor on ``t`` (≥ 2): it refuses parameters with a smaller threshold
            (:class:`UnsafeThresholdError`). Raise it to tolerate more colluding clients.

    Raises:
        InvalidArgumentError: a malformed argument.
        UnsafeThresholdError: ``params.threshold < min_threshold``.
    """

    def __init__(
        self,
        client_id: int,
        params: SecAggParams,
        session: bytes,
        signing_key: bytes,
        pki: Mapping[int, bytes],
        *,
        min_threshold: int = DEFAULT_MIN_THRESHOLD,
    ) -> None:
        self.id = _check_id("client_id", client_id)
        if not isinstance(params, SecAggParams):
            raise InvalidArgumentError("params", type(params).__name__, "a SecAggParams")
        if not isinstance(session, bytes) or len(session) != SESSION_BYTES:
            raise InvalidArgumentError("session", session, f"{SESSION_BYTES} bytes")
        self.pki = _check_pki(pki)
        try:
            own = verifying_key(signing_key)
        except (TypeError, ValueError) as exc:
            raise InvalidArgumentError("signing_key", "malformed", "a raw 32-byte Ed25519 private key") from exc
        if self.pki.get(self.id) != own:
            raise InvalidArgumentError("signing_key", "not the key the PKI publishes for this client",
                                       f"the private half of pki[{self.id}]")
        self.min_threshold = check.count("min_threshold", min_threshold, minimum=2)
        if params.threshold < self.min_threshold:
            raise UnsafeThresholdError(f"client {self.id}: threshold t={params.threshold} is below this client's "
                                       f"floor {self.min_threshold}")
        self.params = params
        self.session = session
        self._signing_key = signing_key
        self._enc_private = generate_private_key()
        self._mask_private = generate_private_key()
        self._seed = random_seed()
        self._next = 0  # index in STAGES of the next call
        self._peers: dict[int, tuple[bytes, bytes]] = {}  # holder -> (enc_public, mask_public), itself included
        self._received: dict[int, tuple[bytes, bytes]] = {}  # peer -> (its seed share, its key share) held here
        self._survivors: tuple[int, ...] = ()  # the U3 this client signed

    def _enter(self, stage: int, message: Message | None, expected: type[Message] | None) -> None:
        if expected is not None:
            if not isinstance(message, expected):
                raise ProtocolError(f"client {self.id}: expected a {expected.__name__} at stage "
                                    f"{STAGES[stage]!r}, got {type(message).__name__}")
            if message.session != self.session:
                raise ReplayError(f"client {self.id}: message from another session at stage {STAGES[stage]!r}")
            if message.recipient != self.id:
                raise ProtocolError(f"client {self.id}: message addressed to client {message.recipient}")
        if stage < self._next:
            raise ReplayError(f"client {self.id}: stage {STAGES[stage]!r} already done in this session")
        if stage > self._next:
            raise ProtocolError(f"client {self.id}: stage {STAGES[stage]!r} before {STAGES[self._next]!r}")
        self._next += 1

    def _share_key(self, peer: int) -> bytes:
        return agree(self._enc_private, self._peers[peer][0], salt=self.session,
                     label=_label(b"secagg/v2/enc", self.id, peer))

    def advertise_keys(self) -> AdvertiseKeys:
        """Round 0: the two public keys, signed."""
        self._enter(0, None, None)
        message = AdvertiseKeys(self.session, self.id, public_key(self._enc_private), public_key(self._mask_private))
        return message.signed(self._signing_key)

    def share_keys(self, directory: KeyDirectory) -> ShareKeys:
        """Round 1: check the directory (every entry signed by its owner's PKI key, this client's keys as sent,
        no key twice, ``t ≤ holders < 2t``), Shamir-share the seed and the mask private key among the holders it
        names (threshold t), and seal each holder's two shares for it (AES-GCM, context bound)."""
        self._enter(1, directory, KeyDirectory)
        t = self.params.threshold
        peers: dict[int, tuple[bytes, bytes]] = {}
        for v, enc, mask, signature in directory.entries:
            if v in peers:
                raise ProtocolError(f"client {self.id}: key directory lists client {v} twice")
            if v not in self.pki:
                raise IntegrityError(f"client {self.id}: key directory lists client {v}, unknown to the PKI")
            if len(enc) != KEY_BYTES or len(mask) != KEY_BYTES:
                raise ProtocolError(f"client {self.id}: key directory holds a malformed key of client {v}")
            if not AdvertiseKeys(self.session, v, enc, mask, signature).signature_valid(self.pki[v]):
                raise IntegrityError(f"client {self.id}: the keys listed for client {v} are not signed by it")
            peers[v] = (enc, mask)
        if peers.get(self.id) != (public_key(self._enc_private), public_key(self._mask_private)):
            raise ProtocolError(f"client {self.id}: key directory misstates or omits this client's keys")
        if len({k for pair in peers.values() for k in pair}) != 2 * len(peers):
            raise ProtocolError(f"client {self.id}: key directory repeats a public key")
        if len(peers) < t:
            raise TooFewClientsError(STAGES[1], len(peers), t, f"holders in client {self.id}'s key directory")
        if 2 * t <= len(peers):
            raise UnsafeThresholdError(
                f"client {self.id}: threshold t={t} with {len(peers)} share holders; two disjoint groups of holders "
                f"could each reach t (need 2t > holders)")
        self._peers = peers
        seed_shares = shamir.split(self._seed, peers, t)
        key_shares = shamir.split(self._mask_private, peers, t)
        self._received[self.id] = (seed_shares[self.id], key_shares[self.id])
        ciphertexts = tuple(
            (v, seal(self._share_key(v), _IDS.pack(self.id, v) + seed_shares[v] + key_shares[v],
                     _share_context(self.session, self.id, v)))
            for v in sorted(peers) if v != self.id
        )
        message = ShareKeys(self.session, self.id, _seed_commitment(self.session, self.id, self._seed), ciphertexts)
        return message.signed(self._signing_key)

    def masked_input(self, delivery: ShareDelivery, x: np.ndarray) -> MaskedInput:
        """Round 2: open the shares addressed to this client (senders form U2) and send
        ``encode(x) + PRG(b_u) ± the pairwise masks with U2``, signed."""
        x = np.asarray(x)  # the codec checks the type: floats for FixedPoint, integers for RingCodec
        if x.shape != (self.params.dim,):
            raise InvalidArgumentError("x", x.shape, f"a vector of shape ({self.params.dim},)")
        self._enter(2, delivery, ShareDelivery)
        t = self.params.threshold
        share = shamir.SHARE_BYTES
        for v, sealed in delivery.ciphertexts:
            if v not in self._peers or v == self.id or v in self._received:
                raise ProtocolError(f"client {self.id}: unexpected or repeated shares from client {v}")
            plain = open_sealed(self._share_key(v), sealed, _share_context(self.session, v, self.id))
            if len(plain) != _IDS.size + 2 * share or _IDS.unpack(plain[: _IDS.size]) != (v, self.id):
                raise IntegrityError(f"client {self.id}: shares from client {v} name the wrong parties")
            body = plain[_IDS.size :]
            self._received[v] = (body[:share], body[share:])
        if len(self._received) < t:
            raise TooFewClientsError(STAGES[2], len(self._received), t, f"clients that shared with client {self.id}")
        ring = self.params.codec.ring
        y = self.params.codec.encode(x) + expand_mask(self._seed, ring, self.params.dim)
        for v in self._received:
            if v == self.id:
                continue
            mask = _pairwise_mask(self._mask_private, self._peers[v][1], self.session, self.id, v, self.params)
            y = y + mask if v > self.id else y - mask
        return MaskedInput(self.session, self.id, ring.to_bytes(ring.reduce(y))).signed(self._signing_key)

    def consistency_check(self, survivors: SurvivorList) -> ConsistencyCheck:
        """Round 3: check the survivor list U3 (increasing, known ids, this client in it, its holders in U3 all
        shared keys with it, at least ``t`` of them, at least ``min_survivors`` in all) and sign it."""
        self._enter(3, survivors, SurvivorList)
        u3 = survivors.survivors
        t = self.params.threshold
        if any(a >= b for a, b in zip(u3, u3[1:])):
            raise ProtocolError(f"client {self.id}: survivor list not in increasing order")
        if self.id not in u3 or not set(u3) <= self.pki.keys():
            raise ProtocolError(f"client {self.id}: survivor list omits this client or names clients outside the PKI")
        alive = set(u3) & self._peers.keys()
        if not alive <= self._received.keys():
            raise ProtocolError(f"client {self.id}: survivor list names holders that did not share keys with it")
        if len(alive) < t:
            raise TooFewClientsError(STAGES[3], len(alive), t, f"survivors among client {self.id}'s holders")
        if len(u3) < self.params.min_survivors:
            raise TooFewClientsError(STAGES[3], len(u3), self.params.min_survivors, "min_survivors")
        self._survivors = u3
        return ConsistencyCheck(self.session, self.id, u3).signed(self._signing_key)

    def unmask(self, request: UnmaskingRequest) -> UnmaskingShares:
        """Round 4: verify that at least ``t`` of this client's holders in U3 signed the same U3 as this client
        (any relayed signature over another list aborts: :class:`ConsistencyError`); then, for each peer of U2,
        the seed share if it is in U3, else its key share — never both, and only once per session."""
        self._enter(4, request, UnmaskingRequest)
        u3, t = self._survivors, self.params.threshold
        signers = [v for v, _ in request.signatures]
        if len(set(signers)) != len(signers) or not set(signers) <= set(u3) & self._peers.keys():
            raise ProtocolError(f"client {self.id}: consistency signatures repeat a signer or come from a client "
                                f"that is not a surviving holder")
        for v, signature in request.signatures:
            if not ConsistencyCheck(self.session, v, u3, signature).signature_valid(self.pki[v]):
                raise ConsistencyError(f"client {self.id}: client {v}'s consistency signature is not over the "
                                       f"survivor list shown to client {self.id}")
        if len(signers) < t:
            raise TooFewClientsError(STAGES[4], len(signers), t, f"consistency signatures for client {self.id}")
        received, self._received = self._received, {}
        alive = set(u3)
        message = UnmaskingShares(
            self.session,
            self.id,
            tuple((v, received[v][0]) for v in sorted(received.keys() & alive)),
            tuple((v, received[v][1]) for v in sorted(received.keys() - alive)),
        )
        return message.signed(self._signing_key)


@dataclass(frozen=True)
class AggregationResult:
    """What the server learns: the decoded sum of the survivors' inputs, and who the survivors are."""

    total: np.ndarray
    survivors: frozenset[int]


class Server:
    """The server's side of a round over ``graph`` (who shares with whom; e.g. :func:`complete_graph`).

    Feed every client message to :meth:`receive` (it rejects a malformed, unsigned, replayed or out-of-stage
    message with a typed error; the caller then treats the sender as dropped); call :meth:`advance` to close each
    of the first four stages (it returns the message for each client still in the round) and :meth:`result`
    after the last. ``pki`` (client id → Ed25519 public identity key) must cover every client of the graph.
    """

    def __init__(self, params: SecAggParams, graph: Graph, pki: Mapping[int, bytes],
                 session: bytes | None = None) -> None:
        self.params = params
        self.graph = {u: frozenset(vs) for u, vs in graph.items()}
        for u in self.graph:
            _check_id("graph", u)
        self.pki = _check_pki(pki)
        if not self.graph.keys() <= self.pki.keys():
            raise InvalidArgumentError("pki", sorted(self.graph.keys() - self.pki.keys())[:5],
                                       "a public key for every client of the graph")
        self.session = session if session is not None else new_session()
        if not isinstance(self.session, bytes) or len(self.session) != SESSION_BYTES:
            raise InvalidArgumentError("session", self.session, f"{SESSION_BYTES} bytes")
        # a RingCodec's sum wraps by design beyond its range (the discrete pipeline bounds the chance of it)
        if isinstance(params.codec, FixedPoint) and len(self.graph) > params.codec.max_clients:
            raise InvalidArgumentError("codec.max_clients", params.codec.max_clients,
                                       f">= the number of clients ({len(self.graph)})")
        sizes = {len(vs) + 1 for vs in self.graph.values()}
        t = params.threshold
        if not all(size / 2 < t <= size for size in sizes):
            raise InvalidArgumentError("threshold", t, f"in (holders/2, holders] for holder-set sizes {sorted(sizes)}")
        self._stage = 0
        self._inbox: list[dict[int, Message]] = [{} for _ in STAGES]
        self._masked: dict[int, np.ndarray] = {}
        self._survivors: tuple[int, ...] = ()

    def holders(self, u: int) -> frozenset[int]:
        """Who holds shares of ``u``'s secrets: ``u`` and its neighbours."""
        return self.graph[u] | {u}

    def receive(self, message: Message) -> None:
        """Accept one client message of the current stage (checks type, session, stage, sender, signature,
        duplicates and content)."""
        stage = _CLIENT_STAGE.get(type(message))
        if stage is None:
            raise ProtocolError(f"server cannot receive a {type(message).__name__}")
        name = type(message).__name__
        if message.session != self.session:
            raise ReplayError(f"{name} from another session")
        if stage < self._stage:
            raise ReplayError(f"{name} after stage {STAGES[stage]!r} closed")
        if stage > self._stage:
            raise ProtocolError(f"{name} before stage {STAGES[stage]!r} opened")
        sender = message.sender
        if sender not in self.graph:
            raise ProtocolError(f"client {sender} is not in the round")
        if not message.signature_valid(self.pki[sender]):
            raise IntegrityError(f"{name} from client {sender} is not signed by its identity key")
        if sender in self._inbox[stage]:
            raise ReplayError(f"second {name} from client {sender}")
        if stage > 0 and sender not in self._inbox[stage - 1]:
            raise ProtocolError(f"client {sender} is not in the round at stage {STAGES[stage]!r}")
        self._check_content(message)
        self._inbox[stage][sender] = message

    def _check_content(self, message: Message) -> None:
        sender = message.sender
        if isinstance(message, AdvertiseKeys):
            if len(message.enc_public) != KEY_BYTES or len(message.mask_public) != KEY_BYTES:
                raise ProtocolError(f"client {sender} advertised a malformed public key")
        elif isinstance(message, ShareKeys):
            expected = (self.holders(sender) & self._inbox[0].keys()) - {sender}
            if {v for v, _ in message.ciphertexts} != expected or len(message.ciphertexts) != len(expected):
                raise ProtocolError(f"client {sender} did not address exactly its holders")
            if len(message.seed_commitment) != hashlib.sha256().digest_size:
                raise ProtocolError(f"client {sender} sent a malformed seed commitment")
        elif isinstance(message, MaskedInput):
            try:
                vector = self.params.codec.ring.from_bytes(message.masked)
            except ValueError as exc:
                raise ProtocolError(f"client {sender}: {exc}") from exc
            if vector.shape != (self.params.dim,):
                raise ProtocolError(f"client {sender}: masked vector of length {vector.size}, not {self.params.dim}")
            self._masked[sender] = vector
        elif isinstance(message, ConsistencyCheck):
            if message.survivors != self._survivors:
                raise ConsistencyError(f"client {sender} signed a survivor list other than the one sent")
        else:
            survivors, shared = set(self._survivors), set(self._inbox[1])
            for shares, expected in ((message.seed_shares, survivors), (message.key_shares, shared - survivors)):
                owners = [owner for owner, _ in shares]
                if len(set(owners)) != len(owners) or any(
                        o not in expected or sender not in self.holders(o) for o in owners):
                    raise ProtocolError(f"client {sender} revealed an unexpected share")
                if any(len(share) != shamir.SHARE_BYTES for _, share in shares):
                    raise ProtocolError(f"client {sender} revealed a share of the wrong length")

    def _check(self, stage: int, owners: Iterable[int], alive: set[int]) -> None:
        t = self.params.threshold
        for u in owners:
            count = len(self.holders(u) & alive)
            if count < t:
                raise TooFewClientsError(STAGES[stage], count, t, f"share holders of client {u} still present")

    def advance(self) -> dict[int, Message]:
        """Close the current stage (one of the first four) and return each remaining client's next message."""
        stage = self._stage
        if stage >= len(STAGES) - 1:
            raise ProtocolError("no stage to advance to: call result() after the unmasking stage")
        alive = set(self._inbox[stage])
        owners = alive if stage < 2 else set(self._inbox[1])
        self._check(stage, owners, alive)
        if stage <= 2 and len(alive) < self.params.min_survivors:  # U3 ⊆ the clients alive at stages 0-2
            raise TooFewClientsError(STAGES[stage], len(alive), self.params.min_survivors, "min_survivors")
        self._stage += 1
        s, inbox = self.session, self._inbox[stage]
        if stage == 0:
            return {
                u: KeyDirectory(s, u, tuple((v, inbox[v].enc_public, inbox[v].mask_public, inbox[v].signature)
                                            for v in sorted(self.holders(u) & alive)))
                for u in sorted(alive)
            }
        if stage == 1:
            routed: dict[int, list[tuple[int, bytes]]] = defaultdict(list)
            for u in sorted(alive):
                for v, sealed in inbox[u].ciphertexts:
                    if v in alive:
                        routed[v].append((u, sealed))
            return {v: ShareDelivery(s, v, tuple(routed[v])) for v in sorted(alive)}
        if stage == 2:
            self._survivors = tuple(sorted(alive))
            return {u: SurvivorList(s, u, self._survivors) for u in self._survivors}
        return {
            w: UnmaskingRequest(s, w, tuple((v, inbox[v].signature) for v in sorted(self.holders(w) & alive)))
            for w in sorted(alive)
        }

    def result(self) -> AggregationResult:
        """Close the unmasking stage: reconstruct the survivors' self-mask seeds and the dropped clients' mask
        keys (each checked against its commitment or public key), remove all masks, decode the sum."""
        last = len(STAGES) - 1
        if self._stage != last:
            raise ProtocolError(f"result() at stage {STAGES[self._stage]!r}; the unmasking stage is not open")
        shared, survivors, responders = set(self._inbox[1]), set(self._survivors), set(self._inbox[last])
        self._check(last, shared, responders)
        self._stage += 1
        seed_shares: dict[int, dict[int, bytes]] = defaultdict(dict)
        key_shares: dict[int, dict[int, bytes]] = defaultdict(dict)
        for w in sorted(responders):
            reply = self._inbox[last][w]
            for owner, share in reply.seed_shares:
                seed_shares[owner][w] = share
            for owner, share in reply.key_shares:
                key_shares[owner][w] = share
        t, params, s = self.params.threshold, self.params, self.session
        total = np.zeros(params.dim, dtype=np.uint64)
        for u in sorted(survivors):
            total += self._masked[u]
            if len(seed_shares[u]) < t:
                raise TooFewClientsError(STAGES[last], len(seed_shares[u]), t, f"seed shares of client {u}")
            seed = shamir.combine(seed_shares[u], t, _SEED_BYTES)
            if _seed_commitment(s, u, seed) != self._inbox[1][u].seed_commitment:
                raise IntegrityError(f"reconstructed self-mask seed of client {u} does not match its commitment")
            total -= expand_mask(seed, params.codec.ring, params.dim)
        for v in sorted(shared - survivors):
            if len(key_shares[v]) < t:
                raise TooFewClientsError(STAGES[last], len(key_shares[v]), t, f"key shares of dropped client {v}")
            private = shamir.combine(key_shares[v], t, _SEED_BYTES)
            if public_key(private) != self._inbox[0][v].mask_public:
                raise IntegrityError(f"reconstructed mask key of dropped client {v} does not match its public key")
            for u in sorted(self.graph[v] & survivors):
                mask = _pairwise_mask(private, self._inbox[0][u].mask_public, s, v, u, params)
                # u added +mask when v > u, -mask when v < u; take it back.
                total = total - mask if v > u else total + mask
        return AggregationResult(params.codec.decode(total), frozenset(survivors))


@dataclass
class RoundCost:
    """What one simulated round cost: CPU seconds and bytes sent, per client and for the server."""

    client_cpu_s: dict[int, float] = field(default_factory=lambda: defaultdict(float))
    client_bytes_sent: dict[int, int] = field(default_factory=lambda: defaultdict(int))
    server_cpu_s: float = 0.0
    server_bytes_sent: int = 0


def run_secure_aggregation(
    inputs: Mapping[int, np.ndarray],
    params: SecAggParams,
    *,
    graph: Graph | None = None,
    dropouts: Mapping[str, Iterable[int]] | None = None,
    session: bytes | None = None,
    channel: Callable[[bytes], bytes] | None = None,
) -> tuple[AggregationResult, RoundCost]:
    """Play one round in process: every message is serialised to bytes and parsed back, as a transport would.

    The clients' identity keys and the PKI are made fresh for the round (:func:`new_identities`).

    Args:
        inputs: client id (in [1, 2^32 - 1]) → float vector of length ``params.dim``.
        params: encoding, dimension, threshold.
        graph: who shares with whom; default :func:`complete_graph` over the clients (SecAgg).
        dropouts: stage name (one of :data:`STAGES`) → clients that drop out just before sending their message
            of that stage (and stay out).
        session: the session id, fresh by default.
        channel: the network: applied to every message in transit, both ways, in the order sent (default:
            delivers unchanged). A channel that alters messages models tampering in transit.

    Returns:
        The server's result (the sum over the clients that sent a masked input) and the round's cost, CPU time
        measured per party with ``time.process_time`` (run single-threaded for meaningful figures).

    Raises:
        TooFewClientsError: too many dropouts for the threshold (the round aborts; no sum is returned).
        SecAggError: any other abort (a tampered or malformed message, see the module docstring).
    """
    dropouts = {k: set(v) for k, v in (dropouts or {}).items()}
    if not dropouts.keys() <= set(STAGES):
        raise InvalidArgumentError("dropouts", sorted(dropouts), f"keys among {STAGES}")
    graph = graph if graph is not None else complete_graph(inputs)
    signing_keys, pki = new_identities(sorted(set(graph) | set(inputs)))
    server = Server(params, graph, pki, session)
    cost = RoundCost()
    clients = {u: Client(u, params, server.session, signing_keys[u], pki) for u in inputs}
    deliver = channel if channel is not None else (lambda data: data)

    def timed(owner: int | None, call):
        start = time.process_time()
        out = call()
        elapsed = time.process_time() - start
        if owner is None:
            cost.server_cpu_s += elapsed
        else:
            cost.client_cpu_s[owner] += elapsed
        return out

    def client_step(stage: int, outgoing: Mapping[int, bytes] | None) -> None:
        for u in sorted(clients):
            if u in dropouts.get(STAGES[stage], ()):
                del clients[u]
                continue
            if outgoing is not None and u not in outgoing:
                del clients[u]  # the server left it out of the round
                continue
            client = clients[u]

            def act(client=client, u=u):
                incoming = parse(deliver(outgoing[u])) if outgoing is not None else None
                if stage == 0:
                    reply = client.advertise_keys()
                elif stage == 1:
                    reply = client.share_keys(incoming)
                elif stage == 2:
                    reply = client.masked_input(incoming, inputs[u])
                elif stage == 3:
                    reply = client.consistency_check(incoming)
                else:
                    reply = client.unmask(incoming)
                return reply.to_bytes()

            data = timed(u, act)
            cost.client_bytes_sent[u] += len(data)
            timed(None, lambda data=data: server.receive(parse(deliver(data))))

    outgoing: dict[int, bytes] | None = None
    for stage in range(len(STAGES)):
        client_step(stage, outgoing)
        if stage < len(STAGES) - 1:
            replies = timed(None, server.advance)
            outgoing = timed(None, lambda replies=replies: {u: m.to_bytes() for u, m in replies.items()})
            cost.server_bytes_sent += sum(len(b) for b in outgoing.values())
    return timed(None, server.result), cost
