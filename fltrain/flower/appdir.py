"""The Flower app directory of fltrain, and the run config that travels with a Flower run.

Flower finds a ServerApp and a ClientApp through an *app directory*: a ``pyproject.toml`` whose
``[tool.flwr.app.components]`` names them and whose ``[tool.flwr.app.config]`` declares every run-config key with
its default (``flwr run --run-config`` refuses keys that are not declared there).  fltrain's app directory holds
nothing else: its components are :mod:`fltrain.flower.server_app` and :mod:`fltrain.flower.client_app` of the
installed package, so one app serves every config.  :func:`write_app` generates the file from the fields of
:class:`fltrain.config.RunConfig`, so the declared keys and defaults cannot drift from ``fltrain run``'s.

A Flower run config holds only booleans, numbers and strings, in flat keys; a TOML table becomes dotted keys.
The keys are ``RunConfig``'s in TOML form (``local-steps``, and the mode sections as ``sample.eps``,
``client.clip`` ...), the same as in a ``fltrain run --config`` file, plus the Flower-only settings of
:class:`FlowerSettings`.  A setting whose default is "not given" (``sample.sigma``, ``client.delta``, ...) is
declared as the empty string ``""``, which means "not given".  ``data-dir`` and ``out`` are the *server's*
directories; every SuperNode names its own data directory in its node config (:data:`NODE_DATA_DIR`).

This module imports neither flwr nor torch: the launcher uses it to refuse a bad config before it starts a process.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Mapping

from dpcalib import validation as check
from dpcalib.errors import InvalidArgumentError

from ..config import ConfigError, RunConfig

__all__ = [
    "APP_NAME", "PUBLISHER", "SERVER_APP", "CLIENT_APP", "NODE_PARTITION", "NODE_PARTITIONS", "NODE_DATA_DIR",
    "NOT_CARRIED", "FlowerSettings", "flower_run_config", "parse_run_config", "app_pyproject", "write_app",
    "toml_value", "ERROR_PREFIX",
]

APP_NAME = "fltrain-flower"
PUBLISHER = "fltrain"
SERVER_APP = "fltrain.flower.server_app:app"
CLIENT_APP = "fltrain.flower.client_app:app"
#: node-config keys of a SuperNode: the partition it holds (0-based), the number of partitions, its data root
NODE_PARTITION = "partition-id"
NODE_PARTITIONS = "num-partitions"
NODE_DATA_DIR = "data-dir"

#: ``RunConfig`` fields a Flower run does not carry, with the reason (a true value is refused, a false one ignored)
NOT_CARRIED = {
    "secure_agg": "secure aggregation runs in-process only (fltrain run); Flower's SecAgg+ adds no DP noise",
    "insecure_reproducible_noise": "every Flower client would draw the same seeded noise, and draw it afresh in "
                                   "every round (Flower starts a new ClientApp process per message)",
}

_UNSET = ""

#: the prefix of the one line a refused run writes to the run's log (the launcher reports it and exits 2)
ERROR_PREFIX = "fltrain: error: "


@dataclass(frozen=True)
class FlowerSettings:
    """The settings of a Flower run that ``fltrain run`` does not have.

    ``round_timeout``: seconds the server waits for the replies of a round (a node that has not answered by then
    is dropped from that round); ``node_wait``: seconds the server waits at start for the SuperNodes of every
    partition to connect; ``resume``: continue the run checkpointed in ``out`` (as ``fltrain run --resume``).
    """

    round_timeout: float = 600.0
    node_wait: float = 120.0
    resume: bool = False

    def __post_init__(self) -> None:
        check.positive("round_timeout", self.round_timeout)
        check.positive("node_wait", self.node_wait)
        if not isinstance(self.resume, bool):
            raise InvalidArgumentError("resume", self.resume, "true or false")


def _key(name: str) -> str:
    return name.replace("_", "-")


def _flatten(values: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested tables as Flower's flat keys: ``{"sample": {"eps": 4}}`` → ``{"sample.eps": 4}``, ``None`` → ``""``."""
    flat: dict[str, Any] = {}
    for name, value in values.items():
        key = prefix + _key(name)
        if isinstance(value, Mapping):
            flat.update(_flatten(value, key + "."))
        else:
            flat[key] = _UNSET if value is None else value
    return flat


