"""The secret source of DP noise and sampling: correct distributions, fresh on every start, never serialisable;
the reproducible one repeats from its seed and its state."""

from __future__ import annotations

import math
import pickle

import pytest
import torch
from scipy import stats

from fltrain.randomness import ReproducibleRandom, SecureRandom


def test_two_secure_sources_draw_different_streams():
    a, b = SecureRandom(), SecureRandom()
    assert not torch.equal(a.rand(64, torch.float64), b.rand(64, torch.float64))
    assert not torch.equal(a.randn(64), a.randn(64))  # and one source never repeats itself


def test_secure_source_cannot_be_pickled_or_checkpointed(tmp_path):
    source = SecureRandom()
    with pytest.raises(TypeError, match="secret"):
        pickle.dumps(source)
    with pytest.raises(TypeError):
        torch.save({"rng": source}, tmp_path / "x.pt")


@pytest.mark.parametrize("dtype, bits", [(torch.float32, 24), (torch.float64, 53)])
def test_uniforms_lie_on_the_grid_of_torch_rand_and_are_uniform(dtype, bits):
    u = SecureRandom().rand((200, 1000), dtype)
    assert u.dtype == dtype and u.shape == (200, 1000)
    assert float(u.min()) >= 0.0 and float(u.max()) < 1.0
    scaled = u.double() * 2.0**bits
    assert torch.equal(scaled, scaled.floor())  # multiples of 2^-bits: PoissonSampler's rounding argument holds
    assert stats.kstest(u.flatten().double().numpy(), "uniform").pvalue > 1e-6


def test_gaussians_have_the_normal_distribution():
    z = SecureRandom().randn(400_001, torch.float64)  # odd: the last Box–Muller pair is cut
    assert z.shape == (400_001,)
    n = z.numel()
    assert abs(float(z.mean())) < 5 / math.sqrt(n)
    assert abs(float(z.var()) - 1) < 5 * math.sqrt(2 / n)
    assert stats.kstest(z.numpy(), "norm").pvalue > 1e-6
    # the tails: P(|Z| > 3) = 0.0027, within 5 binomial standard errors
    p = 2 * stats.norm.sf(3)
    assert abs(float((z.abs() > 3).double().mean()) - p) < 5 * math.sqrt(p * (1 - p) / n)
    assert SecureRandom().randn((3, 4)).dtype == torch.float32


def test_permutations_are_uniform():
    source = SecureRandom()
    counts = torch.zeros(4, 4)
    trials = 6000
    for _ in range(trials):
        perm = source.randperm(4)
        assert sorted(perm.tolist()) == [0, 1, 2, 3]
        counts[torch.arange(4), perm] += 1
    # every value at every position with probability 1/4 (chi-square over the 16 cells, 9 degrees of freedom)
    expected = trials / 4
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert stats.chi2.sf(chi2, 9) > 1e-6


def test_reproducible_source_repeats_from_seed_and_state():
    a, b = ReproducibleRandom(5), ReproducibleRandom(5)
    assert torch.equal(a.randn(10), b.randn(10))
    state = a.state_dict()
    first = a.rand(7)
    a.load_state_dict(state)
    assert torch.equal(a.rand(7), first)
    assert torch.equal(ReproducibleRandom(5).randperm(9), torch.randperm(9, generator=torch.Generator().manual_seed(5)))
    assert not ReproducibleRandom(5).secure and SecureRandom().secure
