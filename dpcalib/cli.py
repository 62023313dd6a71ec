"""``dpcalib``: privacy accounting and noise calibration for DP-SGD from the shell.

Commands: ``sigma`` (noise for a budget), ``epsilon`` (ε of a run), ``delta`` (δ of a run), ``steps`` (longest run
steps), ``compare`` (the same question under every registered accountant) and ``curve`` (ε against
steps); ``skellam`` plans distributed discrete noise for a secure sum
(:func:`dpcalib.discrete.plan_skellam`). Every command takes ``--accountant``, ``--json``, and either ``--q/--steps`` or
``--epochs/--dataset-size/--batch-size`` (q = B/N, steps = ⌈E·N/B⌉ so that the accounting never undercounts),
and ``--sampler poisson|fixed|shuffle`` (how batches are formed; ``fixed`` and ``shuffle`` take
``--dataset-size/--batch-size`` with ``--steps`` or ``--epochs``; see :class:`dpcalib.events.Sampler`).

Bad input (anything outside the ranges of :mod:`dpcalib.validation`, an unreachable target, an unwritable
``--plot`` file) exits with status 2 and one line on stderr naming the argument; never a traceback. Warnings
are relayed once each, whatever the number of times the library issued them. An unexpected exception (a bug)
exits with status 1 and one line naming it.
"""

from __future__ import annotations

import json
import math
import os
import sys
import warnings
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Callable, Sequence

import click

from . import __version__
from .accountant import ACCOUNTANTS, make_accountant
from .calibrate import calibrate_sigma, calibrate_sigma_for, calibrate_steps, calibrate_steps_for
from .errors import DpcalibError, DpcalibWarning, InvalidArgumentError, UnsupportedEventError
from .events import Event, Sampler, shuffled_epochs, training_event
from . import discrete
from . import report as risk
from . import validation as check

__all__ = ["cli", "main", "run"]

_CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


@dataclass(frozen=True)
class Plan:
    """The sampler, sampling rate and number of steps of a run, and the epoch view it came from (if any)."""

    q: float
    steps: int
    epochs: float | None = None
    dataset_size: int | None = None
    batch_size: int | None = None
    sampler: Sampler = Sampler.POISSON

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"q": self.q, "steps": self.steps}
        if self.epochs is not None or self.sampler is not Sampler.POISSON:
            out.update(epochs=self.epochs, dataset_size=self.dataset_size, batch_size=self.batch_size)
        out["sampler"] = self.sampler.value
        if self.sampler is Sampler.SHUFFLE and self.steps:
            out["epochs_accounted"] = self.accounted_epochs()
        return out

    def with_steps(self, steps: int) -> "Plan":
        """The same run with ``steps`` steps (and the epochs they make, if the run has a dataset size)."""
        epochs = None if self.dataset_size is None else steps * self.q
        return Plan(self.q, steps, epochs, self.dataset_size, self.batch_size, self.sampler)

    def event(self, sigma: float) -> Event:
        """The event this run releases at noise multiplier ``sigma``."""
        return training_event(
            self.sampler, sigma=sigma, steps=self.steps, q=self.q, dataset_size=self.dataset_size, batch_size=self.batch_size
        )

    def accounted_epochs(self) -> int:
        """For ``shuffle``: the epochs accounted, ⌈steps / ⌊N/B⌋⌉ (see :func:`dpcalib.events.shuffled_epochs`)."""
        return shuffled_epochs(self.steps, self.dataset_size, self.batch_size)  # type: ignore[arg-type]


def _rate_from(dataset_size: int | None, batch_size: int | None) -> tuple[int, int]:
    n = check.size("dataset-size", dataset_size)
    b = check.size("batch-size", batch_size)
    if b > n:
        raise InvalidArgumentError("batch-size", b, f"an integer in [1, dataset-size={n}]")
    return n, b


