"""``fltrain run ...``: the command line of :func:`fltrain.run.run`.

Every :class:`fltrain.config.RunConfig` field is an option (``batch_size`` → ``--batch-size``) with its default
shown in ``--help``.  ``--config run.toml`` reads the same keys from a file; options given on the command line
win over the file.  Bad input exits with status 2 and one line on stderr, before anything is written.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import warnings
from typing import Any

import click

from dpcalib.errors import DpcalibError

from .config import (
    ACCOUNTANTS, DATASETS, DP_MODES, ENGINES, MODELS, PARTITIONS, SERVER_OPTIMIZERS, ConfigError, RunConfig, load_toml,
)
from .data import DataUnavailableError
from .flower.command import flower_command

__all__ = ["main", "cli"]

_HELP = {
    "dataset": "dataset (torchvision) to train on",
    "data_dir": "root directory of the datasets (downloaded there if absent and the network allows)",
    "train_samples": "use only the first N training records (0: all)",
    "test_samples": "use only the first N test records (0: all)",
    "clients": "number of clients the training set is partitioned among",
    "partition": "how records are dealt to clients: iid, shards (McMahan et al. 2017), dirichlet (label skew)",
    "shards_per_client": "label-sorted shards per client (--partition shards)",
    "alpha": "Dirichlet concentration (--partition dirichlet); small = more skew",
    "client_fraction": "fraction of clients sampled each round",
    "rounds": "federated rounds",
    "server_lr": "server learning rate applied to the aggregated delta",
    "server_momentum": "server momentum (FedAvgM); 0 = plain FedAvg",
    "server_opt": "server optimiser: sgd (FedAvg/FedAvgM with --server-momentum) or adam (FedAdam, Reddi et al. 2021)",
    "expected_clients": "--dp client: expected clients per round m; each client joins with Poisson rate m/clients",
    "model": "model: tanh-cnn (Papernot et al. 2020), mlp, logreg, cifar-cnn; auto picks by dataset",
    "local_steps": "local (DP-)SGD steps per client per round",
    "batch_size": "expected local batch size B; client k samples records with Poisson rate B/n_k",
    "lr": "local learning rate (of round 1)",
    "lr_decay": "the local learning rate of round r is lr * lr_decay^(r-1)",
    "momentum": "local SGD momentum",
    "clip": "clipping norm C: per sample (--dp sample) or per client update (--dp client; initial C if adaptive)",
    "dp": "privacy: sample (record-level DP-SGD), client (client-level DP-FedAvg), none",
    "eps": "privacy budget epsilon (sigma is calibrated to it; with --sigma, training stops before exceeding it)",
    "delta": "privacy parameter delta",
    "sigma": "noise multiplier; default: calibrated by dpcalib to --eps/--delta over the planned run",
    "accountant": "dpcalib accountant for calibration and the ledger",
    "adaptive_clip": "--dp client: adapt C to a quantile of the update norms (Andrew et al. 2021), privately",
    "target_quantile": "--adaptive-clip: target fraction of client updates left unclipped",
    "clip_lr": "--adaptive-clip: geometric learning rate of C",
    "count_noise_std": "--adaptive-clip: noise std of the private unclipped count (part of the same budget)",
    "secure_agg": "aggregate the clients' updates with secure aggregation",
    "seed": "seed of the partition, initialisation, sampling and noise",
    "out": "output directory (metrics.jsonl, checkpoint.pt, summary.json)",
    "threads": "torch CPU threads",
    "engine": "per-sample gradient engine: layerwise (fast, closed form), vmap (torch.func), auto",
    "parallel_clients": "clients trained together as one vectorised program (0: as many as fill --max-physical-batch)",
    "max_physical_batch": "largest number of records processed at once (bounds memory)",
}
_CHOICES = {
    "dataset": DATASETS, "partition": PARTITIONS, "model": MODELS, "dp": DP_MODES,
    "accountant": ACCOUNTANTS, "engine": ENGINES, "server_opt": SERVER_OPTIMIZERS,
}


#: how ``--help`` shows the default of the options whose default is "none given"
_NONE_DEFAULT = {
    "sigma": "calibrated",
    "delta": "1e-5; 1/clients^1.1 with --dp client",
    "expected_clients": "client-fraction x clients",
    "count_noise_std": "expected clients / 20",
}


def _option(field: dataclasses.Field) -> Any:
    name = field.name
    flag = "--" + name.replace("_", "-")
    if field.type in ("bool", bool):
        return click.option(flag + "/--no-" + name.replace("_", "-"), name, default=field.default,
                            show_default=True, help=_HELP[name])
    if name in _CHOICES:
        kind: Any = click.Choice(_CHOICES[name])
    elif field.default is None:
        return click.option(flag, name, type=float, default=None, show_default=_NONE_DEFAULT[name], help=_HELP[name])
    else:
        kind = type(field.default)
    return click.option(flag, name, type=kind, default=field.default, show_default=True, help=_HELP[name])


def _with_config_options(function: Any) -> Any:
    for field in reversed(dataclasses.fields(RunConfig)):
        function = _option(field)(function)
    return function


def _number(value: float | None, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


class _RoundBar:
    """A progress bar per round on stderr, and the round's metrics line when it ends."""

    def __init__(self) -> None:
        self.bar: Any = None
        self.done = 0

    def round_started(self, round_index: int, rounds: int, local_steps: int) -> None:
        self.bar = click.progressbar(length=local_steps, label=f"round {round_index}/{rounds}", file=sys.stderr,
                                     show_pos=True, show_eta=True)
        self.bar.__enter__()
        self.done = 0

    def step(self, step: int) -> None:
        self.bar.update(step - self.done)
        self.done = step

    def round_finished(self, metrics: dict[str, Any]) -> None:
        self.bar.__exit__(None, None, None)
        click.echo(
            f"round {metrics['round']}: train_loss {_number(metrics['train_loss'])}  "
            f"test_accuracy {metrics['test_accuracy']:.4f}  epsilon {_number(metrics['epsilon'], 3)}  "
            f"{metrics['seconds']:.1f}s",
            err=True,
        )


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
def cli() -> None:
    """fltrain: federated learning with differential privacy, calibrated by dpcalib."""


