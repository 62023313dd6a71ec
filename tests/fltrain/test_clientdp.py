"""Tests of client-level DP-FedAvg (fltrain.clientdp): sampling, clipping, server noise, adaptive clipping,
server optimisers, accounting through dpcalib, and bad input."""

from __future__ import annotations

import json
import math

import pytest
import torch

import dpcalib
from dpcalib.errors import InvalidArgumentError
from fltrain.clientdp import (
    AdaptiveClip,
    ClientDPAggregator,
    clip_deltas,
    plan_client_dp,
    poisson_sample_clients,
    sum_noise_multiplier,
)
from fltrain.cli import main
from fltrain.config import RunConfig
from fltrain.privacy import ClientDeltaWarning, PrivacyLedger, default_client_delta, resolve_client_delta
from fltrain.run import CHECKPOINT, METRICS, run

from .runs import StopAt, metrics, without_timing


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# --- clipping ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("clip", [1e-3, 0.1, 1.0, 37.0])
def test_every_clipped_delta_has_norm_at_most_clip(clip: float) -> None:
    g = _gen(0)
    scales = torch.logspace(-5, 5, 64, dtype=torch.float64).unsqueeze(1)
    deltas = (torch.randn(64, 1000, generator=g, dtype=torch.float64) * scales).float()
    deltas[0] = 0.0  # a client that did not move
    clipped, norms = clip_deltas(deltas, clip)
    out = torch.linalg.vector_norm(clipped.double(), dim=1)
    assert bool((out <= clip * (1 + 1e-6)).all())
    # small deltas pass unchanged, large ones keep their direction and land on the sphere of radius C
    small = norms <= clip
    assert torch.equal(clipped[small], deltas[small])
    assert torch.allclose(out[~small], torch.full_like(out[~small], clip), rtol=1e-6)
    cos = torch.nn.functional.cosine_similarity(clipped[~small].double(), deltas[~small].double(), dim=1)
    assert torch.allclose(cos, torch.ones_like(cos), atol=1e-6)


# --- server noise and the fixed denominator ---------------------------------------------------------------------


def test_server_noise_std_is_sigma_times_clip() -> None:
    dim, clip, z, m = 200_000, 0.7, 1.3, 10.0
    agg = ClientDPAggregator(dim=dim, clip=clip, sum_noise_multiplier=z, expected_clients=m)
    g = _gen(1)
    deltas = torch.randn(3, dim, generator=g)  # norm ≈ 447 > C: all clipped
    clipped, _ = clip_deltas(deltas, clip)
    mean = agg.aggregate(deltas, generator=g)
    noise = mean.double() * m - clipped.double().sum(0)  # the fixed denominator m, not the 3 clients present
    std = float(noise.std())
    # sample std of d normals has relative standard error 1/sqrt(2d) ≈ 0.16 %; allow 5 of them
    assert abs(std / (z * clip) - 1) < 5 / math.sqrt(2 * dim)
    assert abs(float(noise.mean())) < 5 * z * clip / math.sqrt(dim)
    assert agg.last_release == {"clip": clip, "noise_std": pytest.approx(z * clip)}


def test_noise_is_released_when_no_client_is_sampled() -> None:
    agg = ClientDPAggregator(dim=50_000, clip=2.0, sum_noise_multiplier=0.5, expected_clients=4.0)
    mean = agg.aggregate(torch.zeros(0, 50_000), generator=_gen(2))
    assert abs(float(mean.double().std() * 4.0) / 1.0 - 1) < 5 / math.sqrt(2 * 50_000)


# --- client sampling --------------------------------------------------------------------------------------------


def test_poisson_client_sampling_mean_and_variance() -> None:
    n, q, trials = 1000, 0.05, 4000
    g = _gen(5)
    counts = torch.empty(trials, dtype=torch.float64)
    hits = torch.zeros(n, dtype=torch.float64)
    for t in range(trials):
        idx = poisson_sample_clients(n, q, generator=g)
        assert torch.equal(idx, torch.unique(idx))  # distinct and sorted
        counts[t] = idx.numel()
        hits[idx] += 1
    mean, var = n * q, n * q * (1 - q)
    assert abs(float(counts.mean()) - mean) < 5 * math.sqrt(var / trials)
    # the sample variance of a (near-)normal count has standard error var*sqrt(2/(T-1))
    assert abs(float(counts.var()) - var) < 5 * var * math.sqrt(2 / (trials - 1))
    # every client is included at rate q (a client that is never or always chosen would show here)
    assert abs(float(hits.mean()) / trials - q) < 1e-3
    assert float(hits.min()) > 0 and float(hits.max()) < trials * 2 * q


