"""The FedAvg server (McMahan et al. 2017): pick clients, let them train, aggregate their deltas, step the model.

A round is three replaceable steps, each behind a small protocol so that other training modes plug in without
touching the loop:

1. :class:`ClientSampler` picks the round's clients (here: a fixed fraction, uniformly without replacement;
   client-level DP replaces it with Poisson sampling of clients);
2. the clients train (:class:`fltrain.client.LocalTrainer`) and return their deltas;
3. :class:`Aggregator` turns the deltas and weights into one update (here: the weighted mean, weights
   ``n_k / Σ n_j`` over the sampled clients, summing to 1; client-level DP clips and noises the deltas, secure
   aggregation computes the sum under masks).

The server then applies ``update`` with its optimiser (:mod:`fltrain.serveropt`): FedAvg/FedAvgM, ``v ← β v +
update``, ``θ ← θ + η v`` (Hsu et al. 2019), or FedAdam (Reddi et al. 2021).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Protocol

import torch

from .client import ClientUpdates, LocalTrainer
from .serveropt import ServerOptimizer, ServerSGD

__all__ = [
    "ClientSampler", "FractionSampler", "Aggregator", "fedavg_weights", "WeightedMean", "RoundResult", "FedAvgServer",
]


class ClientSampler(Protocol):
    """Chooses which clients take part in a round."""

    def sample(self, num_clients: int, generator: torch.Generator) -> torch.Tensor:
        """Return the (sorted, int64) ids of the round's clients."""
        ...


@dataclass(frozen=True)
class FractionSampler:
    """``max(1, round(fraction · N))`` clients, uniformly without replacement (McMahan et al. 2017's C)."""

    fraction: float

    def count(self, num_clients: int) -> int:
        """How many clients a round takes out of ``num_clients``."""
        return max(1, round(self.fraction * num_clients))

    def sample(self, num_clients: int, generator: torch.Generator) -> torch.Tensor:
        count = self.count(num_clients)
        if count >= num_clients:
            return torch.arange(num_clients)
        return torch.randperm(num_clients, generator=generator)[:count].sort().values


class Aggregator(Protocol):
    """Turns the clients' updates into the server's update direction (P,)."""

    def aggregate(self, updates: ClientUpdates, generator: torch.Generator) -> torch.Tensor:
        ...


def fedavg_weights(num_samples: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """FedAvg's weights ``w_k = n_k / Σ_j n_j`` over the sampled clients (they sum to 1)."""
    weights = num_samples.to(dtype)
    return weights / weights.sum()


@dataclass(frozen=True)
class WeightedMean:
    """Σ_k w_k Δ_k with w_k = n_k / Σ_j n_j over the sampled clients (FedAvg's weighting)."""

    def aggregate(self, updates: ClientUpdates, generator: torch.Generator) -> torch.Tensor:
        return fedavg_weights(updates.num_samples, updates.deltas.dtype) @ updates.deltas


@dataclass
class RoundResult:
    """What one round did: the clients that trained and their sample-weighted mean training loss (``None`` when a
    Poisson-sampled round had no client)."""

    client_ids: torch.Tensor
    train_loss: float | None


class FedAvgServer:
    """Holds the global parameters (flat, P) and the server optimiser; runs rounds."""

    def __init__(
        self,
        params: torch.Tensor,
        trainer: LocalTrainer,
        *,
        sampler: ClientSampler,
        aggregator: Aggregator,
        optimizer: ServerOptimizer | None = None,
    ) -> None:
        self.params = params.clone()
        self.trainer = trainer
        self.sampler = sampler
        self.aggregator = aggregator
        self.optimizer = optimizer if optimizer is not None else ServerSGD()

    @property
    def num_clients(self) -> int:
        return len(self.trainer.members)

    def run_round(
        self, generator: torch.Generator, on_step: Callable[[int], None] | None = None, local_lr: float | None = None
    ) -> RoundResult:
        """One round: sample clients, train them locally (learning rate ``local_lr``, default the trainer's),
        aggregate, apply the server step."""
        ids = self.sampler.sample(self.num_clients, generator)
        updates = self.trainer.train(self.params, ids, generator, on_step, lr=local_lr)
        update = self.aggregator.aggregate(updates, generator)
        self.optimizer.step(self.params, update)
        weights = updates.num_samples.to(torch.float64)
        loss = float((weights * updates.train_loss.to(torch.float64)).sum() / weights.sum()) if len(ids) else None
        return RoundResult(ids, loss)

    def state_dict(self) -> dict[str, Any]:
        """The server's state for a checkpoint: global parameters and optimiser state."""
        return {"params": self.params.clone(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.params.copy_(state["params"])
        self.optimizer.load_state_dict(state["optimizer"])
