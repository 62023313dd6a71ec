"""The bridge to dpcalib: a training plan → the DP event → σ, and the ledger of ε spent round by round.

Sample-level DP (record-level, per client).  Every client runs DP-SGD on its own records; client ``k`` samples
with Poisson rate ``q_k = min(1, B / n_k)``.  The guarantee is stated for one record of any one client, so the
plan charges the *worst* client: rate ``q = max_k q_k`` (ε grows with q) and, counted conservatively, every
round's ``local_steps`` steps whether or not the client was sampled that round (no amplification by client
sampling is claimed).  The run is therefore the event

    Repeated(PoissonSampled(q, Gaussian(σ)), rounds × local_steps)

(the subsampled Gaussian mechanism of Abadi et al. 2016 / Mironov, Talwar, Zhang 2019), accounted under the
add/remove relation by dpcalib's RDP accountant (Mironov 2017) or PLD accountant (Koskela et al. 2020).  Each
client's noise is independent, and a record lives in one client only, so the clients' mechanisms act on disjoint
data (parallel composition): the worst client's ε is the run's ε.  Averaging at the server is post-processing.

The client dataset sizes ``n_k`` (hence ``q_k`` and the FedAvg weights) are treated as public, as DP-SGD
treats the dataset size as public (Abadi et al. 2016).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Mapping

import dpcalib
from dpcalib.errors import UnreachableTargetError
from dpcalib.events import Event, Gaussian, PoissonSampled, dpsgd_event
from dpcalib import validation as check

__all__ = [
    "PrivacyPlan", "make_plan", "PrivacyLedger", "ClientDeltaWarning", "default_client_delta", "resolve_client_delta",
]


@dataclass(frozen=True)
class PrivacyPlan:
    """The privacy side of a run: noise multiplier σ, worst-case rate q, steps, budget (ε, δ), accountant."""

    sigma: float
    q: float
    steps_per_round: int
    rounds: int
    eps: float
    delta: float
    accountant: str
    calibrated: bool

    @property
    def step_event(self) -> Event:
        """One DP-SGD step of the worst-case client: the Poisson-subsampled Gaussian."""
        return PoissonSampled(self.q, Gaussian(self.sigma))

    @property
    def run_event(self) -> Event:
        """The whole planned run: ``rounds × steps_per_round`` steps."""
        return dpsgd_event(sigma=self.sigma, q=self.q, steps=self.rounds * self.steps_per_round)


def make_plan(
    *,
    eps: float,
    delta: float,
    q: float,
    steps_per_round: int,
    rounds: int,
    accountant: str = "rdp",
    sigma: float | None = None,
) -> PrivacyPlan:
    """Build the plan; with ``sigma=None``, σ = ``dpcalib.calibrate_sigma`` for (ε, δ) over the whole run.

    With an explicit σ the run trains while the budget allows and stops before exceeding it; a σ too small for even
    one round within ``eps`` raises :class:`dpcalib.errors.UnreachableTargetError`.
    """
    steps = rounds * steps_per_round
    if sigma is None:
        sigma = dpcalib.calibrate_sigma(eps=eps, delta=delta, q=q, steps=steps, accountant=accountant)
        calibrated = True
    else:
        first = dpcalib.epsilon(sigma=sigma, q=q, steps=steps_per_round, delta=delta, accountant=accountant)
        if first > eps:
            raise UnreachableTargetError(
                f"sigma={sigma} spends epsilon={first:.4g} in one round ({steps_per_round} steps at q={q:.4g}), "
                f"over the budget eps={eps}; raise --sigma or --eps, or lower --local-steps"
            )
        calibrated = False
    return PrivacyPlan(float(sigma), float(q), steps_per_round, rounds, eps, delta, accountant, calibrated)


class PrivacyLedger:
    """ε spent so far, kept by a dpcalib accountant that is charged one round (``steps_per_round`` steps of the
    plan's step event) at a time.  ``epsilon()`` is the accountant's upper bound at the plan's δ."""

    def __init__(self, plan: PrivacyPlan, accountant: "dpcalib.accountant.Accountant | None" = None,
                 rounds: int = 0) -> None:
        self.plan = plan
        self.accountant = accountant if accountant is not None else dpcalib.make_accountant(plan.accountant)
        self.rounds = rounds

    def epsilon(self) -> float:
        """ε spent after the rounds charged so far (0 before any)."""
        return self.accountant.epsilon(self.plan.delta) if self.rounds else 0.0

    def epsilon_after_next_round(self) -> float:
        """ε that charging one more round would reach (the ledger itself is unchanged)."""
        trial = dpcalib.accountant_from_state_dict(self.accountant.state_dict())
        return trial.compose(self.plan.step_event, count=self.plan.steps_per_round).epsilon(self.plan.delta)

    def can_afford_next_round(self) -> bool:
        """Whether one more round keeps ε within the budget (training stops otherwise)."""
        return self.epsilon_after_next_round() <= self.plan.eps

    def charge_round(self) -> float:
        """Record one round of every client's local steps; returns the new ε."""
        self.accountant.compose(self.plan.step_event, count=self.plan.steps_per_round)
        self.rounds += 1
        return self.epsilon()

    def state_dict(self) -> dict[str, Any]:
        return {"rounds": self.rounds, "accountant": self.accountant.state_dict()}

    @classmethod
    def from_state_dict(cls, plan: PrivacyPlan, state: Mapping[str, Any]) -> "PrivacyLedger":
        return cls(plan, dpcalib.accountant_from_state_dict(state["accountant"]), int(state["rounds"]))


# δ of client-level DP (fltrain.clientdp): here, torch-free, so that the config can resolve its default.


class ClientDeltaWarning(UserWarning):
    """δ is at least 1/(number of clients): the guarantee allows one client's data to be exposed outright."""


def default_client_delta(num_clients: int) -> float:
    """The default δ for ``num_clients`` clients: ``1/N^1.1``, strictly below ``1/N``."""
    n = check.count("num_clients", num_clients, minimum=2)
    return float(n) ** -1.1


def resolve_client_delta(delta: float | None, num_clients: int) -> float:
    """The user's δ (validated to lie in (0, 1)) or :func:`default_client_delta`; warns when δ ≥ 1/N."""
    n = check.count("num_clients", num_clients, minimum=2)
    if delta is None:
        return default_client_delta(n)
    d = check.open_unit("delta", delta)
    if d >= 1.0 / n:
        warnings.warn(
            f"delta={d:g} >= 1/clients = {1.0 / n:g}: a mechanism that publishes one client's data in the clear "
            f"satisfies this guarantee; use delta < 1/clients (default 1/clients^1.1 = {default_client_delta(n):.3g})",
            ClientDeltaWarning,
            stacklevel=2,
        )
    return d
