"""The discrete pipeline of distributed DP: the Skellam sampler, the rotation, conditional rounding, the ring codec
in the secure-aggregation protocol, wrap-around, and the errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats

import dpcalib
from dpcalib.errors import InvalidArgumentError
from fltrain.randomness import SecureRandom, poisson, skellam
from fltrain.secagg import DiscreteCodec, RingCodec, RoundingError, SecAggParams, complete_graph, run_secure_aggregation
from fltrain.secagg.discrete import conditional_round, hadamard, rotation_signs


def chi_square_pvalue(draws: np.ndarray, cdf, edges: np.ndarray) -> float:
    """Pearson's test of integer ``draws`` against the distribution with ``cdf``, binned at the integer ``edges``
    (bin i holds edges[i-1] < x <= edges[i]; the first and last bins take the tails)."""
    expected = np.diff(np.concatenate([[0.0], cdf(edges), [1.0]]))
    observed = np.bincount(np.searchsorted(edges, draws, side="left"), minlength=expected.size)
    return float(stats.chisquare(observed, expected * draws.size).pvalue)


@pytest.mark.parametrize("variance", [0.7, 6.0, 2.0e5])
def test_skellam_sampler_has_the_skellam_distribution(variance):
    draws = skellam(SecureRandom(), variance, 200_000).numpy()
    assert draws.dtype == np.int64
    # integer edges between the 1e-4 and 1 - 1e-4 quantiles (at most 40 bins), so every bin expects >= 20 draws
    low, high = stats.skellam.ppf([1e-4, 1 - 1e-4], variance / 2, variance / 2)
    edges = np.unique(np.linspace(low, high, 41).round().astype(np.int64))
    assert chi_square_pvalue(draws, lambda k: stats.skellam.cdf(k, variance / 2, variance / 2), edges) > 1e-4


def test_poisson_sampler_matches_the_pmf_and_checks_its_rate():
    draws = poisson(SecureRandom(), 3.5, 100_000).numpy()
    assert chi_square_pvalue(draws, lambda k: stats.poisson.cdf(k, 3.5), np.arange(0, 11)) > 1e-4
    for bad in (0.0, -1.0, 2e9, float("nan")):
        with pytest.raises(InvalidArgumentError):
            poisson(SecureRandom(), bad, 4)


def test_hadamard_rotation_keeps_the_norm_and_inverts():
    x = np.random.default_rng(0).normal(size=(3, 64))
    y = hadamard(rotation_signs(7, 64) * x)
    np.testing.assert_allclose(np.linalg.norm(y, axis=1), np.linalg.norm(x, axis=1))
    np.testing.assert_allclose(rotation_signs(7, 64) * hadamard(y), x, atol=1e-12)
    with pytest.raises(InvalidArgumentError):
        hadamard(np.ones(12))


def test_conditional_rounding_keeps_the_norm_bound_and_is_unbiased():
    rng = SecureRandom()
    y = np.random.default_rng(1).normal(size=256) * 3.0
    bound = dpcalib.rounded_l2_bound(float(np.linalg.norm(y)), 256)
    rounded = np.stack([conditional_round(y, bound, rng) for _ in range(400)])
    assert rounded.dtype == np.int64
    assert np.all(np.linalg.norm(rounded, axis=1) <= bound)
    assert np.all(np.abs(rounded - y) < 1.0)
    assert abs(float(np.mean(rounded - y))) < 0.01
    with pytest.raises(RoundingError):
        conditional_round(y, float(np.linalg.norm(np.round(y))) * 0.5, rng)


def test_modular_sum_with_wrap_around_decodes_as_documented():
    codec = RingCodec(8)
    vectors = [np.array([100, -100, 3, 127]), np.array([100, -100, -5, 1])]
    total = codec.ring.add(codec.encode(vectors[0]), codec.encode(vectors[1]))
    exact = vectors[0] + vectors[1]  # 200, -200, -2, 128: the first, second and last leave [-128, 128)
    np.testing.assert_array_equal(codec.decode(total), (exact + 128) % 256 - 128)
    np.testing.assert_array_equal(codec.decode(total), [-56, 56, -2, -128])
    with pytest.raises(InvalidArgumentError):
        codec.encode(np.array([0.5, 1.0]))


def plan_and_codec(bits: int = 16):
    plan = dpcalib.plan_skellam(eps=4.0, delta=1e-5, q=1.0, steps=20, bits=bits, clip=1.0, dim=200, clients=6,
                                min_survivors=4)
    return plan, DiscreteCodec(plan.bits, plan.scale, plan.clip, plan.dim, plan.l2_sensitivity)


def test_pipeline_through_secure_aggregation_with_a_dropout():
    plan, codec = plan_and_codec()
    rng = SecureRandom()
    data = np.random.default_rng(2).normal(size=(6, 200)) * 0.1
    data[0] *= 100.0  # clipped to norm 1 by its client
    zero = np.zeros(codec.padded_dim, dtype=np.int64)
    inputs = {u: codec.encode(data[u - 1], seed=11, noise=zero, rng=rng) for u in range(1, 7)}
    params = SecAggParams(codec.padded_dim, codec.ring_codec, threshold=4, min_survivors=4)
    result, _ = run_secure_aggregation(inputs, params, graph=complete_graph(range(1, 7)), dropouts={"masked_input": [6]})
    decoded = codec.decode(result.total, seed=11)
    clipped = data[:5] / np.maximum(1.0, np.linalg.norm(data[:5], axis=1, keepdims=True))
    # without noise the only error is the rounding: each client's moves its rotated vector by < √d integer units
    error = np.linalg.norm(decoded - clipped.sum(axis=0))
    assert error <= 5 * np.sqrt(codec.padded_dim) / codec.scale
    # with the Skellam shares the error has the planned std (floor of 4 shares, 5 present)
    noise = {u: skellam(rng, plan.share_variance, codec.padded_dim).numpy() for u in range(1, 6)}
    noisy = sum(codec.encode(data[u - 1], seed=11, noise=noise[u], rng=rng).astype(np.uint64) for u in range(1, 6))
    residual = codec.decode(codec.ring_codec.decode(noisy), seed=11) - clipped.sum(axis=0)  # uint64 wraps mod 2^64
    assert np.std(residual) == pytest.approx(plan.noise_std * np.sqrt(5 / 4), rel=0.15)


def test_bad_settings_are_typed():
    plan, codec = plan_and_codec()
    with pytest.raises(InvalidArgumentError):
        DiscreteCodec(63, 1.0, 1.0, 10, 5.0)
    with pytest.raises(InvalidArgumentError):
        codec.encode(np.zeros(200), seed=1, noise=np.zeros(3, dtype=np.int64), rng=SecureRandom())
    with pytest.raises(InvalidArgumentError):
        codec.encode(np.full(200, np.nan), seed=1, noise=np.zeros(codec.padded_dim, dtype=np.int64), rng=SecureRandom())
    with pytest.raises(InvalidArgumentError, match="bits must be >= "):
        plan_and_codec(bits=5)
    assert codec.wrap_probability(6, plan.mu * 6 / 4) == pytest.approx(plan.wrap_probability, rel=1e-9)
