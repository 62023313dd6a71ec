"""``fltrain run``: help, TOML config, bad input → exit 2 with one line on stderr and nothing written."""

from __future__ import annotations

import dataclasses
import json

import pytest

from fltrain.cli import main
from fltrain.config import ClientDP, RunConfig, SampleDP

SMALL = ["--train-samples", "1200", "--test-samples", "200", "--clients", "2", "--rounds", "1", "--local-steps", "2",
         "--batch-size", "30"]


def test_help_lists_every_option_with_a_default(capsys):
    assert main(["run", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    general = [f.name for f in dataclasses.fields(RunConfig) if f.name not in ("sample", "client")]
    privacy = {f.name for f in dataclasses.fields(SampleDP)} | {f.name for f in dataclasses.fields(ClientDP)}
    privacy = (privacy - {"sampling", "noise"}) | {"client_sampling", "client_noise"}
    for name in [*general, *privacy]:
        assert "--" + name.replace("_", "-") in text
    assert text.count("[default:") >= len(general) + len(privacy) + 2  # + --config, --resume


@pytest.mark.parametrize(
    "args,fragment",
    [(["--clip", "-1"], "sample.clip=-1.0"), (["--dp", "client", "--clip", "-1"], "client.clip=-1.0"),
     (["--dataset", "imagenet"], "imagenet"), (["--delta", "2"], "sample.delta"),
     (["--dp", "client", "--expected-clients", "50"], "expected_clients"),
     (["--dp", "client", "--clients", "30"], "client.delta"),
     (["--dp", "none", "--clip", "0.3"], "--clip"), (["--dp", "sample", "--adaptive-clip"], "client.adaptive_clip"),
     (["--dp", "client", "--clients", "1000", "--server-opt", "adam", "--server-momentum", "0.9"],
      "server_momentum"),
     (["--secure-agg", "--clients", "1"], "at least 2 clients"), (["--bogus", "1"], "bogus"),
     (["--client-fraction", "1.5"], "client_fraction"), (["--rounds", "x"], "x"),
     (["--sampler", "uniform"], "uniform"), (["--sampler", "fixed", "--q", "0.1"], "sample.q"),
     (["--dp", "client", "--sampler", "fixed"], "--sampler")],
)
def test_bad_input_exits_2_with_one_line_and_writes_nothing(tmp_path, capsys, args, fragment):
    out = tmp_path / "out"
    code = main(["run", "--out", str(out), "--data-dir", str(tmp_path / "data"), *args])
    err = capsys.readouterr().err
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and fragment in err and "Traceback" not in err
    assert not out.exists() and not (tmp_path / "data").exists()


@pytest.mark.parametrize(
    "args,fragment",
    [(["--train-samples", "100", "--clients", "4", "--batch-size", "30", "--dp", "sample"], "batch_size=30"),
     (["--train-samples", "100", "--clients", "4", "--batch-size", "30", "--sampler", "shuffle"], "batch_size=30"),
     (["--dp", "client", "--clients", "1000", "--train-samples", "2000", "--adaptive-clip", "--eps", "0.5",
       "--count-noise-std", "0.01"], "count_noise_std")],
)
def test_input_refused_once_the_data_is_known_writes_nothing(data_root, tmp_path, capsys, args, fragment):
    out = tmp_path / "out"
    code = main(["run", "--out", str(out), "--data-dir", str(data_root), *args])
    err = capsys.readouterr().err
    assert code == 2 and fragment in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_toml_config_and_command_line_override(data_root, tmp_path, capsys):
    toml = tmp_path / "run.toml"
    toml.write_text(f'dp = "none"\ndata-dir = "{data_root}"\nlr = 0.3\nrounds = 5\n')
    out = tmp_path / "out"
    assert main(["run", "--config", str(toml), "--out", str(out), *SMALL]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["rounds_completed"] == 1  # --rounds 1 on the command line beats rounds = 5 in the file
    saved = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(saved) == 1 and saved[0]["epsilon"] is None
    # resuming with a changed option is refused, and nothing on disk changes
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    code = main(["run", "--config", str(toml), "--out", str(out), *SMALL, "--lr", "0.5", "--resume"])
    err = capsys.readouterr().err
    assert code == 2 and "differs in: lr" in err and len(err.strip().splitlines()) == 1
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_cli_warns_in_one_line_when_client_delta_is_at_least_one_over_clients(data_root, tmp_path, capsys):
    out = tmp_path / "o"
    code = main(["run", "--dp", "client", "--dataset", "mnist", "--train-samples", "300", "--test-samples", "100",
                 "--clients", "10", "--expected-clients", "5", "--rounds", "1", "--local-steps", "1", "--batch-size",
                 "5", "--delta", "0.2", "--eps", "8", "--model", "logreg", "--data-dir", str(data_root),
                 "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 0
    warning = [line for line in err.splitlines() if "warning" in line]
    assert warning == [warning[0]] and warning[0].startswith("fltrain: warning: delta=0.2 >= 1/clients")
    assert json.loads((out / "metrics.jsonl").read_text())["delta"] == 0.2


def test_old_flat_config_files_keep_working(data_root, tmp_path, capsys):
    toml = tmp_path / "old.toml"
    toml.write_text(f'dp = "client"\nclients = 10\nexpected-clients = 5\nclip = 0.3\ndelta = 1e-3\n'
                    f'data-dir = "{data_root}"\nmodel = "logreg"\n')
    out = tmp_path / "o"
    assert main(["run", "--config", str(toml), "--out", str(out), "--train-samples", "300", "--test-samples", "100",
                 "--rounds", "1", "--local-steps", "1", "--batch-size", "5", "--eps", "8"]) == 0
    summary = json.loads(capsys.readouterr().out)
    saved = json.loads((out / "metrics.jsonl").read_text())
    assert saved["clip"] == 0.3 and saved["delta"] == 1e-3 and summary["privacy"]["plan"]["eps"] == 8.0


@pytest.mark.parametrize("args, fragment", [
    (["--dp", "client", "--delta", "1e-5", "--threat", "black-box"], "white-box canary clients"),
    (["--dp", "client", "--delta", "1e-5", "--client-sampling", "fixed"], "joining a Poisson cohort"),
    (["--model", "tanh-cnn"], "first layer is linear on the input features"),
    (["--model", "logreg", "--canaries", "100000"], "this model and dataset hold at most"),
    (["--canaries", "1"], "canaries must be an integer >= 2"),
])
def test_audit_refusals_exit_2_with_one_line_and_write_nothing(data_root, tmp_path, capsys, args, fragment):
    out = tmp_path / "never"
    code = main(["audit", "--out", str(out), "--data-dir", str(data_root), "--train-samples", "300",
                 "--test-samples", "100", "--batch-size", "30", *args])
    err = capsys.readouterr().err
    assert code == 2 and fragment in err and len(err.strip().splitlines()) == 1
    assert not out.exists()
