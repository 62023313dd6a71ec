"""Secure aggregation as FedAvg's aggregation step: the server obtains the (weighted) sum of the round's client
deltas through :func:`run_secure_aggregation`, never a single delta.

Two modes:

- sample-level DP (:class:`SecureWeightedMean`): each client masks ``w_k Δ_k``, its DP-SGD delta weighted by
  ``n_k / Σ n_j``; the accounting is unchanged (the noise is in each client's DP-SGD);
- client-level DP (:class:`SecureClientDPAggregator`): *distributed* DP. Each client clips its delta to ``C`` and
  adds its share of the noise, ``N(0, (z_Δ·C)²/t)``, before masking, where ``t = ⌊2K/3⌋ + 1`` is the round's
  ``min_survivors``: a round that completes has at least ``t`` survivors (fewer abort), so the sum carries noise
  of variance at least ``(z_Δ·C)²`` — the calibrated noise — whatever the dropouts, and also if up to ``K − t`` of
  the ``K`` clients skip their share. With every client present the variance is ``K/t ≈ 1.5`` times the
  calibrated one: the price of that conservatism. The count of adaptive clipping travels as one more
  coordinate with noise ``N(0, σ_b²/t)`` per client.

Each round's clients run one protocol session (fresh keys), ids ``1..K`` in the order of the round. With at most
``sparse_above`` clients the graph is complete (SecAgg); above, a random Harary graph of degree
:func:`secagg_plus_degree` (SecAgg+). The threshold is ``⌊2·holders/3⌋ + 1`` (a third of a neighbourhood may drop)
and a round of K clients aborts with fewer than ``⌊2K/3⌋ + 1`` masked inputs.

Fixed point: coordinates in ``[-coordinate_range, coordinate_range]`` with ``frac_bits`` fractional bits; the
decoded sum of K vectors is within ``K·2^-(frac_bits+1)`` of the float sum (:mod:`.encoding`). A coordinate outside
the range would be clipped by its client; the client warns (:class:`SecAggRangeWarning`) — in a deployment it
could only tell its operator, since telling the server would leak. The protocol's own randomness (keys, seeds)
comes from the OS CSPRNG, never from the training generator: the decoded sum is exact ring arithmetic, so runs
stay reproducible from their seed.
"""

from __future__ import annotations

import dataclasses
import math
import random
import warnings
from dataclasses import dataclass

import numpy as np
import torch

from dpcalib.errors import InvalidArgumentError

from ..clientdp import ClientDPAggregator
from ..fedavg import fedavg_weights
from .encoding import FixedPoint
from .graph import complete_graph, harary_graph, secagg_plus_degree
from .protocol import SecAggParams, run_secure_aggregation
from dpcalib import validation as check

__all__ = ["SecAggRangeWarning", "SecureSum", "SecureWeightedMean", "SecureClientDPAggregator"]


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

    @staticmethod
    def min_survivors(k: int) -> int:
        """``⌊2k/3⌋ + 1``: a round of ``k`` clients whose sum covers fewer inputs aborts (whatever the graph)."""
        return 2 * k // 3 + 1

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
        params = SecAggParams(data.shape[1], FixedPoint(self.coordinate_range, self.frac_bits, k),
                              threshold=self.threshold(k), min_survivors=self.min_survivors(k))
        result, _ = run_secure_aggregation({u: data[u - 1] for u in range(1, k + 1)}, params, graph=self._graph(k))
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


#: Noise shares are clipped at this many standard deviations by the fixed-point range (probability ~1e-15 each).
NOISE_RANGE_SIGMAS = 8.0


class SecureClientDPAggregator(ClientDPAggregator):
    """Client-level DP-FedAvg (McMahan et al. 2018) with distributed noise under secure aggregation.

    The same releases as :class:`fltrain.clientdp.ClientDPAggregator` (noisy sum / expected clients, noisy count
    for adaptive clipping, same accounting), but the clipping and the noise happen on the clients and the server
    sees only the masked sum (see the module docstring for the noise shares). Rounds with one sampled client send
    that client's vector with the full noise (``t = 1``: it is the DP release itself); rounds with none let the
    server add the noise, as there is nothing to hide from it. A round that aborts (fewer than ``t`` survivors)
    raises :class:`fltrain.secagg.TooFewClientsError` and releases nothing.

    The fixed-point range of a round is ``max(C, 1/2) + NOISE_RANGE_SIGMAS · (largest per-client noise std)``.
    """

    def __init__(self, *, secure_sum: SecureSum = SecureSum(), **kwargs) -> None:
        super().__init__(**kwargs)
        self.secure_sum = secure_sum

    def _noisy_sums(
        self, clipped: torch.Tensor, below: torch.Tensor, clip: float, generator: torch.Generator | None
    ) -> tuple[torch.Tensor, float]:
        k = clipped.shape[0]
        if k == 0:
            return super()._noisy_sums(clipped, below, clip, generator)
        t = 1 if k == 1 else self.secure_sum.min_survivors(k)
        stds = torch.full((self.dim,), self.sum_noise_multiplier * clip, dtype=torch.float64)
        columns = clipped
        if self.adaptive is not None:
            columns = torch.cat([clipped, below.to(torch.float64).unsqueeze(1) - 0.5], dim=1)
            stds = torch.cat([stds, torch.tensor([self.adaptive.count_noise_std], dtype=torch.float64)])
        shares = columns + torch.randn(columns.shape, generator=generator, dtype=torch.float64) * (stds / math.sqrt(t))
        if k == 1:
            total = shares[0]
        else:
            bound = max(clip, 0.5) + NOISE_RANGE_SIGMAS * float(stds.max()) / math.sqrt(t)
            total = dataclasses.replace(self.secure_sum, coordinate_range=bound)(shares)
        return total[: self.dim], float(total[self.dim]) if self.adaptive is not None else 0.0
