"""Tests of dpcalib.pld (privacy-loss distributions of the Poisson-subsampled Gaussian) and of PldAccountant.

References computed here, independently of the module:
- the Gaussian mechanism's exact δ(ε) (Balle & Wang 2018, Thm. 8): Φ(−ε/μ + μ/2) − e^ε Φ(−ε/μ − μ/2) with
  μ = √T/σ for T composed steps (composition of Gaussians is Gaussian; Dong, Roth, Su 2022), and μ = 2√T/σ under
  replace-one (sensitivity 2C);
- one step of the subsampled Gaussian, exact δ(ε) per direction (Zhu, Dong, Wang 2022 dominating pairs);
- one step of fixed-size sampling without replacement under replace-one, δ(ε) = q·δ_G(log(1 + (e^ε − 1)/q))
  with μ = 2/σ (Balle, Barthe, Gaboardi 2018, Thm. 10);
- exact discrete convolutions in extended precision (numpy longdouble), for the FFT round-off bound.
Published fact: at q = 1e-4, σ = 0.5, δ = 1e-8 the exact ε of 100 steps is 1.941770 (issue 11, from an exact
inversion of the privacy-loss distribution's moment generating function).
"""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings, strategies as st
from scipy import optimize
from scipy.stats import norm

import dpcalib
from dpcalib.accountant import Accountant, PldAccountant, RdpAccountant, accountant_from_state_dict, make_accountant
from dpcalib.errors import InvalidArgumentError, UnsupportedEventError
from dpcalib.events import Composed, Gaussian, PoissonSampled, Repeated, SampledWithoutReplacement, dpsgd_event
from dpcalib.pld import (
    DEFAULT_INTERVAL,
    MAX_GRID_POINTS,
    Phase,
    SubsampledGaussianPld,
    compose,
    default_interval,
    fft_relative_error,
    subsampled_gaussian_pld,
    without_replacement_gaussian_pld,
)


def gaussian_delta(mu: float, eps: float) -> float:
    """Exact δ(ε) of the Gaussian mechanism with sensitivity/σ = μ (Balle & Wang 2018)."""
    return float(norm.cdf(-eps / mu + mu / 2) - np.exp(eps + norm.logcdf(-eps / mu - mu / 2)))


def gaussian_epsilon(mu: float, delta: float) -> float:
    return optimize.brentq(lambda e: gaussian_delta(mu, e) - delta, 0.0, mu * mu / 2 + 50 * mu + 1, xtol=1e-14, rtol=1e-14)


def one_step_delta(q: float, sigma: float, direction: str, eps: float) -> float:
    """Exact δ(ε) of one step of the Poisson-subsampled Gaussian in one direction."""
    if direction == "remove":  # δ = q·δ_G(log((e^ε − 1 + q)/q))
        return q * gaussian_delta(1.0 / sigma, math.log((math.expm1(eps) + q) / q))
    if math.exp(-eps) <= 1 - q:  # add: the loss never exceeds −log(1 − q)
        return 0.0
    x = sigma**2 * math.log((math.exp(-eps) - 1 + q) / q) + 0.5
    return float(norm.cdf(x / sigma) * (1 - math.exp(eps) * (1 - q)) - math.exp(eps) * q * norm.cdf((x - 1) / sigma))


# --- one step: the discretisations bracket the exact curve ----------------------------------------------------


@pytest.mark.parametrize("direction", ["remove", "add"])
@pytest.mark.parametrize("q,sigma", [(1.0, 1.0), (0.01, 1.0), (0.2, 0.6), (1e-3, 3.0)])
def test_single_step_discretisations_bracket_the_exact_delta(direction: str, q: float, sigma: float) -> None:
    pess = subsampled_gaussian_pld(q, sigma, direction, interval=1e-2)
    opt = subsampled_gaussian_pld(q, sigma, direction, interval=1e-2, pessimistic=False)
    for eps in [0.0, 0.003, 0.05, 0.1234, 0.5, 1.0, 2.0, 3.7]:
        exact = one_step_delta(q, sigma, direction, eps)
        assert opt.delta(eps) <= exact * (1 + 1e-9) + 1e-15
        assert pess.delta(eps) >= exact * (1 - 1e-9)
    assert pess.pmf.min() >= 0 and abs(pess.pmf.sum() + pess.infinity_mass - 1.0) < 1e-9


