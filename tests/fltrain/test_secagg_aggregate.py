"""Secure aggregation as FedAvg's summing step, and whole runs with --secure-agg."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("cryptography")

import dpcalib  # noqa: E402
from dpcalib.errors import InvalidArgumentError  # noqa: E402
from dpcalib.events import Gaussian, Repeated, SampledWithoutReplacement  # noqa: E402
from fltrain.config import RunConfig  # noqa: E402
from fltrain.privacy import FixedCohort, NoPrivacy  # noqa: E402
from fltrain.run import CHECKPOINT, run  # noqa: E402
from fltrain.secagg.aggregate import SecAggRangeWarning, SecureSum  # noqa: E402


@pytest.mark.parametrize("k, sparse_above", [(2, 64), (7, 64), (20, 8)])
def test_secure_sum_of_a_modes_messages_equals_the_plain_sum(k, sparse_above):
    g = torch.Generator().manual_seed(k)
    deltas = torch.randn(k, 50, generator=g, dtype=torch.float64) * 0.5
    counts = torch.randint(50, 500, (k,), generator=g)
    mode = NoPrivacy(cohort=FixedCohort(k, k), seed=0, train_records=int(counts.sum()) + 7)
    messages = mode.client_message(deltas, counts)
    secure_sum = SecureSum(sparse_above=sparse_above)
    secure = secure_sum(messages, mode)
    plain = messages.sum(0)
    assert float((secure - plain).abs().max()) <= k * 2.0 ** -(secure_sum.frac_bits + 1) + 1e-15
    fedavg = (counts.double() / counts.sum()) @ deltas  # FedAvg's weights n_k / Σ n_j
    assert float((mode.server_update(plain) - fedavg).abs().max()) < 1e-12
    assert float((mode.server_update(secure) - fedavg).abs().max()) < 1e-5


def test_out_of_range_coordinates_warn_one_client_is_refused_and_a_short_round_aborts():
    from fltrain.secagg import TooFewClientsError

    with pytest.warns(SecAggRangeWarning):
        SecureSum(coordinate_range=0.1).sum(torch.full((3, 4), 0.5))
    with pytest.raises(InvalidArgumentError, match="at least 2"):
        SecureSum().sum(torch.zeros(1, 4))
    with pytest.raises((TooFewClientsError, InvalidArgumentError)):
        SecureSum().sum(torch.zeros(3, 4), min_survivors=4)  # a floor above the cohort can never be met


SMALL = dict(dataset="mnist", train_samples=1200, test_samples=300, clients=3, partition="shards",
             shards_per_client=2, rounds=2, local_steps=3, batch_size=40, lr=0.1, seed=3, dp="sample",
             sample={"eps": 8.0}, insecure_reproducible_noise=True)


def test_a_run_with_secure_aggregation_matches_the_plain_run(data_root, tmp_path):
    plain = run(RunConfig(**SMALL, data_dir=str(data_root), out=str(tmp_path / "plain")))
    secure = run(RunConfig(**SMALL, data_dir=str(data_root), out=str(tmp_path / "secure"), secure_agg=True))
    a = torch.load(tmp_path / "plain" / CHECKPOINT, weights_only=True)["server"]["params"]
    b = torch.load(tmp_path / "secure" / CHECKPOINT, weights_only=True)["server"]["params"]
    # the same (reproducible) DP noise: only the fixed-point rounding (≤ 3 · 2^-25 per round) and casts differ
    assert float((a - b).abs().max()) < 1e-5
    assert abs(secure.test_accuracy - plain.test_accuracy) <= 2 / 300
    assert secure.epsilon == plain.epsilon and secure.epsilon is not None


CLIENT_RUN = dict(dataset="mnist", train_samples=1500, test_samples=300, clients=30, partition="dirichlet", alpha=0.1,
                  rounds=3, local_steps=3, batch_size=10, lr=0.1, dp="client", server_opt="adam", server_lr=0.01,
                  seed=3, client={"expected_clients": 10, "eps": 8.0, "delta": 1e-4, "clip": 0.5})


def test_client_level_run_with_secure_aggregation_is_accounted_as_a_fixed_cohort(data_root, tmp_path):
    secure = run(RunConfig(**CLIENT_RUN, data_dir=str(data_root), out=str(tmp_path / "secure"), secure_agg=True))
    assert secure.rounds_completed == 3 and secure.epsilon <= 8.0
    assert secure.privacy["cohort"] == {"sampling": "fixed", "expected_clients": 10.0, "clients": 30}
    assert secure.privacy["plan"]["neighbouring"] == "replace_one" and secure.privacy["min_survivors"] == 7
    event = Repeated(SampledWithoutReplacement(30, 10, Gaussian(secure.sigma)), 3)
    assert secure.epsilon == pytest.approx(
        dpcalib.event_epsilon(event, delta=1e-4, neighbouring="replace_one"), rel=1e-12)


def test_client_level_run_with_skellam_shares_charges_the_discrete_event(data_root, tmp_path):
    config = dict(CLIENT_RUN, client=dict(CLIENT_RUN["client"], noise="skellam", bits=16))
    secure = run(RunConfig(**config, data_dir=str(data_root), out=str(tmp_path / "skellam"), secure_agg=True))
    assert secure.rounds_completed == 3 and secure.epsilon <= 8.0
    discrete = secure.privacy["discrete"]
    assert discrete["noise"] == "skellam" and discrete["bits"] == 16
    noise = dpcalib.Skellam(discrete["mu"], discrete["l1_sensitivity"], discrete["l2_sensitivity"])
    event = Repeated(SampledWithoutReplacement(30, 10, noise), 3)
    assert secure.epsilon == dpcalib.event_epsilon(event, delta=1e-4, neighbouring="replace_one")
    assert secure.privacy["plan"]["round_event"] == dpcalib.event_to_dict(SampledWithoutReplacement(30, 10, noise))
