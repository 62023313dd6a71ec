"""Typed exceptions of the secure-aggregation protocol.

Every way a round can fail has its own class, so that a caller (the FedAvg server) can tell an abort for lack of
surviving clients (retry the round) from evidence of tampering or of a deviating server (stop) — and so that no
failure can ever be mistaken for a sum. Every exception the protocol raises on malformed or tampered input is a
:class:`SecAggError`; argument errors of the library functions are :class:`dpcalib.errors.InvalidArgumentError`.
"""

from __future__ import annotations

__all__ = [
    "SecAggError",
    "TooFewClientsError",
    "IntegrityError",
    "ReplayError",
    "ProtocolError",
    "UnsafeThresholdError",
    "ConsistencyError",
]


class SecAggError(Exception):
    """Base class of every exception the secure-aggregation protocol raises on purpose."""


class TooFewClientsError(SecAggError):
    """Fewer than the threshold ``t`` of clients (or of a client's share holders) survive a stage: the round aborts.

    Attributes:
        stage: the protocol stage at which the count fell short (one of :data:`fltrain.secagg.STAGES`).
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
    """A ciphertext or signature failed verification (tampered, forged, or addressed to someone else), or a
    reconstructed secret does not match its public commitment."""


class ReplayError(SecAggError):
    """A message belongs to another session or stage, or was delivered twice."""


class ProtocolError(SecAggError):
    """A message is malformed, or well-formed and authentic but violates the protocol (inconsistent client lists, a
    request to reveal both kinds of share of one peer, a message out of order, an id outside [1, 2^32 - 1])."""


class UnsafeThresholdError(ProtocolError):
    """The threshold ``t`` would not protect this client's secrets among the share holders it is shown: ``2t`` does
    not exceed the number of holders (two disjoint groups of holders could each reach ``t``), or ``t`` is below the
    client's own floor. Raised by the client, whatever the server claims."""


class ConsistencyError(ProtocolError):
    """The consistency check failed: a relayed signature is not a valid signature of its signer over the survivor
    set this client was shown (the server showed different survivor sets to different clients, or a list was
    altered in transit). The client reveals no share."""
