"""Accountants: one interface, several ways to bound the privacy loss of a composition of events.

``acc.compose(event, count=1)`` records an event; ``acc.epsilon(delta)`` and ``acc.delta(eps)`` answer with a
guaranteed upper bound; ``acc.state_dict()`` / ``Accountant.from_state_dict()`` round-trip exactly (training
checkpoints rely on it).

Implementations:
- :class:`RdpAccountant` — Rényi DP (Mironov 2017), see :mod:`dpcalib.rdp` and :mod:`dpcalib.conversion`.
- :class:`PldAccountant` — privacy-loss distributions (Koskela et al. 2020), see :mod:`dpcalib.pld`.
"""

from __future__ import annotations

import abc
from typing import Any, Mapping

from .events import Event, Neighbouring

__all__ = ["Accountant", "RdpAccountant", "PldAccountant", "make_accountant", "ACCOUNTANTS"]


class Accountant(abc.ABC):
    """Common interface of dpcalib's accountants.

    Subclasses keep the list of composed events (as ``(event, count)`` pairs) so that ``state_dict`` can
    serialise them and ``from_state_dict`` can replay them exactly.
    """

    #: the short name used by ``accountant="..."`` arguments and ``--accountant`` in the CLI
    name: str = ""

    def __init__(self, neighbouring: Neighbouring | str = Neighbouring.ADD_REMOVE) -> None:
        self.neighbouring = Neighbouring(neighbouring)
        self.history: list[tuple[Event, int]] = []

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


# RdpAccountant and PldAccountant are defined below (issue 2 and issue 3).
