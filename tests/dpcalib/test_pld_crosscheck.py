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


def dp_accounting_wor_rdp_epsilon(n: int, batch: int, unit_sigma: float, steps: int, delta: float) -> float:
    """dp_accounting's RDP bound for fixed-size sampling without replacement under replace-one (Wang, Balle,
    Kasiviswanathan 2019); its noise multiplier is per unit of sensitivity, so it is given σ/2 for sensitivity 2C."""
    from dp_accounting import dp_event, privacy_accountant
    from dp_accounting.rdp import rdp_privacy_accountant

    acc = rdp_privacy_accountant.RdpAccountant(neighboring_relation=privacy_accountant.NeighboringRelation.REPLACE_ONE)
    acc.compose(dp_event.SampledWithoutReplacementDpEvent(n, batch, dp_event.GaussianDpEvent(unit_sigma)), steps)
    return acc.get_epsilon(delta)


@pytest.mark.parametrize(
    "n,batch,sigma,steps", [(60000, 256, 1.1, 7000), (1000, 10, 2.0, 500), (50000, 500, 4.0, 1000), (100, 50, 3.0, 20)]
)
def test_without_replacement_pld_is_below_the_peer_rdp_bound(n: int, batch: int, sigma: float, steps: int) -> None:
    # dp_accounting's PLD does not support sampling without replacement; its RDP does, and is an upper bound too
    ours = SubsampledGaussianPld([Phase(batch / n, sigma / 2, steps, "without_replacement")])
    lower = SubsampledGaussianPld([Phase(batch / n, sigma / 2, steps, "without_replacement")],
                                  interval=ours.interval / 4, pessimistic=False)
    peer = dp_accounting_wor_rdp_epsilon(n, batch, sigma / 2, steps, 1e-6)
    assert lower.epsilon(1e-6) <= ours.epsilon(1e-6) <= peer
