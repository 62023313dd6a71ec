"""fltrain's Flower ServerApp: FedAvg rounds over real SuperNodes, with the metrics, checkpoints and resume of
``fltrain run``.

A run (:func:`serve`):

1. **Before any training** everything that can be refused is checked: the config (:mod:`.appdir`), the output
   directory (an existing run needs ``resume``), the server's test data; then the server waits up to
   ``node-wait`` seconds for ``clients`` SuperNodes, sends each a *query* and maps partition ids to nodes.  A node
   without its data, a node count below the plan's, a partition held twice or by nobody: one line
   ``fltrain: error: ...`` on the run's log, and no round runs.
2. **Rounds**: the server picks the round's clients among the partitions (the sampler of the mode), sends each a
   *train* message (:mod:`.records`), waits up to ``round-timeout`` seconds, and aggregates the valid replies with
   the mode's aggregator and server optimiser (:mod:`fltrain.fedavg`, :mod:`fltrain.serveropt`).  A reply that is
   an error, lacks a record, has the wrong shape or non-finite values, or does not come in time is dropped with a
   log line; the round goes on with the others (and, with none left, leaves the model unchanged).
3. After every round: test accuracy on the server's test set, one line of ``metrics.jsonl``, an atomic
   ``checkpoint.pt`` (config, round, parameters, server optimiser, ledger), and a progress line on the log; at the
   end ``summary.json``.  The files and their keys are ``fltrain run``'s (:mod:`fltrain.run`); ``cpu_seconds`` is
   the server process's CPU time only.

The partition ids are the clients of ``fltrain run``: partition ``k`` holds the records that in-process client
``k`` holds (:mod:`.client_app`), and the initial model is built from the same seed.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from flwr.app import Context, Message, MessageType, RecordDict
from flwr.serverapp import Grid, ServerApp

from dpcalib.errors import DpcalibError

from ..client import ClientUpdates
from ..config import ConfigError, RunConfig
from ..data import DataUnavailableError, load_dataset
from ..fedavg import Aggregator, ClientSampler, FractionSampler, WeightedMean
from ..models import ParamLayout, build_model
from ..privacy import PrivacyLedger
from ..run import CHECKPOINT, METRICS, SUMMARY, RunSummary, _check_out_dir, _rewrite_metrics, _save_checkpoint, evaluate
from ..serveropt import make_server_optimizer
from .appdir import ERROR_PREFIX, FlowerSettings, parse_run_config
from .records import NodeInfo, RejectedReply, parse_query_reply, parse_train_reply, train_content
from .secret import secret_generator

__all__ = ["app", "Federation", "RoundMode", "round_mode", "connect", "serve"]

app = ServerApp()

Say = Callable[[str], None]


def _say(text: str) -> None:
    print(text, flush=True)


@dataclass(frozen=True)
class Federation:
    """The SuperNodes of a run: ``nodes[k]`` is the node id holding partition ``k``; ``sizes[k]`` its record count."""

    nodes: tuple[int, ...]
    sizes: tuple[int, ...]


def connect(grid: Grid, clients: int, wait: float, say: Say = _say, poll: float = 0.5) -> Federation:
    """Wait up to ``wait`` seconds for ``clients`` SuperNodes, ask each which partition it holds, map them.

    Raises :class:`fltrain.config.ConfigError` (before any training) when fewer nodes connect, when a node cannot
    serve its partition (e.g. its data is missing: its own reason is quoted), or when the partitions
    ``0 … clients−1`` are not each held by exactly one node.
    """
    deadline = time.monotonic() + wait
    node_ids = sorted(grid.get_node_ids())
    while len(node_ids) < clients and time.monotonic() < deadline:
        time.sleep(poll)
        node_ids = sorted(grid.get_node_ids())
    if len(node_ids) < clients:
        raise ConfigError(f"only {len(node_ids)} SuperNode(s) connected within {wait:g} s, but the plan has "
                          f"clients={clients} (one SuperNode per partition)")
    say(f"fltrain: {len(node_ids)} SuperNodes connected; asking which partition each holds")
    queries = {node: Message(RecordDict(), dst_node_id=node, message_type=MessageType.QUERY, ttl=wait)
               for node in node_ids}
    replies = list(grid.send_and_receive(list(queries.values()), timeout=max(1.0, deadline - time.monotonic())))
    sent = {message.metadata.message_id: node for node, message in queries.items()}
    holders: dict[int, list[int]] = {}
    sizes: dict[int, int] = {}
    problems: list[str] = []
    for reply in replies:
        node = sent.get(reply.metadata.reply_to_message_id)
        if node is None:
            continue
        try:
            info: NodeInfo = parse_query_reply(reply)
        except RejectedReply as error:
            problems.append(f"SuperNode {node}: {error}")
            continue
        if info.num_partitions != clients:
            problems.append(f"SuperNode {node}: num-partitions={info.num_partitions} but clients={clients}")
            continue
        holders.setdefault(info.partition_id, []).append(node)
        sizes[info.partition_id] = info.num_samples
    if problems:
        raise ConfigError("SuperNodes cannot serve the run: " + "; ".join(problems))
    missing = [k for k in range(clients) if k not in holders]
    twice = {k: v for k, v in holders.items() if len(v) > 1}
    if missing or twice:
        raise ConfigError(
            f"the plan has clients={clients}, one SuperNode per partition; "
            + (f"no SuperNode answered for partition(s) {missing}" if missing else "")
            + ("; " if missing and twice else "")
            + (f"partition(s) held by several SuperNodes: {sorted(twice)}" if twice else "")
        )
    return Federation(tuple(holders[k][0] for k in range(clients)), tuple(sizes[k] for k in range(clients)))


@dataclass
class RoundMode:
    """What a privacy mode decides on the server: which clients train (``sampler``), how their deltas become the
    update (``aggregator``), the ledger (``None`` without DP), σ, and what the train messages carry besides the
    round and learning rate (``instructions``)."""

    sampler: ClientSampler
    aggregator: Aggregator
    ledger: PrivacyLedger | None = None
    sigma: float = 0.0
    instructions: dict[str, Any] = field(default_factory=dict)


def round_mode(cfg: RunConfig, federation: Federation, dim: int) -> RoundMode:
    """The server side of ``cfg.dp`` for this federation."""
    if cfg.dp != "none":
        raise ConfigError(f"dp={cfg.dp!r} is not yet available on Flower; use dp='none' (or fltrain run)")
    return RoundMode(FractionSampler(cfg.client_fraction), WeightedMean())


def _train_round(grid: Grid, federation: Federation, params: torch.Tensor, ids: torch.Tensor,
                 instructions: dict[str, Any], timeout: float, say: Say) -> ClientUpdates:
    """Send the round's train messages, wait for the replies, keep the valid ones (the others are logged)."""
    round_index = instructions["round"]
    messages = {
        int(k): Message(train_content(params, instructions), dst_node_id=federation.nodes[int(k)],
                        message_type=MessageType.TRAIN, group_id=str(round_index), ttl=timeout)
        for k in ids
    }
    replies = list(grid.send_and_receive(list(messages.values()), timeout=timeout))
    sent = {message.metadata.message_id: k for k, message in messages.items()}
    accepted: dict[int, Any] = {}
    replied: set[int] = set()
    for reply in replies:
        k = sent.get(reply.metadata.reply_to_message_id)
        if k is None or k in replied:
            continue
        replied.add(k)
        try:
            accepted[k] = parse_train_reply(reply, params.numel())
        except RejectedReply as error:
            say(f"fltrain: round {round_index}: client {k} (SuperNode {federation.nodes[k]}) dropped: {error}")
    for k in sorted(set(messages) - replied):
        say(f"fltrain: round {round_index}: client {k} (SuperNode {federation.nodes[k]}) dropped: "
            f"no reply within {timeout:g} s")
    order = sorted(accepted)
    deltas = [accepted[k].delta for k in order]
    return ClientUpdates(
        client_ids=torch.tensor(order, dtype=torch.int64),
        deltas=torch.stack(deltas) if deltas else params.new_zeros(0, params.numel()),
        num_samples=torch.tensor([accepted[k].num_samples for k in order], dtype=torch.int64),
        train_loss=torch.tensor([accepted[k].train_loss for k in order], dtype=torch.float64),
    )


