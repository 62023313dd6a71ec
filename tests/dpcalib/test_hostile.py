"""Hostile input: every public entry point refuses what is not a number in its range with a typed error naming the
argument, the supported domain (dpcalib.validation) holds everywhere, and the command line answers every input
with a result or one line and a non-zero status, never a traceback (issue 10, items 1-3)."""

from __future__ import annotations

import subprocess
import sys
import warnings

import numpy as np
import pytest

import dpcalib
from dpcalib import validation as check
from dpcalib.errors import InvalidArgumentError

GAUSSIAN = dpcalib.Gaussian(1.0)
EVENT = dpcalib.dpsgd_event(sigma=1.0, q=0.01, steps=10)
HUGE = 10**400  # larger than any float

# (name, call taking the argument under test, argument name, a valid value)
ENTRY_POINTS = [
    ("epsilon", lambda v, k: dpcalib.epsilon(**{**dict(sigma=1.0, q=0.01, steps=10, delta=1e-5), k: v}), ["sigma", "q", "steps", "delta"]),
    ("delta", lambda v, k: dpcalib.delta(**{**dict(sigma=1.0, q=0.01, steps=10, eps=1.0), k: v}), ["sigma", "q", "steps", "eps"]),
    ("event_epsilon", lambda v, k: dpcalib.event_epsilon(EVENT, **{k: v}), ["delta"]),
    ("event_delta", lambda v, k: dpcalib.event_delta(EVENT, **{k: v}), ["eps"]),
    ("calibrate_sigma", lambda v, k: dpcalib.calibrate_sigma(**{**dict(eps=2.0, delta=1e-5, q=0.01, steps=100), k: v}), ["eps", "delta", "q", "steps", "rtol"]),
    ("calibrate_steps", lambda v, k: dpcalib.calibrate_steps(**{**dict(eps=2.0, delta=1e-5, sigma=1.0, q=0.01), k: v}), ["eps", "delta", "sigma", "q"]),
    ("calibrate_q", lambda v, k: dpcalib.calibrate_q(**{**dict(eps=2.0, delta=1e-5, sigma=1.0, steps=100), k: v}), ["eps", "delta", "sigma", "steps", "rtol"]),
    ("calibrate_sigma_for", lambda v, k: dpcalib.calibrate_sigma_for(dpcalib.Gaussian, **{**dict(eps=2.0, delta=1e-5), k: v}), ["eps", "delta", "rtol"]),
    ("Gaussian", lambda v, k: dpcalib.Gaussian(v), ["sigma"]),
    ("PoissonSampled", lambda v, k: dpcalib.PoissonSampled(v, GAUSSIAN), ["q"]),
    ("SampledWithoutReplacement", lambda v, k: dpcalib.SampledWithoutReplacement(**{**dict(n=100, batch=10, event=GAUSSIAN), k: v}), ["n", "batch"]),
    ("Repeated", lambda v, k: dpcalib.Repeated(GAUSSIAN, v), ["count"]),
    ("dpsgd_event", lambda v, k: dpcalib.dpsgd_event(**{**dict(sigma=1.0, q=0.01, steps=10), k: v}), ["sigma", "q", "steps"]),
    ("RdpAccountant.compose", lambda v, k: dpcalib.RdpAccountant().compose(GAUSSIAN, v), ["count"]),
    ("PldAccountant.compose", lambda v, k: dpcalib.PldAccountant().compose(GAUSSIAN, v), ["count"]),
    ("RdpAccountant.epsilon", lambda v, k: dpcalib.RdpAccountant().compose(GAUSSIAN).epsilon(v), ["delta"]),
    ("RdpAccountant.delta", lambda v, k: dpcalib.RdpAccountant().compose(GAUSSIAN).delta(v), ["eps"]),
    ("PldAccountant.epsilon", lambda v, k: dpcalib.PldAccountant().compose(GAUSSIAN).epsilon(v), ["delta"]),
    ("PldAccountant.delta", lambda v, k: dpcalib.PldAccountant().compose(GAUSSIAN).delta(v), ["eps"]),
    ("RdpAccountant", lambda v, k: dpcalib.RdpAccountant(**{k: v}), ["orders", "refine"]),
    ("PldAccountant", lambda v, k: dpcalib.PldAccountant(value_discretization_interval=v), ["value_discretization_interval"]),
    ("gaussian_rdp", lambda v, k: dpcalib.gaussian_rdp(**{**dict(sigma=1.0, orders=[2.0]), k: v}), ["sigma", "orders"]),
    ("poisson_gaussian_rdp", lambda v, k: dpcalib.poisson_gaussian_rdp(**{**dict(q=0.1, sigma=1.0, orders=[2.0]), k: v}), ["q", "sigma", "orders"]),
    ("without_replacement_gaussian_rdp", lambda v, k: dpcalib.without_replacement_gaussian_rdp(**{**dict(n=100, batch=10, sigma=1.0, orders=[2.0]), k: v}), ["n", "batch", "sigma", "orders"]),
    ("rdp_to_epsilon", lambda v, k: dpcalib.rdp_to_epsilon(**{**dict(orders=[2.0, 3.0], rdp=[0.1, 0.2], delta=1e-5), k: v}), ["orders", "rdp", "delta"]),
    ("rdp_to_delta", lambda v, k: dpcalib.rdp_to_delta(**{**dict(orders=[2.0, 3.0], rdp=[0.1, 0.2], eps=1.0), k: v}), ["orders", "rdp", "eps"]),
    ("optimise_epsilon", lambda v, k: dpcalib.optimise_epsilon(lambda a: a / 2.0, **{**dict(delta=1e-5), k: v}), ["delta", "orders"]),
    ("optimise_delta", lambda v, k: dpcalib.optimise_delta(lambda a: a / 2.0, **{**dict(eps=1.0), k: v}), ["eps", "orders"]),
    ("make_accountant", lambda v, k: dpcalib.make_accountant(v), ["accountant"]),
]
# valid values among the hostile ones: None is the default of these, and refine is a flag
VALID = {
    ("RdpAccountant", "orders", None),
    ("PldAccountant", "value_discretization_interval", None),
    ("optimise_epsilon", "orders", None),
    ("optimise_delta", "orders", None),
    ("RdpAccountant", "refine", True),
    ("RdpAccountant", "refine", False),
}
HOSTILE = [True, False, "2", b"2", HUGE, -HUGE, float("nan"), float("inf"), None, [1.0], {"x": 1}, 1e-300 + 0j]
CASES = [
    pytest.param(call, arg, bad, id=f"{name}-{arg}-{type(bad).__name__}{HOSTILE.index(bad)}")
    for name, call, args in ENTRY_POINTS
    for arg in args
    for bad in HOSTILE
    if not any(n == name and a == arg and v is bad for n, a, v in VALID)
]


