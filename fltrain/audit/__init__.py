"""One-run privacy auditing of fltrain runs (Steinke, Nasr, Jagielski 2023): canaries planted in an ordinary run,
each included with probability 1/2, and the lower bound on ε that the guesses on their scores prove.

- :mod:`.canaries`: the secret inclusion coins, the guesses, the hooks the canaries enter a run through;
- :mod:`.whitebox`: Dirac gradient canaries at the per-sample-gradient level, scored against control coordinates;
- :mod:`.blackbox`: mislabelled records, scored by the final model's loss;
- :mod:`.audit`: :func:`run_audit`, the verdict and the files.

The statistics (the ε lower bound from ``r`` guesses, ``v`` correct, ``m`` canaries) are
:func:`dpcalib.audit_epsilon_lower`, torch-free. ``fltrain audit`` is the command line; see docs/audit.md.
"""

from .audit import AUDIT, CANARIES, LIKELY_CAUSES, THREATS, AuditResult, run_audit

__all__ = ["AUDIT", "CANARIES", "LIKELY_CAUSES", "THREATS", "AuditResult", "run_audit"]