def _carried(cfg: RunConfig, settings: FlowerSettings) -> dict[str, Any]:
    values = {k: v for k, v in cfg.to_dict().items() if k not in NOT_CARRIED}
    values.update({f.name: getattr(settings, f.name) for f in fields(FlowerSettings)})
    return _flatten(values)


def _split(values: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``values`` as (``RunConfig`` keys, :class:`FlowerSettings` keys); refuses a true :data:`NOT_CARRIED` key."""
    flower_names = {f.name for f in fields(FlowerSettings)}
    run_values: dict[str, Any] = {}
    flower_values: dict[str, Any] = {}
    for key, value in values.items():
        name = str(key).replace("-", "_")
        if name in NOT_CARRIED:
            if value:
                raise ConfigError(f"config key {key!r} is not carried on Flower: {NOT_CARRIED[name]}")
            continue
        (flower_values if name in flower_names else run_values)[key] = value
    return run_values, flower_values


def flower_run_config(values: Mapping[str, Any]) -> dict[str, Any]:
    """The Flower run config (flat TOML keys) of the run described by ``values``.

    ``values`` holds what a ``fltrain run --config`` file holds (``RunConfig`` keys with ``-`` or ``_``, the mode
    tables, or the flat privacy keys of earlier versions) and the :class:`FlowerSettings` keys.  The whole config
    is validated here, by ``RunConfig`` itself: an unknown key, a bad value or a key Flower does not carry
    (:data:`NOT_CARRIED`) raises :class:`fltrain.config.ConfigError` or
    :class:`dpcalib.errors.InvalidArgumentError`, before any process starts.  Every setting is written out, so the
    server and the clients read one complete config.
    """
    run_values, flower_values = _split(values)
    cfg = RunConfig.from_dict(run_values)
    settings = FlowerSettings(**{str(k).replace("-", "_"): v for k, v in flower_values.items()})
    return _carried(cfg, settings)


def parse_run_config(run_config: Mapping[str, Any]) -> tuple[RunConfig, FlowerSettings]:
    """The ``RunConfig`` and :class:`FlowerSettings` of a Flower run config (``context.run_config``)."""
    nested: dict[str, Any] = {}
    for key, value in run_config.items():
        if value == _UNSET:
            continue
        table, _, name = str(key).rpartition(".")
        (nested.setdefault(table, {}) if table else nested)[name] = value
    run_values, flower_values = _split(nested)
    return (RunConfig.from_dict(run_values),
            FlowerSettings(**{str(k).replace("-", "_"): v for k, v in flower_values.items()}))


def toml_value(value: Any) -> str:
    """``value`` (bool, int, finite float or str) as a TOML literal."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidArgumentError("value", value, "a finite number (TOML config)")
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a TOML basic string: JSON's escapes are TOML's
    raise InvalidArgumentError("value", value, "a bool, number or string (TOML config)")


def app_pyproject(version: str = "1.0.0") -> str:
    """The ``pyproject.toml`` of fltrain's Flower app: components and the declared run config with defaults."""
    lines = [
        "# fltrain's Flower app (generated by fltrain.flower.appdir.write_app; do not edit).",
        "# The ServerApp and ClientApp come from the installed fltrain package.",
        "[build-system]",
        'requires = ["hatchling"]',
        'build-backend = "hatchling.build"',
        "",
        "[project]",
        f"name = {toml_value(APP_NAME)}",
        f"version = {toml_value(version)}",
        'description = "fltrain: accounted DP-FedAvg on Flower"',
        'license = "Apache-2.0"',
        "dependencies = []",
        "",
        "[tool.flwr.app]",
        f"publisher = {toml_value(PUBLISHER)}",
        "",
        "[tool.flwr.app.components]",
        f"serverapp = {toml_value(SERVER_APP)}",
        f"clientapp = {toml_value(CLIENT_APP)}",
        "",
        "[tool.flwr.app.config]",
    ]
    lines += [f"{key} = {toml_value(value)}" for key, value in _carried(RunConfig(), FlowerSettings()).items()]
    return "\n".join(lines) + "\n"


def write_app(directory: str | Path) -> Path:
    """Write fltrain's Flower app directory (one ``pyproject.toml``) to ``directory``; returns the directory."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "pyproject.toml").write_text(app_pyproject())
    return directory
