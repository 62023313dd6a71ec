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
from typing import Any, Mapping

import numpy as np
from numpy.typing import ArrayLike, NDArray

from . import pld, rdp
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
    event_from_dict,
    event_to_dict,
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

_EVENT_TYPES = (Gaussian, PoissonSampled, SampledWithoutReplacement, Repeated, Composed)


class Accountant(abc.ABC):
    """Common interface of dpcalib's accountants.

    Subclasses keep the list of composed events (as ``(event, count)`` pairs, consecutive equal events merged)
    so that ``state_dict`` can serialise them and ``from_state_dict`` can replay them exactly.
    """

    #: the short name used by ``accountant="..."`` arguments and ``--accountant`` in the CLI
    name: str = ""

    def __init__(self, neighbouring: Neighbouring | str = Neighbouring.ADD_REMOVE) -> None:
        try:
            self.neighbouring = Neighbouring(neighbouring)
        except ValueError:
            raise InvalidArgumentError(
                "neighbouring", neighbouring, "one of " + ", ".join(repr(n.value) for n in Neighbouring)
            ) from None
        self.history: list[tuple[Event, int]] = []
        self._runs = 0  # leaf-event runs composed so far, at most check.STEPS_MAX

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

    def epsilon_and_order(self, delta: float) -> tuple[float, float | None]:
        """ε at ``delta`` and the RDP order attaining it (``None`` for accountants without orders)."""
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
            "options": dict(options, neighbouring=self.neighbouring.value),
            "history": self._history_state(),
        }


