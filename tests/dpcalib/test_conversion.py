import math
import warnings

import numpy as np
import pytest

from dpcalib.conversion import (
    epsilon_bounds,
    log_delta_bounds,
    optimise_delta,
    optimise_epsilon,
    rdp_to_delta,
    rdp_to_epsilon,
)
from dpcalib.errors import InvalidArgumentError, OrderRangeWarning
from dpcalib.rdp import DEFAULT_ORDERS, poisson_gaussian_rdp


def mission_curve(orders):
    return 1000 * poisson_gaussian_rdp(0.01, 1.0, orders)


def test_improved_bound_formula_and_classic():
    a, r, d = 8.0, 0.5, 1e-5
    improved = r + math.log1p(-1 / a) - (math.log(d) + math.log(a)) / (a - 1)
    assert epsilon_bounds([a], [r], d)[0] == pytest.approx(improved, rel=1e-15)
    assert epsilon_bounds([a], [r], d, "classic")[0] == pytest.approx(r + math.log(1 / d) / (a - 1), rel=1e-15)
    # the improved bound is below the classic one at every order (by log(α) / (α - 1) - log(1 - 1/α) > 0), as the
    # code computes them, not as restated here
    orders = np.array([1.01, 1.5, 2.0, 8.0, 64.0, 8192.0])
    rdp = np.array([1e-3, 0.1, 0.5, 2.0, 30.0, 400.0])
    assert np.all(epsilon_bounds(orders, rdp, d, kl=False) < epsilon_bounds(orders, rdp, d, "classic"))


def test_delta_bound_inverts_epsilon_bound():
    a, r, d = 6.5, 0.3, 1e-6
    eps = epsilon_bounds([a], [r], d)[0]
    assert math.exp(log_delta_bounds([a], [r], eps)[0]) == pytest.approx(d, rel=1e-12)
    eps_c = epsilon_bounds([a], [r], d, "classic")[0]
    assert math.exp(log_delta_bounds([a], [r], eps_c, "classic")[0]) == pytest.approx(d, rel=1e-12)


def test_kl_rule_gives_zero_epsilon_and_caps_delta():
    r = 1e-12  # then sqrt(1 - exp(-r)) ~ 1e-6 < delta
    assert epsilon_bounds([2.0], [r], 1e-5)[0] == 0.0
    assert epsilon_bounds([2.0], [r], 1e-7)[0] > 0.0
    assert math.exp(log_delta_bounds([2.0], [r], 0.0)[0]) == pytest.approx(math.sqrt(-math.expm1(-r)), rel=1e-9)
    assert log_delta_bounds([2.0], [50.0], 0.1)[0] == 0.0  # never above delta = 1


def test_grid_minimum_and_order():
    eps, order = rdp_to_epsilon(DEFAULT_ORDERS, mission_curve(DEFAULT_ORDERS), 1e-5)
    values = epsilon_bounds(DEFAULT_ORDERS, mission_curve(DEFAULT_ORDERS), 1e-5)
    assert eps == values.min() and order == DEFAULT_ORDERS[np.argmin(values)]
    delta, d_order = rdp_to_delta(DEFAULT_ORDERS, mission_curve(DEFAULT_ORDERS), eps)
    assert delta == pytest.approx(1e-5, rel=1e-9)


@pytest.mark.parametrize(
    "q,sigma,steps,delta",
    [(0.01, 1.0, 1000, 1e-5), (0.001, 5.0, 10000, 1e-10), (0.01, 0.5, 10, 1e-5), (1e-5, 30.0, 10**8, 1e-15),
     (0.1, 0.3, 100, 0.4), (0.5, 100.0, 1, 1e-5), (0.05, 2.0, 3, 1e-3)],
)
def test_search_never_worse_than_full_grid(q, sigma, steps, delta):
    curve = lambda a: steps * poisson_gaussian_rdp(q, sigma, a)  # noqa: E731
    full, _ = rdp_to_epsilon(DEFAULT_ORDERS, curve(DEFAULT_ORDERS), delta)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", OrderRangeWarning)
        searched = optimise_epsilon(curve, delta)
        unrefined = optimise_epsilon(curve, delta, refine=False)
    assert unrefined.value == pytest.approx(full, rel=1e-12)  # pruning skips only orders that cannot win
    assert searched.value <= full
    assert searched.value == pytest.approx(epsilon_bounds([searched.order], curve(np.array([searched.order])), delta)[0])


def test_delta_search_matches_epsilon_search():
    eps = optimise_epsilon(mission_curve, 1e-5).value
    assert optimise_delta(mission_curve, eps).value <= 1e-5 * (1 + 1e-6)


def test_warns_at_grid_edge_and_reports_order():
    with pytest.warns(OrderRangeWarning, match="edge"):
        result = optimise_epsilon(mission_curve, 1e-5, orders=[2.0, 3.0])
    assert result.order == 3.0 and result.at_edge


def test_no_warning_inside_grid():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not optimise_epsilon(mission_curve, 1e-5).at_edge


@pytest.mark.parametrize(
    "call,name",
    [
        (lambda: epsilon_bounds([2.0], [1.0], 0.0), "delta"),
        (lambda: epsilon_bounds([2.0], [1.0], 1.0), "delta"),
        (lambda: epsilon_bounds([2.0], [1.0], 1e-5, method="optimal"), "method"),
        (lambda: log_delta_bounds([2.0], [1.0], -1.0), "eps"),
        (lambda: rdp_to_epsilon([0.5], [1.0], 1e-5), "orders"),
        (lambda: optimise_delta(mission_curve, math.inf), "eps"),
    ],
)
def test_bad_arguments_are_named(call, name):
    with pytest.raises(InvalidArgumentError) as info:
        call()
    assert info.value.name == name


def test_order_search_converges_so_epsilon_is_monotone_in_steps():
    # Regression: a fixed local grid around the best order moved with the optimum, and gave
    # ε(q=1e-4, σ=1.0625, 581 steps) = 0.382869 > ε(727 steps) = 0.382670. The converged search is monotone.
    from dpcalib import epsilon

    shorter = epsilon(sigma=1.0625, q=1e-4, steps=581, delta=1e-5)
    longer = epsilon(sigma=1.0625, q=1e-4, steps=727, delta=1e-5)
    assert shorter < longer


def test_order_search_converges_at_the_foot_of_the_rdp_cliff():
    # At q = 1e-4, σ = 4 the RDP curve rises 100-fold between α = 294 and 296 (the top binomial term wakes up) and
    # the optimum sits at the foot of that cliff; parabolic steps stopped early there and gave
    # ε(16 steps) = 0.0164463948 > ε(17 steps) = 0.0164463591. Even subdivision converges.
    from dpcalib import epsilon

    assert epsilon(sigma=4.0, q=1e-4, steps=16, delta=1e-5) < epsilon(sigma=4.0, q=1e-4, steps=17, delta=1e-5)
    assert epsilon(sigma=4.0, q=1e-4, steps=33, delta=1e-5) < epsilon(sigma=4.0, q=1.015625e-4, steps=33, delta=1e-5)
