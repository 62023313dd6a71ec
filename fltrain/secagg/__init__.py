"""Secure aggregation for fltrain: the server learns the sum of the clients' vectors and nothing else.

Bonawitz et al. (CCS 2017) in the variant against a malicious server (signed messages, a consistency check),
with dropouts at every stage, and SecAgg+ (Bell et al., CCS 2020) over a sparse random graph for many clients.
Modules: :mod:`.encoding` (fixed point in Z_(2^k)), :mod:`.discrete` (integer vectors: rotation, rounding,
the ring codec), :mod:`.shamir` (threshold sharing), :mod:`.crypto` (X25519, Ed25519, HKDF, AES-GCM, AES-CTR
from ``cryptography``), :mod:`.graph` (who shares with whom), :mod:`.messages` (the wire), :mod:`.protocol`
(client, server, one in-process round), :mod:`.errors`.
"""

from .discrete import DiscreteCodec, RingCodec, RoundingError
from .encoding import FixedPoint, Ring
from .errors import (
    ConsistencyError,
    IntegrityError,
    ProtocolError,
    ReplayError,
    SecAggError,
    TooFewClientsError,
    UnsafeThresholdError,
)
from .graph import complete_graph, harary_graph, secagg_plus_degree
from .protocol import (
    DEFAULT_MIN_THRESHOLD,
    STAGES,
    AggregationResult,
    Client,
    RoundCost,
    SecAggParams,
    Server,
    new_identities,
    new_session,
    run_secure_aggregation,
)

__all__ = [
    "FixedPoint",
    "Ring",
    "RingCodec",
    "DiscreteCodec",
    "RoundingError",
    "SecAggError",
    "TooFewClientsError",
    "IntegrityError",
    "ReplayError",
    "ProtocolError",
    "UnsafeThresholdError",
    "ConsistencyError",
    "complete_graph",
    "harary_graph",
    "secagg_plus_degree",
    "STAGES",
    "DEFAULT_MIN_THRESHOLD",
    "SecAggParams",
    "Client",
    "Server",
    "AggregationResult",
    "RoundCost",
    "new_session",
    "new_identities",
    "run_secure_aggregation",
]
