"""Accountants: one interface, several ways to bound the privacy loss of a composition of events.

``acc.compose(event, count=1)`` records an event; ``acc.epsilon(delta)`` and ``acc.delta(eps)`` answer with a
guaranteed upper bound; ``acc.state_dict()`` / ``Accountant.from_state_dict()`` round-trip exactly (training
checkpoints rely on it).

Implementations:
- :class:`RdpAccountant` — Rényi DP (Mironov 2017), see :mod:`dpcalib.rdp` and :mod:`dpcalib.conversion`.
- :class:`PldAccountant` — privacy-loss distributions (Koskela et al. 2020), see :mod:`dpcalib.pld`.

Accountants are registered by name in :data:`ACCOUNTANTS`; :func:`make_accountant` and
:func:`accountant_from_state_dict` dispatch on it, and so do every ``accountant="..."`` argument of
:mod:`dpcalib.calibrate` and the CLI's ``--accountant``: a new accountant only has to add itself there.
"""

from __future__ import annotations

import abc
import inspect
import math
from typing import Any, Mapping

import numpy as np
from numpy.typing import ArrayLike, NDArray

from . import pld, rdp, skellam
from .conversion import METHODS, Conversion, optimise_delta, optimise_epsilon
from .errors import InvalidArgumentError, UnsupportedEventError
from .events import (
    Composed,
    Event,
    Gaussian,
    Neighbouring,
    PoissonSampled,
    Repeated,
    SampledWithoutReplacement,
    Sampler,
    ShuffledEpoch,
    Skellam,
    as_sampler,
    event_from_dict,
    event_to_dict,
    sampler_of,
)
from . import validation as check

__all__ = [
    "Accountant",
    "RdpAccountant",
    "PldAccountant",
    "ACCOUNTANTS",
    "make_accountant",
    "accountant_from_state_dict",
]

_EVENT_TYPES = (Gaussian, Skellam, PoissonSampled, SampledWithoutReplacement, ShuffledEpoch, Repeated, Composed)


