"""An in-process Flower Grid for fast tests: it hands each message to fltrain's real ClientApp handlers, as the
SuperNode whose node config it holds would, and can make chosen nodes misbehave."""

from __future__ import annotations

import uuid
from typing import Callable, Iterable

import numpy as np
from flwr.app import Array, Context, Error, Message, MessageType, RecordDict
from flwr.serverapp import Grid

from fltrain.flower.client_app import handle_query, handle_train

#: a fault turns the reply a node would send (or the exception it raised) into what it sends instead: a message,
#: several (a node that answers twice), or None (silence)
Fault = Callable[[Message, "Message | None"], "Message | list[Message] | None"]


def nan_delta(message: Message, reply: Message | None) -> Message:
    """Reply with a delta full of NaN."""
    arrays = reply.content["arrays"]
    arrays["delta"] = Array(np.full(arrays["delta"].shape, np.nan, dtype=np.float32))
    return reply


def wrong_shape(message: Message, reply: Message | None) -> Message:
    """Reply with a delta one element short."""
    arrays = reply.content["arrays"]
    arrays["delta"] = Array(arrays["delta"].numpy()[:-1].copy())
    return reply


def scaled_delta(factor: float) -> Fault:
    """Reply with the delta multiplied by ``factor`` (an oversized update)."""
    def fault(message: Message, reply: Message | None) -> Message:
        arrays = reply.content["arrays"]
        arrays["delta"] = Array((arrays["delta"].numpy() * np.float32(factor)).astype(np.float32))
        return reply
    return fault


def crash(message: Message, reply: Message | None) -> Message:
    """Reply with an error, as Flower does when the ClientApp raises."""
    return Message(Error(code=0, reason="<class 'RuntimeError'>:<'node crashed'>"), reply_to=message)


def answer_then_error(message: Message, reply: Message | None) -> list[Message]:
    """The reply, then an error for the same message (what a SuperNode sends when the ClientApp's task token
    expires after it replied)."""
    return [reply, crash(message, reply)]


def error_then_answer(message: Message, reply: Message | None) -> list[Message]:
    """An error, then the reply, for the same message."""
    return [crash(message, reply), reply]


def silent(message: Message, reply: Message | None) -> None:
    """Never reply (a node that died or hangs)."""
    return None


class FakeGrid(Grid):
    """``node_configs[i]`` is the node config of node id ``1000 + i``; ``faults`` maps a node id to a
    :data:`Fault` applied to its train replies."""

    def __init__(self, node_configs: list[dict], run_config: dict, faults: dict[int, Fault] | None = None) -> None:
        self.contexts = {1000 + i: Context(run_id=1, node_id=1000 + i, node_config=dict(config), state=RecordDict(),
                                           run_config=dict(run_config))
                         for i, config in enumerate(node_configs)}
        self.faults = faults or {}
        self.sent: list[Message] = []
        self._replies: dict[str, list[Message]] = {}

    @property
    def run(self):  # pragma: no cover - not used by fltrain
        raise NotImplementedError

    def set_run(self, run) -> None:  # pragma: no cover - not used by fltrain
        raise NotImplementedError

    def create_message(self, *args, **kwargs):  # pragma: no cover - deprecated in Flower
        raise NotImplementedError

    def get_node_ids(self) -> Iterable[int]:
        return list(self.contexts)

    def _handle(self, message: Message) -> Message | list[Message] | None:
        context = self.contexts[message.metadata.dst_node_id]
        handler = handle_query if message.metadata.message_type == MessageType.QUERY else handle_train
        try:
            reply = handler(message, context)
        except Exception as error:  # what Flower does with an exception in a ClientApp
            reply = Message(Error(code=0, reason=f"{type(error)}:<{error!r}>"), reply_to=message)
        fault = self.faults.get(message.metadata.dst_node_id)
        if fault is not None and message.metadata.message_type == MessageType.TRAIN:
            reply = fault(message, reply)
        return reply

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        ids = []
        for message in messages:
            message.metadata.__dict__["_message_id"] = uuid.uuid4().hex
            message.metadata.__dict__["_src_node_id"] = 1
            self.sent.append(message)
            reply = self._handle(message)
            if reply is not None:
                self._replies[message.metadata.message_id] = reply if isinstance(reply, list) else [reply]
            ids.append(message.metadata.message_id)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return [reply for i in list(message_ids) if i in self._replies for reply in self._replies.pop(i)]

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        return self.pull_messages(self.push_messages(messages))
