"""Record-level DP: nothing the server computes depends on a client's record count; the plan is DP-SGD's event."""

from __future__ import annotations

import pytest
import torch

import dpcalib
from dpcalib.events import Gaussian, PoissonSampled, Repeated
from fltrain.client import LocalTrainer, LocalTraining
from fltrain.dpsgd import make_engine
from fltrain.models import ParamLayout, logistic_regression
from fltrain.privacy.cohort import FixedCohort
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
