"""Cross-checks against the peer libraries (test extra only; never runtime dependencies)."""

import logging
import warnings

import numpy as np
import pytest

import dpcalib
from dpcalib.rdp import poisson_gaussian_rdp, without_replacement_gaussian_rdp

from .mpref import reference_rdp

pytestmark = pytest.mark.crosscheck

ORDERS = [1.5, 2.5, 7.3, 10.9, 2.0, 12.0, 32.0, 256.0]
GRID = [(q, s) for q in (1e-4, 0.01, 0.1, 0.3, 0.7) for s in (0.6, 1.0, 2.0, 5.0, 20.0)]


@pytest.fixture(scope="module")
def opacus_rdp():
    analysis = pytest.importorskip("opacus.accountants.analysis.rdp")
    return lambda q, sigma, orders: np.array(analysis.compute_rdp(q=q, noise_multiplier=sigma, steps=1, orders=orders))


@pytest.fixture(scope="module")
def dpa():
    return pytest.importorskip("dp_accounting")


def dpa_rdp(dpa, event, orders, relation=None):
    from dp_accounting.rdp import rdp_privacy_accountant

    kwargs = {} if relation is None else {"neighboring_relation": relation}
    acc = rdp_privacy_accountant.RdpAccountant(orders=orders, **kwargs)
    acc.compose(event, 1)
    return np.asarray(acc._rdp)


@pytest.mark.parametrize("q,sigma", GRID)
def test_equals_opacus_at_integer_and_fractional_orders(opacus_rdp, q, sigma):
    theirs = opacus_rdp(q, sigma, ORDERS)
    ours = poisson_gaussian_rdp(q, sigma, ORDERS)
    # Opacus stops its series once terms of A_α fall below e^-30 (~1e-13 absolute), hence the absolute slack
    np.testing.assert_allclose(ours, theirs, rtol=1e-9, atol=1e-12)


def test_where_opacus_loses_digits_we_match_mpmath(opacus_rdp):
    q, sigma, alpha = 1e-4, 20.0, 2.5  # tiny RDP: A_α - 1 ~ 1e-10, Opacus computes A_α then subtracts 1
    ours = poisson_gaussian_rdp(q, sigma, [alpha])[0]
    exact = reference_rdp(q, sigma, alpha)
    assert ours == pytest.approx(exact, rel=1e-12)
    assert abs(opacus_rdp(q, sigma, [alpha])[0] - exact) > 1e-6 * exact


@pytest.mark.parametrize("q,sigma", GRID)
def test_equals_dp_accounting_at_integer_orders(dpa, q, sigma):
    orders = [2.0, 3.0, 12.0, 64.0, 256.0, 1024.0]
    theirs = dpa_rdp(dpa, dpa.PoissonSampledDpEvent(q, dpa.GaussianDpEvent(sigma)), orders)
    np.testing.assert_allclose(poisson_gaussian_rdp(q, sigma, orders), theirs, rtol=1e-9, atol=1e-12)


def test_dp_accounting_is_wrong_at_fractional_orders_and_we_are_not(dpa):
    """dp-accounting 0.6.0 drops the signs of the generalised binomial coefficients: it overestimates, and its
    series fails to converge for q >= 0.1 at small orders (it then returns inf). We match mpmath instead."""
    logging.getLogger().setLevel(logging.ERROR)
    q, sigma, orders = 0.3, 1.0, [1.5, 2.5]
    theirs = dpa_rdp(dpa, dpa.PoissonSampledDpEvent(q, dpa.GaussianDpEvent(sigma)), orders)
    ours = poisson_gaussian_rdp(q, sigma, orders)
    exact = np.array([reference_rdp(q, sigma, a) for a in orders])
    np.testing.assert_allclose(ours, exact, rtol=1e-12)
    assert np.all(theirs > ours * 1.001)


