"""What travels in fltrain's Flower messages (Message API records), and the server's checks on what comes back.

A *query* message (no content) asks a SuperNode which partition it holds; the reply's ``metrics``
(:class:`flwr.app.MetricRecord`) holds ``partition-id`` and ``num-partitions`` (not the record count: under
add/remove neighbouring it is private).

A *train* message holds

- ``arrays`` (:class:`flwr.app.ArrayRecord`): ``params``, the flat global parameter vector (float32, P);
- ``config`` (:class:`flwr.app.ConfigRecord`): the round and what the server fixed for it: the local learning rate
  ``lr``, with DP the plan's noise multiplier ``sigma`` and, record-level, its Poisson rate ``q`` (or, with the
  ``fixed`` and ``shuffle`` samplers, ``records``: the smallest client's record count), and the mode's
  public round settings (``PrivacyMode.round_config``, e.g. the client-level clip norm ``clip``).

Its reply holds ``arrays`` with ``delta`` (local − global parameters, float32, P) and, only without DP, ``metrics``
with ``num-samples`` and ``train-loss`` (FedAvg's weights need the count; a DP client sends nothing but its
delta).  The server never trusts a reply: :func:`parse_train_reply` refuses an error reply, missing records, a
wrong shape or dtype, non-finite values and a bad sample count with :class:`RejectedReply`, and the server drops
that client from the round.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

__all__ = [
    "PARAMS", "DELTA", "RejectedReply", "NodeInfo", "TrainReply", "vector_record", "record_vector", "train_content",
    "train_reply_content", "query_reply_content", "parse_query_reply", "parse_train_reply", "train_instructions",
]

PARAMS = "params"
DELTA = "delta"


class RejectedReply(ValueError):
    """A node's reply that the server cannot use (error, missing record, wrong shape, non-finite values)."""


@dataclass(frozen=True)
class NodeInfo:
    """What a SuperNode says about itself: its partition and the number of partitions."""

    partition_id: int
    num_partitions: int


@dataclass(frozen=True)
class TrainReply:
    """A client's valid answer to a train message (``num_samples`` and ``train_loss`` only without DP)."""

    delta: torch.Tensor
    num_samples: int | None = None
    train_loss: float | None = None


def vector_record(name: str, vector: torch.Tensor) -> ArrayRecord:
    """A flat float32 vector as an :class:`ArrayRecord` with one array ``name``."""
    flat = vector.detach().to(torch.float32).reshape(-1).contiguous().numpy()
    return ArrayRecord({name: Array(flat)})


def record_vector(record: ArrayRecord, name: str, dim: int) -> torch.Tensor:
    """The float32 vector ``name`` of ``record``, checked to have shape ``(dim,)`` and finite values."""
    if name not in record:
        raise RejectedReply(f"no array {name!r} (got {sorted(record)})")
    array = record[name]
    if tuple(array.shape) != (dim,):
        raise RejectedReply(f"array {name!r} has shape {tuple(array.shape)}, expected ({dim},)")
    values = array.numpy()
    if values.dtype != np.float32:
        raise RejectedReply(f"array {name!r} has dtype {values.dtype}, expected float32")
    vector = torch.from_numpy(np.array(values, copy=True))
    if not bool(torch.isfinite(vector).all()):
        raise RejectedReply(f"array {name!r} has non-finite values")
    return vector


def train_content(params: torch.Tensor, instructions: Mapping[str, Any]) -> RecordDict:
    """The content of a train message: the global parameters and the round's instructions."""
    return RecordDict({"arrays": vector_record(PARAMS, params), "config": ConfigRecord(dict(instructions))})


def train_instructions(message: Message) -> dict[str, Any]:
    """The instructions (``config`` record) of a train message as a plain dict."""
    return dict(message.content["config"])


def train_reply_content(delta: torch.Tensor, diagnostics: tuple[int, float] | None = None) -> RecordDict:
    """The content of a client's reply to a train message: the delta and, without DP, ``(num_samples, loss)``."""
    content = RecordDict({"arrays": vector_record(DELTA, delta)})
    if diagnostics is not None:
        num_samples, train_loss = diagnostics
        content["metrics"] = MetricRecord({"num-samples": int(num_samples), "train-loss": float(train_loss)})
    return content


def query_reply_content(info: NodeInfo) -> RecordDict:
    """The content of a SuperNode's reply to a query message."""
    return RecordDict({"metrics": MetricRecord({
        "partition-id": info.partition_id, "num-partitions": info.num_partitions,
    })})


def _error_reason(reply: Message) -> str:
    reason = reply.error.reason or f"error code {reply.error.code}"
    return reason.strip().splitlines()[-1] if reason.strip() else f"error code {reply.error.code}"


def _count(metrics: Mapping[str, Any], key: str, minimum: int) -> int:
    value = metrics.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or value != int(value) or value < minimum:
        raise RejectedReply(f"metric {key!r} = {value!r}, expected an integer >= {minimum}")
    return int(value)


def parse_query_reply(reply: Message) -> NodeInfo:
    """A SuperNode's :class:`NodeInfo`; :class:`RejectedReply` (with the node's own reason) if it failed."""
    if reply.has_error():
        raise RejectedReply(_error_reason(reply))
    if "metrics" not in reply.content.metric_records:
        raise RejectedReply("no 'metrics' record")
    metrics = reply.content["metrics"]
    return NodeInfo(_count(metrics, "partition-id", 0), _count(metrics, "num-partitions", 1))


def parse_train_reply(reply: Message, dim: int, diagnostics: bool = False) -> TrainReply:
    """A client's :class:`TrainReply` (with ``diagnostics``, its record count and loss too), or
    :class:`RejectedReply` saying why it cannot be used."""
    if reply.has_error():
        raise RejectedReply(_error_reason(reply))
    content = reply.content
    if "arrays" not in content.array_records:
        raise RejectedReply("no 'arrays' record")
    delta = record_vector(content["arrays"], DELTA, dim)
    if not diagnostics:
        return TrainReply(delta)
    if "metrics" not in content.metric_records:
        raise RejectedReply("no 'metrics' record")
    metrics = content["metrics"]
    loss = metrics.get("train-loss")
    if isinstance(loss, bool) or not isinstance(loss, (int, float)) or not math.isfinite(loss):
        raise RejectedReply(f"metric 'train-loss' = {loss!r}, expected a finite number")
    return TrainReply(delta, _count(metrics, "num-samples", 1), float(loss))
