"""The FedAvg server (McMahan et al. 2017): pick a cohort, let it train, sum its messages, step the model.

A round is driven by the run's privacy mode (:class:`fltrain.privacy.PrivacyMode`), which owns every step that
touches privacy: who takes part (``select``), how the clients train (``local_training``), what each client puts
into the sum (``client_message``), and what the server makes of the sum (``server_update``: noise, public
denominator, clip state). This module owns the rest: local training of the cohort
(:class:`fltrain.client.LocalTrainer`), the sum (in the clear, or by secure aggregation through a ``summer``), and
the server optimiser (:mod:`fltrain.serveropt`: FedAvg/FedAvgM, ``v ← β v + update``, ``θ ← θ + η v`` (Hsu et al.
2019), or FedAdam (Reddi et al. 2021)), whose step is post-processing of the mode's release.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Protocol

import torch

from .client import ClientUpdates, LocalTrainer, LocalTraining
from .privacy.mode import PrivacyMode
from .serveropt import ServerOptimizer, ServerSGD

__all__ = ["Summer", "plain_sum", "RoundResult", "FedAvgServer"]


class Summer(Protocol):
    """Sums the rows of the cohort's messages (k, w), k ≥ 1, for ``mode`` (which sets the secure-aggregation
    range and dropout floor)."""

    def __call__(self, messages: torch.Tensor, mode: PrivacyMode) -> torch.Tensor:
        ...


def plain_sum(messages: torch.Tensor, mode: PrivacyMode) -> torch.Tensor:
    """The sum in the clear (the server sees every message)."""
    return messages.sum(dim=0)


@dataclass
class RoundResult:
    """What one round did, for the run's *private* diagnostics: the cohort and its record-count-weighted mean
    training loss (``None`` when no client with records trained). Neither is a DP release."""

    client_ids: torch.Tensor
    train_loss: float | None


class FedAvgServer:
    """Holds the global parameters (flat, P) and the server optimiser; runs rounds as ``mode`` says. ``updates``
    (an audit's, :meth:`fltrain.run.RunHooks.updates`) sees the cohort's updates before the mode does."""

    def __init__(
        self,
        params: torch.Tensor,
        trainer: LocalTrainer,
        mode: PrivacyMode,
        *,
        summer: Summer = plain_sum,
        optimizer: ServerOptimizer | None = None,
        updates: Callable[[ClientUpdates], ClientUpdates] | None = None,
    ) -> None:
        self.params = params.clone()
        self.updates = updates
        self.trainer = trainer
        self.mode = mode
        self.summer = summer
        self.optimizer = optimizer if optimizer is not None else ServerSGD()
        self.local: LocalTraining = mode.local_training(trainer.plan)
        trainer.use(self.local)

    def run_round(self, on_step: Callable[[int], None] | None = None, local_lr: float | None = None) -> RoundResult:
        """One round: the cohort trains locally (learning rate ``local_lr``, default the trainer's), its messages
        are summed, the mode turns the sum into the update, the optimiser applies it."""
        mode = self.mode
        ids = mode.select()
        updates = self.trainer.train(self.params, ids, mode.rng, on_step, lr=local_lr)
        if self.updates is not None:
            updates = self.updates(updates)
        messages = mode.client_message(updates.deltas, updates.num_samples)
        width = mode.message_width(self.params.numel())
        total = self.summer(messages, mode) if len(ids) else torch.zeros(width, dtype=torch.float64)
        update = mode.server_update(total)
        self.optimizer.step(self.params, update.to(self.params.dtype))
        weights = updates.num_samples.to(torch.float64)
        # no loss when no client with records trained (an empty Poisson cohort, or only an audit's canary clients)
        loss = float((weights * updates.train_loss.to(torch.float64)).sum() / weights.sum()) if weights.sum() else None
        return RoundResult(ids, loss)

    def state_dict(self) -> dict[str, Any]:
        """The server's state for a checkpoint: global parameters and optimiser state."""
        return {"params": self.params.clone(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.params.copy_(state["params"])
        self.optimizer.load_state_dict(state["optimizer"])
