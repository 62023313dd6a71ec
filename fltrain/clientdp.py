"""Client-level (user-level) differential privacy for federated averaging: DP-FedAvg with adaptive clipping.

The guarantee is about a whole client: two federations that differ by one client's entire data set (add/remove
neighbouring at the level of clients) are hard to tell apart from everything the server releases.

Mechanism, one round (McMahan, Ramage, Talwar, Zhang 2018, "Learning differentially private recurrent language
models", DP-FedAvg with the fixed-denominator estimator):

1. **Poisson client sampling**: every one of the ``N`` clients takes part independently with probability
   ``q = m / N`` where ``m`` is the expected number of clients per round (:func:`poisson_sample_clients`).
2. Each sampled client trains locally *without* noise and sends its model delta ``Δ_i`` (a flat vector).
3. The server clips every delta to L2 norm ``C`` (:func:`clip_deltas`), sums, adds Gaussian noise of std
   ``z_Δ·C`` and divides by the *expected* number of clients ``m`` (never by the realised count, which would leak
   it and is not what the accountant analyses) (:class:`ClientDPAggregator`).
4. A server optimiser (:mod:`fltrain.serveropt`: FedAvgM or FedAdam) applies the noisy mean as its update;
   being post-processing, it costs no privacy.

**Adaptive clipping** (Andrew, Thakkar, McMahan, Ramaswamy 2021, "Differentially private learning with adaptive
clipping"): ``C`` follows the ``γ``-quantile of the update norms by the geometric update
``C ← C·exp(−η_C·(b̄ − γ))`` where ``b̄`` is a noisy estimate of the fraction of clients whose delta norm is at most
``C``. Each client contributes ``b_i − 1/2`` (sensitivity 1/2 under add/remove) to a sum released with Gaussian
noise ``σ_b``, and ``b̄ = (Σ(b_i − 1/2) + N(0, σ_b²)) / m + 1/2``. The round therefore releases two Gaussian
queries about the same sampled clients: the delta sum (sensitivity ``C``, noise ``z_Δ·C``) and the count
(sensitivity 1/2, noise ``σ_b``). Together they are one Gaussian mechanism with noise multiplier ``z`` where
``z^{-2} = z_Δ^{-2} + (2σ_b)^{-2}`` (Andrew et al. 2021, Thm. 1), so the accountant sees a single
Poisson-subsampled Gaussian of multiplier ``z`` per round and the ε it reports covers both releases. Given the
``z`` that :func:`dpcalib.calibrate_sigma` returns for the budget, the sum gets
``z_Δ = (z^{-2} − (2σ_b)^{-2})^{-1/2}`` (:func:`sum_noise_multiplier`).

**Accounting** (:func:`plan_client_dp`): the event is ``Repeated(PoissonSampled(q, Gaussian(z)), rounds)``;
``z = dpcalib.calibrate_sigma(eps=ε, delta=δ, q=q, steps=rounds)``. δ defaults to ``1/N^1.1`` (smaller than
``1/N``, the probability of exposing one client outright); a δ ≥ ``1/N`` is allowed but warned about.

Departure from ARCHITECTURE.md: the architecture puts client-level DP inside ``fedavg.py``. It lives in this
module instead because it is one idea (client sampling, clipping, noise, adaptive clip and their accounting
belong together) and so that the engineers building ``fedavg.py`` and this mechanism do not edit one
file concurrently. ``fedavg.py`` calls it through its replaceable client-selection and aggregation steps.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

import torch

import dpcalib
from dpcalib.errors import InvalidArgumentError, check_count, check_open_unit, check_positive, check_rate
from dpcalib.events import Event, Gaussian, PoissonSampled, Repeated

__all__ = [
    "DEFAULT_COUNT_NOISE_FRACTION",
    "ClientDeltaWarning",
    "ClientDPPlan",
    "default_client_delta",
    "resolve_client_delta",
    "sum_noise_multiplier",
    "plan_client_dp",
    "poisson_sample_clients",
    "clip_deltas",
    "AdaptiveClip",
    "ClientDPAggregator",
]

#: Andrew et al. (2021, Sec. 3) recommend a count noise ``σ_b = m/20`` for ``m`` expected clients per round.
DEFAULT_COUNT_NOISE_FRACTION = 1.0 / 20.0


class ClientDeltaWarning(UserWarning):
    """δ is at least 1/(number of clients): the guarantee allows one client's data to be exposed outright."""


