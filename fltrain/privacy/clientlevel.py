"""Client-level DP (``dp = "client"``): DP-FedAvg with a fixed denominator, optionally adaptive clipping and
distributed noise under secure aggregation.

**Guarantee.** One client's entire data set: two federations that differ in one client are hard to tell apart from
everything the run releases. With a Poisson cohort (central noise) the relation is add/remove of one client; with a
fixed-size cohort (required by distributed noise) it is replace-one: the number of clients is public and one
client's data is replaced by anything else (see :mod:`fltrain.privacy.cohort`).

**A round** (McMahan, Ramage, Talwar, Zhang 2018, DP-FedAvg with the fixed-denominator estimator):

1. the cohort is drawn from the secret source: Poisson with rate ``q = m/N`` (central noise), or exactly ``m`` of
   ``N`` uniformly (distributed noise);
2. each client trains locally without noise and clips its delta to L2 norm ``C`` (:func:`clip_deltas`);
   with adaptive clipping it appends ``b_i − 1/2``, ``b_i = [‖Δ_i‖ ≤ C]``;
3. central noise: the server sums, adds ``N(0, (z_Δ·C)²)`` to the sum (and ``N(0, σ_b²)`` to the count);
   distributed noise: each client adds its share ``N(0, (z_Δ·C)²/t)`` (``N(0, σ_b²/t)``) before secure
   aggregation, where ``t`` (``min_survivors``) is the public number of clients below which a round aborts;
4. the server divides by ``m`` (the public expected cohort, never the realised count) and, with adaptive
   clipping, moves ``C`` toward the ``γ``-quantile of the update norms: ``C ← C·exp(−η_C·(b̄ − γ))``,
   ``b̄ = noisy count / m + 1/2`` (Andrew, Thakkar, McMahan, Ramaswamy 2021).

**Distributed noise has one distribution whatever happens in the round.** The cohort has exactly ``m`` clients
(public), each share has the public std ``z_Δ·C/√t``, so a round with all ``m`` clients releases noise of variance
``(m/t)·(z_Δ·C)²``, and one in which any data-independent set of clients dropped, leaving ``s ≥ t``, releases
``(s/t)·(z_Δ·C)² ≥ (z_Δ·C)²``: at least the calibrated noise. It needs ``t`` honest shares: a server colluding
with clients can subtract their shares, so the guarantee holds against a server colluding with at most ``m − t``
of the cohort (with every client present). A Poisson cohort cannot be used with distributed noise: the variance
``K·(share variance)`` would reveal the realised count ``K``.

**Discrete noise** (``noise="skellam"``, distributed only): the shares are integers and the sum is computed in
Z_(2^bits), so the release is exactly the accounted mechanism (see :mod:`fltrain.privacy.discrete`); the round
event is ``SampledWithoutReplacement(N, m, Skellam(μ, Δ1, Δ2))`` planned by :func:`dpcalib.plan_skellam`. Adaptive
clipping and an explicit σ are not available with it.

**Accounting.** The sum (sensitivity C) and the count (sensitivity 1/2) are one Gaussian mechanism of multiplier
``z`` with ``z^{-2} = z_Δ^{-2} + (2σ_b)^{-2}`` (Andrew et al. 2021, Sec. 3), so one round is
``cohort.event(z)``: ``PoissonSampled(m/N, Gaussian(z))`` (add/remove) or ``SampledWithoutReplacement(N, m,
Gaussian(z))`` (replace-one; dpcalib applies the replace-one sensitivity 2C to σ = std/C). ``z`` is calibrated by
dpcalib for ``(ε, δ)`` over all rounds unless given.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar, Mapping

import torch

from dpcalib import validation as check
from dpcalib.errors import InvalidArgumentError

from ..client import LocalTraining
from ..randomness import RandomSource
from .cohort import Cohort, FixedCohort
from .discrete import SkellamShares
from .mode import PrivacyMode
from .plan import PrivacyPlan, make_plan

__all__ = [
    "DEFAULT_COUNT_NOISE_FRACTION", "NOISE_RANGE_SIGMAS", "sum_noise_multiplier", "clip_deltas", "AdaptiveClip",
    "ClientLevel",
]

#: Andrew et al. (2021, Sec. 3) recommend a count noise ``σ_b = m/20`` for ``m`` expected clients per round.
DEFAULT_COUNT_NOISE_FRACTION = 1.0 / 20.0
#: Noise shares are clipped at this many of their standard deviations by the fixed-point range (probability ~1e-15).
NOISE_RANGE_SIGMAS = 8.0


def sum_noise_multiplier(noise_multiplier: float, count_noise_std: float) -> float:
    """The noise multiplier ``z_Δ`` left for the delta sum when the clipped-count query has noise ``σ_b``.

    Andrew et al. (2021, Sec. 3): ``z^{-2} = z_Δ^{-2} + (2σ_b)^{-2}``, hence ``z_Δ = (z^{-2} − (2σ_b)^{-2})^{-1/2}``.
    Requires ``2σ_b > z``.
    """
    z = check.positive("noise_multiplier", noise_multiplier)
    sb = check.positive("count_noise_std", count_noise_std)
    if 2.0 * sb <= z:
        raise InvalidArgumentError(
            "count_noise_std", count_noise_std, f"> noise_multiplier/2 = {z / 2:.6g} (the count would use all the noise)"
        )
    return z / math.sqrt(-math.expm1(2.0 * math.log(z / (2.0 * sb))))


def clip_deltas(deltas: torch.Tensor, clip: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale each row of ``deltas`` (k, d) to L2 norm at most ``clip``: ``Δ·min(1, C/‖Δ‖)``.

    Returns ``(clipped, norms)`` with the norms before clipping (float64). Non-finite deltas are rejected.
    """
    c = check.positive("clip", clip)
    if deltas.dim() != 2:
        raise InvalidArgumentError("deltas", tuple(deltas.shape), "a batch of flat vectors (k, d)")
    if not bool(torch.isfinite(deltas).all()):
        raise InvalidArgumentError("deltas", "non-finite values", "finite (no NaN or inf)")
    norms = torch.linalg.vector_norm(deltas.to(torch.float64), dim=1)
    scale = c / torch.clamp(norms, min=c)  # 1 when ‖Δ‖ ≤ C, else C/‖Δ‖
    return deltas * scale.to(deltas.dtype).unsqueeze(1), norms


