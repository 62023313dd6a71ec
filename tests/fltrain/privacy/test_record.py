"""Record-level DP: nothing the server computes depends on a client's record count; the plan is DP-SGD's event
for the run's sampler."""

from __future__ import annotations

import pytest
import torch

import dpcalib
from dpcalib.events import Gaussian, PoissonSampled, Repeated, SampledWithoutReplacement, ShuffledEpoch
from fltrain.client import LocalTrainer, LocalTraining
from fltrain.dpsgd import make_engine
from fltrain.models import ParamLayout, logistic_regression
from fltrain.privacy.cohort import FixedCohort
from fltrain.privacy.plan import PrivacyLedger
from fltrain.privacy.record import RecordLevel
from fltrain.randomness import SecureRandom


def _mode(**overrides) -> RecordLevel:
    settings = dict(cohort=FixedCohort(5, 3), rng=SecureRandom(), q=0.02, local_steps=7, rounds=4, eps=3.0,
                    delta=1e-5, clip=0.4, accountant="rdp")
    return RecordLevel.create(**{**settings, **overrides})


def test_plan_is_the_dpsgd_event_of_one_client():
    mode = _mode()
    sigma = mode.plan.sigma
    assert mode.plan.round_event == Repeated(PoissonSampled(0.02, Gaussian(sigma)), 7)
    assert sigma == dpcalib.calibrate_sigma(eps=3.0, delta=1e-5, q=0.02, steps=28)
    assert mode.describe()["plan"]["neighbouring"] == "add_remove"
    assert mode.describe()["guarantee"].startswith("record-level")


def test_clients_train_with_the_public_rate_and_divisor_whatever_their_size():
    mode = _mode()
    base = LocalTraining(local_steps=7, batch_size=20, lr=0.1, momentum=0.0)
    local = mode.local_training(base)
    assert (local.clip, local.noise_multiplier, local.rate) == (0.4, mode.plan.sigma, 0.02)
    model = logistic_regression((1, 28, 28))
    members = [torch.arange(0, 100), torch.arange(100, 1100)]  # 100 and 1000 records
    trainer = LocalTrainer(ParamLayout.of(model), make_engine(model), torch.zeros(1100, 1, 28, 28),
                           torch.zeros(1100, dtype=torch.int64), members, local)
    assert torch.equal(trainer.rates, torch.full((2,), 0.02, dtype=torch.float64))  # not batch_size / n_k


def test_server_mean_is_uniform_over_the_public_cohort():
    mode = _mode()
    deltas = torch.randn(3, 6, dtype=torch.float64)
    a = mode.client_message(deltas, torch.tensor([10, 20, 30]))
    b = mode.client_message(deltas, torch.tensor([11, 20, 30]))  # one record more at client 0
    assert torch.equal(a, b)  # the counts do not enter
    assert torch.allclose(mode.server_update(a.sum(0)), deltas.mean(0))


def test_explicit_sigma_too_small_for_a_round_is_refused():
    with pytest.raises(dpcalib.UnreachableTargetError, match="7 steps at q=0.02"):
        _mode(sigma=0.1)


SIZES = [300, 240, 500]  # the clients' record counts; the smallest, 240, is the accounted one


def _batched(sampler: str, **overrides) -> RecordLevel:
    return _mode(q=None, sampler=sampler, batch_size=20, client_sizes=SIZES, **overrides)


@pytest.mark.parametrize("accountant", ["rdp", "pld"])
@pytest.mark.parametrize("sampler, leaf", [
    ("fixed", lambda s: Repeated(SampledWithoutReplacement(240, 20, Gaussian(s)), 7)),
    ("shuffle", lambda s: Repeated(ShuffledEpoch(240, 20, Gaussian(s)), 1)),  # 7 steps of the 12 batches of an epoch
])
def test_sigma_is_dpcalibs_calibration_of_the_smallest_clients_event(sampler, leaf, accountant):
    mode = _batched(sampler, accountant=accountant)
    sigma = mode.plan.sigma
    assert mode.plan.round_event == leaf(sigma)
    assert sigma == dpcalib.calibrate_sigma_for(lambda s: Repeated(leaf(s), 4), eps=3.0, delta=1e-5,
                                                accountant=accountant, neighbouring="replace_one")
    assert mode.plan.neighbouring.value == "replace_one" and mode.plan.sampler.value == sampler
    assert mode.describe()["guarantee"].startswith("record-level, replace-one")
    assert mode.describe()["smallest_client_records"] == 240


