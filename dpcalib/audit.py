"""The empirical lower bound on ε of a one-run privacy audit (Steinke, Nasr, Jagielski 2023).

The audit (Steinke, Nasr, Jagielski 2023, "Privacy auditing with one (1) training run", NeurIPS; arXiv:2305.08846).
``m`` canaries are each included in the training input independently with probability 1/2 (``S_i`` uniform on
{−1, +1}); after one run the auditor scores every canary, guesses "in" for the ``k+`` highest scores and "out" for
the ``k−`` lowest, abstains on the rest, and counts the ``v`` correct guesses out of ``r = k+ + k−``.

**The test.** If the run is (ε, δ)-DP with respect to adding or removing one canary, the number of correct guesses
``W`` is stochastically dominated, up to a δ term, by the correct answers of ε-DP randomised response
(their Theorem 3.1 for δ = 0, Theorem 5.2 with δ, in the form of their Appendix D's ``p_value_DP_audit``)::

    P[W ≥ v]  ≤  β + α · 2mδ,     β = P[Binomial(r, q_ε) ≥ v],  q_ε = e^ε / (1 + e^ε),
                                  α = max_{1 ≤ i ≤ v}  P[v − i ≤ Binomial(r, q_ε) < v] / i.

The right-hand side, capped at 1, is the p-value of "the run is (ε, δ)-DP" given ``v``. The lower bound at
confidence ``1 − p`` is the largest ε whose p-value is below ``p``: with probability at least ``1 − p`` over the
canaries' inclusion and the run's randomness, a run that is (ε, δ)-DP yields a bound ≤ ε. A run that is
(ε', δ)-DP for some ε' < ε is (ε, δ)-DP as well, so rejecting at ε rejects every smaller ε'.

**Numerics.** Both terms are tails of the binomial of *wrong* guesses ``F = r − W ~ Binomial(r, 1 − q_ε)``,
``1 − q_ε = 1 / (1 + e^ε)`` computed as ``expit(−ε)`` (no cancellation when ε is large):
``β = P[F ≤ r − v]`` (``scipy.stats.binom.cdf``, accurate in the tails), and the window sums of α are cumulative
sums of ``P[F = r − v + j]``, j = 1..v, in one vectorised pass. The search keeps the invariant "p-value(lo) < p"
(``lo`` starts at 0 only if 0 qualifies) and bisects to :data:`EPS_TOLERANCE`; the answer is ``lo``, a point at
which the test was actually evaluated and rejected, so rounding of the search can only make the bound smaller
(toward less claimed leakage), never larger.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import validation as check
from .errors import InvalidArgumentError

__all__ = ["EPS_TOLERANCE", "AuditBound", "audit_p_value", "audit_epsilon_lower"]

#: absolute width of the bisection bracket at which the search for the ε lower bound stops
EPS_TOLERANCE = 1e-6
#: the search looks no further than this ε (q_ε = 1 − 1/(1+e^700) is 1 in double precision anyway)
_EPS_MAX = 700.0


@dataclass(frozen=True)
class AuditBound:
    """The outcome of :func:`audit_epsilon_lower`: ``epsilon`` (the lower bound, 0 when the guesses reject no ε),
    its ``p_value`` (< 1 − ``confidence`` unless ``epsilon`` is 0) and the inputs ``m, r, v, delta``."""

    epsilon: float
    p_value: float
    m: int
    r: int
    v: int
    delta: float
    confidence: float


def _counts(m: object, r: object, v: object) -> tuple[int, int, int]:
    m = check.count("m", m)
    r = check.count("r", r, minimum=0, maximum=m)
    v = check.count("v", v, minimum=0, maximum=r)
    return m, r, v


def _p_value(m: int, r: int, v: int, eps: float, delta: float) -> float:
    from scipy import special, stats  # imported on use: importing dpcalib stays fast

    wrong = float(special.expit(-eps))  # 1 − q_ε = 1/(1 + e^ε)
    beta = float(stats.binom.cdf(r - v, r, wrong))  # P[F ≤ r − v] = P[W ≥ v]
    if delta == 0.0 or v == 0:
        return min(1.0, beta)
    window = np.cumsum(stats.binom.pmf(np.arange(r - v + 1, r + 1), r, wrong))  # P[v−i ≤ W < v], i = 1..v
    alpha = float(np.max(window / np.arange(1, v + 1)))
    return min(1.0, beta + alpha * 2.0 * m * delta)


def audit_p_value(m: int, r: int, v: int, eps: float, delta: float) -> float:
    """The p-value of "the run is (``eps``, ``delta``)-DP" after ``v`` correct guesses out of ``r`` on ``m``
    canaries (Steinke, Nasr, Jagielski 2023, Theorem 5.2 / Appendix D; see the module docstring)."""
    m, r, v = _counts(m, r, v)
    eps = check.non_negative("eps", eps)
    delta = check.real("delta", delta)
    if not 0.0 <= delta < 1.0:
        raise InvalidArgumentError("delta", delta, "in [0, 1)")
    return _p_value(m, r, v, eps, delta)


def audit_epsilon_lower(m: int, r: int, v: int, delta: float, confidence: float = 0.95) -> AuditBound:
    """The largest ε that ``v`` correct guesses out of ``r`` on ``m`` canaries reject at ``confidence`` (e.g. 0.95)
    for (ε, ``delta``)-DP: a lower bound on the run's ε (Steinke, Nasr, Jagielski 2023; see the module docstring).
    Rounds toward a smaller bound."""
    m, r, v = _counts(m, r, v)
    level = 1.0 - check.open_unit("confidence", confidence)
    delta = check.real("delta", delta)
    if not 0.0 <= delta < 1.0:
        raise InvalidArgumentError("delta", delta, "in [0, 1)")
    p0 = _p_value(m, r, v, 0.0, delta)
    if p0 >= level:
        return AuditBound(0.0, p0, m, r, v, delta, confidence)
    lo, hi = 0.0, 1.0
    while hi < _EPS_MAX and _p_value(m, r, v, hi, delta) < level:
        lo, hi = hi, min(_EPS_MAX, 2.0 * hi)
    while hi - lo > EPS_TOLERANCE:
        mid = 0.5 * (lo + hi)
        if _p_value(m, r, v, mid, delta) < level:
            lo = mid
        else:
            hi = mid
    return AuditBound(lo, _p_value(m, r, v, lo, delta), m, r, v, delta, confidence)
