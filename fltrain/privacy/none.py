"""No differential privacy: FedAvg (McMahan et al. 2017), the non-private baseline.

A fixed-size cohort (``round(client_fraction·N)`` clients), plain local SGD, and the mean of the deltas weighted by
the clients' record counts ``n_k / Σ_j n_j`` (FedAvg's weighting): each client sends ``(w_k Δ_k, w_k)`` with
``w_k = n_k / train_records`` (the sum is then computable in the clear or under secure aggregation, one client at a
time, as in a Flower deployment) and the server divides the first part of the sum by the second. All randomness comes from the seed: such a run repeats bit for bit. Nothing is accounted and nothing is
claimed; the run's files still keep the training loss and the cohort out of the public outputs, as every mode does.
"""

from __future__ import annotations

from typing import ClassVar

import torch

from dpcalib import validation as check

from ..client import LocalTraining
from ..randomness import ReproducibleRandom
from .cohort import FixedCohort
from .mode import PrivacyMode

__all__ = ["NoPrivacy"]


class NoPrivacy(PrivacyMode):
    """FedAvg without DP (see the module docstring)."""

    name: ClassVar[str] = "none"
    guarantee: ClassVar[str] = "none"

    def __init__(self, *, cohort: FixedCohort, seed: int, train_records: int) -> None:
        super().__init__(cohort=cohort, rng=ReproducibleRandom(seed), plan=None)
        self.train_records = check.count("train_records", train_records)

    @property
    def noise_label(self) -> str:
        return "none"

    def local_training(self, base: LocalTraining) -> LocalTraining:
        return base

    def message_width(self, dim: int) -> int:
        return dim + 1

    def client_message(self, deltas: torch.Tensor, num_samples: torch.Tensor) -> torch.Tensor:
        weights = (num_samples.to(torch.float64) / self.train_records).unsqueeze(1)
        return torch.cat([weights * deltas.to(torch.float64), weights], dim=1)

    def server_update(self, total: torch.Tensor) -> torch.Tensor:
        return total[:-1] / total[-1]
