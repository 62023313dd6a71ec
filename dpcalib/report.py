"""What a run's privacy guarantee means for a membership-inference attacker: an operational risk report.

Membership inference as a hypothesis test. An attacker sees the trained model and must decide whether a record x
was in the training set (H1) or not (H0). Any test has a false-positive rate α (non-members flagged) and a
true-positive rate β (members flagged). Its best achievable type-II error 1 − β at type-I error α, over all tests
and all pairs of neighbouring datasets, is the mechanism's *trade-off function* f (Dong, Roth, Su 2022, "Gaussian
differential privacy", f-DP); the attacker's TPR at FPR α is at most 1 − f(α).

From the privacy profile to a trade-off curve. A mechanism that is (ε, δ(ε))-DP for every ε in a set E — both ways
round, as add/remove neighbouring is symmetric — is f-DP with (Dong, Roth, Su 2022, Sec. 2, the primal–dual view;
Kairouz, Oh, Viswanath 2015)

    f(α) = sup_{ε ∈ E} max(0, 1 − δ(ε) − e^ε α, e^{−ε}(1 − δ(ε) − α)).

Each term is valid on its own, so any finite E gives a *valid lower bound* on the type-II error (an upper bound on
the attacker's TPR), and every pair added to E only tightens it. δ(ε) is the accountant's ``delta(eps)``: an upper
bound of the true profile (and larger δ gives a smaller f), so the curve stays a valid bound; the PLD accountant's
profile is the maximum over its two dominating pairs (add and remove), which makes it symmetric. E is a uniform
grid from ε = 0 to ε(δ = 1e-10), refined by golden-section search around the best grid point for every false-positive
rate asked about (1 − δ(ε) − e^ε α is concave in e^ε where δ is convex in e^ε, as the PLD's chord-wise profile is).

Neyman–Pearson on the discrete PLD would give the trade-off of the discretised dominating pair directly, but it
needs that pair to dominate for every ε ∈ ℝ (including ε < 0), the truncated and round-off mass and both directions
handled again by hand; the formula above needs only the accountant's published upper bounds δ(ε), ε ≥ 0, so it is
valid for any accountant (RDP included) by the same argument.

Summaries: the largest advantage TPR − FPR of any test is at most the total-variation bound δ(0); an attacker that
flags records at FPR α, on a population where a fraction π (the prior) are members, is right about a flagged record
with probability at most π·β / (π·β + (1 − π)·α), β the TPR bound (the posterior probability of membership given a
flag; it grows with β).

μ-GDP approximation. The central limit theorem for composition (Dong, Roth, Su 2022, Sec. 3 and 5; Bu, Dong,
Long, Su 2020) approximates T steps of the Poisson-subsampled Gaussian by μ-GDP with μ = q·√(T (e^{1/σ²} − 1)),
and T Gaussian steps (q = 1) are exactly μ-GDP with μ = √T/σ; μ² adds over phases. The GDP trade-off is
G_μ(α) = Φ(Φ⁻¹(1 − α) − μ), i.e. TPR = Φ(Φ⁻¹(α) + μ). It is an approximation, not a bound: for small T or large q it
can report a smaller TPR than the certified bound (Gopi, Lee, Wutschitz 2021), and the report
says so when it does by more than :data:`GDP_TOLERANCE`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from .accountant import Accountant, PldAccountant, leaf_counts, make_accountant
from .errors import InvalidArgumentError, UnsupportedEventError
from .events import Composed, Event, Gaussian, Neighbouring, PoissonSampled, Repeated
from . import validation as check

__all__ = [
    "DEFAULT_DELTAS",
    "DEFAULT_FPRS",
    "GDP_TOLERANCE",
    "TradeOff",
    "AttackBound",
    "RiskReport",
    "privacy_profile",
    "tradeoff",
    "gdp_mu",
    "gdp_tpr",
    "risk_report",
    "save_plot",
]

#: the δ at which a report states ε
DEFAULT_DELTAS = (1e-4, 1e-5, 1e-6)
#: the attacker false-positive rates at which a report bounds the true-positive rate
DEFAULT_FPRS = (1e-4, 1e-3, 1e-2, 0.1)
#: the μ-GDP approximation is said to understate the risk when its TPR is this much (relative) below the PLD bound,
#: a margin above the PLD curve's own discretisation excess (under 0.2 % on the closed-form tests)
GDP_TOLERANCE = 0.01
#: the grid E of ε runs from 0 to ε(_DELTA_FLOOR): beyond it δ(ε) is negligible for every FPR reported or plotted
_DELTA_FLOOR = 1e-10
#: the largest ε on the grid (e^ε stays finite; a smaller grid is still valid, only looser at tiny FPR)
_EPS_CAP = 500.0
_GRID_POINTS = 128
_GOLDEN_STEPS = 24  # shrinks a bracket of two grid cells by 0.618^24 ≈ 1e-5
_CURVE_FPRS = np.unique(np.concatenate((np.logspace(-6.0, 0.0, 61), np.linspace(0.0, 1.0, 101))))


@dataclass(frozen=True)
class TradeOff:
    """A lower bound on the trade-off function from the guarantees (ε_i, δ_i): the mechanism is (ε_i, δ_i)-DP.

    ``eps`` is sorted and starts at 0, so ``delta[0]`` bounds the total-variation distance.
    """

    eps: np.ndarray
    delta: np.ndarray

    def type_ii(self, fpr: Sequence[float] | np.ndarray | float) -> np.ndarray:
        """f(α) = max_i max(0, 1 − δ_i − e^{ε_i} α, e^{−ε_i}(1 − δ_i − α)): a lower bound on any test's type-II error."""
        alpha = np.atleast_1d(np.asarray(fpr, dtype=float))[:, None]
        eps, slack = self.eps[None, :], 1.0 - self.delta[None, :]
        first = slack - np.exp(eps) * alpha
        second = np.exp(-eps) * (slack - alpha)
        return np.clip(np.maximum(first, second).max(axis=1), 0.0, 1.0)

    def tpr(self, fpr: Sequence[float] | np.ndarray | float) -> np.ndarray:
        """1 − f(α): an upper bound on the true-positive rate of any membership test with false-positive rate α."""
        return 1.0 - self.type_ii(fpr)

    @property
    def advantage(self) -> float:
        """δ(0): an upper bound on TPR − FPR of any test (the total-variation distance)."""
        return float(self.delta[0])