def default_client_delta(num_clients: int) -> float:
    """The default δ for ``num_clients`` clients: ``1/N^1.1``, strictly below ``1/N``."""
    n = check_count("num_clients", num_clients, minimum=2)
    return float(n) ** -1.1


def resolve_client_delta(delta: float | None, num_clients: int) -> float:
    """The user's δ (validated to lie in (0, 1)) or :func:`default_client_delta`; warns when δ ≥ 1/N."""
    n = check_count("num_clients", num_clients, minimum=2)
    if delta is None:
        return default_client_delta(n)
    d = check_open_unit("delta", delta)
    if d >= 1.0 / n:
        warnings.warn(
            f"delta={d:g} >= 1/clients = {1.0 / n:g}: a mechanism that publishes one client's data in the clear "
            f"satisfies this guarantee; use delta < 1/clients (default 1/clients^1.1 = {default_client_delta(n):.3g})",
            ClientDeltaWarning,
            stacklevel=2,
        )
    return d


def sum_noise_multiplier(noise_multiplier: float, count_noise_std: float) -> float:
    """The noise multiplier ``z_Δ`` left for the delta sum when the clipped-count query has noise ``σ_b``.

    Andrew et al. (2021, Thm. 1): releasing the sum (sensitivity C, noise ``z_Δ·C``) and the count of
    ``b_i − 1/2`` (sensitivity 1/2, noise ``σ_b``) is one Gaussian mechanism of multiplier ``z`` with
    ``z^{-2} = z_Δ^{-2} + (2σ_b)^{-2}``, hence ``z_Δ = (z^{-2} − (2σ_b)^{-2})^{-1/2}``. Requires ``2σ_b > z``.
    """
    z = check_positive("noise_multiplier", noise_multiplier)
    sb = check_positive("count_noise_std", count_noise_std)
    if 2.0 * sb <= z:
        raise InvalidArgumentError(
            "count_noise_std", count_noise_std, f"> noise_multiplier/2 = {z / 2:.6g} (the count would use all the noise)"
        )
    # log space: z^{-2} - (2 sb)^{-2} = z^{-2} (1 - (z / 2sb)^2)
    return z / math.sqrt(-math.expm1(2.0 * math.log(z / (2.0 * sb))))


@dataclass(frozen=True)
class ClientDPPlan:
    """A client-level DP training plan and its noise.

    Attributes:
        num_clients: N, the size of the client population.
        expected_clients: m, the expected number of clients per round (q = m/N).
        rounds: the number of rounds (one accounted step each).
        delta: the δ of the guarantee.
        noise_multiplier: z, the total noise multiplier that the accountant sees per round.
        count_noise_std: σ_b of the clipped-count query (0 with a fixed clip norm).
        sum_noise_multiplier: z_Δ, the multiplier of the noise on the sum of clipped deltas (equals z when fixed).
        target_eps: the ε the plan was calibrated for, or ``None`` when z was given.
        accountant: the dpcalib accountant name ("rdp" or "pld").
    """

    num_clients: int
    expected_clients: float
    rounds: int
    delta: float
    noise_multiplier: float
    count_noise_std: float
    sum_noise_multiplier: float
    target_eps: float | None
    accountant: str

    @property
    def q(self) -> float:
        """The Poisson sampling rate of clients, ``m / N``."""
        return self.expected_clients / self.num_clients

    @property
    def adaptive(self) -> bool:
        """Whether the plan reserves noise for adaptive clipping's count query."""
        return self.count_noise_std > 0.0

    def round_event(self) -> Event:
        """What one round releases, for the accountant: the Poisson-sampled Gaussian of multiplier z."""
        return PoissonSampled(self.q, Gaussian(self.noise_multiplier))

    def event(self, rounds: int | None = None) -> Event:
        """``rounds`` rounds (default: the planned number) of :meth:`round_event`."""
        return Repeated(self.round_event(), self.rounds if rounds is None else rounds)

    def epsilon(self, rounds: int | None = None) -> float:
        """ε after ``rounds`` rounds at this plan's δ (dpcalib's upper bound)."""
        return dpcalib.event_epsilon(self.event(rounds), delta=self.delta, accountant=self.accountant)


