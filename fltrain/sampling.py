"""Batch samplers of DP-SGD for a group of clients: what decides which of a client's records enter each step.

Each sampler is exactly the one its accountant assumes (:class:`dpcalib.Sampler`, docs/accounting.md):

- :class:`PoissonSampler` (``poisson``): record ``i`` of client ``k`` is in a batch independently with probability
  ``q_k``; the Poisson-subsampled Gaussian (Mironov, Talwar, Zhang 2019), add/remove neighbouring;
- :class:`FixedSizeSampler` (``fixed``): every step a uniformly random subset of exactly ``B`` of the client's
  ``n_k`` records, drawn afresh (without replacement within the batch, independently across steps); sampling
  without replacement (Wang, Balle, Kasiviswanathan 2019), replace-one neighbouring;
- :class:`ShuffleSampler` (``shuffle``): every epoch a uniformly random permutation of the client's records, cut
  into ``⌊n_k/B⌋`` consecutive batches of exactly ``B``; the last ``n_k mod B`` records of the permutation are in
  no batch of that epoch. Each record is in at most one batch per epoch; accounted as one Gaussian release per
  epoch, with no amplification (:class:`dpcalib.ShuffledEpoch`), replace-one neighbouring. A sampler starts a
  new epoch when it is made (fltrain makes one per round: clients are stateless between rounds).

Every decision comes from the caller's :class:`fltrain.randomness.RandomSource` (the secret source in a DP run).
``sample(rng)`` returns padded ``(K, b)`` indices into the training tensors and a ``(K, b)`` 0/1 weight; the
``fixed`` and ``shuffle`` samplers always fill all ``B`` slots, so their weight is all ones.
"""

from __future__ import annotations

import torch

from dpcalib.errors import InvalidArgumentError
from dpcalib.events import Sampler

from .randomness import RandomSource

__all__ = ["BatchSampler", "PoissonSampler", "FixedSizeSampler", "ShuffleSampler", "SAMPLERS", "make_sampler"]

#: the samplers, by the names of :class:`dpcalib.Sampler`
SAMPLERS = tuple(s.value for s in Sampler)


def _index_table(members: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(index, sizes)``: client ``k``'s indices in row ``k`` of a zero-padded ``(K, max n_k)`` table."""
    sizes = torch.tensor([len(m) for m in members])
    index = torch.zeros(len(members), int(sizes.max()), dtype=torch.int64)
    for k, m in enumerate(members):
        index[k, : len(m)] = m
    return index, sizes


def _check_batch(sizes: torch.Tensor, batch: int) -> int:
    if isinstance(batch, bool) or not isinstance(batch, int) or not 1 <= batch <= int(sizes.min()):
        raise InvalidArgumentError("batch_size", batch, f"an integer in [1, {int(sizes.min())}] (the smallest "
                                   "client's record count: a batch of exactly B is drawn from each client)")
    return batch


class PoissonSampler:
    """Poisson sampling: record ``i`` of client ``k`` is in a batch independently with probability ``q_k`` (the
    sampling the Poisson-subsampled Gaussian accountant assumes). ``b`` is the largest realised batch (0 when all
    are empty)."""

    def __init__(self, members: list[torch.Tensor], rates: torch.Tensor) -> None:
        self.index, sizes = _index_table(members)
        width = self.index.shape[1]
        # torch.rand(float32) draws multiples of 2^-24, so P(U < t) = ceil(t·2^24)/2^24: rounding the rate DOWN to
        # a multiple of 2^-24 makes every record's inclusion probability at most the q the accountant charges
        grid = 2.0**24
        rounded = torch.floor(rates.to(torch.float64) * grid) / grid
        self.thresholds = torch.where(
            torch.arange(width).unsqueeze(0) < sizes.unsqueeze(1), rounded.unsqueeze(1).to(torch.float32), -1.0
        )

    def sample(self, rng: RandomSource) -> tuple[torch.Tensor, torch.Tensor]:
        draws = rng.rand(self.index.shape)
        chosen = draws < self.thresholds
        counts = chosen.sum(1)
        width = int(counts.max())
        top = torch.topk(chosen.to(torch.uint8), width, dim=1, sorted=True).indices if width else chosen[:, :0].long()
        weight = (torch.arange(width).unsqueeze(0) < counts.unsqueeze(1)).to(torch.float32)
        return self.index.gather(1, top), weight


class FixedSizeSampler:
    """Exactly ``batch`` distinct records of each client per step, a uniformly random subset (every one of the
    ``C(n_k, B)`` subsets equally likely), drawn afresh every step: the positions of the ``B`` smallest of ``n_k``
    independent float64 uniforms (a tie, probability below ``n_k²·2^-54``, would bias it negligibly, as in
    :meth:`fltrain.randomness.SecureRandom.randperm`)."""

    def __init__(self, members: list[torch.Tensor], batch: int) -> None:
        self.index, sizes = _index_table(members)
        self.batch = _check_batch(sizes, batch)
        self.padding = torch.arange(self.index.shape[1]).unsqueeze(0) >= sizes.unsqueeze(1)

    def sample(self, rng: RandomSource) -> tuple[torch.Tensor, torch.Tensor]:
        keys = rng.rand(self.index.shape, torch.float64).masked_fill(self.padding, 2.0)  # padding never chosen
        chosen = torch.topk(keys, self.batch, dim=1, largest=False).indices
        return self.index.gather(1, chosen), torch.ones(chosen.shape)


class ShuffleSampler:
    """Shuffled epochs: a uniformly random permutation of each client's records per epoch
    (:meth:`RandomSource.randperm`), cut into ``⌊n_k/B⌋`` consecutive batches of exactly ``batch``; when a
    client's epoch ends, its next step begins a new epoch with a fresh permutation. Clients of different sizes run
    their epochs independently."""

    def __init__(self, members: list[torch.Tensor], batch: int) -> None:
        self.members = members
        _, sizes = _index_table(members)
        self.batch = _check_batch(sizes, batch)
        self.batches_per_epoch = [len(m) // self.batch for m in members]
        self.order: list[torch.Tensor] = [m[:0] for m in members]
        self.position = [0] * len(members)  # batches of the current epoch already used

    def sample(self, rng: RandomSource) -> tuple[torch.Tensor, torch.Tensor]:
        rows = []
        for k, m in enumerate(self.members):
            if self.position[k] == 0:
                self.order[k] = m[rng.randperm(len(m))]
            start = self.position[k] * self.batch
            rows.append(self.order[k][start : start + self.batch])
            self.position[k] = (self.position[k] + 1) % self.batches_per_epoch[k]
        index = torch.stack(rows)
        return index, torch.ones(index.shape)


BatchSampler = PoissonSampler | FixedSizeSampler | ShuffleSampler


def make_sampler(kind: str, members: list[torch.Tensor], *, rates: torch.Tensor, batch: int) -> BatchSampler:
    """The sampler ``kind`` (one of :data:`SAMPLERS`) for clients holding ``members``: Poisson with ``rates``, or
    batches of exactly ``batch``."""
    if kind == "poisson":
        return PoissonSampler(members, rates)
    if kind == "fixed":
        return FixedSizeSampler(members, batch)
    if kind == "shuffle":
        return ShuffleSampler(members, batch)
    raise InvalidArgumentError("sampler", kind, "one of " + ", ".join(SAMPLERS))
