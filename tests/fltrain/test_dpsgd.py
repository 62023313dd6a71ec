"""DP-SGD pieces: per-sample gradients of both engines, clipping, noise."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from fltrain.dpsgd import make_engine, noisy_gradient, supports_layerwise
from fltrain.models import ParamLayout, cifar_cnn, logistic_regression, mlp, scatter_cnn, tanh_cnn
from fltrain.randomness import ReproducibleRandom, SecureRandom

MODELS = {
    "tanh-cnn": (tanh_cnn, (1, 28, 28)),
    "mlp": (lambda: mlp((1, 28, 28)), (1, 28, 28)),
    "logreg": (lambda: logistic_regression((1, 28, 28)), (1, 28, 28)),
    "cifar-cnn": (cifar_cnn, (3, 32, 32)),
    "scatter-cnn": (lambda: scatter_cnn((81, 7, 7)), (81, 7, 7)),
}


def _stacked(model: torch.nn.Module, clients: int, seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {
        n: torch.stack([p.detach() + 0.05 * torch.randn(p.shape, generator=gen, dtype=p.dtype) for _ in range(clients)])
        for n, p in model.named_parameters()
    }


def _single_sample_grads(model, params, x, y):
    """Reference: plain autograd on one record at a time, (K, B) lists of {name: grad}."""
    out = []
    for k in range(y.shape[0]):
        pk = {n: p[k].clone().requires_grad_(True) for n, p in params.items()}
        row = []
        for b in range(y.shape[1]):
            loss = F.cross_entropy(functional_call(model, pk, (x[k, b : b + 1],)), y[k, b : b + 1])
            row.append(dict(zip(pk, torch.autograd.grad(loss, list(pk.values())))))
        out.append(row)
    return out


@pytest.mark.parametrize("model_name", sorted(MODELS))
@pytest.mark.parametrize("engine_name", ["vmap", "layerwise"])
def test_per_sample_gradients_equal_single_sample_autograd(model_name, engine_name):
    build, shape = MODELS[model_name]
    torch.manual_seed(1)
    model = build().double()
    K, B = 2, 4
    params = _stacked(model, K)
    x = torch.randn(K, B, *shape, dtype=torch.float64)
    y = torch.randint(0, 10, (K, B))
    reference = _single_sample_grads(model, params, x, y)
    engine = make_engine(model, engine_name)
    for k in range(K):
        for b in range(B):
            onehot = torch.zeros(K, B, dtype=torch.float64)
            onehot[k, b] = 1.0
            result = engine(params, x, y, onehot, None)  # unclipped: exactly record (k, b)'s gradient
            for name, ref in reference[k][b].items():
                torch.testing.assert_close(result.grads[name][k], ref, atol=1e-6, rtol=0)
                assert float(result.grads[name][1 - k].abs().max()) == 0.0


@pytest.mark.parametrize("engine_name", ["vmap", "layerwise"])
def test_clipped_sum_is_sum_of_clipped_per_sample_gradients(engine_name):
    torch.manual_seed(2)
    model = tanh_cnn().double()
    K, B, clip = 2, 5, 0.05
    params = _stacked(model, K)
    x = torch.randn(K, B, 1, 28, 28, dtype=torch.float64)
    y = torch.randint(0, 10, (K, B))
    weight = torch.ones(K, B, dtype=torch.float64)
    weight[1, 2] = 0.0  # a padding slot contributes nothing
    reference = _single_sample_grads(model, params, x, y)
    engine = make_engine(model, engine_name)
    total = engine(params, x, y, weight, clip).grads
    for k in range(K):
        expected = {n: torch.zeros_like(p[k]) for n, p in params.items()}
        for b in range(B):
            grads = reference[k][b]
            norm = math.sqrt(sum(float(g.pow(2).sum()) for g in grads.values()))
            assert norm > clip  # the test exercises clipping
            for n, g in grads.items():
                expected[n] += weight[k, b] * g * min(1.0, clip / norm)
        for n in expected:
            torch.testing.assert_close(total[n][k], expected[n], atol=1e-9, rtol=1e-7)


@pytest.mark.parametrize("engine_name", ["vmap", "layerwise"])
def test_clipping_bounds_every_per_sample_norm(engine_name):
    torch.manual_seed(3)
    model = tanh_cnn()
    K, B = 2, 6
    params = _stacked(model, K)
    x = 3 * torch.randn(K, B, 1, 28, 28)
    y = torch.randint(0, 10, (K, B))
    engine = make_engine(model, engine_name)
    for clip in (1e-3, 0.1, 10.0):
        for k in range(K):
            for b in range(B):
                onehot = torch.zeros(K, B)
                onehot[k, b] = 1.0
                grads = engine(params, x, y, onehot, clip).grads
                norm = math.sqrt(sum(float(g[k].double().pow(2).sum()) for g in grads.values()))
                assert norm <= clip * (1 + 1e-5)


def test_layerwise_support_detection():
    assert supports_layerwise(tanh_cnn())
    assert supports_layerwise(cifar_cnn())
    assert not supports_layerwise(torch.nn.Sequential(torch.nn.BatchNorm2d(3)))
    with pytest.raises(ValueError):
        make_engine(torch.nn.Sequential(torch.nn.BatchNorm2d(3)), "layerwise")


def test_noise_has_std_sigma_times_clip_over_the_denominator():
    model = tanh_cnn()
    K = 2
    params = _stacked(model, K)
    x = torch.zeros(10, 1, 28, 28)
    y = torch.zeros(10, dtype=torch.int64)
    sigma, clip = 1.3, 0.7
    denominator = torch.tensor([50.0, 200.0])
    index = torch.zeros(K, 3, dtype=torch.int64)
    weight = torch.zeros(K, 3)  # empty batches: the gradient is pure noise / denominator
    grads, _ = noisy_gradient(make_engine(model), params, x, y, index, weight, clip=clip, noise_multiplier=sigma,
                              denominator=denominator, rng=SecureRandom(), max_physical_batch=2)
    flat = ParamLayout.of(model).flatten(grads, lead=1).double()
    n = flat.shape[1]
    for k in range(K):
        expected = sigma * clip / float(denominator[k])
        sample = flat[k] * float(denominator[k]) / (sigma * clip)  # should be N(0, 1) entries
        assert abs(float(sample.mean())) < 5 / math.sqrt(n)
        assert abs(float(sample.var()) - 1.0) < 5 * math.sqrt(2 / n)
        assert float(flat[k].std()) == pytest.approx(expected, rel=5 * math.sqrt(2 / n))


def test_micro_batches_give_the_same_clipped_sum():
    torch.manual_seed(4)
    model = tanh_cnn().double()
    K = 2
    params = _stacked(model, K)
    x = torch.randn(40, 1, 28, 28, dtype=torch.float64)
    y = torch.randint(0, 10, (40,))
    index = torch.randint(0, 40, (K, 13))
    weight = (torch.rand(K, 13) < 0.8).double()
    common = dict(clip=0.1, noise_multiplier=0.0, denominator=torch.tensor([10.0, 10.0], dtype=torch.float64),
                  rng=ReproducibleRandom(0))
    engine = make_engine(model)
    whole, loss_whole = noisy_gradient(engine, params, x, y, index, weight, max_physical_batch=1000, **common)
    parts, loss_parts = noisy_gradient(engine, params, x, y, index, weight, max_physical_batch=6, **common)
    for name in whole:
        torch.testing.assert_close(whole[name], parts[name], atol=1e-12, rtol=1e-10)
    torch.testing.assert_close(loss_whole, loss_parts)


