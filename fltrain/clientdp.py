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
``z^{-2} = z_Δ^{-2} + (2σ_b)^{-2}`` (Andrew et al. 2021, Sec. 3), so the accountant sees a single
Poisson-subsampled Gaussian of multiplier ``z`` per round and the ε it reports covers both releases. Given the
``z`` that :func:`dpcalib.calibrate_sigma` returns for the budget, the sum gets
``z_Δ = (z^{-2} − (2σ_b)^{-2})^{-1/2}`` (:func:`sum_noise_multiplier`).

**Accounting** (:func:`plan_client_dp`): the event is ``Repeated(PoissonSampled(q, Gaussian(z)), rounds)``;
``z = dpcalib.calibrate_sigma(eps=ε, delta=δ, q=q, steps=rounds)``. δ defaults to ``1/N^1.1`` (smaller than
``1/N``, the probability of exposing one client outright); a δ ≥ ``1/N`` is allowed but warned about
(:func:`fltrain.privacy.resolve_client_delta`).

Departure from ARCHITECTURE.md: the architecture puts client-level DP inside ``fedavg.py``. It lives in this
module instead because it is one idea (client sampling, clipping, noise, adaptive clip and their accounting
belong together) and so that the engineers building ``fedavg.py`` and this mechanism do not edit one
file concurrently. ``fedavg.py`` calls it through its replaceable client-selection and aggregation steps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping

import torch

from dpcalib.errors import InvalidArgumentError

from .client import ClientUpdates
from .privacy import PrivacyPlan, make_plan, resolve_client_delta
from dpcalib import validation as check

__all__ = [
    "DEFAULT_COUNT_NOISE_FRACTION",
    "ClientDPPlan",
    "sum_noise_multiplier",
    "plan_client_dp",
    "poisson_sample_clients",
    "PoissonClientSampler",
    "clip_deltas",
    "AdaptiveClip",
    "ClientDPAggregator",
]

#: Andrew et al. (2021, Sec. 3) recommend a count noise ``σ_b = m/20`` for ``m`` expected clients per round.
DEFAULT_COUNT_NOISE_FRACTION = 1.0 / 20.0


def sum_noise_multiplier(noise_multiplier: float, count_noise_std: float) -> float:
    """The noise multiplier ``z_Δ`` left for the delta sum when the clipped-count query has noise ``σ_b``.

    Andrew et al. (2021, Sec. 3): releasing the sum (sensitivity C, noise ``z_Δ·C``) and the count of
    ``b_i − 1/2`` (sensitivity 1/2, noise ``σ_b``) is one Gaussian mechanism of multiplier ``z`` with
    ``z^{-2} = z_Δ^{-2} + (2σ_b)^{-2}``, hence ``z_Δ = (z^{-2} − (2σ_b)^{-2})^{-1/2}``. Requires ``2σ_b > z``.
    """
    z = check.positive("noise_multiplier", noise_multiplier)
    sb = check.positive("count_noise_std", count_noise_std)
    if 2.0 * sb <= z:
        raise InvalidArgumentError(
            "count_noise_std",
            count_noise_std,
            f"> noise_multiplier/2 = {z / 2:.6g} (the count would use all the noise)",
        )
    # log space: z^{-2} - (2 sb)^{-2} = z^{-2} (1 - (z / 2sb)^2)
    return z / math.sqrt(-math.expm1(2.0 * math.log(z / (2.0 * sb))))


@dataclass(frozen=True)
class ClientDPPlan:
    """A client-level DP training plan: the accounted event and how its noise is split.

    Attributes:
        privacy: the :class:`fltrain.privacy.PrivacyPlan` the ledger charges, one step per round: the
            Poisson-sampled Gaussian with rate ``q = m/N`` and multiplier ``z`` (``privacy.sigma``).
        num_clients: N, the size of the client population.
        expected_clients: m, the expected number of clients per round.
        count_noise_std: σ_b of the clipped-count query (0 with a fixed clip norm).
        sum_noise_multiplier: z_Δ, the multiplier of the noise on the sum of clipped deltas (z when fixed).
    """

    privacy: PrivacyPlan
    num_clients: int
    expected_clients: float
    count_noise_std: float
    sum_noise_multiplier: float

    @property
    def adaptive(self) -> bool:
        """Whether the plan reserves noise for adaptive clipping's count query."""
        return self.count_noise_std > 0.0


