"""One audited run: canaries planted in an ordinary fltrain run, guesses, the ε lower bound and the verdict.

:func:`run_audit` trains once through :func:`fltrain.run.run` (the ordinary code path: the run's privacy mode, its
secret source of noise and sampling, its clipping and its ledger), with the canaries planted through
:class:`fltrain.run.RunHooks`; then it scores the canaries from the released global model, guesses "in" for the
``k+`` highest scores and "out" for the ``k−`` lowest, and turns the ``v`` correct guesses out of ``r`` into the
lower bound ε_lower of :func:`dpcalib.audit_epsilon_lower` at the ledger's δ (Steinke, Nasr, Jagielski 2023).

**Verdict.** ``violation`` when ε_lower exceeds the ε the ledger accounts (a run that met its accounting would
produce that with probability at most 1 − confidence), else ``consistent``; ``no guarantee`` for ``--dp none``.
A consistent audit proves nothing about the guarantee (ε_lower is a lower bound, often far below a correct ε).

**Files** (in the run's ``--out``, besides the run's own):

- ``audit.json`` (public): the settings of the audit, ``r``, ``v``, ε_lower, its p-value, the accounted ε and δ,
  the verdict and, for a violation, its likely causes; the same summary is added to ``summary.json`` under
  ``"audit"``. ``v`` is a function of the released model and of the auditor's own canaries, never of a real
  record beyond what the model releases;
- ``audit/canaries.json`` (the auditor's, private): the inclusion of every canary, its score and its design. Whoever
  holds it learns which canaries were included, nothing about the real records.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import dpcalib
from dpcalib import validation as check

from ..config import ConfigError, RunConfig
from ..run import SUMMARY, Progress, run
from .blackbox import MislabelledCanaries
from .canaries import Canaries, guess
from .clients import DiracClients
from .whitebox import DiracCanaries

__all__ = ["THREATS", "AUDIT", "CANARIES", "AuditResult", "run_audit", "LIKELY_CAUSES"]

THREATS = ("white-box", "black-box")
AUDIT = "audit.json"
CANARIES = "audit/canaries.json"

#: what makes a run leak more than its ledger says, most likely first
LIKELY_CAUSES = (
    "the DP noise is not added, or its standard deviation is below sigma x clip",
    "per-sample clipping is not applied, or bounds another norm than the one the noise is scaled to",
    "records are sampled at a rate above the accounted q, or not independently (not Poisson sampling)",
    "more steps or rounds release the model than the ledger charges",
    "the training depends on the data outside the noisy sums (a data-dependent normaliser or divisor)",
    "by chance: a run that meets its accounting shows a violation with probability at most 1 - confidence",
)


@dataclass(frozen=True)
class AuditResult:
    """The outcome of an audit (the public part, as ``audit.json`` holds it)."""

    threat: str
    canaries: int
    canaries_included: int
    k_plus: int
    k_minus: int
    guesses: int
    correct: int
    confidence: float
    delta: float
    epsilon_lower: float
    p_value: float
    epsilon_accounted: float | None
    verdict: str
    likely_causes: list[str]
    dp: str
    seconds: float

    def line(self) -> str:
        """The audit in one line (the CLI prints it)."""
        accounted = "none" if self.epsilon_accounted is None else f"{self.epsilon_accounted:.4g}"
        return (f"audit ({self.threat}, {self.canaries} canaries): {self.correct}/{self.guesses} guesses correct, "
                f"epsilon_lower = {self.epsilon_lower:.4g} ({self.confidence:.0%}, delta = {self.delta:g}), "
                f"epsilon accounted = {accounted}: {self.verdict}")


def _canaries(threat: str, m: int, cfg: RunConfig) -> Canaries:
    if cfg.dp == "client":
        return DiracClients(m, clip=cfg.client.clip)
    if threat == "white-box":
        return DiracCanaries(m, clip=cfg.sample.clip if cfg.dp == "sample" else None)
    return MislabelledCanaries(m)


def run_audit(cfg: RunConfig, *, threat: str = "white-box", canaries: int = 1000, guesses: int | None = None,
              confidence: float = 0.95, delta: float | None = None,
              progress: Progress | None = None) -> AuditResult:
    """Audit one run of ``cfg`` with ``canaries`` canaries of ``threat`` (``white-box`` or ``black-box``),
    ``guesses`` guesses (default half the canaries; half "in" on the top scores, half "out" on the bottom ones) at
    ``confidence``. δ is the ledger's (``delta`` for ``--dp none``, default 1e-5). A ``--dp client`` run is audited
    with white-box canary clients (:mod:`.clients`). Writes the files of the module docstring in ``cfg.out``."""
    if threat not in THREATS:
        raise dpcalib.InvalidArgumentError("threat", threat, "one of " + ", ".join(THREATS))
    m = check.count("canaries", canaries, minimum=2)
    r = m // 2 if guesses is None else check.count("guesses", guesses, minimum=1, maximum=m)
    confidence = check.open_unit("confidence", confidence)
    if cfg.dp == "client" and (threat != "white-box" or cfg.client_sampling != "poisson"):
        raise ConfigError("--dp client is audited with white-box canary clients (--threat white-box) joining a "
                          "Poisson cohort (not --client-sampling fixed or --secure-agg)")
    if cfg.dp != "none":
        if delta is not None:
            raise ConfigError("--audit-delta is for --dp none; a DP run is audited at its ledger's delta")
        delta = cfg.resolved_delta
    else:
        delta = 1e-5 if delta is None else check.open_unit("audit_delta", delta)
    planted = _canaries(threat, m, cfg)
    began = time.perf_counter()
    summary = run(cfg, progress=progress, hooks=planted)
    scores = planted.scores()
    k_plus = r // 2
    outcome = guess(scores, planted.included, k_plus, r - k_plus)
    bound = dpcalib.audit_epsilon_lower(m, outcome.r, outcome.v, delta, confidence)
    accounted = summary.epsilon
    if accounted is None:
        verdict, causes = "no guarantee (dp = none)", []
    elif bound.epsilon > accounted:
        verdict, causes = "violation", list(LIKELY_CAUSES)
    else:
        verdict, causes = "consistent", []
    result = AuditResult(
        threat=threat, canaries=m, canaries_included=int(planted.included.sum()), k_plus=outcome.k_plus,
        k_minus=outcome.k_minus, guesses=outcome.r, correct=outcome.v, confidence=confidence, delta=delta,
        epsilon_lower=bound.epsilon, p_value=bound.p_value, epsilon_accounted=accounted, verdict=verdict,
        likely_causes=causes, dp=cfg.dp, seconds=round(time.perf_counter() - began, 3),
    )
    _write(Path(cfg.out), result, planted, scores)
    return result


def _write(out: Path, result: AuditResult, planted: Canaries, scores: Any) -> None:
    (out / AUDIT).write_text(json.dumps(asdict(result), indent=2) + "\n")
    private = out / CANARIES
    private.parent.mkdir(exist_ok=True)
    private.write_text(json.dumps({
        "private": "the auditor's: which canaries were included, and their scores",
        "included": planted.included.tolist(), "scores": [float(s) for s in scores], **planted.describe(),
    }) + "\n")
    summary = json.loads((out / SUMMARY).read_text())
    summary["audit"] = {"threat": result.threat, "epsilon_lower": result.epsilon_lower,
                        "epsilon_accounted": result.epsilon_accounted, "verdict": result.verdict,
                        "details": AUDIT}
    (out / SUMMARY).write_text(json.dumps(summary, indent=2) + "\n")
