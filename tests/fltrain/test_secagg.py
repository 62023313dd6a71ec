"""Secure aggregation: correctness of the unmasked sum, uniformity of masked vectors, dropouts, aborts, tampering
and replay. Small vectors and client counts keep this fast."""

from __future__ import annotations

import dataclasses
import random
import struct

import numpy as np
import pytest
from scipy import stats

pytest.importorskip("cryptography")

from dpcalib.errors import InvalidArgumentError  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from fltrain.secagg import (  # noqa: E402
    STAGES,
    Client,
    ConsistencyError,
    FixedPoint,
    IntegrityError,
    ProtocolError,
    ReplayError,
    SecAggError,
    SecAggParams,
    Server,
    TooFewClientsError,
    UnsafeThresholdError,
    complete_graph,
    harary_graph,
    new_identities,
    new_session,
    run_secure_aggregation,
    secagg_plus_degree,
)
from fltrain.secagg import shamir  # noqa: E402
from fltrain.secagg.messages import (  # noqa: E402
    AdvertiseKeys,
    ConsistencyCheck,
    KeyDirectory,
    MaskedInput,
    ShareDelivery,
    ShareKeys,
    SurvivorList,
    UnmaskingRequest,
    UnmaskingShares,
    parse,
)


def _params(n: int, dim: int = 8, threshold: int | None = None, clip: float = 1.0, frac_bits: int = 16):
    return SecAggParams(dim, FixedPoint(clip, frac_bits, n), threshold if threshold is not None else 2 * n // 3 + 1)


def _inputs(n: int, dim: int = 8, seed: int = 0) -> dict[int, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {u: rng.uniform(-1.0, 1.0, dim) for u in range(1, n + 1)}


def _exact_sum(params: SecAggParams, inputs, ids) -> np.ndarray:
    """The sum the protocol must return exactly: the decoded ring sum of the encoded inputs."""
    ring = params.codec.ring
    total = np.zeros(params.dim, dtype=np.uint64)
    for u in ids:
        total = ring.add(total, params.codec.encode(inputs[u]))
    return params.codec.decode(total)


def _rounding_bound(params: SecAggParams, count: int) -> float:
    """Round-to-nearest with f fractional bits moves each summand by at most 2^-(f+1) (stated independently of
    FixedPoint.sum_error_bound, which it checks)."""
    return count * 2.0 ** -(params.codec.frac_bits + 1)


class _Round:
    """Drive one round by hand through the message objects (the tests tamper with them in between)."""

    def __init__(self, params: SecAggParams, n: int, graph=None, **client_options) -> None:
        self.params = params
        ids = range(1, n + 1)
        self.signing_keys, self.pki = new_identities(ids)
        self.server = Server(params, graph if graph is not None else complete_graph(ids), self.pki)
        self.clients = {u: Client(u, params, self.server.session, self.signing_keys[u], self.pki, **client_options)
                        for u in ids}

    def advertise(self):
        for c in self.clients.values():
            self.server.receive(c.advertise_keys())
        return self.server.advance()

    def share(self, directories):
        for u, c in self.clients.items():
            self.server.receive(c.share_keys(directories[u]))
        return self.server.advance()

    def mask(self, deliveries, inputs):
        sent = {}
        for u, c in self.clients.items():
            sent[u] = c.masked_input(deliveries[u], inputs[u])
            self.server.receive(sent[u])
        return sent, self.server.advance()

    def check(self, lists):
        for u, c in self.clients.items():
            self.server.receive(c.consistency_check(lists[u]))
        return self.server.advance()

    def unmask(self, requests):
        for u, c in self.clients.items():
            self.server.receive(c.unmask(requests[u]))
        return self.server.result()

    def up_to_unmasking(self, inputs):
        _, lists = self.mask(self.share(self.advertise()), inputs)
        return self.check(lists)


# --- encoding and sharing -------------------------------------------------------------------------------------


def test_ring_size_prevents_overflow_at_the_extremes():
    codec = FixedPoint(clip=2.5, frac_bits=10, max_clients=37)
    ring = codec.ring
    assert 37 * np.ceil(2.5 * 2**10) < 2 ** (ring.bits - 1)  # the stated no-overflow condition
    for sign in (1.0, -1.0):
        total = np.zeros(3, dtype=np.uint64)
        for _ in range(37):
            total = ring.add(total, codec.encode(np.full(3, sign * 2.5)))
        np.testing.assert_array_equal(codec.decode(total), np.full(3, sign * 37 * 2.5))
    # one bit fewer and the same sum would wrap into the wrong sign
    small = dataclasses.replace(ring, bits=ring.bits - 1)
    assert 37 * np.ceil(2.5 * 2**10) >= 2 ** (small.bits - 1)


def test_encoding_clips_and_has_the_stated_precision():
    codec = FixedPoint(clip=1.0, frac_bits=8, max_clients=1)
    x = np.array([-3.0, -1.0, 0.0, 0.3, 1.0, 7.0])
    decoded = codec.decode(codec.encode(x))
    assert codec.sum_error_bound(1) == 2.0**-9  # round to nearest with 8 fractional bits
    assert np.all(np.abs(decoded - np.clip(x, -1, 1)) <= 2.0**-9)
    assert decoded[0] == -1.0 and decoded[-1] == 1.0 and decoded[3] == round(0.3 * 256) / 256


def test_encoding_rejects_bad_arguments():
    with pytest.raises(InvalidArgumentError, match="frac_bits"):
        FixedPoint(clip=1.0, frac_bits=60, max_clients=1000)
    with pytest.raises(InvalidArgumentError, match="clip"):
        FixedPoint(clip=-1.0, frac_bits=8, max_clients=3)
    with pytest.raises(InvalidArgumentError, match="x"):
        FixedPoint(clip=1.0, frac_bits=8, max_clients=3).encode(np.array([np.nan]))


def test_shamir_any_t_shares_recover_and_fewer_refuse():
    secret = bytes(range(32))
    shares = shamir.split(secret, range(1, 8), threshold=4)
    for subset in ([1, 2, 3, 4], [4, 5, 6, 7], [1, 3, 5, 7]):
        assert shamir.combine({x: shares[x] for x in subset}, 4, 32) == secret
    with pytest.raises(InvalidArgumentError, match="shares"):
        shamir.combine({x: shares[x] for x in (1, 2, 3)}, 4, 32)
    wrong = dict(shares)
    wrong[1] = (int.from_bytes(wrong[1], "big") ^ 1).to_bytes(shamir.SHARE_BYTES, "big")
    assert shamir.combine({x: wrong[x] for x in (1, 2, 3, 4)}, 4, 64) != secret.rjust(64, b"\0")


# --- correctness ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [3, 4, 10, 31])
def test_unmasked_sum_equals_plain_sum(n):
    params = _params(n)
    inputs = _inputs(n, seed=n)
    result, cost = run_secure_aggregation(inputs, params)
    assert result.survivors == frozenset(inputs)
    plain = np.sum(list(inputs.values()), axis=0)
    assert np.max(np.abs(result.total - plain)) <= _rounding_bound(params, n)
    np.testing.assert_array_equal(result.total, _exact_sum(params, inputs, inputs))
    assert len(cost.client_bytes_sent) == n and cost.server_bytes_sent > 0


def test_secagg_plus_graph_sum_with_dropouts():
    n = 60
    degree = secagg_plus_degree(n)
    graph = harary_graph(range(1, n + 1), degree, random.Random(1))
    assert all(len(vs) == degree and all(u in graph[v] for v in vs) for u, vs in graph.items())
    params = _params(n, threshold=2 * (degree + 1) // 3 + 1)
    inputs = _inputs(n, seed=3)
    dropouts = {"share_keys": {5}, "masked_input": {17, 40}, "unmasking": {33}}
    result, _ = run_secure_aggregation(inputs, params, graph=graph, dropouts=dropouts)
    expected_survivors = set(inputs) - {5, 17, 40}
    assert result.survivors == expected_survivors
    np.testing.assert_array_equal(result.total, _exact_sum(params, inputs, expected_survivors))


def test_secagg_plus_aborts_when_one_neighbourhood_is_emptied():
    n = 40
    graph = harary_graph(range(1, n + 1), 8, random.Random(2))
    params = _params(n, threshold=6)  # holders 9: 3 may drop
    victim = 7
    drop = set(sorted(graph[victim])[:4])  # 4 of its 8 neighbours: only 5 holders left
    with pytest.raises(TooFewClientsError):
        run_secure_aggregation(_inputs(n), params, graph=graph, dropouts={"masked_input": drop})


# --- privacy: what the server sees ----------------------------------------------------------------------------


def _masked_vector(x: np.ndarray, params: SecAggParams, n: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """The masked vector client 1 sends for input x, and x's plain encoding."""
    rnd = _Round(params, n)
    inputs = {u: np.zeros(params.dim) for u in range(1, n + 1)}
    inputs[1] = x
    sent, _ = rnd.mask(rnd.share(rnd.advertise()), inputs)
    return params.codec.ring.from_bytes(sent[1].masked), params.codec.encode(x)


def test_a_masked_vector_is_uniform_and_independent_of_its_input():
    dim = 40_000
    params = SecAggParams(dim, FixedPoint(clip=1.0, frac_bits=12, max_clients=3), threshold=2)
    bits = params.codec.ring.bits
    bins = 64

    def histogram(values):
        return np.bincount((values >> np.uint64(bits - 6)).astype(np.int64), minlength=bins)

    rng = np.random.default_rng(0)
    masked_a, plain_a = _masked_vector(np.zeros(dim), params)
    masked_b, plain_b = _masked_vector(rng.uniform(0.5, 1.0, dim), params)
    for masked in (masked_a, masked_b):  # goodness of fit to uniform over Z_(2^k), top 6 bits
        assert stats.chisquare(histogram(masked)).pvalue > 1e-4
    # the same test does detect structure: the unmasked encodings are far from uniform
    assert stats.chisquare(histogram(plain_b)).pvalue < 1e-12
    # independence of the input: the two masked vectors look alike (two-sample chi-square)
    table = np.stack([histogram(masked_a), histogram(masked_b)])
    assert stats.chi2_contingency(table).pvalue > 1e-4
    control = np.stack([histogram(plain_a), histogram(plain_b)]) + 1  # +1: the plain histograms have empty bins
    assert stats.chi2_contingency(control).pvalue < 1e-12
    # and coordinate-wise uncorrelated with it
    assert abs(stats.pearsonr(masked_b.astype(float), plain_b.astype(float)).statistic) < 0.03


# --- dropouts -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("stage", STAGES)
@pytest.mark.parametrize("n, t", [(5, 3), (12, 7)])
def test_up_to_n_minus_t_dropouts_at_a_stage_give_the_survivors_exact_sum(stage, n, t):
    params = _params(n, threshold=t)
    inputs = _inputs(n, seed=n + t)
    dropped = set(random.Random(n * t).sample(sorted(inputs), n - t))
    result, _ = run_secure_aggregation(inputs, params, dropouts={stage: dropped})
    # a client that drops before sending its masked input is out of the sum; one that drops later is in it
    survivors = set(inputs) if stage in ("consistency_check", "unmasking") else set(inputs) - dropped
    assert result.survivors == survivors
    np.testing.assert_array_equal(result.total, _exact_sum(params, inputs, survivors))
    plain = np.sum([inputs[u] for u in survivors], axis=0)
    assert np.max(np.abs(result.total - plain)) <= _rounding_bound(params, len(survivors))


def test_dropouts_spread_over_every_stage():
    n, t = 12, 7
    params = _params(n, threshold=t)
    inputs = _inputs(n, seed=7)
    dropouts = {"advertise_keys": {1}, "share_keys": {4}, "masked_input": {10}, "consistency_check": {6},
                "unmasking": {12}}
    result, _ = run_secure_aggregation(inputs, params, dropouts=dropouts)
    assert result.survivors == set(inputs) - {1, 4, 10}
    np.testing.assert_array_equal(result.total, _exact_sum(params, inputs, result.survivors))


@pytest.mark.parametrize("stage", STAGES)
def test_more_than_n_minus_t_dropouts_abort(stage):
    n, t = 8, 5
    params = _params(n, threshold=t)
    with pytest.raises(TooFewClientsError) as info:
        run_secure_aggregation(_inputs(n), params, dropouts={stage: {2, 3, 5, 8}})
    assert info.value.threshold == t and info.value.alive < t


def test_cumulative_dropouts_over_stages_abort():
    params = _params(8, threshold=5)
    with pytest.raises(TooFewClientsError):
        run_secure_aggregation(_inputs(8), params, dropouts={"share_keys": {1, 2}, "unmasking": {3, 4}})


def test_sparse_round_aborts_below_min_survivors():
    n = 40
    graph = harary_graph(range(1, n + 1), 8, random.Random(5))
    drop: set[int] = set()
    for u in sorted(graph):  # spread the dropouts so that every neighbourhood keeps t = 6 of its 9 holders
        if all(len((graph[v] | {v}) - drop - {u}) >= 6 for v in graph):
            drop.add(u)
    assert len(drop) >= 5
    params = _params(n, threshold=6)
    result, _ = run_secure_aggregation(_inputs(n), params, graph=graph, dropouts={"masked_input": drop})
    assert len(result.survivors) == n - len(drop)  # the per-neighbourhood rule alone accepts this sum
    params = dataclasses.replace(params, min_survivors=n - len(drop) + 1)
    with pytest.raises(TooFewClientsError, match="min_survivors"):
        run_secure_aggregation(_inputs(n), params, graph=graph, dropouts={"masked_input": drop})


def test_threshold_must_be_a_majority_of_holders():
    _, pki = new_identities(range(1, 11))
    Server(_params(10, threshold=6), complete_graph(range(1, 11)), pki)
    with pytest.raises(InvalidArgumentError, match="threshold"):
        Server(_params(10, threshold=5), complete_graph(range(1, 11)), pki)
    with pytest.raises(InvalidArgumentError, match="threshold"):
        Server(_params(10, threshold=11), complete_graph(range(1, 11)), pki)
    with pytest.raises(InvalidArgumentError, match="pki"):
        Server(_params(10, threshold=6), complete_graph(range(1, 11)), {u: pki[u] for u in range(1, 10)})


# --- tampering and replay -------------------------------------------------------------------------------------


def _flip(blob: bytes, index: int, bits: int = 0x01) -> bytes:
    return blob[:index] + bytes([blob[index] ^ bits]) + blob[index + 1 :]


def test_tampered_share_ciphertext_is_detected():
    rnd = _Round(_params(5), 5)
    deliveries = rnd.share(rnd.advertise())
    d = deliveries[2]
    sender, sealed = d.ciphertexts[0]
    tampered = dataclasses.replace(d, ciphertexts=((sender, _flip(sealed, len(sealed) - 40)),) + d.ciphertexts[1:])
    with pytest.raises(IntegrityError):
        rnd.clients[2].masked_input(tampered, np.zeros(8))


def test_share_ciphertext_relabelled_to_another_sender_is_detected():
    rnd = _Round(_params(5), 5)
    d = rnd.share(rnd.advertise())[3]
    (s1, c1), (s2, c2) = d.ciphertexts[:2]
    swapped = dataclasses.replace(d, ciphertexts=((s1, c2), (s2, c1)) + d.ciphertexts[2:])
    with pytest.raises(IntegrityError):
        rnd.clients[3].masked_input(swapped, np.zeros(8))




def test_tampered_unmasking_share_in_transit_breaks_its_signature():
    n = 5
    rnd = _Round(_params(n, threshold=4), n)
    requests = rnd.up_to_unmasking(_inputs(n))
    reply = rnd.clients[1].unmask(requests[1])
    owner, share = reply.seed_shares[-1]
    tampered = dataclasses.replace(reply, seed_shares=reply.seed_shares[:-1] + ((owner, _flip(share, 65)),))
    with pytest.raises(IntegrityError, match="signed"):
        rnd.server.receive(tampered)
    rnd.server.receive(reply)  # the authentic reply is still accepted


@pytest.mark.parametrize("index, bits, match", [
    (0, 0xFE, "field element"),  # top byte 0 or 1 becomes 0xfe or 0xff: the value exceeds 2^521 - 1
    (1, 0x01, "inconsistent"),  # interpolates to a value beyond 32 bytes (was InvalidArgumentError)
    (0, 0x01, "commitment"),  # ±2^520 times Lagrange coefficient 4 is ±2 mod 2^521 - 1: a wrong 32-byte seed
    (65, 0x01, "commitment"),
])
def test_wrong_unmasking_share_from_a_client_is_an_integrity_error(index, bits, match):
    """A corrupt client signs a wrong share; whichever byte it alters, the server raises IntegrityError, never
    another exception, and returns no sum."""
    n = 5
    rnd = _Round(_params(n, threshold=4), n)
    requests = rnd.up_to_unmasking(_inputs(n))
    for u, c in rnd.clients.items():
        reply = c.unmask(requests[u])
        if u == 1:  # the lowest holder's share is always among those combined
            owner, share = reply.seed_shares[-1]
            wrong = reply.seed_shares[:-1] + ((owner, _flip(share, index, bits)),)
            reply = dataclasses.replace(reply, seed_shares=wrong)
            reply = reply.signed(rnd.signing_keys[1])
        rnd.server.receive(reply)
    with pytest.raises(IntegrityError, match=match):
        rnd.server.result()


def test_shamir_refuses_shares_that_cannot_be_shares():
    shares = shamir.split(bytes(32), range(1, 5), threshold=3)
    not_a_field_element = {**shares, 1: b"\xff" * shamir.SHARE_BYTES}
    with pytest.raises(IntegrityError, match="field element"):
        shamir.combine(not_a_field_element, 3, 32)
    with pytest.raises(IntegrityError, match="long"):
        shamir.combine({**shares, 2: shares[2][1:]}, 3, 32)
    assert shamir.combine(shares, 3, 32) == bytes(32)


def test_message_from_a_previous_session_is_rejected():
    params = _params(4)
    old, new = _Round(params, 4), _Round(params, 4)
    old_directories = old.advertise()
    with pytest.raises(ReplayError):
        new.server.receive(old.clients[1].share_keys(old_directories[1]))  # server: wrong session
    new_directories = new.advertise()
    with pytest.raises(ReplayError):
        new.clients[2].share_keys(old_directories[2])  # client: wrong session
    new.share(new_directories)


def test_duplicate_and_late_messages_are_replays():
    rnd = _Round(_params(4), 4)
    directories = rnd.advertise()
    with pytest.raises(ReplayError):
        rnd.server.receive(rnd.clients[1].advertise_keys())  # client re-enters a finished stage
    message = rnd.clients[1].share_keys(directories[1])
    rnd.server.receive(message)
    with pytest.raises(ReplayError):
        rnd.server.receive(message)  # the same message twice
    with pytest.raises(ReplayError):
        rnd.clients[1].share_keys(directories[1])


def test_client_never_reveals_both_shares_of_a_peer():
    n = 6
    rnd = _Round(_params(n, threshold=4), n)
    requests = rnd.up_to_unmasking(_inputs(n))
    first = rnd.clients[1].unmask(requests[1])
    assert {o for o, _ in first.seed_shares} == set(range(1, n + 1)) and first.key_shares == ()
    # a second request (it could come with a list claiming that client 2 dropped) is refused
    with pytest.raises(ReplayError):
        rnd.clients[1].unmask(requests[1])
    with pytest.raises(ReplayError):
        rnd.clients[1].consistency_check(SurvivorList(rnd.server.session, 1, (1, 3, 4, 5, 6)))


def test_inconsistent_survivor_list_is_refused():
    n = 5
    rnd = _Round(_params(n), n)
    _, lists = rnd.mask(rnd.share(rnd.advertise()), _inputs(n))
    bad = {
        "outside": lists[1].survivors + (99,),  # a client the PKI does not know
        "order": tuple(reversed(lists[1].survivors)),
        "repeat": lists[1].survivors + (5,),
        "self": tuple(u for u in lists[1].survivors if u != 1),
    }
    for survivors in bad.values():
        client = _Round(_params(n), n)
        _, client_lists = client.mask(client.share(client.advertise()), _inputs(n))
        with pytest.raises(ProtocolError):
            client.clients[1].consistency_check(dataclasses.replace(client_lists[1], survivors=survivors))
    rnd.clients[1].consistency_check(lists[1])  # the list as sent passes


def test_directory_that_misstates_a_clients_keys_is_refused():
    rnd = _Round(_params(4), 4)
    d = rnd.advertise()[1]
    entries = tuple((i, e, m if i != 1 else d.entries[1][2], sig) for i, e, m, sig in d.entries)
    with pytest.raises(IntegrityError):  # the swapped key no longer matches client 1's signature
        rnd.clients[1].share_keys(dataclasses.replace(d, entries=entries))


def test_ids_outside_the_wire_range_are_typed_errors():
    params = _params(3)
    s = new_session()
    keys, pki = new_identities([1, 2])
    with pytest.raises(InvalidArgumentError, match="client_id"):
        Client(2**32, params, s, keys[1], pki)
    with pytest.raises(InvalidArgumentError, match="client_ids"):
        complete_graph([1, 2, 2**32])
    with pytest.raises(InvalidArgumentError, match="client_ids"):
        run_secure_aggregation({1: np.zeros(8), 2**32: np.zeros(8)}, _params(2))
    with pytest.raises(InvalidArgumentError, match="client_ids"):
        harary_graph([1, 2, True], 2)
    with pytest.raises(ProtocolError, match="wire"):
        AdvertiseKeys(s, 2**32, b"a" * 32, b"b" * 32).to_bytes()
    with pytest.raises(ProtocolError, match="id 0"):
        SurvivorList(s, 0, (1,)).to_bytes()
    zero = AdvertiseKeys(s, 1, b"a" * 32, b"b" * 32).to_bytes()
    head = 3 + 1 + 16
    with pytest.raises(ProtocolError, match="id 0"):
        parse(zero[:head] + struct.pack(">I", 0) + zero[head + 4 :])
    assert Client(2**32 - 1, params, s, *_identity_of(2**32 - 1)).id == 2**32 - 1


def _identity_of(u: int):
    keys, pki = new_identities([u])
    return keys[u], pki


# --- a deviating server ---------------------------------------------------------------------------------------


def test_oversized_directory_attack_is_refused_before_any_share_leaves_a_client():
    """The attack of issue 10: parameters sized for a small SecAgg+ neighbourhood (t = 4, enough for 6 holders) but
    a key directory naming all 12 clients, each entry genuinely signed. Shared that way, any 4 holders recover a
    secret, so a server showing different survivor lists to two groups of 4 or more would collect both secrets of
    a client (clients used to check only holders >= t). Every client now refuses before sharing anything."""
    n = 12
    keys, pki = new_identities(range(1, n + 1))
    session = new_session()

    def deviating_round(t):
        clients = {u: Client(u, _params(n, threshold=t), session, keys[u], pki) for u in range(1, n + 1)}
        adverts = [c.advertise_keys() for c in clients.values()]
        entries = tuple((a.sender, a.enc_public, a.mask_public, a.signature) for a in adverts)
        return clients, {u: KeyDirectory(session, u, entries) for u in clients}

    clients, directories = deviating_round(4)
    for u, c in clients.items():
        with pytest.raises(UnsafeThresholdError, match="2t > holders"):
            c.share_keys(directories[u])
    clients, directories = deviating_round(7)  # the same directory with 2t > 12 is accepted
    for u, c in clients.items():
        assert len(c.share_keys(directories[u]).ciphertexts) == n - 1


def test_threshold_below_the_clients_floor_is_refused():
    keys, pki = new_identities([1, 2, 3])
    with pytest.raises(UnsafeThresholdError, match="floor"):
        Client(1, _params(3, threshold=2), new_session(), keys[1], pki, min_threshold=3)
    Client(1, _params(3, threshold=3), new_session(), keys[1], pki, min_threshold=3)
    with pytest.raises(InvalidArgumentError, match="min_threshold"):
        Client(1, _params(3, threshold=3), new_session(), keys[1], pki, min_threshold=1)


def test_directory_with_a_sybil_or_a_substituted_key_is_refused():
    n = 5
    rnd = _Round(_params(n), n)
    d = rnd.advertise()[2]
    sybil_keys, sybil_pki = new_identities([99])
    sybil = AdvertiseKeys(rnd.server.session, 99, b"s" * 32, b"t" * 32).signed(sybil_keys[99])
    with_sybil = d.entries + ((99, sybil.enc_public, sybil.mask_public, sybil.signature),)
    with pytest.raises(IntegrityError, match="unknown to the PKI"):
        rnd.clients[2].share_keys(dataclasses.replace(d, entries=with_sybil))
    rnd2 = _Round(_params(n), n)
    d = rnd2.advertise()[2]
    server_key = bytes(range(32))  # the server's own mask key in place of client 3's, with 3's old signature
    substituted = tuple((i, e, server_key if i == 3 else m, sig) for i, e, m, sig in d.entries)
    with pytest.raises(IntegrityError, match="not signed"):
        rnd2.clients[2].share_keys(dataclasses.replace(d, entries=substituted))


def test_split_survivor_lists_abort_in_the_consistency_check():
    """A server tells group A (7 clients, the victim among them) that everyone survived and group B (the other 5)
    that the victim dropped, hoping for the victim's seed shares from A and its mask-key shares from B. With
    t = 7 of 12 the clients of B, shown A's signatures, see signatures over another list and abort; shown only
    their own group's, they have fewer than t and abort. No key share of the victim is ever revealed."""
    n, t, victim = 12, 7, 1
    rnd = _Round(_params(n, threshold=t), n)
    _, lists = rnd.mask(rnd.share(rnd.advertise()), _inputs(n))
    group_a, group_b = set(range(1, 8)), set(range(8, 13))
    everyone = lists[1].survivors
    without_victim = tuple(u for u in everyone if u != victim)
    signed = {}
    for u, c in rnd.clients.items():
        shown = everyone if u in group_a else without_victim
        signed[u] = c.consistency_check(dataclasses.replace(lists[u], survivors=shown))
        assert signed[u].survivors == shown
    s = rnd.server.session

    def request(u, signers):
        return UnmaskingRequest(s, u, tuple((v, signed[v].signature) for v in sorted(signers)))

    revealed_key_shares = []
    for u in sorted(group_b):
        mixed = group_b | {2, 3}  # t signatures, two of them over the other list
        with pytest.raises(ConsistencyError):
            rnd.clients[u].unmask(request(u, mixed))
    # a second run of the same attack: B's clients are shown their own group's signatures only
    b_only = _Round(_params(n, threshold=t), n)
    _, lists2 = b_only.mask(b_only.share(b_only.advertise()), _inputs(n))
    signed2 = {u: b_only.clients[u].consistency_check(
        dataclasses.replace(lists2[u], survivors=tuple(v for v in lists2[u].survivors if v != victim)))
        for u in group_b}
    for u in sorted(group_b):
        only_b = UnmaskingRequest(b_only.server.session, u,
                                  tuple((v, signed2[v].signature) for v in sorted(group_b)))
        with pytest.raises(TooFewClientsError):
            b_only.clients[u].unmask(only_b)
    # group A gets its t consistent signatures and reveals seed shares only: the victim's mask key stays secret
    for u in sorted(group_a):
        reply = rnd.clients[u].unmask(request(u, group_a))
        revealed_key_shares += [owner for owner, _ in reply.key_shares]
        assert victim in {owner for owner, _ in reply.seed_shares}
    assert victim not in revealed_key_shares


def test_server_rejects_a_consistency_signature_over_another_list():
    n = 5
    rnd = _Round(_params(n), n)
    _, lists = rnd.mask(rnd.share(rnd.advertise()), _inputs(n))
    altered = dataclasses.replace(lists[2], survivors=lists[2].survivors[:-1])
    with pytest.raises(ConsistencyError):
        rnd.server.receive(rnd.clients[2].consistency_check(altered))


# --- the wire -------------------------------------------------------------------------------------------------


def test_every_message_round_trips_through_bytes_and_rejects_garbage():
    s = new_session()
    messages = [
        AdvertiseKeys(s, 3, b"a" * 32, b"b" * 32, b"g" * 64),
        KeyDirectory(s, 3, ((1, b"x" * 32, b"y" * 32, b"g" * 64), (3, b"z" * 32, b"w" * 32, b""))),
        ShareKeys(s, 3, b"c" * 32, ((1, b"sealed"), (2, b"")), b"g"),
        ShareDelivery(s, 2, ((3, b"sealed"),)),
        MaskedInput(s, 3, bytes(range(16)), b"g"),
        SurvivorList(s, 3, (1, 3, 4)),
        ConsistencyCheck(s, 3, (1, 3, 2**32 - 1), b"g"),
        UnmaskingRequest(s, 3, ((1, b"g" * 64),)),
        UnmaskingShares(s, 3, ((1, b"p"),), ((2, b"q"),), b"g"),
    ]
    assert len({type(m).TAG for m in messages}) == len(messages)
    for m in messages:
        data = m.to_bytes()
        assert parse(data) == m
        with pytest.raises(ProtocolError):
            parse(data[:-1])
        with pytest.raises(ProtocolError):
            parse(data + b"\0")
    with pytest.raises(ProtocolError):
        parse(b"XX2" + bytes(40))


def test_a_signature_binds_every_field_and_the_message_type():
    keys, pki = new_identities([3])
    s = new_session()
    signed = MaskedInput(s, 3, b"masked", b"").signed(keys[3])
    assert signed.signature_valid(pki[3])
    for altered in (dataclasses.replace(signed, masked=b"maskeD"), dataclasses.replace(signed, session=new_session()),
                    dataclasses.replace(signed, signature=_flip(signed.signature, 5))):
        assert not altered.signature_valid(pki[3])
    # the same fields under another type (AdvertiseKeys: id, bytes, bytes, signature) do not verify
    other = AdvertiseKeys(s, 3, b"masked", signed.signature[:0], signed.signature)
    assert not other.signature_valid(pki[3])
    assert not signed.signature_valid(new_identities([3])[1][3])  # nor under another client's key


# --- fuzzing: an altered message ends in a documented typed error -----------------------------------------------

_MESSAGE_TYPES = (AdvertiseKeys, KeyDirectory, ShareKeys, ShareDelivery, MaskedInput, SurvivorList, ConsistencyCheck,
                  UnmaskingRequest, UnmaskingShares)
_FUZZ_N = 4


class _FlipOne:
    """A channel that alters, in transit, the ``occurrence``-th message of wire type ``tag``: XOR ``bits`` into
    its byte at ``position`` (modulo its length)."""

    def __init__(self, tag: int, occurrence: int, position: int, bits: int) -> None:
        self.tag, self.occurrence, self.position, self.bits = tag, occurrence, position, bits
        self.seen = 0
        self.flipped = False

    def __call__(self, data: bytes) -> bytes:
        if data[3] == self.tag:
            if self.seen == self.occurrence:
                data = _flip(data, self.position % len(data), self.bits)
                self.flipped = True
            self.seen += 1
        return data


@pytest.mark.parametrize("message_type", _MESSAGE_TYPES, ids=lambda cls: cls.__name__)
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(occurrence=st.integers(0, _FUZZ_N - 1), position=st.one_of(st.integers(0, 48), st.integers(0, 2**16)),
       bits=st.integers(1, 255))
def test_a_flipped_byte_in_any_message_gives_a_typed_error_or_the_exact_sum(message_type, occurrence, position, bits):
    params = _params(_FUZZ_N, dim=4, threshold=3)
    inputs = _inputs(_FUZZ_N, dim=4)
    channel = _FlipOne(message_type.TAG, occurrence, position, bits)
    try:
        result, _ = run_secure_aggregation(inputs, params, channel=channel)
    except SecAggError:  # any other exception fails the test
        assert channel.flipped
        return
    assert channel.flipped
    assert result.survivors == set(inputs)
    np.testing.assert_array_equal(result.total, _exact_sum(params, inputs, inputs))


def test_the_fuzzing_channel_alters_what_it_is_told_to():
    channel = _FlipOne(MaskedInput.TAG, 1, 3, 0x80)
    data = MaskedInput(new_session(), 1, b"xy", b"s").to_bytes()
    assert channel(data) == data and channel(data) != data and channel(data) == data and channel.flipped
    assert parse(channel(AdvertiseKeys(new_session(), 1, b"a", b"b").to_bytes())).sender == 1


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=120), cut=st.integers(0, 200))
def test_parsing_arbitrary_bytes_gives_a_message_or_a_protocol_error(data, cut):
    for blob in (data, b"SA2" + data, (b"SA2" + bytes([data[0] % 10 if data else 1]) + bytes(16) + data)[:cut]):
        try:
            message = parse(blob)
        except ProtocolError:
            continue
        assert message.to_bytes() == blob  # a message that parses is the unique encoding of itself
