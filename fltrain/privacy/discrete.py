"""Distributed *discrete* noise for client-level DP (``[client] noise = "skellam"``): the release is exactly the
mechanism the ledger charges.

Each client of a fixed cohort of ``m`` of ``N`` clips its delta to ``C`` and sends, through secure aggregation,
its integer vector from the discrete pipeline of :mod:`fltrain.secagg.discrete` (rotation with the round's public
seed, conditional randomised rounding within the accounted norm bound, its Skellam share ``Sk(μ/t)`` drawn from
its secret source, reduction mod 2^bits). The server lifts the modular sum, un-rotates and un-scales it.
:func:`dpcalib.plan_skellam` (with ``population = N``) chooses the scale from ``bits`` and the wrap-around bound and
calibrates μ so that ``rounds`` rounds of ``SampledWithoutReplacement(N, m, Skellam(μ, Δ1, Δ2))`` meet (ε, δ)
under replace-one; the ledger charges exactly that event per round. As with the Gaussian shares, a round releases
``Sk(s·μ/t)`` with ``s ≥ t`` survivors: at least the accounted ``Sk(μ)`` (see :class:`dpcalib.Skellam`).
"""

from __future__ import annotations

import os

import numpy as np
import torch

import dpcalib
from dpcalib.errors import InvalidArgumentError
from dpcalib.events import Neighbouring

from ..randomness import POISSON_RATE_MAX, RandomSource, skellam
from ..secagg.discrete import DiscreteCodec
from .cohort import FixedCohort
from .plan import PrivacyPlan

__all__ = ["SkellamShares"]


class SkellamShares:
    """The discrete pipeline of one client-level run: its dpcalib plan, its codec, and the public seed of the
    current round's rotation (fresh every round, public: the server announces it)."""

    def __init__(self, plan: dpcalib.SkellamPlan, rng: RandomSource) -> None:
        self.plan = plan
        self.codec = DiscreteCodec(plan.bits, plan.scale, plan.clip, plan.dim, plan.l2_sensitivity)
        self.rng = rng
        self.seed = 0

    @classmethod
    def create(cls, *, cohort: FixedCohort, rng: RandomSource, dim: int, rounds: int, eps: float, delta: float,
               clip: float, bits: int, min_survivors: int) -> "SkellamShares":
        """Plan ``rounds`` rounds of the fixed ``cohort`` with :func:`dpcalib.plan_skellam`."""
        plan = dpcalib.plan_skellam(eps=eps, delta=delta, steps=rounds, bits=bits, clip=clip, dim=dim,
                                    clients=cohort.size, population=cohort.num_clients, min_survivors=min_survivors)
        if plan.share_variance / 2.0 > POISSON_RATE_MAX:
            raise InvalidArgumentError("bits", bits, f"fewer for these settings: a noise share of variance "
                                       f"{plan.share_variance:.3g} needs Poisson rates above {POISSON_RATE_MAX:g}")
        return cls(plan, rng)

    def privacy_plan(self, accountant: str) -> PrivacyPlan:
        """The ledger's plan: ``rounds`` of the Skellam round event, replace-one, σ = √μ/Δ2 (calibrated)."""
        p = self.plan
        return PrivacyPlan(p.noise_multiplier, p.round_event, p.steps, p.eps, p.delta, accountant,
                           Neighbouring.REPLACE_ONE, True)

    def encode(self, clipped: torch.Tensor) -> torch.Tensor:
        """The clients' ring vectors (k, padded length) for the clipped deltas (k, dim), as float64 (exact: the
        elements are below 2^53). Draws the round's public rotation seed first."""
        self.seed = int.from_bytes(os.urandom(7), "little")
        rows = [self.codec.encode(x, seed=self.seed, rng=self.rng,
                                  noise=skellam(self.rng, self.plan.share_variance, self.codec.padded_dim).numpy())
                for x in clipped.to(torch.float64).numpy()]
        width = self.codec.padded_dim
        return torch.from_numpy(np.stack(rows).astype(np.float64)) if rows else torch.zeros(0, width, dtype=torch.float64)

    def decode(self, total: torch.Tensor) -> torch.Tensor:
        """The float sum (dim,) from the lifted integer sum (padded length) of the current round."""
        lifted = np.rint(total.to(torch.float64).numpy()).astype(np.int64)
        return torch.from_numpy(self.codec.decode(lifted, seed=self.seed))

    def noise_std(self, shares: int) -> float:
        """The std of the noise per coordinate of the decoded sum with ``shares`` noise shares: √(shares·μ/t)/scale."""
        return float(np.sqrt(shares * self.plan.share_variance) / self.plan.scale)