@pytest.mark.parametrize("call,arg,bad", CASES)
def test_hostile_values_raise_a_typed_error_naming_the_argument(call, arg, bad):
    with pytest.raises(InvalidArgumentError) as raised:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            call(bad, arg)
    assert raised.value.name == arg
    assert len(str(raised.value)) < 300  # a 400-digit integer is cut, the message stays one short line


def test_the_supported_step_range_is_enforced_at_every_entry_point():
    top = check.STEPS_MAX
    assert dpcalib.calibrate.STEPS_MAX == top == 10**12
    assert dpcalib.dpsgd_event(sigma=1.0, q=0.01, steps=top).count == top
    for call in (
        lambda: dpcalib.dpsgd_event(sigma=1.0, q=0.01, steps=top + 1),
        lambda: dpcalib.Repeated(GAUSSIAN, top + 1),
        lambda: dpcalib.epsilon(sigma=1.0, q=0.01, steps=top + 1, delta=1e-5),
        lambda: dpcalib.delta(sigma=1.0, q=0.01, steps=10**18, eps=1.0, accountant="pld"),
        lambda: dpcalib.calibrate_sigma(eps=2.0, delta=1e-5, q=0.01, steps=10**18, accountant="pld"),
        lambda: dpcalib.calibrate_sigma(eps=2.0, delta=1e-5, q=0.01, steps=10**400),
        lambda: dpcalib.calibrate_q(eps=2.0, delta=1e-5, sigma=1.0, steps=top + 1),
    ):
        with pytest.raises(InvalidArgumentError, match=r"steps|count"):
            call()


