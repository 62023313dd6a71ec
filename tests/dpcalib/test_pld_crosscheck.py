"""Cross-check of dpcalib.pld against dp_accounting's PLD (the `test` extra installs dp-accounting 0.6.0).

dp_accounting's optimistic estimate (``pessimistic_estimate=False``) is a lower bound of the true ε, and its
pessimistic connect-the-dots estimate an upper bound built the same way as ours: our ε must lie above the former
and agree with the latter at the same grid interval.
"""

from __future__ import annotations

import pytest

from dpcalib.pld import Phase, SubsampledGaussianPld

pld_lib = pytest.importorskip("dp_accounting.pld.privacy_loss_distribution")

pytestmark = pytest.mark.crosscheck


def dp_accounting_epsilon(q: float, sigma: float, steps: int, delta: float, *, pessimistic: bool,
                          interval: float) -> float:
    single = pld_lib.from_gaussian_mechanism(sigma, pessimistic_estimate=pessimistic, sampling_prob=q,
                                             value_discretization_interval=interval)
    return single.self_compose(steps).get_epsilon_for_delta(delta)


@pytest.mark.parametrize(
    "q,sigma,steps",
    [(1e-3, 1.0, 10000), (0.01, 0.7, 100), (0.01, 1.0, 1000), (0.1, 2.0, 300), (0.3, 5.0, 30), (1.0, 3.0, 10)],
)
def test_above_dp_accounting_optimistic_and_matching_its_pessimistic(q: float, sigma: float, steps: int) -> None:
    ours = SubsampledGaussianPld([Phase(q, sigma, steps)], interval=1e-3)
    eps = ours.epsilon(1e-6)
    lower = dp_accounting_epsilon(q, sigma, steps, 1e-6, pessimistic=False, interval=1e-4)
    same_grid = dp_accounting_epsilon(q, sigma, steps, 1e-6, pessimistic=True, interval=1e-3)
    assert lower <= eps
    assert eps == pytest.approx(same_grid, rel=2e-3)


def test_tiny_delta_above_dp_accounting_optimistic() -> None:
    eps = SubsampledGaussianPld([Phase(0.01, 1.0, 1000)]).epsilon(1e-12)
    lower = dp_accounting_epsilon(0.01, 1.0, 1000, 1e-12, pessimistic=False, interval=5e-5)
    assert lower <= eps <= lower * 1.01  # its rounding-down lower bound is ~0.6 % low at this grid
