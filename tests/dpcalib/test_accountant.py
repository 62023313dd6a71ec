import json
import math
import warnings

import numpy as np
import pytest

import dpcalib
from dpcalib.accountant import ACCOUNTANTS, RdpAccountant, accountant_from_state_dict, make_accountant
from dpcalib.errors import InvalidArgumentError, UnsupportedEventError
from dpcalib.events import (
    Composed,
    Gaussian,
    PoissonSampled,
    Repeated,
    SampledWithoutReplacement,
    ShuffledEpoch,
    dpsgd_event,
)
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
        RdpAccountant(neighbouring="add_remove").compose(event)
    with pytest.raises(UnsupportedEventError):
        RdpAccountant(sampler="shuffle", neighbouring="replace_one").compose(Gaussian(1.0)).compose(
            ShuffledEpoch(10, 2, Repeated(Gaussian(1.0), 2))
        )
    assert RdpAccountant(neighbouring="replace_one").compose(event).epsilon(1e-5) > 0
    with pytest.raises(UnsupportedEventError):
        RdpAccountant(neighbouring="replace_one").compose(PoissonSampled(0.1, Gaussian(1.0)))
    with pytest.raises(UnsupportedEventError):
        RdpAccountant().compose(PoissonSampled(0.1, Repeated(Gaussian(1.0), 2)))


# --- the noise multiplier is noise std / C for every sampler; the relation's sensitivity is applied inside ---
# Hand computations, with the sensitivity Δ (in units of C) written out: a Gaussian of noise std σC on a sum that
# moves by at most ΔC has RDP α Δ² / (2 σ²).
N, B, SIGMA, STEPS = 60_000, 256, 1.1, 7_000


def test_poisson_epsilon_by_hand_sensitivity_one():
    alpha = np.array([2.0, 8.0, 32.0])
    delta_sens = 1.0  # add/remove: one clipped contribution appears or disappears
    q = B / N
    # MTZ 2019 binomial expansion at integer α with noise multiplier σ/Δ
    s = SIGMA / delta_sens
    by_hand = np.array(
        [
            math.log(sum(math.comb(int(a), k) * (1 - q) ** (a - k) * q**k * math.exp(k * (k - 1) / (2 * s * s)) for k in range(int(a) + 1)))
            / (a - 1)
            for a in alpha
        ]
    )
    acc = RdpAccountant(sampler="poisson").compose(dpcalib.training_event("poisson", sigma=SIGMA, steps=STEPS, q=q))
    np.testing.assert_allclose(acc.rdp(alpha), STEPS * by_hand, rtol=1e-10)


def test_fixed_size_epsilon_by_hand_sensitivity_two():
    # Issue 11: n = 60,000, B = 256, σ = 1.1, 7,000 steps gave ε = 3.56 (sensitivity 1); the right answer is 17.07.
    delta_sens = 2.0  # replace-one: one clipped contribution x becomes y, ‖x - y‖ ≤ 2C
    gamma = B / N

    def wbk_theorem_9(a: int) -> float:  # Wang, Balle, Kasiviswanathan 2019, with ε(j) = j Δ² / (2σ²)
        eps = lambda j: j * delta_sens**2 / (2 * SIGMA**2)  # noqa: E731
        total = 1 + gamma**2 * math.comb(a, 2) * min(4 * (math.exp(eps(2)) - 1), 2 * math.exp(eps(2)))
        total += sum(2 * gamma**j * math.comb(a, j) * math.exp((j - 1) * eps(j)) for j in range(3, a + 1))
        return math.log(total) / (a - 1)

    alpha = [2, 3, 5, 9]
    acc = RdpAccountant(sampler="fixed").compose(
        dpcalib.training_event("fixed", sigma=SIGMA, steps=STEPS, dataset_size=N, batch_size=B)
    )
    np.testing.assert_allclose(acc.rdp(alpha), [STEPS * wbk_theorem_9(a) for a in alpha], rtol=1e-10)
    # the best order is α = 2 here, so ε follows from the improved conversion at α = 2 by hand
    r = STEPS * wbk_theorem_9(2)
    by_hand = r + math.log1p(-1 / 2) - (math.log(1e-5) + math.log(2)) / (2 - 1)
    eps, order = acc.epsilon_and_order(1e-5)
    assert order == 2.0 and eps == pytest.approx(by_hand, rel=1e-12)
    assert eps == pytest.approx(17.07, abs=0.01)


