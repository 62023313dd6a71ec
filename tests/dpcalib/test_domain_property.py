"""Property test over the whole input space a user (or an adversary) can type: every query and calibration, under
every accountant, either raises a typed dpcalib error or returns a finite answer that is never below a proven
lower bound on the true value, and never floods warnings.

Inputs: σ from 1e-300 to 1e300, q from 1e-300 to 1, steps up to 10^18, δ down to 1e-300, ε up to 1e308.

Lower bounds (independent of the code under test, evaluated with mpmath at 80 digits):

* q = 1: T steps of the Gaussian mechanism with noise multiplier σ are the Gaussian mechanism with μ = √T/σ, whose
  exact privacy profile is δ(ε) = Φ(μ/2 − ε/μ) − e^ε Φ(−μ/2 − ε/μ) (Balle & Wang 2018, Thm. 8).
* q < 1: the "remove" pair of one Poisson-subsampled step, ((1 − q)N(0, σ²) + qN(1, σ²), N(0, σ²)), has the exact
  profile δ₁(ε) = q·δ_G(ε') with μ = 1/σ and e^{ε'} = 1 + (e^ε − 1)/q (the mixture identity
  (1 − q)Q + qP − e^ε Q = q(P − e^{ε'} Q)); T ≥ 1 steps reveal at least one step (post-processing), so
  δ_T(ε) ≥ δ₁(ε).

A reported ε is an upper bound iff the lower-bounding δ at that ε is ≤ the δ asked about; a reported δ must be ≥
the lower bound at ε. This is the check that catches a confident ε = 0 where privacy is plainly lost (10^18 steps).
The literal rule "never 0 where the RDP bound is positive" is not a valid property: the PLD is legitimately 0
where the true δ(0) = TV is below δ while RDP's conversion, which goes through the KL divergence, is not.
"""

from __future__ import annotations

import math
import warnings

import mpmath as mp
import pytest
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st

import dpcalib
from dpcalib.errors import DpcalibError

# the true values may sit this far (relatively) on the wrong side through float rounding of the bound's formula
RELATIVE_SLACK = 1e-9
DISTINCT_WARNINGS_MAX = 5


def log_uniform(lo: float, hi: float) -> st.SearchStrategy[float]:
    return st.floats(lo, hi).map(lambda x: 10.0**x)


SIGMAS = st.one_of(log_uniform(-300, 300), log_uniform(-1, 1.5), st.sampled_from([1e-100, 1e6]))
QS = st.one_of(st.just(1.0), log_uniform(-300, 0), log_uniform(-4, 0))
STEPS = st.one_of(st.integers(1, 10**18), st.integers(1, 10**5), st.sampled_from([10**12, 10**12 + 1]))
DELTAS = st.one_of(log_uniform(-300, -1e-6), log_uniform(-12, -3))
EPSILONS = st.one_of(log_uniform(-300, 308), log_uniform(-2, 1.5), st.just(1e308))

# No shrinking: a failing example is reported as drawn, and a failing PLD case cannot spend minutes shrinking.
WIDE = settings(
    deadline=None,
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
    suppress_health_check=[HealthCheck.too_slow],
)

ACCOUNTANTS = ["rdp", "pld"]


def gaussian_delta(mu: mp.mpf, eps: mp.mpf) -> mp.mpf:
    """A lower bound on δ(ε) of the Gaussian mechanism with sensitivity/noise ratio ``mu``, exact to 80 digits
    wherever δ is not negligible: Φ(a) − e^ε Φ(b), a = μ/2 − ε/μ, b = a − μ (Balle & Wang 2018). Far in the tails
    (where mpmath's erfc cannot go) it uses Φ(a) ≥ Φ(min(a, 50)), e^ε Φ(b) ≤ e^ε φ(b)/|b| = φ(a)/|b|, and δ ≥ 0."""
    a = mu / 2 - eps / mu
    b = a - mu
    if a < -1e4:  # δ < Φ(a) < e^-5e7: nothing a float can show
        return mp.mpf(0)
    first = mp.ncdf(min(a, mp.mpf(50)))
    second = mp.npdf(a) / -b if b < -1e4 else mp.exp(eps) * mp.ncdf(b)
    return max(first - second, mp.mpf(0))


def delta_lower_bound(sigma: float, q: float, steps: int, eps: float) -> mp.mpf:
    """A proven lower bound on the true δ(ε) of ``steps`` Poisson-subsampled Gaussian steps (module docstring)."""
    with mp.workdps(80):
        e = mp.mpf(eps)
        if q == 1.0:
            return gaussian_delta(mp.sqrt(steps) / mp.mpf(sigma), e)
        qq = mp.mpf(q)
        shifted = mp.log(1 + mp.expm1(e) / qq)
        return qq * gaussian_delta(1 / mp.mpf(sigma), shifted)


