"""One training run as a frozen dataclass, its validation, and its TOML form.

Every field is also a ``fltrain run`` option (``batch_size`` is ``--batch-size``) and a key of a ``--config``
TOML file (``batch-size`` or ``batch_size``).  Validation happens in ``__post_init__`` and raises
:class:`dpcalib.errors.InvalidArgumentError` (argument name + allowed range) or :class:`ConfigError`, so a bad
run is refused before anything touches the disk.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Mapping

from dpcalib.errors import InvalidArgumentError

from .privacy import default_client_delta
from dpcalib import validation as check

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

__all__ = [
    "ConfigError",
    "RunConfig",
    "DATASETS",
    "PARTITIONS",
    "MODELS",
    "DP_MODES",
    "ACCOUNTANTS",
    "ENGINES",
    "SERVER_OPTIMIZERS",
    "RUNTIME_FIELDS",
    "load_toml",
]

DATASETS = ("mnist", "fashion-mnist", "cifar10")
PARTITIONS = ("iid", "shards", "dirichlet")
MODELS = ("auto", "tanh-cnn", "mlp", "logreg", "cifar-cnn")
DP_MODES = ("sample", "client", "none")
ACCOUNTANTS = ("rdp", "pld")
ENGINES = ("auto", "layerwise", "vmap")
SERVER_OPTIMIZERS = ("sgd", "adam")
#: δ of record-level DP (``dp="sample"``) when none is given; client-level DP defaults to 1/clients^1.1
SAMPLE_DELTA = 1e-5

#: fields that do not change what a run computes; a ``--resume`` may change them
RUNTIME_FIELDS = frozenset({"data_dir", "out", "threads"})


class ConfigError(ValueError):
    """A run configuration (or a config file) that fltrain cannot carry out, with the reason."""


def _choice(name: str, value: str, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise InvalidArgumentError(name, value, "one of " + ", ".join(allowed))
    return value


def _non_negative(name: str, value: float) -> float:
    try:
        as_float = float(value)
    except (TypeError, ValueError):
        as_float = float("nan")
    if not (0.0 <= as_float < math.inf):
        raise InvalidArgumentError(name, value, "a finite number >= 0")
    return as_float


@dataclass(frozen=True)
class RunConfig:
    """Everything that determines a federated training run.

    Privacy (``dp="sample"``): each client runs DP-SGD on its own records (Abadi et al. 2016) with Poisson rate
    ``q_k = batch_size / n_k``; the guarantee is per record of any one client, for the plan of ``rounds ×
    local_steps`` steps (see :mod:`fltrain.privacy`).  ``sigma=None`` calibrates the noise multiplier to
    ``(eps, delta)``; an explicit ``sigma`` trains with it, reports the ε reached and stops before exceeding
    ``eps``.

    Privacy (``dp="client"``): client-level DP-FedAvg (McMahan et al. 2018, see :mod:`fltrain.clientdp`): clients
    are Poisson-sampled with rate ``expected_clients / clients``, train without noise, and the server clips each
    update to ``clip``, adds noise and divides by ``expected_clients``; ``adaptive_clip`` moves ``clip`` toward
    the ``target_quantile`` of update norms (Andrew et al. 2021).  ``delta=None`` means 1e-5 for ``dp="sample"``
    and ``1/clients^1.1`` for ``dp="client"``.
    """

    # data
    dataset: str = "mnist"
    data_dir: str = "data"
    train_samples: int = 0
    test_samples: int = 0
    # federation
    clients: int = 10
    partition: str = "iid"
    shards_per_client: int = 2
    alpha: float = 0.5
    client_fraction: float = 1.0
    rounds: int = 10
    server_lr: float = 1.0
    server_momentum: float = 0.0
    server_opt: str = "sgd"
    expected_clients: float | None = None
    # local training
    model: str = "auto"
    local_steps: int = 100
    batch_size: int = 150
    lr: float = 0.15
    lr_decay: float = 1.0
    momentum: float = 0.9
    clip: float = 0.1
    # privacy
    dp: str = "sample"
    eps: float = 4.0
    delta: float | None = None
    sigma: float | None = None
    accountant: str = "rdp"
    adaptive_clip: bool = False
    target_quantile: float = 0.5
    clip_lr: float = 0.2
    count_noise_std: float | None = None
    secure_agg: bool = False
    # execution
    seed: int = 0
    out: str = "runs/fltrain"
    threads: int = 1
    engine: str = "auto"
    parallel_clients: int = 0
    max_physical_batch: int = 384

    def __post_init__(self) -> None:
        _choice("dataset", self.dataset, DATASETS)
        _choice("partition", self.partition, PARTITIONS)
        _choice("model", self.model, MODELS)
        _choice("dp", self.dp, DP_MODES)
        _choice("accountant", self.accountant, ACCOUNTANTS)
        _choice("engine", self.engine, ENGINES)
        check.count("train_samples", self.train_samples, minimum=0)
        check.count("test_samples", self.test_samples, minimum=0)
        check.count("clients", self.clients)
        check.count("shards_per_client", self.shards_per_client)
        check.positive("alpha", self.alpha)
        check.rate("client_fraction", self.client_fraction)
        check.count("rounds", self.rounds)
        check.positive("server_lr", self.server_lr)
        if not 0.0 <= _non_negative("server_momentum", self.server_momentum) < 1.0:
            raise InvalidArgumentError("server_momentum", self.server_momentum, "in [0, 1)")
        check.count("local_steps", self.local_steps)
        check.count("batch_size", self.batch_size)
        check.positive("lr", self.lr)
        if not 0.0 < _non_negative("lr_decay", self.lr_decay) <= 1.0:
            raise InvalidArgumentError("lr_decay", self.lr_decay, "in (0, 1]")
        if not 0.0 <= _non_negative("momentum", self.momentum) < 1.0:
            raise InvalidArgumentError("momentum", self.momentum, "in [0, 1)")
        check.positive("clip", self.clip)
        check.positive("eps", self.eps)
        if self.delta is not None:
            check.open_unit("delta", self.delta)
        if self.sigma is not None:
            check.positive("sigma", self.sigma)
        check.count("seed", self.seed, minimum=0)
        check.count("threads", self.threads)
        check.count("parallel_clients", self.parallel_clients, minimum=0)
        check.count("max_physical_batch", self.max_physical_batch)
        if not isinstance(self.secure_agg, bool):
            raise InvalidArgumentError("secure_agg", self.secure_agg, "true or false")
        if self.dataset == "cifar10" and self.model == "tanh-cnn":
            raise ConfigError("model 'tanh-cnn' takes 1x28x28 images; use --model cifar-cnn (or auto) for cifar10")
        if self.dataset != "cifar10" and self.model == "cifar-cnn":
            raise ConfigError(f"model 'cifar-cnn' takes 3x32x32 images; dataset {self.dataset!r} has 1x28x28")
        _choice("server_opt", self.server_opt, SERVER_OPTIMIZERS)
        if self.expected_clients is not None:
            check.positive("expected_clients", self.expected_clients)
            if self.expected_clients > self.clients:
                raise InvalidArgumentError("expected_clients", self.expected_clients, f"in (0, clients={self.clients}]")
        if not isinstance(self.adaptive_clip, bool):
            raise InvalidArgumentError("adaptive_clip", self.adaptive_clip, "true or false")
        check.open_unit("target_quantile", self.target_quantile)
        check.positive("clip_lr", self.clip_lr)
        if self.count_noise_std is not None:
            check.positive("count_noise_std", self.count_noise_std)
        if self.dp == "client":
            check.count("clients", self.clients, minimum=2)
        elif self.adaptive_clip or self.count_noise_std is not None or self.expected_clients is not None:
            raise ConfigError("expected_clients, adaptive_clip and count_noise_std apply to dp='client' only")

    @property
    def resolved_model(self) -> str:
        """The model name with ``auto`` resolved for the dataset."""
        if self.model != "auto":
            return self.model
        return "cifar-cnn" if self.dataset == "cifar10" else "tanh-cnn"

    @property
    def resolved_delta(self) -> float:
        """δ: the given one, else 1e-5 for record-level DP and ``1/clients^1.1`` for client-level DP."""
        if self.delta is not None:
            return self.delta
        return default_client_delta(self.clients) if self.dp == "client" else SAMPLE_DELTA

    @property
    def clients_per_round(self) -> float:
        """Expected clients per round: ``expected_clients``, else ``client_fraction × clients``."""
        return self.expected_clients if self.expected_clients is not None else self.client_fraction * self.clients

    def to_dict(self) -> dict[str, Any]:
        """The fields as a plain (JSON / TOML friendly) dict."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "RunConfig":
        """Build a config from ``values``; keys may use ``-`` or ``_``; unknown keys raise :class:`ConfigError`."""
        known = {f.name for f in fields(cls)}
        normalised = {}
        for key, value in values.items():
            name = str(key).replace("-", "_")
            if name not in known:
                raise ConfigError(f"unknown config key {key!r}; known keys: {', '.join(sorted(known))}")
            normalised[name] = value
        return cls(**normalised)

    def differences(self, other: "RunConfig") -> list[str]:
        """Names of the fields (runtime-only fields excluded) whose values differ between two configs."""
        return [
            f.name
            for f in fields(self)
            if f.name not in RUNTIME_FIELDS and getattr(self, f.name) != getattr(other, f.name)
        ]


def load_toml(path: str | Path) -> dict[str, Any]:
    """Read a run's TOML file: a flat table whose keys are the ``fltrain run`` options (without ``--``)."""
    path = Path(path)
    try:
        with path.open("rb") as handle:
            table = tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"config file {str(path)!r} does not exist") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"config file {str(path)!r} is not valid TOML: {error}") from None
    for key, value in table.items():
        if isinstance(value, dict):
            raise ConfigError(f"config file {str(path)!r}: key {key!r} is a table; use flat keys only")
    return table
