"""fltrain: federated learning (FedAvg) with differential privacy, the noise calibrated by :mod:`dpcalib`.

The pieces (see ``docs/fltrain.md``): :mod:`~fltrain.config` (a run, one nested section per privacy mode),
:mod:`~fltrain.privacy` (one object per privacy mode: plan, cohort, client and server steps, ledger, releases),
:mod:`~fltrain.randomness` (the secret source of DP noise and sampling), :mod:`~fltrain.data` (datasets,
partitions), :mod:`~fltrain.models`, :mod:`~fltrain.sampling` (DP-SGD's batch samplers), :mod:`~fltrain.dpsgd`
(per-sample clipping and noise), :mod:`~fltrain.client` (local training), :mod:`~fltrain.fedavg` (the server),
:mod:`~fltrain.run` (a whole run), :mod:`~fltrain.audit` (one-run privacy audit with canaries) and
:mod:`~fltrain.cli`.

A run from Python: ``from fltrain.run import run; run(RunConfig(...))``.
"""

from .config import ConfigError, RunConfig

__all__ = ["ConfigError", "RunConfig"]
