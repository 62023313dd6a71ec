"""``dpcalib``: privacy accounting and noise calibration for DP-SGD from the shell.

Commands: ``sigma`` (noise for a budget), ``epsilon`` (ε of a run), ``delta`` (δ of a run), ``steps`` (longest run
within a budget), ``compare`` (the same question under every registered accountant) and ``curve`` (ε against
steps). Every command takes ``--accountant``, ``--json``, and either ``--q/--steps`` or
``--epochs/--dataset-size/--batch-size`` (q = B/N, steps = ⌈E·N/B⌉ so that the accounting never undercounts).

Bad input exits with status 2 and one line on stderr naming the argument; never a traceback.
"""

from __future__ import annotations

import json
import math
import sys
import warnings
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Callable, Sequence

import click

from . import __version__
from .accountant import ACCOUNTANTS, make_accountant
from .calibrate import calibrate_sigma, calibrate_steps
from .errors import DpcalibError, InvalidArgumentError
from .events import dpsgd_event
from . import report as risk
from . import validation as check

__all__ = ["cli", "main", "run"]

_CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


@dataclass(frozen=True)
class Plan:
    """The sampling rate and number of steps of a run, and the epoch view it came from (if any)."""

    q: float
    steps: int
    epochs: float | None = None
    dataset_size: int | None = None
    batch_size: int | None = None

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"q": self.q, "steps": self.steps}
        if self.epochs is not None:
            out.update(epochs=self.epochs, dataset_size=self.dataset_size, batch_size=self.batch_size)
        return out


def _rate_from(dataset_size: int | None, batch_size: int | None) -> tuple[int, int]:
    n = check.count("dataset-size", dataset_size)
    b = check.count("batch-size", batch_size)
    if b > n:
        raise InvalidArgumentError("batch-size", b, f"an integer in [1, dataset-size={n}]")
    return n, b


def make_plan(
    q: float | None, steps: int | None, epochs: float | None, dataset_size: int | None, batch_size: int | None,
    need_steps: bool = True,
) -> Plan:
    """Resolve ``--q/--steps`` or ``--epochs/--dataset-size/--batch-size`` (never both) into a :class:`Plan`."""
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
    return Plan(q=rate, steps=check.count("steps", steps))


