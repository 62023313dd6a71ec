"""Who shares keys and masks with whom: the complete graph of SecAgg (Bonawitz et al., CCS 2017) or the sparse
random Harary graph of SecAgg+ (Bell, Bonawitz, Gascón, Lepoint, Raykova, CCS 2020).

In SecAgg every pair of clients agrees a mask, so a client expands ``n - 1`` pairwise masks and secret-shares its
keys with all ``n`` clients: O(n) work per client and O(n^2) for the server after dropouts. SecAgg+ replaces the
complete graph with a ``k``-regular graph, ``k = O(log n)``: a Harary graph H(k, n) (each client joined to the
``k/2`` nearest on each side of a ring) whose positions on the ring are a uniformly random permutation, so the
neighbourhood of a client is unpredictable before the round. Masks and shares then only travel along edges.

A graph maps each client id to the frozenset of its neighbours (never itself; symmetric).
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Mapping

from dpcalib.errors import InvalidArgumentError
from dpcalib import validation as check

from .messages import MAX_ID

__all__ = ["Graph", "complete_graph", "harary_graph", "secagg_plus_degree"]

Graph = Mapping[int, frozenset[int]]


def _check_ids(ids: Iterable[int]) -> list[int]:
    ids = list(ids)
    if any(isinstance(i, bool) or not isinstance(i, int) or not 1 <= i <= MAX_ID for i in ids) or len(set(ids)) < 2:
        raise InvalidArgumentError("client_ids", ids, "at least 2 distinct integers in [1, 2^32 - 1]")
    return sorted(set(ids))


def complete_graph(ids: Iterable[int]) -> dict[int, frozenset[int]]:
    """Every client is every other client's neighbour (the original SecAgg)."""
    nodes = _check_ids(ids)
    return {u: frozenset(v for v in nodes if v != u) for u in nodes}


def secagg_plus_degree(n: int) -> int:
    """A practical default degree for SecAgg+: the smallest even number ≥ 3·log2(n), capped at ``n - 1``.

    Bell et al. (2020, Thm 3.6) prove that some ``k = O(log n)`` gives security and correctness with high
    probability for given fractions of corrupt and dropped clients; their constants depend on those fractions.
    This default (28 for n = 500) is an engineering choice for honest-but-curious settings, not their bound.
    """
    n = check.count("n", n, minimum=2)
    return min(n - 1, 2 * math.ceil(1.5 * math.log2(n)))


def harary_graph(ids: Iterable[int], degree: int, rng: random.Random | None = None) -> dict[int, frozenset[int]]:
    """A ``degree``-regular Harary graph over ``ids`` with randomly permuted ring positions (SecAgg+).

    ``degree`` must be even (the ring neighbours come in pairs) and < number of clients; ``degree = n - 1`` with
    odd ``n - 1`` is the complete graph and is returned as such. ``rng`` defaults to the OS CSPRNG.
    """
    nodes = _check_ids(ids)
    n = len(nodes)
    if degree == n - 1:
        return complete_graph(nodes)
    if not (isinstance(degree, int) and 2 <= degree < n - 1 and degree % 2 == 0):
        raise InvalidArgumentError("degree", degree, f"an even integer in [2, {n - 2}] or exactly {n - 1}")
    ring = list(nodes)
    (rng or random.SystemRandom()).shuffle(ring)
    half = degree // 2
    return {
        ring[i]: frozenset(ring[(i + s) % n] for s in range(-half, half + 1) if s != 0) for i in range(n)
    }