def test_connect_the_dots_is_exact_at_grid_points() -> None:
    # the pessimistic curve interpolates the true one between grid points (Doroshenko et al. 2022)
    pld = subsampled_gaussian_pld(0.05, 0.9, "remove", interval=0.01)
    for k in [3, 10, 57, 200]:
        eps = k * 0.01
        assert pld.delta(eps) == pytest.approx(one_step_delta(0.05, 0.9, "remove", eps), rel=1e-6)


# --- q = 1: the exact Gaussian --------------------------------------------------------------------------------


@pytest.mark.parametrize("sigma,steps", [(1.0, 1), (2.0, 1), (0.8, 10), (5.0, 100), (30.0, 1000), (3.0, 10)])
@pytest.mark.parametrize("delta", [1e-5, 1e-9])
def test_full_batch_equals_the_gaussian_from_above(sigma: float, steps: int, delta: float) -> None:
    exact = gaussian_epsilon(math.sqrt(steps) / sigma, delta)
    eps = SubsampledGaussianPld([Phase(1.0, sigma, steps)]).epsilon(delta)
    assert exact <= eps <= exact * 1.005  # the default grid's stated error: within 0.5 % above the truth


def test_full_batch_delta_from_above() -> None:
    pld = SubsampledGaussianPld([Phase(1.0, 2.0, 4)])
    for eps in [0.1, 0.5, 1.0, 3.0]:
        exact = gaussian_delta(1.0, eps)
        assert exact <= pld.delta(eps) <= exact * 1.01 + 1e-15


# --- subsampled: between an optimistic lower bound and the upper bound ------------------------------------------


@pytest.mark.parametrize(
    "q,sigma,steps",
    [(1e-3, 0.5, 1000), (0.01, 1.0, 1000), (0.01, 2.0, 10000), (0.1, 10.0, 100), (0.1, 0.7, 1),
     (0.5, 1.0, 10), (1.0, 10.0, 1000)],
)
def test_pessimistic_is_above_optimistic(q: float, sigma: float, steps: int) -> None:
    upper = SubsampledGaussianPld([Phase(q, sigma, steps)])
    lower = SubsampledGaussianPld([Phase(q, sigma, steps)], interval=upper.interval / 4, pessimistic=False)
    for delta in [1e-5, 1e-8]:
        assert lower.epsilon(delta) <= upper.epsilon(delta)
    assert lower.delta(1.0) <= upper.delta(1.0)


def test_sandwich_is_tight_on_the_mission_setting() -> None:
    upper = SubsampledGaussianPld([Phase(0.01, 1.0, 1000)]).epsilon(1e-5)
    lower = SubsampledGaussianPld([Phase(0.01, 1.0, 1000)], interval=2e-5, pessimistic=False).epsilon(1e-5)
    assert lower <= upper <= lower * 1.01


def test_default_interval_error_is_small() -> None:
    # a grid 4x finer (Δ/4, one refinement) barely moves the answer: the default is within 0.5 % above it
    for q, sigma, steps in [(0.01, 1.0, 1000), (1e-3, 0.6, 100000), (0.05, 2.0, 1000)]:
        default = SubsampledGaussianPld([Phase(q, sigma, steps)])
        fine = SubsampledGaussianPld([Phase(q, sigma, steps)], interval=default.interval / 4)
        e_default, e_fine = default.epsilon(1e-5), fine.epsilon(1e-5)
        assert e_fine <= e_default <= e_fine * 1.005


def test_default_interval_rule() -> None:
    assert default_interval([Phase(0.01, 1.0, 1)]) == DEFAULT_INTERVAL
    small = default_interval([Phase(1e-3, 1.0, 1)])
    assert small == pytest.approx(1e-3 * math.sqrt(math.e - 1) / 8)
    assert default_interval([Phase(1e-9, 1.0, 1)]) == 1e-5
    assert default_interval([Phase(0.01, 1.0, 1), Phase(1e-3, 1.0, 1)]) == small


# --- composition ----------------------------------------------------------------------------------------------


def test_phases_compose_like_one_long_phase() -> None:
    whole = SubsampledGaussianPld([Phase(0.02, 1.1, 700)], interval=1e-3).epsilon(1e-6)
    split = SubsampledGaussianPld([Phase(0.02, 1.1, 300), Phase(0.02, 1.1, 400)], interval=1e-3).epsilon(1e-6)
    assert split == pytest.approx(whole, rel=1e-9)


def test_heterogeneous_phases_lie_between_their_parts() -> None:
    a, b = Phase(0.01, 1.0, 500), Phase(0.05, 2.0, 200)
    both = SubsampledGaussianPld([a, b]).epsilon(1e-5)
    assert max(SubsampledGaussianPld([a]).epsilon(1e-5), SubsampledGaussianPld([b]).epsilon(1e-5)) < both
    assert both == pytest.approx(SubsampledGaussianPld([b, a]).epsilon(1e-5), rel=1e-9)