@pytest.mark.parametrize("accountant", ["rdp", "pld"])
def test_an_accountant_composes_at_most_steps_max_runs_in_total(accountant):
    acc = dpcalib.make_accountant(accountant).compose(dpcalib.Repeated(GAUSSIAN, 10**6), 10**6)  # 10^12 runs: fine
    before = acc.state_dict()
    with pytest.raises(InvalidArgumentError, match=r"count=1 .*at most 1000000000000 runs .*1000000000000 so far"):
        acc.compose(GAUSSIAN)
    nested = dpcalib.Repeated(dpcalib.Repeated(GAUSSIAN, 10**7), 10**7)  # each count in range, 10^14 in total
    with pytest.raises(InvalidArgumentError, match="count"):
        dpcalib.make_accountant(accountant).compose(nested)
    assert acc.state_dict() == before  # a refused compose leaves the accountant as it was


def test_the_supported_noise_range_is_enforced_and_its_ends_work():
    lo, hi = check.SIGMA_RANGE
    for sigma in (lo, hi):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", dpcalib.OrderRangeWarning)  # σ = 1e6: the best order is the grid's last
            eps = dpcalib.epsilon(sigma=sigma, q=0.5, steps=1000, delta=1e-5)
        assert np.isfinite(eps) and eps > 0.0
    for sigma in (lo * (1 - 1e-12), hi * (1 + 1e-12), 1e-300):
        with pytest.raises(InvalidArgumentError, match=r"sigma=.* must be in \[1e-100, 1e\+06\]"):
            dpcalib.Gaussian(sigma)


def test_dataset_sizes_beyond_exact_floats_are_refused():
    assert dpcalib.SampledWithoutReplacement(check.SIZE_MAX, 1, GAUSSIAN).n == 2**53
    with pytest.raises(InvalidArgumentError, match="n="):
        dpcalib.without_replacement_gaussian_rdp(HUGE, 10, 1.0, [2.0])  # was a ValueError (math domain error)


# ------------------------------------------------------------------------------------------------ the CLI


def dpcalib_cli(*argv: str, timeout: float = 60.0) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dpcalib", *argv], capture_output=True, text=True, timeout=timeout)


def assert_one_line_error(proc: subprocess.CompletedProcess, status: int, *needles: str) -> None:
    assert proc.returncode == status, proc.stderr[-2000:]
    assert proc.stdout == "" and "Traceback" not in proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("dpcalib: error: "), proc.stderr[-2000:]
    for needle in needles:
        assert needle in lines[0]


SIGMA_PLAN = ["--eps", "2", "--delta", "1e-5"]
REFUSED = [
    # (argv, words the one line must contain); each was a traceback, an unbounded run or a wrong answer before
    (["sigma", *SIGMA_PLAN, "--epochs", "1e308", "--dataset-size", "60000", "--batch-size", "1"], ["epochs", "1000000000000"]),
    (["epsilon", "--sigma", "1e-300", "--delta", "1e-5", "--q", "0.01", "--steps", "1000"], ["sigma", "[1e-100, 1e+06]"]),
    (["sigma", *SIGMA_PLAN, "--q", "0.01", "--steps", "1000000000000000000", "--accountant", "pld"], ["steps", "1000000000000"]),
    (["epsilon", "--sigma", "1", "--delta", "1e-5", "--q", "1", "--steps", "1000000000000000000", "--accountant", "pld"], ["steps"]),
    (["delta", "--sigma", "1", "--eps", "1", "--q", "0.01", "--steps", "1000000000001"], ["steps"]),
    (["curve", "--sigma", "1", "--q", "0.01", "--steps", "100", "--plot", "/nonexistent/dir/x.png"], ["--plot", "/nonexistent/dir/x.png"]),
    (["curve", "--sigma", "1", "--q", "0.01", "--steps", "1000000", "--points", "1000000000"], ["points", "[2, 50]"]),
    (["curve", "--sigma", "1", "--q", "0.01", "--steps", "1000000", "--points", "5000"], ["points"]),
    (["curve", "--sigma", "1", "--q", "0.01", "--steps", "100000000000000000000"], ["steps"]),
    (["steps", *SIGMA_PLAN, "--sigma", "1", "--dataset-size", str(10**400), "--batch-size", "1"], ["dataset-size"]),
]


