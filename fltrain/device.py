"""Where a run computes: ``--device auto|cpu|cuda``.

``auto`` is CUDA when ``torch.cuda.is_available()``, else the CPU; ``cuda`` on a machine without CUDA is refused
with one line (:class:`fltrain.config.ConfigError`) before anything is loaded or written. On the device live the
training records, the model, the per-sample gradients of both engines (:mod:`fltrain.dpsgd`), the clipped sums and
their noise, and evaluation. The DP noise and the Poisson batches are drawn on the CPU by the secret source
(:mod:`fltrain.randomness`, AES-CTR keyed from ``os.urandom``) and copied to the device: the one documented
generator serves every device, and its key never leaves host memory. The sum over the clients' messages and the
server's step stay on the CPU (one P-vector per client and round, where the privacy modes and secure
aggregation's fixed-point encoding work).

The GPU path has been tested on CPU-only machines only through the code paths shared with the CPU; see
docs/fltrain.md ("Device") for what was run on hardware.
"""

from __future__ import annotations

import torch

from .config import ConfigError

__all__ = ["resolve_device"]


def resolve_device(name: str) -> torch.device:
    """The ``torch.device`` of ``--device name`` (``auto``, ``cpu`` or ``cuda``); :class:`ConfigError` for
    ``cuda`` when CUDA is not available."""
    if name == "cpu":
        return torch.device("cpu")
    available = torch.cuda.is_available()
    if name == "cuda" and not available:
        raise ConfigError("--device cuda: CUDA is not available on this machine (torch.cuda.is_available() is "
                          "False); use --device cpu or --device auto")
    if name not in ("auto", "cuda"):
        raise ConfigError(f"--device {name!r}: one of auto, cpu, cuda")
    return torch.device("cuda" if available else "cpu")
