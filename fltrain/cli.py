"""``fltrain run ...``: the command line of :func:`fltrain.run.run`; ``fltrain audit ...`` of
:func:`fltrain.audit.run_audit` (the same options, plus the audit's).

Every general :class:`fltrain.config.RunConfig` field is an option (``batch_size`` → ``--batch-size``) with its
default shown in ``--help``. The privacy flags (``--eps``, ``--delta``, ``--sigma``, ``--clip``, ``--accountant``)
set the key of the selected mode's section (``--dp sample`` → ``[sample]``, ``--dp client`` → ``[client]``); the
client-level flags set ``[client]`` keys. ``--config run.toml`` reads the same keys from a file (privacy settings
in ``[sample]`` / ``[client]`` tables, or flat as before); options given on the command line win over the file.
Bad input exits with status 2 and one line on stderr, before anything is written.
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
    ACCOUNTANTS, CLIENT_NOISE, CLIENT_SAMPLING, DATASETS, DEVICES, DP_MODES, ENGINES, MODELS, PARTITIONS, SAMPLERS,
    SERVER_OPTIMIZERS, ConfigError, RunConfig, load_toml, nest,
)
from .data import DataUnavailableError
from .flower.command import flower_command

__all__ = ["main", "cli"]

_HELP = {
    "dataset": "dataset (torchvision) to train on",
    "data_dir": "root directory of the datasets (downloaded there if absent and the network allows)",
    "train_samples": "use only the first N training records (0: all)",
    "test_samples": "use only the first N test records (0: all)",
    "val_fraction": "carve this fraction of the training records off as a validation split (for choosing "
                    "settings; the test set is then used once, at the end)",
    "clients": "number of clients the training set is partitioned among",
    "partition": "how records are dealt to clients: iid, shards (McMahan et al. 2017), dirichlet (label skew)",
    "shards_per_client": "label-sorted shards per client (--partition shards)",
    "alpha": "Dirichlet concentration (--partition dirichlet); small = more skew",
    "client_fraction": "fraction of clients per round (--dp client: the expected fraction)",
    "rounds": "federated rounds",
    "server_lr": "server learning rate applied to the aggregated delta",
    "server_momentum": "server momentum (FedAvgM); 0 = plain FedAvg",
    "server_opt": "server optimiser: sgd (FedAvg/FedAvgM with --server-momentum) or adam (FedAdam, Reddi et al. 2021)",
    "model": "model: tanh-cnn (Papernot et al. 2020), mlp, logreg, cifar-cnn, scatter-linear / scatter-cnn (on "
             "scattering features, Tramer & Boneh 2021); auto picks by dataset",
    "local_steps": "local (DP-)SGD steps per client per round",
    "batch_size": "local batch size B: expected (Poisson batches) or exact (--sampler fixed/shuffle); --dp sample: "
                  "the public divisor of every noisy sum",
    "lr": "local learning rate (of round 1)",
    "lr_decay": "the local learning rate of round r is lr * lr_decay^(r-1)",
    "momentum": "local SGD momentum",
    "dp": "privacy: sample (record-level DP-SGD), client (client-level DP-FedAvg), none",
    "secure_agg": "aggregate the clients' messages with secure aggregation (--dp client: the clients add the noise)",
    "insecure_reproducible_noise": "draw DP noise and sampling from --seed: a SIMULATION without the guarantee "
                                   "(labelled in every output)",
    "seed": "seed of the partition, validation split, initialisation (never of DP noise or sampling)",
    "out": "output directory (metrics.jsonl, private-diagnostics.jsonl, ledger.json, checkpoint.pt, summary.json)",
    "threads": "torch CPU threads",
    "engine": "per-sample gradient engine: layerwise (fast, closed form), vmap (torch.func), auto",
    "parallel_clients": "clients trained together as one vectorised program (0: as many as fill --max-physical-batch)",
    "max_physical_batch": "largest number of records processed at once (bounds memory)",
    "device": "where training and evaluation compute: cuda, cpu, or auto (cuda when available)",
}
_CHOICES = {
    "dataset": DATASETS, "partition": PARTITIONS, "model": MODELS, "dp": DP_MODES, "engine": ENGINES, "device": DEVICES,
    "server_opt": SERVER_OPTIMIZERS,
}
_MODE_SECTIONS = ("sample", "client")

#: privacy flags: (flag, key in the section, type, help, shown default); the section is the selected mode's
#: (``None``) or the named one
_PRIVACY_FLAGS: list[tuple[str, str | None, Any, str, str]] = [
    ("eps", None, float, "privacy budget epsilon of the selected mode (sigma is calibrated to it; with --sigma, "
     "training stops before exceeding it)", "4"),
    ("delta", None, float, "privacy parameter delta of the selected mode",
     "1e-5; --dp client: 1/clients^1.1 if <= 1e-3, else required"),
    ("sigma", None, float, "noise multiplier (noise std / clip) of the selected mode", "calibrated"),
    ("clip", None, float, "clipping norm: per sample (--dp sample) or per client update (--dp client; initial C "
     "if adaptive)", "0.1 (sample), 0.5 (client)"),
    ("accountant", None, click.Choice(ACCOUNTANTS), "dpcalib accountant for calibration and the ledger", "rdp"),
    ("sampler", "sample", click.Choice(SAMPLERS), "--dp sample: each client's batches: poisson (each record with "
     "rate q; add/remove), fixed (exactly batch-size records; replace-one), shuffle (a permutation per epoch cut into "
     "batches; replace-one, no amplification claimed)", "poisson"),
    ("q", "sample", float, "--dp sample --sampler poisson: the public Poisson rate of every client's batches",
     "batch-size x clients / training records"),
    ("expected_clients", "client", float, "--dp client: clients per round m", "client-fraction x clients"),
    ("client_sampling", "client", click.Choice(CLIENT_SAMPLING), "--dp client: poisson (rate m/clients), fixed "
     "(exactly m), auto (fixed with --secure-agg)", "auto"),
    ("adaptive_clip", "client", bool, "--dp client: adapt C to a quantile of the update norms (Andrew et al. 2021)",
     "off"),
    ("target_quantile", "client", float, "--adaptive-clip: target fraction of client updates left unclipped", "0.5"),
    ("clip_lr", "client", float, "--adaptive-clip: geometric learning rate of C", "0.2"),
    ("count_noise_std", "client", float, "--adaptive-clip: noise std of the private unclipped count (part of the "
     "same budget)", "expected clients / 20"),
    ("min_survivors", "client", int, "--dp client --secure-agg: t; each client adds 1/t of the noise variance and a "
     "round with fewer survivors aborts", "floor(2m/3) + 1"),
    ("client_noise", "client", click.Choice(CLIENT_NOISE), "--dp client --secure-agg: gaussian (float shares) or "
     "skellam (integer shares in Z_(2^bits), accounted exactly)", "gaussian"),
    ("bits", "client", int, "--client-noise skellam: bits per coordinate of the secure sum, in [2, 53]", "16"),
]
_SECTION_KEY = {"client_sampling": "sampling", "client_noise": "noise"}


def _option(field: dataclasses.Field) -> Any:
    name = field.name
    flag = "--" + name.replace("_", "-")
    if field.type in ("bool", bool):
        return click.option(flag + "/--no-" + name.replace("_", "-"), name, default=field.default,
                            show_default=True, help=_HELP[name])
    kind: Any = click.Choice(_CHOICES[name]) if name in _CHOICES else type(field.default)
    return click.option(flag, name, type=kind, default=field.default, show_default=True, help=_HELP[name])


def _privacy_option(flag: str, kind: Any, help_text: str, shown: str) -> Any:
    dashed = "--" + flag.replace("_", "-")
    if kind is bool:
        return click.option(dashed + "/--no-" + flag.replace("_", "-"), flag, default=None, show_default=shown,
                            help=help_text)
    return click.option(dashed, flag, type=kind, default=None, show_default=shown, help=help_text)


def _with_config_options(function: Any) -> Any:
    for flag, _, kind, help_text, shown in reversed(_PRIVACY_FLAGS):
        function = _privacy_option(flag, kind, help_text, shown)(function)
    for field in reversed(dataclasses.fields(RunConfig)):
        if field.name not in _MODE_SECTIONS:
            function = _option(field)(function)
    return function


def _merge(file_values: dict[str, Any], options: dict[str, Any], given: set[str]) -> dict[str, Any]:
    """The config: the file's values (nested), overridden by the options given on the command line; a privacy flag
    sets the key of its section (the selected mode's for the generic ones)."""
    values = nest(file_values)
    for name, value in options.items():
        if name in given or (name not in values and name not in {f for f, *_ in _PRIVACY_FLAGS}):
            values[name] = value
    dp = values.get("dp", "sample")
    for flag, section, *_ in _PRIVACY_FLAGS:
        value = values.pop(flag, None)
        if flag not in given:
            continue
        target = section or dp
        if target != dp:
            raise ConfigError(f"--{flag.replace('_', '-')} is a setting of --dp {section} ({section}."
                              f"{_SECTION_KEY.get(flag, flag)}), not of --dp {dp}")
        if target not in _MODE_SECTIONS:
            raise ConfigError(f"--{flag.replace('_', '-')} is a privacy setting; --dp {dp} has none")
        values[target] = {**values.get(target, {}), _SECTION_KEY.get(flag, flag): value}
    return values


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
            f"round {metrics['round']}: test_accuracy {_number(metrics.get('test_accuracy'))}  "
            f"epsilon {_number(metrics['epsilon'], 3)}  "
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
    """Train a model with FedAvg under record-level or client-level DP; report ε spent round by round."""
    from .run import run  # torch is imported only when a run starts

    summary = run(_config(config_file, options), resume=resume, progress=_RoundBar())
    click.echo(json.dumps(dataclasses.asdict(summary), indent=2))


def _config(config_file: str | None, options: dict[str, Any]) -> RunConfig:
    """The run config of a command: ``--config`` file, overridden by the options given on the command line."""
    ctx = click.get_current_context()
    given = {name for name in options if ctx.get_parameter_source(name) != click.core.ParameterSource.DEFAULT}
    return RunConfig.from_dict(_merge(dict(load_toml(config_file)) if config_file else {}, options, given))


@cli.command("audit")
@click.option("--threat", type=click.Choice(["white-box", "black-box"]), default="white-box", show_default=True,
              help="white-box: Dirac gradient canaries (needs --model mlp or logreg); black-box: mislabelled records "
                   "scored by the final model's loss")
@click.option("--canaries", type=int, default=1000, show_default=True,
              help="m: canaries, each included in the training set with probability 1/2")
@click.option("--guesses", type=int, default=None, show_default="canaries/2",
              help="r: guesses, half 'in' on the highest scores, half 'out' on the lowest")
@click.option("--confidence", type=float, default=0.95, show_default=True, help="confidence of epsilon_lower")
@click.option("--audit-delta", type=float, default=None, show_default="the ledger's",
              help="delta of the bound for --dp none (a --dp sample run is audited at its ledger's delta)")
@click.option("--config", "config_file", type=click.Path(dir_okay=False), default=None, show_default="none",
              help="TOML file whose keys are the run's options (command-line options win)")
@_with_config_options
def audit_command(threat: str, canaries: int, guesses: int | None, confidence: float, audit_delta: float | None,
                  config_file: str | None, **options: Any) -> None:
    """Audit one run (Steinke, Nasr, Jagielski 2023): plant canaries, train once, and bound epsilon from below.
    Writes audit.json (public) and audit/canaries.json (the auditor's) beside the run's files in --out."""
    from .audit import run_audit  # torch is imported only when a run starts

    result = run_audit(_config(config_file, options), threat=threat, canaries=canaries, guesses=guesses,
                       confidence=confidence, delta=audit_delta, progress=_RoundBar())
    click.echo(result.line())


cli.add_command(flower_command)  # fltrain on Flower (extra 'flower'); the command itself imports neither flwr nor torch


def _one_line_warning(message: Warning | str, category: type[Warning], *_: Any, **__: Any) -> None:
    """Warnings (e.g. a client-level δ ≥ 1/clients) as one line on stderr, without the source line."""
    click.echo(f"fltrain: warning: {message}", err=True)


def _fail(message: str, status: int = 2) -> int:
    click.echo("fltrain: error: " + " ".join(str(message).split()), err=True)  # always one line
    return status


def main(argv: list[str] | None = None) -> int:
    """Entry point: runs the CLI; bad input → one line on stderr and exit status 2; an exception fltrain did not
    raise on purpose (a bug) → one line and exit status 1; never a traceback."""
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _one_line_warning
            result = cli.main(args=argv, prog_name="fltrain", standalone_mode=False)
    except click.exceptions.ClickException as error:
        return _fail(error.format_message())
    except (DpcalibError, ConfigError, DataUnavailableError) as error:
        return _fail(str(error))
    except OSError as error:  # the disk: a full file system, a directory made read-only under the run
        where = f" ({error.filename})" if error.filename else ""
        return _fail(f"{error.strerror or error}{where}")
    except click.exceptions.Abort as error:
        if isinstance(error.__context__, EOFError):  # click turns an EOFError into Abort: not the user's Ctrl-C
            return _fail(f"internal error (EOFError: {error.__context__}); please report this command line", status=1)
        click.echo("fltrain: interrupted; continue with --resume", err=True)
        return 130
    except KeyboardInterrupt:
        click.echo("fltrain: interrupted; continue with --resume", err=True)
        return 130
    except Exception as error:  # noqa: BLE001 -- the last resort: one line, not a traceback
        return _fail(f"internal error ({type(error).__name__}: {error}); please report this command line", status=1)
    return int(result) if isinstance(result, int) else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