@pytest.mark.parametrize("argv,needles", REFUSED, ids=[" ".join(a[:1] + a[-2:]) for a, _ in REFUSED])
def test_cli_refuses_out_of_range_input_with_one_line_and_status_2(argv, needles):
    assert_one_line_error(dpcalib_cli(*argv, timeout=30.0), 2, *needles)


@pytest.mark.parametrize(
    "argv",
    [
        pytest.param(["epsilon", "--sigma", "1", "--delta", "1e-5", "--q", "0.01", "--steps", "1000000000000", "--accountant", "pld"], id="epsilon-pld-1e12-steps"),
        pytest.param(["delta", "--sigma", "1", "--eps", "1e308", "--q", "0.01", "--steps", "1000", "--accountant", "pld"], id="delta-pld-eps-1e308"),
        pytest.param(["delta", "--sigma", "1", "--eps", "1e308", "--q", "0.01", "--steps", "1000"], id="delta-rdp-eps-1e308"),
    ],
)
def test_cli_at_the_edges_of_the_range_answers_or_refuses_with_one_line(argv):
    proc = dpcalib_cli(*argv)
    assert "Traceback" not in proc.stderr
    if proc.returncode == 0:
        assert proc.stderr == "" and "inf" not in proc.stdout and "nan" not in proc.stdout
    else:
        assert_one_line_error(proc, 2)


def test_cli_never_floods_warnings():
    # σ = 1e6 at q = 1 puts the best RDP order at the grid's edge for every point of the curve: one warning per
    # distinct message, not one per point (numpy's numerical warnings inside the library are not relayed at all)
    proc = dpcalib_cli("curve", "--sigma", "1e6", "--q", "1", "--steps", "1000", "--points", "10", "--csv")
    assert proc.returncode == 0 and len(proc.stdout.splitlines()) == 11
    warning_lines = proc.stderr.splitlines()
    assert len(warning_lines) == 1 and warning_lines[0].startswith("dpcalib: warning: the optimal RDP order")


def test_cli_internal_errors_are_one_line_with_status_1(monkeypatch, capsys):
    from dpcalib import cli

    def broken(*args, **kwargs):
        raise ZeroDivisionError("float division by zero")

    monkeypatch.setattr(cli, "calibrate_sigma", broken)
    status = cli.run(["sigma", *SIGMA_PLAN, "--q", "0.01", "--steps", "10"])
    out, err = capsys.readouterr()
    assert status == 1 and out == ""
    assert err.splitlines() == ["dpcalib: error: internal error (ZeroDivisionError: float division by zero); please report this command line"]


def test_cli_never_prints_a_non_finite_number(monkeypatch, capsys):
    from dpcalib import cli

    monkeypatch.setattr(cli, "_epsilon_and_order", lambda *args: (float("inf"), None))
    for argv in (["epsilon", "--sigma", "1", "--delta", "1e-5", "--q", "0.01", "--steps", "10", "--json"],
                 ["curve", "--sigma", "1", "--q", "0.01", "--steps", "10", "--points", "2", "--csv"]):
        status = cli.run(argv)
        out, err = capsys.readouterr()
        assert status == 1 and out == "" and err.count("\n") == 1 and "a result is inf" in err
