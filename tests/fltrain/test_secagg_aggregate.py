"""Secure aggregation as FedAvg's aggregation step, and whole runs with --secure-agg."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("cryptography")

from dpcalib.errors import InvalidArgumentError  # noqa: E402
from fltrain.client import ClientUpdates  # noqa: E402
from fltrain.config import RunConfig  # noqa: E402
from fltrain.fedavg import WeightedMean  # noqa: E402
from fltrain.run import CHECKPOINT, run  # noqa: E402
from fltrain.secagg.aggregate import SecAggRangeWarning, SecureSum, SecureWeightedMean  # noqa: E402


def _updates(k: int, dim: int = 50, seed: int = 0, scale: float = 0.5) -> ClientUpdates:
    g = torch.Generator().manual_seed(seed)
    return ClientUpdates(
        client_ids=torch.arange(k),
        deltas=torch.randn(k, dim, generator=g, dtype=torch.float64) * scale,
        num_samples=torch.randint(50, 500, (k,), generator=g),
        train_loss=torch.zeros(k),
    )


@pytest.mark.parametrize("k, sparse_above", [(2, 64), (7, 64), (20, 8)])
def test_secure_weighted_mean_equals_the_plain_one(k, sparse_above):
    updates = _updates(k, seed=k)
    secure_sum = SecureSum(sparse_above=sparse_above)
    secure = SecureWeightedMean(secure_sum).aggregate(updates, torch.Generator())
    plain = WeightedMean().aggregate(updates, torch.Generator())
    assert secure.dtype == plain.dtype
    bound = k * 2.0 ** -(secure_sum.frac_bits + 1)
    assert float((secure - plain).abs().max()) <= bound + 1e-15


def test_out_of_range_coordinates_warn_and_one_client_is_refused():
    with pytest.warns(SecAggRangeWarning):
        SecureSum(coordinate_range=0.1)(torch.full((3, 4), 0.5))
    with pytest.raises(InvalidArgumentError, match="at least 2"):
        SecureSum()(torch.zeros(1, 4))


SMALL = dict(dataset="mnist", train_samples=1200, test_samples=300, clients=3, partition="shards",
             shards_per_client=2, rounds=2, local_steps=3, batch_size=40, lr=0.1, seed=3, dp="sample", eps=8.0)


def test_a_run_with_secure_aggregation_matches_the_plain_run(data_root, tmp_path):
    plain = run(RunConfig(**SMALL, data_dir=str(data_root), out=str(tmp_path / "plain")))
    secure = run(RunConfig(**SMALL, data_dir=str(data_root), out=str(tmp_path / "secure"), secure_agg=True))
    a = torch.load(tmp_path / "plain" / CHECKPOINT, weights_only=True)["server"]["params"]
    b = torch.load(tmp_path / "secure" / CHECKPOINT, weights_only=True)["server"]["params"]
    # same seed, same DP noise: only the fixed-point rounding (≤ 3 · 2^-25 per round) and float32 casts differ
    assert float((a - b).abs().max()) < 1e-5
    assert abs(secure.test_accuracy - plain.test_accuracy) <= 2 / 300
    assert secure.epsilon == plain.epsilon and secure.epsilon is not None