class Accountant(abc.ABC):
    """Common interface of dpcalib's accountants.

    Subclasses keep the list of composed events (as ``(event, count)`` pairs, consecutive equal events merged)
    so that ``state_dict`` can serialise them and ``from_state_dict`` can replay them exactly.

    Every accountant is a ledger of one batch sampler (:class:`~dpcalib.events.Sampler`): declared with
    ``sampler=...`` or taken from the first sampled event composed. Composing an event of another sampler, or
    loading a state dict of another sampler (:func:`accountant_from_state_dict` with ``sampler=``), raises
    :class:`InvalidArgumentError`. The neighbouring relation, which sets the sensitivity (:meth:`unit_sigma`),
    is the one given, else the declared sampler's (add/remove for ``poisson``, replace-one for ``fixed`` and
    ``shuffle``), else that of the first sampled event composed (add/remove until then). It applies to the whole
    ledger, events composed before it was settled included.
    """

    #: the short name used by ``accountant="..."`` arguments and ``--accountant`` in the CLI
    name: str = ""

    def __init__(self, neighbouring: Neighbouring | str | None = None, sampler: Sampler | str | None = None) -> None:
        self.sampler: Sampler | None = None if sampler is None else as_sampler(sampler)
        self._relation_settled = neighbouring is not None or sampler is not None
        if neighbouring is None:
            neighbouring = Neighbouring.ADD_REMOVE if self.sampler is None else self.sampler.neighbouring
        try:
            self.neighbouring = Neighbouring(neighbouring)
        except ValueError:
            raise InvalidArgumentError(
                "neighbouring", neighbouring, "one of " + ", ".join(repr(n.value) for n in Neighbouring)
            ) from None
        if self.sampler is not None and self.neighbouring is not self.sampler.neighbouring:
            raise InvalidArgumentError(
                "neighbouring",
                self.neighbouring.value,
                f"{self.sampler.neighbouring.value!r} for the {self.sampler.value!r} sampler (or omitted)",
            )
        self.history: list[tuple[Event, int]] = []
        self._runs = 0  # leaf-event runs composed so far, at most check.STEPS_MAX

    def unit_sigma(self, noise: Gaussian) -> float:
        """The noise multiplier of ``noise`` per unit of L2 sensitivity under this accountant's relation:
        σ / Δ with Δ = :attr:`~dpcalib.events.Neighbouring.sensitivity` (1 for add/remove, 2 for replace-one, in
        units of the clipping norm). The one place where the relation's sensitivity enters the accounting."""
        return noise.sigma / self.neighbouring.sensitivity

    def _admit(self, event: Event) -> Neighbouring:
        """Check that ``event`` belongs to this ledger's sampler; return the relation the ledger will have once
        ``event`` is recorded (:meth:`_settle` records it)."""
        kind = sampler_of(event)
        if kind is None:
            return self.neighbouring
        if self.sampler is not None and kind is not self.sampler:
            raise InvalidArgumentError(
                "event", event, f"an event of the {self.sampler.value!r} sampler this ledger records (not {kind.value!r})"
            )
        return self.neighbouring if self._relation_settled else kind.neighbouring

    def _settle(self, event: Event) -> None:
        """Adopt the sampler (and, unless already settled, the relation) of ``event``, which :meth:`_admit` passed."""
        kind = sampler_of(event)
        if kind is not None and self.sampler is None:
            self.sampler = kind
            if not self._relation_settled:
                self.neighbouring = kind.neighbouring
            self._relation_settled = True

    @abc.abstractmethod
    def compose(self, event: Event, count: int = 1) -> "Accountant":
        """Record ``count`` runs of ``event``; returns ``self`` so calls can be chained."""

    @abc.abstractmethod
    def epsilon(self, delta: float) -> float:
        """The smallest ε this accountant can certify at ``delta`` for everything composed so far (an upper bound)."""

    @abc.abstractmethod
    def delta(self, eps: float) -> float:
        """The smallest δ this accountant can certify at ``eps`` (an upper bound)."""

    @abc.abstractmethod
    def state_dict(self) -> dict[str, Any]:
        """A JSON-serialisable description from which :meth:`from_state_dict` rebuilds an equal accountant."""

    @classmethod
    @abc.abstractmethod
    def from_state_dict(cls, state: Mapping[str, Any]) -> "Accountant":
        """Rebuild the accountant saved by :meth:`state_dict`."""

    def epsilon_and_order(
        self, delta: float, start: float | None = None, local: bool = False
    ) -> tuple[float, float | None]:
        """ε at ``delta`` and the RDP order attaining it (``None`` for accountants without orders). ``start``: an
        order near which to begin the order search (e.g. the last one returned for a similar mechanism;
        accountants without orders ignore it); it changes the answer only within the search's tolerance.
        ``local``: search near ``start`` only where that brackets the minimum (see
        :func:`dpcalib.conversion.optimise_epsilon`): for the intermediate points of a calibration."""
        return self.epsilon(delta), None

    # -- shared bookkeeping ------------------------------------------------------------------------------

    def _record(self, event: Event, count: int) -> None:
        """Append ``(event, count)`` to the history, merging with the last entry when the event is the same.

        Raises :class:`InvalidArgumentError` (naming ``count``) if the total number of leaf-event runs composed
        would exceed :data:`dpcalib.validation.STEPS_MAX`; the accountant is then left unchanged."""
        runs = self._runs + sum(leaf_counts(event, count).values())
        if runs > check.STEPS_MAX:
            raise InvalidArgumentError(
                "count", count, f"such that at most {check.STEPS_MAX} runs are composed in total ({self._runs} so far)"
            )
        self._runs = runs
        if self.history and self.history[-1][0] == event:
            self.history[-1] = (event, self.history[-1][1] + count)
        else:
            self.history.append((event, count))

    def _history_state(self) -> list[dict[str, Any]]:
        return [{"event": event_to_dict(e), "count": c} for e, c in self.history]

    def _replay(self, history: Any) -> "Accountant":
        if not isinstance(history, list):
            raise InvalidArgumentError("state", history, "a state_dict with a list under 'history'")
        for item in history:
            if not isinstance(item, Mapping) or "event" not in item or "count" not in item:
                raise InvalidArgumentError("state", item, "history entries of the form {'event': ..., 'count': ...}")
            self.compose(event_from_dict(item["event"]), item["count"])
        return self

    def _state(self, options: Mapping[str, Any]) -> dict[str, Any]:
        return {
            "accountant": self.name,
            "options": dict(
                options,
                neighbouring=self.neighbouring.value if self._relation_settled else None,
                sampler=None if self.sampler is None else self.sampler.value,
            ),
            "history": self._history_state(),
        }


