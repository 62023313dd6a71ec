import json
import math
import subprocess
import sys

import pytest

import dpcalib
from dpcalib.cli import make_plan, run

MISSION = ["--eps", "2", "--delta", "1e-5", "--q", "0.01", "--steps", "1000"]


def call(capsys, *argv):
    status = run(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


def test_sigma_json_matches_library(capsys):
    status, out, err = call(capsys, "sigma", *MISSION, "--json")
    assert status == 0 and err == ""
    record = json.loads(out)
    assert record["sigma"] == dpcalib.calibrate_sigma(eps=2.0, delta=1e-5, q=0.01, steps=1000)
    assert record["eps"] <= 2.0 and record["delta"] == 1e-5 and record["q"] == 0.01 and record["steps"] == 1000
    assert record["accountant"] == "rdp" and record["version"] == dpcalib.__version__ and record["order"] > 1


def test_sigma_text(capsys):
    status, out, _ = call(capsys, "sigma", *MISSION)
    assert status == 0 and out.startswith("sigma = 1.02") and "<= 2 at delta = 1e-05" in out


def test_epochs_view_rounds_steps_up(capsys):
    status, out, _ = call(capsys, "sigma", "--eps", "8", "--delta", "1e-5", "--epochs", "2.5", "--dataset-size", "1000",
                          "--batch-size", "300", "--json")
    record = json.loads(out)
    assert status == 0 and record["steps"] == math.ceil(2.5 * 1000 / 300) and record["q"] == 0.3
    assert make_plan(None, None, 3.0, 60000, 600).steps == 300  # exact products are not rounded up further
    assert make_plan(None, None, 0.1, 60000, 600).steps == 10  # the decimal written, not 0.1's binary excess
    assert make_plan(None, None, 0.07, 100, 7).steps == 1
    assert make_plan(None, None, 1.0000001, 60000, 600).steps == 101  # a sliver over an integer counts as a step


def test_epsilon_delta_steps_commands(capsys):
    _, out, _ = call(capsys, "epsilon", "--sigma", "1", "--delta", "1e-5", "--q", "0.01", "--steps", "1000", "--json")
    eps = json.loads(out)["eps"]
    assert eps == dpcalib.epsilon(sigma=1.0, q=0.01, steps=1000, delta=1e-5)
    _, out, _ = call(capsys, "delta", "--sigma", "1", "--eps", str(eps), "--q", "0.01", "--steps", "1000", "--json")
    assert json.loads(out)["delta"] <= 1e-5 * (1 + 1e-6)
    _, out, _ = call(capsys, "steps", "--eps", "2", "--delta", "1e-5", "--sigma", "1", "--dataset-size", "60000",
                     "--batch-size", "600", "--json")
    record = json.loads(out)
    assert record["steps"] == dpcalib.calibrate_steps(eps=2.0, delta=1e-5, sigma=1.0, q=0.01)
    assert record["epochs"] == pytest.approx(record["steps"] / 100)


def test_compare_lists_every_accountant(capsys):
    status, out, _ = call(capsys, "compare", *MISSION, "--json")
    record = json.loads(out)
    assert status == 0 and [r["accountant"] for r in record["accountants"]] == list(dpcalib.ACCOUNTANTS)
    first = record["accountants"][0]
    assert first["sigma_vs_reference"] == 0.0 and first["eps_at_reference_sigma"] <= 2.0


def test_curve_table_csv_and_json(capsys, tmp_path):
    status, out, _ = call(capsys, "curve", "--sigma", "1", "--q", "0.01", "--steps", "1000", "--points", "4", "--csv")
    lines = out.strip().splitlines()
    assert status == 0 and lines[0] == "steps," + ",".join(f"eps_{n}" for n in dpcalib.ACCOUNTANTS)
    steps = [int(line.split(",")[0]) for line in lines[1:]]
    eps = [float(line.split(",")[1]) for line in lines[1:]]
    assert steps == [1, 10, 100, 1000] and eps == sorted(eps)
    assert eps[-1] == dpcalib.epsilon(sigma=1.0, q=0.01, steps=1000, delta=1e-5)
    _, out, _ = call(capsys, "curve", "--sigma", "1", "--q", "0.01", "--steps", "50", "--points", "3", "--json")
    assert json.loads(out)["steps"][-1] == 50


def test_curve_plot_writes_a_png(capsys, tmp_path):
    pytest.importorskip("matplotlib")
    target = tmp_path / "curve.png"
    status, _, _ = call(capsys, "curve", "--sigma", "1", "--q", "0.01", "--steps", "100", "--points", "3", "--plot", str(target))
    assert status == 0 and target.read_bytes()[:4] == b"\x89PNG"


def test_help_has_an_example_on_every_command(capsys):
    for command in ("sigma", "epsilon", "delta", "steps", "compare", "curve"):
        status, out, _ = call(capsys, command, "--help")
        assert status == 0 and "Example" in out and f"dpcalib {command} --" in out


BAD = [
    (["sigma", "--eps", "0", "--delta", "1e-5", "--q", "0.01", "--steps", "10"], "eps"),
    (["sigma", "--eps", "-1", "--delta", "1e-5", "--q", "0.01", "--steps", "10"], "eps"),
    (["sigma", "--eps", "1", "--delta", "1", "--q", "0.01", "--steps", "10"], "delta"),
    (["sigma", "--eps", "1", "--delta", "0", "--q", "0.01", "--steps", "10"], "delta"),
    (["sigma", "--eps", "1", "--delta", "1e-5", "--q", "1.5", "--steps", "10"], "q"),
    (["sigma", "--eps", "1", "--delta", "1e-5", "--q", "0", "--steps", "10"], "q"),
    (["sigma", "--eps", "1", "--delta", "1e-5", "--q", "0.01", "--steps", "0"], "steps"),
    (["sigma", "--eps", "1", "--delta", "1e-5", "--q", "0.01"], "--steps"),
    (["sigma", "--eps", "1", "--delta", "1e-5", "--q", "0.01", "--steps", "10", "--accountant", "nope"], "--accountant"),
    (["sigma", "--eps", "nan", "--delta", "1e-5", "--q", "0.01", "--steps", "10"], "eps"),
    (["sigma", "--eps", "abc", "--delta", "1e-5", "--q", "0.01", "--steps", "10"], "--eps"),
    (["sigma", "--eps", "1", "--delta", "1e-5", "--epochs", "0", "--dataset-size", "100", "--batch-size", "10"], "epochs"),
    (["sigma", "--eps", "1", "--delta", "1e-5", "--epochs", "1", "--dataset-size", "0", "--batch-size", "10"], "dataset-size"),
    (["sigma", "--eps", "1", "--delta", "1e-5", "--epochs", "1", "--dataset-size", "100", "--batch-size", "200"], "batch-size"),
    (["sigma", "--eps", "1", "--delta", "1e-5", "--q", "0.1", "--epochs", "1", "--dataset-size", "100", "--batch-size", "10"], "q"),
    (["sigma", "--eps", "1e-9", "--delta", "1e-12", "--q", "1", "--steps", "100000000"], "sigma"),
    (["epsilon", "--sigma", "-1", "--delta", "1e-5", "--q", "0.01", "--steps", "10"], "sigma"),
    (["epsilon", "--sigma", "1", "--delta", "2", "--q", "0.01", "--steps", "10"], "delta"),
    (["delta", "--sigma", "1", "--eps", "0", "--q", "0.01", "--steps", "10"], "eps"),
    (["steps", "--eps", "2", "--delta", "1e-5", "--sigma", "0", "--q", "0.01"], "sigma"),
    (["steps", "--eps", "2", "--delta", "1e-5", "--sigma", "1", "--q", "0.01", "--epochs", "2"], "epochs"),
    (["steps", "--eps", "0.001", "--delta", "1e-5", "--sigma", "0.5", "--q", "1"], "step"),
    (["curve", "--sigma", "1", "--q", "0.01", "--steps", "10", "--points", "1"], "points"),
    (["curve", "--sigma", "1", "--q", "0.01", "--steps", "-3"], "steps"),
    (["compare", "--eps", "-2", "--delta", "1e-5", "--q", "0.01", "--steps", "10"], "eps"),
    (["nonsense"], "nonsense"),
]


@pytest.mark.parametrize("argv,name", BAD)
def test_bad_input_exits_2_with_one_line_naming_the_argument(capsys, argv, name):
    status, out, err = call(capsys, *argv)
    assert status == 2 and out == ""
    assert err.startswith("dpcalib: error: ") and err.count("\n") == 1 and name in err
    assert "Traceback" not in err


def test_console_entry_point_exit_code_and_no_traceback():
    proc = subprocess.run([sys.executable, "-m", "dpcalib", "sigma", "--eps", "2", "--delta", "7", "--q", "0.01", "--steps", "5"],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip().splitlines() == ["dpcalib: error: delta=7.0 is out of range: delta must be in (0, 1)"]
    proc = subprocess.run([sys.executable, "-m", "dpcalib", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0 and "dpcalib sigma --eps 2" in proc.stdout


RUN = ["--dataset-size", "60000", "--batch-size", "256", "--steps", "7000"]


@pytest.mark.parametrize("sampler", ["poisson", "fixed", "shuffle"])
def test_sampler_option_matches_the_library_and_is_in_the_json(capsys, sampler):
    args = RUN if sampler != "poisson" else ["--q", str(256 / 60000), "--steps", "7000"]
    status, out, err = call(capsys, "epsilon", "--sigma", "1.1", "--delta", "1e-5", *args, "--sampler", sampler, "--json")
    assert status == 0 and err == ""
    record = json.loads(out)
    event = dpcalib.training_event(sampler, sigma=1.1, steps=7000, q=256 / 60000, dataset_size=60000, batch_size=256)
    assert record["sampler"] == sampler
    assert record["eps"] == dpcalib.make_accountant("rdp", sampler=sampler).compose(event).epsilon(1e-5)
    if sampler == "shuffle":
        assert record["epochs_accounted"] == 30


def test_sampler_commands_calibrate_under_the_sampler(capsys):
    status, out, _ = call(capsys, "sigma", "--eps", "8", "--delta", "1e-5", *RUN, "--sampler", "fixed", "--json")
    record = json.loads(out)
    assert status == 0 and record["sampler"] == "fixed" and record["eps"] <= 8.0
    status, out, _ = call(capsys, "steps", "--eps", "8", "--delta", "1e-5", "--sigma", "2", "--dataset-size", "60000",
                          "--batch-size", "600", "--sampler", "shuffle", "--json")
    record = json.loads(out)
    assert status == 0 and record["steps"] % 100 == 0 and record["epochs_accounted"] == record["steps"] // 100
    status, out, _ = call(capsys, "compare", "--eps", "8", "--delta", "1e-5", *RUN, "--sampler", "fixed", "--json")
    assert status == 0 and [row["accountant"] for row in json.loads(out)["accountants"]] == ["rdp", "pld"]  # both bound fixed-size batches


@pytest.mark.parametrize(
    "argv,needle",
    [
        (["--q", "0.1", "--steps", "10", "--sampler", "fixed"], "q=0.1"),
        (["--dataset-size", "100", "--batch-size", "10", "--sampler", "shuffle"], "--steps"),
        (["--steps", "10", "--sampler", "fixed"], "dataset-size"),
        (["--q", "0.1", "--steps", "10", "--sampler", "minibatch"], "--sampler"),
    ],
)
def test_sampler_misuse_exits_2_with_one_line(capsys, argv, needle):
    status, out, err = call(capsys, "epsilon", "--sigma", "1", "--delta", "1e-5", *argv)
    assert status == 2 and out == "" and needle in err and len(err.strip().splitlines()) == 1
