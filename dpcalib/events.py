"""Mechanisms as data.

A DP event describes *what was released*, never how to account for it: accountants
(:mod:`dpcalib.accountant`) walk these frozen dataclasses, as Google's ``dp_accounting`` separates its
``dp_event`` module from its accountants.

All Gaussian noise is expressed as a *noise multiplier*: the standard deviation divided by the L2 sensitivity
(the clipping norm C in DP-SGD), so ``Gaussian(sigma)`` has sensitivity 1 and noise std ``sigma``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, Mapping, Union

from .errors import InvalidArgumentError
from . import validation as check

__all__ = [
    "Neighbouring",
    "Gaussian",
    "PoissonSampled",
    "SampledWithoutReplacement",
    "Composed",
    "Repeated",
    "Event",
    "dpsgd_event",
    "event_to_dict",
    "event_from_dict",
]


class Neighbouring(str, enum.Enum):
    """The neighbouring relation between datasets that the guarantee is stated for.

    ``ADD_REMOVE``: D' is D with one record added or removed (the default of Opacus, dp_accounting, TF Privacy).
    ``REPLACE_ONE``: D' is D with one record replaced (same size); needed for fixed-size sampling without
    replacement (Wang, Balle, Kasiviswanathan 2019).
    """

    ADD_REMOVE = "add_remove"
    REPLACE_ONE = "replace_one"


@dataclass(frozen=True)
class Gaussian:
    """The Gaussian mechanism with L2 sensitivity 1 and noise standard deviation ``sigma``
    (in :data:`dpcalib.validation.SIGMA_RANGE`)."""

    sigma: float

    def __post_init__(self) -> None:
        object.__setattr__(self, "sigma", check.noise_multiplier("sigma", self.sigma))


@dataclass(frozen=True)
class PoissonSampled:
    """``event`` run on a Poisson subsample: each record is included independently with probability ``q``."""

    q: float
    event: "Event"

    def __post_init__(self) -> None:
        object.__setattr__(self, "q", check.rate("q", self.q))


@dataclass(frozen=True)
class SampledWithoutReplacement:
    """``event`` run on a uniformly random subset of exactly ``batch`` records out of ``n``."""

    n: int
    batch: int
    event: "Event"

    def __post_init__(self) -> None:
        n = check.size("n", self.n)
        batch = check.size("batch", self.batch)
        if batch > n:
            raise InvalidArgumentError("batch", batch, f"an integer in [1, n={n}]")
        object.__setattr__(self, "n", n)
        object.__setattr__(self, "batch", batch)


@dataclass(frozen=True)
class Repeated:
    """``event`` run ``count`` times (adaptive composition); ``count`` ≤ :data:`dpcalib.validation.STEPS_MAX`."""

    event: "Event"
    count: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "count", check.steps("count", self.count))


@dataclass(frozen=True)
class Composed:
    """The adaptive composition of several, possibly different, events (e.g. training phases)."""

    events: tuple["Event", ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "events", tuple(self.events))


Event = Union[Gaussian, PoissonSampled, SampledWithoutReplacement, Repeated, Composed]


def dpsgd_event(*, sigma: float, q: float, steps: int) -> Event:
    """The event of ``steps`` DP-SGD steps with Poisson rate ``q`` and noise multiplier ``sigma``."""
    return Repeated(PoissonSampled(q, Gaussian(sigma)), check.steps("steps", steps))


def event_to_dict(event: Event) -> dict[str, Any]:
    """A JSON-serialisable description of ``event`` that :func:`event_from_dict` turns back into an equal event."""
    if isinstance(event, Gaussian):
        return {"type": "gaussian", "sigma": event.sigma}
    if isinstance(event, PoissonSampled):
        return {"type": "poisson_sampled", "q": event.q, "event": event_to_dict(event.event)}
    if isinstance(event, SampledWithoutReplacement):
        return {"type": "sampled_without_replacement", "n": event.n, "batch": event.batch, "event": event_to_dict(event.event)}
    if isinstance(event, Repeated):
        return {"type": "repeated", "count": event.count, "event": event_to_dict(event.event)}
    if isinstance(event, Composed):
        return {"type": "composed", "events": [event_to_dict(e) for e in event.events]}
    raise InvalidArgumentError("event", event, "a dpcalib event (Gaussian, PoissonSampled, SampledWithoutReplacement, Repeated, Composed)")


def event_from_dict(data: Mapping[str, Any]) -> Event:
    """Rebuild the event described by :func:`event_to_dict` (validating every field)."""
    kind = data.get("type") if isinstance(data, Mapping) else None
    try:
        if kind == "gaussian":
            return Gaussian(data["sigma"])
        if kind == "poisson_sampled":
            return PoissonSampled(data["q"], event_from_dict(data["event"]))
        if kind == "sampled_without_replacement":
            return SampledWithoutReplacement(data["n"], data["batch"], event_from_dict(data["event"]))
        if kind == "repeated":
            return Repeated(event_from_dict(data["event"]), data["count"])
        if kind == "composed":
            return Composed(tuple(event_from_dict(e) for e in data["events"]))
    except KeyError as missing:
        raise InvalidArgumentError("event", dict(data), f"a dict with the field {missing}") from None
    raise InvalidArgumentError("event", data, "a dict with 'type' in gaussian, poisson_sampled, sampled_without_replacement, repeated, composed")
