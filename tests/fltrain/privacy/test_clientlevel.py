"""Client-level DP-FedAvg (fltrain.privacy.clientlevel): clipping, central and distributed noise, the fixed
denominator, adaptive clipping, accounting through dpcalib, and bad input."""

from __future__ import annotations

import math

import pytest
import torch

import dpcalib
from dpcalib.errors import InvalidArgumentError
from dpcalib.events import Gaussian, Neighbouring, PoissonSampled, SampledWithoutReplacement
from fltrain.privacy.clientlevel import AdaptiveClip, ClientLevel, clip_deltas, sum_noise_multiplier
from fltrain.privacy.cohort import FixedCohort, PoissonCohort
from fltrain.privacy.plan import PrivacyPlan
from fltrain.randomness import ReproducibleRandom, SecureRandom


def _plan(z: float, cohort) -> PrivacyPlan:
    """A plan with noise multiplier ``z`` whatever ε it costs (the mechanics, not the budget, are tested here)."""
    return PrivacyPlan(z, cohort.event(z), 1, 1e300, 1e-5, "rdp", cohort.neighbouring, False)


def _mode(z: float, *, cohort, dim: int, clip: float = 1.0, adaptive: AdaptiveClip | None = None,
          count_noise_std: float = 0.0, distributed: bool = False, rng=None, min_survivors=None) -> ClientLevel:
    return ClientLevel(cohort=cohort, rng=rng or SecureRandom(), plan=_plan(z, cohort), dim=dim, clip=clip,
                       adaptive=adaptive, count_noise_std=count_noise_std, distributed=distributed,
                       min_survivors=min_survivors)


def _release(mode: ClientLevel, deltas: torch.Tensor, summer=None) -> torch.Tensor:
    """One round's server update from the deltas of the cohort (summed in the clear unless ``summer``)."""
    messages = mode.client_message(deltas, torch.ones(len(deltas)))
    width = mode.message_width(mode.dim)
    if not len(deltas):
        total = torch.zeros(width, dtype=torch.float64)
    else:
        total = summer(messages, mode) if summer is not None else messages.sum(0)
    return mode.server_update(total)


def _var_bound(dim: int) -> float:
    """5 standard errors of the sample variance (relative) of ``dim`` Gaussians."""
    return 5 * math.sqrt(2 / dim)


# --- clipping ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("clip", [1e-3, 0.1, 1.0, 37.0])
def test_every_clipped_delta_has_norm_at_most_clip(clip: float) -> None:
    g = torch.Generator().manual_seed(0)
    scales = torch.logspace(-5, 5, 64, dtype=torch.float64).unsqueeze(1)
    deltas = (torch.randn(64, 1000, generator=g, dtype=torch.float64) * scales).float()
    deltas[0] = 0.0  # a client that did not move
    clipped, norms = clip_deltas(deltas, clip)
    out = torch.linalg.vector_norm(clipped.double(), dim=1)
    assert bool((out <= clip * (1 + 1e-6)).all())
    small = norms <= clip
    assert torch.equal(clipped[small], deltas[small])
    assert torch.allclose(out[~small], torch.full_like(out[~small], clip), rtol=1e-6)
    cos = torch.nn.functional.cosine_similarity(clipped[~small].double(), deltas[~small].double(), dim=1)
    assert torch.allclose(cos, torch.ones_like(cos), atol=1e-6)


# --- central noise and the fixed denominator -------------------------------------------------------------------


def test_central_noise_std_is_sigma_times_clip_over_the_expected_cohort() -> None:
    dim, clip, z, m = 200_000, 0.7, 1.3, 10.0
    mode = _mode(z, cohort=PoissonCohort(100, m), dim=dim, clip=clip)
    deltas = torch.randn(3, dim, generator=torch.Generator().manual_seed(1))  # norm ≈ 447 > C: all clipped
    clipped, _ = clip_deltas(deltas, clip)
    noise = _release(mode, deltas) * m - clipped.double().sum(0)  # the fixed denominator m, not the 3 present
    assert abs(float(noise.std()) / (z * clip) - 1) < _var_bound(dim) / 2
    assert abs(float(noise.mean())) < 5 * z * clip / math.sqrt(dim)
    assert mode.release() == {"clip": clip, "noise_std": pytest.approx(z * clip)}


def test_noise_is_released_when_no_client_is_sampled() -> None:
    mode = _mode(0.5, cohort=PoissonCohort(100, 4.0), dim=50_000, clip=2.0)
    update = _release(mode, torch.zeros(0, 50_000))
    assert abs(float(update.std() * 4.0) / 1.0 - 1) < _var_bound(50_000) / 2


