"""fltrain on Flower, fast: the app directory and run config, the message records, and whole runs of the real
ServerApp logic and ClientApp handlers over an in-process grid (faults, bad input, resume).  The tests that start
real SuperLink/SuperNode processes are in test_flower_federation.py."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import torch

pytest.importorskip("flwr")

from flwr.app import Error, Message, MessageType, RecordDict  # noqa: E402

from fltrain.config import ConfigError, RunConfig  # noqa: E402
from fltrain.flower.appdir import (  # noqa: E402
    CLIENT_APP, NOT_CARRIED, SERVER_APP, FlowerSettings, app_pyproject, flower_run_config, parse_run_config,
)
from fltrain.flower.records import (  # noqa: E402
    RejectedReply, parse_train_reply, record_vector, train_reply_content, vector_record,
)
from fltrain.flower.server_app import serve  # noqa: E402
from fltrain.run import CHECKPOINT, LEDGER  # noqa: E402

from .flowergrid import (  # noqa: E402
    FakeGrid, answer_then_error, crash, error_then_answer, nan_delta, scaled_delta, silent, wrong_shape,
)
from .runs import metrics, private_rows  # noqa: E402
from .test_releases import PUBLIC_METRICS  # noqa: E402

SMALL = {"dataset": "mnist", "train-samples": 900, "test-samples": 200, "clients": 3, "partition": "shards",
         "shards-per-client": 2, "rounds": 2, "local-steps": 3, "batch-size": 30, "lr": 0.1, "model": "logreg",
         "seed": 7, "dp": "none"}


@pytest.fixture(autouse=True)
def _task_identity():
    """Flower stamps new messages with the run of the process; outside a Flower process, set one."""
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 1, 1
    yield
    TaskIdentity.run_id = TaskIdentity.node_id = TaskIdentity.task_id = None


def _run_config(data_root, out, **overrides):
    values = dict(SMALL, **{"data-dir": str(data_root), "out": str(out), "node-wait": 2.0, "round-timeout": 5.0})
    values.update(overrides)
    return flower_run_config(values)


@pytest.fixture(scope="module")
def node_cache(tmp_path_factory) -> Path:
    """The nodes' partition cache, shared by this module's tests (a partition is loaded once per config)."""
    return tmp_path_factory.mktemp("node-cache")


@pytest.fixture(autouse=True)
def _node_cache(node_cache):
    global _CACHE
    _CACHE = node_cache


_CACHE: Path | None = None


def _grid(data_root, run_config, nodes=3, faults=None, data_dirs=None):
    configs = [{"partition-id": k, "num-partitions": run_config["clients"], "cache-dir": str(_CACHE),
                "data-dir": str((data_dirs or {}).get(k, data_root))} for k in range(nodes)]
    return FakeGrid(configs, run_config, faults)


def _serve(run_config, grid, say=None):
    """Serve the run; ``say`` gets the server's log lines (a list collects them)."""
    cfg, settings = parse_run_config(run_config)
    if isinstance(say, list):
        say = say.append
    return serve(cfg, settings, grid, say=say or (lambda text: None))


