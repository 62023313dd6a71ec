"""What every privacy mode is: one object that owns a round's randomness, client selection, the client's and the
server's steps, the ledger, and the list of what the run releases.

A round, as :class:`fltrain.fedavg.FedAvgServer` (in process) or a Flower app (across processes) runs it::

    ids = mode.select()                                    # server: the cohort (secret draws in a DP run)
    settings = mode.round_config()                         # server → clients: this round's public settings
    client_mode.set_round_config(settings)                 # client (its own mode object, its own secret source)
    local = client_mode.local_training(base)               # client: how to train (DP-SGD, or plain SGD)
    message = client_mode.client_message(deltas, n)        # client: what enters the sum (weighted/clipped/noised)
    total = Σ messages                                     # plain sum, or secure aggregation (``secure_sum``)
    update = mode.server_update(total)                     # server: noise, public denominator, clip state
    mode.charge_round(); mode.release()                    # ledger; the round's public values

``server_update`` returns the direction the server optimiser (FedAvgM, FedAdam) applies; that step is
post-processing of the release. Everything a mode puts in :meth:`release` and :meth:`describe` is a setting, a
DP release or a function of those: never the realised cohort size of a private-size cohort, a training loss or a
record count.
"""

from __future__ import annotations

import abc
from typing import Any, ClassVar, Mapping

import torch

from ..client import LocalTraining
from ..randomness import RandomSource, ReproducibleRandom
from .cohort import Cohort
from .plan import PrivacyLedger, PrivacyPlan

__all__ = ["PrivacyMode", "NOISE_SECURE", "NOISE_INSECURE"]

#: how ``describe()`` and every metrics line label the source of the DP noise and sampling
NOISE_SECURE = "secure"
NOISE_INSECURE = "insecure-reproducible"


class PrivacyMode(abc.ABC):
    """A privacy mode: see the module docstring for the round it drives.

    Args:
        cohort: who takes part in a round.
        rng: the source of the round's sampling and noise (secret for a DP guarantee).
        plan: what the ledger charges per round (``None``: no DP, nothing accounted).
    """

    #: the ``dp`` setting that selects the mode
    name: ClassVar[str]
    #: the neighbouring relation of the guarantee in words (``describe()``, docs)
    guarantee: ClassVar[str]

    def __init__(self, *, cohort: Cohort, rng: RandomSource, plan: PrivacyPlan | None) -> None:
        self.cohort = cohort
        self.rng = rng
        self.plan = plan
        self.ledger = PrivacyLedger(plan) if plan is not None else None

    # --- server side --------------------------------------------------------------------------------------

    def select(self) -> torch.Tensor:
        """The round's clients (sorted int64 ids)."""
        return self.cohort.sample(self.rng)

    @abc.abstractmethod
    def local_training(self, base: LocalTraining) -> LocalTraining:
        """How the clients train this round, given the run's learning settings ``base``."""

    @abc.abstractmethod
    def client_message(self, deltas: torch.Tensor, num_samples: torch.Tensor) -> torch.Tensor:
        """What the clients (rows of ``deltas``, (k, P)) put into the round's sum: (k, :meth:`message_width`)
        float64. ``num_samples`` (k,) is used by the non-private mode only."""

    def message_width(self, dim: int) -> int:
        """Length of one client's message for a model of ``dim`` parameters."""
        return dim

    @abc.abstractmethod
    def server_update(self, total: torch.Tensor) -> torch.Tensor:
        """The update direction (P,) from the sum of the round's messages (``zeros(message_width)`` when the
        cohort is empty)."""

    def round_config(self) -> dict[str, float]:
        """The public settings the clients of the next round need from the server (e.g. an adaptive clip norm)."""
        return {}

    def set_round_config(self, settings: Mapping[str, float]) -> None:
        """On a client: adopt the settings of :meth:`round_config`."""

    def secure_sum_range(self) -> float | None:
        """The fixed-point range each message coordinate must fit in under secure aggregation (None: default)."""
        return None

    def secure_ring_bits(self) -> int | None:
        """With integer messages (the discrete pipeline), the bits of the ring Z_(2^bits) secure aggregation sums
        them in; None: float messages in fixed point (:meth:`secure_sum_range`)."""
        return None

    def min_survivors(self, k: int) -> int:
        """Fewest surviving clients out of ``k`` for which a secure-aggregation round may complete."""
        return 2 * k // 3 + 1

    # --- the ledger ---------------------------------------------------------------------------------------

    def can_afford_next_round(self) -> bool:
        """Whether one more round keeps ε within the budget (always, without DP)."""
        return self.ledger is None or self.ledger.can_afford_next_round()

    def charge_round(self) -> float | None:
        """Charge one round's release to the ledger; the new ε (None without DP)."""
        return self.ledger.charge_round() if self.ledger is not None else None

    def epsilon(self) -> float | None:
        return self.ledger.epsilon() if self.ledger is not None else None

    # --- what is released ---------------------------------------------------------------------------------

    @property
    def noise_label(self) -> str:
        """``"secure"`` or ``"insecure-reproducible"`` (a simulation without the guarantee)."""
        return NOISE_SECURE if self.rng.secure else NOISE_INSECURE

    def releases(self) -> tuple[str, ...]:
        """The names of what :meth:`release` publishes every round (besides the global model and ε)."""
        return ()

    def release(self) -> dict[str, Any]:
        """The public per-round values besides round, ε and accuracy (DP releases or settings): the keys of
        :meth:`releases`."""
        return {}

    def describe(self) -> dict[str, Any]:
        """The mode as public JSON for ``summary.json``: name, guarantee, noise source, plan."""
        return {
            "mode": self.name, "guarantee": self.guarantee, "noise": self.noise_label,
            "plan": self.plan.describe() if self.plan is not None else None,
            "releases": ["global model after every round", *self.releases()],
        }

    # --- checkpoints --------------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """The ledger, the mode's own state, and the generator state if (and only if) the noise is reproducible:
        a secret source has no state to save."""
        state: dict[str, Any] = {"ledger": self.ledger.state_dict() if self.ledger is not None else None}
        if isinstance(self.rng, ReproducibleRandom):
            state["rng"] = self.rng.state_dict()
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if self.plan is not None:
            self.ledger = PrivacyLedger.from_state_dict(self.plan, state["ledger"])
        if isinstance(self.rng, ReproducibleRandom):
            self.rng.load_state_dict(state["rng"])
