"""The secure-aggregation protocol of Bonawitz et al. (CCS 2017), semi-honest variant, with dropouts at any stage
and an optional sparse graph (SecAgg+, Bell et al., CCS 2020): :class:`Client`, :class:`Server`, and
:func:`run_secure_aggregation`, which plays one round in process with every message passed as bytes.

Client ``u`` with input ``x_u`` (encoded in Z_(2^k), :mod:`.encoding`) sends

    y_u = x_u + PRG(b_u) + Σ_{v ∈ N(u) ∩ U2, v > u} PRG(s_uv) − Σ_{v ∈ N(u) ∩ U2, v < u} PRG(s_uv)   (mod 2^k)

where ``b_u`` is a fresh self-mask seed, ``s_uv`` the X25519 agreement of the two clients' mask keys (the same
from both sides, so the pairwise masks of two survivors cancel in the sum) and ``U2`` the clients whose Shamir
shares were delivered. For the survivors ``U3`` (masked input received) the server asks the survivors'
share holders for the shares of ``b_u``, and for each client ``v`` in ``U2 \\ U3`` (dropped after sharing its keys)
for the shares of ``v``'s mask private key, from which it recomputes and removes ``v``'s pairwise masks. The
server thus learns ``Σ_{u ∈ U3} x_u`` and, by the security argument of Bonawitz et al. (Thm 6.2), nothing else
about the inputs, provided fewer than ``t`` parties collude and it never holds both shares of one client:
each client answers the unmasking request once per session, revealing for every peer either the seed share
(peer survived) or the key share (peer dropped), never both.

Aborts (typed, never a wrong sum): a client's share holders that remain fall below ``t`` at any stage
(:class:`TooFewClientsError`); an AEAD failure or a reconstructed secret that does not match its public key or
commitment (:class:`IntegrityError`); a message from another session, a closed stage, or twice
(:class:`ReplayError`); an inconsistent list (:class:`ProtocolError`).

Trust model: the server follows the protocol but is curious (it may also tamper with messages in transit, which
the AEAD and the checks detect); clients do not collude with it beyond ``t - 1``. The active-adversary variant
(signatures and a consistency-check round, so that a lying server cannot show different survivor lists to
different clients) is not implemented; see docs/secagg.md.
"""

from __future__ import annotations

import hashlib
import os
import struct
import time
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np

from dpcalib.errors import InvalidArgumentError

from . import shamir
from .crypto import agree, expand_mask, generate_private_key, open_sealed, public_key, random_seed, seal
from .encoding import FixedPoint
from .errors import IntegrityError, ProtocolError, ReplayError, TooFewClientsError
from .graph import Graph, complete_graph
from .messages import (
    SESSION_BYTES,
    AdvertiseKeys,
    KeyDirectory,
    MaskedInput,
    Message,
    ShareDelivery,
    ShareKeys,
    SurvivorList,
    UnmaskingShares,
    parse,
)
from dpcalib import validation as check

__all__ = [
    "STAGES",
    "SecAggParams",
    "Client",
    "Server",
    "AggregationResult",
    "RoundCost",
    "new_session",
    "run_secure_aggregation",
]

STAGES = ("advertise_keys", "share_keys", "masked_input", "unmasking")
_IDS = struct.Struct(">II")
_SEED_BYTES = 32


@dataclass(frozen=True)
class SecAggParams:
    """What every party agrees on before a round.

    Args:
        dim: length of the input vectors.
        codec: the fixed-point encoding (its ``max_clients`` must cover every client of the round).
        threshold: ``t``, the number of share holders needed to reconstruct a secret; with the complete graph a
            round survives ``n - t`` dropouts. Must exceed half of each client's holders (the client itself and
            its neighbours), so that no minority can reconstruct.
        min_survivors: the server also aborts when fewer clients than this send a masked input, so that a sum,
            when there is one, covers at least ``min_survivors`` inputs (default 1: only the threshold rule).
            With the complete graph ``t`` survivors are implied; with SecAgg+ the per-neighbourhood rule alone
            allows much smaller sums, and distributed DP needs a floor on the number of noise shares.
    """

    dim: int
    codec: FixedPoint
    threshold: int
    min_survivors: int = 1

    def __post_init__(self) -> None:
        check.count("dim", self.dim, minimum=1)
        check.count("threshold", self.threshold, minimum=1)
        check.count("min_survivors", self.min_survivors, minimum=1)


