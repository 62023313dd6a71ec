"""One training run: set-up, rounds, evaluation, metrics (JSONL), checkpoints, resume, progress.

The run knows no privacy mode: :func:`fltrain.privacy.build_mode` makes the mode object that owns the plan, the
randomness, the cohort, the clients' and the server's steps and the ledger; :class:`fltrain.fedavg.FedAvgServer`
runs its rounds. Files in the output directory:

- ``metrics.jsonl`` (public): one JSON object per round holding only settings, DP releases and public-data
  figures: ``round``, ``test_accuracy`` (a fraction, on the public test set; absent with ``val_fraction`` > 0, when
  the test set is used once, at the end), ``epsilon`` (spent so far; ``null`` without DP), ``delta``, ``sigma``,
  ``noise`` (``"secure"``, ``"insecure-reproducible"``: a simulation without the guarantee, or ``"none"``),
  ``seconds`` (this round, wall clock), ``cpu_seconds`` (CPU time of the process), ``elapsed``, and the mode's
  releases (client level: ``clip``, ``noise_std`` and, with adaptive clipping, ``noisy_fraction_unclipped``);
- ``private-diagnostics.jsonl`` (PRIVATE, never to be published): per round the number of clients that trained
  (``clients``: private with a Poisson cohort), the record-weighted training loss (``train_loss``, un-noised) and,
  with a validation split, ``val_accuracy`` (measured on training records). In a deployment these figures would
  stay on the clients; the in-process simulation writes them for its operator;
- ``ledger.json`` (public): the privacy ledger, written *before* each round's noise is drawn (see below);
- ``checkpoint.pt``: written atomically (temporary file + ``os.replace``) after every round: the config, the
  global parameters and server optimiser, the mode's state (ledger, clip norm) and, only with
  ``insecure_reproducible_noise``, the generator state. It holds nothing from which the DP noise could be
  regenerated: the secret source's key never leaves memory;
- ``summary.json`` (public): written at the end: accuracy, ε, δ, σ, the mode's description (guarantee and
  neighbouring relation, plan, noise source), timings;
- ``.fltrain.lock``: held (``flock``, exclusive) while a run writes the directory, so that two runs started on one
  ``--out`` cannot both write it: the second is refused.

**The output directory.** ``--out`` must name a new directory, an empty one, or (with ``--resume``) one holding a
run; a file, an empty name or a directory holding other files is refused. The directory is created only once
everything else has been checked, and a checkpoint of round 0 is written before round 1 begins, so a run stopped
at any point (even in round 1, after its metrics line) can be continued with ``--resume``. A damaged checkpoint
(truncated, empty, not a checkpoint, a key missing), ledger or metrics file is reported in one line naming the file;
a metrics line cut short by a crash is dropped on resume.

**The ledger is never under-counted.** With secret noise, a round interrupted after its noise was drawn may
already have released something (its metrics line); resuming from the previous checkpoint re-runs that round with
fresh noise, a second, independent release. So every round is charged and ``ledger.json`` written (and synced)
before its noise is drawn, and a resumed run continues from ``ledger.json``: the interrupted round stays charged
and its re-run is charged again. With ``insecure_reproducible_noise`` a re-run round draws exactly the noise of the
interrupted one (the generator state is checkpointed), the same release, so the ledger of the checkpoint is used
and a resumed run equals the uninterrupted one bit for bit. Everything the seed controls (partition, validation
split, initialisation) is recomputed from the config on resume.

Everything that can be refused (config, data, partition, calibration, an existing or mismatched run) is checked
before the first byte is written.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch.func import functional_call

from .client import ClientUpdates, LocalTrainer, LocalTraining
from dpcalib.errors import DpcalibError

from .config import ConfigError, RunConfig
from .data import Dataset, load_inputs, partition, split_validation
from .device import resolve_device
from .dpsgd import Engine, make_engine
from .fedavg import FedAvgServer, Summer, plain_sum
from .models import SCATTERING_MODELS, ParamLayout, build_model
from .privacy import PrivacyLedger, PrivacyMode, build_mode
from .serveropt import make_server_optimizer

__all__ = [
    "Progress", "RunHooks", "RunSummary", "run", "evaluate", "CHECKPOINT", "METRICS", "PRIVATE", "LEDGER", "SUMMARY",
    "LOCK",
]

CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.jsonl"
PRIVATE = "private-diagnostics.jsonl"
LEDGER = "ledger.json"
SUMMARY = "summary.json"
LOCK = ".fltrain.lock"
_RUN_FILES = (CHECKPOINT, METRICS, PRIVATE, LEDGER, SUMMARY)
_CHECKPOINT_KEYS = ("config", "round", "elapsed", "cpu_elapsed", "server", "mode")


class Progress:
    """Receives progress events; the default ignores them (the CLI draws a bar per round)."""

    def round_started(self, round_index: int, rounds: int, local_steps: int) -> None:
        """Round ``round_index`` (1-based) of ``rounds`` begins; its clients take ``local_steps`` steps."""

    def step(self, step: int) -> None:
        """Local step ``step`` of the round's first group of clients is done."""

    def round_finished(self, metrics: dict[str, Any]) -> None:
        """The round's metrics line was written."""