# --- distributed noise: one distribution whatever the cohort -----------------------------------------------------


@pytest.mark.parametrize("k", [3, 4, 5, 7, 31])
def test_distributed_release_has_the_declared_variance_for_every_cohort_size(k: int) -> None:
    """The released noise comes from k public shares of variance (zC)²/t: (k/t)(zC)² with the default floor
    t = ⌊2k/3⌋ + 1 (at least the calibrated (zC)², as any t survivors guarantee), exactly (zC)² with t = k. Unlike a
    Poisson cohort, k is a setting, so the variance reveals nothing."""
    from fltrain.secagg.aggregate import SecureSum

    dim, z, clip = 6000, 1.3, 0.8
    for floor in (None, k):
        mode = _mode(z, cohort=FixedCohort(100, k), dim=dim, clip=clip, distributed=True, min_survivors=floor)
        assert len(mode.select()) == k  # every round has exactly k clients
        t = mode.min_survivors(k)
        assert t == (2 * k // 3 + 1 if floor is None else k)
        noise = _release(mode, torch.zeros(k, dim), SecureSum()).double() * k
        declared = mode.release()["noise_std"] ** 2
        assert declared == pytest.approx(k / t * (z * clip) ** 2, rel=1e-12) and declared >= (z * clip) ** 2
        assert abs(float(noise.var()) / declared - 1) < _var_bound(dim)
    assert floor == k and declared == pytest.approx((z * clip) ** 2)  # t = k: exactly the calibrated variance


@pytest.mark.parametrize("accountant", ["rdp", "pld"])
def test_distributed_ledger_equals_dpcalib_for_the_fixed_cohort_event(accountant: str) -> None:
    cohort = FixedCohort(200, 20)
    mode = ClientLevel.create(cohort=cohort, rng=SecureRandom(), dim=10, rounds=30, eps=4.0, delta=1e-5, clip=1.0,
                              accountant=accountant, distributed=True)
    z = mode.plan.sigma
    assert mode.plan.round_event == SampledWithoutReplacement(200, 20, Gaussian(z))
    assert mode.plan.neighbouring is Neighbouring.REPLACE_ONE
    for _ in range(30):
        spent = mode.charge_round()
    expected = dpcalib.event_epsilon(dpcalib.Repeated(SampledWithoutReplacement(200, 20, Gaussian(z)), 30),
                                     delta=1e-5, accountant=accountant, neighbouring="replace_one")
    assert spent == pytest.approx(expected, rel=1e-12) and spent <= 4.0
    assert z == dpcalib.calibrate_sigma_for(lambda s: dpcalib.Repeated(SampledWithoutReplacement(200, 20, Gaussian(s)),
                                                                       30), eps=4.0, delta=1e-5, accountant=accountant,
                                            neighbouring="replace_one")


def test_distributed_sum_and_count_match_the_central_ones_without_noise() -> None:
    from fltrain.secagg.aggregate import SecureSum

    k, dim = 7, 30
    deltas = torch.randn(k, dim, generator=torch.Generator().manual_seed(1)) * torch.tensor(
        [0.1, 0.5, 3.0, 0.2, 9.0, 0.3, 0.05]).unsqueeze(1)

    def make(distributed: bool) -> ClientLevel:
        return _mode(1e-9, cohort=FixedCohort(20, k), dim=dim, distributed=distributed, count_noise_std=1e-9,
                     adaptive=AdaptiveClip(1.0, target_quantile=0.5, clip_lr=0.2))

    secure, central = make(True), make(False)
    a = _release(secure, deltas, SecureSum())
    b = _release(central, deltas)
    assert float((a - b).abs().max()) < 1e-5  # clipped on the clients, summed under masks, same mean
    fraction = secure.release()["noisy_fraction_unclipped"]
    below = int((deltas.double().norm(dim=1) <= 1.0).sum())
    assert 0 < below < k
    assert fraction == pytest.approx((below - 0.5 * k) / k + 0.5, abs=1e-6)
    assert fraction == pytest.approx(central.release()["noisy_fraction_unclipped"], abs=1e-6)
    assert secure.clip == pytest.approx(central.clip) != 1.0


def test_distributed_noise_needs_a_fixed_cohort() -> None:
    with pytest.raises(InvalidArgumentError, match="fixed-size cohort"):
        _mode(1.0, cohort=PoissonCohort(100, 10.0), dim=4, distributed=True)
    with pytest.raises(InvalidArgumentError, match="min_survivors"):
        _mode(1.0, cohort=FixedCohort(100, 10), dim=4, distributed=True, min_survivors=11)


# --- adaptive clipping ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("quantile", [0.3, 0.5, 0.9])
def test_adaptive_clipping_converges_to_target_quantile(quantile: float) -> None:
    n, m = 1000, 100.0
    g = torch.Generator().manual_seed(6)
    norms = torch.exp(torch.randn(n, generator=g, dtype=torch.float64) * 0.8)
    directions = torch.nn.functional.normalize(torch.randn(n, 8, generator=g, dtype=torch.float64), dim=1)
    deltas = (directions * norms.unsqueeze(1)).float()
    mode = _mode(1.0, cohort=PoissonCohort(n, m), dim=8, clip=0.01, count_noise_std=m / 20,
                 adaptive=AdaptiveClip(0.01, target_quantile=quantile, clip_lr=0.2), rng=ReproducibleRandom(6))
    clips = []
    for _ in range(400):
        _release(mode, deltas[mode.select()])
        clips.append(mode.clip)
    final = sum(clips[-100:]) / 100
    achieved = float((norms <= final).double().mean())
    assert abs(achieved - quantile) < 0.05, (final, achieved)
    assert abs(final / float(torch.quantile(norms, quantile)) - 1) < 0.15


def test_adaptive_clip_step_is_geometric() -> None:
    clip = AdaptiveClip(2.0, target_quantile=0.5, clip_lr=0.3)
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


def test_mode_state_round_trips_and_holds_no_secret() -> None:
    def make(rng) -> ClientLevel:
        return _mode(1.2, cohort=PoissonCohort(10, 3.0), dim=4, count_noise_std=1.5, rng=rng,
                     adaptive=AdaptiveClip(1.0, target_quantile=0.5, clip_lr=0.2))

    mode = make(SecureRandom())
    _release(mode, torch.ones(2, 4))
    mode.charge_round()
    assert mode.clip != 1.0
    state = mode.state_dict()
    assert set(state) == {"ledger", "clip"}  # a secret source has no state to save
    copy = make(SecureRandom())
    copy.load_state_dict(state)
    assert copy.clip == mode.clip and copy.ledger.rounds == 1 and copy.epsilon() == mode.epsilon()


# --- accounting -------------------------------------------------------------------------------------------------


def test_poisson_ledger_equals_dpcalib_epsilon_for_the_same_event() -> None:
    mode = ClientLevel.create(cohort=PoissonCohort(1000, 50), rng=SecureRandom(), dim=4, rounds=200, eps=2.0,
                              delta=1e-5, clip=1.0, accountant="rdp")
    z = mode.plan.sigma
    assert mode.plan.round_event == PoissonSampled(0.05, Gaussian(z))
    assert z == dpcalib.calibrate_sigma(eps=2.0, delta=1e-5, q=0.05, steps=200)
    for rounds in range(1, 201):
        spent = mode.charge_round()
        if rounds in (1, 57, 200):
            assert spent == pytest.approx(dpcalib.epsilon(sigma=z, q=0.05, steps=rounds, delta=1e-5), rel=1e-9)
    assert spent <= 2.0 and not mode.can_afford_next_round()


def test_adaptive_plan_spends_the_same_budget_with_less_noise_on_the_sum() -> None:
    common = dict(cohort=PoissonCohort(1000, 100), dim=4, rounds=50, eps=8.0, delta=1e-5, clip=1.0, accountant="rdp")
    fixed = ClientLevel.create(rng=SecureRandom(), **common)
    adaptive = ClientLevel.create(rng=SecureRandom(), adaptive_clip=True, **common)
    assert adaptive.plan == fixed.plan  # the accountant sees the same event
    assert adaptive.count_noise_std == pytest.approx(5.0)  # m/20
    assert adaptive.sum_noise_multiplier > fixed.sum_noise_multiplier == fixed.plan.sigma
    z, zs, sb = adaptive.plan.sigma, adaptive.sum_noise_multiplier, adaptive.count_noise_std
    assert zs**-2 + (2 * sb) ** -2 == pytest.approx(z**-2, rel=1e-12)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"eps": 0.0}, "eps"),
        ({"delta": 1.5}, "delta"),
        ({"rounds": 0}, "rounds"),
        ({"sigma": -1.0}, "sigma"),
        ({"count_noise_std": 1.0}, "count_noise_std"),
        ({"eps": 0.5, "adaptive_clip": True, "count_noise_std": 0.1}, "count_noise_std"),
    ],
)
def test_bad_plan_input_names_the_argument(kwargs: dict, name: str) -> None:
    base = dict(cohort=PoissonCohort(1000, 50), dim=4, rounds=20, eps=2.0, delta=1e-5, clip=1.0, accountant="rdp")
    with pytest.raises(InvalidArgumentError) as info:
        ClientLevel.create(rng=SecureRandom(), **{**base, **kwargs})
    assert info.value.name == name


