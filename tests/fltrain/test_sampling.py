"""Batch samplers: each draws exactly the batches its accountant assumes, from the source it is given."""

from __future__ import annotations

import itertools
import math
from collections import Counter

import pytest
import torch
from scipy import stats

from dpcalib.errors import InvalidArgumentError
from fltrain.sampling import FixedSizeSampler, PoissonSampler, ShuffleSampler, make_sampler
from fltrain.randomness import ReproducibleRandom, SecureRandom

#: a uniformity test fails by chance with this probability
P_FLOOR = 1e-6


def _client_rows(index: torch.Tensor, weight: torch.Tensor) -> list[list[int]]:
    return [index[k][weight[k] > 0].tolist() for k in range(index.shape[0])]


def test_poisson_inclusion_probability_never_exceeds_the_accounted_rate():
    rates = torch.tensor([0.1, 0.01, 1 / 3, 1.0], dtype=torch.float64)
    sampler = PoissonSampler([torch.arange(5)] * 4, rates)
    # U ~ torch.rand(float32) takes the values k / 2^24, so P(U < t) = ceil(t · 2^24) / 2^24
    probability = torch.ceil(sampler.thresholds[:, 0].double() * 2**24) / 2**24
    assert bool((probability <= rates).all())
    assert bool((rates - probability < 2**-24).all())
    assert float(torch.tensor(0.1, dtype=torch.float32)) > 0.1  # a plain float32 cast would round 0.1 up


def test_poisson_batch_sizes_have_binomial_mean_and_variance():
    members = [torch.arange(1000), torch.arange(1000, 1400)]
    rates = torch.tensor([0.05, 0.2])
    sampler = PoissonSampler(members, rates)
    gen = SecureRandom()  # the source of a real run
    draws = 4000
    sizes = torch.zeros(draws, 2)
    hits = torch.zeros(1400)
    for t in range(draws):
        index, weight = sampler.sample(gen)
        sizes[t] = weight.sum(1)
        for k in range(2):
            chosen = index[k][weight[k] > 0]
            assert len(set(chosen.tolist())) == len(chosen)  # no record twice in a batch
            assert bool(((chosen >= members[k][0]) & (chosen <= members[k][-1])).all())  # only the client's own
            hits[chosen] += 1
    for k, (n, q) in enumerate([(1000, 0.05), (400, 0.2)]):
        mean, var = n * q, n * q * (1 - q)
        assert abs(float(sizes[:, k].mean()) - mean) < 5 * math.sqrt(var / draws)
        assert abs(float(sizes[:, k].var()) - var) < 5 * var * math.sqrt(2 / (draws - 1))
    # every record is included with its client's rate (mean over the client's records)
    assert float(hits[:1000].mean()) / draws == pytest.approx(0.05, rel=0.02)
    assert float(hits[1000:].mean()) / draws == pytest.approx(0.2, rel=0.02)


def test_fixed_sampler_draws_exactly_b_distinct_records_of_each_client():
    members = [torch.arange(5), torch.arange(5, 12), torch.arange(100, 103)]  # clients of 5, 7 and 3 records
    sampler = FixedSizeSampler(members, 3)
    rng = SecureRandom()
    for _ in range(200):
        index, weight = sampler.sample(rng)
        assert index.shape == (3, 3) and bool((weight == 1).all())
        for k, row in enumerate(_client_rows(index, weight)):
            assert len(set(row)) == 3  # exactly B, without replacement
            assert set(row) <= set(members[k].tolist())  # only the client's own records, never padding


