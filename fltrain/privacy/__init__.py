"""Privacy modes of fltrain: each one object that owns its plan, its randomness, its cohort, the client's and the
server's steps of a round, its ledger and what it releases (see :mod:`.mode` for the round).

- :class:`~.record.RecordLevel` (``dp = "sample"``): DP-SGD on every client, record-level (add/remove with
  Poisson batches, replace-one with fixed-size batches or shuffled epochs);
- :class:`~.clientlevel.ClientLevel` (``dp = "client"``): DP-FedAvg, client-level (add/remove with a Poisson cohort
  and central noise, replace-one with a fixed cohort and distributed noise under secure aggregation: Gaussian
  float shares, or Skellam integer shares through :mod:`.discrete`);
- :class:`~.none.NoPrivacy` (``dp = "none"``): FedAvg.

:func:`build_mode` makes the mode a :class:`fltrain.config.RunConfig` asks for.
"""

from __future__ import annotations

from typing import Any

from ..config import ConfigError, RunConfig
from ..randomness import RandomSource, ReproducibleRandom, SecureRandom
from .clientlevel import ClientLevel
from .cohort import FixedCohort, PoissonCohort
from .mode import NOISE_INSECURE, NOISE_SECURE, PrivacyMode
from .none import NoPrivacy
from .plan import PrivacyLedger, PrivacyPlan, make_plan
from .record import RecordLevel

__all__ = [
    "PrivacyMode", "RecordLevel", "ClientLevel", "NoPrivacy", "FixedCohort", "PoissonCohort", "PrivacyPlan",
    "PrivacyLedger", "make_plan", "build_mode", "NOISE_SECURE", "NOISE_INSECURE",
]


def _rng(cfg: RunConfig) -> RandomSource:
    """The secret source, or with ``insecure_reproducible_noise`` a generator seeded from ``seed + 1`` (a
    simulation: the noise then follows from the config)."""
    return ReproducibleRandom(cfg.seed + 1) if cfg.insecure_reproducible_noise else SecureRandom()


def build_mode(cfg: RunConfig, *, dim: int, train_records: int, client_sizes: list[int] | None = None,
               population: int | None = None) -> PrivacyMode:
    """The privacy mode of ``cfg`` for a model of ``dim`` parameters trained on ``train_records`` records (the
    public size of the training set; it sets the default record-level rate). Plans (calibrates σ) on the way.

    ``client_sizes``: the clients' record counts, needed by record-level DP with the ``fixed`` and ``shuffle``
    samplers (public under their replace-one relation; the plan is the smallest client's).

    ``population``: the clients of the federation when an audit's canary clients join the configured ``clients``
    (client-level DP with a Poisson cohort only: ``q`` and the denominator stay those of ``clients``)."""
    n = cfg.clients
    if population not in (None, n) and not (cfg.dp == "client" and cfg.client_sampling == "poisson"):
        raise ConfigError(f"{population} clients where clients = {n}: canary clients join a client-level run with a "
                          "Poisson cohort only")
    if cfg.dp == "none":
        return NoPrivacy(cohort=FixedCohort(n, cfg.cohort_size), seed=cfg.seed, train_records=train_records)
    if cfg.dp == "sample":
        s = cfg.sample
        if s.sampler == "poisson":
            q = s.q if s.q is not None else cfg.default_record_rate(train_records)
            batches: dict[str, Any] = {"q": q}
        else:
            batches = {"batch_size": cfg.batch_size, "client_sizes": client_sizes}
        return RecordLevel.create(cohort=FixedCohort(n, cfg.cohort_size), rng=_rng(cfg), local_steps=cfg.local_steps,
                                  rounds=cfg.rounds, eps=s.eps, delta=s.delta, clip=s.clip, accountant=s.accountant,
                                  sigma=s.sigma, sampler=s.sampler, **batches)
    c = cfg.client
    m = cfg.clients_per_round
    cohort = FixedCohort(n, round(m)) if cfg.client_sampling == "fixed" else PoissonCohort(n, m, population)
    return ClientLevel.create(cohort=cohort, rng=_rng(cfg), dim=dim, rounds=cfg.rounds, eps=c.eps,
                              delta=cfg.resolved_delta, clip=c.clip, accountant=c.accountant, sigma=c.sigma,
                              adaptive_clip=c.adaptive_clip, target_quantile=c.target_quantile, clip_lr=c.clip_lr,
                              count_noise_std=c.count_noise_std, distributed=cfg.secure_agg,
                              min_survivors=c.min_survivors, noise=c.noise, bits=c.bits)
