"""The 2-D wavelet scattering transform (Mallat 2012; Bruna & Mallat 2013), as features for DP training.

Tramèr & Boneh 2021 ("Differentially private learning needs better features (or much more data)", ICLR 2021)
train linear models and small CNNs with DP-SGD on scattering features of MNIST, Fashion-MNIST and CIFAR-10 and
reach higher accuracy at small ε than end-to-end CNNs. The transform is fixed (no parameter is learned from
data), so computing it is public, per-record pre-processing that costs no privacy.

The transform is the one of Kymatio's ``Scattering2D`` (Andreux et al. 2020, JMLR 21(60)), which Tramèr & Boneh
used, with ``max_order = 2``, computed with FFTs in torch:

- filters, built in space on the padded grid (periodised over 5×5 tiles) and taken to Fourier: Morlet wavelets
  ``ψ_{j,θ}(u) = g_{σ_j,θ}(u)·(e^{i ξ_jᵀu} − β)`` with ``σ_j = 0.8·2^j``, ``ξ_j = 3π/(4·2^j)``, slant ``4/L`` and
  ``β`` making the mean zero, for ``j < J`` and ``L`` angles ``θ = (L/2 − 1 − ℓ)π/L``; a Gaussian low-pass ``φ``
  of ``σ = 0.8·2^{J−1}``. Every filter is divided by ``2πσ²/slant`` (Kymatio rounds π to 3.1415 there; this
  module uses π, so its order-``m`` coefficients are Kymatio's times ``(3.1415/π)^{m+1}``);
- ``S₀ = x ⋆ φ``, ``S₁ = |x ⋆ ψ_{j₁,θ₁}| ⋆ φ``, ``S₂ = ||x ⋆ ψ_{j₁,θ₁}| ⋆ ψ_{j₂,θ₂}| ⋆ φ`` for ``j₂ > j₁``, all
  subsampled by ``2^J``: ``1 + JL + L²J(J−1)/2`` channels (81 for J = 2, L = 8) per input channel, on a grid of
  ``⌈H/2^J⌉ × ⌈W/2^J⌉`` (7×7 for 28×28 images). Intermediate signals are subsampled as soon as their band
  allows (by ``2^{j₁}`` after the first modulus) and a subsampling in Fourier is the mean of the spectrum's
  ``k × k`` blocks, as Kymatio does; the input is reflect-padded to a multiple of ``2^J`` with at least ``2^{J−1}``
  on each side, and one coarse pixel is cut from each border at the end.

Kymatio itself is not a dependency: its last release (0.3.0, 2022) no longer imports with current SciPy
(``scipy.special.sph_harm`` is gone), and the transform is this one page. tests/fltrain/test_scattering.py checks
it against Kymatio's 2-D frontend where that is importable, and against known properties everywhere.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["Scattering2D", "scattering_channels"]

_TILES = range(-2, 3)  # the filters are periodised over 5x5 copies of the grid, as Kymatio


def scattering_channels(J: int, L: int) -> int:
    """Channels per input channel of a second-order scattering transform: ``1 + JL + L²J(J−1)/2``."""
    return 1 + J * L + L * L * J * (J - 1) // 2


def _gabor(M: int, N: int, sigma: float, theta: float, xi: float, slant: float) -> np.ndarray:
    """A Gabor filter ``g_σ(u)·e^{iξᵀu}`` in space on an ``M × N`` grid, periodised, divided by ``2πσ²/slant``."""
    rot = np.array([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])
    curv = rot @ np.diag([1.0, slant * slant]) @ rot.T / (2 * sigma * sigma)
    xx = (np.arange(M)[:, None] + M * np.array(list(_TILES))[None, :]).reshape(-1)  # (5M,)
    yy = (np.arange(N)[:, None] + N * np.array(list(_TILES))[None, :]).reshape(-1)
    X, Y = np.meshgrid(xx, yy, indexing="ij")
    arg = -(curv[0, 0] * X * X + (curv[0, 1] + curv[1, 0]) * X * Y + curv[1, 1] * Y * Y) \
        + 1j * xi * (X * math.cos(theta) + Y * math.sin(theta))
    gab = np.exp(arg).reshape(M, len(_TILES), N, len(_TILES)).sum(axis=(1, 3))
    return gab / (2 * math.pi * sigma * sigma / slant)


def _morlet(M: int, N: int, sigma: float, theta: float, xi: float, slant: float) -> np.ndarray:
    """A Morlet wavelet: the Gabor filter minus the multiple of its envelope that makes its mean zero."""
    wave = _gabor(M, N, sigma, theta, xi, slant)
    envelope = _gabor(M, N, sigma, theta, 0.0, slant)
    return wave - (wave.sum() / envelope.sum()) * envelope


def _periodise(spectrum: np.ndarray, res: int) -> np.ndarray:
    """The filter for signals subsampled by ``2^res``: the high band cut away, then the ``2^res × 2^res`` aliases
    of the spectrum summed (Kymatio's ``periodize_filter_fft``)."""
    M, N = spectrum.shape
    k = 2**res
    masked = spectrum.copy()
    masked[M // (2 * k) : M // (2 * k) + int(M * (1 - 1 / k)), :] = 0
    masked[:, N // (2 * k) : N // (2 * k) + int(N * (1 - 1 / k))] = 0
    return masked.reshape(k, M // k, k, N // k).sum(axis=(0, 2))


def _subsample(spectrum: torch.Tensor, k: int) -> torch.Tensor:
    """Subsampling by ``k`` in space, done in Fourier: the mean of the spectrum's ``k × k`` blocks."""
    if k == 1:
        return spectrum
    M, N = spectrum.shape[-2] // k, spectrum.shape[-1] // k
    total = spectrum[..., :M, :N].clone()
    for i in range(k):  # k·k slice additions: much faster than a mean over the strided block axes
        for j in range(k):
            if i or j:
                total += spectrum[..., i * M : (i + 1) * M, j * N : (j + 1) * N]
    return total / (k * k)


def _modulus_spectrum(spectrum: torch.Tensor) -> torch.Tensor:
    """``fft2(|ifft2(spectrum)|)``: the spectrum of a wavelet coefficient's modulus."""
    return torch.fft.fft2(torch.fft.ifft2(spectrum).abs())


@dataclass(frozen=True)
class Scattering2D:
    """The second-order 2-D scattering transform of ``shape = (H, W)`` images, scales ``J``, ``L`` angles.

    Call it on ``(B, C, H, W)`` images: it returns ``(B, C·K, H', W')`` with ``K = scattering_channels(J, L)``
    channels per input channel, ordered as Kymatio orders them (``S₀``; ``S₁`` by ``(j₁, θ₁)``; ``S₂`` by
    ``(j₁, θ₁, j₂, θ₂)``), and ``H' = (H_padded / 2^J) − 2``.
    """

    shape: tuple[int, int]
    J: int = 2
    L: int = 8
    _filters: dict[str, torch.Tensor] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.J < 1 or self.L < 1:
            raise ValueError(f"Scattering2D needs J >= 1 and L >= 1, not J={self.J}, L={self.L}")
        M, N = (((s + 2**self.J) // 2**self.J + 1) * 2**self.J for s in self.shape)
        # psi[j][res]: the L wavelets of scale j for signals at resolution res (as a (L, M/2^res, N/2^res) stack)
        filters: dict[str, torch.Tensor] = {}
        for j in range(self.J):
            spectra = [np.real(np.fft.fft2(_morlet(M, N, 0.8 * 2**j, (self.L // 2 - 1 - t) * math.pi / self.L,
                                                    0.75 * math.pi / 2**j, 4.0 / self.L)))
                       for t in range(self.L)]
            for res in range(j + 1):
                filters[f"psi{j}.{res}"] = torch.from_numpy(np.stack([_periodise(s, res) for s in spectra]))
        phi = np.real(np.fft.fft2(_gabor(M, N, 0.8 * 2 ** (self.J - 1), 0.0, 0.0, 1.0)))
        for res in range(self.J):
            filters[f"phi.{res}"] = torch.from_numpy(_periodise(phi, res))
        object.__setattr__(self, "_filters", filters)
        object.__setattr__(self, "_padded", (M, N))

    @property
    def channels(self) -> int:
        """Output channels per input channel."""
        return scattering_channels(self.J, self.L)

    def _filter(self, name: str, like: torch.Tensor) -> torch.Tensor:
        return self._filters[name].to(device=like.device, dtype=like.real.dtype)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        B, C, H, W = images.shape
        if (H, W) != tuple(self.shape):
            raise ValueError(f"Scattering2D built for {tuple(self.shape)} images, called on {(H, W)}")
        J, L = self.J, self.L
        M, N = self._padded  # type: ignore[attr-defined]
        top, left = (M - H) // 2, (N - W) // 2
        x = F.pad(images.reshape(B * C, 1, H, W).to(torch.float32), (left, N - W - left, top, M - H - top),
                  mode="reflect").squeeze(1)
        spectrum = torch.fft.fft2(x.to(torch.complex64))

        def low_pass(u: torch.Tensor, res: int) -> torch.Tensor:  # ⋆ φ, subsample to 2^J, real part, unpad
            out = torch.fft.ifft2(_subsample(u * self._filter(f"phi.{res}", u), 2 ** (J - res))).real
            return out[..., 1:-1, 1:-1]

        first, second = [], []
        for j1 in range(J):
            u1 = _modulus_spectrum(_subsample(spectrum.unsqueeze(1) * self._filter(f"psi{j1}.0", spectrum), 2**j1))
            first.append(low_pass(u1, j1))  # (BC, L, h, w)
            for j2 in range(j1 + 1, J):
                u2 = _modulus_spectrum(_subsample(u1.unsqueeze(2) * self._filter(f"psi{j2}.{j1}", u1), 2 ** (j2 - j1)))
                second.append(low_pass(u2, j2))  # (BC, L, L, h, w): θ₁ major
        # Kymatio's order of S₂: (j₁, θ₁, j₂, θ₂)
        order2 = []
        index = 0
        for j1 in range(J):
            blocks = second[index : index + J - 1 - j1]
            index += J - 1 - j1
            if blocks:
                order2.append(torch.cat(blocks, dim=2).flatten(1, 2))
        coefficients = [low_pass(spectrum, 0).unsqueeze(1), *first, *order2]
        out = torch.cat(coefficients, dim=1)
        return out.reshape(B, C * self.channels, *out.shape[-2:]).to(images.dtype)


def scattering_features(images: torch.Tensor, *, J: int = 2, L: int = 8, groups: int = 27,
                        chunk: int = 1000) -> torch.Tensor:
    """The features Tramèr & Boneh 2021 train on: the scattering transform of ``images`` ``(N, C, H, W)``, each
    record normalised on its own by group normalisation without affine parameters (Wu & He 2018; ``groups``
    groups of channels, zero mean and unit variance within a group, ε = 1e-5).

    Every step is per record and fixed: nothing is estimated from other records, so the features cost no privacy
    and can be computed once, before training (Tramèr & Boneh also consider a private data normalisation, which
    this function does not do). Computed ``chunk`` records at a time, on the device of ``images``."""
    transform = Scattering2D((images.shape[-2], images.shape[-1]), J, L)
    if (images.shape[1] * transform.channels) % groups:
        raise ValueError(f"groups={groups} does not divide the {images.shape[1] * transform.channels} channels")
    parts = [F.group_norm(transform(images[start : start + chunk]), groups, eps=1e-5)
             for start in range(0, len(images), chunk)]
    return torch.cat(parts).contiguous()