@cli.command("run")
@click.option("--config", "config_file", type=click.Path(dir_okay=False), default=None, show_default="none",
              help="TOML file whose keys are these options (command-line options win)")
@click.option("--resume/--no-resume", default=False, show_default=True,
              help="continue the run checkpointed in --out (the config must be the same)")
@_with_config_options
def run_command(config_file: str | None, resume: bool, **options: Any) -> None:
    """Train a model with FedAvg, every client running DP-SGD; report ε spent round by round."""
    from .run import run  # torch is imported only when a run starts

    ctx = click.get_current_context()
    values: dict[str, Any] = dict(load_toml(config_file)) if config_file else {}
    values = {key.replace("-", "_"): value for key, value in values.items()}
    for name, value in options.items():
        if name not in values or ctx.get_parameter_source(name) != click.core.ParameterSource.DEFAULT:
            values[name] = value
    values = {key: value for key, value in values.items() if not (key in _NONE_DEFAULT and value is None)}
    cfg = RunConfig.from_dict(values)
    summary = run(cfg, resume=resume, progress=_RoundBar())
    click.echo(json.dumps(dataclasses.asdict(summary), indent=2))


cli.add_command(flower_command)  # fltrain on Flower (extra 'flower'); the command itself imports neither flwr nor torch


def _one_line_warning(message: Warning | str, category: type[Warning], *_: Any, **__: Any) -> None:
    """Warnings (e.g. a client-level δ ≥ 1/clients) as one line on stderr, without the source line."""
    click.echo(f"fltrain: warning: {message}", err=True)


def main(argv: list[str] | None = None) -> int:
    """Entry point: runs the CLI; bad input → one line on stderr and exit status 2."""
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _one_line_warning
            result = cli.main(args=argv, prog_name="fltrain", standalone_mode=False)
    except click.exceptions.ClickException as error:
        click.echo(f"fltrain: error: {error.format_message()}", err=True)
        return 2
    except (DpcalibError, ConfigError, DataUnavailableError) as error:
        click.echo(f"fltrain: error: {error}", err=True)
        return 2
    except click.exceptions.Abort:
        click.echo("fltrain: interrupted; continue with --resume", err=True)
        return 130
    except KeyboardInterrupt:
        click.echo("fltrain: interrupted; continue with --resume", err=True)
        return 130
    return int(result) if isinstance(result, int) else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
