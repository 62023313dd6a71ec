"""One training run: set-up, rounds, evaluation, metrics (JSONL), checkpoints, resume, progress.

Files in the output directory:

- ``metrics.jsonl``: one JSON object per round: ``round``, ``train_loss``, ``test_accuracy`` (a fraction),
  ``epsilon`` (spent so far; ``null`` without DP), ``delta``, ``sigma``, ``seconds`` (this round, wall clock),
  ``cpu_seconds`` (this round, CPU time of the process: comparable on a loaded machine), ``elapsed``,
  ``clients`` (how many trained); with ``dp="client"`` also ``clip`` (the clip norm of the round), ``noise_std``
  and, with adaptive clipping, ``noisy_fraction_unclipped`` (all DP releases; ``clients`` and ``train_loss`` are
  server-side diagnostics, not differentially private);
- ``checkpoint.pt``: written atomically (temporary file + ``os.replace``) after every round: the config, the
  global parameters and server optimiser, the RNG state, the privacy ledger, the clipping state of client-level DP;
- ``summary.json``: written at the end.

Everything that can be refused (config, data, partition, calibration, an existing or mismatched run) is checked
before the first byte is written.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from dpcalib.errors import InvalidArgumentError
from torch.func import functional_call

from .client import LocalTrainer, LocalTraining, sampling_rates
from .clientdp import ClientDPAggregator, PoissonClientSampler, plan_client_dp
from .config import ConfigError, RunConfig
from .data import load_dataset, partition
from .dpsgd import make_engine
from .fedavg import Aggregator, ClientSampler, FedAvgServer, FractionSampler, WeightedMean
from .models import ParamLayout, build_model
from .privacy import PrivacyLedger, make_plan
from .secagg.aggregate import SecureClientDPAggregator, SecureWeightedMean
from .serveropt import make_server_optimizer

__all__ = ["Progress", "RunSummary", "run", "evaluate", "CHECKPOINT", "METRICS", "SUMMARY"]

CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.jsonl"
SUMMARY = "summary.json"


class Progress:
    """Receives progress events; the default ignores them (the CLI draws a bar per round)."""

    def round_started(self, round_index: int, rounds: int, local_steps: int) -> None:
        """Round ``round_index`` (1-based) of ``rounds`` begins; its clients take ``local_steps`` steps."""

    def step(self, step: int) -> None:
        """Local step ``step`` of the round's first group of clients is done."""

    def round_finished(self, metrics: dict[str, Any]) -> None:
        """The round's metrics line was written."""


@dataclass
class RunSummary:
    """The outcome of a run."""

    rounds_completed: int
    rounds_planned: int
    test_accuracy: float
    epsilon: float | None
    delta: float | None
    sigma: float
    seconds: float
    cpu_seconds: float
    stopped_by_budget: bool
    out: str


def evaluate(model: torch.nn.Module, layout: ParamLayout, params: torch.Tensor, x: torch.Tensor, y: torch.Tensor,
             batch: int = 2000) -> float:
    """Accuracy (fraction of correct predictions) of ``model`` with flat ``params`` on ``(x, y)``."""
    named = layout.unflatten(params)
    correct = 0
    with torch.no_grad():
        for start in range(0, len(y), batch):
            logits = functional_call(model, named, (x[start : start + batch],))
            correct += int((logits.argmax(1) == y[start : start + batch]).sum())
    return correct / max(1, len(y))


def _load_checkpoint(path: Path) -> dict[str, Any]:
    return torch.load(path, map_location="cpu", weights_only=True)


def _save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    with open(tmp, "rb") as handle:
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def _check_out_dir(cfg: RunConfig, out: Path, resume: bool) -> dict[str, Any] | None:
    checkpoint = out / CHECKPOINT
    if resume:
        if not checkpoint.exists():
            raise ConfigError(f"--resume: no checkpoint {CHECKPOINT!r} in {str(out)!r} to resume from")
        state = _load_checkpoint(checkpoint)
        saved = RunConfig.from_dict(state["config"])
        changed = saved.differences(cfg)
        if changed:
            raise ConfigError(
                f"--resume: the checkpoint in {str(out)!r} was written by a different config "
                f"(differs in: {', '.join(changed)}); nothing was changed"
            )
        return state
    if checkpoint.exists() or (out / METRICS).exists():
        raise ConfigError(f"{str(out)!r} already holds a run; pass --resume to continue it or choose another --out")
    return None