def test_fft_power_matches_direct_convolution() -> None:
    single = subsampled_gaussian_pld(0.1, 1.0, "remove", interval=0.02, tail_mass=1e-6)
    composed = compose([(single, 3)])
    direct = np.convolve(np.convolve(single.pmf, single.pmf), single.pmf)  # starts at grid index 3·offset
    lo = max(composed.offset, 3 * single.offset)
    hi = min(composed.offset + composed.pmf.size, 3 * single.offset + direct.size)
    assert hi - lo > 100
    got = composed.pmf[lo - composed.offset : hi - composed.offset]
    want = direct[lo - 3 * single.offset : hi - 3 * single.offset]
    assert np.abs(got - want).max() < 1e-12
    assert single.infinity_mass > 1e-8
    assert composed.infinity_mass == pytest.approx(1 - (1 - single.infinity_mass) ** 3, rel=1e-6)


# --- queries --------------------------------------------------------------------------------------------------


def test_epsilon_and_delta_are_consistent() -> None:
    pld = SubsampledGaussianPld([Phase(0.01, 0.9, 2000)])
    for delta in [1e-3, 1e-5, 1e-9]:
        eps = pld.epsilon(delta)
        assert pld.delta(eps) <= delta * (1 + 1e-9)
        assert pld.delta(eps * (1 - 1e-3)) > delta
    deltas = [pld.delta(e) for e in np.linspace(0, 10, 41)]
    assert all(np.diff(deltas) <= 0)


def test_epsilon_is_zero_when_delta_is_large() -> None:
    pld = SubsampledGaussianPld([Phase(1e-3, 5.0, 10)])
    assert pld.epsilon(0.5) == 0.0
    assert pld.delta(0.0) < 0.5


# --- robustness: finite, correct answers where peers break -----------------------------------------------------


@pytest.mark.parametrize(
    "q,sigma,steps,delta",
    [(0.01, 1.0, 1000, 1e-12), (1.0, 0.3, 1, 1e-5), (1.0, 0.3, 100, 1e-12), (1e-8, 1.0, 1000, 1e-5),
     (0.01, 1.0, 1_000_000, 1e-5), (0.5, 0.3, 1_000_000, 1e-10), (1.0, 1000.0, 1, 1e-12)],
)
def test_extreme_settings_give_finite_upper_bounds(q: float, sigma: float, steps: int, delta: float) -> None:
    pld = SubsampledGaussianPld([Phase(q, sigma, steps)])
    eps = pld.epsilon(delta)
    assert math.isfinite(eps) and eps >= 0
    assert pld.delta(eps) <= delta * (1 + 1e-9)
    assert max(p.pmf.size for p in pld.by_direction.values()) <= MAX_GRID_POINTS
    if q == 1.0:
        assert eps >= gaussian_epsilon(math.sqrt(steps) / sigma, delta) * (1 - 1e-12)


def test_tiny_delta_is_resolved_by_tilting() -> None:
    # without the exponential tilt, FFT round-off (amplified T-fold) would swamp δ = 1e-12 and cost ~1 % in ε
    pld = SubsampledGaussianPld([Phase(1.0, 100.0, 10000)])
    exact = gaussian_epsilon(1.0, 1e-12)
    assert pld.by_direction["remove"].roundoff_above(exact) > 1e-3 * 1e-12  # the plain composition is not enough
    assert exact <= pld.epsilon(1e-12) <= exact * 1.002
    assert pld.delta(pld.epsilon(1e-12)) <= 1e-12 * (1 + 1e-9)
    upper = SubsampledGaussianPld([Phase(0.01, 1.0, 1000)]).epsilon(1e-12)
    fine = SubsampledGaussianPld([Phase(0.01, 1.0, 1000)], interval=2.5e-4).epsilon(1e-12)
    lower = SubsampledGaussianPld([Phase(0.01, 1.0, 1000)], interval=2.5e-5, pessimistic=False).epsilon(1e-12)
    assert lower <= fine <= upper <= fine * 1.002


def test_large_epsilon_targets() -> None:
    pld = SubsampledGaussianPld([Phase(0.1, 0.5, 30)])
    d30 = pld.delta(30.0)
    assert 1e-12 < d30 < 1e-8
    assert pld.epsilon(d30 * 1.0001) <= 30.0 * (1 + 1e-9)


