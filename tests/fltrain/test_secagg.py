"""Secure aggregation: correctness of the unmasked sum, uniformity of masked vectors, dropouts, aborts, tampering
and replay. Small vectors and client counts keep this fast."""

from __future__ import annotations

import dataclasses
import random

import numpy as np
import pytest
from scipy import stats

pytest.importorskip("cryptography")

from dpcalib.errors import InvalidArgumentError  # noqa: E402
from fltrain.secagg import (  # noqa: E402
    STAGES,
    Client,
    FixedPoint,
    IntegrityError,
    ProtocolError,
    ReplayError,
    SecAggParams,
    Server,
    TooFewClientsError,
    complete_graph,
    harary_graph,
    new_session,
    run_secure_aggregation,
    secagg_plus_degree,
)
from fltrain.secagg import shamir  # noqa: E402
from fltrain.secagg.messages import (  # noqa: E402
    AdvertiseKeys,
    KeyDirectory,
    MaskedInput,
    ShareDelivery,
    ShareKeys,
    SurvivorList,
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


class _Round:
    """Drive one round by hand through the message objects (the tests tamper with them in between)."""

    def __init__(self, params: SecAggParams, n: int, graph=None) -> None:
        self.params = params
        self.server = Server(params, graph if graph is not None else complete_graph(range(1, n + 1)))
        self.clients = {u: Client(u, params, self.server.session) for u in range(1, n + 1)}

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

    def unmask(self, lists):
        for u, c in self.clients.items():
            self.server.receive(c.unmask(lists[u]))
        return self.server.result()


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
    assert np.all(np.abs(decoded - np.clip(x, -1, 1)) <= codec.sum_error_bound(1))
    assert decoded[0] == -1.0 and decoded[-1] == 1.0


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


@pytest.mark.parametrize("n", [3, 4, 10, 31, 100])
def test_unmasked_sum_equals_plain_sum(n):
    params = _params(n)
    inputs = _inputs(n, seed=n)
    result, cost = run_secure_aggregation(inputs, params)
    assert result.survivors == frozenset(inputs)
    plain = np.sum(list(inputs.values()), axis=0)
    assert np.max(np.abs(result.total - plain)) <= params.codec.sum_error_bound(n)
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
    # a client that drops before unmasking is out of the sum; one that drops during unmasking already sent input
    survivors = set(inputs) if stage == "unmasking" else set(inputs) - dropped
    assert result.survivors == survivors
    np.testing.assert_array_equal(result.total, _exact_sum(params, inputs, survivors))
    plain = np.sum([inputs[u] for u in survivors], axis=0)
    assert np.max(np.abs(result.total - plain)) <= params.codec.sum_error_bound(len(survivors))


def test_dropouts_spread_over_every_stage():
    n, t = 10, 6
    params = _params(n, threshold=t)
    inputs = _inputs(n, seed=7)
    dropouts = {"advertise_keys": {1}, "share_keys": {4}, "masked_input": {10}, "unmasking": {6}}
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
    with pytest.raises(InvalidArgumentError, match="threshold"):
        Server(_params(10, threshold=5), complete_graph(range(1, 11)))
    with pytest.raises(InvalidArgumentError, match="threshold"):
        Server(_params(10, threshold=11), complete_graph(range(1, 11)))


# --- tampering and replay -------------------------------------------------------------------------------------


def _flip(blob: bytes, index: int) -> bytes:
    return blob[:index] + bytes([blob[index] ^ 0x01]) + blob[index + 1 :]


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


def test_tampered_unmasking_share_is_detected_not_summed():
    n = 5
    rnd = _Round(_params(n, threshold=4), n)
    _, lists = rnd.mask(rnd.share(rnd.advertise()), _inputs(n))
    for u, c in rnd.clients.items():
        reply = c.unmask(lists[u])
        if u == 1:  # the lowest holder's share is always among those combined
            owner, share = reply.seed_shares[-1]
            reply = dataclasses.replace(reply, seed_shares=reply.seed_shares[:-1] + ((owner, _flip(share, 65)),))
        rnd.server.receive(reply)
    with pytest.raises(IntegrityError, match="commitment"):
        rnd.server.result()


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
    _, lists = rnd.mask(rnd.share(rnd.advertise()), _inputs(n))
    first = rnd.clients[1].unmask(lists[1])
    assert {o for o, _ in first.seed_shares} == set(range(1, n + 1)) and first.key_shares == ()
    # a second request claiming that client 2 dropped would yield its key share too: refused
    claim = dataclasses.replace(lists[1], survivors=tuple(u for u in lists[1].survivors if u != 2))
    with pytest.raises(ReplayError):
        rnd.clients[1].unmask(claim)


def test_inconsistent_survivor_list_is_refused():
    n = 5
    rnd = _Round(_params(n), n)
    _, lists = rnd.mask(rnd.share(rnd.advertise()), _inputs(n))
    with pytest.raises(ProtocolError):
        rnd.clients[1].unmask(dataclasses.replace(lists[1], survivors=lists[1].survivors + (99,)))


def test_directory_that_misstates_a_clients_keys_is_refused():
    rnd = _Round(_params(4), 4)
    d = rnd.advertise()[1]
    entries = tuple((i, e, m if i != 1 else d.entries[1][2]) for i, e, m in d.entries)
    with pytest.raises(ProtocolError):
        rnd.clients[1].share_keys(dataclasses.replace(d, entries=entries))


# --- the wire -------------------------------------------------------------------------------------------------


def test_every_message_round_trips_through_bytes_and_rejects_garbage():
    s = new_session()
    messages = [
        AdvertiseKeys(s, 3, b"a" * 32, b"b" * 32),
        KeyDirectory(s, 3, ((1, b"x" * 32, b"y" * 32), (3, b"z" * 32, b"w" * 32))),
        ShareKeys(s, 3, b"c" * 32, ((1, b"sealed"), (2, b""))),
        ShareDelivery(s, 2, ((3, b"sealed"),)),
        MaskedInput(s, 3, bytes(range(16))),
        SurvivorList(s, 3, (1, 3, 4)),
        UnmaskingShares(s, 3, ((1, b"p"),), ((2, b"q"),)),
    ]
    for m in messages:
        data = m.to_bytes()
        assert parse(data) == m
        with pytest.raises(ProtocolError):
            parse(data[:-1])
        with pytest.raises(ProtocolError):
            parse(data + b"\0")
    with pytest.raises(ProtocolError):
        parse(b"XX1" + bytes(40))