def plan_client_dp(
    *,
    num_clients: int,
    expected_clients: float,
    rounds: int,
    eps: float,
    delta: float | None = None,
    sigma: float | None = None,
    adaptive: bool = False,
    count_noise_std: float | None = None,
    accountant: str = "rdp",
) -> ClientDPPlan:
    """Calibrate client-level DP-FedAvg: the noise multiplier z for the budget, and its split for adaptive clipping.

    The accounted event is ``Repeated(PoissonSampled(m/N, Gaussian(z)), rounds)``; with ``sigma=None``,
    ``z = dpcalib.calibrate_sigma(eps, delta, q=m/N, steps=rounds)``, the smallest z whose ε after ``rounds``
    rounds is at most ``eps`` (through :func:`fltrain.privacy.make_plan`, one step per round). With an explicit
    ``sigma`` the run trains with it and stops before its ε would exceed ``eps``. ``delta=None`` means
    ``1/N^1.1``. With ``adaptive``, ``count_noise_std`` defaults to ``m/20`` (Andrew et al. 2021) and the sum gets
    :func:`sum_noise_multiplier`; the accountant's z covers both releases.
    """
    n = check.count("num_clients", num_clients, minimum=2)
    m = check.positive("expected_clients", expected_clients)
    if m > n:
        raise InvalidArgumentError("expected_clients", expected_clients, f"in (0, num_clients={n}]")
    r = check.count("rounds", rounds)
    target = check.positive("eps", eps)
    d = resolve_client_delta(delta, n)
    if sigma is not None:
        check.positive("sigma", sigma)
    if adaptive:
        sb = m * DEFAULT_COUNT_NOISE_FRACTION if count_noise_std is None else check.positive(
            "count_noise_std", count_noise_std
        )
    elif count_noise_std is not None:
        raise InvalidArgumentError("count_noise_std", count_noise_std, "unset unless adaptive clipping is on")
    else:
        sb = 0.0
    privacy = make_plan(eps=target, delta=d, q=m / n, steps_per_round=1, rounds=r, accountant=accountant, sigma=sigma)
    z_sum = sum_noise_multiplier(privacy.sigma, sb) if adaptive else privacy.sigma
    return ClientDPPlan(privacy, n, m, sb, z_sum)