def new_session() -> bytes:
    """A fresh random session id (binds every message and key of one round to that round)."""
    return os.urandom(SESSION_BYTES)


def _label(purpose: bytes, a: int, b: int) -> bytes:
    return purpose + _IDS.pack(min(a, b), max(a, b))


def _share_context(session: bytes, sender: int, recipient: int) -> bytes:
    return b"secagg/v1/shares" + session + _IDS.pack(sender, recipient)


def _seed_commitment(session: bytes, owner: int, seed: bytes) -> bytes:
    return hashlib.sha256(b"secagg/v1/seed" + session + _IDS.pack(owner, 0) + seed).digest()


def _pairwise_mask(private: bytes, peer_public: bytes, session: bytes, u: int, v: int, params: SecAggParams):
    seed = agree(private, peer_public, salt=session, label=_label(b"secagg/v1/mask", u, v))
    return expand_mask(seed, params.codec.ring, params.dim)


class Client:
    """One client's side of a round. Call, in order, :meth:`advertise_keys`, :meth:`share_keys`,
    :meth:`masked_input`, :meth:`unmask`; each consumes the server's message of that stage and answers it.
    Keys and the self-mask seed are fresh per instance: one instance, one session."""

    def __init__(self, client_id: int, params: SecAggParams, session: bytes) -> None:
        self.id = check.count("client_id", client_id, minimum=1)
        self.params = params
        self.session = session
        self._enc_private = generate_private_key()
        self._mask_private = generate_private_key()
        self._seed = random_seed()
        self._next = 0  # index in STAGES of the next call
        self._peers: dict[int, tuple[bytes, bytes]] = {}
        self._received: dict[int, tuple[bytes, bytes]] = {}  # peer -> (its seed share, its key share) held here

    def _enter(self, stage: int, message: Message | None) -> None:
        if message is not None:
            if message.session != self.session:
                raise ReplayError(f"client {self.id}: message from another session at stage {STAGES[stage]!r}")
            if getattr(message, "recipient") != self.id:
                raise ProtocolError(f"client {self.id}: message addressed to client {message.recipient}")
        if stage < self._next:
            raise ReplayError(f"client {self.id}: stage {STAGES[stage]!r} already done in this session")
        if stage > self._next:
            raise ProtocolError(f"client {self.id}: stage {STAGES[stage]!r} before {STAGES[self._next]!r}")
        self._next += 1

    def _share_key(self, peer: int) -> bytes:
        return agree(self._enc_private, self._peers[peer][0], salt=self.session,
                     label=_label(b"secagg/v1/enc", self.id, peer))

    def advertise_keys(self) -> AdvertiseKeys:
        """Round 0: the two public keys."""
        self._enter(0, None)
        return AdvertiseKeys(self.session, self.id, public_key(self._enc_private), public_key(self._mask_private))

    def share_keys(self, directory: KeyDirectory) -> ShareKeys:
        """Round 1: check the directory, Shamir-share the seed and the mask private key among the holders it
        names (threshold t), and seal each holder's two shares for it (AES-GCM, context bound)."""
        self._enter(1, directory)
        t = self.params.threshold
        peers = {i: (e, m) for i, e, m in directory.entries}
        own = (public_key(self._enc_private), public_key(self._mask_private))
        if len(peers) != len(directory.entries) or peers.get(self.id) != own:
            raise ProtocolError(f"client {self.id}: key directory repeats a client or misstates this client's keys")
        if len({k for pair in peers.values() for k in pair}) != 2 * len(peers):
            raise ProtocolError(f"client {self.id}: key directory repeats a public key")
        if len(peers) < t:
            raise TooFewClientsError(STAGES[1], len(peers), t, f"holders in client {self.id}'s key directory")
        self._peers = peers
        seed_shares = shamir.split(self._seed, peers, t)
        key_shares = shamir.split(self._mask_private, peers, t)
        self._received[self.id] = (seed_shares[self.id], key_shares[self.id])
        ciphertexts = tuple(
            (v, seal(self._share_key(v), _IDS.pack(self.id, v) + seed_shares[v] + key_shares[v],
                     _share_context(self.session, self.id, v)))
            for v in sorted(peers) if v != self.id
        )
        return ShareKeys(self.session, self.id, _seed_commitment(self.session, self.id, self._seed), ciphertexts)

    def masked_input(self, delivery: ShareDelivery, x: np.ndarray) -> MaskedInput:
        """Round 2: open the shares addressed to this client (senders form U2) and send
        ``encode(x) + PRG(b_u) ± the pairwise masks with U2``."""
        self._enter(2, delivery)
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
        x = np.asarray(x, dtype=np.float64)
        if x.shape != (self.params.dim,):
            raise InvalidArgumentError("x", x.shape, f"a vector of shape ({self.params.dim},)")
        ring = self.params.codec.ring
        y = self.params.codec.encode(x) + expand_mask(self._seed, ring, self.params.dim)
        for v in self._received:
            if v == self.id:
                continue
            mask = _pairwise_mask(self._mask_private, self._peers[v][1], self.session, self.id, v, self.params)
            y = y + mask if v > self.id else y - mask
        return MaskedInput(self.session, self.id, ring.to_bytes(ring.reduce(y)))

    def unmask(self, survivors: SurvivorList) -> UnmaskingShares:
        """Round 3: for each peer of U2, the seed share if it survived, else its key share — never both, and
        only once per session (a second request is a :class:`ReplayError`)."""
        self._enter(3, survivors)
        alive = set(survivors.survivors)
        if len(alive) != len(survivors.survivors) or self.id not in alive or not alive <= self._received.keys():
            raise ProtocolError(f"client {self.id}: survivor list inconsistent with the clients that shared keys")
        if len(alive) < self.params.threshold:
            raise TooFewClientsError(STAGES[3], len(alive), self.params.threshold, f"survivors near client {self.id}")
        received, self._received = self._received, {}
        return UnmaskingShares(
            self.session,
            self.id,
            tuple((v, received[v][0]) for v in sorted(alive)),
            tuple((v, received[v][1]) for v in sorted(received.keys() - alive)),
        )


