"""A privacy plan (the event one round releases, σ, δ, the neighbouring relation) and the ledger that charges it.

One path builds every mode's plan (:func:`make_plan`): the mode says what one round releases as a function of the
noise multiplier σ (noise std / clip norm, for every sampler), and dpcalib either calibrates σ so that the whole
run, ``Repeated(round_event(σ), rounds)``, meets ``(eps, delta)`` (:func:`dpcalib.calibrate_sigma_for`, which
verifies ε(σ) ≤ eps), or, with an explicit σ, checks that one round fits the budget. The ledger then composes the
same round event once per round that released anything; its ε is the accountant's upper bound at the plan's δ.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping

import dpcalib
from dpcalib import validation as check
from dpcalib.errors import UnreachableTargetError
from dpcalib.events import Event, Neighbouring, Repeated, Sampler, event_to_dict, sampler_of

__all__ = ["PrivacyPlan", "make_plan", "PrivacyLedger"]


@dataclass(frozen=True)
class PrivacyPlan:
    """What a run is accounted as: ``rounds`` repetitions of ``round_event`` (built with noise multiplier
    ``sigma``) under ``neighbouring``, against the budget ``(eps, delta)`` with the named dpcalib accountant."""

    sigma: float
    round_event: Event
    rounds: int
    eps: float
    delta: float
    accountant: str
    neighbouring: Neighbouring
    calibrated: bool

    @property
    def sampler(self) -> Sampler | None:
        """The sampler whose batches (of records, or of clients) the round event describes; None without sampling."""
        return sampler_of(self.round_event)

    @property
    def run_event(self) -> Event:
        """The whole planned run."""
        return Repeated(self.round_event, self.rounds)

    def describe(self) -> dict[str, Any]:
        """The plan as public JSON: every field is a setting or a function of settings (no data)."""
        return {
            "sigma": self.sigma, "round_event": event_to_dict(self.round_event), "rounds": self.rounds,
            "eps": self.eps, "delta": self.delta, "accountant": self.accountant,
            "neighbouring": self.neighbouring.value, "sampler": None if self.sampler is None else self.sampler.value,
            "calibrated": self.calibrated,
        }


def make_plan(
    round_event: Callable[[float], Event],
    *,
    rounds: int,
    eps: float,
    delta: float,
    accountant: str,
    neighbouring: Neighbouring = Neighbouring.ADD_REMOVE,
    sigma: float | None = None,
    what: str = "",
) -> PrivacyPlan:
    """The plan of ``rounds`` rounds of ``round_event(σ)``; with ``sigma=None`` σ is calibrated by dpcalib.

    With an explicit σ the run trains while the budget allows and stops before exceeding it; a σ too small for even
    one round within ``eps`` raises :class:`dpcalib.errors.UnreachableTargetError` (``what`` describes a round in
    that message).
    """
    rounds = check.count("rounds", rounds)
    eps = check.positive("eps", eps)
    delta = check.open_unit("delta", delta)
    if accountant not in dpcalib.ACCOUNTANTS:
        raise dpcalib.InvalidArgumentError("accountant", accountant, "one of " + ", ".join(dpcalib.ACCOUNTANTS))
    options = {"neighbouring": neighbouring}
    if sigma is None:
        sigma = dpcalib.calibrate_sigma_for(lambda s: Repeated(round_event(s), rounds), eps=eps, delta=delta,
                                            accountant=accountant, **options)
        calibrated = True
    else:
        sigma = check.positive("sigma", sigma)
        first = dpcalib.event_epsilon(round_event(sigma), delta=delta, accountant=accountant, **options)
        if first > eps:
            raise UnreachableTargetError(
                f"sigma={sigma} spends epsilon={first:.4g} in one round{what}, over the budget eps={eps}; "
                "raise sigma or eps"
            )
        calibrated = False
    return PrivacyPlan(float(sigma), round_event(float(sigma)), rounds, eps, delta, accountant, neighbouring,
                       calibrated)


class PrivacyLedger:
    """ε spent so far: a dpcalib accountant charged one ``plan.round_event`` per round that released anything.
    ``epsilon()`` is the accountant's upper bound at the plan's δ. The accountant is a ledger of the plan's sampler
    (its state records it): a saved ledger of another sampler is refused on load."""

    def __init__(self, plan: PrivacyPlan, accountant: dpcalib.Accountant | None = None, rounds: int = 0) -> None:
        self.plan = plan
        self.accountant = accountant if accountant is not None else dpcalib.make_accountant(
            plan.accountant, neighbouring=plan.neighbouring, sampler=plan.sampler)
        self.rounds = rounds

    def epsilon(self) -> float:
        """ε spent after the rounds charged so far (0 before any)."""
        return self.accountant.epsilon(self.plan.delta) if self.rounds else 0.0

    def epsilon_after_next_round(self) -> float:
        """ε that charging one more round would reach (the ledger itself is unchanged)."""
        trial = dpcalib.accountant_from_state_dict(self.accountant.state_dict())
        return trial.compose(self.plan.round_event).epsilon(self.plan.delta)

    def can_afford_next_round(self) -> bool:
        """Whether one more round keeps ε within the budget (training stops otherwise)."""
        return self.epsilon_after_next_round() <= self.plan.eps

    def charge_round(self) -> float:
        """Record one round's release; returns the new ε."""
        self.accountant.compose(self.plan.round_event)
        self.rounds += 1
        return self.epsilon()

    def state_dict(self) -> dict[str, Any]:
        return {"rounds": self.rounds, "accountant": self.accountant.state_dict()}

    @classmethod
    def from_state_dict(cls, plan: PrivacyPlan, state: Mapping[str, Any]) -> "PrivacyLedger":
        return cls(plan, dpcalib.accountant_from_state_dict(state["accountant"], sampler=plan.sampler),
                   int(state["rounds"]))