def test_poisson_sampling_is_reproducible() -> None:
    a = poisson_sample_clients(500, 0.1, generator=_gen(9))
    b = poisson_sample_clients(500, 0.1, generator=_gen(9))
    assert torch.equal(a, b)


# --- adaptive clipping ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("quantile", [0.3, 0.5, 0.9])
def test_adaptive_clipping_converges_to_target_quantile(quantile: float) -> None:
    n, m = 1000, 100.0
    g = _gen(6)
    # synthetic update norms: log-normal across clients, each client's norm fixed over rounds
    norms = torch.exp(torch.randn(n, generator=g, dtype=torch.float64) * 0.8)
    directions = torch.nn.functional.normalize(torch.randn(n, 8, generator=g, dtype=torch.float64), dim=1)
    deltas = (directions * norms.unsqueeze(1)).float()
    plan_sb = m / 20
    agg = ClientDPAggregator(
        dim=8,
        clip=AdaptiveClip(0.01, target_quantile=quantile, clip_lr=0.2, count_noise_std=plan_sb),
        sum_noise_multiplier=1.0,
        expected_clients=m,
    )
    clips = []
    for _ in range(400):
        idx = poisson_sample_clients(n, m / n, generator=g)
        agg.aggregate(deltas[idx], generator=g)
        clips.append(agg.clip)
    final = sum(clips[-100:]) / 100
    achieved = float((norms <= final).double().mean())
    assert abs(achieved - quantile) < 0.05, (final, achieved)
    assert abs(final / float(torch.quantile(norms, quantile)) - 1) < 0.15


def test_adaptive_clip_step_is_geometric() -> None:
    clip = AdaptiveClip(2.0, target_quantile=0.5, clip_lr=0.3, count_noise_std=1e-12)
    fraction = clip.step(noisy_count=10 - 0.5 * 10, expected_clients=10.0)  # all 10 below C: C must shrink
    assert fraction == pytest.approx(1.0)
    assert clip.clip == pytest.approx(2.0 * math.exp(-0.3 * 0.5))


def test_sum_noise_split_recovers_total_multiplier() -> None:
    z, sb = 1.1, 2.5
    z_sum = sum_noise_multiplier(z, sb)
    assert z_sum > z
    assert z_sum**-2 + (2 * sb) ** -2 == pytest.approx(z**-2, rel=1e-12)
    with pytest.raises(InvalidArgumentError, match="count_noise_std"):
        sum_noise_multiplier(2.0, 1.0)  # 2σ_b = z leaves no noise for the sum


def test_aggregator_state_round_trips() -> None:
    def make() -> ClientDPAggregator:
        adaptive = AdaptiveClip(1.0, target_quantile=0.5, clip_lr=0.2, count_noise_std=0.5)
        return ClientDPAggregator(dim=4, clip=adaptive, sum_noise_multiplier=1.2, expected_clients=3.0)

    agg = make()
    agg.aggregate(torch.ones(2, 4), generator=_gen(7))
    assert agg.clip != 1.0
    copy = make()
    copy.load_state_dict(agg.state_dict())
    a = agg.aggregate(torch.ones(2, 4) * 3, generator=_gen(8))
    b = copy.aggregate(torch.ones(2, 4) * 3, generator=_gen(8))
    assert torch.equal(a, b) and agg.clip == copy.clip


# --- accounting -------------------------------------------------------------------------------------------------


def test_ledger_equals_dpcalib_epsilon_for_the_same_event() -> None:
    plan = plan_client_dp(num_clients=1000, expected_clients=50, rounds=200, eps=2.0, delta=1e-5)
    z, q = plan.privacy.sigma, plan.privacy.q
    assert q == pytest.approx(0.05)
    assert z == dpcalib.calibrate_sigma(eps=2.0, delta=1e-5, q=0.05, steps=200)
    ledger = PrivacyLedger(plan.privacy)
    for rounds in range(1, 201):
        spent = ledger.charge_round()
        if rounds in (1, 57, 200):  # the ledger's ε is dpcalib's ε of the Poisson-sampled Gaussian over r rounds
            assert spent == pytest.approx(dpcalib.epsilon(sigma=z, q=q, steps=rounds, delta=1e-5), rel=1e-9)
    assert ledger.epsilon() <= 2.0
    assert not ledger.can_afford_next_round() or ledger.epsilon_after_next_round() <= 2.0


