"""fltrain's Flower ServerApp: the rounds of ``fltrain run`` over real SuperNodes, driven by the same privacy-mode
object (:mod:`fltrain.privacy`), with the same files, checkpoints and resume.

A run (:func:`serve`):

1. **Before any training** everything that can be refused is checked: the config (:mod:`.appdir`), the output
   directory (an existing run needs ``resume``), the server's data, the plan (``build_mode`` calibrates σ with
   dpcalib); then the server waits up to ``node-wait`` seconds for ``clients`` SuperNodes, sends each a *query* and
   maps partition ids to nodes.  A node without its data, fewer nodes than the plan's clients, a partition held
   twice or by nobody: one line ``fltrain: error: ...`` on the run's log, and no round runs.
2. **A round** is :class:`fltrain.fedavg.FedAvgServer`'s, with the cohort's local training done by the SuperNodes
   (:mod:`.client_app`): if the budget allows another round, the mode charges it to the ledger and ``ledger.json`` is
   synced *before* any noise is drawn (so a round is charged even if a sampled client never answers, and a restarted
   server never under-counts); ``mode.select()`` draws the cohort among the partitions known when the plan was made
   (client level: Poisson sampling at the accounted rate ``m/N`` from the secret source, never Flower's fixed-size
   sample); each sampled client gets a *train* message (:mod:`.records`) with σ, ``q`` (or, with the ``fixed`` and
   ``shuffle`` samplers, the smallest client's record count the plan accounts, from the partition the server computes
   as ``fltrain run`` does) and the round's public settings; the server waits up to ``round-timeout`` seconds and
   keeps the valid replies. A reply that is an error, lacks a record, has the wrong shape or non-finite values, or
   does not come in time is dropped with a log line. The server then applies the mode's ``client_message`` to the
   deltas it received (client level: it clips every update to ``C`` itself), sums, and ``mode.server_update`` adds
   the noise and divides by the public denominator (client level: the fixed ``m``, whoever answered); the server
   optimiser steps. Without DP, a round without a valid reply leaves the model as it was.
3. After every round: the files of ``fltrain run`` (:mod:`fltrain.run`): ``metrics.jsonl`` (public: test
   accuracy, ε, δ, σ, noise source, timings, the mode's releases), ``private-diagnostics.jsonl`` (who answered,
   training loss without DP), ``ledger.json``, an atomic ``checkpoint.pt`` (config, round, parameters, server
   optimiser, the mode's state) and a progress line on the log; at the end ``summary.json``.  ``cpu_seconds`` is
   the server process's CPU time only.

The partition ids are the clients of ``fltrain run``: partition ``k`` holds the records that in-process client
``k`` holds, and the initial model is built from the same seed.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from flwr.app import Context, Message, MessageType, RecordDict
from flwr.serverapp import Grid, ServerApp

from dpcalib.errors import DpcalibError

from ..config import ConfigError, RunConfig
from ..data import DataUnavailableError, load_dataset, partition, split_validation
from ..models import ParamLayout, build_model
from ..privacy import ClientLevel, PrivacyMode, RecordLevel, build_mode
from ..run import (
    CHECKPOINT, LEDGER, METRICS, PRIVATE, SUMMARY, RunSummary, _check_out_dir, _restore, _rewrite_lines,
    _save_checkpoint, _save_ledger, evaluate, write_round,
)
from ..serveropt import make_server_optimizer
from .appdir import ERROR_PREFIX, FlowerSettings, parse_run_config
from .records import NodeInfo, RejectedReply, TrainReply, parse_query_reply, parse_train_reply, train_content

__all__ = ["app", "Federation", "connect", "train_instructions", "serve"]

app = ServerApp()

Say = Callable[[str], None]


def _say(text: str) -> None:
    print(text, flush=True)


@dataclass(frozen=True)
class Federation:
    """The SuperNodes of a run: ``nodes[k]`` is the node id holding partition ``k``."""

    nodes: tuple[int, ...]


def connect(grid: Grid, clients: int, wait: float, say: Say = _say, poll: float = 0.5) -> Federation:
    """Wait up to ``wait`` seconds for ``clients`` SuperNodes, ask each which partition it holds (waiting up to
    ``wait`` seconds more for the answers: a node loads its data on the first message), map them.

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
    replies = list(grid.send_and_receive(list(queries.values()), timeout=wait))  # a node's first load may be slow
    sent = {message.metadata.message_id: node for node, message in queries.items()}
    holders: dict[int, list[int]] = {}
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
    if problems:
        raise ConfigError("SuperNodes cannot serve the run: " + "; ".join(problems))
    missing = [k for k in range(clients) if k not in holders]
    twice = sorted(k for k, v in holders.items() if len(v) > 1)
    if missing or twice:
        reasons = ([f"no SuperNode answered for partition(s) {missing} within {wait:g} s"] if missing else []) + (
            [f"partition(s) held by several SuperNodes: {twice}"] if twice else [])
        raise ConfigError(f"the plan has clients={clients}, one SuperNode per partition; " + "; ".join(reasons))
    return Federation(tuple(holders[k][0] for k in range(clients)))