def _check_event(event: Any) -> Event:
    if not isinstance(event, _EVENT_TYPES):
        raise InvalidArgumentError(
            "event",
            event,
            "a dpcalib event (Gaussian, Skellam, PoissonSampled, SampledWithoutReplacement, ShuffledEpoch, Repeated, Composed)",
        )
    return event


def leaf_counts(event: Event, count: int = 1, into: dict[Event, int] | None = None) -> dict[Event, int]:
    """Flatten ``Repeated``/``Composed`` nesting into {leaf event: total number of runs}."""
    into = {} if into is None else into
    _check_event(event)
    if isinstance(event, Repeated):
        return leaf_counts(event.event, count * event.count, into)
    if isinstance(event, Composed):
        for inner in event.events:
            leaf_counts(inner, count, into)
        return into
    into[event] = into.get(event, 0) + count
    return into


class RdpAccountant(Accountant):
    """Rényi-DP accountant (Mironov 2017): composition adds RDP curves, then the best order is converted.

    Args:
        orders: the RDP order grid (default :data:`dpcalib.rdp.DEFAULT_ORDERS`, a superset of dp_accounting's).
        neighbouring: ``"add_remove"`` (Poisson sampling) or ``"replace_one"`` (fixed-size batches, shuffling);
            by default the sampler's relation, or add/remove.
        conversion: ``"improved"`` (Canonne–Kamath–Steinke 2020 / Balle et al. 2020, plus the KL rule; default)
            or ``"classic"`` (Mironov 2017), see :mod:`dpcalib.conversion`.
        refine: zoom in around the best grid order (never gives a larger ε than the grid alone).
        sampler: the batch sampler this ledger records (see :class:`Accountant`).

    Supported events, with σ the noise multiplier (noise std / clipping norm C) and σ' = σ/Δ the multiplier per
    unit of sensitivity (Δ = 1 for add/remove, 2 for replace-one; :meth:`Accountant.unit_sigma`):
    ``Gaussian(σ)``: α/(2σ'²) (Mironov 2017, Prop. 7); ``PoissonSampled(q, Gaussian)`` under add/remove (Mironov,
    Talwar, Zhang 2019, exact); ``SampledWithoutReplacement(n, batch, Gaussian)`` under replace-one (Wang, Balle,
    Kasiviswanathan 2019, Theorem 9 with ε(j) = j/(2σ'²)); ``ShuffledEpoch(n, batch, Gaussian)`` under
    replace-one: α/(2σ'²) per epoch, no amplification; ``Skellam(μ, Δ1, Δ2)`` with the sensitivities times Δ
    (Agarwal, Kairouz, Liu 2021, Theorem 3.5, :mod:`dpcalib.skellam`), ``PoissonSampled(q, Skellam)`` under
    add/remove (Zhu & Wang 2019, Theorem 6, the general upper bound) and
    ``SampledWithoutReplacement(n, batch, Skellam)`` under replace-one (Wang, Balle, Kasiviswanathan 2019,
    Theorem 9 with ε(∞) = ∞); any ``Repeated``/``Composed`` nesting of those.
    """

    name = "rdp"

    def __init__(
        self,
        orders: ArrayLike | None = None,
        neighbouring: Neighbouring | str | None = None,
        conversion: str = "improved",
        refine: bool = True,
        sampler: Sampler | str | None = None,
    ) -> None:
        super().__init__(neighbouring, sampler)
        self.orders: tuple[float, ...] | None = None if orders is None else tuple(rdp.check_orders(orders).tolist())
        if conversion not in METHODS:
            raise InvalidArgumentError("conversion", conversion, "one of " + ", ".join(repr(m) for m in METHODS))
        self.conversion = conversion
        if not isinstance(refine, (bool, np.bool_)):
            raise InvalidArgumentError("refine", refine, "True or False")
        self.refine = bool(refine)
        self._leaves: list[tuple[Event, int]] | None = None

    def compose(self, event: Event, count: int = 1) -> "RdpAccountant":
        count = check.steps("count", count)
        neighbouring = self._admit(event)
        for leaf in leaf_counts(event):
            self._check_leaf(leaf, neighbouring)
        self._settle(event)
        self._record(event, count)
        self._leaves = None
        return self

    @staticmethod
    def _check_leaf(leaf: Event, neighbouring: Neighbouring) -> None:
        if isinstance(leaf, (Gaussian, Skellam)):
            return
        if isinstance(leaf, PoissonSampled) and isinstance(leaf.event, Skellam):
            if neighbouring is not Neighbouring.ADD_REMOVE:
                raise UnsupportedEventError("PoissonSampled events need neighbouring='add_remove' in RdpAccountant")
            return
        if isinstance(leaf, SampledWithoutReplacement) and isinstance(leaf.event, Skellam):
            if neighbouring is not Neighbouring.REPLACE_ONE:
                raise UnsupportedEventError("SampledWithoutReplacement events need neighbouring='replace_one'")
            return
        if not isinstance(leaf.event, Gaussian):  # type: ignore[union-attr]
            raise UnsupportedEventError(
                f"RdpAccountant supports sampling of a Gaussian or a Skellam event only, not {leaf!r}"
            )
        if isinstance(leaf, PoissonSampled) and neighbouring is not Neighbouring.ADD_REMOVE:
            raise UnsupportedEventError("PoissonSampled events need neighbouring='add_remove' in RdpAccountant")
        if isinstance(leaf, (SampledWithoutReplacement, ShuffledEpoch)) and neighbouring is not Neighbouring.REPLACE_ONE:
            raise UnsupportedEventError(
                f"{type(leaf).__name__} events need neighbouring='replace_one' (the dataset size is fixed)"
            )

    def rdp(self, orders: ArrayLike) -> NDArray[np.float64]:
        """The RDP curve of everything composed so far at ``orders`` (sum over events of count × curve)."""
        return self._curve(rdp.check_orders(orders))

    def _curve(self, alpha: NDArray[np.float64]) -> NDArray[np.float64]:
        """:meth:`rdp` at validated orders; the composed leaves are merged once per composition."""
        if self._leaves is None:
            counts: dict[Event, int] = {}
            for event, count in self.history:
                leaf_counts(event, count, counts)
            self._leaves = list(counts.items())
        total = np.zeros_like(alpha)
        for leaf, count in self._leaves:
            total += count * self._leaf_rdp(leaf, alpha)
        return total

    def _leaf_rdp(self, leaf: Event, alpha: NDArray[np.float64]) -> NDArray[np.float64]:
        """The RDP of one run of a leaf event, at the relation's sensitivity."""
        noise = leaf.event if isinstance(leaf, (PoissonSampled, SampledWithoutReplacement)) else leaf
        if isinstance(noise, Skellam):
            factor = self.neighbouring.sensitivity
            l1, l2 = factor * noise.l1_sensitivity, factor * noise.l2_sensitivity
            if isinstance(leaf, PoissonSampled):
                return skellam.poisson_skellam_curve(leaf.q, noise.mu, l1, l2, alpha)
            if isinstance(leaf, SampledWithoutReplacement):
                return skellam.without_replacement_skellam_curve(leaf.batch / leaf.n, noise.mu, l1, l2, alpha)
            return skellam.skellam_curve(noise.mu, l1, l2, alpha)
        sigma = self.unit_sigma(leaf if isinstance(leaf, Gaussian) else leaf.event)  # type: ignore[union-attr, arg-type]
        if isinstance(leaf, PoissonSampled):
            return rdp.poisson_curve(leaf.q, sigma, alpha)
        if isinstance(leaf, SampledWithoutReplacement):
            return rdp.without_replacement_gaussian_rdp(leaf.n, leaf.batch, sigma, alpha)
        return alpha / (2.0 * sigma * sigma)  # Gaussian, and ShuffledEpoch: one Gaussian per epoch

    def epsilon_and_order(self, delta: float, start: float | None = None, local: bool = False) -> tuple[float, float]:
        """The smallest ε at ``delta`` over the order grid (refined), and the order attaining it (see
        :meth:`Accountant.epsilon_and_order` for ``start`` and ``local``)."""
        result = self._convert_epsilon(delta, warn=True, start=start, local=local)
        return result.value, result.order

    def epsilon(self, delta: float) -> float:
        """ε(δ): an upper bound, by the conversion chosen at construction (see :mod:`dpcalib.conversion`)."""
        return self._convert_epsilon(delta, warn=True).value

    def delta_and_order(self, eps: float) -> tuple[float, float]:
        """The smallest δ at ``eps`` over the order grid (refined), and the order attaining it."""
        result = optimise_delta(self._curve, eps, self.orders, self.conversion, self.refine)
        return result.value, result.order

    def delta(self, eps: float) -> float:
        """δ(ε): an upper bound, by the conversion chosen at construction (see :mod:`dpcalib.conversion`)."""
        return self.delta_and_order(eps)[0]

    def _convert_epsilon(self, delta: float, warn: bool, start: float | None = None, local: bool = False) -> Conversion:
        return optimise_epsilon(self._curve, delta, self.orders, self.conversion, self.refine, warn, start, local)

    def state_dict(self) -> dict[str, Any]:
        return self._state(
            {
                "orders": None if self.orders is None else list(self.orders),
                "conversion": self.conversion,
                "refine": self.refine,
            }
        )

    @classmethod
    def from_state_dict(cls, state: Mapping[str, Any]) -> "RdpAccountant":
        options = _options_of(state, cls)
        return cls(**options)._replay(state.get("history"))  # type: ignore[return-value]


