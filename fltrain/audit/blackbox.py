"""Black-box canaries: mislabelled records in input space, scored by the final model's loss.

Canary ``c`` is an image of the public test set with a wrong label (the true label plus a uniform offset in 1..9,
modulo 10, drawn by the auditor before the coins are used); the ``m`` images are the last ``m`` of the test set,
which the run then no longer evaluates on. An included canary is an ordinary training record: dealt to a client by
the partition, sampled, clipped and noised like any other. After the run the auditor sees only the final model,
as any user of the released model would, and scores each canary by ``−loss`` (cross-entropy of its wrong label):
a model that has memorised a mislabelled record gives it a lower loss (Steinke, Nasr, Jagielski 2023, Sec. 6,
black-box; Jagielski, Ullman, Oprea 2020 for mislabelled poisoning canaries).
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch.func import functional_call

from ..config import ConfigError
from ..data import Dataset
from .canaries import Canaries

__all__ = ["MislabelledCanaries"]


class MislabelledCanaries(Canaries):
    """``m`` black-box canaries: mislabelled test images (see the module docstring)."""

    threat: ClassVar[str] = "black-box"

    def __init__(self, m: int) -> None:
        super().__init__(m)
        self.x = torch.zeros(0)
        self.y = torch.zeros(0, dtype=torch.int64)
        self.true_labels = torch.zeros(0, dtype=torch.int64)

    def data(self, data: Dataset) -> Dataset:
        if self.m >= len(data.y_test):
            raise ConfigError(f"--canaries {self.m}: black-box canaries are test images and the test set has "
                              f"{len(data.y_test)}; keep some for evaluation")
        keep = len(data.y_test) - self.m
        self.x, self.true_labels = data.x_test[keep:], data.y_test[keep:]
        offset = torch.from_numpy(np.random.default_rng().integers(1, data.num_classes, self.m))
        self.y = (self.true_labels + offset) % data.num_classes
        chosen = torch.from_numpy(self.included)
        return Dataset(data.name, torch.cat([data.x_train, self.x[chosen]]), torch.cat([data.y_train, self.y[chosen]]),
                       data.x_test[:keep], data.y_test[:keep], data.num_classes)

    def _scores(self, initial: torch.Tensor, final: torch.Tensor) -> np.ndarray:
        assert self.model is not None and self.layout is not None
        with torch.no_grad():
            logits = functional_call(self.model, self.layout.unflatten(final), (self.x,))
            return (-F.cross_entropy(logits, self.y, reduction="none")).to(torch.float64).numpy()

    def describe(self) -> dict:
        return {"records": "the last m images of the test set", "wrong_labels": self.y.tolist(),
                "true_labels": self.true_labels.tolist()}
