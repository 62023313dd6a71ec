"""Cohorts: Poisson sampling never includes a client with probability above the accounted q; a fixed cohort has
exactly its size, uniformly; each names the event and relation the accountant sees."""

from __future__ import annotations

import math

import pytest
import torch

from dpcalib.errors import InvalidArgumentError
from dpcalib.events import Gaussian, Neighbouring, PoissonSampled, SampledWithoutReplacement
from fltrain.privacy.cohort import FixedCohort, PoissonCohort
from fltrain.randomness import SecureRandom


def test_poisson_cohort_size_is_binomial_and_every_client_has_rate_q():
    n, m, trials = 1000, 50.0, 3000
    cohort = PoissonCohort(n, m)
    rng = SecureRandom()
    counts = torch.empty(trials, dtype=torch.float64)
    hits = torch.zeros(n, dtype=torch.float64)
    for t in range(trials):
        idx = cohort.sample(rng)
        assert torch.equal(idx, torch.unique(idx))
        counts[t] = idx.numel()
        hits[idx] += 1
    q = m / n
    mean, var = n * q, n * q * (1 - q)
    assert abs(float(counts.mean()) - mean) < 5 * math.sqrt(var / trials)
    assert abs(float(counts.var()) - var) < 5 * var * math.sqrt(2 / (trials - 1))
    assert abs(float(hits.mean()) / trials - q) < 5 * math.sqrt(q * (1 - q) / (trials * n))
    assert cohort.event(1.5) == PoissonSampled(q, Gaussian(1.5)) and cohort.neighbouring is Neighbouring.ADD_REMOVE
    assert not cohort.public_size


class _Constant:
    """A source whose uniforms are all ``value``: probes the inclusion threshold."""

    secure = False

    def __init__(self, value: float) -> None:
        self.value = value

    def rand(self, shape, dtype=torch.float32):
        return torch.full((shape,) if isinstance(shape, int) else shape, self.value, dtype=dtype)


def test_poisson_threshold_is_the_accounted_q_rounded_down():
    cohort = PoissonCohort(10, 1.0)  # q = 0.1, not a multiple of 2^-53
    below = math.floor(0.1 * 2**53) / 2**53
    assert len(cohort.sample(_Constant(below - 2**-53))) == 10
    assert len(cohort.sample(_Constant(below))) == 0  # P(U < threshold) = threshold <= q


def test_poisson_population_keeps_q_and_draws_every_client_of_it():
    cohort = PoissonCohort(10, 1.0, population=25)  # 15 canary clients joined after q was fixed by 10 clients
    below = math.floor(0.1 * 2**53) / 2**53
    assert cohort.sample(_Constant(below - 2**-53)).tolist() == list(range(25))
    assert cohort.q == 0.1 and cohort.expected == 1.0 and cohort.event(1.0) == PoissonSampled(0.1, Gaussian(1.0))
    with pytest.raises(InvalidArgumentError, match="population"):
        PoissonCohort(10, 1.0, population=9)


def test_fixed_cohort_is_uniform_with_exact_size():
    n, size, trials = 12, 4, 6000
    cohort = FixedCohort(n, size)
    rng = SecureRandom()
    hits = torch.zeros(n)
    for _ in range(trials):
        ids = cohort.sample(rng)
        assert len(ids) == size and torch.equal(ids, torch.unique(ids))
        hits[ids] += 1
    p = size / n
    assert float((hits / trials - p).abs().max()) < 5 * math.sqrt(p * (1 - p) / trials)
    assert cohort.event(2.0) == SampledWithoutReplacement(n, size, Gaussian(2.0))
    assert cohort.neighbouring is Neighbouring.REPLACE_ONE and cohort.public_size
    assert torch.equal(FixedCohort(3, 3).sample(rng), torch.arange(3))


def test_bad_cohorts_are_refused():
    with pytest.raises(InvalidArgumentError, match="cohort size"):
        FixedCohort(3, 4)
    with pytest.raises(InvalidArgumentError, match="expected_clients"):
        PoissonCohort(3, 4.0)