def _options_of(state: Mapping[str, Any], cls: type[Accountant]) -> dict[str, Any]:
    if not isinstance(state, Mapping) or state.get("accountant") != cls.name:
        raise InvalidArgumentError("state", state, f"a state_dict saved by the {cls.name!r} accountant")
    options = state.get("options", {})
    if not isinstance(options, Mapping):
        raise InvalidArgumentError("state", state, "a state_dict with a dict under 'options'")
    return dict(options)


#: Registered accountants by name. A new accountant registers itself here (``ACCOUNTANTS["pld"] = ...``).
ACCOUNTANTS: dict[str, type[Accountant]] = {"rdp": RdpAccountant}


def _check_name(name: Any) -> type[Accountant]:
    if not isinstance(name, str) or name not in ACCOUNTANTS:
        raise InvalidArgumentError("accountant", name, "one of " + ", ".join(repr(n) for n in ACCOUNTANTS))
    return ACCOUNTANTS[name]


def make_accountant(name: str, **options: Any) -> Accountant:
    """A fresh accountant of the registered kind ``name`` (see :data:`ACCOUNTANTS`) built with ``options``."""
    cls = _check_name(name)
    if not options:
        return cls()
    parameters = inspect.signature(cls.__init__).parameters
    for key in options:
        if key not in parameters or key == "self":
            allowed = ", ".join(p for p in parameters if p != "self")
            raise InvalidArgumentError(key, options[key], f"not an option of the {name!r} accountant (options: {allowed})")
    return cls(**options)