def test_shuffle_epsilon_by_hand_one_gaussian_per_epoch_sensitivity_two():
    delta_sens = 2.0  # replace-one, and no amplification: the changed record is in one batch per epoch
    epochs = math.ceil(STEPS / (N // B))  # 7000 steps of 234 full batches: 30 epochs touched
    assert dpcalib.shuffled_epochs(STEPS, N, B) == epochs == 30
    event = dpcalib.training_event("shuffle", sigma=SIGMA, steps=STEPS, dataset_size=N, batch_size=B)
    acc = RdpAccountant(sampler="shuffle").compose(event)
    alpha = np.array([1.5, 2.0, 7.25])
    np.testing.assert_allclose(acc.rdp(alpha), epochs * alpha * delta_sens**2 / (2 * SIGMA**2), rtol=1e-14)
    # the composition of 30 Gaussians is the Gaussian with μ = sqrt(30)·Δ/σ: its exact ε(δ) (Balle, Wang 2018)
    # is a lower bound for any sound accountant, and the PLD accountant is close to it
    mu = math.sqrt(epochs) * delta_sens / SIGMA
    exact = _gaussian_exact_epsilon(mu, 1e-5)
    assert exact <= acc.epsilon(1e-5)
    pld_eps = make_accountant("pld", sampler="shuffle").compose(event).epsilon(1e-5)
    assert exact <= pld_eps <= exact * 1.01


def _gaussian_exact_epsilon(mu: float, delta: float) -> float:
    """ε(δ) of the Gaussian mechanism with μ = sensitivity / noise std (Balle, Wang 2018, Theorem 8):
    δ(ε) = Φ(μ/2 - ε/μ) - e^ε Φ(-μ/2 - ε/μ), solved for ε."""
    from scipy import optimize, special

    def gap(eps: float) -> float:
        return special.ndtr(mu / 2 - eps / mu) - math.exp(eps + special.log_ndtr(-mu / 2 - eps / mu)) - delta

    return optimize.brentq(gap, 0.0, mu * mu / 2 + mu * math.sqrt(2 * math.log(1 / delta)), xtol=1e-14, rtol=1e-14)


@pytest.mark.parametrize("steps", [1, 100, 10_000])
@pytest.mark.parametrize("sigma", [0.8, 5.0, 40.0])
def test_q_one_is_never_below_the_exact_gaussian(steps, sigma):
    # q = 1: T Gaussian steps are one Gaussian with μ = sqrt(T)/σ; every sound bound is ≥ its exact ε(δ)
    exact = _gaussian_exact_epsilon(math.sqrt(steps) / sigma, 1e-5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ours = dpcalib.epsilon(sigma=sigma, q=1.0, steps=steps, delta=1e-5)
    assert exact <= ours <= 1.5 * exact + 0.05


def test_ledger_records_its_sampler_and_refuses_others():
    poisson = dpcalib.training_event("poisson", sigma=1.0, steps=10, q=0.01)
    fixed = dpcalib.training_event("fixed", sigma=1.0, steps=10, dataset_size=1000, batch_size=10)
    shuffle = dpcalib.training_event("shuffle", sigma=1.0, steps=10, dataset_size=1000, batch_size=10)
    declared = make_accountant("rdp", sampler="fixed")
    assert declared.neighbouring.value == "replace_one" and declared.state_dict()["options"]["sampler"] == "fixed"
    for other in (poisson, shuffle):
        with pytest.raises(InvalidArgumentError) as info:
            declared.compose(other)
        assert info.value.name == "event" and declared.history == []
    adopted = RdpAccountant().compose(Gaussian(3.0)).compose(shuffle)  # the first sampled event settles it
    assert adopted.sampler.value == "shuffle" and adopted.neighbouring.value == "replace_one"
    with pytest.raises(InvalidArgumentError):
        adopted.compose(fixed)
    with pytest.raises(InvalidArgumentError):
        RdpAccountant().compose(Composed((poisson, fixed)))
    with pytest.raises(InvalidArgumentError) as info:
        RdpAccountant(sampler="poisson", neighbouring="replace_one")
    assert info.value.name == "neighbouring"


def test_state_dict_of_another_sampler_is_refused():
    state = json.loads(json.dumps(make_accountant("rdp").compose(dpsgd_event(sigma=1.0, q=0.01, steps=5)).state_dict()))
    assert state["options"]["sampler"] == "poisson"
    assert accountant_from_state_dict(state, sampler="poisson").history == accountant_from_state_dict(state).history
    with pytest.raises(InvalidArgumentError) as info:
        accountant_from_state_dict(state, sampler="shuffle")
    assert info.value.name == "state"
    fresh = json.loads(json.dumps(RdpAccountant().state_dict()))  # no sampler recorded yet: takes the one given
    assert accountant_from_state_dict(fresh, sampler="fixed").sampler.value == "fixed"
    with pytest.raises(InvalidArgumentError) as info:
        accountant_from_state_dict(state, sampler="minibatch")
    assert info.value.name == "sampler"


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
