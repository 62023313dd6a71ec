import math

import numpy as np
import pytest

from dpcalib.errors import InvalidArgumentError
from dpcalib.rdp import (
    DEFAULT_ORDERS,
    gaussian_rdp,
    poisson_gaussian_rdp,
    without_replacement_gaussian_rdp,
)

from .mpref import reference_rdp

INTEGER_CASES = [
    (0.01, 1.0, 2), (0.01, 1.0, 32), (1e-8, 1.0, 7), (0.5, 0.7, 10), (0.999, 2.0, 5), (0.1, 0.1, 20),
    (1e-3, 100.0, 256), (0.01, 1e5, 64), (1e-5, 3.0, 1024), (0.2, 10.0, 3000),
]
# a Latin-square style cover of q x sigma x order extremes (a full product is too slow in mpmath)
_QS = (1e-8, 1e-3, 0.05, 0.3, 0.5, 0.9, 0.999)
_SIGMAS = (0.1, 0.5, 1.0, 4.0, 19.0, 1e3, 1e5)
_ALPHAS = (1.01, 1.1, 2.5, 10.9)
FRACTIONAL_CASES = [(q, _SIGMAS[(i + j) % 7], _ALPHAS[(i + 2 * j) % 4]) for i, q in enumerate(_QS) for j in range(3)]


@pytest.mark.parametrize("q,sigma,alpha", INTEGER_CASES)
def test_integer_orders_match_exact_binomial_sum(q, sigma, alpha):
    got = poisson_gaussian_rdp(q, sigma, [alpha])[0]
    assert got == pytest.approx(reference_rdp(q, sigma, alpha), rel=1e-9)


@pytest.mark.parametrize("q,sigma,alpha", FRACTIONAL_CASES)
def test_fractional_orders_match_numerical_integration(q, sigma, alpha):
    got = poisson_gaussian_rdp(q, sigma, [alpha])[0]
    assert got == pytest.approx(reference_rdp(q, sigma, alpha), rel=1e-9)


def test_fractional_orders_far_from_grid():
    for alpha in (40.5,):
        got = poisson_gaussian_rdp(0.3, 2.0, [alpha])[0]
        assert got == pytest.approx(reference_rdp(0.3, 2.0, alpha), rel=1e-9)


@pytest.mark.parametrize("sigma", [0.1, 0.8, 3.0, 1e5])
def test_q_one_is_the_gaussian_mechanism(sigma):
    orders = np.array([1.5, 2.0, 10.0, 1e4])
    np.testing.assert_array_equal(poisson_gaussian_rdp(1.0, sigma, orders), orders / (2 * sigma**2))
    np.testing.assert_array_equal(gaussian_rdp(sigma, orders), orders / (2 * sigma**2))


def test_vectorised_equals_one_at_a_time():
    whole = poisson_gaussian_rdp(0.02, 0.9, DEFAULT_ORDERS)
    single = np.array([poisson_gaussian_rdp(0.02, 0.9, [a])[0] for a in DEFAULT_ORDERS[::7]])
    np.testing.assert_allclose(whole[::7], single, rtol=1e-12)


@pytest.mark.parametrize("q", [1e-8, 1e-4, 0.5, 1.0])
@pytest.mark.parametrize("sigma", [0.1, 1.0, 1e5])
def test_finite_positive_and_nondecreasing_in_order_up_to_1e4(q, sigma):
    orders = np.concatenate([DEFAULT_ORDERS, [9999.5, 1e4]])
    curve = poisson_gaussian_rdp(q, sigma, orders)
    assert np.all(np.isfinite(curve)) and np.all(curve > 0)
    idx = np.argsort(orders)
    assert np.all(np.diff(curve[idx]) >= -1e-12 * curve[idx][1:])


def test_below_gaussian_and_increasing_in_q():
    orders = DEFAULT_ORDERS
    low, high = poisson_gaussian_rdp(0.01, 1.0, orders), poisson_gaussian_rdp(0.02, 1.0, orders)
    assert np.all(low < high) and np.all(high <= gaussian_rdp(1.0, orders))


def test_without_replacement_integer_orders_theorem_9():
    n, batch, sigma = 1000, 10, 1.5
    gamma = batch / n
    for alpha in (2, 5, 12):
        terms = [gamma**2 * math.comb(alpha, 2) * min(4 * math.expm1(1 / sigma**2), 2 * math.exp(1 / sigma**2))]
        terms += [2 * gamma**j * math.comb(alpha, j) * math.exp(j * (j - 1) / (2 * sigma**2)) for j in range(3, alpha + 1)]
        expected = math.log1p(sum(terms)) / (alpha - 1)
        assert without_replacement_gaussian_rdp(n, batch, sigma, [alpha])[0] == pytest.approx(expected, rel=1e-12)


def test_without_replacement_fractional_interpolates_the_cumulant():
    cgf = lambda a: (a - 1) * without_replacement_gaussian_rdp(500, 5, 1.0, [a])[0]  # noqa: E731
    assert cgf(4.25) == pytest.approx(0.75 * cgf(4.0) + 0.25 * cgf(5.0), rel=1e-12)
    assert cgf(1.5) == pytest.approx(0.5 * cgf(2.0), rel=1e-12)
    np.testing.assert_array_equal(without_replacement_gaussian_rdp(5, 5, 2.0, [3.0]), gaussian_rdp(2.0, [3.0]))


@pytest.mark.parametrize(
    "call,name",
    [
        (lambda: poisson_gaussian_rdp(0.0, 1.0, [2.0]), "q"),
        (lambda: poisson_gaussian_rdp(1.5, 1.0, [2.0]), "q"),
        (lambda: poisson_gaussian_rdp(0.1, -1.0, [2.0]), "sigma"),
        (lambda: poisson_gaussian_rdp(0.1, 1.0, [1.0]), "orders"),
        (lambda: poisson_gaussian_rdp(0.1, 1.0, [math.nan]), "orders"),
        (lambda: gaussian_rdp(math.inf, [2.0]), "sigma"),
        (lambda: without_replacement_gaussian_rdp(10, 11, 1.0, [2.0]), "batch"),
        (lambda: without_replacement_gaussian_rdp(0, 1, 1.0, [2.0]), "n"),
    ],
)
def test_bad_arguments_are_named(call, name):
    with pytest.raises(InvalidArgumentError) as info:
        call()
    assert info.value.name == name


@pytest.mark.parametrize("q,sigma", [(1e-8, 1e5), (0.01, 1.0), (0.5, 30.0)])
def test_orders_a_rounding_error_away_from_an_integer_are_finite(q, sigma):
    # Regression: the moment series took the sign of C(α, k) from gammasgn(α - k + 1), which is nan where
    # α - k + 1 rounds to a pole; the order search met α = 2.9999999999999996 and lost a whole batch to the nan.
    near = np.array([np.nextafter(3.0, 0.0), np.nextafter(3.0, 4.0), np.nextafter(20.0, 0.0)])
    np.testing.assert_allclose(poisson_gaussian_rdp(q, sigma, near), poisson_gaussian_rdp(q, sigma, [3.0, 3.0, 20.0]), rtol=1e-12)
