"""DP-SGD (Abadi et al. 2016) for several clients at once: Poisson batches, per-sample clipping, Gaussian noise.

One noisy gradient of client ``k`` is

    g_k = ( Σ_{i ∈ batch_k} clip_C(∇ℓ(θ_k; x_i)) + N(0, σ²C² I) ) / (q_k · n_k)

with ``clip_C(v) = v · min(1, C / ‖v‖₂)`` over *all* parameters of the model, the batch drawn by Poisson sampling
(each of the client's ``n_k`` records independently with probability ``q_k``) and the sum divided by the *expected*
batch size ``q_k n_k``, never the realised one (which would depend on the data).  This is exactly the mechanism
the accountant charges: the Poisson-subsampled Gaussian with noise multiplier σ (Mironov, Talwar, Zhang 2019).

Several clients (``K``) are trained together: their parameters carry a leading client dimension and their
batches are padded to a common size with a 0/1 weight per slot, so one tensor program serves all of them.

Per-sample gradients come from one of two engines, equal up to float rounding (tests check 1e-6):

- ``vmap``: ``torch.func.vmap(grad(functional_call))``, nested over clients, for any model;
- ``layerwise``: one forward pass that keeps each layer's input, one backward pass to the layers' outputs, then
  the per-sample gradients in closed form — for ``Linear`` the outer product ``δ_i a_iᵀ`` whose norm is
  ``‖δ_i‖‖a_i‖`` (the "ghost norm" of Goodfellow 2015, never materialised), for ``Conv2d`` ``δ_i U(a_i)ᵀ`` with
  ``U`` the unfolded patches, for ``GroupNorm`` the sums of ``δ_i x̂_i`` and ``δ_i`` — and the clipped sum as
  one matrix product per layer.  It supports ``nn.Sequential`` models made of Conv2d, Linear, GroupNorm,
  Tanh, ReLU, MaxPool2d, AvgPool2d and Flatten.

Physical micro-batches: the padded batch is processed in slices of at most ``max_physical_batch`` records (over
all clients together), and the clipped sums accumulated, so memory is bounded whatever ``q·n`` is.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad_and_value, vmap

__all__ = [
    "ClippedSum",
    "Engine",
    "PoissonSampler",
    "supports_layerwise",
    "make_engine",
    "clip_factors",
    "noisy_gradient",
]

#: ``engine(params, x, y, weight, clip) -> ClippedSum`` for params ``{name: (K, ...)}``, x ``(K, B, ...)``,
#: y ``(K, B)``, weight ``(K, B)`` in {0, 1}; ``clip=None`` sums the unclipped gradients.
Engine = Callable[[dict, torch.Tensor, torch.Tensor, torch.Tensor, "float | None"], "ClippedSum"]


@dataclass
class ClippedSum:
    """Σ_i weight_i · clip_C(∇ℓ_i) per client (``grads``: ``{name: (K, ...)}``) and Σ_i weight_i · ℓ_i (``loss``: (K,))."""

    grads: dict[str, torch.Tensor]
    loss: torch.Tensor


def clip_factors(sq_norms: torch.Tensor, clip: float) -> torch.Tensor:
    """``min(1, C/‖g‖)`` from squared norms, so that every clipped per-sample gradient has norm ≤ C."""
    norms = sq_norms.clamp_min(0).sqrt()
    return (clip / norms.clamp_min(1e-12)).clamp(max=1.0)


# ----------------------------------------------------------------------------------------------- vmap engine
def _vmap_engine(model: nn.Module) -> Engine:
    def sample_loss(params: dict, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        out = functional_call(model, params, (x.unsqueeze(0),))
        return F.cross_entropy(out, y.unsqueeze(0))

    per_client_per_sample = vmap(vmap(grad_and_value(sample_loss), in_dims=(None, 0, 0)), in_dims=(0, 0, 0))

    def engine(params: dict, x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor, clip: float | None) -> ClippedSum:
        grads, losses = per_client_per_sample(params, x, y)
        if clip is None:
            scale = weight
        else:
            sq = sum(g.pow(2).flatten(2).sum(-1) for g in grads.values())
            scale = weight * clip_factors(sq, clip)
        summed = {n: torch.einsum("kb,kb...->k...", scale, g) for n, g in grads.items()}
        return ClippedSum(summed, (losses * weight).sum(1))

    return engine


# ------------------------------------------------------------------------------------------ layerwise engine
_PARAMETER_FREE = (nn.Tanh, nn.ReLU, nn.MaxPool2d, nn.AvgPool2d, nn.Flatten)
_WITH_PARAMETERS = (nn.Conv2d, nn.Linear, nn.GroupNorm)


def supports_layerwise(model: nn.Module) -> bool:
    """Whether the layerwise engine can run ``model`` (an ``nn.Sequential`` of supported layers)."""
    if not isinstance(model, nn.Sequential):
        return False
    for layer in model:
        if isinstance(layer, nn.Conv2d):
            if layer.groups != 1 or layer.padding_mode != "zeros" or isinstance(layer.padding, str):
                return False
        elif isinstance(layer, nn.GroupNorm):
            if not layer.affine:
                return False
        elif not isinstance(layer, _PARAMETER_FREE + (nn.Linear,)):
            return False
    return True


def _layerwise_engine(model: nn.Sequential) -> Engine:
    layers = [(str(i), layer) for i, layer in enumerate(model)]

    def engine(params: dict, x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor, clip: float | None) -> ClippedSum:
        K, B = y.shape
        h = x.reshape(K * B, *x.shape[2:])
        saved: list[tuple[str, nn.Module, torch.Tensor, torch.Tensor]] = []  # (prefix, layer, input, output)
        for prefix, layer in layers:
            if isinstance(layer, nn.Conv2d):
                height, width = h.shape[-2:]
                a = F.unfold(h, layer.kernel_size, layer.dilation, layer.padding, layer.stride)  # (KB, D, L)
                w = params[prefix + ".weight"]
                out_ch = w.shape[1]
                z = torch.matmul(w.reshape(K, 1, out_ch, -1), a.view(K, B, *a.shape[1:]))  # (K, B, O, L)
                if layer.bias is not None:
                    z = z + params[prefix + ".bias"].view(K, 1, out_ch, 1)
                out_h = (height + 2 * layer.padding[0] - layer.dilation[0] * (layer.kernel_size[0] - 1) - 1)
                out_w = (width + 2 * layer.padding[1] - layer.dilation[1] * (layer.kernel_size[1] - 1) - 1)
                shape = (K * B, out_ch, out_h // layer.stride[0] + 1, out_w // layer.stride[1] + 1)
            elif isinstance(layer, nn.Linear):
                if h.ndim != 2:
                    raise ValueError("the layerwise engine needs Linear layers on flat (N, features) inputs")
                a = h
                z = torch.matmul(a.view(K, B, -1), params[prefix + ".weight"].transpose(1, 2))  # (K, B, O)
                if layer.bias is not None:
                    z = z + params[prefix + ".bias"].unsqueeze(1)
                shape = (K * B, z.shape[-1])
            elif isinstance(layer, nn.GroupNorm):
                a = F.group_norm(h, layer.num_groups, eps=layer.eps)  # x̂ (KB, C, ...)
                spatial = (1,) * (a.ndim - 2)
                a_k = a.view(K, B, *a.shape[1:])
                gamma = params[prefix + ".weight"].view(K, 1, -1, *spatial)
                beta = params[prefix + ".bias"].view(K, 1, -1, *spatial)
                z = a_k * gamma + beta
                shape = a.shape
            else:
                h = layer(h)
                continue
            if not saved:
                z.requires_grad_(True)  # the first output is the root of the graph the backward pass walks
            saved.append((prefix, layer, a.detach(), z))
            h = z.reshape(shape)
        losses = F.cross_entropy(h, y.reshape(-1), reduction="none").view(K, B)
        total = (losses * weight).sum()
        deltas = torch.autograd.grad(total, [z for *_, z in saved])

        per_layer = []  # (prefix, layer, a, delta, per-sample squared norm (K, B))
        sq = torch.zeros(K, B, dtype=x.dtype)
        for (prefix, layer, a, _), delta in zip(saved, deltas):
            if isinstance(layer, nn.Conv2d):
                d = delta.reshape(K * B, delta.shape[2], -1)  # (KB, O, L)
                per_sample = torch.bmm(d, a.transpose(1, 2))  # (KB, O, D)
                layer_sq = per_sample.pow(2).sum((1, 2))
                bias_grad = d.sum(2) if layer.bias is not None else None
                per_layer.append((prefix, layer, per_sample, bias_grad))
            elif isinstance(layer, nn.Linear):
                d = delta.reshape(K * B, -1)
                flat_a = a.reshape(K * B, -1)
                layer_sq = d.pow(2).sum(1) * flat_a.pow(2).sum(1)
                bias_grad = d if layer.bias is not None else None
                per_layer.append((prefix, layer, (d, flat_a), bias_grad))
            else:  # GroupNorm: γ-gradient Σ δ·x̂, β-gradient Σ δ over the spatial positions
                d = delta.reshape(K * B, delta.shape[2], -1)
                gamma_grad = (d * a.reshape(K * B, a.shape[1], -1)).sum(2)
                layer_sq = gamma_grad.pow(2).sum(1)
                bias_grad = d.sum(2)
                per_layer.append((prefix, layer, gamma_grad, bias_grad))
            if bias_grad is not None:
                layer_sq = layer_sq + bias_grad.pow(2).sum(1)
            sq = sq + layer_sq.view(K, B)
        scale = weight if clip is None else weight * clip_factors(sq, clip)
        scale_kb = scale.reshape(K, 1, B)

        grads: dict[str, torch.Tensor] = {}
        for prefix, layer, weight_part, bias_grad in per_layer:
            w_shape = params[prefix + ".weight"].shape
            if isinstance(layer, nn.Linear):
                d, flat_a = weight_part
                scaled = d.view(K, B, -1) * scale.unsqueeze(2)
                grads[prefix + ".weight"] = torch.bmm(scaled.transpose(1, 2), flat_a.view(K, B, -1))
            else:
                grads[prefix + ".weight"] = torch.bmm(scale_kb, weight_part.reshape(K, B, -1)).view(w_shape)
            if bias_grad is not None:
                grads[prefix + ".bias"] = torch.bmm(scale_kb, bias_grad.view(K, B, -1)).view(K, -1)
        return ClippedSum(grads, (losses.detach() * weight).sum(1))

    return engine


def make_engine(model: nn.Module, name: str = "auto") -> Engine:
    """The per-sample gradient engine ``name`` (``auto``: layerwise when the model supports it, else vmap)."""
    if name == "vmap" or (name == "auto" and not supports_layerwise(model)):
        return _vmap_engine(model)
    if not supports_layerwise(model):
        raise ValueError("the layerwise engine needs an nn.Sequential of Conv2d/Linear/GroupNorm/activation layers")
    return _layerwise_engine(model)


# ------------------------------------------------------------------------------------------ Poisson batches
class PoissonSampler:
    """Poisson sampling of batches for a group of clients: record ``i`` of client ``k`` is in a batch
    independently with probability ``q_k`` (the sampling the Poisson-subsampled Gaussian accountant assumes).

    ``members[k]`` are client ``k``'s indices into the training tensors.  ``sample`` returns padded
    ``(K, b)`` indices and a ``(K, b)`` 0/1 weight, ``b`` the largest realised batch (0 when all are empty).
    """

    def __init__(self, members: list[torch.Tensor], rates: torch.Tensor) -> None:
        sizes = torch.tensor([len(m) for m in members])
        width = int(sizes.max())
        self.index = torch.zeros(len(members), width, dtype=torch.int64)
        for k, m in enumerate(members):
            self.index[k, : len(m)] = m
        self.thresholds = torch.where(
            torch.arange(width).unsqueeze(0) < sizes.unsqueeze(1), rates.unsqueeze(1).to(torch.float32), -1.0
        )

    def sample(self, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        draws = torch.rand(self.index.shape, generator=generator)
        chosen = draws < self.thresholds
        counts = chosen.sum(1)
        width = int(counts.max())
        top = torch.topk(chosen.to(torch.uint8), width, dim=1, sorted=True).indices if width else chosen[:, :0].long()
        weight = (torch.arange(width).unsqueeze(0) < counts.unsqueeze(1)).to(torch.float32)
        return self.index.gather(1, top), weight


def noisy_gradient(
    engine: Engine,
    params: dict[str, torch.Tensor],
    x_all: torch.Tensor,
    y_all: torch.Tensor,
    index: torch.Tensor,
    weight: torch.Tensor,
    *,
    clip: float | None,
    noise_multiplier: float,
    denominator: torch.Tensor,
    generator: torch.Generator,
    max_physical_batch: int,
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """The DP-SGD gradient of every client: clipped sum over micro-batches, plus N(0, (σC)²) noise on the sum,
    divided by ``denominator`` (per client: the expected batch size ``q_k n_k``).

    With ``clip=None`` (non-private training) nothing is clipped and ``noise_multiplier`` must be 0.
    Returns ``({name: (K, ...)} gradients, (K,) summed loss over the batch)``.
    """
    K, width = index.shape
    chunk = max(1, max_physical_batch // K)
    total: dict[str, torch.Tensor] = {n: torch.zeros_like(p) for n, p in params.items()}
    loss = torch.zeros(K)
    for start in range(0, width, chunk):
        idx = index[:, start : start + chunk]
        part = engine(params, x_all[idx], y_all[idx], weight[:, start : start + chunk], clip)
        for name, g in part.grads.items():
            total[name] += g
        loss += part.loss
    if noise_multiplier > 0:
        if clip is None:
            raise ValueError("noise without clipping has no sensitivity to scale with")
        std = noise_multiplier * clip
        for name, g in total.items():
            g += std * torch.randn(g.shape, generator=generator)
    return {n: g / denominator.view(K, *([1] * (g.ndim - 1))) for n, g in total.items()}, loss