def make_plan(
    q: float | None, steps: int | None, epochs: float | None, dataset_size: int | None, batch_size: int | None,
    need_steps: bool = True, sampler: str = "poisson",
) -> Plan:
    """Resolve ``--q/--steps`` or ``--epochs/--dataset-size/--batch-size`` (never both) into a :class:`Plan`; with
    ``--sampler fixed|shuffle``, ``--dataset-size/--batch-size`` and ``--steps`` or ``--epochs``; and, for any
    sampler, ``--dataset-size/--batch-size/--steps`` (q = B/N for poisson)."""
    kind = Sampler(sampler)
    sized_steps = dataset_size is not None and steps is not None and q is None and epochs is None
    if kind is not Sampler.POISSON or sized_steps:
        return _fixed_size_plan(kind, q, steps, epochs, dataset_size, batch_size, need_steps)
    epoch_view = any(v is not None for v in (epochs, dataset_size, batch_size))
    if epoch_view and (q is not None or steps is not None):
        bad = "q" if q is not None else "steps"
        raise InvalidArgumentError(bad, q if q is not None else steps, "omitted when --epochs/--dataset-size/--batch-size are given")
    if epoch_view:
        n, b = _rate_from(dataset_size, batch_size)
        if not need_steps:
            if epochs is not None:
                raise InvalidArgumentError("epochs", epochs, "omitted here (this command finds the number of steps)")
            return Plan(q=b / n, steps=0, dataset_size=n, batch_size=b)
        e = check.positive("epochs", epochs)
        # E·N/B steps, in exact arithmetic on the decimal the user wrote, rounded up: never undercounting
        steps_needed = math.ceil(Fraction(repr(e)) * n / b)
        if steps_needed > check.STEPS_MAX:
            most = check.STEPS_MAX * b / n
            raise InvalidArgumentError("epochs", e, f"at most {most:.6g} here (steps = ceil(E*N/B) <= {check.STEPS_MAX})")
        return Plan(q=b / n, steps=max(steps_needed, 1), epochs=e, dataset_size=n, batch_size=b)
    if q is None or (need_steps and steps is None):
        missing = "--q" if q is None else "--steps"
        instead = "--epochs, --dataset-size and --batch-size instead of --q/--steps" if need_steps else (
            "--dataset-size and --batch-size instead of --q"
        )
        raise click.UsageError(f"Missing option '{missing}' (or give {instead}).")
    rate = check.rate("q", q)
    if not need_steps:
        if steps is not None:
            raise InvalidArgumentError("steps", steps, "omitted here (this command finds the number of steps)")
        return Plan(q=rate, steps=0)
    return Plan(q=rate, steps=check.steps("steps", steps))


