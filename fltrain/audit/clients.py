"""White-box canary clients for client-level DP (``--dp client``): clients whose model update is a Dirac, scored
against a control coordinate whose real updates are identical.

**The canary client.** Canary ``c`` is a client of the federation (with no records) whose update the auditor
replaces by ``−G·e_{j_c}``: a Dirac of norm ``G`` = :data:`~.whitebox.BOOST` × the clip norm ``C`` in the one
coordinate ``j_c`` (Steinke, Nasr, Jagielski 2023, Sec. 6, white-box Dirac canaries; here one per client). Each
included canary client joins the federation (:meth:`fltrain.run.RunHooks.clients`) and takes part in a round when
the run's Poisson cohort draws it from the secret source, with the rate ``q`` of every client; its update enters
the round as any client's (:meth:`fltrain.run.RunHooks.updates`) and is clipped to ``C``, summed, noised and
divided by the privacy mode unchanged.

**Accounting.** Client-level DP counts clients (add/remove of one client's entire data, Poisson cohort). The
plan's ``q = m/N`` and the server's denominator ``m`` are fixed by the configured ``N`` clients before the coins
are used; the canary clients enlarge the population drawn from (:class:`fltrain.privacy.cohort.PoissonCohort`'s
``population``) and are each one client of the add/remove relation, so the ledger's (ε, δ) holds for each of
them. A fixed-size cohort (replace-one, ``--secure-agg``) fixes the number of clients: refused.

**Where, and the control** are those of the record-level canaries (:mod:`.whitebox`): the canary sits on the
first-layer weight ``W[o, i]`` of a constant input feature ``i``, whose real updates equal those of the control
``W[o, i₀]`` (local SGD without clipping, the clipping of whole updates, the sum, averaging and the server step
are linear and treat the two alike), and the score is ``−ΔW[o, i] + ΔW[o, i₀]``.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from ..client import ClientUpdates
from ..data import Dataset
from ..dpsgd import Engine
from ..models import ParamLayout
from .whitebox import DiracCanaries

__all__ = ["DiracClients"]


class DiracClients(DiracCanaries):
    """``m`` white-box canary clients for a client-level run of clip norm ``clip`` (see the module docstring)."""

    def __init__(self, m: int, *, clip: float) -> None:
        super().__init__(m, clip=clip)
        self.first = 0  # the id of the first canary client
        self.chosen = torch.nonzero(torch.from_numpy(self.included)).flatten()  # canary of each canary client

    def data(self, data: Dataset) -> Dataset:
        self._find_features(data)
        return data  # no records: the canaries are clients

    def engine(self, engine: Engine, layout: ParamLayout) -> Engine:
        self._place(layout)
        return engine  # the real clients train unchanged

    def clients(self, members: list[torch.Tensor]) -> list[torch.Tensor]:
        self.first = len(members)
        return members + [torch.zeros(0, dtype=torch.int64) for _ in range(len(self.chosen))]

    def updates(self, updates: ClientUpdates) -> ClientUpdates:
        rows = torch.nonzero(updates.client_ids >= self.first).flatten()
        if not len(rows):
            return updates
        deltas = updates.deltas.clone()
        deltas[rows] = 0.0
        deltas[rows, self.coords[self.chosen[updates.client_ids[rows] - self.first]]] = -self.size
        return replace(updates, deltas=deltas)

    def describe(self) -> dict:
        return {**super().describe(), "canary_clients": "one client per included canary, update -gradient_norm "
                "on its coordinate"}