def test_bad_aggregation_input() -> None:
    with pytest.raises(InvalidArgumentError, match="clip"):
        clip_deltas(torch.ones(2, 3), 0.0)
    with pytest.raises(InvalidArgumentError, match="deltas"):
        clip_deltas(torch.tensor([[1.0, float("nan")]]), 1.0)
    with pytest.raises(InvalidArgumentError, match="deltas"):
        clip_deltas(torch.ones(2, 3, 4), 1.0)
    mode = _mode(1.0, cohort=PoissonCohort(10, 2.0), dim=3)
    with pytest.raises(InvalidArgumentError, match="dimension"):
        mode.client_message(torch.ones(2, 4), torch.ones(2))
    with pytest.raises(InvalidArgumentError, match="target_quantile"):
        AdaptiveClip(1.0, target_quantile=1.0, clip_lr=0.2)


# --- distributed discrete noise (noise="skellam") ---------------------------------------------------------------


def _skellam_mode() -> ClientLevel:
    return ClientLevel.create(cohort=FixedCohort(200, 20), rng=SecureRandom(), dim=100, rounds=30, eps=4.0,
                              delta=1e-5, clip=1.0, accountant="rdp", distributed=True, noise="skellam", bits=16)


def test_skellam_ledger_equals_dpcalib_for_the_accounted_discrete_event() -> None:
    mode = _skellam_mode()
    plan = mode.shares.plan
    assert mode.plan.round_event == SampledWithoutReplacement(200, 20, dpcalib.Skellam(plan.mu, plan.l1_sensitivity,
                                                                                        plan.l2_sensitivity))
    assert plan.min_survivors == 2 * 20 // 3 + 1 and plan.share_variance == pytest.approx(plan.mu / plan.min_survivors)
    for _ in range(30):
        spent = mode.charge_round()
    expected = dpcalib.event_epsilon(dpcalib.Repeated(mode.plan.round_event, 30), delta=1e-5, accountant="rdp",
                                     neighbouring="replace_one")
    assert spent == expected and spent <= 4.0
    assert mode.describe()["discrete"]["bits"] == 16