class AdaptiveClip:
    """The clip norm of adaptive clipping (Andrew et al. 2021): a geometric step toward a target quantile,
    ``C ← C·exp(−η_C·(b̄ − γ))`` with ``b̄ = noisy_count / m + 1/2``."""

    def __init__(self, clip: float, *, target_quantile: float, clip_lr: float) -> None:
        self.clip = check.positive("clip", clip)
        self.target_quantile = check.open_unit("target_quantile", target_quantile)
        self.clip_lr = check.positive("clip_lr", clip_lr)

    def step(self, noisy_count: float, expected_clients: float) -> float:
        """Move ``C`` given the released ``Σ(b_i − 1/2) + noise``; returns the noisy fraction ``b̄``."""
        fraction = noisy_count / expected_clients + 0.5
        self.clip *= math.exp(-self.clip_lr * (fraction - self.target_quantile))
        return fraction


class ClientLevel(PrivacyMode):
    """Client-level DP-FedAvg (see the module docstring).

    Args:
        cohort: :class:`~fltrain.privacy.cohort.PoissonCohort` (central noise) or
            :class:`~fltrain.privacy.cohort.FixedCohort` (required when ``distributed``).
        rng: the secret source (or the reproducible one of a simulation).
        plan: the plan whose σ is ``z``, the multiplier of the combined release.
        dim: model parameters.
        clip: the (initial) clip norm ``C``.
        adaptive: an :class:`AdaptiveClip` (with ``count_noise_std > 0``) or None.
        count_noise_std: ``σ_b`` of the count query (0 without adaptive clipping).
        distributed: the clients add the noise in shares (secure aggregation) instead of the server.
        min_survivors: ``t`` of distributed noise (default ``⌊2m/3⌋ + 1``), in ``[⌊2m/3⌋ + 1, m]``.
        shares: the discrete pipeline (``noise="skellam"`` in :meth:`create`; distributed only), or None for
            Gaussian noise.
    """

    name: ClassVar[str] = "client"
    guarantee: ClassVar[str] = "client-level"

    def __init__(self, *, cohort: Cohort, rng: RandomSource, plan: PrivacyPlan, dim: int, clip: float,
                 adaptive: AdaptiveClip | None = None, count_noise_std: float = 0.0, distributed: bool = False,
                 min_survivors: int | None = None, shares: SkellamShares | None = None) -> None:
        super().__init__(cohort=cohort, rng=rng, plan=plan)
        self.dim = check.count("dim", dim)
        self.adaptive = adaptive
        self._clip = check.positive("clip", clip)
        self.count_noise_std = count_noise_std
        self.sum_noise_multiplier = sum_noise_multiplier(plan.sigma, count_noise_std) if adaptive else plan.sigma
        self.distributed = distributed
        self.floor: int | None = None
        if distributed:
            if not isinstance(cohort, FixedCohort):
                raise InvalidArgumentError("cohort", "poisson", "a fixed-size cohort with distributed noise (the "
                                           "noise of K shares would reveal the realised K)")
            low = 2 * cohort.size // 3 + 1
            self.floor = low if min_survivors is None else check.count("min_survivors", min_survivors)
            if not low <= self.floor <= cohort.size:
                raise InvalidArgumentError("min_survivors", min_survivors, f"in [{low}, cohort={cohort.size}]")
        elif min_survivors is not None:
            raise InvalidArgumentError("min_survivors", min_survivors, "unset without secure aggregation")
        if shares is not None and (not distributed or adaptive is not None):
            raise InvalidArgumentError("noise", "skellam", "used with distributed noise and a fixed clip only")
        self.shares = shares
        self._last: dict[str, float] = {}

    @classmethod
    def create(cls, *, cohort: Cohort, rng: RandomSource, dim: int, rounds: int, eps: float, delta: float,
               clip: float, accountant: str, sigma: float | None = None, adaptive_clip: bool = False,
               target_quantile: float = 0.5, clip_lr: float = 0.2, count_noise_std: float | None = None,
               distributed: bool = False, min_survivors: int | None = None, noise: str = "gaussian",
               bits: int = 16) -> "ClientLevel":
        """Plan the run (``z`` calibrated by dpcalib unless ``sigma`` is given; ``count_noise_std`` defaults to
        ``m/20`` with adaptive clipping) and build the mode. ``noise="skellam"``: integer shares in Z_(2^bits)
        (distributed, fixed cohort, fixed clip, σ calibrated; see :mod:`fltrain.privacy.discrete`)."""
        if noise == "skellam":
            if not (distributed and isinstance(cohort, FixedCohort)) or adaptive_clip or sigma is not None:
                raise InvalidArgumentError("noise", noise, "'gaussian' unless distributed over a fixed cohort, with a "
                                           "fixed clip and a calibrated sigma")
            if accountant != "rdp":
                raise InvalidArgumentError("accountant", accountant, "'rdp' with noise='skellam' (the Skellam "
                                           "mechanism has an RDP bound only)")
            floor = 2 * cohort.size // 3 + 1 if min_survivors is None else min_survivors
            shares = SkellamShares.create(cohort=cohort, rng=rng, dim=dim, rounds=rounds, eps=eps, delta=delta,
                                          clip=clip, bits=bits, min_survivors=floor)
            return cls(cohort=cohort, rng=rng, plan=shares.privacy_plan(accountant), dim=dim, clip=clip,
                       distributed=True, min_survivors=min_survivors, shares=shares)
        if noise != "gaussian":
            raise InvalidArgumentError("noise", noise, "'gaussian' or 'skellam'")
        plan = make_plan(cohort.event, rounds=rounds, eps=eps, delta=delta, accountant=accountant,
                         neighbouring=cohort.neighbouring, sigma=sigma, what=f" (one round of {cohort.expected:g} "
                         f"expected of {cohort.num_clients} clients)")
        if adaptive_clip:
            sb = cohort.expected * DEFAULT_COUNT_NOISE_FRACTION if count_noise_std is None else check.positive(
                "count_noise_std", count_noise_std)
            adaptive = AdaptiveClip(clip, target_quantile=target_quantile, clip_lr=clip_lr)
        elif count_noise_std is not None:
            raise InvalidArgumentError("count_noise_std", count_noise_std, "unset unless adaptive clipping is on")
        else:
            sb, adaptive = 0.0, None
        return cls(cohort=cohort, rng=rng, plan=plan, dim=dim, clip=clip, adaptive=adaptive, count_noise_std=sb,
                   distributed=distributed, min_survivors=min_survivors)

    @property
    def clip(self) -> float:
        """The clip norm the next round uses."""
        return self.adaptive.clip if self.adaptive is not None else self._clip

    def _stds(self, clip: float) -> torch.Tensor:
        """The std of the released noise per message coordinate: ``z_Δ·C`` on the sum, ``σ_b`` on the count."""
        stds = torch.full((self.dim,), self.sum_noise_multiplier * clip, dtype=torch.float64)
        if self.adaptive is not None:
            stds = torch.cat([stds, torch.tensor([self.count_noise_std], dtype=torch.float64)])
        return stds

    # --- client side --------------------------------------------------------------------------------------

    def round_config(self) -> dict[str, float]:
        """The clip norm of the round (a setting, or derived from DP releases with adaptive clipping)."""
        return {"clip": self.clip}

    def set_round_config(self, settings: Mapping[str, float]) -> None:
        self._set_clip(settings["clip"])

    def _set_clip(self, value: float) -> None:
        clip = check.positive("clip", value)
        if self.adaptive is not None:
            self.adaptive.clip = clip
        else:
            self._clip = clip

    def local_training(self, base: LocalTraining) -> LocalTraining:
        return base  # no noise on the client's records: the unit of privacy is the client

    def message_width(self, dim: int) -> int:
        if self.shares is not None:
            return self.shares.codec.padded_dim
        return dim + (1 if self.adaptive is not None else 0)

    def client_message(self, deltas: torch.Tensor, num_samples: torch.Tensor) -> torch.Tensor:
        """Clip each delta to ``C``; with adaptive clipping append ``b_i − 1/2``; with distributed noise add the
        share ``N(0, std²/t)``. ``num_samples`` is not used: every client counts once."""
        if deltas.shape[1:] != (self.dim,):
            raise InvalidArgumentError("deltas", tuple(deltas.shape), f"of dimension d={self.dim}")
        clip = self.clip
        clipped, norms = clip_deltas(deltas, clip)
        if self.shares is not None:
            return self.shares.encode(clipped)
        message = clipped.to(torch.float64)
        if self.adaptive is not None:
            message = torch.cat([message, (norms <= clip).to(torch.float64).unsqueeze(1) - 0.5], dim=1)
        if self.distributed:
            assert self.floor is not None
            message = message + self.rng.randn(message.shape, torch.float64) * (self._stds(clip) / math.sqrt(self.floor))
        return message

    def min_survivors(self, k: int) -> int:
        return self.floor if self.floor is not None else super().min_survivors(k)

    def secure_ring_bits(self) -> int | None:
        return None if self.shares is None else self.shares.plan.bits

    def secure_sum_range(self) -> float | None:
        """``max(C, 1/2) + NOISE_RANGE_SIGMAS ×`` the largest share std: a coordinate of a message fits."""
        if not self.distributed or self.shares is not None:
            return None
        assert self.floor is not None
        return max(self.clip, 0.5) + NOISE_RANGE_SIGMAS * float(self._stds(self.clip).max()) / math.sqrt(self.floor)

    # --- server side --------------------------------------------------------------------------------------

    def server_update(self, total: torch.Tensor) -> torch.Tensor:
        """Central noise (unless distributed), the fixed denominator ``m``, the adaptive clip step. The noise is
        added even when the cohort is empty: the release must not reveal that."""
        clip = self.clip
        if self.shares is not None:
            assert isinstance(self.cohort, FixedCohort)
            self._last = {"clip": clip, "noise_std": self.shares.noise_std(self.cohort.size)}
            return self.shares.decode(total) / self.cohort.expected
        noisy = total.to(torch.float64)
        if not self.distributed:
            noisy = noisy + self.rng.randn(noisy.shape, torch.float64) * self._stds(clip)
        m = self.cohort.expected
        released_std = self.sum_noise_multiplier * clip
        if self.distributed:
            assert isinstance(self.cohort, FixedCohort) and self.floor is not None
            released_std *= math.sqrt(self.cohort.size / self.floor)
        self._last = {"clip": clip, "noise_std": released_std}
        if self.adaptive is not None:
            self._last["noisy_fraction_unclipped"] = self.adaptive.step(float(noisy[self.dim]), m)
        return noisy[: self.dim] / m

    def releases(self) -> tuple[str, ...]:
        return ("clip", "noise_std") + (("noisy_fraction_unclipped",) if self.adaptive is not None else ())

    def release(self) -> dict[str, Any]:
        """The clip norm of the round (a setting or a DP release), the std of the released noise (public: a
        function of settings), and with adaptive clipping the noisy fraction of unclipped updates (a DP release)."""
        return dict(self._last)

    def describe(self) -> dict[str, Any]:
        neighbouring = "replace-one" if isinstance(self.cohort, FixedCohort) else "add/remove"
        return {
            **super().describe(), "guarantee": f"client-level, {neighbouring} one client's entire data",
            "cohort": {"sampling": "fixed" if isinstance(self.cohort, FixedCohort) else "poisson",
                       "expected_clients": self.cohort.expected, "clients": self.cohort.num_clients},
            "sum_noise_multiplier": self.sum_noise_multiplier, "count_noise_std": self.count_noise_std,
            "noise_added_by": "clients, in shares under secure aggregation" if self.distributed else "server",
            "min_survivors": self.floor, "denominator": self.cohort.expected,
            **({} if self.shares is None else {"discrete": {
                "noise": "skellam", "bits": self.shares.plan.bits, "scale": self.shares.plan.scale,
                "mu": self.shares.plan.mu, "share_variance": self.shares.plan.share_variance,
                "l2_sensitivity": self.shares.plan.l2_sensitivity, "l1_sensitivity": self.shares.plan.l1_sensitivity,
                "wrap_probability": self.shares.plan.wrap_probability}}),
        }

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "clip": self.clip}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        self._set_clip(state["clip"])