class RunHooks:
    """Instruments an ordinary run without changing its code path (the auditor's canaries, :mod:`fltrain.audit`);
    the default changes nothing. A run with hooks cannot be resumed (``--resume`` would re-plant them)."""

    def data(self, data: Dataset) -> Dataset:
        """The dataset the run trains on, given the loaded one (after the validation split, before partitioning;
        the default record-level rate q is set by the loaded training set, whatever records this adds)."""
        return data

    def clients(self, members: list[torch.Tensor]) -> list[torch.Tensor]:
        """The federation's clients (their record indices), given the partition; clients added here join a
        client-level run with a Poisson cohort after its rate ``q`` and denominator were fixed by ``clients``."""
        return members

    def updates(self, updates: ClientUpdates) -> ClientUpdates:
        """What the round's cohort sends, given what it trained (before the privacy mode clips, sums, noises)."""
        return updates

    def engine(self, engine: Engine, layout: ParamLayout) -> Engine:
        """The per-sample gradient engine the clients use, given the run's."""
        return engine

    def started(self, model: torch.nn.Module, layout: ParamLayout, params: torch.Tensor) -> None:
        """The model, its layout and the initial global parameters (flat), before round 1."""

    def finished(self, params: torch.Tensor) -> None:
        """The final global parameters (flat), after the last round."""


@dataclass
class RunSummary:
    """The outcome of a run (all public: see the module docstring)."""

    rounds_completed: int
    rounds_planned: int
    test_accuracy: float
    epsilon: float | None
    delta: float | None
    sigma: float | None
    noise: str
    privacy: dict[str, Any]
    seconds: float
    cpu_seconds: float
    stopped_by_budget: bool
    out: str


def evaluate(model: torch.nn.Module, layout: ParamLayout, params: torch.Tensor, x: torch.Tensor, y: torch.Tensor,
             batch: int = 2000) -> float:
    """Accuracy (fraction of correct predictions) of ``model`` with flat ``params`` on ``(x, y)``, computed on the
    device of ``x``."""
    named = layout.unflatten(params.to(x.device))
    correct = 0
    with torch.no_grad():
        for start in range(0, len(y), batch):
            logits = functional_call(model, named, (x[start : start + batch],))
            correct += int((logits.argmax(1) == y[start : start + batch]).sum())
    return correct / max(1, len(y))


def _damaged(path: Path, problem: str) -> ConfigError:
    return ConfigError(
        f"{str(path)!r} is damaged ({problem}); the run in {str(path.parent)!r} cannot be resumed from it: "
        "restore the file from a backup, or start a new run with another --out"
    )