def _check_event(event: Any) -> Event:
    if not isinstance(event, _EVENT_TYPES):
        raise InvalidArgumentError(
            "event", event, "a dpcalib event (Gaussian, PoissonSampled, SampledWithoutReplacement, Repeated, Composed)"
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
        neighbouring: ``"add_remove"`` (Poisson sampling, Gaussian) or ``"replace_one"`` (fixed-size sampling
            without replacement, Gaussian).
        conversion: ``"improved"`` (Canonne–Kamath–Steinke 2020 / Balle et al. 2020, plus the KL rule; default)
            or ``"classic"`` (Mironov 2017), see :mod:`dpcalib.conversion`.
        refine: zoom in around the best grid order (never gives a larger ε than the grid alone).

    Supported events: ``Gaussian``; ``PoissonSampled(q, Gaussian)`` under add/remove (Mironov, Talwar, Zhang
    2019, exact); ``SampledWithoutReplacement(n, batch, Gaussian)`` under replace-one (Wang, Balle,
    Kasiviswanathan 2019); any ``Repeated``/``Composed`` nesting of those.
    """

    name = "rdp"

    def __init__(
        self,
        orders: ArrayLike | None = None,
        neighbouring: Neighbouring | str = Neighbouring.ADD_REMOVE,
        conversion: str = "improved",
        refine: bool = True,
    ) -> None:
        super().__init__(neighbouring)
        self.orders: tuple[float, ...] | None = None if orders is None else tuple(rdp.check_orders(orders).tolist())
        if conversion not in METHODS:
            raise InvalidArgumentError("conversion", conversion, "one of " + ", ".join(repr(m) for m in METHODS))
        self.conversion = conversion
        if not isinstance(refine, (bool, np.bool_)):
            raise InvalidArgumentError("refine", refine, "True or False")
        self.refine = bool(refine)

    def compose(self, event: Event, count: int = 1) -> "RdpAccountant":
        count = check.steps("count", count)
        for leaf in leaf_counts(event):
            self._check_leaf(leaf)
        self._record(event, count)
        return self

    def _check_leaf(self, leaf: Event) -> None:
        if isinstance(leaf, Gaussian):
            return
        if not isinstance(leaf.event, Gaussian):  # type: ignore[union-attr]
            raise UnsupportedEventError(f"RdpAccountant supports sampling of a Gaussian event only, not {leaf!r}")
        if isinstance(leaf, PoissonSampled) and self.neighbouring is not Neighbouring.ADD_REMOVE:
            raise UnsupportedEventError("PoissonSampled events need neighbouring='add_remove' in RdpAccountant")
        if isinstance(leaf, SampledWithoutReplacement) and self.neighbouring is not Neighbouring.REPLACE_ONE:
            raise UnsupportedEventError("SampledWithoutReplacement events need neighbouring='replace_one' (Wang et al. 2019)")

    def rdp(self, orders: ArrayLike) -> NDArray[np.float64]:
        """The RDP curve of everything composed so far at ``orders`` (sum over events of count × curve)."""
        alpha = rdp.check_orders(orders)
        counts: dict[Event, int] = {}
        for event, count in self.history:
            leaf_counts(event, count, counts)
        total = np.zeros_like(alpha)
        for leaf, count in counts.items():
            total += count * _leaf_rdp(leaf, alpha)
        return total

    def epsilon_and_order(self, delta: float) -> tuple[float, float]:
        """The smallest ε at ``delta`` over the order grid (refined), and the order attaining it."""
        result = self._convert_epsilon(delta, warn=True)
        return result.value, result.order

    def epsilon(self, delta: float) -> float:
        """ε(δ): an upper bound, by the conversion chosen at construction (see :mod:`dpcalib.conversion`)."""
        return self._convert_epsilon(delta, warn=True).value

    def delta_and_order(self, eps: float) -> tuple[float, float]:
        """The smallest δ at ``eps`` over the order grid (refined), and the order attaining it."""
        result = optimise_delta(self.rdp, eps, self.orders, self.conversion, self.refine)
        return result.value, result.order

    def delta(self, eps: float) -> float:
        """δ(ε): an upper bound, by the conversion chosen at construction (see :mod:`dpcalib.conversion`)."""
        return self.delta_and_order(eps)[0]

    def _convert_epsilon(self, delta: float, warn: bool) -> Conversion:
        return optimise_epsilon(self.rdp, delta, self.orders, self.conversion, self.refine, warn)

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


def _leaf_rdp(leaf: Event, alpha: NDArray[np.float64]) -> NDArray[np.float64]:
    if isinstance(leaf, Gaussian):
        return rdp.gaussian_rdp(leaf.sigma, alpha)
    if isinstance(leaf, PoissonSampled):
        return rdp.poisson_gaussian_rdp(leaf.q, leaf.event.sigma, alpha)  # type: ignore[union-attr]
    return rdp.without_replacement_gaussian_rdp(leaf.n, leaf.batch, leaf.event.sigma, alpha)  # type: ignore[union-attr]


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


def accountant_from_state_dict(state: Mapping[str, Any]) -> Accountant:
    """Rebuild any registered accountant from its :meth:`Accountant.state_dict`, dispatching on ``state["accountant"]``."""
    name = state.get("accountant") if isinstance(state, Mapping) else None
    return _check_name(name).from_state_dict(state)


class PldAccountant(Accountant):
    """Privacy-loss-distribution accountant (Koskela, Jälkö, Honkela 2020), see :mod:`dpcalib.pld`.

    The discretised PLDs of the Poisson-subsampled Gaussian (connect-the-dots, Doroshenko et al. 2022; both
    add/remove directions, Zhu, Dong, Wang 2022) are composed by FFT; the reported value is the smaller of the PLD
    bound and the RDP bound of :class:`RdpAccountant`. Both are upper bounds of the true ε (or δ), hence so is
    their minimum, and ``accountant="pld"`` never reports more than ``accountant="rdp"`` (RDP can be the tighter
    one at tiny ε on a coarse grid, or below the PLD's truncated mass).

    Args:
        neighbouring: ``"add_remove"`` only; sampling without replacement under replace-one has no PLD here
            (use ``accountant="rdp"``), so other relations raise :class:`UnsupportedEventError`.
        value_discretization_interval: the grid interval Δ of the privacy loss (nats). ``None`` (default) picks
            :func:`dpcalib.pld.default_interval`, which keeps ε within 0.5 % above the true value on DP-SGD
            settings; smaller is tighter and slower.

    Supported events: ``Gaussian`` and ``PoissonSampled(q, Gaussian)``, in any ``Repeated``/``Composed`` nesting.
    """

    name = "pld"

    def __init__(
        self,
        neighbouring: Neighbouring | str = Neighbouring.ADD_REMOVE,
        value_discretization_interval: float | None = None,
    ) -> None:
        super().__init__(neighbouring)
        if self.neighbouring is not Neighbouring.ADD_REMOVE:
            raise UnsupportedEventError(
                "PldAccountant supports neighbouring='add_remove' (Poisson sampling) only; "
                "use accountant='rdp' for replace-one and sampling without replacement"
            )
        if value_discretization_interval is not None:
            value_discretization_interval = check.positive("value_discretization_interval", value_discretization_interval)
        self.value_discretization_interval = value_discretization_interval
        self._rdp = RdpAccountant(neighbouring=self.neighbouring)
        self._distribution: pld.SubsampledGaussianPld | None = None

    def compose(self, event: Event, count: int = 1) -> "PldAccountant":
        count = check.steps("count", count)
        for leaf in leaf_counts(event):
            _pld_phase(leaf, 1)
        self._rdp.compose(event, count)
        self._record(event, count)
        self._distribution = None
        return self

    def distribution(self) -> pld.SubsampledGaussianPld:
        """The composed PLD of everything recorded (built on first use, kept until the next ``compose``)."""
        if self._distribution is None:
            counts: dict[Event, int] = {}
            for event, count in self.history:
                leaf_counts(event, count, counts)
            merged: dict[tuple[float, float], int] = {}
            for leaf, count in counts.items():
                phase = _pld_phase(leaf, count)
                merged[phase.q, phase.sigma] = merged.get((phase.q, phase.sigma), 0) + count
            phases = [pld.Phase(q, sigma, count) for (q, sigma), count in merged.items()]
            self._distribution = pld.SubsampledGaussianPld(phases, interval=self.value_discretization_interval)
        return self._distribution

    def epsilon(self, delta: float) -> float:
        """min(PLD ε, RDP ε) at ``delta``: an upper bound (0 if nothing was composed)."""
        delta = check.open_unit("delta", delta)
        if not self.history:
            return 0.0
        return min(self.distribution().epsilon(delta), self._rdp._convert_epsilon(delta, warn=False).value)

    def delta(self, eps: float) -> float:
        """min(PLD δ, RDP δ) at ``eps``: an upper bound (0 if nothing was composed)."""
        eps = check.positive("eps", eps)
        if not self.history:
            return 0.0
        return min(self.distribution().delta(eps), self._rdp.delta(eps))

    def state_dict(self) -> dict[str, Any]:
        return self._state({"value_discretization_interval": self.value_discretization_interval})

    @classmethod
    def from_state_dict(cls, state: Mapping[str, Any]) -> "PldAccountant":
        return cls(**_options_of(state, cls))._replay(state.get("history"))  # type: ignore[return-value]


def _pld_phase(leaf: Event, count: int) -> pld.Phase:
    """The PLD phase of ``count`` runs of a leaf event, or :class:`UnsupportedEventError`."""
    if isinstance(leaf, Gaussian):
        return pld.Phase(1.0, leaf.sigma, count)
    if isinstance(leaf, PoissonSampled) and isinstance(leaf.event, Gaussian):
        return pld.Phase(leaf.q, leaf.event.sigma, count)
    raise UnsupportedEventError(
        f"PldAccountant supports Gaussian and PoissonSampled(q, Gaussian) events only, not {leaf!r}; "
        "use accountant='rdp' for sampling without replacement"
    )


ACCOUNTANTS["pld"] = PldAccountant
