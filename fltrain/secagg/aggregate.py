"""Secure aggregation as FedAvg's aggregation step: the server obtains the (weighted) sum of the round's client
deltas through :func:`run_secure_aggregation`, never a single delta.

Each round's clients run one protocol session (fresh keys), ids ``1..K`` in the order of the round. With at most
``sparse_above`` clients the graph is complete (SecAgg); above, a random Harary graph of degree
:func:`secagg_plus_degree` (SecAgg+). The threshold is ``⌊2·holders/3⌋ + 1``: a third of a neighbourhood may drop.

Fixed point: coordinates in ``[-coordinate_range, coordinate_range]`` with ``frac_bits`` fractional bits; the
decoded sum of K vectors is within ``K·2^-(frac_bits+1)`` of the float sum (:mod:`.encoding`). A coordinate outside
the range would be clipped by its client; the client warns (:class:`SecAggRangeWarning`) — in a deployment it
could only tell its operator, since telling the server would leak. The protocol's own randomness (keys, seeds)
comes from the OS CSPRNG, never from the training generator: the decoded sum is exact ring arithmetic, so runs
stay reproducible from their seed.
"""

from __future__ import annotations

import random
import warnings
from dataclasses import dataclass

import numpy as np
import torch

from dpcalib.errors import InvalidArgumentError, check_count, check_positive

from ..fedavg import fedavg_weights
from .encoding import FixedPoint
from .graph import complete_graph, harary_graph, secagg_plus_degree
from .protocol import SecAggParams, run_secure_aggregation

__all__ = ["SecAggRangeWarning", "SecureSum", "SecureWeightedMean"]


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
        check_positive("coordinate_range", self.coordinate_range)
        check_count("frac_bits", self.frac_bits, minimum=0)
        check_count("sparse_above", self.sparse_above, minimum=2)

    def __call__(self, vectors: torch.Tensor) -> torch.Tensor:
        """The sum over rows of ``vectors`` (K, P), K ≥ 2, computed by the protocol; float64 (P,)."""
        k = vectors.shape[0]
        if k < 2:
            raise InvalidArgumentError("clients", k, "at least 2 per round with secure aggregation (the sum of "
                                       "one client is its update)")
        data = vectors.detach().to(torch.float64).cpu().numpy()
        outside = int(np.sum(np.abs(data) > self.coordinate_range))
        if outside:
            warnings.warn(f"{outside} coordinates outside ±{self.coordinate_range} were clipped before secure "
                          "aggregation", SecAggRangeWarning, stacklevel=2)
        ids = list(range(1, k + 1))
        graph = (complete_graph(ids) if k <= self.sparse_above
                 else harary_graph(ids, secagg_plus_degree(k), random.SystemRandom()))
        holders = len(graph[1]) + 1
        params = SecAggParams(data.shape[1], FixedPoint(self.coordinate_range, self.frac_bits, k),
                              threshold=2 * holders // 3 + 1)
        result, _ = run_secure_aggregation({u: data[u - 1] for u in ids}, params, graph=graph)
        return torch.from_numpy(result.total)


@dataclass(frozen=True)
class SecureWeightedMean:
    """FedAvg's weighted mean ``Σ_k w_k Δ_k``, ``w_k = n_k / Σ_j n_j`` (the weights are known to the server, as in
    plain FedAvg), with the sum computed under secure aggregation: each client masks ``w_k Δ_k``."""

    secure_sum: SecureSum = SecureSum()

    def aggregate(self, updates, generator: torch.Generator) -> torch.Tensor:
        """Implements :class:`fltrain.fedavg.Aggregator`."""
        weights = fedavg_weights(updates.num_samples, torch.float64)
        return self.secure_sum(weights.unsqueeze(1) * updates.deltas.to(torch.float64)).to(updates.deltas.dtype)
