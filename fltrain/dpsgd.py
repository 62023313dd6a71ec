"""DP-SGD (Abadi et al. 2016) for several clients at once: per-sample clipping and Gaussian noise on a batch.

One noisy gradient of client ``k`` is

    g_k = ( Σ_{i ∈ batch_k} clip_C(∇ℓ(θ_k; x_i)) + N(0, σ²C² I) ) / B

with ``clip_C(v) = v · min(1, C / ‖v‖₂)`` over *all* parameters of the model, the batch drawn by one of the
samplers of :mod:`fltrain.sampling` (Poisson, fixed-size, shuffled epochs) and the sum divided by a *public*
constant ``B`` (the configured batch size), never by the realised batch size or the client's record count.  This
is exactly the mechanism the accountant charges for that sampler, with noise multiplier σ.  The noise and the
batches come from the caller's :class:`fltrain.randomness.RandomSource`.

Several clients (``K``) are trained together: their parameters carry a leading client dimension and their
batches are padded to a common size with a 0/1 weight per slot, so one tensor program serves all of them.

Per-sample gradients come from one of two engines, equal up to float rounding (tests check 1e-6):

- ``vmap``: ``torch.func.vmap(grad(functional_call))``, nested over clients, for any model;
- ``layerwise``: one forward pass (channels-last layout) that keeps each layer's input, one backward pass to the
  layers' outputs, then the per-sample gradients in closed form — for ``Linear`` the outer product ``δ_i a_iᵀ``
  whose norm is ``‖δ_i‖‖a_i‖`` (the "ghost norm" of Goodfellow 2015, never materialised), for ``Conv2d``
  ``δ_iᵀ U(a_i)`` with ``U`` the im2col rows (materialised once, reused for the norm and the sum), for
  ``GroupNorm`` the sums of ``δ_i x̂_i`` and ``δ_i`` — and the clipped sum as one matrix product per layer.  It
  supports ``nn.Sequential`` models made of Conv2d, Linear, GroupNorm, Tanh, ReLU, MaxPool2d and Flatten.

Both engines run on the device of their inputs (CPU or CUDA, :mod:`fltrain.device`); only the noise is drawn on
the CPU, by the caller's source, and copied there.

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

from .randomness import RandomSource

__all__ = [
    "ClippedSum",
    "Engine",
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
_ELEMENTWISE = (nn.Tanh, nn.ReLU)


def supports_layerwise(model: nn.Module) -> bool:
    """Whether the layerwise engine can run ``model``: an ``nn.Sequential`` of Conv2d (no groups, no dilation,
    numeric zero padding), Linear, GroupNorm (affine), MaxPool2d, Tanh, ReLU and Flatten layers."""
    if not isinstance(model, nn.Sequential):
        return False
    for layer in model:
        if isinstance(layer, nn.Conv2d):
            if (layer.groups != 1 or layer.padding_mode != "zeros" or isinstance(layer.padding, str)
                    or layer.dilation != (1, 1)):
                return False
        elif isinstance(layer, nn.GroupNorm):
            if not layer.affine:
                return False
        elif not isinstance(layer, _ELEMENTWISE + (nn.Linear, nn.MaxPool2d, nn.Flatten)):
            return False
    return True


class _Tanh(torch.autograd.Function):
    """tanh(x) evaluated as 2·sigmoid(2x) − 1 (the same function; on AVX-512 CPUs PyTorch's sigmoid kernel is
    about ten times faster than its tanh kernel), with the derivative 1 − tanh²."""

    @staticmethod
    def forward(ctx, x):  # type: ignore[override]
        y = torch.sigmoid(2 * x).mul_(2).sub_(1)
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        (y,) = ctx.saved_tensors
        return torch.ops.aten.tanh_backward(grad, y)


class _Patches(torch.autograd.Function):
    """Im2col of a channels-last batch ``(N, H, W, C)`` into rows ``(N, Ho, Wo, kh·kw·C)`` (kernel position major,
    channel minor, so that rows are gathered in contiguous runs of ``kw·C``).  The backward pass adds the row
    gradients back with ``kh·kw`` strided additions (col2im)."""

    @staticmethod
    def forward(ctx, h, kernel, stride, padding):  # type: ignore[override]
        (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
        if ph or pw:
            h = F.pad(h, (0, 0, pw, pw, ph, ph))
        windows = h.unfold(1, kh, sh).unfold(2, kw, sw)  # (N, Ho, Wo, C, kh, kw), a view
        ctx.geometry = (h.shape, kernel, stride, padding)
        return windows.permute(0, 1, 2, 4, 5, 3).reshape(*windows.shape[:3], -1)

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        padded_shape, (kh, kw), (sh, sw), (ph, pw) = ctx.geometry
        n, out_h, out_w, _ = grad.shape
        rows = grad.view(n, out_h, out_w, kh, kw, padded_shape[-1])
        result = grad.new_zeros(padded_shape)
        for i in range(kh):
            for j in range(kw):
                result[:, i : i + sh * (out_h - 1) + 1 : sh, j : j + sw * (out_w - 1) + 1 : sw] += rows[:, :, :, i, j]
        return result[:, ph : padded_shape[1] - ph, pw : padded_shape[2] - pw], None, None, None


def _layerwise_engine(model: nn.Sequential) -> Engine:
    layers = [(str(i), layer) for i, layer in enumerate(model)]

    def engine(params: dict, x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor, clip: float | None) -> ClippedSum:
        K, B = y.shape
        N = K * B
        h = x.reshape(N, *x.shape[2:])
        if h.ndim == 4:
            h = h.permute(0, 2, 3, 1).contiguous()  # channels-last (N, H, W, C) throughout
        saved: list[tuple[str, nn.Module, torch.Tensor, torch.Tensor]] = []  # (prefix, layer, input, output)
        for prefix, layer in layers:
            if isinstance(layer, nn.Conv2d):
                a = _Patches.apply(h, layer.kernel_size, layer.stride, layer.padding)
                out_h, out_w = a.shape[1:3]
                a = a.view(K, B * out_h * out_w, -1)
                # weight (K, O, C, kh, kw) in the rows' (kh, kw, C) order, as (K, D, O)
                w = params[prefix + ".weight"].permute(0, 3, 4, 2, 1).reshape(K, a.shape[-1], -1)
                if layer.bias is not None:
                    z = torch.baddbmm(params[prefix + ".bias"].unsqueeze(1), a, w)
                else:
                    z = torch.bmm(a, w)
                shape = (N, out_h, out_w, w.shape[2])
            elif isinstance(layer, nn.Linear):
                if h.ndim != 2:
                    raise ValueError("the layerwise engine needs Linear layers on flat (N, features) inputs")
                a = h.reshape(K, B, -1)
                w = params[prefix + ".weight"].transpose(1, 2)  # (K, D, O)
                z = torch.baddbmm(params[prefix + ".bias"].unsqueeze(1), a, w) if layer.bias is not None \
                    else torch.bmm(a, w)
                shape = (N, w.shape[2])
            elif isinstance(layer, nn.GroupNorm):
                groups = h.reshape(N, -1, layer.num_groups, h.shape[-1] // layer.num_groups)
                mean = groups.mean(dim=(1, 3), keepdim=True)
                var = groups.var(dim=(1, 3), unbiased=False, keepdim=True)
                a = ((groups - mean) * torch.rsqrt(var + layer.eps)).reshape(K, B, -1, h.shape[-1])  # x̂
                z = a * params[prefix + ".weight"].view(K, 1, 1, -1) + params[prefix + ".bias"].view(K, 1, 1, -1)
                shape = h.shape
            elif isinstance(layer, nn.MaxPool2d):
                h = layer(h.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)  # runs on the channels-last layout
                continue
            elif isinstance(layer, nn.Tanh):
                h = _Tanh.apply(h)
                continue
            elif isinstance(layer, nn.Flatten):
                h = (h.permute(0, 3, 1, 2) if h.ndim == 4 else h).reshape(N, -1)  # PyTorch's (C, H, W) order
                continue
            else:
                h = layer(h)
                continue
            if not saved:
                z.requires_grad_(True)  # the first output is the root of the graph the backward pass walks
            saved.append((prefix, layer, a.detach(), z))
            h = z.view(shape)
        losses = F.cross_entropy(h, y.reshape(-1), reduction="none").view(K, B)
        total = (losses * weight).sum()
        deltas = torch.autograd.grad(total, [z for *_, z in saved])

        per_layer = []  # (prefix, layer, weight part, bias part (N, O) or None)
        sq = torch.zeros(N, dtype=x.dtype, device=x.device)
        for (prefix, layer, a, _), delta in zip(saved, deltas):
            if isinstance(layer, nn.Conv2d):
                d = delta.reshape(N, -1, delta.shape[-1])  # (N, L, O)
                per_sample = torch.bmm(d.transpose(1, 2), a.reshape(N, d.shape[1], -1))  # (N, O, D)
                sq += torch.linalg.vector_norm(per_sample.reshape(N, -1), dim=1).square()
                weight_part = per_sample
                bias_part = d.sum(1) if layer.bias is not None else None
            elif isinstance(layer, nn.Linear):
                d = delta.reshape(N, -1)
                flat_a = a.reshape(N, -1)
                # ghost norm: ‖δ aᵀ‖_F = ‖δ‖ ‖a‖ (Goodfellow 2015)
                sq += d.square().sum(1) * flat_a.square().sum(1)
                weight_part = (d, flat_a)
                bias_part = d if layer.bias is not None else None
            else:  # GroupNorm: γ-gradient Σ δ·x̂, β-gradient Σ δ over the positions
                d = delta.reshape(N, -1, delta.shape[-1])
                weight_part = (d * a.reshape(N, -1, a.shape[-1])).sum(1)
                sq += weight_part.square().sum(1)
                bias_part = d.sum(1)
            if bias_part is not None:
                sq += bias_part.square().sum(1)
            per_layer.append((prefix, layer, weight_part, bias_part))
        scale = weight if clip is None else weight * clip_factors(sq.view(K, B), clip)
        scale_row = scale.unsqueeze(1)  # (K, 1, B)

        grads: dict[str, torch.Tensor] = {}
        for prefix, layer, weight_part, bias_part in per_layer:
            w_shape = params[prefix + ".weight"].shape
            if isinstance(layer, nn.Linear):
                d, flat_a = weight_part
                scaled = d.view(K, B, -1) * scale.unsqueeze(2)
                grads[prefix + ".weight"] = torch.bmm(scaled.transpose(1, 2), flat_a.view(K, B, -1))
            elif isinstance(layer, nn.Conv2d):  # rows were in (kh, kw, C) order
                summed = torch.bmm(scale_row, weight_part.reshape(K, B, -1))
                out_ch, in_ch, kh, kw = w_shape[1:]
                grads[prefix + ".weight"] = summed.view(K, out_ch, kh, kw, in_ch).permute(0, 1, 4, 2, 3).contiguous()
            else:
                grads[prefix + ".weight"] = torch.bmm(scale_row, weight_part.reshape(K, B, -1)).view(w_shape)
            if bias_part is not None:
                grads[prefix + ".bias"] = torch.bmm(scale_row, bias_part.view(K, B, -1)).view(K, -1)
        return ClippedSum(grads, (losses.detach() * weight).sum(1))

    return engine


def make_engine(model: nn.Module, name: str = "auto") -> Engine:
    """The per-sample gradient engine ``name`` (``auto``: layerwise when the model supports it, else vmap)."""
    if name == "vmap" or (name == "auto" and not supports_layerwise(model)):
        return _vmap_engine(model)
    if not supports_layerwise(model):
        raise ValueError("the layerwise engine needs an nn.Sequential of Conv2d/Linear/GroupNorm/activation layers")
    return _layerwise_engine(model)


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
    rng: RandomSource,
    max_physical_batch: int,
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """The DP-SGD gradient of every client: clipped sum over micro-batches, plus N(0, (σC)²) noise on the sum,
    divided by ``denominator`` (per client; DP-SGD divides by a public constant, the expected batch size, so that
    the division reveals nothing about the realised batch). The noise and nothing else comes from ``rng``; it is
    drawn on the CPU and copied to the device of ``params`` (``x_all``, ``index``, ``weight``, ``denominator`` and
    ``params`` share one device).

    With ``clip=None`` (non-private training) nothing is clipped and ``noise_multiplier`` must be 0.
    Returns ``({name: (K, ...)} gradients, (K,) summed loss over the batch)``.
    """
    K, width = index.shape
    chunk = max(1, max_physical_batch // K)
    total: dict[str, torch.Tensor] = {n: torch.zeros_like(p) for n, p in params.items()}
    loss = torch.zeros(K, device=x_all.device)
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
            g += std * rng.randn(g.shape).to(g.device)  # drawn on the CPU by the source, then copied
    return {n: g / denominator.view(K, *([1] * (g.ndim - 1))) for n, g in total.items()}, loss