def test_tiny_sigma_coarsens_the_grid_and_stays_an_upper_bound() -> None:
    pld = SubsampledGaussianPld([Phase(1.0, 0.02, 1)])
    assert pld.interval > DEFAULT_INTERVAL
    assert pld.epsilon(1e-5) >= gaussian_epsilon(50.0, 1e-5)


def test_delta_below_the_truncated_mass_is_infinite_epsilon() -> None:
    pld = SubsampledGaussianPld([Phase(0.5, 0.5, 10)], tail_mass=1e-6)
    assert pld.epsilon(1e-9) == math.inf


@pytest.mark.parametrize(
    "call, name",
    [
        (lambda: subsampled_gaussian_pld(0.1, 1.0, "sideways"), "direction"),
        (lambda: subsampled_gaussian_pld(0.1, 1.0, "add", interval=0.0), "interval"),
        (lambda: subsampled_gaussian_pld(1.5, 1.0, "add"), "q"),
        (lambda: subsampled_gaussian_pld(0.1, -1.0, "add"), "sigma"),
        (lambda: Phase(0.1, 1.0, 0), "count"),
        (lambda: SubsampledGaussianPld([]), "phases"),
        (lambda: SubsampledGaussianPld([Phase(0.1, 1.0, 1)]).epsilon(1.0), "delta"),
        (lambda: SubsampledGaussianPld([Phase(0.1, 1.0, 1)]).delta(-1.0), "eps"),
        (lambda: SubsampledGaussianPld([Phase(0.1, 1.0, 1)]).delta(math.nan), "eps"),
    ],
)
def test_bad_input_names_the_argument(call, name: str) -> None:
    with pytest.raises(InvalidArgumentError) as info:
        call()
    assert info.value.name == name


# --- tightness at tiny q and small δ (issue 11, item 1) ---------------------------------------------------------


def one_step_epsilon(q: float, sigma: float, delta: float) -> float:
    """Exact ε(δ) of one step of the Poisson-subsampled Gaussian: the worse direction, by root finding."""
    roots = [0.0]
    for direction in ("remove", "add"):
        if one_step_delta(q, sigma, direction, 0.0) > delta:
            f = lambda e, d=direction: one_step_delta(q, sigma, d, e) - delta  # noqa: E731
            roots.append(optimize.brentq(f, 0.0, 60.0, xtol=1e-15, rtol=1e-14))
    return max(roots)


@pytest.mark.parametrize("steps,exact", [(1, None), (100, 1.941770)])
def test_tiny_q_small_delta_is_tight_and_never_below_the_exact_value(steps: int, exact: float | None) -> None:
    exact = one_step_epsilon(1e-4, 0.5, 1e-8) if exact is None else exact
    if steps == 1:
        assert exact == pytest.approx(0.540190, abs=5e-7)  # the published value, recomputed independently
    eps = SubsampledGaussianPld([Phase(1e-4, 0.5, steps)]).epsilon(1e-8)
    assert exact - 5e-7 <= eps <= exact * 1.005  # 5e-7: the published figure's rounding


def test_a_finer_grid_does_not_loosen_the_bound_at_tiny_q() -> None:
    # the old per-bin round-off allowance grew like 1/Δ: 0.5408 at Δ = 1e-3, 0.5461 at 1e-4, 0.5577 at 2.5e-5
    exact = one_step_epsilon(1e-4, 0.5, 1e-8)
    eps = [SubsampledGaussianPld([Phase(1e-4, 0.5, 1)], interval=iv).epsilon(1e-8) for iv in (1e-3, 2.5e-4, 6.25e-5)]
    assert all(exact <= e <= exact * 1.001 for e in eps)
    assert eps[2] <= eps[1] * (1 + 1e-6) and eps[1] <= eps[0] * (1 + 1e-6)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    q=st.floats(1e-3, 1.0),
    sigma=st.floats(0.6, 4.0),
    steps=st.integers(1, 300),
    delta=st.floats(1e-10, 1e-3),
    interval=st.sampled_from([1e-3, 2e-3, 4e-3]),
)
def test_grid_refinement_never_costs_more_than_the_stated_error(q, sigma, steps, delta, interval) -> None:
    """Connect-the-dots on a grid that contains the coarse grid is dominated by the coarse one (a chord through more
    points of a convex curve lies lower), and dominance survives composition; so at Δ/2 the exact discrete ε is at
    most the one at Δ, and the reported one exceeds it only by the allowances A the fine PLD states (round-off
    bound, aliasing slack, +∞ mass): ε_{Δ/2}(δ) ≤ ε_Δ(δ − A)."""
    coarse = SubsampledGaussianPld([Phase(q, sigma, steps)], interval=interval)
    fine = SubsampledGaussianPld([Phase(q, sigma, steps)], interval=interval / 2)
    assume(coarse.interval == interval and fine.interval == interval / 2)  # not coarsened to fit the FFT window
    for direction, pld in fine.by_direction.items():
        stated = pld.roundoff_above(-math.inf) + pld.slack + pld.infinity_mass + steps * fine.tail_mass
        assume(stated < delta / 2)
        assert pld.epsilon(delta) <= coarse.by_direction[direction].epsilon(delta - stated) * (1 + 1e-9) + 1e-12


