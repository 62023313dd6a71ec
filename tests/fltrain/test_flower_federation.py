"""fltrain on a real Flower federation: a SuperLink and SuperNodes started as separate processes on 127.0.0.1
(free ports), record-level then client-level DP, a SuperNode killed mid-run, the server killed and restarted.
Every process a test starts is ended by the federation's ``stop()`` in a ``finally`` (the ``with`` block), also
when the test fails, and the tests check that none is left."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest

pytest.importorskip("flwr")

import dpcalib  # noqa: E402
from dpcalib.events import Gaussian, Neighbouring, PoissonSampled, Repeated  # noqa: E402

from fltrain.config import ConfigError  # noqa: E402
from fltrain.flower.appdir import flower_run_config  # noqa: E402
from fltrain.flower.launcher import FederationError, LocalFederation  # noqa: E402
from fltrain.run import LEDGER  # noqa: E402

from .runs import metrics, private_rows  # noqa: E402

pytestmark = pytest.mark.slow

BASE = {"dataset": "mnist", "train-samples": 900, "test-samples": 200, "clients": 3, "partition": "shards",
        "shards-per-client": 2, "local-steps": 3, "batch-size": 30, "lr": 0.1, "model": "logreg", "seed": 7,
        "node-wait": 90.0, "round-timeout": 90.0}
RECORD = {"dp": "sample", "sample": {"eps": 2.0, "clip": 1.0}}
CLIENT = {"dp": "client", "client": {"eps": 2.0, "delta": 1e-3, "clip": 0.05, "expected-clients": 2}}


def _config(data_root: Path, out: Path, **values) -> dict:
    return flower_run_config({**BASE, "data-dir": str(data_root), "out": str(out), **values})


def _alive(pid: int) -> bool:
    """Whether ``pid`` is a running process (a zombie, already dead and waiting to be reaped, is not)."""
    try:
        text = (Path("/proc") / str(pid) / "stat").read_text()
    except OSError:
        return False
    return text[text.rindex(")") + 2] != "Z"


def _started(federation: LocalFederation) -> set[int]:
    federation.track()
    return {p.pid for p in federation.processes.values()} | set(federation.spawned)


def test_record_level_then_client_level_on_three_supernodes(data_root, tmp_path):
    lines: list[str] = []
    federation = LocalFederation(nodes=3, partitions=3, data_dir=data_root, workdir=tmp_path / "flower")
    with federation:
        with pytest.raises(ConfigError, match="only 3 SuperNode"):  # a plan of 4 clients: refused before training
            federation.run(_config(data_root, tmp_path / "four", rounds=2, clients=4, **{"node-wait": 2.0}))
        assert not (tmp_path / "four").exists()
        federation.run(_config(data_root, tmp_path / "record", rounds=2, **RECORD), lines.append)
        federation.run(_config(data_root, tmp_path / "client", rounds=2, **CLIENT), lines.append)
        pids = _started(federation)
    assert len(pids) >= 4 and not [pid for pid in pids if _alive(pid)]

    record = json.loads((tmp_path / "record" / "summary.json").read_text())
    rows = metrics(tmp_path / "record")
    assert [row["round"] for row in rows] == [1, 2] and record["noise"] == "secure"
    for row in rows:  # the ledger is dpcalib's epsilon of the accounted event: 3 DP-SGD steps per round, q = 0.1
        expected = dpcalib.epsilon(sigma=record["sigma"], q=0.1, steps=3 * row["round"], delta=1e-5)
        assert row["epsilon"] == pytest.approx(expected, rel=1e-9)
    assert rows[-1]["epsilon"] <= 2.0 and record["rounds_completed"] == 2
    assert private_rows(tmp_path / "record")[-1]["clients"] == 3

    client = json.loads((tmp_path / "client" / "summary.json").read_text())
    rows = metrics(tmp_path / "client")
    assert [row["round"] for row in rows] == [1, 2] and client["privacy"]["cohort"]["sampling"] == "poisson"
    for row in rows:  # one Poisson-subsampled Gaussian per round at the accounted rate m/N = 2/3
        event = Repeated(PoissonSampled(2 / 3, Gaussian(client["sigma"])), row["round"])
        expected = dpcalib.event_epsilon(event, delta=1e-3, neighbouring=Neighbouring.ADD_REMOVE)
        assert row["epsilon"] == pytest.approx(expected, rel=1e-9) and "clients" not in row
    assert rows[-1]["epsilon"] <= 2.0
    assert sum(line.startswith("fltrain: round ") and "/2:" in line for line in lines) == 4


def test_a_killed_supernode_does_not_stop_the_run_and_a_restarted_server_resumes_its_ledger(data_root, tmp_path):
    out = tmp_path / "run"
    sigma = 3.0  # an explicit sigma: the budget then allows more rounds than planned (the restart may charge one)
    run_config = _config(data_root, out, rounds=3, dp="sample", sample={"eps": 8.0, "clip": 1.0, "sigma": sigma})
    lines: list[str] = []
    first = LocalFederation(nodes=3, partitions=3, data_dir=data_root, workdir=tmp_path / "flower-1")

    def faults(line: str) -> None:
        lines.append(line)
        if line.startswith("fltrain: round 1/3"):
            os.killpg(first.processes["supernode-2"].pid, signal.SIGKILL)  # a SuperNode dies, by its PID
        if line.startswith("fltrain: round 2/3"):
            os.killpg(first.processes["superlink"].pid, signal.SIGKILL)  # then the server machine goes down

    with first:
        with pytest.raises(FederationError, match="the SuperLink exited"):
            first.run(run_config, faults)
        pids = _started(first)
    assert len(pids) >= 4 and not [pid for pid in pids if _alive(pid)]
    assert [row["round"] for row in metrics(out)] == [1, 2]
    assert [row["clients"] for row in private_rows(out)] == [3, 2]  # round 2 went on without the dead node
    assert any("round 2: client 2" in line and "dropped" in line for line in lines)
    charged = json.loads((out / LEDGER).read_text())["rounds"]
    assert charged in (2, 3)  # round 3 may have been charged before the server died

    second = LocalFederation(nodes=3, partitions=3, data_dir=data_root, workdir=tmp_path / "flower-2")
    resumed: list[str] = []
    with second:
        second.run(dict(run_config, resume=True), resumed.append)
    assert f"fltrain: resuming after round 2 of 3 with {charged} round(s) charged" in resumed
    rows = metrics(out)
    assert [row["round"] for row in rows] == [1, 2, 3]
    ledger = json.loads((out / LEDGER).read_text())["rounds"]
    assert ledger == charged + 1  # the completed rounds were not charged again; an interrupted one stays charged
    expected = dpcalib.epsilon(sigma=sigma, q=0.1, steps=3 * ledger, delta=1e-5)
    assert rows[-1]["epsilon"] == pytest.approx(expected, rel=1e-9)
    assert json.loads((out / "summary.json").read_text())["rounds_completed"] == 3