def _delta_at(accountant: Accountant, eps: float) -> float:
    """The accountant's δ(ε) upper bound; at ε = 0 the PLD accountant's bound is its PLD's (its ``delta`` wants ε > 0)."""
    if eps == 0.0 and isinstance(accountant, PldAccountant) and accountant.history:
        return accountant.distribution().delta(0.0)
    return accountant.delta(eps)


def privacy_profile(accountant: Accountant, eps: Sequence[float] | np.ndarray) -> np.ndarray:
    """δ(ε) at each ε ≥ 0 of ``eps``: the accountant's upper bounds, one query each."""
    return np.array([_delta_at(accountant, check.non_negative("eps", float(e))) for e in np.asarray(eps, float)])


def tradeoff(accountant: Accountant, fprs: Sequence[float] = DEFAULT_FPRS, points: int = _GRID_POINTS) -> TradeOff:
    """The trade-off lower bound from ``accountant``'s privacy profile, tight near each false-positive rate of ``fprs``.

    E: ``points`` equally spaced ε from 0 to ε(1e-10) (at most 500), then, for each α in ``fprs``, a golden-section
    search of 1 − δ(ε) − e^ε α over the two grid cells around its best grid point; every ε visited joins E.
    """
    points = check.count("points", points, minimum=2)
    fprs = [check.open_unit("fpr", a) for a in fprs]
    if not accountant.history:
        raise InvalidArgumentError("accountant", accountant, "an accountant with at least one composed event")
    top = min(accountant.epsilon(_DELTA_FLOOR), _EPS_CAP)
    grid = np.linspace(0.0, top, points)
    found = dict(zip(grid.tolist(), privacy_profile(accountant, grid).tolist()))
    ratio = (math.sqrt(5.0) - 1.0) / 2.0

    def gain(e: float, alpha: float) -> float:
        if e not in found:
            found[e] = _delta_at(accountant, e)
        return 1.0 - found[e] - math.exp(e) * alpha

    for alpha in fprs:
        best = int(np.argmax([gain(e, alpha) for e in grid]))
        lo, hi = float(grid[max(best - 1, 0)]), float(grid[min(best + 1, points - 1)])
        a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
        for _ in range(_GOLDEN_STEPS):
            if gain(a, alpha) >= gain(b, alpha):
                hi, b = b, a
                a = hi - ratio * (hi - lo)
            else:
                lo, a = a, b
                b = lo + ratio * (hi - lo)
    eps = np.array(sorted(found))
    return TradeOff(eps, np.array([found[e] for e in eps.tolist()]))