def _plan_options(func: Callable[..., Any]) -> Callable[..., Any]:
    options = [
        click.option("--q", type=float, help="Poisson sampling rate per step, in (0, 1]."),
        click.option("--steps", type=int, help="number of noisy steps (integer >= 1)."),
        click.option("--epochs", type=float, help="alternative to --q/--steps: passes over the data (> 0)."),
        click.option("--dataset-size", type=int, help="with --epochs: number of records N (q = B/N)."),
        click.option("--batch-size", type=int, help="with --epochs: expected batch size B (steps = ceil(E*N/B))."),
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
    acc = make_accountant(accountant).compose(dpsgd_event(sigma=sigma, q=plan.q, steps=plan.steps))
    return acc.epsilon_and_order(delta)


def _emit(as_json: bool, record: dict[str, Any], text: str) -> None:
    if as_json:
        click.echo(json.dumps(record))
    else:
        click.echo(text)


def _record(accountant: str, plan: Plan, **fields: Any) -> dict[str, Any]:
    return {**fields, **plan.as_dict(), "accountant": accountant, "version": __version__}


def _describe(plan: Plan) -> str:
    text = f"q = {plan.q:.6g}, steps = {plan.steps}"
    if plan.epochs is not None:
        text += f"  (epochs = {plan.epochs:g}, dataset size = {plan.dataset_size}, batch size = {plan.batch_size})"
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
def sigma(eps: float, delta: float, q, steps, epochs, dataset_size, batch_size, accountant: str, as_json: bool) -> None:
    """The smallest noise multiplier sigma (noise std / clipping norm) meeting (eps, delta).

    \b
    Examples:
      dpcalib sigma --eps 2 --delta 1e-5 --q 0.01 --steps 1000
      dpcalib sigma --eps 8 --delta 1e-5 --epochs 30 --dataset-size 60000 --batch-size 256 --json
    """
    plan = make_plan(q, steps, epochs, dataset_size, batch_size)
    s = calibrate_sigma(eps=eps, delta=delta, q=plan.q, steps=plan.steps, accountant=accountant)
    achieved, order = _epsilon_and_order(accountant, s, plan, delta)
    _emit(
        as_json,
        _record(accountant, plan, sigma=s, eps=achieved, delta=delta, order=order, target_eps=eps),
        f"sigma = {s:.7g}\n"
        f"epsilon = {achieved:.8g} <= {eps:g} at delta = {delta:g}  ({accountant}{_order(order)})\n"
        f"{_describe(plan)}",
    )


@cli.command(context_settings=_CONTEXT)
@click.option("--sigma", "sigma_", type=float, required=True, help="noise multiplier (> 0).")
@click.option("--delta", type=float, required=True, help="delta, in (0, 1).")
@_plan_options
@_common_options
def epsilon(sigma_: float, delta: float, q, steps, epochs, dataset_size, batch_size, accountant: str, as_json: bool) -> None:
    """The epsilon (an upper bound) spent by a run at a given delta.

    \b
    Example:
      dpcalib epsilon --sigma 1.0 --delta 1e-5 --q 0.01 --steps 1000
    """
    plan = make_plan(q, steps, epochs, dataset_size, batch_size)
    s = check.positive("sigma", sigma_)
    achieved, order = _epsilon_and_order(accountant, s, plan, delta)
    _emit(
        as_json,
        _record(accountant, plan, sigma=s, eps=achieved, delta=delta, order=order),
        f"epsilon = {achieved:.6g} at delta = {delta:g}  ({accountant}{_order(order)})\nsigma = {s:g}, {_describe(plan)}",
    )


@cli.command(context_settings=_CONTEXT)
@click.option("--sigma", "sigma_", type=float, required=True, help="noise multiplier (> 0).")
@click.option("--eps", type=float, required=True, help="epsilon (> 0).")
@_plan_options
@_common_options
def delta(sigma_: float, eps: float, q, steps, epochs, dataset_size, batch_size, accountant: str, as_json: bool) -> None:
    """The delta (an upper bound) of a run at a given epsilon.

    \b
    Example:
      dpcalib delta --sigma 1.0 --eps 2 --q 0.01 --steps 1000
    """
    plan = make_plan(q, steps, epochs, dataset_size, batch_size)
    s = check.positive("sigma", sigma_)
    e = check.positive("eps", eps)
    acc = make_accountant(accountant).compose(dpsgd_event(sigma=s, q=plan.q, steps=plan.steps))
    value = acc.delta(e)
    _emit(
        as_json,
        _record(accountant, plan, sigma=s, eps=e, delta=value),
        f"delta = {value:.6g} at epsilon = {e:g}  ({accountant})\nsigma = {s:g}, {_describe(plan)}",
    )


@cli.command(context_settings=_CONTEXT)
@click.option("--eps", type=float, required=True, help="epsilon budget (> 0).")
@click.option("--delta", type=float, required=True, help="delta, in (0, 1).")
@click.option("--sigma", "sigma_", type=float, required=True, help="noise multiplier (> 0).")
@click.option("--q", type=float, help="Poisson sampling rate per step, in (0, 1].")
@click.option("--dataset-size", type=int, help="alternative to --q: number of records N (q = B/N).")
@click.option("--batch-size", type=int, help="with --dataset-size: expected batch size B.")
@_common_options
def steps(eps: float, delta: float, sigma_: float, q, dataset_size, batch_size, accountant: str, as_json: bool) -> None:
    """The largest number of steps whose epsilon stays within the budget.

    \b
    Examples:
      dpcalib steps --eps 2 --delta 1e-5 --sigma 1.0 --q 0.01
      dpcalib steps --eps 2 --delta 1e-5 --sigma 1.0 --dataset-size 60000 --batch-size 600
    """
    plan = make_plan(q, None, None, dataset_size, batch_size, need_steps=False)
    s = check.positive("sigma", sigma_)
    count = calibrate_steps(eps=eps, delta=delta, sigma=s, q=plan.q, accountant=accountant)
    found = Plan(plan.q, count, None if plan.dataset_size is None else count * plan.q, plan.dataset_size, plan.batch_size)
    achieved, order = _epsilon_and_order(accountant, s, found, delta)
    text = f"steps = {count}"
    if found.epochs is not None:
        text += f"  (= {found.epochs:.4g} epochs)"
    _emit(
        as_json,
        _record(accountant, found, sigma=s, eps=achieved, delta=delta, order=order, target_eps=eps),
        f"{text}\nepsilon = {achieved:.8g} <= {eps:g} at delta = {delta:g}  ({accountant}{_order(order)})\n"
        f"sigma = {s:g}, q = {plan.q:.6g}",
    )


@cli.command(context_settings=_CONTEXT)
@click.option("--eps", type=float, required=True, help="target epsilon (> 0).")
@click.option("--delta", type=float, required=True, help="target delta, in (0, 1).")
@_plan_options
@click.option("--json", "as_json", is_flag=True, help="print one JSON object instead of text.")
def compare(eps: float, delta: float, q, steps, epochs, dataset_size, batch_size, as_json: bool) -> None:
    """The same question under every registered accountant, side by side.

    For each accountant: the sigma it needs for (eps, delta), and the epsilon it certifies at the sigma of
    the first (reference) accountant: what a tighter bound buys, as less noise or as a smaller epsilon.

    \b
    Example:
      dpcalib compare --eps 2 --delta 1e-5 --q 0.01 --steps 1000
    """
    plan = make_plan(q, steps, epochs, dataset_size, batch_size)
    names = list(ACCOUNTANTS)
    sigmas = {n: calibrate_sigma(eps=eps, delta=delta, q=plan.q, steps=plan.steps, accountant=n) for n in names}
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


def _step_grid(total: int, points: int) -> list[int]:
    """About ``points`` step counts from 1 to ``total``, evenly spaced on a log scale, always ending at ``total``."""
    grid = {max(1, round(total ** (i / max(points - 1, 1)))) for i in range(points)}
    grid.add(total)
    return sorted(grid)


@cli.command(context_settings=_CONTEXT)
@click.option("--sigma", "sigma_", type=float, required=True, help="noise multiplier (> 0).")
@click.option("--q", type=float, required=True, help="Poisson sampling rate per step, in (0, 1].")
@click.option("--steps", type=int, required=True, help="the longest run to show (integer >= 1).")
@click.option("--delta", type=float, default=1e-5, show_default=True, help="delta, in (0, 1).")
@click.option("--points", type=int, default=20, show_default=True, help="number of step counts (log-spaced, >= 2).")
@click.option("--csv", "as_csv", is_flag=True, help="print CSV (steps, then one column per accountant).")
@click.option("--plot", "plot_file", type=click.Path(dir_okay=False), help="also save a plot (needs matplotlib: extra 'plot').")
@click.option("--json", "as_json", is_flag=True, help="print one JSON object instead of text.")
def curve(sigma_: float, q: float, steps: int, delta: float, points: int, as_csv: bool, plot_file: str | None, as_json: bool) -> None:
    """Epsilon against the number of steps under every registered accountant.

    \b
    Examples:
      dpcalib curve --sigma 1 --q 0.01 --steps 10000
      dpcalib curve --sigma 1 --q 0.01 --steps 10000 --csv --plot curve.png
    """
    s = check.positive("sigma", sigma_)
    plan = make_plan(q, steps, None, None, None)
    n_points = check.count("points", points, minimum=2)
    grid = _step_grid(plan.steps, n_points)
    names = list(ACCOUNTANTS)
    table = {n: [_epsilon_and_order(n, s, Plan(plan.q, t), delta)[0] for t in grid] for n in names}
    if plot_file is not None:
        _plot(plot_file, grid, table, s, plan.q, delta)
    if as_json:
        click.echo(json.dumps({"sigma": s, "q": plan.q, "delta": delta, "steps": grid, "eps": table, "version": __version__}))
    elif as_csv:
        click.echo(",".join(["steps", *(f"eps_{n}" for n in names)]))
        for i, t in enumerate(grid):
            click.echo(",".join([str(t), *(repr(table[n][i]) for n in names)]))
    else:
        click.echo(f"epsilon at delta = {delta:g}, sigma = {s:g}, q = {plan.q:g}")
        click.echo(f"{'steps':>10}" + "".join(f"{n:>12}" for n in names))
        for i, t in enumerate(grid):
            click.echo(f"{t:>10}" + "".join(f"{table[n][i]:>12.5g}" for n in names))


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
    fig.savefig(path, dpi=120)
    plt.close(fig)


@cli.command(context_settings=_CONTEXT)
@click.option("--sigma", "sigma_", type=float, required=True, help="noise multiplier (> 0).")
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
def report(sigma_: float, q, steps, epochs, dataset_size, batch_size, deltas, fprs, prior: float, accountant: str,
           plot_file: str | None, as_json: bool) -> None:
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
    plan = make_plan(q, steps, epochs, dataset_size, batch_size)
    s = check.positive("sigma", sigma_)
    found = risk.risk_report(dpsgd_event(sigma=s, q=plan.q, steps=plan.steps), accountant=accountant, deltas=deltas,
                             fprs=fprs, prior=prior)
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


def run(argv: Sequence[str] | None = None) -> int:
    """Run the CLI and return its exit status: 0, or 2 after one line on stderr for bad input."""
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
        finally:
            for w in caught:
                click.echo(f"dpcalib: warning: {w.message}", err=True)
    return status if isinstance(status, int) else 0


def _fail(message: str) -> int:
    click.echo("dpcalib: error: " + " ".join(message.split()), err=True)
    return 2


def main() -> None:
    """Console-script entry point."""
    sys.exit(run())
