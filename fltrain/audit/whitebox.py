"""White-box canaries: Dirac gradients planted at the per-sample-gradient level, scored against a control
coordinate whose real gradients are identical.

**The canary.** Canary ``c`` is a training record whose per-sample gradient is ``G·e_{j_c}`` (a Dirac: ``G`` in
the one coordinate ``j_c``, zero elsewhere), ``G`` = :data:`BOOST` × the clip norm ``C`` (Steinke, Nasr, Jagielski
2023, Sec. 6, white-box "Dirac canaries"; the boost makes a run that forgets to clip show a stronger canary).
An included canary is a record of the training set like any other: it is dealt to a client by the partition,
Poisson-sampled by the client's DP-SGD from the run's secret source, clipped by the run's ``clip_factors`` to
``C``, summed, noised and divided like the real records. Only its gradient is supplied by the auditor: the engine
is wrapped (:meth:`DiracCanaries.engine`) so that the real engine sees the canary slots with weight 0 and the
canary's clipped Dirac is added to the client's sum.

**Where, and the control.** A canary is weak if the real data also move its coordinate (the drift swamps it). For
a model whose first layer is linear on the input features (``--model mlp``, ``logreg``) the weight ``W[o, i]`` has
per-sample gradient ``δ_o(x)·x_i``; if input feature ``i`` is constant over every record (MNIST's border pixels),
``W[o, i]`` and ``W[o, i₀]`` for another feature ``i₀`` with the same constant have *identical* real gradients
at every step (clipping scales both by the same factor, momentum and averaging are linear). So the canaries sit on
``W[o, i]`` for the constant features ``i`` but one, ``i₀``, whose weights are the controls: the score of canary
``c`` on ``(o, i)`` is ``−ΔW[o, i] + ΔW[o, i₀]`` (Δ: final − initial global model; a Dirac gradient pushes its
weight down), in which the real data cancel exactly and only the canary's steps and the DP noise remain. The
constant features are found on the real training records and the public test set before the coins are used.
Convolutional models share their first-layer weights across pixels and have no such pairs: they are refused.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import torch

from ..config import ConfigError
from ..data import Dataset
from ..dpsgd import ClippedSum, Engine, clip_factors
from ..models import ParamLayout
from .canaries import Canaries

__all__ = ["DiracCanaries", "BOOST", "constant_features"]

#: the canary's gradient norm in units of the clip norm
BOOST = 4.0


def constant_features(*sets: torch.Tensor) -> tuple[torch.Tensor, float]:
    """The input features (flattened indices) that take one value over all records of all ``sets`` (N, ...), the
    largest group of them sharing one value, and that value."""
    flat = torch.cat([x.flatten(1) for x in sets])
    constant = (flat == flat[0]).all(0)
    values = flat[0][constant]
    if not len(values):
        return torch.zeros(0, dtype=torch.int64), 0.0
    unique, counts = values.unique(return_counts=True)
    value = float(unique[counts.argmax()])
    return torch.nonzero(constant & (flat[0] == value)).flatten(), value


class DiracCanaries(Canaries):
    """``m`` white-box Dirac canaries for a run whose per-sample clip norm is ``clip`` (None: not clipped)."""

    threat: ClassVar[str] = "white-box"

    def __init__(self, m: int, *, clip: float | None) -> None:
        super().__init__(m)
        self.size = BOOST * (clip if clip is not None else 1.0)
        self.features = torch.zeros(0, dtype=torch.int64)
        self.inputs = 0
        self.coords = torch.zeros(0, dtype=torch.int64)
        self.controls = torch.zeros(0, dtype=torch.int64)

    def data(self, data: Dataset) -> Dataset:
        self._find_features(data)
        chosen = torch.nonzero(torch.from_numpy(self.included)).flatten()
        x = torch.zeros(len(chosen), *data.input_shape, dtype=data.x_train.dtype)  # never seen by the model
        y = -1 - chosen  # canary c is label −(c+1): the engine wrapper recognises it
        return Dataset(data.name, torch.cat([data.x_train, x]), torch.cat([data.y_train, y]), data.x_test,
                       data.y_test, data.num_classes)

    def _find_features(self, data: Dataset) -> None:
        """The constant input features of ``data`` (before the coins are used)."""
        features, _ = constant_features(data.x_train, data.x_test)
        if len(features) < 2:
            raise ConfigError("white-box canaries need at least two input features that are constant over the "
                              f"training and test records; {data.name} has {len(features)}")
        self.features = features
        self.inputs = int(np.prod(data.input_shape))

    def _place(self, layout: ParamLayout) -> None:
        """Each canary's coordinate and its control in the flat parameters of ``layout``."""
        shape = layout.shapes[0]
        if len(shape) != 2 or shape[1] != self.inputs:
            raise ConfigError("white-box canaries need a model whose first layer is linear on the input features "
                              "(--model mlp or logreg); convolutional weights are shared across pixels")
        outputs, inputs = shape
        control, hosts = self.features[0], self.features[1:]
        capacity = outputs * len(hosts)
        if self.m > capacity:
            raise ConfigError(f"--canaries {self.m}: this model and dataset hold at most {capacity} white-box "
                              f"canaries ({outputs} outputs x {len(hosts)} constant input features besides the "
                              "control)")
        o = torch.arange(self.m) % outputs
        i = hosts[torch.arange(self.m) // outputs]
        self.coords = o * inputs + i  # the first parameter is the first block of the flat vector
        self.controls = o * inputs + control

    def engine(self, engine: Engine, layout: ParamLayout) -> Engine:
        self._place(layout)
        size = self.size
        coords = self.coords

        def with_canaries(params: dict, x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor,
                          clip: float | None) -> ClippedSum:
            canary = y < 0
            if not bool(canary.any()):
                return engine(params, x, y, weight, clip)
            real = engine(params, x, y.clamp_min(0), weight * ~canary, clip)
            k, b = torch.nonzero(canary, as_tuple=True)
            scale = size if clip is None else size * float(clip_factors(torch.tensor([size * size]), clip))
            extra = torch.zeros(y.shape[0], layout.size, dtype=weight.dtype)
            extra.index_put_((k, coords[-1 - y[k, b]]), weight[k, b] * scale, accumulate=True)
            dirac = layout.unflatten(extra)
            return ClippedSum({n: g + dirac[n].to(g.dtype) for n, g in real.grads.items()}, real.loss)

        return with_canaries

    def _scores(self, initial: torch.Tensor, final: torch.Tensor) -> np.ndarray:
        change = final.to(torch.float64) - initial.to(torch.float64)
        return (change[self.controls] - change[self.coords]).numpy()

    def describe(self) -> dict:
        return {"gradient_norm": self.size, "coordinates": self.coords.tolist(), "controls": self.controls.tolist(),
                "constant_features": self.features.tolist()}