def _fixed_size_plan(
    kind: Sampler, q: float | None, steps: int | None, epochs: float | None, dataset_size: int | None,
    batch_size: int | None, need_steps: bool,
) -> Plan:
    """A :class:`Plan` from N and B, and ``--steps`` or ``--epochs`` (one of them): the fixed-size samplers, and
    poisson given N, B and the steps."""
    if q is not None:
        raise InvalidArgumentError("q", q, f"omitted with --sampler {kind.value} (--dataset-size and --batch-size set it)")
    n, b = _rate_from(dataset_size, batch_size)
    if not need_steps:
        for name, value in (("steps", steps), ("epochs", epochs)):
            if value is not None:
                raise InvalidArgumentError(name, value, "omitted here (this command finds the number of steps)")
        return Plan(q=b / n, steps=0, dataset_size=n, batch_size=b, sampler=kind)
    if steps is not None and epochs is not None:
        raise InvalidArgumentError("steps", steps, "omitted when --epochs is given")
    if steps is None and epochs is None:
        raise click.UsageError(f"Missing option '--steps' (or '--epochs') for --sampler {kind.value}.")
    if epochs is not None:
        e = check.positive("epochs", epochs)
        # E·N/B steps rounded up, as for poisson; shuffle: E epochs of ⌊N/B⌋ batches, so ⌈E⌉ are accounted
        per_epoch = Fraction(n // b) if kind is Sampler.SHUFFLE else Fraction(n, b)
        count = max(math.ceil(Fraction(repr(e)) * per_epoch), 1)
        return Plan(q=b / n, steps=count, epochs=e, dataset_size=n, batch_size=b, sampler=kind)
    count = check.steps("steps", steps)
    return Plan(q=b / n, steps=count, epochs=count * b / n, dataset_size=n, batch_size=b, sampler=kind)


def _sampler_option(func: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--sampler",
        type=click.Choice([s.value for s in Sampler]),
        default=Sampler.POISSON.value,
        show_default=True,
        help="how batches are formed: poisson (rate q), fixed (B of N without replacement each step; replace-one) "
        "or shuffle (each record once per epoch; replace-one, no amplification claimed).",
    )(func)


def _plan_options(func: Callable[..., Any]) -> Callable[..., Any]:
    options = [
        click.option("--q", type=float, help="Poisson sampling rate per step, in (0, 1]."),
        click.option("--steps", type=int, help="number of noisy steps (integer in [1, 10^12])."),
        click.option("--epochs", type=float, help="alternative to --q/--steps: passes over the data (> 0)."),
        click.option("--dataset-size", type=int, help="with --epochs, or --sampler fixed|shuffle: number of records N."),
        click.option(
            "--batch-size", type=int, help="with --dataset-size: batch size B (expected size for poisson: q = B/N)."
        ),
        _sampler_option,
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _common_options(func: Callable[..., Any]) -> Callable[..., Any]:
    func = click.option("--json", "as_json", is_flag=True, help="print one JSON object instead of text.")(func)
    func = click.option(
        "--accountant",
        type=click.Choice(sorted(ACCOUNTANTS)),
        default="rdp",
        show_default=True,
        help="privacy accountant.",
    )(func)
    return func


def _epsilon_and_order(accountant: str, sigma: float, plan: Plan, delta: float) -> tuple[float, float | None]:
    acc = make_accountant(accountant, sampler=plan.sampler.value).compose(plan.event(sigma))
    return acc.epsilon_and_order(delta)


def _calibrate_sigma(plan: Plan, eps: float, delta: float, accountant: str) -> float:
    if plan.sampler is Sampler.POISSON:
        return calibrate_sigma(eps=eps, delta=delta, q=plan.q, steps=plan.steps, accountant=accountant)
    return calibrate_sigma_for(plan.event, eps=eps, delta=delta, accountant=accountant, sampler=plan.sampler.value)


def _supports(accountant: str, plan: Plan) -> bool:
    """Whether the accountant can account for the plan's sampler (e.g. PLD has no fixed-size sampling)."""
    try:
        make_accountant(accountant, sampler=plan.sampler.value).compose(plan.with_steps(1).event(1.0))
    except UnsupportedEventError:
        return False
    return True


def _emit(as_json: bool, record: dict[str, Any], text: str) -> None:
    _check_finite(record)
    if as_json:
        click.echo(json.dumps(record))
    else:
        click.echo(text)


def _check_finite(value: Any) -> None:
    """Raise ArithmeticError (a bug: exit status 1) if a number to be printed is nan or ±inf."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ArithmeticError(f"a result is {value}")
    if isinstance(value, dict):
        for item in value.values():
            _check_finite(item)
    elif isinstance(value, list):
        for item in value:
            _check_finite(item)


def _record(accountant: str, plan: Plan, **fields: Any) -> dict[str, Any]:
    return {**fields, **plan.as_dict(), "accountant": accountant, "version": __version__}


def _describe(plan: Plan) -> str:
    text = f"q = {plan.q:.6g}, steps = {plan.steps}"
    if plan.epochs is not None:
        text += f"  (epochs = {plan.epochs:g}, dataset size = {plan.dataset_size}, batch size = {plan.batch_size})"
    return text + _sampler_note(plan)


def _sampler_note(plan: Plan) -> str:
    text = ""
    if plan.sampler is Sampler.SHUFFLE:
        text += f"\nsampler = shuffle: {plan.accounted_epochs()} epochs accounted, no amplification by sampling"
    elif plan.sampler is Sampler.FIXED:
        text += "\nsampler = fixed (batches without replacement, replace-one neighbours)"
    return text


def _order(order: float | None) -> str:
    return "" if order is None else f", RDP order {order:.4g}"


@click.group(context_settings=_CONTEXT)
@click.version_option(__version__, "--version", prog_name="dpcalib")
def cli() -> None:
    """Differential-privacy accounting and noise calibration for DP-SGD (Poisson-subsampled Gaussian).

    \b
    Example: the smallest noise multiplier for (2, 1e-5)-DP over 1000 steps at q = 0.01:
      dpcalib sigma --eps 2 --delta 1e-5 --q 0.01 --steps 1000
    """


@cli.command(context_settings=_CONTEXT)
@click.option("--eps", type=float, required=True, help="target epsilon (> 0).")
@click.option("--delta", type=float, required=True, help="target delta, in (0, 1).")
@_plan_options
@_common_options
def sigma(
    eps: float, delta: float, q, steps, epochs, dataset_size, batch_size, sampler: str, accountant: str, as_json: bool
) -> None:
    """The smallest noise multiplier sigma (noise std / clipping norm) meeting (eps, delta).

    \b
    Examples:
      dpcalib sigma --eps 2 --delta 1e-5 --q 0.01 --steps 1000
      dpcalib sigma --eps 8 --delta 1e-5 --epochs 30 --dataset-size 60000 --batch-size 256 --json
      dpcalib sigma --eps 8 --delta 1e-5 --epochs 30 --dataset-size 60000 --batch-size 256 --sampler fixed
    """
    plan = make_plan(q, steps, epochs, dataset_size, batch_size, sampler=sampler)
    s = _calibrate_sigma(plan, eps, delta, accountant)
    achieved, order = _epsilon_and_order(accountant, s, plan, delta)
    _emit(
        as_json,
        _record(accountant, plan, sigma=s, eps=achieved, delta=delta, order=order, target_eps=eps),
        f"sigma = {s:.7g}\n"
        f"epsilon = {achieved:.8g} <= {eps:g} at delta = {delta:g}  ({accountant}{_order(order)})\n"
        f"{_describe(plan)}",
    )


@cli.command(context_settings=_CONTEXT)
@click.option("--sigma", "sigma_", type=float, required=True, help="noise multiplier, in [1e-100, 1e6].")
@click.option("--delta", type=float, required=True, help="delta, in (0, 1).")
@_plan_options
@_common_options
def epsilon(
    sigma_: float, delta: float, q, steps, epochs, dataset_size, batch_size, sampler: str, accountant: str, as_json: bool
) -> None:
    """The epsilon (an upper bound) spent by a run at a given delta.

    \b
    Examples:
      dpcalib epsilon --sigma 1.0 --delta 1e-5 --q 0.01 --steps 1000
      dpcalib epsilon --sigma 1.1 --delta 1e-5 --steps 7000 --dataset-size 60000 --batch-size 256 --sampler shuffle
    """
    plan = make_plan(q, steps, epochs, dataset_size, batch_size, sampler=sampler)
    s = check.noise_multiplier("sigma", sigma_)
    achieved, order = _epsilon_and_order(accountant, s, plan, delta)
    _emit(
        as_json,
        _record(accountant, plan, sigma=s, eps=achieved, delta=delta, order=order),
        f"epsilon = {achieved:.6g} at delta = {delta:g}  ({accountant}{_order(order)})\nsigma = {s:g}, {_describe(plan)}",
    )


@cli.command(context_settings=_CONTEXT)
@click.option("--sigma", "sigma_", type=float, required=True, help="noise multiplier, in [1e-100, 1e6].")
@click.option("--eps", type=float, required=True, help="epsilon (> 0).")
@_plan_options
@_common_options
def delta(
    sigma_: float, eps: float, q, steps, epochs, dataset_size, batch_size, sampler: str, accountant: str, as_json: bool
) -> None:
    """The delta (an upper bound) of a run at a given epsilon.

    \b
    Example:
      dpcalib delta --sigma 1.0 --eps 2 --q 0.01 --steps 1000
    """
    plan = make_plan(q, steps, epochs, dataset_size, batch_size, sampler=sampler)
    s = check.noise_multiplier("sigma", sigma_)
    e = check.positive("eps", eps)
    acc = make_accountant(accountant, sampler=plan.sampler.value).compose(plan.event(s))
    value = acc.delta(e)
    _emit(
        as_json,
        _record(accountant, plan, sigma=s, eps=e, delta=value),
        f"delta = {value:.6g} at epsilon = {e:g}  ({accountant})\nsigma = {s:g}, {_describe(plan)}",
    )


@cli.command(context_settings=_CONTEXT)
@click.option("--eps", type=float, required=True, help="epsilon budget (> 0).")
@click.option("--delta", type=float, required=True, help="delta, in (0, 1).")
@click.option("--sigma", "sigma_", type=float, required=True, help="noise multiplier, in [1e-100, 1e6].")
@click.option("--q", type=float, help="Poisson sampling rate per step, in (0, 1].")
@click.option("--dataset-size", type=int, help="alternative to --q: number of records N (q = B/N).")
@click.option("--batch-size", type=int, help="with --dataset-size: batch size B (expected size for poisson).")
@_sampler_option
@_common_options
def steps(
    eps: float, delta: float, sigma_: float, q, dataset_size, batch_size, sampler: str, accountant: str, as_json: bool
) -> None:
    """The largest number of steps whose epsilon stays within the budget.

    \b
    Examples:
      dpcalib steps --eps 2 --delta 1e-5 --sigma 1.0 --q 0.01
      dpcalib steps --eps 2 --delta 1e-5 --sigma 1.0 --dataset-size 60000 --batch-size 600
      dpcalib steps --eps 8 --delta 1e-5 --sigma 2.0 --dataset-size 60000 --batch-size 600 --sampler fixed
    """
    plan = make_plan(q, None, None, dataset_size, batch_size, need_steps=False, sampler=sampler)
    s = check.noise_multiplier("sigma", sigma_)
    if plan.sampler is Sampler.POISSON:
        count = calibrate_steps(eps=eps, delta=delta, sigma=s, q=plan.q, accountant=accountant)
    else:
        count = calibrate_steps_for(
            lambda t: plan.with_steps(t).event(s), eps=eps, delta=delta, accountant=accountant, sampler=plan.sampler.value
        )
    found = plan.with_steps(count)
    achieved, order = _epsilon_and_order(accountant, s, found, delta)
    text = f"steps = {count}"
    if found.epochs is not None:
        text += f"  (= {found.epochs:.4g} epochs)"
    _emit(
        as_json,
        _record(accountant, found, sigma=s, eps=achieved, delta=delta, order=order, target_eps=eps),
        f"{text}\nepsilon = {achieved:.8g} <= {eps:g} at delta = {delta:g}  ({accountant}{_order(order)})\n"
        f"sigma = {s:g}, q = {plan.q:.6g}{_sampler_note(found)}",
    )


@cli.command(context_settings=_CONTEXT)
@click.option("--eps", type=float, required=True, help="target epsilon (> 0).")
@click.option("--delta", type=float, required=True, help="target delta, in (0, 1).")
@_plan_options
@click.option("--json", "as_json", is_flag=True, help="print one JSON object instead of text.")
def compare(eps: float, delta: float, q, steps, epochs, dataset_size, batch_size, sampler: str, as_json: bool) -> None:
    """The same question under every registered accountant, side by side.

    For each accountant: the sigma it needs for (eps, delta), and the epsilon it certifies at the sigma of
    the first (reference) accountant: what a tighter bound buys, as less noise or as a smaller epsilon.
    Accountants without a bound for the sampler are left out.

    \b
    Example:
      dpcalib compare --eps 2 --delta 1e-5 --q 0.01 --steps 1000
    """
    plan = make_plan(q, steps, epochs, dataset_size, batch_size, sampler=sampler)
    names = [n for n in ACCOUNTANTS if _supports(n, plan)]
    sigmas = {n: _calibrate_sigma(plan, eps, delta, n) for n in names}
    reference = sigmas[names[0]]
    rows = []
    for n in names:
        at_reference, _ = _epsilon_and_order(n, reference, plan, delta)
        rows.append(
            {
                "accountant": n,
                "sigma": sigmas[n],
                "sigma_vs_reference": sigmas[n] / reference - 1.0,
                "eps_at_reference_sigma": at_reference,
            }
        )
    record = {"eps": eps, "delta": delta, **plan.as_dict(), "reference": names[0], "accountants": rows, "version": __version__}
    lines = [
        f"(eps, delta) = ({eps:g}, {delta:g}), {_describe(plan)}",
        f"{'accountant':<12}{'sigma needed':>14}{'noise vs ' + names[0]:>16}{'eps at sigma=' + format(reference, '.4g'):>22}",
    ]
    for row in rows:
        lines.append(
            f"{row['accountant']:<12}{row['sigma']:>14.7g}{row['sigma_vs_reference']:>+15.2%} {row['eps_at_reference_sigma']:>21.7g}"
        )
    _emit(as_json, record, "\n".join(lines))


#: the most points `curve` computes: each costs one composition per accountant (a PLD one takes up to about a second)
_POINTS_MAX = 50


def _step_grid(total: int, points: int) -> list[int]:
    """About ``points`` step counts from 1 to ``total``, evenly spaced on a log scale, always ending at ``total``."""
    grid = {max(1, round(total ** (i / max(points - 1, 1)))) for i in range(points)}
    grid.add(total)
    return sorted(grid)


@cli.command(context_settings=_CONTEXT)
@click.option("--sigma", "sigma_", type=float, required=True, help="noise multiplier, in [1e-100, 1e6].")
@click.option("--q", type=float, help="Poisson sampling rate per step, in (0, 1].")
@click.option("--steps", type=int, required=True, help="the longest run to show (integer in [1, 10^12]).")
@click.option("--dataset-size", type=int, help="with --sampler fixed|shuffle: number of records N.")
@click.option("--batch-size", type=int, help="with --sampler fixed|shuffle: batch size B.")
@_sampler_option
@click.option("--delta", type=float, default=1e-5, show_default=True, help="delta, in (0, 1).")
@click.option("--points", type=int, default=20, show_default=True, help=f"number of step counts (log-spaced, 2 to {_POINTS_MAX}).")
@click.option("--csv", "as_csv", is_flag=True, help="print CSV (steps, then one column per accountant).")
@click.option("--plot", "plot_file", type=click.Path(dir_okay=False), help="also save a plot (needs matplotlib: extra 'plot').")
@click.option("--json", "as_json", is_flag=True, help="print one JSON object instead of text.")
def curve(
    sigma_: float, q: float | None, steps: int, dataset_size: int | None, batch_size: int | None, sampler: str,
    delta: float, points: int, as_csv: bool, plot_file: str | None, as_json: bool,
) -> None:
    """Epsilon against the number of steps under every registered accountant (that supports the sampler).

    \b
    Examples:
      dpcalib curve --sigma 1 --q 0.01 --steps 10000
      dpcalib curve --sigma 1 --q 0.01 --steps 10000 --csv --plot curve.png
    """
    s = check.noise_multiplier("sigma", sigma_)
    if sampler == Sampler.POISSON.value:
        plan = make_plan(q, steps, None, None, None)
        if dataset_size is not None or batch_size is not None:
            bad = "dataset-size" if dataset_size is not None else "batch-size"
            raise InvalidArgumentError(bad, dataset_size if dataset_size is not None else batch_size, "omitted with --q")
    else:
        plan = make_plan(q, steps, None, dataset_size, batch_size, sampler=sampler)
    n_points = check.count("points", points, minimum=2, maximum=_POINTS_MAX)
    if plot_file is not None:
        _check_writable("--plot", plot_file)
    grid = _step_grid(plan.steps, n_points)
    names = [n for n in ACCOUNTANTS if _supports(n, plan)]
    table = {n: [_epsilon_and_order(n, s, plan.with_steps(t), delta)[0] for t in grid] for n in names}
    _check_finite(table)
    if plot_file is not None:
        _plot(plot_file, grid, table, s, plan.q, delta)
    if as_json:
        record = {"sigma": s, "q": plan.q, "sampler": plan.sampler.value, "delta": delta, "steps": grid, "eps": table}
        click.echo(json.dumps({**record, "version": __version__}))
    elif as_csv:
        click.echo(",".join(["steps", *(f"eps_{n}" for n in names)]))
        for i, t in enumerate(grid):
            click.echo(",".join([str(t), *(repr(table[n][i]) for n in names)]))
    else:
        click.echo(f"epsilon at delta = {delta:g}, sigma = {s:g}, q = {plan.q:g}")
        click.echo(f"{'steps':>10}" + "".join(f"{n:>12}" for n in names))
        for i, t in enumerate(grid):
            click.echo(f"{t:>10}" + "".join(f"{table[n][i]:>12.5g}" for n in names))


def _check_writable(option: str, path: str) -> None:
    """Refuse, before any computation, a file path whose directory does not exist or cannot be written."""
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder) or not os.access(folder, os.W_OK | os.X_OK):
        raise click.BadParameter(f"{path!r} is not in an existing, writable directory.", param_hint=f"'{option}'")


def _plot(path: str, grid: list[int], table: dict[str, list[float]], sigma: float, q: float, delta: float) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise click.UsageError("--plot needs matplotlib: pip install 'dpcalib[plot]'") from None
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, values in table.items():
        ax.plot(grid, values, marker=".", label=name)
    ax.set_xscale("log")
    ax.set_xlabel("steps")
    ax.set_ylabel(f"epsilon at delta = {delta:g}")
    ax.set_title(f"sigma = {sigma:g}, q = {q:g}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    try:
        fig.savefig(path, dpi=120)
    except (OSError, ValueError) as err:  # e.g. the directory vanished, the disk is full, an unknown extension
        raise click.BadParameter(f"cannot save the plot to {path!r}: {err}", param_hint="'--plot'") from None
    finally:
        plt.close(fig)


@cli.command(context_settings=_CONTEXT)
@click.option("--sigma", "sigma_", type=float, required=True, help="noise multiplier, in [1e-100, 1e6].")
@_plan_options
@click.option("--delta", "deltas", type=float, multiple=True, default=risk.DEFAULT_DELTAS, show_default=True,
              help="a delta at which to state epsilon, in (0, 1); repeatable.")
@click.option("--fpr", "fprs", type=float, multiple=True, default=risk.DEFAULT_FPRS, show_default=True,
              help="an attacker false-positive rate at which to bound the true-positive rate, in (0, 1); repeatable.")
@click.option("--prior", type=float, default=0.5, show_default=True,
              help="the attacker's prior probability that a record is a member, in (0, 1).")
@click.option("--accountant", type=click.Choice(sorted(ACCOUNTANTS)), default="pld", show_default=True,
              help="privacy accountant (pld: the tight profile; rdp: a looser, still valid, bound).")
@click.option("--plot", "plot_file", type=click.Path(dir_okay=False),
              help="also save the trade-off curve against random guessing (needs matplotlib: extra 'plot').")
@click.option("--json", "as_json", is_flag=True, help="print one JSON object instead of text.")
def report(sigma_: float, q, steps, epochs, dataset_size, batch_size, sampler: str, deltas, fprs, prior: float,
           accountant: str, plot_file: str | None, as_json: bool) -> None:
    """A run's privacy guarantee read as membership-inference risk (see docs/report.md).

    Epsilon at a few deltas; bounds on any attacker's true-positive rate (TPR) at given false-positive rates (FPR),
    from the tight trade-off curve (f-DP) implied by the accountant's privacy profile; the largest advantage
    TPR - FPR; the bound on P(member | flagged) for a prior; and the mu-GDP (central-limit) approximation, with a
    warning where it understates the risk.

    \b
    Examples:
      dpcalib report --sigma 1.022 --q 0.01 --steps 1000
      dpcalib report --sigma 1.022 --q 0.01 --steps 1000 --prior 0.01 --json --plot report.png
    """
    plan = make_plan(q, steps, epochs, dataset_size, batch_size, sampler=sampler)
    s = check.noise_multiplier("sigma", sigma_)
    if plot_file is not None:
        _check_writable("--plot", plot_file)
    found = risk.risk_report(plan.event(s), accountant=accountant, deltas=deltas, fprs=fprs, prior=prior)
    if plot_file is not None:
        try:
            risk.save_plot(found, plot_file, title=f"sigma = {s:g}, {_describe(plan)}")
        except ImportError:
            raise click.UsageError("--plot needs matplotlib: pip install 'dpcalib[plot]'") from None
    if as_json:
        click.echo(json.dumps({"sigma": s, **plan.as_dict(), **found.as_dict(), "version": __version__}))
        return
    lines = [f"sigma = {s:g}, {_describe(plan)}  ({accountant})",
             "epsilon (upper bound): " + ", ".join(f"{e:.4g} at delta = {d:g}" for d, e in found.epsilons),
             f"membership inference by any attacker, prior P(member) = {found.prior:g}:",
             f"{'FPR':>10}{'TPR at most':>14}{'P(member | flagged) at most':>30}{'mu-GDP TPR':>13}"]
    for a in found.attacks:
        gdp = "-" if a.gdp_tpr is None else f"{a.gdp_tpr:.4g}"
        lines.append(f"{a.fpr:>10g}{a.tpr:>14.4g}{a.posterior:>30.4g}{gdp:>13}")
    lines.append(f"largest advantage TPR - FPR: at most {found.advantage:.4g}  (delta at epsilon = 0)")
    if found.gdp_mu is None:
        lines.append("mu-GDP approximation: not available for this event")
    else:
        lines.append(f"mu-GDP approximation: mu = {found.gdp_mu:.4g}")
    if found.gdp_understates:
        at = ", ".join(f"{a:g}" for a in found.gdp_understates)
        lines.append(f"warning: the mu-GDP approximation understates the risk: its TPR is more than "
                     f"{risk.GDP_TOLERANCE:.0%} below\n  the PLD bound at FPR {at}; rely on the bound")
    click.echo("\n".join(lines))


@cli.command(context_settings=_CONTEXT)
@click.option("--eps", type=float, required=True, help="target epsilon (> 0).")
@click.option("--delta", type=float, required=True, help="target delta, in (0, 1).")
@click.option("--q", type=float, default=1.0, show_default=True, help="Poisson rate of each round's cohort, in (0, 1].")
@click.option("--steps", type=int, required=True, help="rounds (>= 1).")
@click.option("--bits", type=int, default=16, show_default=True, help="bits per coordinate of the ring, in [2, 62].")
@click.option("--clip", type=float, default=1.0, show_default=True, help="L2 clip norm of each client's vector (> 0).")
@click.option("--dim", type=int, required=True, help="length of the vectors summed (>= 1).")
@click.option("--clients", type=int, required=True, help="the most clients a round sums (>= 1).")
@click.option("--min-survivors", type=int, default=None, help="the fewest clients a released sum covers "
              "(default: --clients); their shares carry the accounted noise.")
@click.option("--wrap", type=float, default=1e-6, show_default=True, help="bound on the probability that a round's "
              "sum wraps around, in (0, 1).")
@click.option("--json", "as_json", is_flag=True, help="print one JSON object instead of text.")
def skellam(eps: float, delta: float, q: float, steps: int, bits: int, clip: float, dim: int, clients: int,
            min_survivors: int | None, wrap: float, as_json: bool) -> None:
    """Distributed Skellam noise for a secure sum in Z_(2^bits): the finest scale whose wrap-around bound is at
    most --wrap, and the smallest noise meeting (eps, delta) there (RDP accountant).

    \b
    Example: 100 clients of a 26,010-parameter model, 16 bits, 1000 rounds at q = 0.1:
      dpcalib skellam --eps 8 --delta 1e-5 --q 0.1 --steps 1000 --dim 26010 --clients 100 --min-survivors 67
    """
    plan = discrete.plan_skellam(eps=eps, delta=delta, q=q, steps=steps, bits=bits, clip=clip, dim=dim,
                                 clients=clients, min_survivors=min_survivors, wrap=wrap)
    achieved = make_accountant("rdp").compose(plan.event).epsilon(delta)
    record = {"scale": plan.scale, "mu": plan.mu, "share_variance": plan.share_variance,
              "l2_sensitivity": plan.l2_sensitivity, "l1_sensitivity": plan.l1_sensitivity,
              "noise_multiplier": plan.noise_multiplier, "noise_std": plan.noise_std,
              "wrap_probability": plan.wrap_probability, "eps": achieved, "delta": delta, "target_eps": eps,
              "q": q, "steps": steps, "bits": bits, "clip": clip, "dim": dim, "padded_dim": plan.padded_dim,
              "clients": clients, "min_survivors": plan.min_survivors, "accountant": "rdp", "version": __version__}
    _emit(
        as_json,
        record,
        f"scale = {plan.scale:.7g}  (bits = {bits}, dim = {dim} padded to {plan.padded_dim})\n"
        f"skellam variance mu = {plan.mu:.7g} per coordinate; each client adds mu/{plan.min_survivors} = "
        f"{plan.share_variance:.7g}\n"
        f"sensitivity: l2 = {plan.l2_sensitivity:.7g}, l1 = {plan.l1_sensitivity:.7g}  "
        f"(noise multiplier {plan.noise_multiplier:.6g})\n"
        f"noise std of the decoded sum = {plan.noise_std:.6g}  (clip = {clip:g})\n"
        f"wrap-around probability per round <= {plan.wrap_probability:.3g}  ({clients} clients)\n"
        f"epsilon = {achieved:.8g} <= {eps:g} at delta = {delta:g}  (rdp, q = {q:g}, steps = {steps})",
    )


def run(argv: Sequence[str] | None = None) -> int:
    """Run the CLI and return its exit status.

    0 on success, after relaying each distinct :class:`~dpcalib.errors.DpcalibWarning` once (numerical warnings of
    numpy inside the library are not the user's concern and are dropped); 2 after one line on stderr for bad input
    or an unreachable target; 1 after one line for an unexpected exception (a bug in dpcalib). Never a traceback,
    and a failure prints nothing but its one line."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            status = cli.main(args=list(argv) if argv is not None else None, prog_name="dpcalib", standalone_mode=False)
        except click.exceptions.UsageError as err:
            return _fail(err.format_message())
        except click.exceptions.Abort:
            return _fail("aborted")
        except DpcalibError as err:
            return _fail(str(err))
        except Exception as err:  # noqa: BLE001 -- the last resort: one line, not a traceback
            return _fail(f"internal error ({type(err).__name__}: {err}); please report this command line", status=1)
    relayed = (str(w.message) for w in caught if issubclass(w.category, DpcalibWarning))
    for message in dict.fromkeys(relayed):
        click.echo("dpcalib: warning: " + " ".join(message.split()), err=True)
    return status if isinstance(status, int) else 0


def _fail(message: str, status: int = 2) -> int:
    click.echo("dpcalib: error: " + " ".join(message.split()), err=True)
    return status


def main() -> None:
    """Console-script entry point."""
    sys.exit(run())