def plan_client_dp(
    *,
    num_clients: int,
    expected_clients: float,
    rounds: int,
    eps: float | None = None,
    delta: float | None = None,
    noise_multiplier: float | None = None,
    adaptive: bool = False,
    count_noise_std: float | None = None,
    accountant: str = "rdp",
) -> ClientDPPlan:
    """Calibrate client-level DP-FedAvg: z from the budget (or the given z), and the noise split for adaptive clipping.

    Exactly one of ``eps`` and ``noise_multiplier`` is given. With ``eps``, ``z = dpcalib.calibrate_sigma(eps,
    delta, q=m/N, steps=rounds)``, the smallest z whose ε after ``rounds`` rounds is at most ``eps`` (dpcalib
    verifies it). With ``adaptive``, ``count_noise_std`` defaults to ``m/20`` (Andrew et al. 2021) and the sum
    gets :func:`sum_noise_multiplier`; the accountant's z covers both releases.
    """
    n = check_count("num_clients", num_clients, minimum=2)
    m = check_positive("expected_clients", expected_clients)
    if m > n:
        raise InvalidArgumentError("expected_clients", expected_clients, f"in (0, num_clients={n}]")
    r = check_count("rounds", rounds)
    d = resolve_client_delta(delta, n)
    q = m / n
    if (eps is None) == (noise_multiplier is None):
        raise InvalidArgumentError("eps", eps, "given exactly when noise_multiplier is not (one of the two)")
    if adaptive:
        sb = m * DEFAULT_COUNT_NOISE_FRACTION if count_noise_std is None else check_positive(
            "count_noise_std", count_noise_std
        )
    elif count_noise_std is not None:
        raise InvalidArgumentError("count_noise_std", count_noise_std, "unset unless adaptive clipping is on")
    else:
        sb = 0.0
    if eps is not None:
        target: float | None = check_positive("eps", eps)
        z = float(dpcalib.calibrate_sigma(eps=target, delta=d, q=q, steps=r, accountant=accountant))
    else:
        target = None
        z = check_positive("noise_multiplier", noise_multiplier)  # type: ignore[arg-type]
    z_sum = sum_noise_multiplier(z, sb) if adaptive else z
    return ClientDPPlan(
        num_clients=n,
        expected_clients=m,
        rounds=r,
        delta=d,
        noise_multiplier=z,
        count_noise_std=sb,
        sum_noise_multiplier=z_sum,
        target_eps=target,
        accountant=accountant,
    )


