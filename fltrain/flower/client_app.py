"""fltrain's Flower ClientApp: one SuperNode is one fltrain client, holding one partition of the training set.

The SuperNode's node config names the partition it holds and where its data lies::

    flower-supernode ... --node-config "partition-id=0 num-partitions=4 data-dir='/data'"

The node loads the dataset from its ``data-dir`` and takes partition ``partition-id`` of the same partition that
``fltrain run`` computes (:func:`fltrain.data.partition` with the run's scheme and seed), so a federation of
``clients`` SuperNodes holds exactly the clients of the in-process run.  ``num-partitions`` must equal the run's
``clients``.

Handlers (Flower Message API):

- ``query``: reply with the partition id, the number of partitions and the record count (:mod:`.records`); a node
  whose data is missing replies with an error, so the server refuses the run before any training;
- ``train``: run the round's local training (:class:`fltrain.client.LocalTrainer`, the code ``fltrain run`` runs)
  from the global parameters with the learning rate, and for record-level DP the Poisson rate ``q``, noise
  multiplier ``sigma`` and clip norm, that the server sent; reply with the model delta.  With record-level DP a node
  refuses (an error reply) when its own Poisson rate ``min(1, batch_size / n_k)`` exceeds the accounted ``q``.

DP noise and record sampling come from :func:`fltrain.flower.secret.secret_generator`, seeded from the OS and
never stored; the run's seed drives only the partition.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Mapping

import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp

from dpcalib.errors import InvalidArgumentError

from ..client import LocalTrainer, LocalTraining, sampling_rates
from ..config import ConfigError, RunConfig
from ..data import load_dataset, partition
from ..dpsgd import make_engine
from ..models import ParamLayout, build_model
from .appdir import NODE_DATA_DIR, NODE_PARTITION, NODE_PARTITIONS, parse_run_config
from .records import (
    PARAMS, NodeInfo, query_reply_content, record_vector, train_instructions, train_reply_content,
)
from .secret import secret_generator

__all__ = ["app", "LocalClient", "node_partition", "load_client", "handle_query", "handle_train"]

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


@dataclass
class LocalClient:
    """One client's records (``x[members]``, ``y[members]``) and model, as ``fltrain run`` builds them for client
    ``partition_id``."""

    cfg: RunConfig
    partition_id: int
    x: torch.Tensor
    y: torch.Tensor
    members: torch.Tensor
    model: torch.nn.Module
    layout: ParamLayout

    @property
    def num_samples(self) -> int:
        return len(self.members)

    def train(self, params: torch.Tensor, instructions: Mapping[str, Any]) -> tuple[torch.Tensor, float]:
        """One round of local training from ``params`` as instructed; returns ``(delta, mean training loss)``."""
        cfg = self.cfg
        private = "sigma" in instructions
        if private:
            own_rate = float(sampling_rates(torch.tensor([self.num_samples]), cfg.batch_size)[0])
            if own_rate > float(instructions["q"]):
                raise ConfigError(
                    f"partition {self.partition_id}: own Poisson rate batch_size/n = {cfg.batch_size}/"
                    f"{self.num_samples} = {own_rate:.6g} exceeds the accounted q = {instructions['q']:.6g}; "
                    f"refusing to train (the ledger would under-count this client's privacy loss)")
        local = LocalTraining(
            local_steps=cfg.local_steps, batch_size=cfg.batch_size, lr=float(instructions["lr"]),
            momentum=cfg.momentum, clip=float(instructions["clip"]) if private else None,
            noise_multiplier=float(instructions["sigma"]) if private else 0.0,
            parallel_clients=1, max_physical_batch=cfg.max_physical_batch,
        )
        trainer = LocalTrainer(self.layout, make_engine(self.model, cfg.engine), self.x, self.y, [self.members], local)
        updates = trainer.train(params, torch.tensor([0]), secret_generator())
        return updates.deltas[0], float(updates.train_loss[0])


#: the records of a node's partition, kept in the node's context state between messages (see :func:`load_client`)
_STATE_RECORDS = "fltrain-partition"
_STATE_KEY = "fltrain-partition-key"


def load_client(run_config: Mapping[str, Any], node_config: Mapping[str, Any], state: RecordDict) -> LocalClient:
    """The client a SuperNode plays in this run: config, partition, records and model.

    Flower starts a new ClientApp process for every message, so the partition's records are kept in the node's
    context ``state`` (which stays on the SuperNode) after the first message: later messages skip loading and
    partitioning the whole dataset.  They are reused only for the same dataset, data directory and partition.
    """
    cfg, _ = parse_run_config(run_config)
    pid, data_dir = node_partition(node_config, cfg.clients)
    torch.set_num_threads(cfg.threads)
    key = json.dumps([cfg.dataset, data_dir, cfg.train_samples, cfg.partition, cfg.clients, cfg.seed,
                      cfg.shards_per_client, cfg.alpha, pid])
    if _STATE_KEY in state.config_records and state[_STATE_KEY].get("key") == key:
        records = state[_STATE_RECORDS]
        x, y = torch.from_numpy(records["x"].numpy()), torch.from_numpy(records["y"].numpy())
        num_classes = int(state[_STATE_KEY]["num-classes"])
    else:
        data = load_dataset(cfg.dataset, data_dir, train_samples=cfg.train_samples, test_samples=1)
        members = partition(data.y_train, scheme=cfg.partition, clients=cfg.clients, seed=cfg.seed,
                            shards_per_client=cfg.shards_per_client, alpha=cfg.alpha)[pid]
        x, y = data.x_train[members].contiguous(), data.y_train[members].contiguous()
        state[_STATE_RECORDS] = ArrayRecord({"x": Array(x.numpy()), "y": Array(y.numpy())})
        num_classes = data.num_classes
        state[_STATE_KEY] = ConfigRecord({"key": key, "num-classes": num_classes})
    model = build_model(cfg.resolved_model, tuple(x.shape[1:]), num_classes)
    return LocalClient(cfg, pid, x, y, torch.arange(len(y)), model, ParamLayout.of(model))


def handle_query(message: Message, context: Context) -> Message:
    """Reply with this node's partition id, partition count and record count (an error if its data is missing)."""
    client = load_client(context.run_config, context.node_config, context.state)
    info = NodeInfo(client.partition_id, client.cfg.clients, client.num_samples)
    return Message(query_reply_content(info), reply_to=message)


def handle_train(message: Message, context: Context) -> Message:
    """Train one round from the parameters in ``message``; reply with the delta and the sample count."""
    client = load_client(context.run_config, context.node_config, context.state)
    params = record_vector(message.content["arrays"], PARAMS, client.layout.size)
    delta, loss = client.train(params, train_instructions(message))
    return Message(train_reply_content(delta, client.num_samples, loss), reply_to=message)


app.query()(handle_query)
app.train()(handle_train)
