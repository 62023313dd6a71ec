"""dpcalib.report: the membership-inference risk of a run, checked against closed forms.

q = 1: T Gaussian steps with noise multiplier σ are exactly μ-GDP with μ = √T/σ (GDP composes so; Dong, Roth, Su 2022), so
the best test has TPR = Φ(Φ⁻¹(α) + μ) at FPR α and the largest advantage is 2Φ(μ/2) − 1. One subsampled step: the
likelihood ratio is monotone in the output, so the Neyman–Pearson tests are thresholds, in closed form.
"""

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from scipy.stats import norm

import dpcalib
from dpcalib import report
from dpcalib.cli import run
from dpcalib.errors import InvalidArgumentError

#: the PLD bound on the TPR may exceed the exact one by this much (relative); measured: under 4e-5
PLD_TOLERANCE = 1e-3
CURVE = np.unique(np.concatenate((np.logspace(-6, 0, 61), np.linspace(0, 1, 101))))


def gaussian(sigma: float, steps: int):
    return dpcalib.Repeated(dpcalib.Gaussian(sigma), steps)


@pytest.mark.parametrize("sigma, steps", [(1.0, 1), (5.0, 100), (10.0, 1000)])
def test_q1_pld_bound_is_exact_gdp_within_tolerance(sigma, steps):
    mu = math.sqrt(steps) / sigma
    found = report.risk_report(gaussian(sigma, steps), accountant="pld")
    assert found.gdp_mu == pytest.approx(mu, rel=1e-14) and found.gdp_understates == ()
    for attack in found.attacks:
        exact = norm.cdf(norm.ppf(attack.fpr) + mu)
        assert exact - 1e-12 <= attack.tpr <= exact * (1 + PLD_TOLERANCE)
        assert attack.gdp_tpr == pytest.approx(exact, rel=1e-12)
    exact_advantage = 2 * norm.cdf(mu / 2) - 1
    assert exact_advantage - 1e-12 <= found.advantage <= exact_advantage * (1 + PLD_TOLERANCE)
    # the whole curve is a valid bound, not only at the reported FPRs
    assert np.all(found.curve.tpr(CURVE) >= norm.cdf(norm.ppf(CURVE) + mu) - 1e-12)


def test_q1_rdp_bound_is_valid_but_looser():
    mu = math.sqrt(100) / 5.0
    found = report.risk_report(gaussian(5.0, 100), accountant="rdp")
    exact = norm.cdf(norm.ppf(CURVE) + mu)
    assert np.all(found.curve.tpr(CURVE) >= exact - 1e-12)
    assert found.attacks[0].tpr > 1.2 * norm.cdf(norm.ppf(found.attacks[0].fpr) + mu)


@pytest.mark.parametrize("accountant", ["pld", "rdp"])
def test_one_subsampled_step_bounds_both_neyman_pearson_tests(accountant):
    q, sigma = 0.1, 0.8
    found = report.risk_report(dpcalib.PoissonSampled(q, dpcalib.Gaussian(sigma)), accountant=accountant)
    t = np.linspace(-6, 8, 20001)  # thresholds on the output x (sensitivity 1, noise N(0, σ²))
    null, alt = norm.sf(t / sigma), (1 - q) * norm.sf(t / sigma) + q * norm.sf((t - 1) / sigma)
    low_null, low_alt = (1 - q) * norm.cdf(t / sigma) + q * norm.cdf((t - 1) / sigma), norm.cdf(t / sigma)
    for fpr, tpr in ((null, alt), (low_null, low_alt)):  # member vs non-member, and the reverse
        keep = (fpr > 1e-6) & (fpr < 1)
        assert np.all(found.curve.tpr(fpr[keep]) >= tpr[keep] - 1e-12)
    if accountant == "pld":  # tight: at the reported FPRs the bound is the better of the two tests
        best = [max(np.interp(a, null[::-1], alt[::-1]), np.interp(a, low_null, low_alt)) for a in report.DEFAULT_FPRS]
        assert np.all(np.array([a.tpr for a in found.attacks]) <= (1 + PLD_TOLERANCE) * np.array(best))


def test_mission_example_gdp_understates_small_fprs_and_posterior_formula():
    found = report.risk_report(dpcalib.dpsgd_event(sigma=1.022, q=0.01, steps=1000), prior=0.2)
    assert found.gdp_mu == pytest.approx(0.01 * math.sqrt(1000 * math.expm1(1 / 1.022**2)), rel=1e-14)
    assert 1e-4 in found.gdp_understates  # the CLT is optimistic in the tails (Gopi et al. 2021)
    for attack in found.attacks:
        assert attack.posterior == pytest.approx(0.2 * attack.tpr / (0.2 * attack.tpr + 0.8 * attack.fpr), rel=1e-12)
        assert attack.fpr < attack.tpr <= found.advantage + attack.fpr + 1e-12
    assert [d for d, _ in found.epsilons] == list(report.DEFAULT_DELTAS)
    assert found.epsilons[1][1] == dpcalib.make_accountant("pld").compose(
        dpcalib.dpsgd_event(sigma=1.022, q=0.01, steps=1000)).epsilon(1e-5)


