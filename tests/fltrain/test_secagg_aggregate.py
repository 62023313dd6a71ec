"""Secure aggregation as FedAvg's aggregation step, and whole runs with --secure-agg."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("cryptography")

from dpcalib.errors import InvalidArgumentError  # noqa: E402
from fltrain.client import ClientUpdates  # noqa: E402
from fltrain.clientdp import AdaptiveClip, ClientDPAggregator  # noqa: E402
from fltrain.config import RunConfig  # noqa: E402
from fltrain.fedavg import WeightedMean  # noqa: E402
from fltrain.run import CHECKPOINT, run  # noqa: E402
from fltrain.secagg.aggregate import (  # noqa: E402
    SecAggRangeWarning,
    SecureClientDPAggregator,
    SecureSum,
    SecureWeightedMean,
)


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


# --- client-level DP with distributed noise -------------------------------------------------------------------


def _client_dp(cls, *, z: float, adaptive: bool = False, dim: int = 4000, m: float = 6.0):
    clip = AdaptiveClip(1.0, target_quantile=0.5, clip_lr=0.2, count_noise_std=0.3) if adaptive else 1.0
    return cls(dim=dim, clip=clip, sum_noise_multiplier=z, expected_clients=m)


def test_distributed_noise_has_at_least_the_calibrated_variance():
    k, z, dim, m = 6, 1.3, 4000, 6.0
    agg = _client_dp(SecureClientDPAggregator, z=z, dim=dim, m=m)
    t = agg.secure_sum.min_survivors(k)
    assert t == 5  # ⌊2·6/3⌋ + 1: the round aborts below 5 survivors
    noise = agg.aggregate(torch.zeros(k, dim), generator=torch.Generator().manual_seed(0)).double() * m
    # each of the k clients adds N(0, (zC)²/t): total variance k/t·(zC)² ≥ (zC)² = the accountant's
    expected = k / t * z**2
    sample_var = float(noise.var())
    # chi-square interval for the sample variance of dim draws (±5 standard errors)
    assert abs(sample_var / expected - 1) < 5 * (2 / dim) ** 0.5
    assert sample_var > z**2 * (1 + 3 * (2 / dim) ** 0.5)  # strictly more than the calibrated variance here
    assert agg.last_release["noise_std"] == z * 1.0


def test_distributed_dp_sum_and_count_match_the_central_ones_without_noise():
    k, dim = 7, 30
    g = torch.Generator().manual_seed(1)
    deltas = torch.randn(k, dim, generator=g) * torch.tensor([0.1, 0.5, 3.0, 0.2, 9.0, 0.3, 0.05]).unsqueeze(1)
    secure = _client_dp(SecureClientDPAggregator, z=1e-9, adaptive=True, dim=dim, m=5.0)
    central = _client_dp(ClientDPAggregator, z=1e-9, adaptive=True, dim=dim, m=5.0)
    secure.adaptive.count_noise_std = central.adaptive.count_noise_std = 1e-9
    a = secure.aggregate(deltas, generator=torch.Generator().manual_seed(2))
    b = central.aggregate(deltas, generator=torch.Generator().manual_seed(2))
    assert float((a - b).abs().max()) < 1e-5  # clipped on the clients, summed under masks, same mean
    fraction = secure.last_release["noisy_fraction_unclipped"]
    assert fraction == pytest.approx(central.last_release["noisy_fraction_unclipped"], abs=1e-6)
    below = int((deltas.double().norm(dim=1) <= 1.0).sum())
    assert 0 < below < k
    assert fraction == pytest.approx((below - 0.5 * k) / 5.0 + 0.5, abs=1e-6)
    assert secure.clip == pytest.approx(central.clip)


def test_secagg_plus_rounds_have_the_same_noise_floor():
    k, z, dim = 80, 1.0, 3000  # > sparse_above: SecAgg+ (threshold 15 of 21 holders), still ≥ 54 survivors
    agg = _client_dp(SecureClientDPAggregator, z=z, dim=dim, m=80.0)
    assert agg.secure_sum.threshold(k) < agg.secure_sum.min_survivors(k) == 54
    noise = agg.aggregate(torch.zeros(k, dim), generator=torch.Generator().manual_seed(4)).double() * 80.0
    assert abs(float(noise.var()) / (k / 54 * z**2) - 1) < 5 * (2 / dim) ** 0.5


@pytest.mark.parametrize("k", [0, 1])
def test_rounds_with_fewer_than_two_clients_still_carry_the_full_noise(k):
    z, dim = 0.9, 4000
    agg = _client_dp(SecureClientDPAggregator, z=z, dim=dim, m=1.0)
    noise = agg.aggregate(torch.zeros(k, dim), generator=torch.Generator().manual_seed(3)).double()
    assert abs(float(noise.var()) / z**2 - 1) < 5 * (2 / dim) ** 0.5


CLIENT_RUN = dict(dataset="mnist", train_samples=1500, test_samples=300, clients=30, partition="dirichlet", alpha=0.1,
                  rounds=3, local_steps=3, batch_size=10, lr=0.1, dp="client", expected_clients=10, eps=8.0,
                  clip=0.5, adaptive_clip=True, server_opt="adam", server_lr=0.01, seed=3)


def test_client_level_run_with_secure_aggregation_spends_the_same_budget(data_root, tmp_path):
    central = run(RunConfig(**CLIENT_RUN, data_dir=str(data_root), out=str(tmp_path / "central")))
    secure = run(RunConfig(**CLIENT_RUN, data_dir=str(data_root), out=str(tmp_path / "secure"), secure_agg=True))
    assert secure.rounds_completed == 3 and secure.epsilon == central.epsilon and secure.sigma == central.sigma
    a = torch.load(tmp_path / "central" / CHECKPOINT, weights_only=True)["server"]["params"]
    b = torch.load(tmp_path / "secure" / CHECKPOINT, weights_only=True)["server"]["params"]
    # the noise is drawn per client in the secure run (shares of variance 1/t each), so the models must differ;
    # equal models would mean --secure-agg was ignored in client mode
    assert bool(torch.isfinite(b).all()) and float((a - b).abs().max()) > 1e-4