def gdp_mu(event: Event) -> float | None:
    """μ of the μ-GDP (central-limit) approximation of ``event``, or ``None`` for events it does not cover.

    μ² = Σ over leaves of count × (1/σ² for a Gaussian or q = 1, exact; q²(e^{1/σ²} − 1) for Poisson sampling, the
    CLT of Dong, Roth, Su 2022, Sec. 5). Sampling without replacement is not covered.
    """
    total = 0.0
    for leaf, count in leaf_counts(event).items():
        if isinstance(leaf, Gaussian):
            q, sigma = 1.0, leaf.sigma
        elif isinstance(leaf, PoissonSampled) and isinstance(leaf.event, Gaussian):
            q, sigma = leaf.q, leaf.event.sigma
        else:
            return None
        total += count / sigma**2 if q == 1.0 else count * q * q * math.expm1(1.0 / sigma**2)
    return math.sqrt(total)


def gdp_tpr(mu: float, fpr: Sequence[float] | np.ndarray | float) -> np.ndarray:
    """1 − G_μ(α) = Φ(Φ⁻¹(α) + μ): the TPR at FPR α of the optimal test between N(0, 1) and N(μ, 1)."""
    from scipy import special

    return special.ndtr(special.ndtri(np.asarray(fpr, dtype=float)) + check.non_negative("mu", mu))


@dataclass(frozen=True)
class AttackBound:
    """At false-positive rate ``fpr``: the TPR bound, the bound on P(member | flagged), and μ-GDP's TPR (or None)."""

    fpr: float
    tpr: float
    posterior: float
    gdp_tpr: float | None


@dataclass(frozen=True)
class RiskReport:
    """A run's privacy guarantee read as membership-inference risk; see :func:`risk_report`."""

    accountant: str
    epsilons: tuple[tuple[float, float], ...]  # (δ, ε upper bound)
    prior: float
    advantage: float
    attacks: tuple[AttackBound, ...]
    gdp_mu: float | None
    gdp_understates: tuple[float, ...]  # the FPRs at which μ-GDP's TPR is below the PLD bound by > GDP_TOLERANCE
    curve: TradeOff

    def as_dict(self) -> dict[str, Any]:
        """A JSON-serialisable form; the curve as TPR bounds at a fixed set of false-positive rates."""
        return {
            "accountant": self.accountant,
            "epsilon": [{"delta": d, "eps": e} for d, e in self.epsilons],
            "prior": self.prior,
            "advantage": self.advantage,
            "attacks": [vars(a) for a in self.attacks],
            "gdp_mu": self.gdp_mu,
            "gdp_understates_at_fpr": list(self.gdp_understates),
            "curve": {"fpr": _CURVE_FPRS.tolist(), "tpr": self.curve.tpr(_CURVE_FPRS).tolist()},
        }


def _composed(source: Event | Accountant, accountant: str) -> Accountant:
    if isinstance(source, Accountant):
        return source
    return make_accountant(accountant).compose(source)


