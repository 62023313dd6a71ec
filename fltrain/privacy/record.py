"""Record-level DP (``dp = "sample"``): every client runs DP-SGD on its own records (Abadi et al. 2016).

**Guarantee.** Add/remove neighbouring of one training record of one client: two federations whose data differ by
one record (added to or removed from any one client) are hard to tell apart from everything the run releases.

**What each client does.** ``local_steps`` DP-SGD steps per round: Poisson sampling of its records with the one
public rate ``q`` (the same for every client, a setting: ``[sample] q``, default ``batch_size × clients /
training records``, the rate of an equal split), per-sample clipping to ``C``, Gaussian noise ``N(0, σ²C²)`` on
the sum, division by the public ``batch_size``. Neither the rate nor the divisor depends on a client's record
count ``n_k``, which is private under add/remove (adding a record changes it).

**What the server does.** The uniform mean of the cohort's deltas, ``Σ_k Δ_k / K``, ``K`` the public size of the
fixed cohort (``round(client_fraction·N)`` clients, uniformly without replacement): FedAvg's weights ``n_k/Σn_j``
would be a function of private counts, released un-noised. The mean is post-processing of the clients' DP-SGD
outputs.

**Accounting.** Each round is, for any record, at most ``local_steps`` steps of the Poisson-subsampled Gaussian of
its client (Mironov, Talwar, Zhang 2019): the round event is ``Repeated(PoissonSampled(q, Gaussian(σ)),
local_steps)``, charged every round whether or not the record's client was in the cohort (no amplification by
client sampling is claimed). A record lives in one client and the clients' noise is independent, so the clients'
mechanisms act on disjoint data (parallel composition): one client's ε is the run's ε.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from dpcalib.events import Event, Gaussian, Neighbouring, PoissonSampled, Repeated

from ..client import LocalTraining
from ..randomness import RandomSource
from .cohort import FixedCohort
from .mode import PrivacyMode
from .plan import PrivacyPlan, make_plan

__all__ = ["RecordLevel", "record_round_event"]


def record_round_event(sigma: float, *, q: float, local_steps: int) -> Event:
    """One round for one record: ``Repeated(PoissonSampled(q, Gaussian(σ)), local_steps)``."""
    return Repeated(PoissonSampled(q, Gaussian(sigma)), local_steps)


class RecordLevel(PrivacyMode):
    """Record-level DP-FedAvg: DP-SGD on every client, uniform mean at the server (see the module docstring)."""

    name: ClassVar[str] = "sample"
    guarantee: ClassVar[str] = "record-level, add/remove one training record of one client"

    def __init__(self, *, cohort: FixedCohort, rng: RandomSource, plan: PrivacyPlan, clip: float, q: float) -> None:
        super().__init__(cohort=cohort, rng=rng, plan=plan)
        self.clip = clip
        self.q = q

    @classmethod
    def create(cls, *, cohort: FixedCohort, rng: RandomSource, q: float, local_steps: int, rounds: int, eps: float,
               delta: float, clip: float, accountant: str, sigma: float | None = None) -> "RecordLevel":
        """Plan the run (σ calibrated by dpcalib unless given) and build the mode."""
        plan = make_plan(lambda s: record_round_event(s, q=q, local_steps=local_steps), rounds=rounds, eps=eps,
                         delta=delta, accountant=accountant, neighbouring=Neighbouring.ADD_REMOVE, sigma=sigma,
                         what=f" ({local_steps} steps at q={q:.4g})")
        return cls(cohort=cohort, rng=rng, plan=plan, clip=clip, q=q)

    def local_training(self, base: LocalTraining) -> LocalTraining:
        assert self.plan is not None
        return LocalTraining(
            local_steps=base.local_steps, batch_size=base.batch_size, lr=base.lr, momentum=base.momentum,
            clip=self.clip, noise_multiplier=self.plan.sigma, rate=self.q, parallel_clients=base.parallel_clients,
            max_physical_batch=base.max_physical_batch,
        )

    def client_message(self, deltas: torch.Tensor, num_samples: torch.Tensor) -> torch.Tensor:
        return deltas.to(torch.float64) / self.cohort.size

    def server_update(self, total: torch.Tensor) -> torch.Tensor:
        return total

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "clip": self.clip, "q": self.q, "client_weights": "uniform 1/cohort",
                "cohort": self.cohort.size}