def test_adaptive_plan_spends_the_same_budget_with_less_noise_on_the_sum() -> None:
    fixed = plan_client_dp(num_clients=1000, expected_clients=100, rounds=50, eps=8.0, delta=1e-5)
    adaptive = plan_client_dp(num_clients=1000, expected_clients=100, rounds=50, eps=8.0, delta=1e-5, adaptive=True)
    assert adaptive.privacy == fixed.privacy  # the accountant sees the same event
    assert adaptive.count_noise_std == pytest.approx(5.0)  # m/20
    assert adaptive.sum_noise_multiplier > fixed.sum_noise_multiplier == fixed.privacy.sigma
    z, zs, sb = adaptive.privacy.sigma, adaptive.sum_noise_multiplier, adaptive.count_noise_std
    assert zs**-2 + (2 * sb) ** -2 == pytest.approx(z**-2, rel=1e-12)


def test_plan_with_given_sigma_keeps_it_and_the_default_delta() -> None:
    plan = plan_client_dp(num_clients=500, expected_clients=25, rounds=10, eps=8.0, sigma=1.0)
    assert plan.privacy.sigma == 1.0 and not plan.privacy.calibrated
    assert plan.privacy.delta == pytest.approx(500**-1.1)


def test_default_delta_and_warning() -> None:
    assert default_client_delta(1000) == pytest.approx(1000**-1.1)
    assert resolve_client_delta(None, 1000) < 1 / 1000
    with pytest.warns(ClientDeltaWarning, match="1/clients"):
        resolve_client_delta(1e-3, 1000)


# --- bad input --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"eps": 0.0}, "eps"),
        ({"eps": -1.0}, "eps"),
        ({"eps": 2.0, "delta": 1.5}, "delta"),
        ({"eps": 2.0, "delta": 0.0}, "delta"),
        ({"eps": 2.0, "expected_clients": 2000}, "expected_clients"),
        ({"eps": 2.0, "expected_clients": 0}, "expected_clients"),
        ({"eps": 2.0, "rounds": 0}, "rounds"),
        ({"eps": 2.0, "num_clients": 1}, "num_clients"),
        ({"eps": 2.0, "sigma": -1.0}, "sigma"),
        ({"eps": 2.0, "count_noise_std": 1.0}, "count_noise_std"),
        ({"eps": 0.5, "adaptive": True, "count_noise_std": 0.1}, "count_noise_std"),
    ],
)
def test_bad_plan_input_names_the_argument(kwargs: dict, name: str) -> None:
    base = {"num_clients": 1000, "expected_clients": 50, "rounds": 20, "delta": 1e-5, "eps": 2.0}
    with pytest.raises(InvalidArgumentError) as info:
        plan_client_dp(**{**base, **kwargs})
    assert info.value.name == name


def test_bad_aggregation_input() -> None:
    with pytest.raises(InvalidArgumentError, match="clip"):
        clip_deltas(torch.ones(2, 3), 0.0)
    with pytest.raises(InvalidArgumentError, match="deltas"):
        clip_deltas(torch.tensor([[1.0, float("nan")]]), 1.0)
    with pytest.raises(InvalidArgumentError, match="deltas"):
        clip_deltas(torch.ones(2, 3, 4), 1.0)
    agg = ClientDPAggregator(dim=3, clip=1.0, sum_noise_multiplier=1.0, expected_clients=2.0)
    with pytest.raises(InvalidArgumentError, match="dimension"):
        agg.aggregate(torch.ones(2, 4))
    with pytest.raises(InvalidArgumentError, match="q"):
        poisson_sample_clients(10, 1.5)
    with pytest.raises(InvalidArgumentError, match="target_quantile"):
        AdaptiveClip(1.0, target_quantile=1.0, clip_lr=0.2, count_noise_std=1.0)