def risk_report(
    source: Event | Accountant,
    *,
    accountant: str = "pld",
    deltas: Sequence[float] = DEFAULT_DELTAS,
    fprs: Sequence[float] = DEFAULT_FPRS,
    prior: float = 0.5,
) -> RiskReport:
    """The membership-inference risk of ``source``: an event (composed under ``accountant``) or a composed accountant.

    ε at each δ of ``deltas``; the trade-off lower bound (:func:`tradeoff`); at each FPR of ``fprs`` the TPR bound,
    the bound on P(member | flagged) for the given ``prior`` P(member), and the μ-GDP approximation's TPR; the
    largest advantage δ(0). μ-GDP is compared with the PLD bound (built for the purpose under ``accountant="rdp"``;
    no comparison when the event has no PLD). Every number but μ-GDP's is an upper bound on the risk.
    """
    acc = _composed(source, accountant)
    deltas = [check.open_unit("delta", d) for d in deltas]
    fprs = [check.open_unit("fpr", a) for a in fprs]
    prior = check.open_unit("prior", prior)
    curve = tradeoff(acc, fprs)
    tprs = curve.tpr(fprs)
    mu = gdp_mu(_history_event(acc)) if acc.neighbouring is Neighbouring.ADD_REMOVE else None
    gdp = None if mu is None else gdp_tpr(mu, fprs)
    understates: tuple[float, ...] = ()
    if gdp is not None:
        pld_tprs = tprs if isinstance(acc, PldAccountant) else _pld_tprs(acc, fprs)
        if pld_tprs is not None:
            understates = tuple(a for a, g, b in zip(fprs, gdp, pld_tprs) if g < (1.0 - GDP_TOLERANCE) * b)
    attacks = tuple(
        AttackBound(a, float(t), float(prior * t / (prior * t + (1.0 - prior) * a)), None if gdp is None else float(g))
        for a, t, g in zip(fprs, tprs, gdp if gdp is not None else [None] * len(fprs))
    )
    return RiskReport(
        accountant=acc.name,
        epsilons=tuple((d, acc.epsilon(d)) for d in deltas),
        prior=prior,
        advantage=curve.advantage,
        attacks=attacks,
        gdp_mu=mu,
        gdp_understates=understates,
        curve=curve,
    )


def _history_event(acc: Accountant) -> Event:
    """Everything ``acc`` composed, as one event."""
    return Composed(tuple(Repeated(event, count) for event, count in acc.history))


def _pld_tprs(acc: Accountant, fprs: Sequence[float]) -> np.ndarray | None:
    """The PLD accountant's TPR bounds for ``acc``'s history, or ``None`` if it has no PLD."""
    pld = PldAccountant()
    try:
        for event, count in acc.history:
            pld.compose(event, count)
    except UnsupportedEventError:
        return None
    return tradeoff(pld, fprs).tpr(fprs)


def save_plot(report: RiskReport, path: str, title: str = "") -> None:
    """Draw ``report``'s trade-off curve against random guessing into ``path`` (needs matplotlib, extra ``plot``).

    Left: the lower bound on the attacker's type-II error (1 − TPR) against FPR, with random guessing (1 − FPR) and
    the μ-GDP curve. Right: the TPR bound against FPR on log axes, the reported FPRs marked. Raises ImportError
    without matplotlib; matplotlib is imported here only.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fpr = _CURVE_FPRS
    tpr = report.curve.tpr(fpr)
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4.2))
    left.plot(fpr, 1.0 - tpr, label=f"bound ({report.accountant}): no attack does better")
    left.plot(fpr, 1.0 - fpr, "k:", label="random guessing")
    logs = np.logspace(-6.0, 0.0, 61)
    right.loglog(logs, report.curve.tpr(logs), label=f"TPR bound ({report.accountant})")
    right.loglog(logs, logs, "k:", label="random guessing")
    if report.gdp_mu is not None:
        left.plot(fpr, 1.0 - gdp_tpr(report.gdp_mu, fpr), "--", label=f"μ-GDP approximation (μ = {report.gdp_mu:.3g})")
        right.loglog(logs, gdp_tpr(report.gdp_mu, logs), "--", label="μ-GDP approximation")
    right.plot([a.fpr for a in report.attacks], [a.tpr for a in report.attacks], "o", color="C0")
    left.set(xlabel="false-positive rate (type I error)", ylabel="type II error = 1 − TPR", xlim=(0, 1), ylim=(0, 1),
             title="trade-off curve (f-DP)")
    right.set(xlabel="false-positive rate", ylabel="true-positive rate, at most", xlim=(1e-6, 1), ylim=(1e-6, 1),
              title="membership-inference ROC bound")
    for ax in (left, right):
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
