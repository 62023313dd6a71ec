import json
import warnings

import numpy as np
import pytest

import dpcalib
from dpcalib.accountant import ACCOUNTANTS, RdpAccountant, accountant_from_state_dict, make_accountant
from dpcalib.errors import InvalidArgumentError, UnsupportedEventError
from dpcalib.events import Composed, Gaussian, PoissonSampled, Repeated, SampledWithoutReplacement, dpsgd_event
from dpcalib.rdp import DEFAULT_ORDERS, gaussian_rdp, poisson_gaussian_rdp


def test_repeated_is_count_times_the_curve():
    acc = RdpAccountant().compose(dpsgd_event(sigma=1.0, q=0.01, steps=1000))
    np.testing.assert_allclose(acc.rdp(DEFAULT_ORDERS), 1000 * poisson_gaussian_rdp(0.01, 1.0, DEFAULT_ORDERS), rtol=1e-14)


def test_step_by_step_equals_repeated():
    one = RdpAccountant()
    for _ in range(50):
        one.compose(PoissonSampled(0.02, Gaussian(0.8)))
    assert len(one.history) == 1 and one.history[0][1] == 50
    many = RdpAccountant().compose(PoissonSampled(0.02, Gaussian(0.8)), count=50)
    assert one.epsilon(1e-5) == many.epsilon(1e-5)


def test_heterogeneous_phases_add_up():
    phases = Composed((dpsgd_event(sigma=1.0, q=0.01, steps=300), dpsgd_event(sigma=2.0, q=0.05, steps=200), Gaussian(10.0)))
    acc = RdpAccountant().compose(phases)
    expected = (
        300 * poisson_gaussian_rdp(0.01, 1.0, DEFAULT_ORDERS)
        + 200 * poisson_gaussian_rdp(0.05, 2.0, DEFAULT_ORDERS)
        + gaussian_rdp(10.0, DEFAULT_ORDERS)
    )
    np.testing.assert_allclose(acc.rdp(DEFAULT_ORDERS), expected, rtol=1e-14)
    alone = RdpAccountant().compose(dpsgd_event(sigma=1.0, q=0.01, steps=300)).epsilon(1e-5)
    assert acc.epsilon(1e-5) > alone


def test_epsilon_delta_consistent_and_order_reported():
    acc = RdpAccountant().compose(dpsgd_event(sigma=1.0, q=0.01, steps=1000))
    eps, order = acc.epsilon_and_order(1e-5)
    assert 1.1 < order < 1024 and eps == acc.epsilon(1e-5)
    delta, _ = acc.delta_and_order(eps)
    assert delta <= 1e-5 * (1 + 1e-6)
    assert acc.delta(eps * 1.1) < delta


def test_classic_conversion_is_looser():
    event = dpsgd_event(sigma=1.0, q=0.01, steps=1000)
    tight = RdpAccountant().compose(event).epsilon(1e-5)
    classic = RdpAccountant(conversion="classic").compose(event).epsilon(1e-5)
    assert classic > tight


def test_empty_accountant_spends_nothing():
    assert RdpAccountant().epsilon(1e-5) == 0.0


def test_without_replacement_needs_replace_one():
    event = Repeated(SampledWithoutReplacement(1000, 10, Gaussian(1.0)), 100)
    with pytest.raises(UnsupportedEventError):
        RdpAccountant().compose(event)
    assert RdpAccountant(neighbouring="replace_one").compose(event).epsilon(1e-5) > 0
    with pytest.raises(UnsupportedEventError):
        RdpAccountant(neighbouring="replace_one").compose(PoissonSampled(0.1, Gaussian(1.0)))
    with pytest.raises(UnsupportedEventError):
        RdpAccountant().compose(PoissonSampled(0.1, Repeated(Gaussian(1.0), 2)))


def test_state_dict_round_trips_exactly_through_json():
    acc = RdpAccountant(orders=[1.5, 2.0, 8.0, 32.0], conversion="classic")
    acc.compose(dpsgd_event(sigma=1.1, q=0.01, steps=10)).compose(Gaussian(5.0), 3)
    state = json.loads(json.dumps(acc.state_dict()))
    back = accountant_from_state_dict(state)
    assert isinstance(back, RdpAccountant)
    assert back.state_dict() == acc.state_dict()
    assert back.history == acc.history and back.orders == acc.orders
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert back.epsilon(1e-5) == acc.epsilon(1e-5)
    assert RdpAccountant.from_state_dict(state).history == acc.history


def test_registry_and_factory():
    assert ACCOUNTANTS["rdp"] is RdpAccountant
    acc = make_accountant("rdp", orders=[2.0, 4.0])
    assert isinstance(acc, RdpAccountant) and acc.orders == (2.0, 4.0)
    assert dpcalib.make_accountant is make_accountant


@pytest.mark.parametrize(
    "call,name",
    [
        (lambda: make_accountant("moments"), "accountant"),
        (lambda: make_accountant("rdp", ordres=[2.0]), "ordres"),
        (lambda: RdpAccountant(orders=[0.5]), "orders"),
        (lambda: RdpAccountant(neighbouring="swap"), "neighbouring"),
        (lambda: RdpAccountant(conversion="optimal"), "conversion"),
        (lambda: RdpAccountant().compose(Gaussian(1.0), count=0), "count"),
        (lambda: RdpAccountant().compose("gaussian"), "event"),
        (lambda: RdpAccountant().epsilon(0.0), "delta"),
        (lambda: RdpAccountant().delta(-1.0), "eps"),
        (lambda: accountant_from_state_dict({"accountant": "nope"}), "accountant"),
        (lambda: RdpAccountant.from_state_dict({"accountant": "other"}), "state"),
        (lambda: RdpAccountant.from_state_dict({"accountant": "rdp", "history": [{"event": {}}]}), "state"),
    ],
)
def test_bad_arguments_are_named(call, name):
    with pytest.raises(InvalidArgumentError) as info:
        call()
    assert info.value.name == name


def test_unknown_accountant_message_lists_registered_ones():
    with pytest.raises(InvalidArgumentError, match="'rdp'"):
        make_accountant("moments")