def _rewrite_metrics(path: Path, upto_round: int) -> None:
    """Keep the metrics lines of rounds ≤ ``upto_round`` (a crash may have left a line past the checkpoint)."""
    if not path.exists():
        return
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    kept = [line for line in lines if json.loads(line)["round"] <= upto_round]
    if len(kept) != len(lines):
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text("".join(line + "\n" for line in kept))
        os.replace(tmp, path)


def _aggregator(cfg: RunConfig, clients_per_round: int) -> Aggregator:
    """Plain weighted mean, or the same under secure aggregation (the server then sees only the sum)."""
    if not cfg.secure_agg:
        return WeightedMean()
    if clients_per_round < 2:
        raise ConfigError(f"secure_agg needs at least 2 clients per round (the sum of one client is its update); "
                          f"clients={cfg.clients} with client_fraction={cfg.client_fraction} gives {clients_per_round}")
    return SecureWeightedMean()


def run(cfg: RunConfig, *, resume: bool = False, progress: Progress | None = None) -> RunSummary:
    """Carry out (or, with ``resume``, continue) the run described by ``cfg``; see the module docstring."""
    progress = progress or Progress()
    out = Path(cfg.out)
    state = _check_out_dir(cfg, out, resume)
    sampler: ClientSampler = FractionSampler(cfg.client_fraction)
    aggregator: Aggregator | None = None if cfg.dp == "client" else _aggregator(cfg, sampler.count(cfg.clients))
    optimizer = make_server_optimizer(cfg.server_opt, lr=cfg.server_lr, momentum=cfg.server_momentum)
    client_plan = None if cfg.dp != "client" else plan_client_dp(
        num_clients=cfg.clients, expected_clients=cfg.clients_per_round, rounds=cfg.rounds, eps=cfg.eps,
        delta=cfg.resolved_delta, sigma=cfg.sigma, adaptive=cfg.adaptive_clip, count_noise_std=cfg.count_noise_std,
        accountant=cfg.accountant,
    )
    torch.set_num_threads(cfg.threads)

    data = load_dataset(cfg.dataset, cfg.data_dir, train_samples=cfg.train_samples, test_samples=cfg.test_samples)
    members = partition(data.y_train, scheme=cfg.partition, clients=cfg.clients, seed=cfg.seed,
                        shards_per_client=cfg.shards_per_client, alpha=cfg.alpha)
    with torch.random.fork_rng():
        torch.manual_seed(cfg.seed)
        model = build_model(cfg.resolved_model, data.input_shape, data.num_classes)
    layout = ParamLayout.of(model)
    sizes = torch.tensor([len(m) for m in members])

    ledger = None
    sigma = 0.0
    if cfg.dp == "sample":
        smallest = int(sizes.min())
        if cfg.batch_size > smallest:
            raise InvalidArgumentError("batch_size", cfg.batch_size, f"at most {smallest} (the smallest client's "
                                       "record count), so that every Poisson rate q = batch_size/n_k is <= 1")
        q = float(sampling_rates(sizes, cfg.batch_size).max())
        plan = make_plan(eps=cfg.eps, delta=cfg.resolved_delta, q=q, steps_per_round=cfg.local_steps, rounds=cfg.rounds,
                         accountant=cfg.accountant, sigma=cfg.sigma)
        sigma = plan.sigma
        ledger = PrivacyLedger(plan)
    elif client_plan is not None:  # clients train without noise; the server clips, noises and accounts per round
        sigma = client_plan.privacy.sigma
        ledger = PrivacyLedger(client_plan.privacy)
        sampler = PoissonClientSampler(client_plan.privacy.q)
        dp_aggregator = SecureClientDPAggregator if cfg.secure_agg else ClientDPAggregator
        aggregator = dp_aggregator.from_plan(client_plan, dim=layout.size, clip=cfg.clip,
                                             target_quantile=cfg.target_quantile, clip_lr=cfg.clip_lr)
    sample_dp = cfg.dp == "sample"
    local = LocalTraining(
        local_steps=cfg.local_steps, batch_size=cfg.batch_size, lr=cfg.lr, momentum=cfg.momentum,
        clip=cfg.clip if sample_dp else None, noise_multiplier=sigma if sample_dp else 0.0,
        parallel_clients=cfg.parallel_clients, max_physical_batch=cfg.max_physical_batch,
    )
    trainer = LocalTrainer(layout, make_engine(model, cfg.engine), data.x_train, data.y_train, members, local)
    initial = layout.flatten(dict(model.named_parameters())).detach()
    server = FedAvgServer(initial, trainer, sampler=sampler, aggregator=aggregator, optimizer=optimizer)
    generator = torch.Generator().manual_seed(cfg.seed)

    start_round, elapsed, cpu_elapsed = 0, 0.0, 0.0
    if state is not None:
        start_round, elapsed, cpu_elapsed = int(state["round"]), float(state["elapsed"]), float(state["cpu_elapsed"])
        server.load_state_dict(state["server"])
        generator.set_state(state["generator"])
        if ledger is not None:
            ledger = PrivacyLedger.from_state_dict(ledger.plan, state["ledger"])
        if isinstance(aggregator, ClientDPAggregator):
            aggregator.load_state_dict(state["aggregator"])
        _rewrite_metrics(out / METRICS, start_round)
    out.mkdir(parents=True, exist_ok=True)

    accuracy = None
    stopped = False
    completed = start_round
    for round_index in range(start_round + 1, cfg.rounds + 1):
        if ledger is not None and not ledger.can_afford_next_round():
            stopped = True
            break
        began, began_cpu = time.perf_counter(), time.process_time()
        progress.round_started(round_index, cfg.rounds, cfg.local_steps)
        result = server.run_round(generator, progress.step, local_lr=cfg.lr * cfg.lr_decay ** (round_index - 1))
        epsilon = ledger.charge_round() if ledger is not None else None
        accuracy = evaluate(model, layout, server.params, data.x_test, data.y_test)
        seconds = time.perf_counter() - began
        cpu_seconds = time.process_time() - began_cpu
        cpu_elapsed += cpu_seconds
        elapsed += seconds
        metrics = {
            "round": round_index, "train_loss": result.train_loss, "test_accuracy": accuracy,
            "epsilon": epsilon, "delta": ledger.plan.delta if ledger is not None else None, "sigma": sigma,
            "seconds": round(seconds, 3), "cpu_seconds": round(cpu_seconds, 3), "elapsed": round(elapsed, 3),
            "clients": len(result.client_ids),
        }
        if isinstance(aggregator, ClientDPAggregator):
            metrics.update(aggregator.last_release)
        with open(out / METRICS, "a") as handle:
            handle.write(json.dumps(metrics) + "\n")
        _save_checkpoint(out / CHECKPOINT, {
            "config": cfg.to_dict(), "round": round_index, "elapsed": elapsed, "cpu_elapsed": cpu_elapsed,
            "server": server.state_dict(),
            "generator": generator.get_state(), "ledger": ledger.state_dict() if ledger is not None else None,
            "aggregator": aggregator.state_dict() if isinstance(aggregator, ClientDPAggregator) else None,
        })
        completed = round_index
        progress.round_finished(metrics)

    if accuracy is None:  # no round ran in this call (finished or budget-stopped run resumed)
        accuracy = evaluate(model, layout, server.params, data.x_test, data.y_test)
    summary = RunSummary(
        rounds_completed=completed, rounds_planned=cfg.rounds, test_accuracy=accuracy,
        epsilon=ledger.epsilon() if ledger is not None else None,
        delta=ledger.plan.delta if ledger is not None else None,
        sigma=sigma, seconds=round(elapsed, 3), cpu_seconds=round(cpu_elapsed, 3), stopped_by_budget=stopped,
        out=str(out),
    )
    (out / SUMMARY).write_text(json.dumps(asdict(summary), indent=2) + "\n")
    return summary
