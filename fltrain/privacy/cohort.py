"""Who takes part in a round, and the sampling event the accountant sees for it.

- :class:`FixedCohort`: exactly ``size`` of the ``num_clients`` clients, uniformly without replacement (McMahan
  et al. 2017's fraction C). Its size is public. Accounted (client-level DP) as
  ``SampledWithoutReplacement(N, size, Gaussian(σ))`` under the replace-one relation (Wang, Balle,
  Kasiviswanathan 2019): a fixed-size sample only hides *which* clients, not how many, so the neighbouring
  federations must have the same number of clients.
- :class:`PoissonCohort`: every client independently with probability ``q = expected/N``; the realised count is
  Binomial(N, q) and private. Accounted as ``PoissonSampled(q, Gaussian(σ))`` under add/remove (Mironov, Talwar,
  Zhang 2019), which holds whatever the number of clients: an audit's canary clients (:mod:`fltrain.audit`) join
  the ``population`` after ``q`` was fixed by the public ``N``, and are sampled with that ``q`` like any client.

σ is always the noise std divided by the clip norm C; for the replace-one relation the sensitivity of a clipped
sum is 2C, which dpcalib applies inside its replace-one accounting.

The draws come from the mode's :class:`fltrain.randomness.RandomSource` (secret in a DP run).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dpcalib import validation as check
from dpcalib.errors import InvalidArgumentError
from dpcalib.events import Event, Gaussian, Neighbouring, PoissonSampled, SampledWithoutReplacement

from ..randomness import RandomSource

__all__ = ["Cohort", "FixedCohort", "PoissonCohort"]


@dataclass(frozen=True)
class FixedCohort:
    """Exactly ``size`` of ``num_clients`` clients per round, uniformly without replacement."""

    num_clients: int
    size: int

    def __post_init__(self) -> None:
        n = check.count("clients", self.num_clients)
        size = check.count("cohort size", self.size)
        if size > n:
            raise InvalidArgumentError("cohort size", size, f"in [1, clients={n}]")

    neighbouring = Neighbouring.REPLACE_ONE

    @property
    def expected(self) -> float:
        """The (public) number of clients per round."""
        return float(self.size)

    @property
    def public_size(self) -> bool:
        return True

    def sample(self, rng: RandomSource) -> torch.Tensor:
        """The sorted ids (int64) of the round's clients."""
        if self.size >= self.num_clients:
            return torch.arange(self.num_clients)
        return rng.randperm(self.num_clients)[: self.size].sort().values

    def event(self, sigma: float) -> Event:
        """One release on the cohort: ``SampledWithoutReplacement(N, size, Gaussian(σ))`` (replace-one)."""
        return SampledWithoutReplacement(self.num_clients, self.size, Gaussian(sigma))


@dataclass(frozen=True)
class PoissonCohort:
    """Every client independently with probability ``q = expected / num_clients``; the count is private.

    ``population``: the clients actually drawn from, when more than the public ``num_clients`` that set ``q`` (an
    audit's canary clients); each is included with the same ``q``."""

    num_clients: int
    expected_size: float
    population: int | None = None

    def __post_init__(self) -> None:
        n = check.count("clients", self.num_clients)
        m = check.positive("expected_clients", self.expected_size)
        if m > n:
            raise InvalidArgumentError("expected_clients", self.expected_size, f"in (0, clients={n}]")
        if self.population is not None:
            check.count("population", self.population, minimum=n)

    neighbouring = Neighbouring.ADD_REMOVE

    @property
    def q(self) -> float:
        """The inclusion probability; :meth:`sample` includes a client with probability at most this."""
        return self.expected_size / self.num_clients

    @property
    def expected(self) -> float:
        return float(self.expected_size)

    @property
    def public_size(self) -> bool:
        return False

    def sample(self, rng: RandomSource) -> torch.Tensor:
        """Sorted ids of the clients whose float64 uniform falls below ``q`` rounded down to the 2^-53 grid (so
        the inclusion probability is at most the accounted ``q``); possibly none."""
        threshold = torch.floor(torch.tensor(self.q, dtype=torch.float64) * 2.0**53) * 2.0**-53
        drawn = self.num_clients if self.population is None else self.population
        return torch.nonzero(rng.rand(drawn, torch.float64) < threshold).flatten()

    def event(self, sigma: float) -> Event:
        """One release on the cohort: ``PoissonSampled(q, Gaussian(σ))`` (add/remove)."""
        return PoissonSampled(self.q, Gaussian(sigma))


Cohort = FixedCohort | PoissonCohort