def test_fixed_sampler_subsets_are_uniform():
    # every one of the C(5, 2) = 10 subsets, and every record (inclusion probability B/n), equally likely
    members = [torch.arange(5), torch.arange(10, 17)]
    sampler = FixedSizeSampler(members, 2)
    rng = SecureRandom()
    draws = 5000
    subsets: Counter = Counter()
    inclusions = torch.zeros(2, 7)
    for _ in range(draws):
        index, _ = sampler.sample(rng)
        subsets[tuple(sorted(index[0].tolist()))] += 1
        inclusions[0, index[0]] += 1
        inclusions[1, index[1] - 10] += 1
    observed = [subsets[s] for s in itertools.combinations(range(5), 2)]
    assert sum(observed) == draws  # no other subset occurred
    assert stats.chisquare(observed).pvalue > P_FLOOR
    for k, n in enumerate((5, 7)):
        counts = inclusions[k, :n].numpy()
        assert counts.sum() == 2 * draws
        assert stats.chisquare(counts).pvalue > P_FLOOR  # expected 2·draws/n each


def test_shuffle_sampler_covers_each_record_exactly_once_per_epoch():
    members = [torch.arange(12), torch.arange(20, 29)]  # 12 records: 4 batches of 3; 9 records: 3 batches of 3
    sampler = ShuffleSampler(members, 3)
    rng = SecureRandom()
    epochs: list[list[list[int]]] = [[], []]
    for _ in range(12):  # 3 epochs of client 0, 4 of client 1
        index, weight = sampler.sample(rng)
        assert index.shape == (2, 3) and bool((weight == 1).all())
        for k, row in enumerate(_client_rows(index, weight)):
            epochs[k].append(row)
    for k, per_epoch in enumerate((4, 3)):
        for start in range(0, 12, per_epoch):
            epoch = [i for row in epochs[k][start : start + per_epoch] for i in row]
            assert sorted(epoch) == members[k].tolist()  # each record in exactly one batch of the epoch


def test_shuffle_sampler_drops_the_partial_batch_and_permutes_uniformly():
    # 5 records, B = 2: each epoch is 2 batches of exactly 2; the record left out, and the first batch, are uniform
    rng = SecureRandom()
    left_out = torch.zeros(5)
    first = torch.zeros(5)
    draws = 3000
    sampler = ShuffleSampler([torch.arange(5)], 2)
    for _ in range(draws):
        a, _ = sampler.sample(rng)
        b, _ = sampler.sample(rng)
        epoch = a[0].tolist() + b[0].tolist()
        assert len(set(epoch)) == 4  # at most once per epoch, batches of exactly B
        left_out[list(set(range(5)) - set(epoch))] += 1
        first[a[0]] += 1
    assert stats.chisquare(left_out.numpy()).pvalue > P_FLOOR
    assert stats.chisquare(first.numpy()).pvalue > P_FLOOR


def test_samplers_draw_only_from_the_given_source():
    members = [torch.arange(10), torch.arange(10, 25)]
    torch.manual_seed(0)
    untouched = torch.rand(3)
    for kind in ("poisson", "fixed", "shuffle"):
        runs = []
        for _ in range(2):
            torch.manual_seed(0)
            sampler = make_sampler(kind, members, rates=torch.tensor([0.3, 0.3]), batch=4)
            rng = ReproducibleRandom(7)
            runs.append([sampler.sample(rng)[0] for _ in range(5)])
            assert torch.equal(torch.rand(3), untouched)  # torch's global (seeded) generator was not used
        assert all(torch.equal(a, b) for a, b in zip(*runs))  # the batches are a function of the source alone


@pytest.mark.parametrize("kind", ["fixed", "shuffle"])
def test_batches_larger_than_the_smallest_client_are_refused(kind):
    with pytest.raises(InvalidArgumentError, match=r"batch_size.*\[1, 5\]"):
        make_sampler(kind, [torch.arange(5), torch.arange(5, 50)], rates=torch.ones(2), batch=6)


def test_unknown_sampler_is_refused():
    with pytest.raises(InvalidArgumentError, match="sampler.*poisson, fixed, shuffle"):
        make_sampler("uniform", [torch.arange(5)], rates=torch.ones(1), batch=2)