def outcome(call):
    """(value or None, distinct warnings) of ``call()``; a non-dpcalib exception propagates and fails the test."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            value = call()
        except DpcalibError:
            value = None
    distinct = {(w.category, str(w.message)) for w in caught}
    assert len(distinct) <= DISTINCT_WARNINGS_MAX, distinct
    return value


def assert_epsilon_bound(eps: float, sigma: float, q: float, steps: int, delta: float) -> None:
    assert isinstance(eps, float) and math.isfinite(eps) and eps >= 0.0
    assert delta_lower_bound(sigma, q, steps, eps) <= mp.mpf(delta) * (1 + RELATIVE_SLACK)


# examples per query: a PLD composition costs up to a second at extreme inputs, and a PLD calibration composes
# up to ~80 times (calibrate_steps doubles up to 10^12), so the PLD calibrations draw only a few
QUERY_EXAMPLES = {"rdp": 40, "pld": 15}
CALIBRATION_EXAMPLES = {"rdp": 10, "pld": 2}


@pytest.mark.parametrize("accountant", ACCOUNTANTS)
def test_epsilon_is_an_upper_bound_or_a_typed_error(accountant):
    @settings(WIDE, max_examples=QUERY_EXAMPLES[accountant])
    @given(sigma=SIGMAS, q=QS, steps=STEPS, delta=DELTAS)
    # RDP once rounded an underflowing curve (q = 8e-182, σ = 1e6) to 0 and certified ε = 0
    @example(sigma=1e6, q=8.385087826052657e-182, steps=3169, delta=3.5996233548175174e-286)
    def check(sigma, q, steps, delta):
        eps = outcome(lambda: dpcalib.epsilon(sigma=sigma, q=q, steps=steps, delta=delta, accountant=accountant))
        if eps is not None:
            assert_epsilon_bound(eps, sigma, q, steps, delta)

    check()


@pytest.mark.parametrize("accountant", ACCOUNTANTS)
def test_delta_is_an_upper_bound_or_a_typed_error(accountant):
    @settings(WIDE, max_examples=QUERY_EXAMPLES[accountant])
    @given(sigma=SIGMAS, q=QS, steps=STEPS, eps=EPSILONS)
    def check(sigma, q, steps, eps):
        delta = outcome(lambda: dpcalib.delta(sigma=sigma, q=q, steps=steps, eps=eps, accountant=accountant))
        if delta is not None:
            assert isinstance(delta, float) and 0.0 <= delta <= 1.0
            assert mp.mpf(delta) >= delta_lower_bound(sigma, q, steps, eps) * (1 - RELATIVE_SLACK)

    check()


@pytest.mark.parametrize("accountant", ACCOUNTANTS)
def test_calibrated_sigma_meets_the_target_or_a_typed_error(accountant):
    @settings(WIDE, max_examples=CALIBRATION_EXAMPLES[accountant])
    @given(eps=EPSILONS, delta=DELTAS, q=QS, steps=STEPS)
    def check(eps, delta, q, steps):
        sigma = outcome(lambda: dpcalib.calibrate_sigma(eps=eps, delta=delta, q=q, steps=steps, accountant=accountant))
        if sigma is not None:
            assert math.isfinite(sigma) and sigma > 0.0
            assert_epsilon_bound(eps, sigma, q, steps, delta)

    check()


@pytest.mark.parametrize("accountant", ACCOUNTANTS)
def test_calibrated_steps_meet_the_target_or_a_typed_error(accountant):
    @settings(WIDE, max_examples=CALIBRATION_EXAMPLES[accountant])
    @given(eps=EPSILONS, delta=DELTAS, sigma=SIGMAS, q=QS)
    def check(eps, delta, sigma, q):
        steps = outcome(lambda: dpcalib.calibrate_steps(eps=eps, delta=delta, sigma=sigma, q=q, accountant=accountant))
        if steps is not None:
            assert isinstance(steps, int) and 1 <= steps <= dpcalib.validation.STEPS_MAX
            assert_epsilon_bound(eps, sigma, q, steps, delta)

    check()


@pytest.mark.parametrize("accountant", ACCOUNTANTS)
def test_calibrated_q_meets_the_target_or_a_typed_error(accountant):
    @settings(WIDE, max_examples=CALIBRATION_EXAMPLES[accountant])
    @given(eps=EPSILONS, delta=DELTAS, sigma=SIGMAS, steps=STEPS)
    def check(eps, delta, sigma, steps):
        q = outcome(lambda: dpcalib.calibrate_q(eps=eps, delta=delta, sigma=sigma, steps=steps, accountant=accountant))
        if q is not None:
            assert isinstance(q, float) and 0.0 < q <= 1.0
            assert_epsilon_bound(eps, sigma, q, steps, delta)

    check()


def test_the_lower_bounds_are_exact_at_known_values_and_reject_a_confident_zero():
    # q = 1: the Gaussian mechanism at μ = 1 has δ(0) = 2Φ(1/2) − 1 = 0.3829249225480262
    assert float(delta_lower_bound(1.0, 1.0, 1, 0.0)) == pytest.approx(0.3829249225480262, rel=1e-12)
    # and 100 steps at σ = 10 are the same mechanism (μ = √100/10)
    assert float(delta_lower_bound(10.0, 1.0, 100, 0.0)) == pytest.approx(0.3829249225480262, rel=1e-12)
    # one subsampled step at ε = 0 is q times the total variation of the Gaussian pair
    assert float(delta_lower_bound(1.0, 0.01, 10**18, 0.0)) == pytest.approx(0.003829249225480262, rel=1e-12)
    # the ε = 0 that PLD once reported for 10^18 steps at q = 0.01, σ = 1 fails the check; RDP's answer passes
    with pytest.raises(AssertionError):
        assert_epsilon_bound(0.0, 1.0, 0.01, 10**18, 1e-5)
    assert_epsilon_bound(dpcalib.epsilon(sigma=1.0, q=0.01, steps=1000, delta=1e-5), 1.0, 0.01, 1000, 1e-5)
