"""The one plan builder and the ledger agree with dpcalib for the same event; budgets are never exceeded."""

from __future__ import annotations

import functools

import pytest

import dpcalib
from dpcalib.errors import UnreachableTargetError
from dpcalib.events import Gaussian, Neighbouring, SampledWithoutReplacement
from fltrain.privacy.plan import PrivacyLedger, make_plan
from fltrain.privacy.record import record_round_event

ROUND = functools.partial(record_round_event, q=0.01, local_steps=50)
PLAN = dict(eps=4.0, delta=1e-5, rounds=6)


@pytest.mark.parametrize("accountant", ["rdp", "pld"])
def test_calibrated_plan_meets_the_target_and_ledger_equals_dpcalib(accountant):
    plan = make_plan(ROUND, **PLAN, accountant=accountant)
    assert plan.calibrated
    assert plan.sigma == dpcalib.calibrate_sigma(eps=4.0, delta=1e-5, q=0.01, steps=300, accountant=accountant)
    ledger = PrivacyLedger(plan)
    assert ledger.epsilon() == 0.0
    spent = []
    for _ in range(plan.rounds):
        assert ledger.can_afford_next_round()
        spent.append(ledger.charge_round())
    assert spent == sorted(spent)  # ε only grows
    for r, eps in enumerate(spent, start=1):
        expected = dpcalib.epsilon(sigma=plan.sigma, q=0.01, steps=50 * r, delta=1e-5, accountant=accountant)
        assert eps == pytest.approx(expected, rel=1e-9)
    assert spent[-1] <= 4.0
    assert not ledger.can_afford_next_round()  # a calibrated plan has no room for a seventh round


def test_explicit_sigma_stops_before_exceeding_the_budget():
    sigma = dpcalib.calibrate_sigma(eps=4.0, delta=1e-5, q=0.01, steps=150)  # enough noise for 3 rounds of 50
    plan = make_plan(ROUND, **PLAN, accountant="rdp", sigma=sigma)
    assert not plan.calibrated and plan.sigma == sigma
    ledger = PrivacyLedger(plan)
    while ledger.can_afford_next_round():
        ledger.charge_round()
    assert ledger.rounds == 3
    assert ledger.epsilon() <= 4.0 < ledger.epsilon_after_next_round()


def test_sigma_too_small_for_one_round_is_refused():
    with pytest.raises(UnreachableTargetError, match="one round"):
        make_plan(ROUND, **PLAN, accountant="rdp", sigma=0.2)


def test_replace_one_plan_is_accounted_under_replace_one():
    def event(sigma):
        return SampledWithoutReplacement(1000, 50, Gaussian(sigma))

    plan = make_plan(event, eps=2.0, delta=1e-5, rounds=40, accountant="rdp", neighbouring=Neighbouring.REPLACE_ONE)
    ledger = PrivacyLedger(plan)
    for _ in range(40):
        ledger.charge_round()
    direct = dpcalib.make_accountant("rdp", neighbouring="replace_one").compose(event(plan.sigma), 40)
    assert ledger.epsilon() == pytest.approx(direct.epsilon(1e-5), rel=1e-12) and ledger.epsilon() <= 2.0
    assert plan.describe()["neighbouring"] == "replace_one"


def test_ledger_round_trips_through_state_dict():
    plan = make_plan(ROUND, **PLAN, accountant="rdp")
    ledger = PrivacyLedger(plan)
    ledger.charge_round()
    ledger.charge_round()
    again = PrivacyLedger.from_state_dict(plan, ledger.state_dict())
    assert again.rounds == 2 and again.epsilon() == ledger.epsilon()
    assert again.charge_round() == ledger.charge_round()