def test_without_replacement_agrees_with_dp_accounting(dpa):
    orders = [2.0, 3.0, 12.0, 64.0]
    for n, batch, sigma in [(1000, 10, 1.0), (60000, 256, 0.8), (100, 50, 2.0)]:
        theirs = dpa_rdp(
            dpa,
            dpa.SampledWithoutReplacementDpEvent(n, batch, dpa.GaussianDpEvent(sigma)),
            orders,
            dpa.NeighboringRelation.REPLACE_ONE,
        )
        ours = without_replacement_gaussian_rdp(n, batch, sigma, orders)
        # Both use Wang et al. 2019's bound; dp_accounting also applies the Gaussian-specific refinement of the
        # j >= 3 terms (their Theorem 27), so ours is the same at order 2 and never smaller (never less private).
        assert ours[0] == pytest.approx(theirs[0], rel=1e-12)
        assert np.all(ours >= theirs * (1 - 1e-12))


def test_fixed_size_sampler_is_dp_accounting_at_half_the_noise_multiplier(dpa):
    """dp_accounting's noise multiplier is relative to the sensitivity of the relation (2C under replace-one);
    dpcalib's is relative to the clipping norm C for every sampler and the accountant halves it. So dpcalib's
    fixed-size sampler at σ is dp_accounting's REPLACE_ONE event at σ/2 (equal at order 2, see above)."""
    orders = [2.0, 3.0, 12.0]
    sigma, steps = 1.1, 7000
    event = dpcalib.training_event("fixed", sigma=sigma, steps=steps, dataset_size=60000, batch_size=256)
    ours = dpcalib.make_accountant("rdp", sampler="fixed").compose(event).rdp(orders)
    theirs = steps * dpa_rdp(
        dpa,
        dpa.SampledWithoutReplacementDpEvent(60000, 256, dpa.GaussianDpEvent(sigma / 2)),
        orders,
        dpa.NeighboringRelation.REPLACE_ONE,
    )
    assert ours[0] == pytest.approx(theirs[0], rel=1e-12)
    assert np.all(ours >= theirs * (1 - 1e-12))


def test_mission_epsilon_not_larger_than_the_peers(dpa):
    opacus_accountants = pytest.importorskip("opacus.accountants")
    ours = dpcalib.epsilon(sigma=1.0, q=0.01, steps=1000, delta=1e-5)
    from dp_accounting.rdp import rdp_privacy_accountant

    acc = rdp_privacy_accountant.RdpAccountant()
    acc.compose(dpa.PoissonSampledDpEvent(0.01, dpa.GaussianDpEvent(1.0)), 1000)
    theirs_dpa = acc.get_epsilon(1e-5)
    opacus = opacus_accountants.RDPAccountant()
    opacus.history = [(1.0, 0.01, 1000)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs_opacus = opacus.get_epsilon(1e-5)
    assert ours <= theirs_dpa and ours <= theirs_opacus
    assert ours == pytest.approx(theirs_dpa, rel=1e-3)


def test_calibrated_sigma_not_larger_than_the_peers(dpa):
    utils = pytest.importorskip("opacus.accountants.utils")
    from dp_accounting import mechanism_calibration
    from dp_accounting.rdp import rdp_privacy_accountant

    ours = dpcalib.calibrate_sigma(eps=2.0, delta=1e-5, q=0.01, steps=1000)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs_opacus = utils.get_noise_multiplier(
            target_epsilon=2.0, target_delta=1e-5, sample_rate=0.01, steps=1000, accountant="rdp"
        )
    theirs_dpa = mechanism_calibration.calibrate_dp_mechanism(
        rdp_privacy_accountant.RdpAccountant,
        lambda s: dpa.SelfComposedDpEvent(dpa.PoissonSampledDpEvent(0.01, dpa.GaussianDpEvent(s)), 1000),
        2.0,
        1e-5,
    )
    assert ours <= theirs_opacus and ours <= theirs_dpa