def train_instructions(mode: PrivacyMode, round_index: int, lr: float) -> dict[str, Any]:
    """What a round's train messages carry: the round, the local learning rate, the plan's σ and, record-level,
    the rate ``q`` (``poisson``) or the smallest client's record count ``records`` (``fixed``, ``shuffle``: the
    plan's, public under replace-one), and the mode's public round settings (:meth:`PrivacyMode.round_config`)."""
    instructions: dict[str, Any] = {"round": round_index, "lr": lr, **mode.round_config()}
    if mode.plan is not None:
        instructions["sigma"] = mode.plan.sigma
    if isinstance(mode, RecordLevel):
        if mode.q is not None:
            instructions["q"] = mode.q
        else:
            instructions["records"] = mode.records
    return instructions


def _train_round(grid: Grid, federation: Federation, params: torch.Tensor, ids: torch.Tensor,
                 instructions: dict[str, Any], timeout: float, diagnostics: bool, say: Say) -> dict[int, TrainReply]:
    """Send the round's train messages, wait for the replies, keep the valid ones (the others are logged)."""
    round_index = instructions["round"]
    messages = {
        int(k): Message(train_content(params, instructions), dst_node_id=federation.nodes[int(k)],
                        message_type=MessageType.TRAIN, group_id=str(round_index), ttl=timeout)
        for k in ids
    }
    replies = list(grid.send_and_receive(list(messages.values()), timeout=timeout))
    sent = {message.metadata.message_id: k for k, message in messages.items()}
    accepted: dict[int, TrainReply] = {}
    rejected: dict[int, RejectedReply] = {}
    for reply in replies:  # a node may answer twice (its reply, then an error for the same message): keep a valid one
        k = sent.get(reply.metadata.reply_to_message_id)
        if k is None or k in accepted:
            continue
        try:
            accepted[k] = parse_train_reply(reply, params.numel(), diagnostics)
            rejected.pop(k, None)
        except RejectedReply as error:
            rejected.setdefault(k, error)
    for k, error in sorted(rejected.items()):
        say(f"fltrain: round {round_index}: client {k} (SuperNode {federation.nodes[k]}) dropped: {error}")
    for k in sorted(set(messages) - set(accepted) - set(rejected)):
        say(f"fltrain: round {round_index}: client {k} (SuperNode {federation.nodes[k]}) dropped: "
            f"no reply within {timeout:g} s")
    return dict(sorted(accepted.items()))


def _messages(mode: PrivacyMode, replies: dict[int, TrainReply], dim: int, round_index: int,
              say: Say) -> torch.Tensor:
    """The round's messages (k, w): the mode's ``client_message`` applied by the server to the deltas it received
    (client level: the server clips every update itself)."""
    deltas = torch.stack([r.delta for r in replies.values()]) if replies else torch.zeros(0, dim)
    counts = torch.tensor([r.num_samples or 0 for r in replies.values()], dtype=torch.int64)
    if isinstance(mode, ClientLevel):
        norms = torch.linalg.vector_norm(deltas.to(torch.float64), dim=1)
        for k, norm in zip(replies, norms.tolist()):
            if norm > mode.clip:
                say(f"fltrain: round {round_index}: client {k}'s update is above the clip norm C={mode.clip:.4g}; "
                    "the server clips it")
    return mode.client_message(deltas, counts)


