"""The secret randomness of a Flower run: DP noise and sampling decisions, seeded from the OS and never stored."""

from __future__ import annotations

import secrets

import torch

__all__ = ["secret_generator"]


def secret_generator() -> torch.Generator:
    """A torch generator seeded with 63 bits from the OS (``secrets``); its seed is not kept anywhere.

    The run's ``seed`` drives only the partition and the initial model; DP noise and the sampling of records and
    clients come from generators like this one, made afresh in every process, so that no file (config, checkpoint)
    determines them.
    """
    return torch.Generator().manual_seed(secrets.randbits(63))