# --- the FFT round-off bound (issue 11, item 2) ------------------------------------------------------------------


def exact_composition(single, count: int) -> np.ndarray:
    """The ``count``-fold convolution of ``single.pmf`` in extended precision (non-negative terms: componentwise
    relative error ≤ count·n·2^-64, far below the FFT's)."""
    base = single.pmf.astype(np.longdouble)
    out = np.ones(1, dtype=np.longdouble)
    for _ in range(count):
        out = np.convolve(out, base)
    return out


@pytest.mark.parametrize("q,sigma,count", [(1e-4, 0.5, 1), (1e-4, 0.5, 9), (0.1, 1.0, 25), (1.0, 2.0, 12)])
def test_fft_round_off_stays_within_the_proven_bound(q: float, sigma: float, count: int) -> None:
    single = subsampled_gaussian_pld(q, sigma, "remove", interval=0.02, tail_mass=1e-12)
    composed = compose([(single, count)], tail_mass=1e-12)
    exact = exact_composition(single, count)  # exact[j]: mass at loss (count·offset + j)Δ
    window = np.zeros(composed.pmf.size, dtype=np.longdouble)
    lo = composed.offset - count * single.offset
    part = exact[max(lo, 0) : lo + composed.pmf.size]
    window[max(-lo, 0) : max(-lo, 0) + part.size] = part
    error = float(np.sqrt(np.sum((composed.pmf.astype(np.longdouble) - window) ** 2)))
    # wrapped-around mass (≤ slack in ℓ1, hence in ℓ2) is the only other difference
    assert error <= composed.roundoff + composed.slack
    assert 0 < composed.roundoff < 1e-11  # and the bound is small enough to matter
    # a query's allowance is B·‖w‖₂, so every δ(ε) is above the exact discrete one
    losses = (count * single.offset + np.arange(exact.size)) * single.interval
    for eps in (0.0, 0.5, 2.0):
        above = losses > eps
        exact_delta = float(np.dot(exact[above], -np.expm1(eps - losses[above]).astype(np.longdouble)))
        assert composed.delta(eps) >= exact_delta + composed.infinity_mass


def test_tilted_composition_is_above_the_exact_discrete_delta() -> None:
    single = subsampled_gaussian_pld(1e-4, 0.5, "remove", interval=0.02, tail_mass=1e-12)
    exact = exact_composition(single, 6)
    losses = (6 * single.offset + np.arange(exact.size)) * single.interval
    for eps in (1.0, 3.0):
        tilted = compose([(single, 6)], tail_mass=1e-12, centre=eps)
        assert tilted.roundoff_tilt[1] > 0  # it was tilted
        above = losses > eps
        exact_delta = float(np.dot(exact[above], -np.expm1(eps - losses[above]).astype(np.longdouble)))
        assert exact_delta <= tilted.delta(eps) - tilted.infinity_mass <= exact_delta * (1 + 1e-6) + tilted.slack


def test_fft_relative_error_is_the_higham_bound() -> None:
    u = 2.0**-53
    eta = 2 * (2 * u + 4 * u / (1 - 4 * u) * (math.sqrt(2) + 2 * u))  # doubled for mixed radix
    assert fft_relative_error(1 << 16) == pytest.approx(18 * eta / (1 - 18 * eta), rel=1e-12)
    assert fft_relative_error(1 << 16) < fft_relative_error(3 << 16) < 1e-13


# --- huge step counts and extreme inputs: sound or vacuous, never 0 (issue 10, item 1) -----------------------


@pytest.mark.parametrize(
    "q,sigma,steps",
    [(0.01, 1.0, 10**12), (0.01, 1.0, 10**15), (0.01, 1.051271, 10**18), (0.01, 30.0, 10**18), (1.0, 1.0, 10**18),
     (1.0, 1e-200, 3), (0.5, 1e-100, 10)],
)
def test_degenerate_plds_are_vacuous_never_optimistic(q: float, sigma: float, steps: int) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no numpy warning escapes
        pld = SubsampledGaussianPld([Phase(q, sigma, steps)])
        eps, delta = pld.epsilon(1e-5), pld.delta(2.0)
    assert eps == math.inf and delta == 1.0


