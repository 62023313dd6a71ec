"""What every canary set shares: the secret inclusion of each canary, the guesses on the extreme scores, and the
hooks through which the canaries enter an ordinary run (:class:`fltrain.run.RunHooks`).

The inclusion ``S_i`` of canary ``i`` is an independent fair coin (Steinke, Nasr, Jagielski 2023, Algorithm 1),
drawn from the operating system's entropy (``numpy.random.default_rng()`` seeded by ``os.urandom``): it is the
auditor's secret, separate from the run's secret source of DP noise and sampling (which the canaries do not touch)
and from ``--seed``. Everything that designs the canaries (which records, which coordinates) is fixed before the
coins are used and does not depend on them, as the audit's theorem requires.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass

import numpy as np
import torch

from ..models import ParamLayout
from ..run import RunHooks

__all__ = ["Canaries", "Guesses", "guess"]


@dataclass(frozen=True)
class Guesses:
    """The auditor's guesses: "in" for the ``k_plus`` highest scores, "out" for the ``k_minus`` lowest; ``r`` of them,
    ``v`` correct."""

    k_plus: int
    k_minus: int
    r: int
    v: int


def guess(scores: np.ndarray, included: np.ndarray, k_plus: int, k_minus: int) -> Guesses:
    """Guess "in" for the ``k_plus`` highest ``scores``, "out" for the ``k_minus`` lowest (``k_plus + k_minus`` at
    most the number of canaries), and count the correct guesses against ``included``."""
    if k_plus < 0 or k_minus < 0 or k_plus + k_minus > len(scores):
        raise ValueError(f"k_plus={k_plus}, k_minus={k_minus}: need k_plus + k_minus <= {len(scores)} canaries")
    order = np.argsort(scores, kind="stable")  # ascending
    right_in = int(included[order[len(scores) - k_plus:]].sum()) if k_plus else 0
    right_out = int((~included[order[:k_minus]]).sum())
    return Guesses(k_plus, k_minus, k_plus + k_minus, right_in + right_out)


class Canaries(RunHooks, abc.ABC):
    """``m`` canaries, each included with probability 1/2, planted in a run through its hooks; :meth:`scores`
    after the run (higher: more likely included). Keeps the model and the initial and final global parameters
    (both are releases of the run)."""

    #: the threat model, as ``fltrain audit --threat`` names it
    threat: str

    def __init__(self, m: int) -> None:
        self.m = m
        self.included = np.random.default_rng().random(m) < 0.5  # the auditor's secret coins (OS entropy)
        self.model: torch.nn.Module | None = None
        self.layout: ParamLayout | None = None
        self.initial: torch.Tensor | None = None
        self.final: torch.Tensor | None = None

    def started(self, model: torch.nn.Module, layout: ParamLayout, params: torch.Tensor) -> None:
        self.model, self.layout, self.initial = model, layout, params

    def finished(self, params: torch.Tensor) -> None:
        self.final = params

    def scores(self) -> np.ndarray:
        """One score per canary (m,), from the initial and the final global model."""
        if self.initial is None or self.final is None:
            raise RuntimeError("the canaries are scored after the run has finished")
        return self._scores(self.initial, self.final)

    @abc.abstractmethod
    def _scores(self, initial: torch.Tensor, final: torch.Tensor) -> np.ndarray:
        ...

    @abc.abstractmethod
    def describe(self) -> dict:
        """The canaries' design for the auditor's private record (records or coordinates)."""