@dataclass(frozen=True)
class AggregationResult:
    """What the server learns: the decoded sum of the survivors' inputs, and who the survivors are."""

    total: np.ndarray
    survivors: frozenset[int]


class Server:
    """The server's side of a round over ``graph`` (default: complete graph over ``client_ids``).

    Feed every client message to :meth:`receive`; call :meth:`advance` to close each of the first three stages
    (it returns the message for each client still in the round) and :meth:`result` after the last.
    """

    def __init__(self, params: SecAggParams, graph: Graph, session: bytes | None = None) -> None:
        self.params = params
        self.graph = {u: frozenset(vs) for u, vs in graph.items()}
        self.session = session if session is not None else new_session()
        if len(self.graph) > params.codec.max_clients:
            raise InvalidArgumentError("codec.max_clients", params.codec.max_clients,
                                       f">= the number of clients ({len(self.graph)})")
        sizes = {len(vs) + 1 for vs in self.graph.values()}
        t = params.threshold
        if not all(size / 2 < t <= size for size in sizes):
            raise InvalidArgumentError("threshold", t, f"in (holders/2, holders] for holder-set sizes {sorted(sizes)}")
        self._stage = 0
        self._inbox: list[dict[int, Message]] = [{} for _ in STAGES]
        self._masked: dict[int, np.ndarray] = {}

    def holders(self, u: int) -> frozenset[int]:
        """Who holds shares of ``u``'s secrets: ``u`` and its neighbours."""
        return self.graph[u] | {u}

    def receive(self, message: Message) -> None:
        """Accept one client message of the current stage (checks session, stage, sender, duplicates)."""
        stage = {AdvertiseKeys: 0, ShareKeys: 1, MaskedInput: 2, UnmaskingShares: 3}.get(type(message))
        if stage is None:
            raise ProtocolError(f"server cannot receive a {type(message).__name__}")
        if message.session != self.session:
            raise ReplayError(f"{type(message).__name__} from another session")
        if stage < self._stage:
            raise ReplayError(f"{type(message).__name__} after stage {STAGES[stage]!r} closed")
        if stage > self._stage:
            raise ProtocolError(f"{type(message).__name__} before stage {STAGES[stage]!r} opened")
        sender = message.sender
        if sender in self._inbox[stage]:
            raise ReplayError(f"second {type(message).__name__} from client {sender}")
        if sender not in self.graph or (stage > 0 and sender not in self._inbox[stage - 1]):
            raise ProtocolError(f"client {sender} is not in the round at stage {STAGES[stage]!r}")
        if isinstance(message, ShareKeys):
            expected = (self.holders(sender) & self._inbox[0].keys()) - {sender}
            if {v for v, _ in message.ciphertexts} != expected or len(message.ciphertexts) != len(expected):
                raise ProtocolError(f"client {sender} did not address exactly its holders")
        if isinstance(message, MaskedInput):
            try:
                vector = self.params.codec.ring.from_bytes(message.masked)
            except ValueError as exc:
                raise ProtocolError(f"client {sender}: {exc}") from exc
            if vector.shape != (self.params.dim,):
                raise ProtocolError(f"client {sender}: masked vector of length {vector.size}, not {self.params.dim}")
            self._masked[sender] = vector
        self._inbox[stage][sender] = message

    def _check(self, stage: int, owners: Iterable[int], alive: set[int]) -> None:
        t = self.params.threshold
        for u in owners:
            count = len(self.holders(u) & alive)
            if count < t:
                raise TooFewClientsError(STAGES[stage], count, t, f"share holders of client {u} still present")

    def advance(self) -> dict[int, Message]:
        """Close the current stage (one of the first three) and return each remaining client's next message."""
        stage = self._stage
        if stage >= 3:
            raise ProtocolError("no stage to advance to: call result() after the unmasking stage")
        alive = set(self._inbox[stage])
        owners = alive if stage < 2 else set(self._inbox[1])
        self._check(stage, owners, alive)
        if len(alive) < self.params.min_survivors:
            raise TooFewClientsError(STAGES[stage], len(alive), self.params.min_survivors, "min_survivors")
        self._stage += 1
        s = self.session
        if stage == 0:
            keys = self._inbox[0]
            return {
                u: KeyDirectory(s, u, tuple((v, keys[v].enc_public, keys[v].mask_public)
                                            for v in sorted(self.holders(u) & alive)))
                for u in sorted(alive)
            }
        if stage == 1:
            routed: dict[int, list[tuple[int, bytes]]] = defaultdict(list)
            for u in sorted(alive):
                for v, sealed in self._inbox[1][u].ciphertexts:
                    if v in alive:
                        routed[v].append((u, sealed))
            return {v: ShareDelivery(s, v, tuple(routed[v])) for v in sorted(alive)}
        return {u: SurvivorList(s, u, tuple(sorted(self.holders(u) & alive))) for u in sorted(alive)}

    def result(self) -> AggregationResult:
        """Close the unmasking stage: reconstruct the survivors' self-mask seeds and the dropped clients' mask
        keys (each checked against its commitment or public key), remove all masks, decode the sum."""
        if self._stage != 3:
            raise ProtocolError(f"result() at stage {STAGES[self._stage]!r}; the unmasking stage is not open")
        shared, survivors, responders = set(self._inbox[1]), set(self._inbox[2]), set(self._inbox[3])
        self._check(3, shared, responders)
        self._stage += 1
        seed_shares: dict[int, dict[int, bytes]] = defaultdict(dict)
        key_shares: dict[int, dict[int, bytes]] = defaultdict(dict)
        for w in sorted(responders):
            reply = self._inbox[3][w]
            for owners, expected, store in ((reply.seed_shares, survivors, seed_shares),
                                            (reply.key_shares, shared - survivors, key_shares)):
                for owner, share in owners:
                    if owner not in expected or w not in self.holders(owner) or w in store[owner]:
                        raise ProtocolError(f"client {w} revealed an unexpected share of client {owner}")
                    store[owner][w] = share
        t, params, s = self.params.threshold, self.params, self.session
        total = np.zeros(params.dim, dtype=np.uint64)
        for u in sorted(survivors):
            total += self._masked[u]
            if len(seed_shares[u]) < t:
                raise TooFewClientsError(STAGES[3], len(seed_shares[u]), t, f"seed shares of client {u}")
            seed = shamir.combine(seed_shares[u], t, _SEED_BYTES)
            if _seed_commitment(s, u, seed) != self._inbox[1][u].seed_commitment:
                raise IntegrityError(f"reconstructed self-mask seed of client {u} does not match its commitment")
            total -= expand_mask(seed, params.codec.ring, params.dim)
        for v in sorted(shared - survivors):
            if len(key_shares[v]) < t:
                raise TooFewClientsError(STAGES[3], len(key_shares[v]), t, f"key shares of dropped client {v}")
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
) -> tuple[AggregationResult, RoundCost]:
    """Play one round in process: every message is serialised to bytes and parsed back, as a transport would.

    Args:
        inputs: client id (≥ 1) → float vector of length ``params.dim``.
        params: encoding, dimension, threshold.
        graph: who shares with whom; default :func:`complete_graph` over the clients (SecAgg).
        dropouts: stage name (one of :data:`STAGES`) → clients that drop out just before sending their message
            of that stage (and stay out).
        session: the session id, fresh by default.

    Returns:
        The server's result (the sum over the clients that sent a masked input) and the round's cost, CPU time
        measured per party with ``time.process_time`` (run single-threaded for meaningful figures).

    Raises:
        TooFewClientsError: too many dropouts for the threshold (the round aborts; no sum is returned).
    """
    dropouts = {k: set(v) for k, v in (dropouts or {}).items()}
    if not dropouts.keys() <= set(STAGES):
        raise InvalidArgumentError("dropouts", sorted(dropouts), f"keys among {STAGES}")
    server = Server(params, graph if graph is not None else complete_graph(inputs), session)
    cost = RoundCost()
    clients = {u: Client(u, params, server.session) for u in inputs}

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
        active = sorted(clients)
        for u in active:
            if u in dropouts.get(STAGES[stage], ()):
                del clients[u]
                continue
            if outgoing is not None and u not in outgoing:
                del clients[u]  # the server left it out of the round
                continue
            client = clients[u]

            def act(client=client, u=u):
                incoming = parse(outgoing[u]) if outgoing is not None else None
                if stage == 0:
                    reply = client.advertise_keys()
                elif stage == 1:
                    reply = client.share_keys(incoming)
                elif stage == 2:
                    reply = client.masked_input(incoming, inputs[u])
                else:
                    reply = client.unmask(incoming)
                return reply.to_bytes()

            data = timed(u, act)
            cost.client_bytes_sent[u] += len(data)
            timed(None, lambda data=data: server.receive(parse(data)))

    outgoing: dict[int, bytes] | None = None
    for stage in range(4):
        client_step(stage, outgoing)
        if stage < 3:
            replies = timed(None, server.advance)
            outgoing = timed(None, lambda replies=replies: {u: m.to_bytes() for u, m in replies.items()})
            cost.server_bytes_sent += sum(len(b) for b in outgoing.values())
    return timed(None, server.result), cost
