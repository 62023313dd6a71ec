"""Secure aggregation as FedAvg's summing step: the server obtains the sum of the round's client messages through
:func:`run_secure_aggregation`, never a single message.

What a client masks is its privacy mode's message (:meth:`fltrain.privacy.PrivacyMode.client_message`): with
record-level DP its DP-SGD delta divided by the public cohort size; with client-level DP its clipped delta (and
clipping bit) plus its share of the noise (distributed DP, see :mod:`fltrain.privacy.clientlevel`); without DP its
delta weighted by its share of the cohort's records. The mode also sets the fixed-point range of its messages and
``min_survivors``, the fewest inputs a completed round's sum may cover (fewer abort: the sum is not released).

Each round's clients run one protocol session (fresh keys), ids ``1..K`` in the order of the round. With at most
``sparse_above`` clients the graph is complete (SecAgg); above, a random Harary graph of degree
:func:`secagg_plus_degree` (SecAgg+). The Shamir threshold is ``⌊2·holders/3⌋ + 1`` (a third of a neighbourhood may
drop).

Fixed point: coordinates in ``[-coordinate_range, coordinate_range]`` with ``frac_bits`` fractional bits; the
decoded sum of K vectors is within ``K·2^-(frac_bits+1)`` of the float sum (:mod:`.encoding`). A coordinate outside
the range would be clipped by its client; the client warns (:class:`SecAggRangeWarning`) — in a deployment it
could only tell its operator, since telling the server would leak. The protocol's own randomness (keys, seeds)
comes from the OS CSPRNG; the decoded sum is exact ring arithmetic.
"""

from __future__ import annotations

import dataclasses
import random
import warnings
from dataclasses import dataclass

import numpy as np
import torch

from dpcalib.errors import InvalidArgumentError

from ..privacy.mode import PrivacyMode
from .discrete import RingCodec
from .encoding import FixedPoint
from .graph import complete_graph, harary_graph, secagg_plus_degree
from .protocol import SecAggParams, run_secure_aggregation
from dpcalib import validation as check

__all__ = ["SecAggRangeWarning", "SecureSum"]


class SecAggRangeWarning(UserWarning):
    """A client's vector had coordinates outside the fixed-point range; they were clipped before masking."""


@dataclass(frozen=True)
class SecureSum:
    """Settings of the secure sum of one round's vectors.

    Args:
        coordinate_range: clipping range of each coordinate (> 0).
        frac_bits: fractional bits of the fixed-point encoding (resolution ``2^-frac_bits``).
        sparse_above: rounds with more clients than this use the SecAgg+ graph.
    """

    coordinate_range: float = 16.0
    frac_bits: int = 24
    sparse_above: int = 64

    def __post_init__(self) -> None:
        check.positive("coordinate_range", self.coordinate_range)
        check.count("frac_bits", self.frac_bits, minimum=0)
        check.count("sparse_above", self.sparse_above, minimum=2)

    def _graph(self, k: int) -> dict[int, frozenset[int]]:
        ids = list(range(1, k + 1))
        if k <= self.sparse_above:
            return complete_graph(ids)
        return harary_graph(ids, secagg_plus_degree(k), random.SystemRandom())

    def threshold(self, k: int) -> int:
        """The Shamir threshold ``t = ⌊2·holders/3⌋ + 1`` of a round of ``k`` clients (holders: ``k`` with the
        complete graph, degree + 1 with SecAgg+)."""
        holders = k if k <= self.sparse_above else secagg_plus_degree(k) + 1
        return 2 * holders // 3 + 1

    def sum(self, vectors: torch.Tensor, *, min_survivors: int | None = None, ring_bits: int | None = None
            ) -> torch.Tensor:
        """The sum over rows of ``vectors`` (K, P), K ≥ 2, computed by the protocol; float64 (P,). A round whose
        sum would cover fewer than ``min_survivors`` inputs (default ``⌊2K/3⌋ + 1``) aborts. With ``ring_bits``
        the rows are integers of Z_(2^ring_bits) (:class:`~fltrain.secagg.discrete.RingCodec`) and the result is
        the lifted modular sum."""
        k = vectors.shape[0]
        if k < 2:
            raise InvalidArgumentError("clients", k, "at least 2 per round with secure aggregation (the sum of "
                                       "one client is its update)")
        data = vectors.detach().to(torch.float64).cpu().numpy()
        if ring_bits is not None:
            codec: FixedPoint | RingCodec = RingCodec(ring_bits)
            data = np.rint(data).astype(np.int64)
        else:
            codec = FixedPoint(self.coordinate_range, self.frac_bits, k)
            outside = int(np.sum(np.abs(data) > self.coordinate_range))
            if outside:
                warnings.warn(f"{outside} coordinates outside ±{self.coordinate_range} were clipped before secure "
                              "aggregation", SecAggRangeWarning, stacklevel=2)
        params = SecAggParams(data.shape[1], codec,
                              threshold=self.threshold(k),
                              min_survivors=2 * k // 3 + 1 if min_survivors is None else min_survivors)
        result, _ = run_secure_aggregation({u: data[u - 1] for u in range(1, k + 1)}, params, graph=self._graph(k))
        return torch.from_numpy(result.total.astype(np.float64))

    def __call__(self, messages: torch.Tensor, mode: PrivacyMode) -> torch.Tensor:
        """The :class:`fltrain.fedavg.Summer` of a round: the sum under the mode's range and dropout floor."""
        bound = mode.secure_sum_range()
        settings = self if bound is None else dataclasses.replace(self, coordinate_range=bound)
        return settings.sum(messages, min_survivors=mode.min_survivors(messages.shape[0]),
                            ring_bits=mode.secure_ring_bits())