def serve(cfg: RunConfig, settings: FlowerSettings, grid: Grid, say: Say = _say) -> RunSummary:
    """Carry out (or, with ``settings.resume``, continue) the run ``cfg`` on the SuperNodes of ``grid``."""
    out = Path(cfg.out)
    state = _check_out_dir(cfg, out, settings.resume)
    torch.set_num_threads(cfg.threads)
    data = load_dataset(cfg.dataset, cfg.data_dir, train_samples=cfg.train_samples, test_samples=cfg.test_samples)
    with torch.random.fork_rng():
        torch.manual_seed(cfg.seed)
        model = build_model(cfg.resolved_model, data.input_shape, data.num_classes)
    layout = ParamLayout.of(model)
    federation = connect(grid, cfg.clients, settings.node_wait, say)
    mode = round_mode(cfg, federation, layout.size)
    optimizer = make_server_optimizer(cfg.server_opt, lr=cfg.server_lr, momentum=cfg.server_momentum)
    params = layout.flatten(dict(model.named_parameters())).detach().clone()
    generator = secret_generator()

    start_round, elapsed, cpu_elapsed = 0, 0.0, 0.0
    if state is not None:
        start_round, elapsed, cpu_elapsed = int(state["round"]), float(state["elapsed"]), float(state["cpu_elapsed"])
        params.copy_(state["server"]["params"])
        optimizer.load_state_dict(state["server"]["optimizer"])
        if mode.ledger is not None:
            mode.ledger = PrivacyLedger.from_state_dict(mode.ledger.plan, state["ledger"])
        _rewrite_metrics(out / METRICS, start_round)
        say(f"fltrain: resuming after round {start_round} of {cfg.rounds}")
    out.mkdir(parents=True, exist_ok=True)

    accuracy = None
    stopped = False
    completed = start_round
    for round_index in range(start_round + 1, cfg.rounds + 1):
        if mode.ledger is not None and not mode.ledger.can_afford_next_round():
            stopped = True
            break
        began, began_cpu = time.perf_counter(), time.process_time()
        ids = mode.sampler.sample(cfg.clients, generator)
        instructions = {"round": round_index, "lr": cfg.lr * cfg.lr_decay ** (round_index - 1), **mode.instructions}
        updates = _train_round(grid, federation, params, ids, instructions, settings.round_timeout, say)
        optimizer.step(params, mode.aggregator.aggregate(updates, generator))
        epsilon = mode.ledger.charge_round() if mode.ledger is not None else None
        accuracy = evaluate(model, layout, params, data.x_test, data.y_test)
        seconds = time.perf_counter() - began
        cpu_seconds = time.process_time() - began_cpu
        elapsed += seconds
        cpu_elapsed += cpu_seconds
        weights = updates.num_samples.to(torch.float64)
        loss = float((weights * updates.train_loss).sum() / weights.sum()) if len(updates.client_ids) else None
        metrics = {
            "round": round_index, "train_loss": loss, "test_accuracy": accuracy, "epsilon": epsilon,
            "delta": mode.ledger.plan.delta if mode.ledger is not None else None, "sigma": mode.sigma,
            "seconds": round(seconds, 3), "cpu_seconds": round(cpu_seconds, 3), "elapsed": round(elapsed, 3),
            "clients": len(updates.client_ids),
        }
        with open(out / METRICS, "a") as handle:
            handle.write(json.dumps(metrics) + "\n")
        _save_checkpoint(out / CHECKPOINT, {
            "config": cfg.to_dict(), "round": round_index, "elapsed": elapsed, "cpu_elapsed": cpu_elapsed,
            "server": {"params": params.clone(), "optimizer": optimizer.state_dict()},
            "ledger": mode.ledger.state_dict() if mode.ledger is not None else None,
        })
        completed = round_index
        say(f"fltrain: round {round_index}/{cfg.rounds}: test_accuracy {accuracy:.4f}  epsilon "
            f"{'-' if epsilon is None else format(epsilon, '.3f')}  clients {len(updates.client_ids)}/{len(ids)}  "
            f"{seconds:.1f}s")

    if accuracy is None:
        accuracy = evaluate(model, layout, params, data.x_test, data.y_test)
    summary = RunSummary(
        rounds_completed=completed, rounds_planned=cfg.rounds, test_accuracy=accuracy,
        epsilon=mode.ledger.epsilon() if mode.ledger is not None else None,
        delta=mode.ledger.plan.delta if mode.ledger is not None else None, sigma=mode.sigma,
        seconds=round(elapsed, 3), cpu_seconds=round(cpu_elapsed, 3), stopped_by_budget=stopped, out=str(out),
    )
    (out / SUMMARY).write_text(json.dumps(asdict(summary), indent=2) + "\n")
    say("fltrain: summary " + json.dumps(asdict(summary)))
    return summary


@app.main()
def main(grid: Grid, context: Context) -> None:
    """The ServerApp: :func:`serve` the run described by the run config; a refused run logs one error line."""
    try:
        cfg, settings = parse_run_config(context.run_config)
        serve(cfg, settings, grid)
    except (ConfigError, DpcalibError, DataUnavailableError) as error:
        _say(ERROR_PREFIX + str(error))
        raise