def test_skellam_round_through_secure_aggregation_releases_the_planned_noise() -> None:
    from fltrain.secagg.aggregate import SecureSum

    mode = _skellam_mode()
    deltas = torch.randn(20, 100) * 0.02
    deltas[0] *= 1000.0  # clipped to C = 1 by its client
    messages = mode.client_message(deltas, torch.ones(20))
    assert messages.shape == (20, mode.message_width(100)) == (20, 128)
    assert float(messages.min()) >= 0.0 and float(messages.max()) < 2.0**16  # ring elements, not floats
    update = _release(mode, deltas, SecureSum())
    clipped, _ = clip_deltas(deltas.to(torch.float64), 1.0)
    noise = (update - clipped.sum(0) / 20) * 20
    std = mode.release()["noise_std"]
    assert std == pytest.approx(mode.shares.noise_std(20)) and std >= mode.shares.plan.noise_std
    assert abs(float(noise.std()) / std - 1.0) < 0.3  # 100 coordinates: a loose check of the scale


def test_skellam_needs_distributed_fixed_clip_and_calibration() -> None:
    common = dict(cohort=FixedCohort(200, 20), rng=SecureRandom(), dim=10, rounds=3, eps=4.0, delta=1e-5, clip=1.0,
                  accountant="rdp")
    for bad in (dict(distributed=False, noise="skellam"), dict(distributed=True, noise="skellam", adaptive_clip=True),
                dict(distributed=True, noise="skellam", sigma=2.0), dict(distributed=True, noise="laplace")):
        with pytest.raises(InvalidArgumentError, match="noise"):
            ClientLevel.create(**common, **bad)
    with pytest.raises(InvalidArgumentError, match="bits"):
        ClientLevel.create(**common, distributed=True, noise="skellam", bits=4)
    with pytest.raises(InvalidArgumentError, match="Poisson rates"):  # 40 bits: shares beyond the sampler's range
        ClientLevel.create(**common, distributed=True, noise="skellam", bits=40)
    with pytest.raises(InvalidArgumentError, match="accountant"):
        ClientLevel.create(**dict(common, accountant="pld"), distributed=True, noise="skellam")
