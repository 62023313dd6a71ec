"""fltrain's Flower ClientApp: one SuperNode is one fltrain client, holding one partition of the training set.

The SuperNode's node config names the partition it holds and where its data lies (and, optionally, where it
caches its partition: ``cache-dir``)::

    flower-supernode ... --node-config "partition-id=0 num-partitions=4 data-dir='/data'"

The node loads the dataset from its ``data-dir`` and takes partition ``partition-id`` of the partition that
``fltrain run`` computes (the same validation split, :func:`fltrain.data.partition` with the run's scheme and
seed), so a federation of ``clients`` SuperNodes holds exactly the clients of the in-process run.
``num-partitions`` must equal the run's ``clients``.

Handlers (Flower Message API):

- ``query``: reply with the partition id and the number of partitions (:mod:`.records`); a node
  whose data is missing replies with an error, so the server refuses the run before any training;
- ``train``: the client side of the run's privacy mode (:mod:`fltrain.privacy`), the same object ``fltrain run``
  uses: the node builds the mode from the run config with the σ (and, record-level, the Poisson rate ``q``) that the
  server's plan fixed and that the message carries, adopts the round's public settings
  (``mode.set_round_config``), trains with ``mode.local_training`` (record-level: DP-SGD with the run's sampler,
  at rate ``q`` or in batches of exactly ``batch_size``, clip ``C``, noise ``σC``) through
  :class:`fltrain.client.LocalTrainer`, and replies with its model delta.  The mode's
  ``client_message`` (the weighting, or client-level clipping) is applied by the server to what it receives: a
  server that clips itself need not trust a client's clipping.  With record-level DP a node refuses (an error
  reply) when its own rate, from its own config and data, would exceed the accounted ``q`` (``poisson``), or when
  it holds fewer records than the smallest client the plan accounts (``fixed``, ``shuffle``).  Only without DP does
  the reply carry the record count and training loss (FedAvg's weights need the count); a DP client sends its
  delta alone.

DP noise and record sampling come from the mode's secret source (:class:`fltrain.randomness.SecureRandom`), made
afresh in every ClientApp process and never stored; the run's seed drives only the partition.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch
from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from dpcalib.errors import InvalidArgumentError

from ..client import LocalTrainer, LocalTraining
from ..config import ConfigError, RunConfig
from ..data import load_dataset, partition, split_validation
from ..dpsgd import make_engine
from ..models import ParamLayout, build_model
from ..privacy import PrivacyMode, build_mode
from ..randomness import SecureRandom
from .appdir import NODE_DATA_DIR, NODE_PARTITION, NODE_PARTITIONS, parse_run_config
from .records import PARAMS, NodeInfo, query_reply_content, record_vector, train_instructions, train_reply_content

__all__ = [
    "app", "NODE_CACHE_DIR", "LocalClient", "node_partition", "client_mode", "load_client", "handle_query", "handle_train",
]

app = ClientApp()


def node_partition(node_config: Mapping[str, Any], clients: int) -> tuple[int, str]:
    """``(partition id, data dir)`` from a SuperNode's node config, checked against the run's ``clients``."""
    for key in (NODE_PARTITION, NODE_PARTITIONS, NODE_DATA_DIR):
        if key not in node_config:
            raise ConfigError(f"the SuperNode's node config has no {key!r} (it has: {', '.join(sorted(node_config))}); "
                              f"start it with --node-config \"partition-id=K num-partitions=N data-dir='DIR'\"")
    partitions = node_config[NODE_PARTITIONS]
    if partitions != clients:
        raise ConfigError(f"node config num-partitions={partitions!r} but the run has clients={clients}")
    pid = node_config[NODE_PARTITION]
    if isinstance(pid, bool) or not isinstance(pid, int) or not 0 <= pid < clients:
        raise InvalidArgumentError(NODE_PARTITION, pid, f"an integer in [0, {clients - 1}]")
    return pid, str(node_config[NODE_DATA_DIR])


def client_mode(cfg: RunConfig, instructions: Mapping[str, Any], *, dim: int, train_records: int,
                own_records: int) -> PrivacyMode:
    """The run's privacy mode on a client holding ``own_records`` records, with the plan's σ (and record-level
    ``q``, or the smallest client's record count ``records``) from the server's message and the round's public
    settings adopted.

    Record-level: refuses (:class:`fltrain.config.ConfigError`) when the plan would under-count this node's
    records: with the ``poisson`` sampler when the rate this node would use by its own config and data
    (``sample.q``, else ``batch_size × clients / its training records``) exceeds the accounted ``q``; with
    ``fixed`` and ``shuffle`` when the node holds fewer records than the accounted smallest client.
    """
    if cfg.dp == "sample":
        section: dict[str, Any] = {"sigma": float(instructions["sigma"])}
        if cfg.sample.sampler == "poisson":
            q = float(instructions["q"])
            own = cfg.sample.q if cfg.sample.q is not None else cfg.default_record_rate(train_records)
            if own > q:
                raise ConfigError(f"this node's own Poisson rate {own:.6g} (from its config and its {train_records} "
                                  f"training records) exceeds the accounted q = {q:.6g}; refusing to train, the "
                                  "ledger would under-count its records' privacy loss")
            section["q"] = q
            sizes = None
        else:
            records = int(instructions["records"])
            if own_records < records:
                raise ConfigError(f"this node holds {own_records} records, fewer than the smallest client the plan "
                                  f"accounts ({records}); refusing to train, the ledger would under-count its "
                                  "records' privacy loss")
            sizes = [records]
        cfg = dataclasses.replace(cfg, sample=dataclasses.replace(cfg.sample, **section))
        return _adopt(build_mode(cfg, dim=dim, train_records=train_records, client_sizes=sizes), instructions)
    if cfg.dp == "client":
        cfg = dataclasses.replace(cfg, client=dataclasses.replace(cfg.client, sigma=float(instructions["sigma"])))
    return _adopt(build_mode(cfg, dim=dim, train_records=train_records), instructions)


def _adopt(mode: PrivacyMode, instructions: Mapping[str, Any]) -> PrivacyMode:
    mode.set_round_config({key: instructions[key] for key in mode.round_config()})
    return mode


@dataclass
class LocalClient:
    """One client's records (``x[members]``, ``y[members]``) and model, as ``fltrain run`` builds them for client
    ``partition_id``; ``train_records`` is the size of the whole training set (public)."""

    cfg: RunConfig
    partition_id: int
    x: torch.Tensor
    y: torch.Tensor
    members: torch.Tensor
    train_records: int
    model: torch.nn.Module
    layout: ParamLayout

    @property
    def num_samples(self) -> int:
        return len(self.members)

    def train(self, params: torch.Tensor, instructions: Mapping[str, Any]) -> tuple[torch.Tensor, float]:
        """One round of local training from ``params`` as instructed; returns ``(delta, mean training loss)``."""
        cfg = self.cfg
        mode = client_mode(cfg, instructions, dim=self.layout.size, train_records=self.train_records,
                           own_records=self.num_samples)
        base = LocalTraining(local_steps=cfg.local_steps, batch_size=cfg.batch_size, lr=float(instructions["lr"]),
                             momentum=cfg.momentum, parallel_clients=1, max_physical_batch=cfg.max_physical_batch)
        trainer = LocalTrainer(self.layout, make_engine(self.model, cfg.engine), self.x, self.y, [self.members],
                               mode.local_training(base))
        # without DP the mode's source is the seed's generator, which would restart in every ClientApp process
        rng = mode.rng if mode.rng.secure else SecureRandom()
        updates = trainer.train(params, torch.tensor([0]), rng)
        return updates.deltas[0], float(updates.train_loss[0])


#: optional node-config key: where a node caches its partition (default: a private folder in the temp directory)
NODE_CACHE_DIR = "cache-dir"


def _fingerprint(root: Path) -> list[tuple[str, int, int]]:
    """Path, size and modification time of every file under ``root``: a changed dataset changes the cache key."""
    return sorted((str(p.relative_to(root)), p.stat().st_size, p.stat().st_mtime_ns)
                  for p in root.rglob("*") if p.is_file())


def _cache_file(cfg: RunConfig, node_config: Mapping[str, Any], data_dir: str, pid: int) -> Path:
    folder = Path(node_config.get(NODE_CACHE_DIR) or Path(tempfile.gettempdir()) / f"fltrain-flower-{os.getuid()}")
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    root = Path(data_dir).resolve()
    key = json.dumps([cfg.dataset, str(root), _fingerprint(root) if root.is_dir() else None, cfg.train_samples,
                      cfg.val_fraction, cfg.partition, cfg.clients, cfg.seed, cfg.shards_per_client, cfg.alpha, pid])
    return folder / f"partition-{hashlib.sha256(key.encode()).hexdigest()[:32]}.pt"


def load_client(run_config: Mapping[str, Any], node_config: Mapping[str, Any]) -> LocalClient:
    """The client a SuperNode plays in this run: config, partition, records and model.

    Flower starts a new ClientApp process for every message, so the node caches its partition's records in a file
    of its own (node config ``cache-dir``, default a folder of the temp directory readable by its user only): later
    messages, and later runs on the same data and partition, skip loading and partitioning the whole dataset.  The
    file's name is a hash of the dataset, the data directory's files (names, sizes, times), the partition settings
    and the partition id.
    """
    cfg, _ = parse_run_config(run_config)
    pid, data_dir = node_partition(node_config, cfg.clients)
    torch.set_num_threads(cfg.threads)
    cache = _cache_file(cfg, node_config, data_dir, pid)
    if cache.exists():
        saved = torch.load(cache, weights_only=True)
    else:
        data = load_dataset(cfg.dataset, data_dir, train_samples=cfg.train_samples, test_samples=1)
        if cfg.val_fraction:
            data, _ = split_validation(data, cfg.val_fraction, cfg.seed)
        members = partition(data.y_train, scheme=cfg.partition, clients=cfg.clients, seed=cfg.seed,
                            shards_per_client=cfg.shards_per_client, alpha=cfg.alpha)[pid]
        saved = {"x": data.x_train[members].contiguous(), "y": data.y_train[members].contiguous(),
                 "num_classes": data.num_classes, "train_records": len(data.y_train)}
        tmp = cache.with_name(f"{cache.name}.{os.getpid()}.tmp")
        torch.save(saved, tmp)
        os.replace(tmp, cache)
    x, y = saved["x"], saved["y"]
    model = build_model(cfg.resolved_model, tuple(x.shape[1:]), int(saved["num_classes"]))
    return LocalClient(cfg, pid, x, y, torch.arange(len(y)), int(saved["train_records"]), model, ParamLayout.of(model))


def handle_query(message: Message, context: Context) -> Message:
    """Reply with this node's partition id and partition count (an error if its data is missing)."""
    client = load_client(context.run_config, context.node_config)
    info = NodeInfo(client.partition_id, client.cfg.clients)
    return Message(query_reply_content(info), reply_to=message)


def handle_train(message: Message, context: Context) -> Message:
    """Train one round from the parameters in ``message``; reply with the delta (and, without DP, the record
    count and training loss)."""
    client = load_client(context.run_config, context.node_config)
    params = record_vector(message.content["arrays"], PARAMS, client.layout.size)
    delta, loss = client.train(params, train_instructions(message))
    diagnostics = (client.num_samples, loss) if client.cfg.dp == "none" else None
    return Message(train_reply_content(delta, diagnostics), reply_to=message)


app.query()(handle_query)
app.train()(handle_train)