def test_fixed_sampler_is_accounted_with_the_replace_one_sensitivity_2c():
    mode = _batched("fixed")
    sigma = mode.plan.sigma
    for _ in range(4):
        mode.charge_round()
    # by hand: Wang-Balle-Kasiviswanathan's RDP of a sensitivity-1 query, so the noise per unit of sensitivity is
    # std / (2C) = sigma / 2, for 4 rounds x 7 steps, converted at delta
    sensitivity = 2.0
    curve = lambda orders: 28 * dpcalib.without_replacement_gaussian_rdp(240, 20, sigma / sensitivity, orders)
    assert mode.epsilon() == pytest.approx(dpcalib.optimise_epsilon(curve, 1e-5).value, rel=1e-9)
    assert mode.epsilon() <= 3.0


@pytest.mark.parametrize("accountant", ["rdp", "pld"])
def test_ledger_epsilon_is_dpcalibs_epsilon_of_the_accounted_event(accountant):
    for sampler in ("poisson", "fixed", "shuffle"):
        mode = _mode(accountant=accountant) if sampler == "poisson" else _batched(sampler, accountant=accountant)
        for rounds in (1, 2):
            mode.charge_round()
            expected = dpcalib.event_epsilon(Repeated(mode.plan.round_event, rounds), delta=1e-5,
                                             accountant=accountant, neighbouring=mode.plan.neighbouring)
            assert mode.epsilon() == expected


@pytest.mark.parametrize("accountant", ["rdp", "pld"])
def test_the_smallest_client_is_the_worst(accountant):
    """A larger client (rate B/n_k below the accounted B/n_min) spends no more than the ledger charges."""
    mode = _batched("fixed", accountant=accountant)
    sigma = mode.plan.sigma
    charged = dpcalib.event_epsilon(mode.plan.run_event, delta=1e-5, accountant=accountant,
                                    neighbouring="replace_one")
    for n in (241, 300, 500, 5000):
        larger = Repeated(Repeated(SampledWithoutReplacement(n, 20, Gaussian(sigma)), 7), 4)
        assert dpcalib.event_epsilon(larger, delta=1e-5, accountant=accountant, neighbouring="replace_one") <= charged
    full = dpcalib.event_epsilon(Repeated(Gaussian(sigma), 28), delta=1e-5, neighbouring="replace_one")
    assert charged <= full  # a batch of every record (n_min = B) is the plain Gaussian, the worst of all


def test_batched_clients_train_with_the_sampler_and_the_plans_batch_size():
    mode = _batched("shuffle")
    local = mode.local_training(LocalTraining(local_steps=7, batch_size=20, lr=0.1, momentum=0.0))
    assert (local.sampler, local.batch_size, local.rate, local.clip) == ("shuffle", 20, None, 0.4)
    assert local.noise_multiplier == mode.plan.sigma


def test_batches_above_the_smallest_client_and_missing_sizes_are_refused():
    with pytest.raises(dpcalib.InvalidArgumentError, match=r"batch_size.*\[1, 240\]"):
        _mode(q=None, sampler="fixed", batch_size=241, client_sizes=SIZES)
    with pytest.raises(dpcalib.InvalidArgumentError, match="client_sizes"):
        _mode(q=None, sampler="shuffle", batch_size=20)


def test_a_ledger_of_another_sampler_is_refused():
    poisson = _mode()
    poisson.charge_round()
    with pytest.raises(dpcalib.InvalidArgumentError, match="'fixed' sampler.*records 'poisson'"):
        PrivacyLedger.from_state_dict(_batched("fixed").plan, poisson.ledger.state_dict())