def poisson_sample_clients(num_clients: int, q: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Poisson sampling of clients: each of ``num_clients`` is included independently with probability ``q``.

    Returns the sorted indices (int64) of the sampled clients, possibly none. The count is Binomial(N, q), mean
    ``N·q`` and variance ``N·q·(1−q)``, as the Poisson-subsampled accountant assumes.
    """
    n = check_count("num_clients", num_clients)
    rate = check_rate("q", q)
    return torch.nonzero(torch.rand(n, generator=generator, dtype=torch.float64) < rate).flatten()


def _as_batch(deltas: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    batch = deltas.unsqueeze(0) if deltas.dim() == 1 else deltas
    if batch.dim() != 2:
        raise InvalidArgumentError("deltas", tuple(deltas.shape), "a flat vector (d,) or a batch of them (k, d)")
    if dim is not None and batch.shape[1] != dim:
        raise InvalidArgumentError("deltas", tuple(deltas.shape), f"of dimension d={dim}")
    if not bool(torch.isfinite(batch).all()):
        raise InvalidArgumentError("deltas", "non-finite values", "finite (no NaN or inf)")
    return batch


def clip_deltas(deltas: torch.Tensor, clip: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale each row of ``deltas`` (k, d) to L2 norm at most ``clip``: ``Δ·min(1, C/‖Δ‖)``.

    Returns ``(clipped, norms)`` with the norms before clipping (computed in float64). A 1-D input is treated as
    one delta. Non-finite deltas are rejected.
    """
    c = check_positive("clip", clip)
    batch = _as_batch(deltas)
    norms = torch.linalg.vector_norm(batch.to(torch.float64), dim=1)
    scale = c / torch.clamp(norms, min=c)  # 1 when ‖Δ‖ ≤ C, else C/‖Δ‖
    return batch * scale.to(batch.dtype).unsqueeze(1), norms


class AdaptiveClip:
    """The clip norm of adaptive clipping (Andrew et al. 2021): a geometric step toward a target quantile.

    After a round in which ``below`` of the ``k`` sampled clients had ``‖Δ_i‖ ≤ C``, the noisy fraction is
    ``b̄ = (below − k/2 + N(0, σ_b²)) / m + 1/2`` (unbiased for the true fraction under Poisson sampling) and
    ``C ← C·exp(−η_C·(b̄ − γ))``.
    """

    def __init__(self, clip: float, *, target_quantile: float, clip_lr: float, count_noise_std: float) -> None:
        self.clip = check_positive("clip", clip)
        self.target_quantile = check_open_unit("target_quantile", target_quantile)
        self.clip_lr = check_positive("clip_lr", clip_lr)
        self.count_noise_std = check_positive("count_noise_std", count_noise_std)

    def update(self, below: int, sampled: int, expected_clients: float, generator: torch.Generator | None = None) -> float:
        """Release the noisy fraction of clipped-below clients and move ``C``; returns the noisy fraction ``b̄``."""
        m = check_positive("expected_clients", expected_clients)
        noise = float(torch.randn((), generator=generator, dtype=torch.float64)) * self.count_noise_std
        fraction = (below - 0.5 * sampled + noise) / m + 0.5
        self.clip *= math.exp(-self.clip_lr * (fraction - self.target_quantile))
        return fraction

    def state_dict(self) -> dict[str, float]:
        """The clip norm and its settings, JSON-serialisable."""
        return {
            "clip": self.clip,
            "target_quantile": self.target_quantile,
            "clip_lr": self.clip_lr,
            "count_noise_std": self.count_noise_std,
        }

    @classmethod
    def from_state_dict(cls, state: Mapping[str, float]) -> "AdaptiveClip":
        """Rebuild from :meth:`state_dict`."""
        return cls(
            state["clip"],
            target_quantile=state["target_quantile"],
            clip_lr=state["clip_lr"],
            count_noise_std=state["count_noise_std"],
        )


class ClientDPAggregator:
    """The server's DP aggregation of one round's client deltas (DP-FedAvg, McMahan et al. 2018).

    ``aggregate(deltas)`` clips each delta to ``C``, sums, adds ``N(0, (z_Δ·C)²·I)`` and divides by the expected
    number of clients ``m`` (fixed denominator). With adaptive clipping it then releases the noisy count and
    updates ``C`` (:class:`AdaptiveClip`). Deltas may arrive as one (k, d) tensor or as an iterable of (d,) or
    (k_j, d) chunks, so memory stays bounded whatever the number of clients. The noise is added even when no
    client was sampled: the release must not reveal that.
    """

    def __init__(
        self,
        *,
        dim: int,
        clip: float | AdaptiveClip,
        sum_noise_multiplier: float,
        expected_clients: float,
    ) -> None:
        self.dim = check_count("dim", dim)
        self.sum_noise_multiplier = check_positive("sum_noise_multiplier", sum_noise_multiplier)
        self.expected_clients = check_positive("expected_clients", expected_clients)
        self.adaptive = clip if isinstance(clip, AdaptiveClip) else None
        self._clip = clip.clip if isinstance(clip, AdaptiveClip) else check_positive("clip", clip)

    @classmethod
    def from_plan(
        cls,
        plan: ClientDPPlan,
        *,
        dim: int,
        clip: float,
        target_quantile: float = 0.5,
        clip_lr: float = 0.2,
    ) -> "ClientDPAggregator":
        """The aggregator for ``plan``: adaptive clipping (starting from ``clip``) exactly when the plan reserves it."""
        clip_state: float | AdaptiveClip = (
            AdaptiveClip(clip, target_quantile=target_quantile, clip_lr=clip_lr, count_noise_std=plan.count_noise_std)
            if plan.adaptive
            else clip
        )
        return cls(
            dim=dim,
            clip=clip_state,
            sum_noise_multiplier=plan.sum_noise_multiplier,
            expected_clients=plan.expected_clients,
        )

    @property
    def clip(self) -> float:
        """The clip norm the next round uses."""
        return self.adaptive.clip if self.adaptive is not None else self._clip

    @property
    def noise_std(self) -> float:
        """The std of the Gaussian noise added to the sum of clipped deltas this round: ``z_Δ·C``."""
        return self.sum_noise_multiplier * self.clip

    def aggregate(
        self,
        deltas: torch.Tensor | Iterable[torch.Tensor],
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """The noisy mean update of one round (float32), and what else the round releases.

        The statistics hold only DP releases or public values: the clip norm used, the noise std, and with
        adaptive clipping the noisy fraction of unclipped clients. The realised number of sampled clients and
        the exact clipped fraction are not returned: they are not differentially private.
        """
        clip = self.clip
        total = torch.zeros(self.dim, dtype=torch.float64)
        sampled = below = 0
        for chunk in [deltas] if isinstance(deltas, torch.Tensor) else deltas:
            clipped, norms = clip_deltas(_as_batch(chunk, self.dim), clip)
            total += clipped.to(torch.float64).sum(dim=0)
            sampled += int(norms.numel())
            below += int((norms <= clip).sum())
        noise = torch.randn(self.dim, generator=generator, dtype=torch.float64) * (self.sum_noise_multiplier * clip)
        mean = (total + noise) / self.expected_clients
        stats: dict[str, float] = {"clip": clip, "noise_std": self.sum_noise_multiplier * clip}
        if self.adaptive is not None:
            stats["noisy_fraction_unclipped"] = self.adaptive.update(below, sampled, self.expected_clients, generator)
        return mean.to(torch.float32), stats

    def state_dict(self) -> dict[str, Any]:
        """Clipping state for checkpoints (JSON-serialisable)."""
        return {
            "dim": self.dim,
            "clip": self.clip,
            "sum_noise_multiplier": self.sum_noise_multiplier,
            "expected_clients": self.expected_clients,
            "adaptive": None if self.adaptive is None else self.adaptive.state_dict(),
        }

    @classmethod
    def from_state_dict(cls, state: Mapping[str, Any]) -> "ClientDPAggregator":
        """Rebuild from :meth:`state_dict`."""
        return cls(
            dim=state["dim"],
            clip=state["clip"] if state["adaptive"] is None else AdaptiveClip.from_state_dict(state["adaptive"]),
            sum_noise_multiplier=state["sum_noise_multiplier"],
            expected_clients=state["expected_clients"],
        )
