"""Clients' local training: ``local_steps`` of (DP-)SGD with momentum from the global model, for many clients at once.

A client is stateless between rounds (as in FedAvg, McMahan et al. 2017): it starts from the global parameters
with a zero momentum buffer and returns its model delta.  The clients of a round are trained in groups of
``parallel_clients``, each group as one stacked tensor program (see :mod:`fltrain.dpsgd`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from .dpsgd import Engine, noisy_gradient
from .models import ParamLayout
from .randomness import RandomSource
from .sampling import make_sampler

__all__ = ["LocalTraining", "ClientUpdates", "LocalTrainer"]


@dataclass(frozen=True)
class LocalTraining:
    """How every client trains locally.

    ``clip=None`` and ``noise_multiplier=0`` give plain (non-private) SGD on Poisson batches of rate
    ``min(1, batch_size / n_k)``, the loss averaged over the realised batch. Otherwise DP-SGD with the batches of
    ``sampler`` (:mod:`fltrain.sampling`): ``poisson`` with the one public rate ``rate``, or ``fixed`` / ``shuffle``
    batches of exactly ``batch_size``; the noisy sum is divided by the public ``batch_size``, so that neither the
    rate nor the divisor depends on a client's record count (record-level DP, see :mod:`fltrain.privacy.record`).
    """

    local_steps: int
    batch_size: int
    lr: float
    momentum: float
    clip: float | None = None
    noise_multiplier: float = 0.0
    rate: float | None = None
    sampler: str = "poisson"
    parallel_clients: int = 0
    max_physical_batch: int = 384

    @property
    def group_size(self) -> int:
        """Clients trained together: ``parallel_clients``, or (0, auto) as many as fill ``max_physical_batch``
        with expected batches — a few hundred records at a time keep the working set in the CPU caches."""
        return self.parallel_clients or max(1, self.max_physical_batch // self.batch_size)

    @property
    def private(self) -> bool:
        return self.clip is not None


@dataclass
class ClientUpdates:
    """What the sampled clients send back: ``deltas`` (m, P) = local − global parameters, their record counts
    ``num_samples`` (m,), and each client's mean training loss over its local steps ``train_loss`` (m,)."""

    client_ids: torch.Tensor
    deltas: torch.Tensor
    num_samples: torch.Tensor
    train_loss: torch.Tensor


def sampling_rates(sizes: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Per-client Poisson rate ``q_k = min(1, batch_size / n_k)`` (expected batch ``batch_size``)."""
    return (batch_size / sizes.to(torch.float64)).clamp(max=1.0)


class LocalTrainer:
    """Runs :class:`LocalTraining` for any subset of the clients whose records are ``members`` (indices into
    ``x``/``y``)."""

    def __init__(
        self,
        layout: ParamLayout,
        engine: Engine,
        x: torch.Tensor,
        y: torch.Tensor,
        members: list[torch.Tensor],
        plan: LocalTraining,
    ) -> None:
        self.layout = layout
        self.engine = engine
        self.x = x
        self.y = y
        self.members = members
        self.sizes = torch.tensor([len(m) for m in members])
        self.use(plan)

    def use(self, plan: LocalTraining) -> None:
        """Train with ``plan`` from now on (a privacy mode sets its clipping, noise and rate this way)."""
        self.plan = plan
        self.rates = sampling_rates(self.sizes, plan.batch_size) if plan.rate is None else torch.full(
            (len(self.members),), float(plan.rate), dtype=torch.float64)

    def train(
        self,
        global_params: torch.Tensor,
        client_ids: torch.Tensor,
        rng: RandomSource,
        on_step: Callable[[int], None] | None = None,
        lr: float | None = None,
    ) -> ClientUpdates:
        """Train ``client_ids`` from the flat ``global_params`` (P,) with local learning rate ``lr`` (default: the
        plan's); ``on_step(step)`` after each local step of the first group. Batches and noise come from ``rng``.
        Training runs on the device of the records ``x``; the deltas and losses come back on ``global_params``'s.
        A client without records (only an audit's canary client, :mod:`fltrain.audit.clients`) trains nothing: its
        delta and loss are 0."""
        device = self.x.device
        start = global_params.to(device)
        # a Poisson-sampled round may have no client (client-level DP): then no delta and no loss
        deltas, losses = [start.new_zeros(0, start.numel())], [start.new_zeros(0)]
        group = self.plan.group_size
        lr = self.plan.lr if lr is None else lr
        holding = self.sizes[client_ids] > 0
        trained = client_ids[holding]
        for first in range(0, len(trained), group):
            ids = trained[first : first + group]
            delta, loss = self._train_group(start, ids, rng, lr, on_step if first == 0 else None)
            deltas.append(delta)
            losses.append(loss)
        host = global_params.device
        delta = torch.zeros(len(client_ids), global_params.numel(), dtype=global_params.dtype, device=host)
        loss = torch.zeros(len(client_ids), device=host)
        delta[holding], loss[holding] = torch.cat(deltas).to(host), torch.cat(losses).to(host)
        return ClientUpdates(client_ids, delta, self.sizes[client_ids], loss)

    def _train_group(
        self,
        global_params: torch.Tensor,
        ids: torch.Tensor,
        rng: RandomSource,
        lr: float,
        on_step: Callable[[int], None] | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        plan = self.plan
        K = len(ids)
        flat = global_params.unsqueeze(0).repeat(K, 1)
        params = self.layout.unflatten(flat)  # views into ``flat``: updating them updates ``flat``
        velocity = torch.zeros_like(flat)
        velocity_parts = self.layout.unflatten(velocity)
        rates = self.rates[ids]
        sampler = make_sampler(plan.sampler, [self.members[int(i)] for i in ids], rates=rates, batch=plan.batch_size)
        device = flat.device
        denominator = torch.full((K,), float(plan.batch_size), device=device)
        loss_sum = torch.zeros(K, device=device)
        count_sum = torch.zeros(K, device=device)
        for step in range(plan.local_steps):
            index, weight = (t.to(device) for t in sampler.sample(rng))  # drawn on the CPU by the secret source
            counts = weight.sum(1)
            grads, loss = noisy_gradient(
                self.engine,
                params,
                self.x,
                self.y,
                index,
                weight,
                clip=plan.clip,
                noise_multiplier=plan.noise_multiplier,
                denominator=denominator if plan.private else counts.clamp_min(1.0),
                rng=rng,
                max_physical_batch=plan.max_physical_batch,
            )
            for name, g in grads.items():
                velocity_parts[name].mul_(plan.momentum).add_(g)
            flat.add_(velocity, alpha=-lr)
            loss_sum += loss
            count_sum += counts
            if on_step is not None:
                on_step(step + 1)
        return flat - global_params, loss_sum / count_sum.clamp_min(1.0)