def test_only_fltrain_flower_imports_flwr():
    code = ("import sys, dpcalib, fltrain.cli, fltrain.run, fltrain.flower.command, fltrain.flower.launcher; "
            "print(sorted(m for m in sys.modules if m == 'flwr' or m.startswith('flwr.')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_app_declares_every_carried_key_with_run_defaults():
    from flwr.common.config import flatten_dict

    project = tomllib.loads(app_pyproject())
    assert project["tool"]["flwr"]["app"]["components"] == {"serverapp": SERVER_APP, "clientapp": CLIENT_APP}
    declared = flatten_dict(project["tool"]["flwr"]["app"]["config"])  # as Flower reads it
    defaults = {f"{table}.{k}" if isinstance(v, dict) else table: w
                for table, v in RunConfig().to_dict().items() for k, w in (v.items() if isinstance(v, dict) else [(0, v)])}
    for name, value in defaults.items():
        key = name.replace("_", "-")
        if name in NOT_CARRIED:
            assert key not in declared
        else:
            assert declared[key] == ("" if value is None else value), key
    assert set(declared) - {k.replace("_", "-") for k in defaults} == {"round-timeout", "node-wait", "resume"}
    # the declared defaults are a valid run: the defaults of RunConfig and FlowerSettings
    assert parse_run_config(declared) == (RunConfig(), FlowerSettings())


def test_run_config_round_trip_and_refusals():
    values = dict(SMALL, dp="sample", sigma=1.5, **{"round_timeout": 30})  # a flat privacy key (earlier form)
    cfg, settings = parse_run_config(flower_run_config(values))
    assert cfg == RunConfig.from_dict({k: v for k, v in values.items() if k != "round_timeout"})
    assert settings.round_timeout == 30 and cfg.sample.sigma == 1.5 and cfg.sample.q is None
    nested = dict(SMALL, dp="client", clients=40, client={"delta": 1e-3, "expected-clients": 4})
    assert parse_run_config(flower_run_config(nested))[0] == RunConfig.from_dict(nested)
    assert "secure-agg" not in flower_run_config(dict(SMALL, **{"secure-agg": False}))
    with pytest.raises(ConfigError, match="'secure-agg' is not carried on Flower"):
        flower_run_config(dict(SMALL, **{"secure-agg": True}))
    with pytest.raises(ConfigError, match="'insecure-reproducible-noise' is not carried on Flower"):
        flower_run_config(dict(SMALL, **{"insecure-reproducible-noise": True}))
    with pytest.raises(ConfigError, match="unknown config key 'bogus'"):
        flower_run_config(dict(SMALL, bogus=1))
    with pytest.raises(Exception, match="round_timeout"):
        flower_run_config(dict(SMALL, **{"round-timeout": 0}))


def test_records_round_trip_and_rejections():
    vector = torch.randn(7)
    assert torch.equal(record_vector(vector_record("v", vector), "v", 7), vector)
    query = Message(RecordDict(), dst_node_id=5, message_type=MessageType.TRAIN)
    query.metadata.__dict__["_message_id"] = "m1"

    def reply(delta, num_samples=10, loss=0.5):
        return Message(train_reply_content(delta, (num_samples, loss)), reply_to=query)

    good = parse_train_reply(reply(vector), 7, diagnostics=True)
    assert torch.equal(good.delta, vector) and good.num_samples == 10 and good.train_loss == 0.5
    private = parse_train_reply(Message(train_reply_content(vector), reply_to=query), 7)
    assert torch.equal(private.delta, vector) and private.num_samples is None and private.train_loss is None
    bad = {"shape": reply(torch.zeros(6)), "non-finite": reply(torch.tensor([float("nan")] * 7)),
           "num-samples": reply(vector, num_samples=0), "train-loss": reply(vector, loss=float("inf")),
           "crashed": Message(Error(code=0, reason="Traceback ...\nValueError: crashed"), reply_to=query)}
    for fragment, message in bad.items():
        with pytest.raises(RejectedReply, match=fragment):
            parse_train_reply(message, 7, diagnostics=True)


def test_a_run_over_the_grid_writes_fltrain_run_files_and_learns(data_root, tmp_path):
    out = tmp_path / "o"
    run_config = _run_config(data_root, out, rounds=3, **{"local-steps": 10, "lr": 0.5})
    lines: list[str] = []
    summary = _serve(run_config, _grid(data_root, run_config), lines)
    rows = metrics(out)
    assert [row["round"] for row in rows] == [1, 2, 3]
    assert [row["clients"] for row in private_rows(out)] == [3, 3, 3]
    for row in rows:
        assert set(row) == {"round", "test_accuracy", "epsilon", "delta", "sigma", "noise", "seconds",
                            "cpu_seconds", "elapsed"}
        assert row["epsilon"] is None and row["sigma"] is None and row["noise"] == "none"
    assert summary.rounds_completed == 3 and summary.test_accuracy == rows[-1]["test_accuracy"] > 0.3  # chance: 0.1
    assert json.loads((out / "summary.json").read_text())["rounds_completed"] == 3
    assert [line.split(":")[1] for line in lines if line.startswith("fltrain: round ")] == [
        " round 1/3", " round 2/3", " round 3/3"]


def test_faulty_nodes_are_dropped_with_a_log_line_and_the_round_goes_on(data_root, tmp_path):
    run_config = _run_config(data_root, tmp_path / "o", clients=7, **{"shards-per-client": 1, "train-samples": 1400})
    faults = {1000: nan_delta, 1001: wrong_shape, 1002: crash, 1003: silent, 1004: answer_then_error,
              1005: error_then_answer}
    lines: list[str] = []
    summary = _serve(run_config, _grid(data_root, run_config, nodes=7, faults=faults), lines)
    assert summary.rounds_completed == 2
    # the healthy node and the two that answered twice (a valid reply and an error) count
    assert [row["clients"] for row in private_rows(tmp_path / "o")] == [3, 3]
    for round_index in (1, 2):
        dropped = [line for line in lines if line.startswith(f"fltrain: round {round_index}: client")]
        assert len(dropped) == 4
        assert "client 0" in dropped[0] and "non-finite" in dropped[0]
        assert "client 1" in dropped[1] and "shape" in dropped[1]
        assert "client 2" in dropped[2] and "node crashed" in dropped[2]
        assert "client 3" in dropped[3] and "no reply" in dropped[3]
    params = torch.load(tmp_path / "o" / CHECKPOINT, weights_only=True)["server"]["params"]
    assert bool(torch.isfinite(params).all())


def test_all_replies_dropped_leaves_the_model_unchanged(data_root, tmp_path):
    run_config = _run_config(data_root, tmp_path / "o", rounds=1)
    grid = _grid(data_root, run_config, faults={1000: crash, 1001: silent, 1002: nan_delta})
    summary = _serve(run_config, grid)
    row = private_rows(tmp_path / "o")[0]
    assert row["clients"] == 0 and row["train_loss"] is None and summary.rounds_completed == 1
    initial = grid.sent[-1].content["arrays"]["params"].numpy()
    params = torch.load(tmp_path / "o" / CHECKPOINT, weights_only=True)["server"]["params"]
    assert torch.equal(params, torch.from_numpy(initial))


@pytest.mark.parametrize("problem,fragment", [
    ("fewer nodes", r"only 2 SuperNode\(s\) connected within 2 s, but the plan has clients=3"),
    ("missing data", "SuperNode 1001: .*mnist is not under data directory"),
    ("partition twice", "partition.*held by several SuperNodes: \\[0\\]"),
    ("wrong partition count", "num-partitions=4 but the run has clients=3"),
])
def test_bad_federations_are_refused_before_any_training(data_root, tmp_path, problem, fragment):
    out = tmp_path / "o"
    run_config = _run_config(data_root, out)
    if problem == "fewer nodes":
        grid = _grid(data_root, run_config, nodes=2)
    elif problem == "missing data":
        grid = _grid(data_root, run_config, data_dirs={1: tmp_path / "nowhere"})
    else:
        grid = _grid(data_root, run_config)
        node = grid.contexts[1001].node_config
        if problem == "partition twice":
            node["partition-id"] = 0
        else:
            node["num-partitions"] = 4
    with pytest.raises(ConfigError, match=fragment):
        _serve(run_config, grid)
    assert not any(m.metadata.message_type == MessageType.TRAIN for m in grid.sent)
    assert not out.exists()


def test_restarted_server_resumes_from_its_checkpoint(data_root, tmp_path):
    out = tmp_path / "o"
    run_config = _run_config(data_root, out, **{"server-momentum": 0.5})

    def die_after_round_one(line: str) -> None:
        if line.startswith("fltrain: round 1/2"):
            raise KeyboardInterrupt  # the server dies after its round-1 checkpoint

    with pytest.raises(KeyboardInterrupt):
        _serve(run_config, _grid(data_root, run_config), die_after_round_one)
    after_one = torch.load(out / CHECKPOINT, weights_only=True)
    assert after_one["round"] == 1 and [row["round"] for row in metrics(out)] == [1]
    with pytest.raises(ConfigError, match="already holds a run"):
        _serve(run_config, _grid(data_root, run_config))
    changed = dict(run_config, lr=0.2, resume=True)
    with pytest.raises(ConfigError, match="differs in: lr"):
        _serve(changed, _grid(data_root, changed))
    resumed = dict(run_config, resume=True)
    grid = _grid(data_root, resumed)
    lines: list[str] = []
    summary = _serve(resumed, grid, lines)
    assert summary.rounds_completed == 2 and [row["round"] for row in metrics(out)] == [1, 2]
    assert "fltrain: resuming after round 1 of 2" in lines
    trained = [m for m in grid.sent if m.metadata.message_type == MessageType.TRAIN]
    assert {m.content["config"]["round"] for m in trained} == {2}
    # round 2 started from the checkpointed model
    assert torch.equal(torch.from_numpy(trained[0].content["arrays"]["params"].numpy()),
                       after_one["server"]["params"])


def _epsilon_of(event, rounds, delta, neighbouring):
    import dpcalib
    from dpcalib.events import Repeated

    return dpcalib.event_epsilon(Repeated(event, rounds), delta=delta, accountant="rdp", neighbouring=neighbouring)


def test_record_level_run_keeps_the_ledger_of_the_accounted_event(data_root, tmp_path):
    out = tmp_path / "o"
    run_config = _run_config(data_root, out, dp="sample", sample={"eps": 2.0, "clip": 1.0})
    grid = _grid(data_root, run_config)
    summary = _serve(run_config, grid)
    trained = [m for m in grid.sent if m.metadata.message_type == MessageType.TRAIN]
    q = 30 * 3 / 900  # the public rate: batch_size x clients / training records
    assert {m.content["config"]["q"] for m in trained} == {q}
    assert {m.content["config"]["sigma"] for m in trained} == {summary.sigma}
    # no record count or loss reaches the server in a DP run
    assert private_rows(out)[0]["train_loss"] is None
    plan = summary.privacy["plan"]
    from fltrain.privacy.record import record_round_event

    event = record_round_event(summary.sigma, q=q, local_steps=3)
    for row in metrics(out):
        expected = _epsilon_of(event, row["round"], 1e-5, plan_neighbouring(plan))
        assert row["epsilon"] == pytest.approx(expected, rel=1e-12) and row["noise"] == "secure"
    assert summary.epsilon <= 2.0
    assert json.loads((out / LEDGER).read_text())["rounds"] == 2


def plan_neighbouring(plan):
    from dpcalib.events import Neighbouring

    return Neighbouring(plan["neighbouring"])


def test_a_node_whose_own_rate_exceeds_the_accounted_q_refuses(data_root, tmp_path):
    run_config = _run_config(data_root, tmp_path / "o", dp="sample", rounds=1)
    lines: list[str] = []
    grid = _grid(data_root, run_config)
    grid.contexts[1002].run_config["train-samples"] = 600  # this node sees fewer records: its own rate is higher
    _serve(run_config, grid, lines)
    (line,) = [line for line in lines if "dropped" in line]
    assert "client 2" in line and "exceeds the accounted q = 0.1" in line and "refusing" in line
    assert private_rows(tmp_path / "o")[0]["clients"] == 2


def test_client_level_run_samples_clips_noises_and_accounts_every_round(data_root, tmp_path):
    out = tmp_path / "o"
    run_config = _run_config(data_root, out, dp="client", clients=6, **{"shards-per-client": 1},
                             client={"eps": 3.0, "delta": 1e-3, "clip": 0.05, "expected-clients": 3})
    lines: list[str] = []
    grid = _grid(data_root, run_config, nodes=6, faults={1000: scaled_delta(1e6), 1001: silent})
    summary = _serve(run_config, grid, lines)
    assert summary.privacy["cohort"] == {"sampling": "poisson", "expected_clients": 3.0, "clients": 6}
    from dpcalib.events import Gaussian, Neighbouring, PoissonSampled

    event = PoissonSampled(0.5, Gaussian(summary.sigma))
    rows = metrics(out)
    for row in rows:  # charged whether or not the sampled clients answered
        assert row["epsilon"] == pytest.approx(_epsilon_of(event, row["round"], 1e-3, Neighbouring.ADD_REMOVE),
                                               rel=1e-12)
        assert row["clip"] == 0.05 and row["noise_std"] == pytest.approx(summary.sigma * 0.05)
    declared = set(summary.privacy["releases"][1:])
    for row in rows:  # only what `fltrain run` may publish, and of the mode's releases only the declared ones
        assert set(row) <= PUBLIC_METRICS and set(row) & {"clip", "noise_std"} <= declared
    assert "clients" not in rows[0]  # the realised cohort size is private
    params = torch.load(out / CHECKPOINT, weights_only=True)["server"]["params"]
    assert bool(torch.isfinite(params).all())
    # the 1e6-times update was clipped by the server (its log says so) whenever client 0 was sampled
    sampled = [m for m in grid.sent if m.metadata.message_type == MessageType.TRAIN]
    zeros = [m for m in sampled if m.metadata.dst_node_id == 1000]
    clipped = [line for line in lines if "client 0's update is above the clip norm" in line]
    assert len(clipped) == len(zeros)
    # the movement of the model is bounded by the clip norm and the noise (server momentum 0, lr 1, denominator m)
    initial = torch.from_numpy(sampled[0].content["arrays"]["params"].numpy()) if sampled else params
    assert float((params - initial).norm()) < 2 * (6 * 0.05 + 5 * summary.sigma * 0.05 * params.numel() ** 0.5) / 3


def _toml(path: Path, values: dict) -> Path:
    from fltrain.flower.appdir import toml_value

    lines = [f"{k} = {toml_value(v)}" for k, v in values.items() if not isinstance(v, dict)]
    for table, inner in ((k, v) for k, v in values.items() if isinstance(v, dict)):
        lines += [f"[{table}]"] + [f"{k} = {toml_value(v)}" for k, v in inner.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize("extra,args,fragment", [
    ({}, ["--nodes", "2"], "--nodes 2: the plan has clients=3"),
    ({"bogus": 1}, [], "unknown config key 'bogus'"),
    ({"secure-agg": True}, [], "'secure-agg' is not carried on Flower"),
    ({"dp": "client"}, [], "client.delta"),
    ({}, ["--round-timeout", "0"], "round_timeout"),
])
def test_flower_command_refuses_bad_input_with_one_line_and_starts_nothing(tmp_path, capsys, extra, args, fragment):
    from fltrain.cli import main

    config = _toml(tmp_path / "run.toml", {**SMALL, **extra})
    out = tmp_path / "out"
    code = main(["flower", "--config", str(config), "--data-dir", str(tmp_path / "data"), "--out", str(out), *args])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and fragment in err and "Traceback" not in err
    assert not out.exists()


def test_flower_command_refuses_to_overwrite_a_run_and_writes_the_app(tmp_path, capsys):
    from fltrain.cli import main

    out = tmp_path / "out"
    out.mkdir()
    (out / "metrics.jsonl").write_text("")
    config = _toml(tmp_path / "run.toml", SMALL)
    assert main(["flower", "--config", str(config), "--out", str(out)]) == 2
    assert "already holds a run" in capsys.readouterr().err and sorted(p.name for p in out.iterdir()) == [
        "metrics.jsonl"]
    assert main(["flower", "--write-app", str(tmp_path / "app")]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "app" / "pyproject.toml")
    assert (tmp_path / "app" / "pyproject.toml").read_text() == app_pyproject()


def test_a_run_with_an_explicit_sigma_stops_before_exceeding_the_budget(data_root, tmp_path):
    import dpcalib

    sigma = 1.0
    two_rounds = dpcalib.epsilon(sigma=sigma, q=0.1, steps=6, delta=1e-5)
    three_rounds = dpcalib.epsilon(sigma=sigma, q=0.1, steps=9, delta=1e-5)
    eps = (two_rounds + three_rounds) / 2  # two rounds fit, a third would not
    run_config = _run_config(data_root, tmp_path / "o", dp="sample", rounds=4,
                             sample={"eps": eps, "sigma": sigma, "clip": 1.0})
    lines: list[str] = []
    grid = _grid(data_root, run_config)
    summary = _serve(run_config, grid, lines)
    assert summary.stopped_by_budget and summary.rounds_completed == 2
    assert [row["round"] for row in metrics(tmp_path / "o")] == [1, 2]
    assert summary.epsilon == pytest.approx(two_rounds, rel=1e-9) and summary.epsilon <= eps
    assert {m.content["config"]["round"] for m in grid.sent if m.metadata.message_type == MessageType.TRAIN} == {1, 2}
    assert any("stopping before round 3" in line for line in lines)


@pytest.mark.parametrize("sampler", ["fixed", "shuffle"])
def test_fixed_and_shuffle_runs_send_the_accounted_smallest_client_and_keep_its_ledger(data_root, tmp_path, sampler):
    from fltrain.data import load_dataset, partition
    from fltrain.privacy.record import record_round_event

    out = tmp_path / "o"
    run_config = _run_config(data_root, out, dp="sample", sample={"eps": 2.0, "clip": 1.0, "sampler": sampler})
    grid = _grid(data_root, run_config)
    summary = _serve(run_config, grid)
    data = load_dataset("mnist", str(data_root), train_samples=900, test_samples=1)
    smallest = min(len(m) for m in partition(data.y_train, scheme="shards", clients=3, seed=7, shards_per_client=2))
    trained = [m for m in grid.sent if m.metadata.message_type == MessageType.TRAIN]
    assert {m.content["config"]["records"] for m in trained} == {smallest}
    assert all("q" not in m.content["config"] for m in trained)
    assert private_rows(out)[0]["clients"] == 3  # every node trained (none refused)
    event = record_round_event(summary.sigma, local_steps=3, sampler=sampler, records=smallest, batch_size=30)
    for row in metrics(out):
        assert row["epsilon"] == pytest.approx(_epsilon_of(event, row["round"], 1e-5, "replace_one"), rel=1e-12)
    assert summary.privacy["sampler"] == sampler and 0 < summary.epsilon <= 2.0


def test_a_node_with_fewer_records_than_the_accounted_smallest_client_refuses(data_root, tmp_path):
    run_config = _run_config(data_root, tmp_path / "o", dp="sample", rounds=1, sample={"sampler": "fixed"})
    lines: list[str] = []
    grid = _grid(data_root, run_config)
    grid.contexts[1002].run_config["train-samples"] = 600  # this node's partition is smaller than the plan's
    _serve(run_config, grid, lines)
    (line,) = [line for line in lines if "dropped" in line]
    assert "client 2" in line and "fewer than the smallest client the plan accounts" in line and "refusing" in line
    assert private_rows(tmp_path / "o")[0]["clients"] == 2