def _load_checkpoint(path: Path) -> dict[str, Any]:
    """The checkpoint at ``path``, or a one-line :class:`ConfigError` naming it if it is not a whole checkpoint."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except EOFError:
        raise _damaged(path, "it is empty or cut short") from None
    except Exception as error:  # truncated or foreign files fail in many ways (RuntimeError, UnpicklingError, ...)
        raise _damaged(path, f"{type(error).__name__}: {error}") from None
    if not isinstance(state, dict):
        raise _damaged(path, f"it holds a {type(state).__name__}, not a checkpoint")
    missing = [key for key in _CHECKPOINT_KEYS if key not in state]
    if missing:
        raise _damaged(path, "missing " + ", ".join(repr(key) for key in missing))
    return state


def _replace_synced(path: Path, write: Any) -> None:
    """Write ``path`` through a temporary file, synced to disk, then ``os.replace`` (atomic)."""
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    with open(tmp, "rb") as handle:
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def _save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    _replace_synced(path, lambda tmp: torch.save(state, tmp))


def _save_ledger(path: Path, ledger: PrivacyLedger) -> None:
    _replace_synced(path, lambda tmp: tmp.write_text(json.dumps(ledger.state_dict()) + "\n"))


def _check_out_dir(cfg: RunConfig, out: Path, resume: bool) -> dict[str, Any] | None:
    """Refuse an output directory the run may not write (see the module docstring); with ``resume``, the
    checkpoint to continue from (its config checked against ``cfg``). Reads only."""
    if not cfg.out.strip():
        raise ConfigError("--out is empty; name the run's output directory")
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {str(out)!r} exists and is not a directory")
    checkpoint = out / CHECKPOINT
    if resume:
        if not checkpoint.exists():
            raise ConfigError(f"--resume: no checkpoint {CHECKPOINT!r} in {str(out)!r} to resume from")
        state = _load_checkpoint(checkpoint)
        try:
            saved = RunConfig.from_dict(state["config"])
        except (ConfigError, DpcalibError, TypeError) as error:
            raise _damaged(checkpoint, f"its config: {error}") from None
        changed = saved.differences(cfg)
        if "sample.sampler" in changed:
            raise ConfigError(
                f"--resume: the run in {str(out)!r} was trained with --sampler {saved.sample.sampler} and its ledger "
                f"accounts that sampler; it cannot continue with --sampler {cfg.sample.sampler}"
            )
        if changed:
            raise ConfigError(
                f"--resume: the checkpoint in {str(out)!r} was written by a different config "
                f"(differs in: {', '.join(changed)}); nothing was changed"
            )
        return state
    if any((out / name).exists() for name in _RUN_FILES):
        raise ConfigError(f"{str(out)!r} already holds a run; pass --resume to continue it or choose another --out")
    if out.is_dir() and any(entry.name != LOCK for entry in out.iterdir()):
        raise ConfigError(f"--out {str(out)!r} is a non-empty directory holding no fltrain run; choose a new or "
                          "empty directory")
    return None


def _lock(out: Path) -> int:
    """Hold ``out/.fltrain.lock`` exclusively (released when the descriptor is closed, or the process ends)."""
    fd = os.open(out / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise ConfigError(f"another fltrain run is writing {str(out)!r}; wait for it to end or choose another --out")
    return fd


def _open_out_dir(cfg: RunConfig, out: Path, resume: bool) -> tuple[int, dict[str, Any] | None]:
    """Create ``out`` if needed, lock it and check it again under the lock (another run may have started since
    the first check); a directory created here is removed again if the check fails."""
    created = not out.exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd = _lock(out)
    except OSError as error:
        raise ConfigError(f"--out {str(out)!r} cannot be created or locked: {error.strerror or error}") from None
    try:
        return fd, _check_out_dir(cfg, out, resume)
    except BaseException:
        if created and [entry.name for entry in out.iterdir()] == [LOCK]:  # still ours alone: leave no trace
            (out / LOCK).unlink()
            out.rmdir()
        os.close(fd)
        raise


def _round_of(line: str) -> int | None:
    """The round of a JSONL line, or None if it is not a whole record."""
    try:
        row = json.loads(line)
    except json.JSONDecodeError:
        return None
    round_index = row.get("round") if isinstance(row, dict) else None
    return round_index if isinstance(round_index, int) and not isinstance(round_index, bool) else None


def _rewrite_lines(path: Path, upto_round: int) -> None:
    """Keep the JSONL lines of rounds ≤ ``upto_round`` (a crash may have left a line past the checkpoint, or the
    start of one: a last line that is not a whole record is dropped; a damaged line before it is refused)."""
    if not path.exists():
        return
    try:
        lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as error:
        raise _damaged(path, str(error)) from None
    rounds = [_round_of(line) for line in lines]
    if rounds and rounds[-1] is None:  # the start of a line that a crash cut short
        lines, rounds = lines[:-1], rounds[:-1]
        changed = True
    else:
        changed = False
    for number, round_index in enumerate(rounds, 1):
        if round_index is None:
            raise _damaged(path, f"line {number} is not a JSON record with a 'round'")
    kept = [line for line, round_index in zip(lines, rounds) if round_index <= upto_round]
    if changed or len(kept) != len(lines):
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text("".join(line + "\n" for line in kept))
        os.replace(tmp, path)


def _restore(mode: PrivacyMode, state: dict[str, Any], out: Path) -> None:
    """The mode's checkpointed state; with secret noise the ledger continues from ``ledger.json`` when that has
    charged more rounds (an interrupted round whose noise may have been drawn stays charged)."""
    mode.load_state_dict(state["mode"])
    journal = out / LEDGER
    if mode.ledger is not None and mode.rng.secure and journal.exists():
        try:
            charged = PrivacyLedger.from_state_dict(mode.ledger.plan, json.loads(journal.read_text(encoding="utf-8")))
        except (ValueError, TypeError, KeyError, DpcalibError) as error:  # JSONDecodeError is a ValueError
            raise _damaged(journal, f"{type(error).__name__}: {error}") from None
        if charged.rounds > mode.ledger.rounds:
            mode.ledger = charged


def _checkpoint(cfg: RunConfig, round_index: int, elapsed: float, cpu_elapsed: float, server: FedAvgServer,
                mode: PrivacyMode) -> dict[str, Any]:
    return {"config": cfg.to_dict(), "round": round_index, "elapsed": elapsed, "cpu_elapsed": cpu_elapsed,
            "server": server.state_dict(), "mode": mode.state_dict()}


def _check_secure_range(summer: Any, mode: PrivacyMode, cfg: RunConfig) -> None:
    """Refuse, before anything is written, a client-level clip whose noisy messages the fixed-point encoding of
    secure aggregation cannot hold (it failed in round 1 naming ``frac_bits``, a setting the user never set)."""
    from .secagg.encoding import FixedPoint

    bound = mode.secure_sum_range()
    if bound is None:
        return
    try:
        FixedPoint(bound, summer.frac_bits, max(2, round(cfg.clients_per_round)))
    except DpcalibError:
        raise ConfigError(
            f"client.clip={cfg.client.clip:g} is too large for secure aggregation: a message coordinate (clip plus "
            f"noise share, up to {bound:.3g}) summed over {round(cfg.clients_per_round)} clients at resolution "
            f"2^-{summer.frac_bits} does not fit in 64 bits; use a smaller --clip"
        ) from None


def _append(path: Path, row: dict[str, Any]) -> None:
    with open(path, "a") as handle:
        handle.write(json.dumps(row) + "\n")


def write_round(
    out: Path,
    mode: PrivacyMode,
    private: dict[str, Any],
    accuracy_on: Callable[[torch.Tensor, torch.Tensor], float],
    *,
    test: tuple[torch.Tensor, torch.Tensor],
    validation: tuple[torch.Tensor, torch.Tensor] | None,
    epsilon: float | None,
    began: tuple[float, float],
    elapsed: tuple[float, float],
) -> tuple[dict[str, Any], float, float]:
    """The end of a round, shared by :func:`run` and the Flower ServerApp: the model's accuracy (on the public
    test set; with a validation split, on it instead, privately), the round's wall and CPU time since ``began``,
    and its two lines: ``private`` (which holds ``round``) plus the validation accuracy to the private diagnostics,
    the public metrics (ε, δ, σ, times and what the mode releases) to metrics.jsonl. Returns the public metrics
    and the run's wall and CPU seconds with this round's added to ``elapsed``."""
    metrics: dict[str, Any] = {"round": private["round"]}
    if validation is None:
        metrics["test_accuracy"] = accuracy_on(*test)
    else:
        private["val_accuracy"] = accuracy_on(*validation)
    seconds, cpu_seconds = time.perf_counter() - began[0], time.process_time() - began[1]
    wall, cpu = elapsed[0] + seconds, elapsed[1] + cpu_seconds
    plan = mode.plan
    metrics.update({
        "epsilon": epsilon, "delta": None if plan is None else plan.delta, "sigma": None if plan is None else plan.sigma,
        "noise": mode.noise_label, "seconds": round(seconds, 3), "cpu_seconds": round(cpu_seconds, 3),
        "elapsed": round(wall, 3), **mode.release(),
    })
    _append(out / PRIVATE, private)
    _append(out / METRICS, metrics)
    return metrics, wall, cpu


def run(cfg: RunConfig, *, resume: bool = False, progress: Progress | None = None,
        hooks: RunHooks | None = None) -> RunSummary:
    """Carry out (or, with ``resume``, continue) the run described by ``cfg``, instrumented by ``hooks`` if given;
    see the module docstring."""
    progress = progress or Progress()
    if hooks is not None and resume:
        raise ConfigError("an instrumented run (an audit) cannot be resumed; start it again with a new --out")
    hooks = hooks or RunHooks()
    out = Path(cfg.out)
    device = resolve_device(cfg.device)
    _check_out_dir(cfg, out, resume)  # refused before the data is loaded (reads only; checked again when locked)
    optimizer = make_server_optimizer(cfg.server_opt, lr=cfg.server_lr, momentum=cfg.server_momentum)
    torch.set_num_threads(cfg.threads)

    data = load_inputs(cfg.dataset, cfg.data_dir, train_samples=cfg.train_samples, test_samples=cfg.test_samples,
                       scattering=cfg.resolved_model in SCATTERING_MODELS, device=device)
    validation = None
    if cfg.val_fraction:
        data, validation = split_validation(data, cfg.val_fraction, cfg.seed)
        validation = (validation[0].to(device), validation[1].to(device))
    records = len(data.y_train)  # the public training-set size sets the default rate, before any canary is planted
    data = hooks.data(data)
    test = (data.x_test.to(device), data.y_test.to(device))
    members = hooks.clients(partition(data.y_train, scheme=cfg.partition, clients=cfg.clients, seed=cfg.seed,
                                      shards_per_client=cfg.shards_per_client, alpha=cfg.alpha))
    with torch.random.fork_rng():
        torch.manual_seed(cfg.seed)
        model = build_model(cfg.resolved_model, data.input_shape, data.num_classes)
    layout = ParamLayout.of(model)
    mode = build_mode(cfg, dim=layout.size, train_records=records, client_sizes=[len(m) for m in members],
                      population=len(members))
    summer: Summer = plain_sum
    if cfg.secure_agg:
        from .secagg.aggregate import SecureSum  # needs the cryptography package

        summer = SecureSum()
        _check_secure_range(summer, mode, cfg)
    local = LocalTraining(local_steps=cfg.local_steps, batch_size=cfg.batch_size, lr=cfg.lr, momentum=cfg.momentum,
                          parallel_clients=cfg.parallel_clients, max_physical_batch=cfg.max_physical_batch)
    initial = layout.flatten(dict(model.named_parameters())).detach()  # the server's parameters stay on the CPU
    model.to(device)
    engine = hooks.engine(make_engine(model, cfg.engine), layout)
    trainer = LocalTrainer(layout, engine, data.x_train.to(device), data.y_train.to(device), members, local)
    server = FedAvgServer(initial, trainer, mode, summer=summer, optimizer=optimizer, updates=hooks.updates)
    hooks.started(model, layout, initial.clone())
    plan = mode.plan
    delta = plan.delta if plan is not None else None
    sigma = plan.sigma if plan is not None else None

    fd, state = _open_out_dir(cfg, out, resume)  # created and locked only now, and checked again under the lock
    try:
        start_round, elapsed, cpu_elapsed = 0, 0.0, 0.0
        if state is not None:
            try:
                start_round, elapsed = int(state["round"]), float(state["elapsed"])
                cpu_elapsed = float(state["cpu_elapsed"])
                server.load_state_dict(state["server"])
                _restore(mode, state, out)
            except (KeyError, TypeError, ValueError, RuntimeError, DpcalibError) as error:
                raise _damaged(out / CHECKPOINT, f"{type(error).__name__}: {error}") from None
            _rewrite_lines(out / METRICS, start_round)
            _rewrite_lines(out / PRIVATE, start_round)
        else:  # round 0: a run stopped anywhere in round 1 can be resumed (its ledger.json then charges round 1)
            _save_checkpoint(out / CHECKPOINT, _checkpoint(cfg, 0, 0.0, 0.0, server, mode))

        accuracy = None
        stopped = False
        completed = start_round
        for round_index in range(start_round + 1, cfg.rounds + 1):
            if not mode.can_afford_next_round():
                stopped = True
                break
            began, began_cpu = time.perf_counter(), time.process_time()
            progress.round_started(round_index, cfg.rounds, cfg.local_steps)
            epsilon = mode.charge_round()  # before any noise of the round is drawn
            if mode.ledger is not None:
                _save_ledger(out / LEDGER, mode.ledger)
            result = server.run_round(progress.step, local_lr=cfg.lr * cfg.lr_decay ** (round_index - 1))
            private: dict[str, Any] = {"round": round_index, "clients": len(result.client_ids),
                                       "train_loss": result.train_loss}
            metrics, elapsed, cpu_elapsed = write_round(
                out, mode, private, lambda x, y: evaluate(model, layout, server.params, x, y), test=test,
                validation=validation, epsilon=epsilon, began=(began, began_cpu), elapsed=(elapsed, cpu_elapsed),
            )
            accuracy = metrics.get("test_accuracy")
            _save_checkpoint(out / CHECKPOINT, _checkpoint(cfg, round_index, elapsed, cpu_elapsed, server, mode))
            completed = round_index
            progress.round_finished(metrics)

        if accuracy is None:  # the test set once (validation split), or no round ran in this call
            accuracy = evaluate(model, layout, server.params, *test)
        summary = RunSummary(
            rounds_completed=completed, rounds_planned=cfg.rounds, test_accuracy=accuracy, epsilon=mode.epsilon(),
            delta=delta, sigma=sigma, noise=mode.noise_label, privacy=mode.describe(), seconds=round(elapsed, 3),
            cpu_seconds=round(cpu_elapsed, 3), stopped_by_budget=stopped, out=str(out),
        )
        (out / SUMMARY).write_text(json.dumps(asdict(summary), indent=2) + "\n")
        hooks.finished(server.params.clone())
        return summary
    finally:
        os.close(fd)  # releases the lock