# --- whole runs (--dp client) -----------------------------------------------------------------------------------

CLIENT_RUN = dict(dataset="mnist", train_samples=1500, test_samples=300, clients=30, partition="dirichlet", alpha=0.1,
                  rounds=3, local_steps=3, batch_size=10, lr=0.1, dp="client", expected_clients=10, eps=8.0,
                  clip=0.5, adaptive_clip=True, server_opt="adam", server_lr=0.01, seed=3)


def test_client_dp_run_resumes_exactly_with_clip_optimiser_and_ledger(data_root, tmp_path) -> None:
    whole = RunConfig(**CLIENT_RUN, data_dir=str(data_root), out=str(tmp_path / "whole"))
    summary = run(whole)
    cut = RunConfig(**CLIENT_RUN, data_dir=str(data_root), out=str(tmp_path / "cut"))
    with pytest.raises(KeyboardInterrupt):
        run(cut, progress=StopAt(3))
    resumed = run(cut, resume=True)
    a = torch.load(tmp_path / "whole" / CHECKPOINT, weights_only=True)
    b = torch.load(tmp_path / "cut" / CHECKPOINT, weights_only=True)
    assert torch.equal(a["server"]["params"], b["server"]["params"])
    assert torch.equal(a["server"]["optimizer"]["v"], b["server"]["optimizer"]["v"])
    assert a["aggregator"] == b["aggregator"] and a["ledger"] == b["ledger"]
    assert without_timing(metrics(tmp_path / "whole")) == without_timing(metrics(tmp_path / "cut"))
    assert resumed.test_accuracy == summary.test_accuracy
    rows = metrics(tmp_path / "whole")
    # the ledger: one Poisson-sampled Gaussian per round at q = 10/30, δ = 1/30^1.1 by default
    z, delta = rows[0]["sigma"], rows[0]["delta"]
    assert delta == pytest.approx(30**-1.1)
    for row in rows:
        expected = dpcalib.epsilon(sigma=z, q=1 / 3, steps=row["round"], delta=delta)
        assert row["epsilon"] == pytest.approx(expected, rel=1e-9)
        assert {"clip", "noise_std", "noisy_fraction_unclipped"} <= set(row)
    assert rows[-1]["epsilon"] <= 8.0
    assert rows[0]["clip"] == 0.5 and rows[1]["clip"] != 0.5  # the adaptive clip moved
    assert a["aggregator"]["clip"] != rows[-1]["clip"]  # the checkpoint holds the clip of the next round


@pytest.mark.slow
def test_client_dp_fedavg_learns_mnist_over_200_clients(data_root, tmp_path) -> None:
    """End to end, small: 200 non-IID clients, ~40 per round, client-level ε = 8; against the same run without DP."""
    common = dict(dataset="mnist", train_samples=12000, test_samples=1000, clients=200, partition="dirichlet",
                  alpha=0.5, rounds=12, local_steps=8, batch_size=16, lr=0.05, model="logreg", seed=1,
                  data_dir=str(data_root), server_momentum=0.5)
    private = run(RunConfig(**common, dp="client", expected_clients=40, eps=8.0, delta=1e-5, clip=0.5,
                            adaptive_clip=True, out=str(tmp_path / "dp")))
    plain = run(RunConfig(**common, dp="none", client_fraction=0.2, out=str(tmp_path / "plain")))
    assert private.epsilon is not None and private.epsilon <= 8.0 and private.rounds_completed == 12
    assert plain.test_accuracy > 0.8
    assert private.test_accuracy > 0.7


def test_cli_warns_in_one_line_when_delta_is_at_least_one_over_clients(data_root, tmp_path, capsys) -> None:
    out = tmp_path / "o"
    code = main(["run", "--dp", "client", "--dataset", "mnist", "--train-samples", "300", "--test-samples", "100",
                 "--clients", "10", "--expected-clients", "5", "--rounds", "1", "--local-steps", "1", "--batch-size",
                 "5", "--delta", "0.2", "--eps", "8", "--model", "logreg", "--data-dir", str(data_root),
                 "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 0
    warning = [line for line in err.splitlines() if "warning" in line]
    assert warning == [warning[0]] and warning[0].startswith("fltrain: warning: delta=0.2 >= 1/clients")
    assert json.loads((out / METRICS).read_text())["delta"] == 0.2
