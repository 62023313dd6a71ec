"""The one-run audit's ε lower bound (dpcalib.audit) against closed forms and a brute-force computation."""

from __future__ import annotations

import math

import mpmath
import pytest

from dpcalib import InvalidArgumentError
from dpcalib.audit import EPS_TOLERANCE, audit_epsilon_lower, audit_p_value


def brute_p_value(m: int, r: int, v: int, eps: float, delta: float) -> float:
    """Theorem 5.2's p-value term by term in 50 digits: β = Σ_{j≥v} P[W=j], α = max_i Σ_{v−i≤j<v} P/i."""
    with mpmath.workdps(50):
        q = mpmath.e ** eps / (1 + mpmath.e ** eps)
        pmf = [mpmath.binomial(r, j) * q**j * (1 - q) ** (r - j) for j in range(r + 1)]
        beta = mpmath.fsum(pmf[v:])
        alpha = max((mpmath.fsum(pmf[v - i : v]) / i for i in range(1, v + 1)), default=mpmath.mpf(0))
        return float(min(1, beta + alpha * 2 * m * delta))


@pytest.mark.parametrize("m, r, v, delta", [
    (1000, 100, 75, 1e-4), (200, 200, 200, 1e-5), (400, 120, 110, 1e-5), (50, 20, 20, 0.0), (300, 60, 31, 1e-3),
])
def test_p_value_matches_brute_force(m, r, v, delta):
    for eps in (0.0, 0.5, 2.0, 5.0, 12.0):
        assert audit_p_value(m, r, v, eps, delta) == pytest.approx(brute_p_value(m, r, v, eps, delta), rel=1e-9,
                                                                    abs=1e-300)


@pytest.mark.parametrize("m, r, v, delta", [(1000, 100, 75, 1e-4), (400, 200, 190, 1e-5), (200, 200, 200, 1e-5)])
def test_bound_is_the_largest_rejected_eps(m, r, v, delta):
    bound = audit_epsilon_lower(m, r, v, delta)
    assert bound.epsilon > 0
    assert brute_p_value(m, r, v, bound.epsilon, delta) < 0.05  # rejected where it is reported
    assert brute_p_value(m, r, v, bound.epsilon + 2 * EPS_TOLERANCE, delta) >= 0.05  # and not much further


@pytest.mark.parametrize("r", [1, 10, 100, 1000])
def test_all_correct_pure_dp_closed_form(r):
    """δ = 0 and v = r: p = q_ε^r, so the bound is logit(p^(1/r)) (Theorem 3.1)."""
    q = 0.05 ** (1 / r)
    expected = math.log(q / (1 - q)) if r > 1 else 0.0  # one guess cannot reach p = 0.05 (q_ε < 1)
    bound = audit_epsilon_lower(10 * r, r, r, 0.0)
    assert expected - EPS_TOLERANCE <= bound.epsilon <= expected + 1e-12


def test_published_figures():
    """The figures of arXiv:2305.08846v1 as quoted by a third-party reproduction (App. D: m=1000, r=100, v=75,
    δ=1e-4 → 0.673; §7 Fig. 11: m=1e5, r=1510, v=1439, δ=1e-5 → 2.675, truncated)."""
    assert audit_epsilon_lower(1000, 100, 75, 1e-4).epsilon == pytest.approx(0.673, abs=5e-4)
    assert 2.675 <= audit_epsilon_lower(100_000, 1510, 1439, 1e-5).epsilon < 2.676


def test_delta_and_guessing_badly_lower_the_bound():
    assert audit_epsilon_lower(400, 200, 200, 1e-3).epsilon < audit_epsilon_lower(400, 200, 200, 1e-6).epsilon
    assert audit_epsilon_lower(400, 200, 100, 1e-5).epsilon == 0.0  # chance level rejects nothing
    assert audit_epsilon_lower(400, 0, 0, 1e-5).epsilon == 0.0


def test_large_counts_stay_finite():
    bound = audit_epsilon_lower(10**6, 10**5, 10**5, 1e-12)
    assert math.isfinite(bound.epsilon) and bound.epsilon > 5


@pytest.mark.parametrize("kwargs, name", [
    (dict(m=10, r=11, v=1, delta=1e-5), "r"), (dict(m=10, r=5, v=6, delta=1e-5), "v"),
    (dict(m=0, r=0, v=0, delta=1e-5), "m"), (dict(m=10, r=5, v=5, delta=1.0), "delta"),
    (dict(m=10, r=5, v=5, delta=1e-5, confidence=1.0), "confidence"),
])
def test_bad_input_names_the_argument(kwargs, name):
    with pytest.raises(InvalidArgumentError, match=name):
        audit_epsilon_lower(**kwargs)
