"""One training run as a frozen dataclass, its validation, and its TOML form.

The run's general settings are flat fields; each privacy mode's settings are one nested section, so that ``clip``,
``sigma``, ``delta`` mean one thing each:

- :class:`SampleDP` (``[sample]`` in TOML, ``cfg.sample``): record-level DP-SGD on every client;
- :class:`ClientDP` (``[client]``, ``cfg.client``): client-level DP-FedAvg.

Both sections always exist (with their defaults); ``dp`` selects the one that is used. In a ``--config`` TOML file
a key is written ``batch-size`` or ``batch_size``; the privacy settings go in their table (``[client]`` /
``clip = 0.3``). The flat form of earlier versions (``clip = 0.3`` next to ``dp = "client"``) still works: a flat
privacy key is read as the key of the selected mode's section (:func:`nest`). The command-line flags (``--clip``,
``--eps``, ...) work the same way. Validation happens in ``__post_init__`` and raises
:class:`dpcalib.errors.InvalidArgumentError` (argument name + allowed range) or :class:`ConfigError`, so a bad run
is refused before anything touches the disk.
"""

from __future__ import annotations

import dataclasses
import sys
import warnings
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping

import dpcalib
from dpcalib import validation as check
from dpcalib.errors import InvalidArgumentError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

__all__ = [
    "ConfigError",
    "ClientDeltaWarning",
    "SampleDP",
    "ClientDP",
    "RunConfig",
    "DATASETS",
    "PARTITIONS",
    "MODELS",
    "DP_MODES",
    "ACCOUNTANTS",
    "ENGINES",
    "DEVICES",
    "SERVER_OPTIMIZERS",
    "CLIENT_SAMPLING",
    "SAMPLERS",
    "CLIENT_NOISE",
    "RUNTIME_FIELDS",
    "MODE_KEYS",
    "CLIENT_DELTA_LIMIT",
    "default_client_delta",
    "nest",
    "load_toml",
]

DATASETS = ("mnist", "fashion-mnist", "cifar10")
PARTITIONS = ("iid", "shards", "dirichlet")
MODELS = ("auto", "tanh-cnn", "mlp", "logreg", "cifar-cnn", "scatter-linear", "scatter-cnn")
DP_MODES = ("sample", "client", "none")
ACCOUNTANTS = tuple(dpcalib.ACCOUNTANTS)
ENGINES = ("auto", "layerwise", "vmap")
DEVICES = ("auto", "cpu", "cuda")
SERVER_OPTIMIZERS = ("sgd", "adam")
CLIENT_SAMPLING = ("auto", "poisson", "fixed")
#: record-level DP-SGD's batch samplers (:class:`dpcalib.Sampler`, :mod:`fltrain.sampling`)
SAMPLERS = tuple(s.value for s in dpcalib.Sampler)
#: client-level noise shares under secure aggregation: float Gaussian, or integer Skellam (the discrete pipeline)
CLIENT_NOISE = ("gaussian", "skellam")
#: the default δ of client-level DP, 1/clients^1.1, is used only when it is at most this; below ~534 clients a δ
#: must be given (a δ near 1/clients allows a mechanism that publishes one client's data outright)
CLIENT_DELTA_LIMIT = 1e-3

#: fields that do not change what a run computes (the device changes float rounding only: noise and batches are
#: drawn on the CPU whatever the device); a ``--resume`` may change them
RUNTIME_FIELDS = frozenset({"data_dir", "out", "threads", "device"})


class ConfigError(ValueError):
    """A run configuration (or a config file) that fltrain cannot carry out, with the reason."""


class ClientDeltaWarning(UserWarning):
    """A client-level δ ≥ 1/(number of clients): the guarantee allows one client's data to be exposed outright."""


