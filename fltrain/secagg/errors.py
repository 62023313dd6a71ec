"""Typed exceptions of the secure-aggregation protocol.

Every way a round can fail has its own class, so that a caller (the FedAvg server) can tell an abort for lack of
surviving clients (retry the round) from evidence of tampering (stop) — and so that no failure can ever be mistaken
for a sum.
"""

from __future__ import annotations

__all__ = ["SecAggError", "TooFewClientsError", "IntegrityError", "ReplayError", "ProtocolError"]


class SecAggError(Exception):
    """Base class of every exception the secure-aggregation protocol raises on purpose."""


class TooFewClientsError(SecAggError):
    """Fewer than the threshold ``t`` of clients (or of a client's share holders) survive a stage: the round aborts.

    Attributes:
        stage: the protocol stage at which the count fell short (``"advertise_keys"``, ``"share_keys"``,
            ``"masked_input"``, ``"unmasking"``).
        alive: how many were available.
        threshold: how many were required.
    """

    def __init__(self, stage: str, alive: int, threshold: int, detail: str = "") -> None:
        self.stage = stage
        self.alive = alive
        self.threshold = threshold
        suffix = f" ({detail})" if detail else ""
        super().__init__(
            f"secure aggregation aborted at stage {stage!r}: {alive} available, threshold t={threshold}{suffix}"
        )


class IntegrityError(SecAggError):
    """A ciphertext failed authentication (tampered, or addressed to someone else), or a reconstructed secret does
    not match its public commitment."""


class ReplayError(SecAggError):
    """A message belongs to another session or stage, or was delivered twice."""


class ProtocolError(SecAggError):
    """A message is well-formed and authentic but violates the protocol (inconsistent client lists, a request to
    reveal both kinds of share of one peer, a message out of order)."""