def test_huge_but_representable_step_counts_stay_above_the_exact_value() -> None:
    for steps in (10**6, 10**9):
        eps = SubsampledGaussianPld([Phase(1.0, 100.0, steps)]).epsilon(1e-5)
        assert eps >= gaussian_epsilon(math.sqrt(steps) / 100.0, 1e-5) * (1 - 1e-12)


# --- fixed-size batches without replacement, replace-one (issue 11, item 3) -----------------------------------


def wor_one_step_delta(q: float, sigma: float, eps: float) -> float:
    """Balle, Barthe, Gaboardi 2018, Thm. 10: δ(ε) = q·δ_G(log(1 + (e^ε − 1)/q)), μ = 2/σ (sensitivity 2C)."""
    return q * gaussian_delta(2.0 / sigma, math.log1p(math.expm1(eps) / q))


@pytest.mark.parametrize("q,sigma", [(0.05, 1.0), (256 / 60000, 1.1), (0.5, 3.0)])
def test_without_replacement_single_step_is_the_amplified_profile(q: float, sigma: float) -> None:
    pld = without_replacement_gaussian_pld(q, sigma / 2, interval=1e-3)  # the accountant halves σ (2C)
    assert pld.pmf.min() >= 0 and abs(pld.pmf.sum() + pld.infinity_mass - 1) < 1e-12
    losses = pld.losses()
    k = np.flatnonzero(np.isclose(losses, 0.25))[0]
    assert pld.pmf[2 * (-pld.offset) - k] == pytest.approx(math.exp(-0.25) * pld.pmf[k], rel=1e-12)  # symmetric
    for eps in (0.0, 0.1, 0.5, 1.0, 2.0):
        exact = wor_one_step_delta(q, sigma, eps)
        assert exact * (1 - 1e-9) <= pld.delta(eps) <= exact * (1 + 1e-6) + 1e-15  # ε on the grid: exact there


@pytest.mark.parametrize("sigma,steps", [(1.0, 1), (2.0, 10), (6.0, 300)])
def test_without_replacement_full_batch_is_the_gaussian_with_sensitivity_2(sigma: float, steps: int) -> None:
    acc = PldAccountant(neighbouring="replace_one").compose(SampledWithoutReplacement(500, 500, Gaussian(sigma)), steps)
    exact = gaussian_epsilon(2.0 * math.sqrt(steps) / sigma, 1e-6)
    assert exact <= acc.distribution().epsilon(1e-6) <= exact * 1.005


def test_without_replacement_is_bracketed_and_below_its_rdp_bound() -> None:
    n, batch, sigma, steps = 60000, 256, 1.1, 7000  # the example: RDP 17.07
    phase = Phase(batch / n, sigma / 2, steps, "without_replacement")
    upper = SubsampledGaussianPld([phase])
    lower = SubsampledGaussianPld([phase], interval=upper.interval / 4, pessimistic=False)
    assert list(upper.by_direction) == ["replace_one"]  # one symmetric PLD
    eps = upper.epsilon(1e-5)
    assert lower.epsilon(1e-5) <= eps <= lower.epsilon(1e-5) * 1.01
    assert 12.0 < eps < 17.07
    poisson = SubsampledGaussianPld([Phase(batch / n, sigma, steps)]).epsilon(1e-5)
    assert eps > 4 * poisson  # twice the sensitivity costs far more than Poisson add/remove


@pytest.mark.xfail(
    not hasattr(Accountant, "unit_sigma"), strict=True,
    reason="min(PLD, RDP) needs the RDP side at sensitivity 2C under replace-one (branch rdp, Accountant.unit_sigma)",
)
def test_without_replacement_accountant_reports_the_pld_bound() -> None:
    event = Repeated(SampledWithoutReplacement(60000, 256, Gaussian(1.1)), 7000)
    acc = PldAccountant(neighbouring="replace_one").compose(event)
    rdp_eps = RdpAccountant(neighbouring="replace_one").compose(event).epsilon(1e-5)
    assert rdp_eps == pytest.approx(17.07, abs=0.01)
    assert acc.epsilon(1e-5) == acc.distribution().epsilon(1e-5) < rdp_eps
    full = PldAccountant(neighbouring="replace_one").compose(SampledWithoutReplacement(10, 10, Gaussian(2.0)), 10)
    assert full.epsilon(1e-6) >= gaussian_epsilon(2.0 * math.sqrt(10) / 2.0, 1e-6)