def _choice(name: str, value: str, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise InvalidArgumentError(name, value, "one of " + ", ".join(allowed))
    return value


def _in_unit(name: str, value: float, *, closed_low: bool, closed_high: bool) -> float:
    x = check.real(name, value)
    if not ((0.0 <= x if closed_low else 0.0 < x) and (x <= 1.0 if closed_high else x < 1.0)):
        interval = ("[" if closed_low else "(") + "0, 1" + ("]" if closed_high else ")")
        raise InvalidArgumentError(name, value, f"in {interval}")
    return x


#: the largest learning rate accepted (local and server): far above any that trains, and far below the float32
#: range that a step ``lr × velocity`` must stay in (``--lr 1e300`` overflowed it in round 1)
LR_MAX = 1e3


def _learning_rate(name: str, value: Any) -> float:
    x = check.positive(name, value)
    if x > LR_MAX:
        raise InvalidArgumentError(name, value, f"in (0, {LR_MAX:g}]")
    return x


def _canonical_numbers(obj: Any) -> None:
    """Store each validated number as its declared type: TOML's ``rounds = 2.0`` is the count 2 (``range`` would
    fail on it mid-run), ``lr = 1`` the float 1.0. Called after validation, which refused bools and strings."""
    for f in fields(obj):
        value = getattr(obj, f.name)
        if value is None or isinstance(value, bool):
            continue
        if f.type in ("int", "int | None"):
            object.__setattr__(obj, f.name, int(value))
        elif f.type in ("float", "float | None"):
            object.__setattr__(obj, f.name, float(value))


def _flag(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise InvalidArgumentError(name, value, "true or false")
    return value


def default_client_delta(num_clients: int) -> float:
    """The default δ of client-level DP for ``num_clients`` clients: ``1/N^1.1``, strictly below ``1/N``."""
    n = check.count("clients", num_clients, minimum=2)
    return float(n) ** -1.1


@dataclass(frozen=True)
class SampleDP:
    """Record-level DP (``dp = "sample"``): every client runs DP-SGD (see :mod:`fltrain.privacy.record`).

    Attributes:
        eps, delta: the budget, per record (one record of one client added or removed with the ``poisson``
            sampler, replaced with ``fixed`` and ``shuffle``).
        sigma: the noise multiplier (noise std / ``clip``) of every DP-SGD step; None: calibrated to (eps, delta).
        clip: the per-sample clipping norm C.
        accountant: the dpcalib accountant of the calibration and the ledger.
        sampler: how each client forms its batches: ``poisson`` (each record with rate q), ``fixed`` (exactly
            ``batch_size`` records, a uniformly random subset every step), ``shuffle`` (a random permutation per
            epoch cut into batches of ``batch_size``; no amplification claimed). See :mod:`fltrain.sampling`.
        q: the public Poisson rate of every client's batches (``poisson`` only); None: ``batch_size × clients /
            training records``.
    """

    eps: float = 4.0
    delta: float = 1e-5
    sigma: float | None = None
    clip: float = 0.1
    accountant: str = "rdp"
    sampler: str = "poisson"
    q: float | None = None

    def __post_init__(self) -> None:
        check.positive("sample.eps", self.eps)
        check.open_unit("sample.delta", self.delta)
        if self.sigma is not None:
            check.positive("sample.sigma", self.sigma)
        check.positive("sample.clip", self.clip)
        _choice("sample.accountant", self.accountant, ACCOUNTANTS)
        _choice("sample.sampler", self.sampler, SAMPLERS)
        if self.q is not None:
            check.rate("sample.q", self.q)
            if self.sampler != "poisson":
                raise ConfigError(f"sample.q is the rate of the poisson sampler; the {self.sampler!r} sampler draws "
                                  "batches of exactly batch_size records (leave q unset)")
        _canonical_numbers(self)


@dataclass(frozen=True)
class ClientDP:
    """Client-level DP (``dp = "client"``): DP-FedAvg (see :mod:`fltrain.privacy.clientlevel`).

    Attributes:
        eps, delta: the budget, per client. ``delta=None``: ``1/clients^1.1`` when that is at most
            :data:`CLIENT_DELTA_LIMIT`, else refused (give a δ).
        sigma: the noise multiplier (noise std / ``clip``) of each round's release; None: calibrated.
        clip: the (initial) clip norm of a client's whole update.
        accountant: the dpcalib accountant (a fixed cohort is accounted under replace-one by either).
        expected_clients: m, clients per round; None: ``client_fraction × clients``.
        sampling: ``poisson`` (each client with rate m/N; central noise only), ``fixed`` (exactly m, uniformly),
            ``auto`` (fixed with secure aggregation, else poisson).
        adaptive_clip, target_quantile, clip_lr, count_noise_std: adaptive clipping (Andrew et al. 2021).
        min_survivors: t of distributed noise (secure aggregation): each client adds 1/t of the noise variance and
            a round with fewer than t survivors aborts; None: ``⌊2m/3⌋ + 1``.
        noise: ``gaussian`` (float shares in fixed point) or ``skellam`` (integer shares in Z_(2^bits), the
            accounted mechanism exactly; secure aggregation, fixed clip, σ calibrated; see
            :mod:`fltrain.privacy.discrete`).
        bits: bits per coordinate of the ring with ``noise = "skellam"``, in [2, 53] (messages travel as float64).
    """

    eps: float = 4.0
    delta: float | None = None
    sigma: float | None = None
    clip: float = 0.5
    accountant: str = "rdp"
    expected_clients: float | None = None
    sampling: str = "auto"
    adaptive_clip: bool = False
    target_quantile: float = 0.5
    clip_lr: float = 0.2
    count_noise_std: float | None = None
    min_survivors: int | None = None
    noise: str = "gaussian"
    bits: int = 16

    def __post_init__(self) -> None:
        check.positive("client.eps", self.eps)
        if self.delta is not None:
            check.open_unit("client.delta", self.delta)
        if self.sigma is not None:
            check.positive("client.sigma", self.sigma)
        check.positive("client.clip", self.clip)
        _choice("client.accountant", self.accountant, ACCOUNTANTS)
        if self.expected_clients is not None:
            check.positive("client.expected_clients", self.expected_clients)
        _choice("client.sampling", self.sampling, CLIENT_SAMPLING)
        _flag("client.adaptive_clip", self.adaptive_clip)
        check.open_unit("client.target_quantile", self.target_quantile)
        check.positive("client.clip_lr", self.clip_lr)
        if self.count_noise_std is not None:
            check.positive("client.count_noise_std", self.count_noise_std)
        if self.min_survivors is not None:
            check.count("client.min_survivors", self.min_survivors, minimum=2)
        _choice("client.noise", self.noise, CLIENT_NOISE)
        check.count("client.bits", self.bits, 2, 53)
        _canonical_numbers(self)


_SECTIONS: dict[str, type] = {"sample": SampleDP, "client": ClientDP}
#: the keys of each mode's section
MODE_KEYS: dict[str, frozenset[str]] = {name: frozenset(f.name for f in fields(cls)) for name, cls in _SECTIONS.items()}
_ALL_MODE_KEYS = MODE_KEYS["sample"] | MODE_KEYS["client"]


def nest(values: Mapping[str, Any]) -> dict[str, Any]:
    """``values`` (keys with ``-`` or ``_``) with every flat privacy key moved into the section of the selected
    mode (``dp``, default ``sample``); a key both flat and in its section, or a flat key the mode does not have,
    raises :class:`ConfigError` naming the new key."""
    out: dict[str, Any] = {}
    flat: dict[str, Any] = {}
    for key, value in values.items():
        name = str(key).replace("-", "_")
        if name in out or name in flat:
            raise ConfigError(f"config key {key!r} is given twice (as '-' and '_' spellings)")
        if name in _SECTIONS:
            if not isinstance(value, Mapping):
                raise ConfigError(f"config key {key!r} must be a table of {name}-level DP settings")
            out[name] = {str(k).replace("-", "_"): v for k, v in value.items()}
        elif name in _ALL_MODE_KEYS:
            flat[name] = value
        else:
            out[name] = value
    if flat:
        dp = out.get("dp", "sample")
        if dp not in _SECTIONS:
            keys = ", ".join(sorted(flat))
            raise ConfigError(f"{keys}: privacy settings, but dp={dp!r} has none; put them in a [sample] or "
                              "[client] table (used when that mode is selected)")
        section = dict(out.get(dp, {}))
        for name, value in flat.items():
            if name not in MODE_KEYS[dp]:
                other = next(s for s in _SECTIONS if s != dp)
                raise ConfigError(f"{name!r} is a setting of dp={other!r} ({other}.{name}), not of dp={dp!r}")
            if name in section:
                raise ConfigError(f"{name!r} is given both flat and as {dp}.{name}; keep {dp}.{name}")
            section[name] = value
        out[dp] = section
    return out


@dataclass(frozen=True)
class RunConfig:
    """Everything that determines a federated training run.

    ``dp`` selects the privacy mode (:mod:`fltrain.privacy`): ``"sample"`` (record-level, settings in
    :attr:`sample`), ``"client"`` (client-level, :attr:`client`), ``"none"``. ``val_fraction`` carves a validation
    split off the training records (before partitioning) for choosing settings; its accuracy is private (it is
    training data) and goes to the private diagnostics. ``insecure_reproducible_noise`` draws the DP noise and
    sampling from the seed instead of the secret source: a simulation without the guarantee, labelled as such.
    """

    # data
    dataset: str = "mnist"
    data_dir: str = "data"
    train_samples: int = 0
    test_samples: int = 0
    val_fraction: float = 0.0
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
    # local training
    model: str = "auto"
    local_steps: int = 100
    batch_size: int = 150
    lr: float = 0.15
    lr_decay: float = 1.0
    momentum: float = 0.9
    # privacy
    dp: str = "sample"
    sample: SampleDP = field(default_factory=SampleDP)
    client: ClientDP = field(default_factory=ClientDP)
    secure_agg: bool = False
    insecure_reproducible_noise: bool = False
    # execution
    seed: int = 0
    out: str = "runs/fltrain"
    threads: int = 1
    engine: str = "auto"
    parallel_clients: int = 0
    max_physical_batch: int = 384
    device: str = "auto"

    def __post_init__(self) -> None:
        for name, cls in _SECTIONS.items():
            value = getattr(self, name)
            if isinstance(value, Mapping):
                object.__setattr__(self, name, _section(cls, name, value))
            elif not isinstance(value, cls):
                raise InvalidArgumentError(name, value, f"a {cls.__name__} or a table of its settings")
        _choice("dataset", self.dataset, DATASETS)
        _choice("partition", self.partition, PARTITIONS)
        _choice("model", self.model, MODELS)
        _choice("dp", self.dp, DP_MODES)
        _choice("engine", self.engine, ENGINES)
        _choice("device", self.device, DEVICES)
        check.count("train_samples", self.train_samples, minimum=0)
        check.count("test_samples", self.test_samples, minimum=0)
        _in_unit("val_fraction", self.val_fraction, closed_low=True, closed_high=False)
        check.count("clients", self.clients)
        check.count("shards_per_client", self.shards_per_client)
        check.positive("alpha", self.alpha)
        check.rate("client_fraction", self.client_fraction)
        check.count("rounds", self.rounds)
        _learning_rate("server_lr", self.server_lr)
        _in_unit("server_momentum", self.server_momentum, closed_low=True, closed_high=False)
        check.count("local_steps", self.local_steps)
        check.count("batch_size", self.batch_size)
        _learning_rate("lr", self.lr)
        _in_unit("lr_decay", self.lr_decay, closed_low=False, closed_high=True)
        _in_unit("momentum", self.momentum, closed_low=True, closed_high=False)
        check.count("seed", self.seed, minimum=0)
        check.count("threads", self.threads)
        check.count("parallel_clients", self.parallel_clients, minimum=0)
        check.count("max_physical_batch", self.max_physical_batch)
        _flag("secure_agg", self.secure_agg)
        _flag("insecure_reproducible_noise", self.insecure_reproducible_noise)
        _choice("server_opt", self.server_opt, SERVER_OPTIMIZERS)
        if self.dataset == "cifar10" and self.model == "tanh-cnn":
            raise ConfigError("model 'tanh-cnn' takes 1x28x28 images; use --model cifar-cnn (or auto) for cifar10")
        if self.dataset != "cifar10" and self.model == "cifar-cnn":
            raise ConfigError(f"model 'cifar-cnn' takes 3x32x32 images; dataset {self.dataset!r} has 1x28x28")
        if self.secure_agg and self.dp != "client" and self.cohort_size < 2:
            raise ConfigError(f"secure_agg needs at least 2 clients per round (the sum of one client is its update); "
                              f"clients={self.clients} with client_fraction={self.client_fraction} gives "
                              f"{self.cohort_size}")
        if self.dp == "client":
            self._check_client_level()
        _canonical_numbers(self)

    def _check_client_level(self) -> None:
        c = self.client
        check.count("clients", self.clients, minimum=2)
        m = self.clients_per_round
        if m > self.clients:
            raise InvalidArgumentError("client.expected_clients", m, f"in (0, clients={self.clients}]")
        if c.sampling == "poisson" and self.secure_agg:
            raise ConfigError("client.sampling='poisson' cannot be used with secure_agg: the noise of the realised "
                              "number of shares would reveal that number; use client.sampling='fixed' (or 'auto')")
        if self.client_sampling == "fixed":
            if m != round(m) or (self.secure_agg and m < 2):
                raise InvalidArgumentError("client.expected_clients", m, "an integer (at least 2 with secure_agg) "
                                           "for a fixed-size cohort")
        if c.min_survivors is not None:
            if not self.secure_agg:
                raise ConfigError("client.min_survivors applies to distributed noise (secure_agg) only")
            low = 2 * round(m) // 3 + 1
            if not low <= c.min_survivors <= m:
                raise InvalidArgumentError("client.min_survivors", c.min_survivors, f"in [{low}, {round(m)}]")
        if c.noise == "skellam" and not (self.secure_agg and c.sigma is None and not c.adaptive_clip
                                         and c.accountant == "rdp"):
            raise ConfigError("client.noise='skellam' needs secure_agg, a calibrated sigma (no client.sigma), a "
                              "fixed clip (no client.adaptive_clip) and client.accountant='rdp'")
        if not c.adaptive_clip and c.count_noise_std is not None:
            raise ConfigError("client.count_noise_std applies to adaptive clipping (client.adaptive_clip) only")
        if c.delta is not None and c.delta >= 1.0 / self.clients:
            warnings.warn(
                f"delta={c.delta:g} >= 1/clients = {1.0 / self.clients:g}: a mechanism that publishes one client's "
                "data in the clear satisfies this guarantee; use delta < 1/clients",
                ClientDeltaWarning, stacklevel=3,
            )
        if c.delta is None and default_client_delta(self.clients) > CLIENT_DELTA_LIMIT:
            raise ConfigError(
                f"client.delta: the default 1/clients^1.1 = {default_client_delta(self.clients):.3g} for "
                f"{self.clients} clients is above {CLIENT_DELTA_LIMIT:g}, a guarantee that means little; give "
                "client.delta (--delta) explicitly"
            )

    @property
    def resolved_model(self) -> str:
        """The model name with ``auto`` resolved for the dataset."""
        if self.model != "auto":
            return self.model
        return "cifar-cnn" if self.dataset == "cifar10" else "tanh-cnn"

    @property
    def resolved_delta(self) -> float | None:
        """δ of the selected mode (client level: the given one, else ``1/clients^1.1``); None without DP."""
        if self.dp == "sample":
            return self.sample.delta
        if self.dp == "client":
            return self.client.delta if self.client.delta is not None else default_client_delta(self.clients)
        return None

    @property
    def cohort_size(self) -> int:
        """Clients per round of the fixed cohort of record-level DP and of FedAvg: ``max(1, round(f·N))``."""
        return max(1, round(self.client_fraction * self.clients))

    @property
    def clients_per_round(self) -> float:
        """Client-level DP's m: ``client.expected_clients``, else ``client_fraction × clients``."""
        m = self.client.expected_clients
        return float(m) if m is not None else self.client_fraction * self.clients

    @property
    def client_sampling(self) -> str:
        """Client-level DP's cohort: ``fixed`` or ``poisson`` (``auto`` resolved by ``secure_agg``)."""
        if self.client.sampling != "auto":
            return self.client.sampling
        return "fixed" if self.secure_agg else "poisson"

    def default_record_rate(self, train_records: int) -> float:
        """Record-level DP's default public rate ``batch_size × clients / train_records`` (the rate of an equal
        split of the training set, a public number); refused above 1."""
        q = self.batch_size * self.clients / train_records
        if q > 1.0:
            raise InvalidArgumentError("batch_size", self.batch_size, f"at most {train_records // self.clients} "
                                       f"(training records / clients), so that the rate q = batch_size x clients / "
                                       f"records is <= 1")
        return q

    def to_dict(self) -> dict[str, Any]:
        """The fields as a plain (JSON / TOML friendly) dict, the mode sections nested."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "RunConfig":
        """Build a config from ``values`` (see :func:`nest` for keys); unknown keys raise :class:`ConfigError`."""
        nested = nest(values)
        known = {f.name for f in fields(cls)}
        for name in nested:
            if name not in known:
                raise ConfigError(f"unknown config key {name!r}; known keys: {', '.join(sorted(known))} (and "
                                  f"the [sample] / [client] keys {', '.join(sorted(_ALL_MODE_KEYS))})")
        return cls(**nested)

    def differences(self, other: "RunConfig") -> list[str]:
        """Names of the settings (runtime-only fields excluded) that differ between two configs; a mode's
        setting is named ``section.key``."""
        changed = []
        for f in fields(self):
            mine, theirs = getattr(self, f.name), getattr(other, f.name)
            if f.name in RUNTIME_FIELDS or mine == theirs:
                continue
            if f.name in _SECTIONS:
                changed += [f"{f.name}.{g.name}" for g in fields(mine) if getattr(mine, g.name) != getattr(theirs, g.name)]
            else:
                changed.append(f.name)
        return changed


def _section(cls: type, name: str, values: Mapping[str, Any]) -> Any:
    known = {f.name for f in fields(cls)}
    normalised = {}
    for key, value in values.items():
        k = str(key).replace("-", "_")
        if k not in known:
            raise ConfigError(f"unknown key {key!r} in [{name}]; known keys: {', '.join(sorted(known))}")
        normalised[k] = value
    return cls(**normalised)


def load_toml(path: str | Path) -> dict[str, Any]:
    """Read a run's TOML file: keys are the ``fltrain run`` options (without ``--``); the tables ``[sample]`` and
    ``[client]`` hold the privacy settings of each mode (:func:`nest`)."""
    path = Path(path)
    try:
        with path.open("rb") as handle:
            table = tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"config file {str(path)!r} does not exist") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:  # TOML is UTF-8
        raise ConfigError(f"config file {str(path)!r} is not valid TOML: {error}") from None
    except OSError as error:
        raise ConfigError(f"config file {str(path)!r} cannot be read: {error.strerror or error}") from None
    for key, value in table.items():
        if isinstance(value, dict) and str(key).replace("-", "_") not in _SECTIONS:
            raise ConfigError(f"config file {str(path)!r}: key {key!r} is a table; only [sample] and [client] are")
    return table