def accountant_from_state_dict(state: Mapping[str, Any], sampler: Sampler | str | None = None) -> Accountant:
    """Rebuild any registered accountant from its :meth:`Accountant.state_dict`, dispatching on ``state["accountant"]``.

    With ``sampler``, the state must be a ledger of that sampler (or of none yet, and then it becomes one):
    a training run resuming with Poisson sampling refuses the ledger of a shuffled run, and so on."""
    name = state.get("accountant") if isinstance(state, Mapping) else None
    cls = _check_name(name)
    if sampler is None:
        return cls.from_state_dict(state)
    expected = as_sampler(sampler)
    options = _options_of(state, cls)
    recorded = options.get("sampler")
    if recorded is not None and recorded != expected.value:
        raise InvalidArgumentError("state", state, f"a state_dict of the {expected.value!r} sampler (it records {recorded!r})")
    return cls.from_state_dict(dict(state, options=dict(options, sampler=expected.value)))


class PldAccountant(Accountant):
    """Privacy-loss-distribution accountant (Koskela, Jälkö, Honkela 2020), see :mod:`dpcalib.pld`.

    The discretised PLDs (connect-the-dots, Doroshenko et al. 2022) are composed by FFT with a proven round-off
    bound; the reported value is the smaller of the PLD bound and the RDP bound of :class:`RdpAccountant`. Both
    are upper bounds of the true ε (or δ), hence so is their minimum, and ``accountant="pld"`` never reports more
    than ``accountant="rdp"`` (RDP can be the tighter one at tiny ε on a coarse grid, or below the PLD's
    truncated mass). A PLD that cannot be represented (e.g. 10¹⁵ steps) answers ε = ∞ / δ = 1, so the RDP bound
    is reported there; a PLD answer is never NaN or 0 by accident.

    Args:
        neighbouring: ``"add_remove"``: ``Gaussian`` (sensitivity C) and ``PoissonSampled(q, Gaussian)`` (Zhu,
            Dong, Wang 2022 dominating pairs, both directions). ``"replace_one"``: ``Gaussian`` (sensitivity 2C),
            ``ShuffledEpoch(n, batch, Gaussian)`` (one Gaussian per epoch, no amplification) and
            ``SampledWithoutReplacement(n, batch, Gaussian)`` (fixed-size batches; the symmetric dominating PLD of
            :func:`dpcalib.pld.without_replacement_gaussian_pld`, from Balle, Barthe, Gaboardi 2018, Thm. 10 and
            Zhu, Dong, Wang 2022). By default the sampler's relation, or add/remove. In all, ``sigma`` is the noise
            std divided by the clipping norm C; the relation's sensitivity is applied by
            :meth:`Accountant.unit_sigma`.
        value_discretization_interval: the grid interval Δ of the privacy loss (nats). ``None`` (default) picks
            :func:`dpcalib.pld.default_interval`, which keeps ε within 0.5 % above the true value on DP-SGD
            settings; smaller is tighter and slower.

        sampler: the batch sampler this ledger records (see :class:`Accountant`).

    Any ``Repeated``/``Composed`` nesting of the supported events is accepted; others raise
    :class:`UnsupportedEventError`.
    """

    name = "pld"

    def __init__(
        self,
        neighbouring: Neighbouring | str | None = None,
        value_discretization_interval: float | None = None,
        sampler: Sampler | str | None = None,
    ) -> None:
        super().__init__(neighbouring, sampler)
        if value_discretization_interval is not None:
            value_discretization_interval = check.positive("value_discretization_interval", value_discretization_interval)
        self.value_discretization_interval = value_discretization_interval
        self._rdp = RdpAccountant(neighbouring=neighbouring, sampler=sampler)
        self._distribution: pld.SubsampledGaussianPld | None = None

    def compose(self, event: Event, count: int = 1) -> "PldAccountant":
        count = check.steps("count", count)
        neighbouring = self._admit(event)
        for leaf in leaf_counts(event):
            self._phase(leaf, 1, neighbouring)
        self._rdp.compose(event, count)
        self._settle(event)
        self._record(event, count)
        self._distribution = None
        return self

    def distribution(self) -> pld.SubsampledGaussianPld:
        """The composed PLD of everything recorded (built on first use, kept until the next ``compose``)."""
        if self._distribution is None:
            counts: dict[Event, int] = {}
            for event, count in self.history:
                leaf_counts(event, count, counts)
            merged: dict[tuple[float, float, str], int] = {}
            for leaf, count in counts.items():
                phase = self._phase(leaf, count)
                key = (phase.q, phase.sigma, phase.sampling)
                merged[key] = merged.get(key, 0) + count
            phases = [pld.Phase(q, sigma, count, sampling) for (q, sigma, sampling), count in merged.items()]
            self._distribution = pld.SubsampledGaussianPld(phases, interval=self.value_discretization_interval)
        return self._distribution

    def epsilon(self, delta: float) -> float:
        """min(PLD ε, RDP ε) at ``delta``: an upper bound (0 if nothing was composed)."""
        delta = check.open_unit("delta", delta)
        if not self.history:
            return 0.0
        bound = self.distribution().epsilon(delta)
        rdp_bound = self._rdp._convert_epsilon(delta, warn=False).value
        return min(bound, rdp_bound) if bound >= 0.0 else rdp_bound  # a NaN PLD answer never wins

    def delta(self, eps: float) -> float:
        """min(PLD δ, RDP δ) at ``eps``: an upper bound (0 if nothing was composed)."""
        eps = check.positive("eps", eps)
        if not self.history:
            return 0.0
        bound = self.distribution().delta(eps) if math.isfinite(eps) else 0.0
        rdp_bound = self._rdp.delta(eps)
        return min(bound, rdp_bound) if bound >= 0.0 else rdp_bound

    def state_dict(self) -> dict[str, Any]:
        return self._state({"value_discretization_interval": self.value_discretization_interval})

    @classmethod
    def from_state_dict(cls, state: Mapping[str, Any]) -> "PldAccountant":
        return cls(**_options_of(state, cls))._replay(state.get("history"))  # type: ignore[return-value]


    def _phase(self, leaf: Event, count: int, neighbouring: Neighbouring | None = None) -> pld.Phase:
        """The PLD phase of ``count`` runs of a leaf event, or :class:`UnsupportedEventError` if it has none under
        ``neighbouring`` (default: the ledger's relation). ``sigma`` of the phase is the noise per unit of
        sensitivity (:meth:`Accountant.unit_sigma`)."""
        neighbouring = self.neighbouring if neighbouring is None else neighbouring
        if isinstance(leaf, Gaussian):
            return pld.Phase(1.0, self.unit_sigma(leaf), count)
        if isinstance(leaf, ShuffledEpoch) and isinstance(leaf.event, Gaussian):
            return pld.Phase(1.0, self.unit_sigma(leaf.event), count)  # one Gaussian per epoch, no amplification
        if isinstance(leaf, PoissonSampled) and isinstance(leaf.event, Gaussian) and neighbouring is Neighbouring.ADD_REMOVE:
            return pld.Phase(leaf.q, self.unit_sigma(leaf.event), count)
        if (
            isinstance(leaf, SampledWithoutReplacement)
            and isinstance(leaf.event, Gaussian)
            and neighbouring is Neighbouring.REPLACE_ONE
        ):
            return pld.Phase(leaf.batch / leaf.n, self.unit_sigma(leaf.event), count, "without_replacement")
        raise UnsupportedEventError(
            f"PldAccountant supports Gaussian, PoissonSampled(q, Gaussian) under add_remove, and ShuffledEpoch and "
            f"SampledWithoutReplacement(n, batch, Gaussian) under replace_one; not {leaf!r} under {neighbouring.value}"
        )


ACCOUNTANTS["pld"] = PldAccountant