def test_phases_of_different_relations_do_not_mix() -> None:
    with pytest.raises(InvalidArgumentError) as info:
        SubsampledGaussianPld([Phase(0.01, 1.0, 10), Phase(0.01, 1.0, 10, "without_replacement")])
    assert info.value.name == "phases"
    both = SubsampledGaussianPld([Phase(1.0, 2.0, 3), Phase(0.01, 1.0, 10, "without_replacement")])
    assert both.epsilon(1e-5) > SubsampledGaussianPld([Phase(0.01, 1.0, 10, "without_replacement")]).epsilon(1e-5)


# --- the accountant: PldAccountant, accountant="pld" in the public API ----------------------------------------


@pytest.mark.parametrize(
    "q,sigma,steps",
    [(1e-4, 0.5, 1), (1e-4, 2.0, 1000), (1e-4, 10.0, 100000), (1e-3, 1.0, 100000), (1e-2, 0.5, 1000),
     (1e-2, 2.0, 1), (1e-2, 10.0, 100000), (0.1, 0.5, 100), (0.1, 2.0, 100000), (0.1, 10.0, 1000),
     (1.0, 0.5, 1), (1.0, 1.0, 100), (1.0, 2.0, 1000), (1.0, 10.0, 100000)],
)
def test_pld_lies_between_a_lower_bound_and_rdp(q: float, sigma: float, steps: int) -> None:
    event = dpsgd_event(sigma=sigma, q=q, steps=steps)
    acc = PldAccountant().compose(event)
    pld = acc.distribution()
    rdp_eps = RdpAccountant().compose(event).epsilon(1e-6)
    lower = SubsampledGaussianPld([Phase(q, sigma, steps)], interval=pld.interval / 2, pessimistic=False)
    assert lower.epsilon(1e-6) <= pld.epsilon(1e-6) <= rdp_eps  # the raw PLD bound, before min(PLD, RDP)
    assert acc.epsilon(1e-6) == pld.epsilon(1e-6)


def test_pld_is_noticeably_tighter_than_rdp_on_the_mission() -> None:
    pld_eps = dpcalib.epsilon(sigma=1.0, q=0.01, steps=1000, delta=1e-5, accountant="pld")
    rdp_eps = dpcalib.epsilon(sigma=1.0, q=0.01, steps=1000, delta=1e-5, accountant="rdp")
    assert pld_eps < 0.9 * rdp_eps
    pld_delta = dpcalib.delta(sigma=1.0, q=0.01, steps=1000, eps=1.5, accountant="pld")
    assert pld_delta < 0.5 * dpcalib.delta(sigma=1.0, q=0.01, steps=1000, eps=1.5, accountant="rdp")


def test_state_dict_round_trips_exactly() -> None:
    acc = make_accountant("pld", value_discretization_interval=2e-3)
    acc.compose(dpsgd_event(sigma=1.1, q=0.02, steps=300)).compose(Gaussian(8.0), count=3)
    acc.compose(Composed((PoissonSampled(0.05, Gaussian(2.0)),)), count=7)
    state = json.loads(json.dumps(acc.state_dict()))
    again = accountant_from_state_dict(state)
    assert isinstance(again, PldAccountant) and again.state_dict() == acc.state_dict()
    assert again.epsilon(1e-5) == acc.epsilon(1e-5) and again.delta(1.0) == acc.delta(1.0)
    assert PldAccountant.from_state_dict(state).history == acc.history


def test_composing_step_by_step_equals_repeated() -> None:
    one = PldAccountant()
    for _ in range(20):
        one.compose(PoissonSampled(0.05, Gaussian(1.0)))
    assert one.epsilon(1e-5) == PldAccountant().compose(PoissonSampled(0.05, Gaussian(1.0)), 20).epsilon(1e-5)


def test_empty_accountant_spends_nothing() -> None:
    assert PldAccountant().epsilon(1e-5) == 0.0 and PldAccountant().delta(1.0) == 0.0


def test_unsupported_events_and_relations_are_refused_clearly() -> None:
    acc = PldAccountant(neighbouring="add_remove")
    with pytest.raises(UnsupportedEventError, match="replace_one"):
        acc.compose(SampledWithoutReplacement(1000, 10, Gaussian(1.0)))
    assert acc.history == []
    replace_one = PldAccountant(neighbouring="replace_one")
    with pytest.raises(UnsupportedEventError, match="add_remove"):
        replace_one.compose(PoissonSampled(0.01, Gaussian(1.0)))
    assert replace_one.history == []
    with pytest.raises(InvalidArgumentError) as info:
        PldAccountant(value_discretization_interval=0.0)
    assert info.value.name == "value_discretization_interval"


