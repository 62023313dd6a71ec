"""``fltrain flower ...``: run a whole Flower federation on this machine, or write fltrain's Flower app.

``fltrain flower --config run.toml --data-dir D --out O [--nodes N]`` checks the config (the keys of
``fltrain run --config``), starts one SuperLink and ``N`` SuperNodes (default: the config's ``clients``) on
127.0.0.1 (:class:`fltrain.flower.launcher.LocalFederation`), runs fltrain's ServerApp/ClientApp with
``flwr run --stream``, prints the server's progress lines, and tears every process down, also on Ctrl-C, SIGTERM
and failure.  ``fltrain flower --write-app DIR`` writes only the app directory, for ``flwr run`` by hand.

This module imports neither flwr nor torch (``fltrain --help`` stays fast and works without the extra).
"""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any

import click

from ..config import ConfigError, load_toml
from .appdir import flower_run_config, write_app
from .launcher import FederationError, LocalFederation

__all__ = ["flower_command"]


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


@click.command("flower")
@click.option("--config", "config_file", type=click.Path(dir_okay=False), default=None,
              help="TOML run config: the keys of 'fltrain run --config' (required unless --write-app)")
@click.option("--data-dir", default=None, help="data root of the server and every SuperNode [default: the config's]")
@click.option("--out", default=None, help="output directory (metrics, checkpoint, summary, Flower logs) "
                                          "[default: the config's]")
@click.option("--nodes", type=int, default=None, help="SuperNodes to start, one per client [default: clients]")
@click.option("--resume/--no-resume", default=False, show_default=True,
              help="continue the run checkpointed in --out (the config must be the same)")
@click.option("--round-timeout", type=float, default=None,
              help="seconds the server waits for a round's replies; later ones are dropped [default: 600]")
@click.option("--node-wait", type=float, default=None,
              help="seconds the server waits for the SuperNodes to connect [default: 120]")
@click.option("--write-app", "app_dir", type=click.Path(file_okay=False), default=None,
              help="only write fltrain's Flower app directory here (for 'flwr run' by hand) and exit")
def flower_command(config_file: str | None, data_dir: str | None, out: str | None, nodes: int | None, resume: bool,
                   round_timeout: float | None, node_wait: float | None, app_dir: str | None) -> None:
    """Run fltrain on a local Flower federation: a SuperLink and N SuperNodes on 127.0.0.1."""
    if app_dir is not None:
        click.echo(str(write_app(app_dir) / "pyproject.toml"))
        return
    if config_file is None:
        raise click.UsageError("--config is required (or --write-app DIR)")
    values: dict[str, Any] = dict(load_toml(config_file))
    for key, value in (("data-dir", data_dir), ("out", out), ("round-timeout", round_timeout),
                       ("node-wait", node_wait)):
        if value is not None:
            values = {k: v for k, v in values.items() if k.replace("_", "-") != key}
            values[key] = value
    values["resume"] = resume
    run_config = flower_run_config(values)
    clients = run_config["clients"]
    nodes = clients if nodes is None else nodes
    if nodes != clients:
        raise ConfigError(f"--nodes {nodes}: the plan has clients={clients}, one SuperNode per partition; "
                          f"start --nodes {clients}")
    run_config["data-dir"] = str(Path(run_config["data-dir"]).resolve())
    run_config["out"] = str(Path(run_config["out"]).resolve())
    out_dir = Path(run_config["out"])
    if not resume and ((out_dir / "checkpoint.pt").exists() or (out_dir / "metrics.jsonl").exists()):
        raise ConfigError(f"{str(out_dir)!r} already holds a run; pass --resume to continue it or choose another --out")
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        federation = LocalFederation(nodes=nodes, partitions=clients, data_dir=Path(run_config["data-dir"]),
                                     workdir=out_dir / "flower")
        click.echo(f"fltrain: starting a SuperLink and {nodes} SuperNodes on 127.0.0.1 (logs in "
                   f"{federation.workdir})", err=True)
        with federation:
            click.echo(f"fltrain: SuperLink on 127.0.0.1:{federation.superlink_port}; running the app", err=True)
            federation.run(run_config, on_line=lambda line: click.echo(line, err=True))
    except FederationError as error:  # not bad input: the federation failed (exit status 1, one line)
        click.echo(f"fltrain: error: {error}", err=True)
        click.get_current_context().exit(1)
    finally:
        signal.signal(signal.SIGTERM, previous)
    summary = json.loads((out_dir / "summary.json").read_text())
    click.echo(json.dumps(summary, indent=2))
