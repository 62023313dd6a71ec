"""Record-level DP (``dp = "sample"``): every client runs DP-SGD on its own records (Abadi et al. 2016).

**Guarantee.** One training record of one client: two federations whose data differ in one record of one client
are hard to tell apart from everything the run releases. The neighbouring relation is the sampler's
(:class:`dpcalib.Sampler`): add/remove (a record added to or removed from any one client) with ``poisson``;
replace-one (a record of any one client replaced by another; every client keeps its record count ``n_k``) with
``fixed`` and ``shuffle``.

**What each client does.** ``local_steps`` DP-SGD steps per round: a batch from the sampler
(:mod:`fltrain.sampling`), per-sample clipping to ``C``, Gaussian noise ``N(0, σ²C²)`` on the sum, division by
the public ``batch_size`` ``B``.

- ``poisson``: each record independently with the one public rate ``q`` (the same for every client, a setting:
  ``[sample] q``, default ``batch_size × clients / training records``, the rate of an equal split). Neither the
  rate nor the divisor depends on ``n_k``, which is private under add/remove (adding a record changes it).
- ``fixed``: a uniformly random subset of exactly ``B`` of the client's ``n_k`` records, drawn afresh every step.
- ``shuffle``: a uniformly random permutation of the client's records per epoch, cut into ``⌊n_k/B⌋`` batches of
  exactly ``B`` (the last ``n_k mod B`` records of the permutation sit that epoch out); every round begins a new
  epoch (clients are stateless between rounds).

Under replace-one the counts ``n_k`` are the same on neighbouring federations, hence public: the plan may depend
on them (it uses the smallest, ``n_min``), and every batch has exactly ``B`` records, so ``B`` is both the batch
size and the divisor.

**What the server does.** The uniform mean of the cohort's deltas, ``Σ_k Δ_k / K``, ``K`` the public size of the
fixed cohort (``round(client_fraction·N)`` clients, uniformly without replacement): FedAvg's weights ``n_k/Σn_j``
would be a function of private counts under add/remove, released un-noised (under replace-one they would be public,
but one rule serves every sampler). The mean is post-processing of the clients' DP-SGD outputs.

**Accounting.** Each round is, for any record, at most ``local_steps`` DP-SGD steps of its client, charged every
round whether or not the client was in the cohort (no amplification by client sampling is claimed). A record
lives in one client and the clients' noise is independent, so the clients' mechanisms act on disjoint data
(parallel composition): the run's ε is the largest client's ε. The round event is
:func:`dpcalib.training_event` of ``local_steps`` steps:

- ``poisson``: ``Repeated(PoissonSampled(q, Gaussian(σ)), local_steps)`` (Mironov, Talwar, Zhang 2019), the same
  for every client;
- ``fixed``: ``Repeated(SampledWithoutReplacement(n_min, B, Gaussian(σ)), local_steps)`` (Wang, Balle,
  Kasiviswanathan 2019), replace-one, sensitivity 2C (dpcalib divides σ by 2). The smallest client is the
  worst: the pair of output distributions that dominates one step at rate ``γ' = B/n_k`` is the mixture, with
  weight ``γ'/γ``, of the pair at ``γ = B/n_min ≥ γ'`` and of a pair of identical distributions (the batch
  without the record); hockey-stick and Rényi divergences are jointly convex, so the pair at ``γ`` dominates it
  (Balle, Barthe, Gaboardi 2018; Zhu, Dong, Wang 2022), and the accounted bounds are increasing in ``γ`` (Wang
  et al.'s RDP bound at integer orders is a sum of non-negative multiples of powers of ``γ``; at ``γ = 1`` it is
  the plain Gaussian, which bounds any subsampled step by joint convexity);
- ``shuffle``: ``Repeated(ShuffledEpoch(n_min, B, Gaussian(σ)), ⌈local_steps / ⌊n_min/B⌋⌉)``: one Gaussian
  release at sensitivity 2C per epoch a round touches, no amplification by shuffling claimed
  (:class:`dpcalib.ShuffledEpoch`); a larger client touches no more epochs (``⌊n_k/B⌋ ≥ ⌊n_min/B⌋``).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

import dpcalib
from dpcalib.errors import InvalidArgumentError
from dpcalib.events import Event, Sampler, as_sampler

from ..client import LocalTraining
from ..randomness import RandomSource
from .cohort import FixedCohort
from .mode import PrivacyMode
from .plan import PrivacyPlan, make_plan

__all__ = ["RecordLevel", "record_round_event"]


def record_round_event(sigma: float, *, local_steps: int, sampler: Sampler | str = Sampler.POISSON,
                       q: float | None = None, records: int | None = None, batch_size: int | None = None) -> Event:
    """One round for one record: :func:`dpcalib.training_event` of ``local_steps`` steps of ``sampler`` (the
    rate ``q`` for ``poisson``; the smallest client's record count ``records`` and ``batch_size`` otherwise)."""
    return dpcalib.training_event(sampler, sigma=sigma, steps=local_steps, q=q, dataset_size=records,
                                  batch_size=batch_size)


class RecordLevel(PrivacyMode):
    """Record-level DP-FedAvg: DP-SGD on every client, uniform mean at the server (see the module docstring).

    ``q`` is the Poisson rate (``poisson`` only, else None); ``records`` the smallest client's record count and
    ``batch_size`` the size of every batch (``fixed`` and ``shuffle`` only, else None), public under their
    replace-one relation.
    """

    name: ClassVar[str] = "sample"
    guarantee: ClassVar[str] = "record-level"

    def __init__(self, *, cohort: FixedCohort, rng: RandomSource, plan: PrivacyPlan, clip: float,
                 sampler: Sampler = Sampler.POISSON, q: float | None = None, records: int | None = None,
                 batch_size: int | None = None) -> None:
        super().__init__(cohort=cohort, rng=rng, plan=plan)
        self.clip = clip
        self.sampler = sampler
        self.q = q
        self.records = records
        self.batch_size = batch_size

    @classmethod
    def create(cls, *, cohort: FixedCohort, rng: RandomSource, local_steps: int, rounds: int, eps: float,
               delta: float, clip: float, accountant: str, sigma: float | None = None,
               sampler: Sampler | str = Sampler.POISSON, q: float | None = None, batch_size: int | None = None,
               client_sizes: list[int] | None = None) -> "RecordLevel":
        """Plan the run (σ calibrated by dpcalib unless given) and build the mode. ``poisson`` needs ``q``;
        ``fixed`` and ``shuffle`` need ``batch_size`` and the clients' record counts ``client_sizes`` (the plan is
        the smallest client's, the worst; ``batch_size`` must not exceed it)."""
        kind = as_sampler(sampler)
        records = None
        if kind is Sampler.POISSON:
            what = f" ({local_steps} steps at q={q:.4g})" if q is not None else ""
            q_used, batch_size = q, None
        else:
            if not client_sizes:
                raise InvalidArgumentError("client_sizes", client_sizes, f"the clients' record counts (the "
                                           f"{kind.value} sampler's plan depends on the smallest)")
            records = min(client_sizes)
            if batch_size is None or not 1 <= batch_size <= records:
                raise InvalidArgumentError("batch_size", batch_size, f"an integer in [1, {records}] (the smallest "
                                           f"client's record count: the {kind.value} sampler draws batches of exactly "
                                           "batch_size records from every client)")
            what = f" ({local_steps} steps of {batch_size} of {records} records)"
            q_used = None
        plan = make_plan(lambda s: record_round_event(s, local_steps=local_steps, sampler=kind, q=q_used,
                                                      records=records, batch_size=batch_size),
                         rounds=rounds, eps=eps, delta=delta, accountant=accountant, neighbouring=kind.neighbouring,
                         sigma=sigma, what=what)
        return cls(cohort=cohort, rng=rng, plan=plan, clip=clip, sampler=kind, q=q_used, records=records,
                   batch_size=batch_size)

    def local_training(self, base: LocalTraining) -> LocalTraining:
        """DP-SGD with the plan's σ, the clip norm and the sampler; ``fixed`` and ``shuffle`` batches (and the
        divisor) have the plan's ``batch_size``, Poisson batches the rate ``q`` and the divisor ``base.batch_size``."""
        assert self.plan is not None
        return LocalTraining(
            local_steps=base.local_steps, batch_size=self.batch_size or base.batch_size, lr=base.lr,
            momentum=base.momentum, clip=self.clip, noise_multiplier=self.plan.sigma, rate=self.q,
            sampler=self.sampler.value, parallel_clients=base.parallel_clients,
            max_physical_batch=base.max_physical_batch,
        )

    def client_message(self, deltas: torch.Tensor, num_samples: torch.Tensor) -> torch.Tensor:
        return deltas.to(torch.float64) / self.cohort.size

    def server_update(self, total: torch.Tensor) -> torch.Tensor:
        return total

    def describe(self) -> dict[str, Any]:
        relation = "add/remove" if self.sampler is Sampler.POISSON else "replace-one (client record counts public)"
        batches = {"q": self.q} if self.q is not None else {"smallest_client_records": self.records}
        return {**super().describe(), "guarantee": f"record-level, {relation}: one training record of one client",
                "sampler": self.sampler.value, **batches, "clip": self.clip, "client_weights": "uniform 1/cohort",
                "cohort": self.cohort.size}