def serve(cfg: RunConfig, settings: FlowerSettings, grid: Grid, say: Say = _say) -> RunSummary:
    """Carry out (or, with ``settings.resume``, continue) the run ``cfg`` on the SuperNodes of ``grid``.

    The round is :class:`fltrain.fedavg.FedAvgServer`'s, with the cohort's local training done by the SuperNodes:
    ``mode.select()``; the round charged to the ledger (and ``ledger.json`` synced) before any client draws noise;
    train messages; the mode's ``client_message`` on the valid deltas, their sum, ``mode.server_update`` (noise,
    public denominator) and the server optimiser; then the files of ``fltrain run``.
    """
    out = Path(cfg.out)
    state = _check_out_dir(cfg, out, settings.resume)
    torch.set_num_threads(cfg.threads)
    data = load_dataset(cfg.dataset, cfg.data_dir, train_samples=cfg.train_samples, test_samples=cfg.test_samples)
    validation = None
    if cfg.val_fraction:
        data, validation = split_validation(data, cfg.val_fraction, cfg.seed)
    with torch.random.fork_rng():
        torch.manual_seed(cfg.seed)
        model = build_model(cfg.resolved_model, data.input_shape, data.num_classes)
    layout = ParamLayout.of(model)
    members = partition(data.y_train, scheme=cfg.partition, clients=cfg.clients, seed=cfg.seed,
                        shards_per_client=cfg.shards_per_client, alpha=cfg.alpha)
    mode = build_mode(cfg, dim=layout.size, train_records=len(data.y_train), client_sizes=[len(m) for m in members])
    federation = connect(grid, cfg.clients, settings.node_wait, say)
    optimizer = make_server_optimizer(cfg.server_opt, lr=cfg.server_lr, momentum=cfg.server_momentum)
    params = layout.flatten(dict(model.named_parameters())).detach().clone()
    plan = mode.plan
    delta = plan.delta if plan is not None else None
    sigma = plan.sigma if plan is not None else None
    width = mode.message_width(layout.size)

    start_round, elapsed, cpu_elapsed = 0, 0.0, 0.0
    if state is not None:
        start_round, elapsed, cpu_elapsed = int(state["round"]), float(state["elapsed"]), float(state["cpu_elapsed"])
        params.copy_(state["server"]["params"])
        optimizer.load_state_dict(state["server"]["optimizer"])
        _restore(mode, state, out)
        _rewrite_lines(out / METRICS, start_round)
        _rewrite_lines(out / PRIVATE, start_round)
        say(f"fltrain: resuming after round {start_round} of {cfg.rounds}"
            + (f" with {mode.ledger.rounds} round(s) charged" if mode.ledger is not None else ""))
    out.mkdir(parents=True, exist_ok=True)

    accuracy = None
    stopped = False
    completed = start_round
    for round_index in range(start_round + 1, cfg.rounds + 1):
        if not mode.can_afford_next_round():
            stopped = True
            say(f"fltrain: stopping before round {round_index}: it would exceed the budget eps={plan.eps}")
            break
        began, began_cpu = time.perf_counter(), time.process_time()
        epsilon = mode.charge_round()  # before any noise of the round is drawn, here or on a client
        if mode.ledger is not None:
            _save_ledger(out / LEDGER, mode.ledger)
        ids = mode.select()
        instructions = train_instructions(mode, round_index, cfg.lr * cfg.lr_decay ** (round_index - 1))
        replies = _train_round(grid, federation, params, ids, instructions, settings.round_timeout,
                               cfg.dp == "none", say)
        messages = _messages(mode, replies, layout.size, round_index, say)
        total = messages.sum(dim=0) if len(replies) else torch.zeros(width, dtype=torch.float64)
        if replies or mode.plan is not None:  # a DP round releases (its noise) even with no valid reply
            optimizer.step(params, mode.server_update(total).to(params.dtype))
        losses = [(r.num_samples, r.train_loss) for r in replies.values() if r.train_loss is not None]
        private: dict[str, Any] = {
            "round": round_index, "clients": len(replies),
            "train_loss": (sum(n * loss for n, loss in losses) / sum(n for n, _ in losses)) if losses else None,
        }
        metrics, elapsed, cpu_elapsed = write_round(
            out, mode, private, lambda x, y: evaluate(model, layout, params, x, y), test=(data.x_test, data.y_test),
            validation=validation, epsilon=epsilon, began=(began, began_cpu), elapsed=(elapsed, cpu_elapsed),
        )
        accuracy = metrics.get("test_accuracy")
        _save_checkpoint(out / CHECKPOINT, {
            "config": cfg.to_dict(), "round": round_index, "elapsed": elapsed, "cpu_elapsed": cpu_elapsed,
            "server": {"params": params.clone(), "optimizer": optimizer.state_dict()}, "mode": mode.state_dict(),
        })
        completed = round_index
        say(f"fltrain: round {round_index}/{cfg.rounds}: "
            + (f"test_accuracy {accuracy:.4f}  " if validation is None else "")
            + f"epsilon {'-' if epsilon is None else format(epsilon, '.4f')}  {metrics['seconds']:.1f}s")

    if accuracy is None:  # the test set once (validation split), or no round ran in this call
        accuracy = evaluate(model, layout, params, data.x_test, data.y_test)
    summary = RunSummary(
        rounds_completed=completed, rounds_planned=cfg.rounds, test_accuracy=accuracy, epsilon=mode.epsilon(),
        delta=delta, sigma=sigma, noise=mode.noise_label, privacy=mode.describe(), seconds=round(elapsed, 3),
        cpu_seconds=round(cpu_elapsed, 3), stopped_by_budget=stopped, out=str(out),
    )
    (out / SUMMARY).write_text(json.dumps(asdict(summary), indent=2) + "\n")
    say(f"fltrain: done: {completed} of {cfg.rounds} rounds, test_accuracy {accuracy:.4f}, epsilon "
        f"{'-' if summary.epsilon is None else format(summary.epsilon, '.4f')}; {out / SUMMARY}")
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