def test_calibrated_sigma_meets_the_target() -> None:
    # its speed is a benchmark figure (benchmarks/bench_pld.py, section 2), not a timed assertion
    sigma = dpcalib.calibrate_sigma(eps=2.0, delta=1e-5, q=0.01, steps=1000, accountant="pld")
    assert dpcalib.epsilon(sigma=sigma, q=0.01, steps=1000, delta=1e-5, accountant="pld") <= 2.0
    assert dpcalib.epsilon(sigma=sigma * (1 - 1e-4), q=0.01, steps=1000, delta=1e-5, accountant="pld") > 2.0
    assert sigma < 0.97 * dpcalib.calibrate_sigma(eps=2.0, delta=1e-5, q=0.01, steps=1000, accountant="rdp")


def test_other_calibrations_meet_their_targets() -> None:
    steps = dpcalib.calibrate_steps(eps=1.0, delta=1e-5, sigma=1.0, q=0.01, accountant="pld")
    assert dpcalib.epsilon(sigma=1.0, q=0.01, steps=steps, delta=1e-5, accountant="pld") <= 1.0
    assert dpcalib.epsilon(sigma=1.0, q=0.01, steps=steps + 1, delta=1e-5, accountant="pld") > 1.0
    q = dpcalib.calibrate_q(eps=1.0, delta=1e-5, sigma=1.0, steps=500, accountant="pld")
    assert dpcalib.epsilon(sigma=1.0, q=q, steps=500, delta=1e-5, accountant="pld") <= 1.0


# --- the CLI with --accountant pld --------------------------------------------------------------------------


def cli(capsys, *argv: str) -> tuple[int, str, str]:
    from dpcalib.cli import run

    status = run(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


PLAN = ["--q", "0.01", "--steps", "1000"]


def test_every_command_accepts_the_pld_accountant(capsys) -> None:
    status, out, _ = cli(capsys, "sigma", "--eps", "2", "--delta", "1e-5", *PLAN, "--accountant", "pld", "--json")
    assert status == 0 and json.loads(out)["sigma"] == dpcalib.calibrate_sigma(
        eps=2.0, delta=1e-5, q=0.01, steps=1000, accountant="pld")
    status, out, _ = cli(capsys, "epsilon", "--sigma", "1", "--delta", "1e-5", *PLAN, "--accountant", "pld", "--json")
    eps = json.loads(out)["eps"]
    assert status == 0 and eps == dpcalib.epsilon(sigma=1.0, q=0.01, steps=1000, delta=1e-5, accountant="pld")
    status, out, _ = cli(capsys, "delta", "--sigma", "1", "--eps", str(eps), *PLAN, "--accountant", "pld", "--json")
    assert status == 0 and json.loads(out)["delta"] <= 1e-5 * (1 + 1e-9)
    status, out, _ = cli(capsys, "steps", "--eps", "2", "--delta", "1e-5", "--sigma", "1", "--q", "0.01",
                         "--accountant", "pld", "--json")
    assert status == 0 and json.loads(out)["steps"] == dpcalib.calibrate_steps(
        eps=2.0, delta=1e-5, sigma=1.0, q=0.01, accountant="pld")


def test_compare_and_curve_show_what_pld_buys(capsys) -> None:
    status, out, _ = cli(capsys, "compare", "--eps", "2", "--delta", "1e-5", *PLAN, "--json")
    rows = {row["accountant"]: row for row in json.loads(out)["accountants"]}
    assert status == 0 and rows["pld"]["sigma"] < 0.95 * rows["rdp"]["sigma"]
    assert rows["pld"]["eps_at_reference_sigma"] < 0.9 * 2.0
    status, out, _ = cli(capsys, "curve", "--sigma", "1", "--q", "0.01", "--steps", "1000", "--points", "4", "--csv")
    header, *lines = out.strip().splitlines()
    rdp_col, pld_col = header.split(",").index("eps_rdp"), header.split(",").index("eps_pld")
    assert status == 0 and all(float(r.split(",")[pld_col]) < float(r.split(",")[rdp_col]) for r in lines)


def test_cli_bad_input_under_pld_is_one_line_and_exit_2(capsys) -> None:
    status, out, err = cli(capsys, "sigma", "--eps", "2", "--delta", "1.5", *PLAN, "--accountant", "pld")
    assert status == 2 and out == "" and err.count("\n") == 1 and "delta" in err
