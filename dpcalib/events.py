"""Mechanisms as data.

A DP event describes *what was released*, never how to account for it: accountants
(:mod:`dpcalib.accountant`) walk these frozen dataclasses, as Google's ``dp_accounting`` separates its
``dp_event`` module from its accountants.

All Gaussian noise is expressed as a *noise multiplier* σ: the noise standard deviation divided by the clipping
norm C, the bound on each record's contribution (in DP-SGD, the per-example gradient norm). The L2 sensitivity of
the clipped sum depends on the neighbouring relation: adding or removing a record moves it by at most C,
replacing one by at most 2C (:attr:`Neighbouring.sensitivity`). Events never carry that factor; the accountants
apply it, in one place (:meth:`dpcalib.accountant.Accountant.unit_sigma`): ``Gaussian(sigma)`` under replace-one
is accounted as the sensitivity-1 Gaussian with noise multiplier ``sigma / 2``.

The batch samplers a training loop can use (:class:`Sampler`), their neighbouring relations and their events:

* ``poisson`` — each record joins each batch independently with probability q; add/remove;
  ``PoissonSampled(q, Gaussian(σ))`` per step.
* ``fixed`` — each batch is a uniformly random set of exactly ``batch`` of the n records, drawn afresh every step
  (sampling without replacement within a batch); replace-one; ``SampledWithoutReplacement(n, batch, Gaussian(σ))``
  per step.
* ``shuffle`` — each epoch the records are shuffled and cut into consecutive batches, so each record is in exactly
  one batch per epoch; replace-one; ``ShuffledEpoch(n, batch, Gaussian(σ))`` per epoch (accounted with no
  amplification by sampling at all, see :class:`ShuffledEpoch`).
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
    "Skellam",
    "PoissonSampled",
    "SampledWithoutReplacement",
    "ShuffledEpoch",
    "Composed",
    "Repeated",
    "Event",
    "Sampler",
    "sampler_of",
    "shuffled_epochs",
    "dpsgd_event",
    "training_event",
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

    @property
    def sensitivity(self) -> float:
        """The L2 sensitivity of a sum of contributions clipped to norm C, in units of C: 1 for add/remove (one
        contribution appears or disappears), 2 for replace-one (one contribution x becomes y, ‖x - y‖ ≤ 2C)."""
        return 2.0 if self is Neighbouring.REPLACE_ONE else 1.0


class Sampler(str, enum.Enum):
    """How a training loop forms its batches (see the module docstring); each implies a neighbouring relation."""

    POISSON = "poisson"
    FIXED = "fixed"
    SHUFFLE = "shuffle"

    @property
    def neighbouring(self) -> Neighbouring:
        """Poisson sampling is analysed under add/remove; fixed-size batches and shuffling keep the dataset size and
        are analysed under replace-one."""
        return Neighbouring.ADD_REMOVE if self is Sampler.POISSON else Neighbouring.REPLACE_ONE


@dataclass(frozen=True)
class Gaussian:
    """The Gaussian mechanism on a sum of contributions clipped to norm C, with noise std ``sigma`` × C.

    ``sigma`` is the noise multiplier (noise std / C); the accountant divides it by the neighbouring relation's
    sensitivity (1 for add/remove, 2 for replace-one, :attr:`Neighbouring.sensitivity`). ``sigma`` lies in
    :data:`dpcalib.validation.SIGMA_RANGE`."""

    sigma: float

    def __post_init__(self) -> None:
        object.__setattr__(self, "sigma", check.noise_multiplier("sigma", self.sigma))


@dataclass(frozen=True)
class Skellam:
    """The Skellam mechanism on a sum of integer vectors: the released sum carries independent noise
    ``Sk(mu/2, mu/2) = Poi(mu/2) − Poi(mu/2)`` of variance ``mu`` on every coordinate (Agarwal, Kairouz, Liu 2021).

    ``l1_sensitivity`` and ``l2_sensitivity`` bound the ℓ1 and ℓ2 norms of one contribution (one record, or one
    client's rounded integer vector), in the integer units of the sum; like a Gaussian's σ they are stated for
    add/remove, and the accountant doubles them under replace-one (:attr:`Neighbouring.sensitivity`).

    Distributed noise with a dropout floor: when each client adds a share ``Sk(mu/t)`` and a round's sum is only
    released if it covers at least ``t = min_survivors`` clients (a set that does not depend on the data), the
    released noise is ``Sk(s·mu/t)`` with ``s ≥ t`` survivors, i.e. ``Sk(mu)`` plus independent noise:
    post-processing of this event. **The accounted noise is the floor's, ``mu``**, whatever the realised number
    of shares. The domain (:func:`dpcalib.validation.skellam_parameters`): all finite and > 0,
    ``l2_sensitivity ≤ l1_sensitivity``, ``√mu / l2_sensitivity`` in :data:`dpcalib.validation.SIGMA_RANGE`."""

    mu: float
    l1_sensitivity: float
    l2_sensitivity: float

    def __post_init__(self) -> None:
        mu, l1, l2 = check.skellam_parameters(self.mu, self.l1_sensitivity, self.l2_sensitivity)
        object.__setattr__(self, "mu", mu)
        object.__setattr__(self, "l1_sensitivity", l1)
        object.__setattr__(self, "l2_sensitivity", l2)


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
class ShuffledEpoch:
    """One epoch of ``event`` over shuffled batches: the ``n`` records are randomly permuted and cut into
    consecutive batches of ``batch`` (the last one possibly smaller or dropped), so each record is in exactly one
    batch and ``event`` runs once per batch.

    Accounted with **no amplification by sampling**: a replace-one change touches one record, hence one batch of
    the epoch; given everything released before it, every other batch's release has the same distribution on
    both datasets. So an epoch costs what ``event`` costs once, at the relation's sensitivity — for
    ``Gaussian(σ)``, the Gaussian mechanism with sensitivity 2C and noise std σC, whatever the permutation (and
    also if the permutation were public). Shuffling amplifies privacy in other settings (the shuffle model:
    Feldman, McMillan, Talwar 2021), but accounting shuffled DP-SGD batches as if they were Poisson-sampled is
    not sound (Chua et al. 2024, "How private are DP-SGD implementations?"); this bound claims nothing of it.
    """

    n: int
    batch: int
    event: "Event"

    def __post_init__(self) -> None:
        n = check.count("n", self.n)
        batch = check.count("batch", self.batch)
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


Event = Union[Gaussian, Skellam, PoissonSampled, SampledWithoutReplacement, ShuffledEpoch, Repeated, Composed]

_SAMPLER_OF_LEAF = {PoissonSampled: Sampler.POISSON, SampledWithoutReplacement: Sampler.FIXED, ShuffledEpoch: Sampler.SHUFFLE}


def sampler_of(event: Event) -> Sampler | None:
    """The sampler whose batches ``event`` describes, or None for events without sampling (a full-batch
    ``Gaussian``). Raises :class:`InvalidArgumentError` if ``event`` mixes samplers."""
    found: set[Sampler] = set()
    stack = [event]
    while stack:
        e = stack.pop()
        if isinstance(e, Repeated):
            stack.append(e.event)
        elif isinstance(e, Composed):
            stack.extend(e.events)
        elif type(e) in _SAMPLER_OF_LEAF:
            found.add(_SAMPLER_OF_LEAF[type(e)])
    if len(found) > 1:
        names = ", ".join(sorted(s.value for s in found))
        raise InvalidArgumentError("event", event, f"events of one sampler (this one mixes {names})")
    return found.pop() if found else None


def shuffled_epochs(steps: int, n: int, batch: int) -> int:
    """The number of epochs that ``steps`` shuffled batches of ``batch`` out of ``n`` records can touch:
    ⌈steps / ⌊n / batch⌋⌉. Counting ⌊n/batch⌋ batches per epoch is an upper bound whether or not the loop keeps the
    last, smaller batch of each epoch; a started epoch counts in full (a record may be in its first batch)."""
    steps, n, batch = check.count("steps", steps), check.count("n", n), check.count("batch", batch)
    if batch > n:
        raise InvalidArgumentError("batch", batch, f"an integer in [1, n={n}]")
    return -(-steps // (n // batch))


def dpsgd_event(*, sigma: float, q: float, steps: int) -> Event:
    """The event of ``steps`` DP-SGD steps with Poisson rate ``q`` and noise multiplier ``sigma``."""
    return Repeated(PoissonSampled(q, Gaussian(sigma)), check.steps("steps", steps))


def training_event(
    sampler: Sampler | str,
    *,
    sigma: float,
    steps: int,
    q: float | None = None,
    dataset_size: int | None = None,
    batch_size: int | None = None,
) -> Event:
    """The event of ``steps`` noisy steps (noise multiplier ``sigma``) with batches from ``sampler``.

    ``poisson`` needs the rate ``q``; ``fixed`` and ``shuffle`` need ``dataset_size`` and ``batch_size``. ``shuffle``
    gives one :class:`ShuffledEpoch` per epoch touched (:func:`shuffled_epochs`)."""
    kind = as_sampler(sampler)
    noise = Gaussian(sigma)
    if kind is Sampler.POISSON:
        if q is None:
            raise InvalidArgumentError("q", q, "a rate in (0, 1] (the poisson sampler needs it)")
        return Repeated(PoissonSampled(q, noise), steps)
    for name, value in (("dataset_size", dataset_size), ("batch_size", batch_size)):
        if value is None:
            raise InvalidArgumentError(name, value, f"an integer >= 1 (the {kind.value} sampler needs it)")
    if kind is Sampler.FIXED:
        return Repeated(SampledWithoutReplacement(dataset_size, batch_size, noise), steps)
    epoch = ShuffledEpoch(dataset_size, batch_size, noise)
    return Repeated(epoch, shuffled_epochs(steps, epoch.n, epoch.batch))


def as_sampler(sampler: Sampler | str) -> Sampler:
    """``sampler`` as a :class:`Sampler`, or :class:`InvalidArgumentError` naming the allowed values."""
    try:
        return Sampler(sampler)
    except ValueError:
        raise InvalidArgumentError("sampler", sampler, "one of " + ", ".join(repr(s.value) for s in Sampler)) from None


def event_to_dict(event: Event) -> dict[str, Any]:
    """A JSON-serialisable description of ``event`` that :func:`event_from_dict` turns back into an equal event."""
    if isinstance(event, Gaussian):
        return {"type": "gaussian", "sigma": event.sigma}
    if isinstance(event, Skellam):
        return {"type": "skellam", "mu": event.mu, "l1_sensitivity": event.l1_sensitivity,
                "l2_sensitivity": event.l2_sensitivity}
    if isinstance(event, PoissonSampled):
        return {"type": "poisson_sampled", "q": event.q, "event": event_to_dict(event.event)}
    if isinstance(event, SampledWithoutReplacement):
        return {"type": "sampled_without_replacement", "n": event.n, "batch": event.batch, "event": event_to_dict(event.event)}
    if isinstance(event, ShuffledEpoch):
        return {"type": "shuffled_epoch", "n": event.n, "batch": event.batch, "event": event_to_dict(event.event)}
    if isinstance(event, Repeated):
        return {"type": "repeated", "count": event.count, "event": event_to_dict(event.event)}
    if isinstance(event, Composed):
        return {"type": "composed", "events": [event_to_dict(e) for e in event.events]}
    raise InvalidArgumentError("event", event, "a dpcalib event (Gaussian, Skellam, PoissonSampled, SampledWithoutReplacement, ShuffledEpoch, Repeated, Composed)")


def event_from_dict(data: Mapping[str, Any]) -> Event:
    """Rebuild the event described by :func:`event_to_dict` (validating every field)."""
    kind = data.get("type") if isinstance(data, Mapping) else None
    try:
        if kind == "gaussian":
            return Gaussian(data["sigma"])
        if kind == "skellam":
            return Skellam(data["mu"], data["l1_sensitivity"], data["l2_sensitivity"])
        if kind == "poisson_sampled":
            return PoissonSampled(data["q"], event_from_dict(data["event"]))
        if kind == "sampled_without_replacement":
            return SampledWithoutReplacement(data["n"], data["batch"], event_from_dict(data["event"]))
        if kind == "shuffled_epoch":
            return ShuffledEpoch(data["n"], data["batch"], event_from_dict(data["event"]))
        if kind == "repeated":
            return Repeated(event_from_dict(data["event"]), data["count"])
        if kind == "composed":
            return Composed(tuple(event_from_dict(e) for e in data["events"]))
    except KeyError as missing:
        raise InvalidArgumentError("event", dict(data), f"a dict with the field {missing}") from None
    raise InvalidArgumentError("event", data, "a dict with 'type' in gaussian, skellam, poisson_sampled, sampled_without_replacement, shuffled_epoch, repeated, composed")
