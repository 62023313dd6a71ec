"""Models, and the flat view of their parameters that federated averaging works on.

All models are ``nn.Sequential`` of standard layers so that :mod:`fltrain.dpsgd` can compute per-sample
gradients layer by layer.  None uses BatchNorm: batch statistics mix the records of a batch, which breaks the
per-sample sensitivity DP-SGD relies on; the CIFAR model uses GroupNorm instead (Wu & He 2018).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

__all__ = [
    "build_model", "tanh_cnn", "mlp", "logistic_regression", "cifar_cnn", "scatter_cnn", "SCATTERING_MODELS",
    "ParamLayout",
]

#: the models that take scattering features (:func:`fltrain.scattering.scattering_features`), not images
SCATTERING_MODELS = ("scatter-linear", "scatter-cnn")


def tanh_cnn(num_classes: int = 10) -> nn.Sequential:
    """The 26,010-parameter CNN with tanh activations used for DP-SGD on MNIST by Papernot et al. 2020
    ("Tempered sigmoid activations for deep learning with differential privacy") and Tramèr & Boneh 2021
    ("Differentially private learning needs better features"), for 1x28x28 inputs."""
    return nn.Sequential(
        nn.Conv2d(1, 16, 8, stride=2, padding=3),
        nn.Tanh(),
        nn.MaxPool2d(2, stride=1),
        nn.Conv2d(16, 32, 4, stride=2),
        nn.Tanh(),
        nn.MaxPool2d(2, stride=1),
        nn.Flatten(),
        nn.Linear(32 * 4 * 4, 32),
        nn.Tanh(),
        nn.Linear(32, num_classes),
    )


def mlp(input_shape: tuple[int, ...], num_classes: int = 10, hidden: int = 256) -> nn.Sequential:
    """A one-hidden-layer perceptron with tanh activation."""
    features = int(torch.tensor(input_shape).prod())
    return nn.Sequential(nn.Flatten(), nn.Linear(features, hidden), nn.Tanh(), nn.Linear(hidden, num_classes))


def logistic_regression(input_shape: tuple[int, ...], num_classes: int = 10) -> nn.Sequential:
    """Multinomial logistic regression (one linear layer; softmax is in the loss)."""
    features = int(torch.tensor(input_shape).prod())
    return nn.Sequential(nn.Flatten(), nn.Linear(features, num_classes))


def cifar_cnn(num_classes: int = 10) -> nn.Sequential:
    """A small CNN for 3x32x32 images: three conv blocks (conv, GroupNorm, tanh, max-pool) and two linear layers."""

    def block(cin: int, cout: int) -> list[nn.Module]:
        return [nn.Conv2d(cin, cout, 3, padding=1), nn.GroupNorm(8, cout), nn.Tanh(), nn.MaxPool2d(2)]

    return nn.Sequential(
        *block(3, 32),
        *block(32, 64),
        *block(64, 64),
        nn.Flatten(),
        nn.Linear(64 * 4 * 4, 128),
        nn.Tanh(),
        nn.Linear(128, num_classes),
    )


def scatter_cnn(input_shape: tuple[int, ...], num_classes: int = 10) -> nn.Sequential:
    """The CNN Tramèr & Boneh 2021 train on the scattering features of MNIST-sized images (their ``MNIST_CNN`` for
    scattering inputs): two 3x3 tanh convolutions (16 channels at stride 2, 32 at stride 1) and a 32-unit tanh
    layer, for features of ``input_shape = (K, h, w)`` (81x7x7 for 28x28 images)."""
    channels, height, width = input_shape
    out_h, out_w = (height - 1) // 2 + 1, (width - 1) // 2 + 1  # the stride-2 convolution with padding 1
    return nn.Sequential(
        nn.Conv2d(channels, 16, 3, stride=2, padding=1),
        nn.Tanh(),
        nn.Conv2d(16, 32, 3, stride=1, padding=1),
        nn.Tanh(),
        nn.Flatten(),
        nn.Linear(32 * out_h * out_w, 32),
        nn.Tanh(),
        nn.Linear(32, num_classes),
    )


def build_model(name: str, input_shape: tuple[int, ...], num_classes: int = 10) -> nn.Sequential:
    """Build model ``name`` (``tanh-cnn``, ``mlp``, ``logreg``, ``cifar-cnn``; on scattering features
    ``scatter-linear``, a linear classifier, and ``scatter-cnn``) for inputs of ``input_shape``."""
    if name == "tanh-cnn":
        return tanh_cnn(num_classes)
    if name == "mlp":
        return mlp(input_shape, num_classes)
    if name in ("logreg", "scatter-linear"):
        return logistic_regression(input_shape, num_classes)
    if name == "cifar-cnn":
        return cifar_cnn(num_classes)
    if name == "scatter-cnn":
        return scatter_cnn(input_shape, num_classes)
    raise ValueError(f"unknown model {name!r}")


@dataclass(frozen=True)
class ParamLayout:
    """Names and shapes of a model's parameters, to move between a ``{name: tensor}`` dict and one flat vector.

    Stacked forms carry leading dimensions (e.g. one row per client): ``flatten`` maps ``{name: (*lead, *shape)}``
    to ``(*lead, P)`` and ``unflatten`` back.
    """

    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]

    @classmethod
    def of(cls, model: nn.Module) -> "ParamLayout":
        named = list(model.named_parameters())
        return cls(tuple(n for n, _ in named), tuple(tuple(p.shape) for _, p in named))

    @property
    def sizes(self) -> tuple[int, ...]:
        return tuple(int(torch.tensor(s).prod()) if s else 1 for s in self.shapes)

    @property
    def size(self) -> int:
        return sum(self.sizes)

    def flatten(self, params: dict[str, torch.Tensor], lead: int = 0) -> torch.Tensor:
        """Concatenate ``params`` (each with ``lead`` leading dimensions) into ``(*lead_dims, P)``."""
        parts = []
        for name in self.names:
            tensor = params[name]
            parts.append(tensor.reshape(*tensor.shape[:lead], -1))
        return torch.cat(parts, dim=-1)

    def unflatten(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        """Split ``flat`` of shape ``(*lead, P)`` into ``{name: (*lead, *shape)}`` views."""
        lead = flat.shape[:-1]
        pieces = torch.split(flat, self.sizes, dim=-1)
        return {name: piece.view(*lead, *shape) for name, piece, shape in zip(self.names, pieces, self.shapes)}