def _tpr(sigma, q, steps):
    acc = dpcalib.make_accountant("pld").compose(dpcalib.dpsgd_event(sigma=sigma, q=q, steps=steps))
    fprs = (1e-3,)
    return report.tradeoff(acc, fprs, points=16).tpr(fprs)


@settings(max_examples=4, deadline=None)
@given(sigma=st.floats(0.7, 3.0), q=st.floats(0.01, 0.5), steps=st.integers(1, 60), bump=st.floats(1.2, 2.0))
def test_tpr_bound_is_monotone_in_sigma_q_and_steps(sigma, q, steps, bump):
    base = _tpr(sigma, q, steps)
    assert np.all(_tpr(sigma * bump, q, steps) <= base)
    assert np.all(_tpr(sigma, min(1.0, q * bump), steps) >= base)
    assert np.all(_tpr(sigma, q, math.ceil(steps * bump)) >= base)


def test_without_replacement_has_no_gdp_but_a_valid_report():
    acc = dpcalib.make_accountant("rdp", neighbouring="replace_one").compose(
        dpcalib.SampledWithoutReplacement(1000, 10, dpcalib.Gaussian(1.0)), 100)
    found = report.risk_report(acc)
    assert found.accountant == "rdp" and found.gdp_mu is None and found.gdp_understates == ()
    assert all(a.gdp_tpr is None and a.fpr < a.tpr <= 1 for a in found.attacks)


@pytest.mark.parametrize("kwargs, name", [
    ({"prior": 0.0}, "prior"), ({"prior": True}, "prior"), ({"fprs": (0.01, 1.0)}, "fpr"),
    ({"deltas": (0.0,)}, "delta"), ({"accountant": "nope"}, "accountant"),
])
def test_bad_arguments_name_themselves(kwargs, name):
    with pytest.raises(InvalidArgumentError) as err:
        report.risk_report(gaussian(1.0, 1), **kwargs)
    assert err.value.name == name


def test_empty_accountant_is_refused():
    with pytest.raises(InvalidArgumentError):
        report.risk_report(dpcalib.make_accountant("pld"))


def call(capsys, *argv):
    status = run(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


def test_cli_json_matches_library(capsys):
    status, out, err = call(capsys, "report", "--sigma", "2", "--q", "0.05", "--steps", "50", "--fpr", "0.001",
                            "--delta", "1e-5", "--prior", "0.1", "--json")
    record = json.loads(out)
    found = report.risk_report(dpcalib.dpsgd_event(sigma=2.0, q=0.05, steps=50), deltas=(1e-5,), fprs=(0.001,),
                               prior=0.1)
    assert status == 0 and err == ""
    assert record["attacks"] == [vars(a) for a in found.attacks] and record["advantage"] == found.advantage
    assert record["accountant"] == "pld" and record["q"] == 0.05 and record["steps"] == 50
    assert record["curve"]["tpr"] == found.curve.tpr(record["curve"]["fpr"]).tolist()


def test_cli_text_and_plot(capsys, tmp_path):
    pytest.importorskip("matplotlib")
    target = tmp_path / "report.png"
    status, out, _ = call(capsys, "report", "--sigma", "1.022", "--q", "0.01", "--steps", "100", "--accountant", "rdp",
                          "--plot", str(target))
    assert status == 0 and target.read_bytes()[:4] == b"\x89PNG"
    assert "TPR at most" in out and "largest advantage" in out and "(rdp)" in out


@pytest.mark.parametrize("argv, name", [
    (["--prior", "0"], "prior"), (["--prior", "1.5"], "prior"), (["--fpr", "0"], "fpr"), (["--delta", "1"], "delta"),
    (["--sigma", "-1"], "sigma"), (["--accountant", "nope"], "--accountant"), (["--steps", "0"], "steps"),
])
def test_cli_bad_input_exits_2_with_one_line(capsys, argv, name):
    base = {"--sigma": "1", "--q": "0.01", "--steps": "10"}
    base.update(dict(zip(argv[::2], argv[1::2])))
    status, out, err = call(capsys, "report", *[x for pair in base.items() for x in pair])
    assert status == 2 and out == "" and err.count("\n") == 1 and name in err and "Traceback" not in err