def poisson_sample_clients(num_clients: int, q: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Poisson sampling of clients: each of ``num_clients`` is included independently with probability ``q``.

    Returns the sorted indices (int64) of the sampled clients, possibly none. The count is Binomial(N, q), mean
    ``N·q`` and variance ``N·q·(1−q)``, as the Poisson-subsampled accountant assumes.
    """
    n = check.count("num_clients", num_clients)
    rate = check.rate("q", q)
    return torch.nonzero(torch.rand(n, generator=generator, dtype=torch.float64) < rate).flatten()


@dataclass(frozen=True)
class PoissonClientSampler:
    """The client-selection step of client-level DP-FedAvg (a :class:`fltrain.fedavg.ClientSampler`): every client
    independently with probability ``q``."""

    q: float

    def sample(self, num_clients: int, generator: torch.Generator) -> torch.Tensor:
        return poisson_sample_clients(num_clients, self.q, generator)


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
    c = check.positive("clip", clip)
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
        self.clip = check.positive("clip", clip)
        self.target_quantile = check.open_unit("target_quantile", target_quantile)
        self.clip_lr = check.positive("clip_lr", clip_lr)
        self.count_noise_std = check.positive("count_noise_std", count_noise_std)

    def step(self, noisy_count: float, expected_clients: float) -> float:
        """Move ``C`` given the released ``Σ(b_i − 1/2) + N(0, σ_b²)`` (however its noise was added, e.g. in
        shares under secure aggregation); returns the noisy fraction ``b̄ = noisy_count / m + 1/2``."""
        m = check.positive("expected_clients", expected_clients)
        fraction = noisy_count / m + 0.5
        self.clip *= math.exp(-self.clip_lr * (fraction - self.target_quantile))
        return fraction


class ClientDPAggregator:
    """The server's DP aggregation of one round's client deltas (DP-FedAvg, McMahan et al. 2018).

    ``aggregate(updates)`` clips each delta to ``C``, sums, adds ``N(0, (z_Δ·C)²·I)`` and divides by the expected
    number of clients ``m`` (fixed denominator). With adaptive clipping it then releases the noisy count and
    updates ``C`` (:class:`AdaptiveClip`). The noise is added even when no client was sampled: the release must
    not reveal that.
    """

    def __init__(
        self,
        *,
        dim: int,
        clip: float | AdaptiveClip,
        sum_noise_multiplier: float,
        expected_clients: float,
    ) -> None:
        self.dim = check.count("dim", dim)
        self.sum_noise_multiplier = check.positive("sum_noise_multiplier", sum_noise_multiplier)
        self.expected_clients = check.positive("expected_clients", expected_clients)
        self.adaptive = clip if isinstance(clip, AdaptiveClip) else None
        self._clip = clip.clip if isinstance(clip, AdaptiveClip) else check.positive("clip", clip)
        #: what the last :meth:`aggregate` released besides the update (for the run's metrics)
        self.last_release: dict[str, float] = {}

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

    def aggregate(
        self, updates: ClientUpdates | torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """The noisy mean update of one round (the aggregation step of :class:`fltrain.fedavg.FedAvgServer`).

        ``updates`` holds the deltas (k, d) of the sampled clients (``k`` may be 0); client weights are not used,
        every client counts once. What else the round releases is left in :attr:`last_release`: only DP releases
        or public values (the clip norm used, the noise std, and with adaptive clipping the noisy fraction of
        unclipped clients), never the realised number of clients or the exact clipped fraction.
        """
        deltas = updates.deltas if isinstance(updates, ClientUpdates) else updates
        clip = self.clip
        clipped, norms = clip_deltas(_as_batch(deltas, self.dim), clip)
        total, noisy_count = self._noisy_sums(clipped.to(torch.float64), norms <= clip, clip, generator)
        mean = total / self.expected_clients
        release: dict[str, float] = {"clip": clip, "noise_std": self.sum_noise_multiplier * clip}
        if self.adaptive is not None:
            release["noisy_fraction_unclipped"] = self.adaptive.step(noisy_count, self.expected_clients)
        self.last_release = release
        return mean.to(deltas.dtype)

    def _noisy_sums(
        self, clipped: torch.Tensor, below: torch.Tensor, clip: float, generator: torch.Generator | None
    ) -> tuple[torch.Tensor, float]:
        """The two releases of a round: ``Σ_i clipped_i + N(0, (z_Δ·C)²·I)`` (float64) and, with adaptive
        clipping, ``Σ_i (b_i − 1/2) + N(0, σ_b²)`` (else 0). Here the server adds the noise; secure aggregation
        (:class:`fltrain.secagg.aggregate.SecureClientDPAggregator`) replaces this step."""
        noise = torch.randn(self.dim, generator=generator, dtype=torch.float64) * (self.sum_noise_multiplier * clip)
        total = clipped.sum(dim=0) + noise
        if self.adaptive is None:
            return total, 0.0
        count_noise = float(torch.randn((), generator=generator, dtype=torch.float64)) * self.adaptive.count_noise_std
        return total, float(below.sum()) - 0.5 * below.numel() + count_noise

    def state_dict(self) -> dict[str, float]:
        """The clipping state for checkpoints: the current clip norm (the settings come from the run's config)."""
        return {"clip": self.clip}

    def load_state_dict(self, state: Mapping[str, float]) -> None:
        """Restore the clip norm saved by :meth:`state_dict`."""
        if self.adaptive is not None:
            self.adaptive.clip = check.positive("clip", state["clip"])
        else:
            self._clip = check.positive("clip", state["clip"])
