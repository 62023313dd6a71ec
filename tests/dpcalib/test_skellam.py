"""The Skellam mechanism: its RDP bounds against direct Rényi divergences of the pmf, the accountant, the plan."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
from scipy import special, stats

import dpcalib
from dpcalib import cli
from dpcalib.errors import InvalidArgumentError, UnreachableTargetError, UnsupportedEventError
from dpcalib.events import Gaussian, PoissonSampled, Repeated, Skellam, event_from_dict, event_to_dict
from dpcalib.rdp import DEFAULT_ORDERS, poisson_gaussian_rdp


def renyi(order: int, mu: float, shift: int, q: float = 1.0, reverse: bool = False) -> float:
    """D_α(P‖Q) of the 1-d Skellam mechanism, summed over the integers: Q = Sk(μ/2, μ/2), P = (1 − q)Q + q·Q(· − shift)
    (add one contribution), or D_α(Q‖P) (remove it) with ``reverse``."""
    k = np.arange(-600, 601)
    log_q = stats.skellam.logpmf(k, mu / 2, mu / 2)
    shifted = stats.skellam.logpmf(k - shift, mu / 2, mu / 2)
    log_p = shifted if q == 1.0 else np.logaddexp(math.log1p(-q) + log_q, math.log(q) + shifted)
    if reverse:
        log_p, log_q = log_q, log_p
    finite = np.isfinite(log_p) & np.isfinite(log_q)  # the tails dropped only make the divergence smaller
    return float(special.logsumexp(order * log_p[finite] + (1 - order) * log_q[finite]) / (order - 1))


@pytest.mark.parametrize("mu", [0.5, 3.0, 20.0])
@pytest.mark.parametrize("shift", [1, 2])
def test_unsampled_bound_is_never_below_the_divergence(mu, shift):
    orders = np.array([2, 3, 5, 8])
    bound = dpcalib.skellam_rdp(mu, shift, shift, orders)
    exact = [renyi(a, mu, shift) for a in orders]
    assert np.all(bound >= exact)
    # and it approaches the Gaussian's α Δ²/(2μ) from above
    assert np.all(bound >= orders * shift**2 / (2 * mu))


def test_vector_sensitivities_add_over_coordinates():
    """Shift (1, 1): Δ2 = √2, Δ1 = 2; the divergence of independent coordinates is twice the 1-d one."""
    for order in (2, 4):
        assert dpcalib.skellam_rdp(5.0, 2.0, math.sqrt(2.0), [order])[0] >= 2 * renyi(order, 5.0, 1)


@pytest.mark.parametrize("q", [0.05, 0.3])
@pytest.mark.parametrize("reverse", [False, True])
def test_subsampled_bound_is_never_below_either_direction(q, reverse):
    orders = np.array([2, 3, 4, 6])
    for mu in (1.0, 8.0):
        bound = dpcalib.poisson_skellam_rdp(q, mu, 1.0, 1.0, orders)
        exact = [renyi(a, mu, 1, q, reverse) for a in orders]
        assert np.all(bound >= exact)


def test_q_one_is_the_unsampled_bound_and_sampling_never_hurts():
    orders = DEFAULT_ORDERS
    np.testing.assert_array_equal(dpcalib.poisson_skellam_rdp(1.0, 7.0, 3.0, 2.0, orders),
                                  dpcalib.skellam_rdp(7.0, 3.0, 2.0, orders))
    assert np.all(dpcalib.poisson_skellam_rdp(0.01, 7.0, 3.0, 2.0, orders) <= dpcalib.skellam_rdp(7.0, 3.0, 2.0, orders))


def test_general_subsampling_bound_is_above_the_exact_gaussian_one():
    """Large μ: the Skellam bound tends to the Gaussian's, and Zhu–Wang's general bound must stay above the
    exact subsampled Gaussian (Mironov, Talwar, Zhang 2019) at integer orders."""
    orders = np.arange(2.0, 64.0)
    mu = 1e8
    skellam = dpcalib.poisson_skellam_rdp(0.01, mu, 1e4, 1e4, orders)
    gaussian = poisson_gaussian_rdp(0.01, 1.0, orders)
    assert np.all(skellam >= gaussian)


def test_monotone_in_noise_rate_and_order():
    orders = DEFAULT_ORDERS
    loud = dpcalib.poisson_skellam_rdp(0.1, 100.0, 5.0, 2.0, orders)
    quiet = dpcalib.poisson_skellam_rdp(0.1, 50.0, 5.0, 2.0, orders)
    dense = dpcalib.poisson_skellam_rdp(0.2, 100.0, 5.0, 2.0, orders)
    assert np.all(loud <= quiet) and np.all(loud <= dense)
    assert np.all(np.diff(loud) >= 0.0) and np.all(np.diff(dpcalib.skellam_rdp(100.0, 5.0, 2.0, orders)) >= 0.0)


def test_tiny_rate_keeps_a_positive_curve():
    curve = dpcalib.poisson_skellam_rdp(1e-12, 1e6, 10.0, 10.0, DEFAULT_ORDERS)
    assert np.all(curve > 0.0) and np.all(np.isfinite(curve))


def test_accountant_composes_and_round_trips():
    event = Repeated(PoissonSampled(0.05, Skellam(400.0, 30.0, 10.0)), 200)
    acc = dpcalib.RdpAccountant().compose(event)
    eps = acc.epsilon(1e-5)
    # the accountant adds the curves: ε equals the conversion of 200 × the subsampled curve
    direct = dpcalib.optimise_epsilon(lambda a: 200 * dpcalib.poisson_skellam_rdp(0.05, 400.0, 30.0, 10.0, a), 1e-5).value
    assert eps == pytest.approx(direct, rel=1e-9)
    state = json.loads(json.dumps(acc.state_dict()))
    assert dpcalib.accountant_from_state_dict(state).epsilon(1e-5) == eps
    assert event_from_dict(json.loads(json.dumps(event_to_dict(event)))) == event


def test_replace_one_doubles_the_sensitivities():
    noise = Skellam(400.0, 30.0, 10.0)
    replace = dpcalib.RdpAccountant(neighbouring="replace_one").compose(noise).rdp([2, 5])
    np.testing.assert_allclose(replace, dpcalib.skellam_rdp(400.0, 60.0, 20.0, [2, 5]))


def test_unsupported_combinations_are_typed():
    with pytest.raises(UnsupportedEventError):
        dpcalib.PldAccountant().compose(Skellam(10.0, 2.0, 1.0))
    with pytest.raises(UnsupportedEventError):
        dpcalib.RdpAccountant(neighbouring="replace_one").compose(PoissonSampled(0.1, Skellam(10.0, 2.0, 1.0)))
    with pytest.raises(UnsupportedEventError):
        dpcalib.RdpAccountant(neighbouring="add_remove").compose(dpcalib.SampledWithoutReplacement(10, 2, Skellam(10.0, 2.0, 1.0)))


@pytest.mark.parametrize(
    "args, name",
    [((0.0, 1.0, 1.0), "mu"), ((1.0, 1.0, 2.0), "l1_sensitivity"), ((1.0, 1.0, float("nan")), "l2_sensitivity"),
     ((True, 1.0, 1.0), "mu"), ((1e-300, 1.0, 1.0), "mu"), ((1e300, 1e300, 1e-300), "mu"), ((1e-100, 1e120, 1.0), "mu")],
)
def test_bad_events_name_the_argument(args, name):
    with pytest.raises(InvalidArgumentError) as err:
        Skellam(*args)
    assert err.value.name == name


@pytest.mark.parametrize("mu, l1, l2", [(1e-30, 1e170, 1e-20), (1e-200, 1.0, 1.0), (1e12, 1e6, 1.0), (1e-10, 1e190, 1e-5)])
@pytest.mark.parametrize("q", [1e-12, 0.5, 1.0])
def test_extremes_of_the_domain_give_finite_answers(mu, l1, l2, q):
    noise = Skellam(mu, l1, l2)
    event = Repeated(noise if q == 1.0 else PoissonSampled(q, noise), 10**12)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no overflow or division by zero inside
        warnings.simplefilter("ignore", dpcalib.OrderRangeWarning)
        acc = dpcalib.RdpAccountant().compose(event)
        eps, delta = acc.epsilon(1e-5), acc.delta(1.0)
    assert math.isfinite(eps) and eps >= 0.0 and 0.0 <= delta <= 1.0


PLAN = dict(eps=4.0, delta=1e-5, q=0.1, steps=50, clip=1.0, dim=1000, clients=20, min_survivors=14)


def test_plan_meets_target_and_wrap_bound():
    plan = dpcalib.plan_skellam(bits=16, **PLAN)
    assert dpcalib.RdpAccountant().compose(plan.event).epsilon(1e-5) <= 4.0
    assert plan.wrap_probability <= 1e-6
    assert plan.share_variance == pytest.approx(plan.mu / 14)
    # the scale is the largest with the wrap bound: 0.2 % more would exceed it
    assert dpcalib.wrap_probability(bits=16, scale=plan.scale * 1.002, clip=1.0, dim=1000, clients=20,
                                    variance=plan.mu * 20 / 14 * 1.004) > 1e-6
    # more bits: a finer scale and less noise in the decoded sum, never more
    finer = dpcalib.plan_skellam(bits=20, **PLAN)
    assert finer.scale > plan.scale and finer.noise_std <= plan.noise_std


def test_too_few_bits_and_unreachable_targets_are_typed():
    with pytest.raises(InvalidArgumentError, match="bits must be >= ") as err:
        dpcalib.plan_skellam(bits=6, **PLAN)
    assert err.value.name == "bits"
    with pytest.raises(UnreachableTargetError):
        dpcalib.plan_skellam(bits=16, **dict(PLAN, eps=1e9))
    with pytest.raises(InvalidArgumentError):
        dpcalib.plan_skellam(bits=63, **PLAN)


def test_rounding_bounds():
    assert dpcalib.rounded_l2_bound(0.0, 16) <= 4.0 + 1e-12  # ≤ c + √d
    assert dpcalib.rounded_l2_bound(100.0, 1000) <= 100.0 + math.sqrt(1024)
    assert dpcalib.rounded_l1_bound(3.0, 1000) == 9.0  # Δ2² below √d Δ2


def test_wrap_probability_bound_is_a_probability_and_monotone():
    kwargs = dict(scale=100.0, clip=1.0, dim=1000, clients=10, variance=1e4)
    chances = [dpcalib.wrap_probability(bits=b, **kwargs) for b in (8, 12, 16, 20)]
    assert chances[0] == 1.0 and all(a >= b for a, b in zip(chances, chances[1:])) and chances[-1] < 1e-100


def test_cli_plan_and_bad_input(capsys):
    argv = ["skellam", "--eps", "4", "--delta", "1e-5", "--q", "0.1", "--steps", "50", "--dim", "1000", "--clients", "20"]
    assert cli.run(argv + ["--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["eps"] <= 4.0 and record["wrap_probability"] <= 1e-6
    for bad in (["--bits", "4"], ["--clip", "-1"], ["--min-survivors", "21"]):
        assert cli.run(argv + bad) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "Traceback" not in err


def test_fixed_cohort_bound_is_the_general_theorem_and_plans_under_replace_one():
    """Wang, Balle, Kasiviswanathan 2019, Theorem 9 is the one rdp.py applies to the Gaussian: with the Skellam
    bound in place of the Gaussian's it can only be larger, and it tends to it as μ grows."""
    orders = np.arange(2.0, 64.0)
    skellam = dpcalib.without_replacement_skellam_rdp(1000, 100, 1e8, 1e4, 1e4, orders)
    gaussian = dpcalib.without_replacement_gaussian_rdp(1000, 100, 1.0, orders)
    assert np.all(skellam >= gaussian) and np.allclose(skellam, gaussian, rtol=1e-3)
    np.testing.assert_array_equal(dpcalib.without_replacement_skellam_rdp(10, 10, 5.0, 2.0, 1.0, orders),
                                  dpcalib.skellam_rdp(5.0, 2.0, 1.0, orders))
    plan = dpcalib.plan_skellam(bits=16, **dict(PLAN, q=1.0), population=200)
    assert isinstance(plan.round_event, dpcalib.SampledWithoutReplacement)
    acc = dpcalib.RdpAccountant(neighbouring="replace_one").compose(plan.event)
    assert acc.epsilon(1e-5) <= 4.0
    with pytest.raises(UnsupportedEventError):
        dpcalib.RdpAccountant(neighbouring="add_remove").compose(plan.round_event)
    with pytest.raises(InvalidArgumentError):
        dpcalib.plan_skellam(bits=16, **PLAN, population=200)  # q and a fixed cohort
