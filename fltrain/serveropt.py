"""Server optimisers of federated learning: FedAvgM and FedAdam on the flat global model.

FedOpt (Reddi et al. 2021, "Adaptive federated optimization", Alg. 1) treats the mean client delta ``u`` of a
round as the negative of a pseudo-gradient and feeds it to a server optimiser:

- :class:`ServerSGD`: SGD with heavy-ball momentum, FedAvgM (Hsu, Qi, Brown 2019): ``v ← β·v + u; x ← x + η·v``;
  ``η = 1, β = 0`` is plain FedAvg (McMahan et al. 2017).
- :class:`ServerAdam`: FedAdam (Reddi et al. 2021, Alg. 2).

Whatever the aggregation (plain weighted mean, client-level DP's noisy mean, secure aggregation), the server step
is post-processing of the aggregate and costs no privacy.
"""

from __future__ import annotations

import abc
from typing import Any, Mapping

import torch

from dpcalib.errors import InvalidArgumentError

from .config import SERVER_OPTIMIZERS
from dpcalib import validation as check

__all__ = ["ServerOptimizer", "ServerSGD", "ServerAdam", "make_server_optimizer"]


class ServerOptimizer(abc.ABC):
    """A server optimiser on the flat global model: ``step(params, update)`` where ``update`` is the (noisy) mean
    client delta, i.e. the negative of FedOpt's pseudo-gradient (Reddi et al. 2021, Alg. 1)."""

    name = ""

    def __init__(self, lr: float) -> None:
        self.lr = check.positive("server_lr", lr)

    @abc.abstractmethod
    def step(self, params: torch.Tensor, update: torch.Tensor) -> None:
        """Move ``params`` (flat, updated in place) along ``update``."""

    @abc.abstractmethod
    def state_dict(self) -> dict[str, Any]:
        """Hyperparameters and buffers (tensors), for ``torch.save`` checkpoints."""

    @abc.abstractmethod
    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore the buffers saved by :meth:`state_dict`."""


class ServerSGD(ServerOptimizer):
    """Server SGD with heavy-ball momentum (FedAvgM; Hsu, Qi, Brown 2019): ``v ← β·v + u; x ← x + η·v``.

    ``momentum = 0`` and ``lr = 1`` is plain FedAvg (the model moves to the mean of the clients' models).
    """

    name = "sgd"

    def __init__(self, lr: float = 1.0, momentum: float = 0.0) -> None:
        super().__init__(lr)
        if not (0.0 <= momentum < 1.0):
            raise InvalidArgumentError("server_momentum", momentum, "in [0, 1)")
        self.momentum = float(momentum)
        self.velocity: torch.Tensor | None = None

    def step(self, params: torch.Tensor, update: torch.Tensor) -> None:
        if self.momentum == 0.0:
            params.add_(update, alpha=self.lr)
            return
        if self.velocity is None:
            self.velocity = torch.zeros_like(params)
        self.velocity.mul_(self.momentum).add_(update)
        params.add_(self.velocity, alpha=self.lr)

    def state_dict(self) -> dict[str, Any]:
        return {"name": self.name, "lr": self.lr, "momentum": self.momentum, "velocity": self.velocity}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.velocity = None if state["velocity"] is None else state["velocity"].clone()


class ServerAdam(ServerOptimizer):
    """FedAdam (Reddi et al. 2021, Alg. 2) on the pseudo-gradient ``g = −u``:
    ``m ← β₁m + (1−β₁)g; v ← β₂v + (1−β₂)g²; x ← x − η·m/(√v + τ)`` (no bias correction, τ the adaptivity)."""

    name = "adam"

    def __init__(self, lr: float = 1e-2, beta1: float = 0.9, beta2: float = 0.99, tau: float = 1e-3) -> None:
        super().__init__(lr)
        for arg, value in (("beta1", beta1), ("beta2", beta2)):
            if not (0.0 <= value < 1.0):
                raise InvalidArgumentError(arg, value, "in [0, 1)")
        self.beta1, self.beta2 = float(beta1), float(beta2)
        self.tau = check.positive("tau", tau)
        self.m: torch.Tensor | None = None
        self.v: torch.Tensor | None = None

    def step(self, params: torch.Tensor, update: torch.Tensor) -> None:
        if self.m is None or self.v is None:
            self.m, self.v = torch.zeros_like(params), torch.zeros_like(params)
        grad = -update
        self.m.mul_(self.beta1).add_(grad, alpha=1.0 - self.beta1)
        self.v.mul_(self.beta2).addcmul_(grad, grad, value=1.0 - self.beta2)
        params.addcdiv_(self.m, self.v.sqrt().add_(self.tau), value=-self.lr)

    def state_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "lr": self.lr,
            "beta1": self.beta1,
            "beta2": self.beta2,
            "tau": self.tau,
            "m": self.m,
            "v": self.v,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.m = None if state["m"] is None else state["m"].clone()
        self.v = None if state["v"] is None else state["v"].clone()


def make_server_optimizer(name: str, *, lr: float, momentum: float = 0.0) -> ServerOptimizer:
    """``"sgd"`` (FedAvgM with ``momentum``) or ``"adam"`` (FedAdam, Reddi et al. defaults β=(0.9, 0.99), τ=1e-3)."""
    if name == "sgd":
        return ServerSGD(lr=lr, momentum=momentum)
    if name == "adam":
        if momentum:
            raise InvalidArgumentError("server_momentum", momentum, "0 with server_opt='adam' (β₁ is Adam's momentum)")
        return ServerAdam(lr=lr)
    raise InvalidArgumentError("server_opt", name, "one of " + ", ".join(SERVER_OPTIMIZERS))
