"""Faults around a run's output directory (issue 10, items 4-8): a crash anywhere leaves a resumable run, damaged
files are reported in one line naming them, two runs cannot share an --out, an --out that is not a run's is
refused, and bad config values are refused before anything is written."""

from __future__ import annotations

import fcntl
import json
import os

import pytest
import torch

import fltrain.run as run_module
from fltrain.cli import main
from fltrain.config import ConfigError, RunConfig
from fltrain.run import CHECKPOINT, LEDGER, LOCK, METRICS, PRIVATE, SUMMARY, run

from .runs import metrics

TINY = dict(dataset="mnist", train_samples=600, test_samples=200, clients=2, rounds=2, local_steps=2, batch_size=30,
            model="logreg", lr=0.1, seed=3)
TINY_ARGS = ["--train-samples", "600", "--test-samples", "200", "--clients", "2", "--rounds", "2", "--local-steps",
             "2", "--batch-size", "30", "--model", "logreg", "--lr", "0.1", "--seed", "3"]


def tiny(data_root, out, **overrides) -> RunConfig:
    return RunConfig(**{**TINY, "data_dir": str(data_root), "out": str(out), **overrides})


def snapshot(folder) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def cli(capsys, *argv: str) -> tuple[int, str]:
    code = main(["run", *argv])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, err


def assert_one_line(err: str, *fragments: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fltrain: error: "), err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


# --- item 4: a crash between round 1's metrics line and its checkpoint ------------------------------------------


def test_a_crash_before_the_first_round_checkpoint_leaves_a_resumable_run(data_root, tmp_path, monkeypatch):
    out = tmp_path / "o"
    cfg = tiny(data_root, out, dp="sample", sample={"sigma": 1.0, "eps": 1e3})  # a budget that a re-run fits in
    save = run_module._save_checkpoint

    def crash_after_round_one_metrics(path, state):
        if state["round"] == 1:
            raise KeyboardInterrupt  # the metrics line of round 1 is written, its checkpoint is not
        save(path, state)

    monkeypatch.setattr(run_module, "_save_checkpoint", crash_after_round_one_metrics)
    with pytest.raises(KeyboardInterrupt):
        run(cfg)
    monkeypatch.setattr(run_module, "_save_checkpoint", save)
    assert [row["round"] for row in metrics(out)] == [1]
    with pytest.raises(ConfigError, match="already holds a run; pass --resume"):
        run(cfg)
    summary = run(cfg, resume=True)  # from the round-0 checkpoint
    assert summary.rounds_completed == 2 and [row["round"] for row in metrics(out)] == [1, 2]
    # the interrupted round 1 (its noise was drawn, its metrics line released) stays charged: 3 rounds in all
    assert json.loads((out / LEDGER).read_text())["rounds"] == 3


# --- item 5: damaged files ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def finished_run(data_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("finished") / "run"
    run(tiny(data_root, out, dp="none", rounds=1))
    return out


def damaged_copy(finished_run, tmp_path, name: str, content: bytes | None):
    out = tmp_path / "o"
    out.mkdir()
    for path in finished_run.iterdir():
        (out / path.name).write_bytes(path.read_bytes())
    if content is not None:
        (out / name).write_bytes(content)
    return out


def checkpoint_without(finished_run, key: str) -> bytes:
    state = torch.load(finished_run / CHECKPOINT, weights_only=True)
    del state[key]
    path = finished_run.parent / f"without-{key}.pt"
    torch.save(state, path)
    return path.read_bytes()


@pytest.mark.parametrize(
    "name,make,fragment",
    [
        (CHECKPOINT, lambda run_dir: b"", "empty or cut short"),  # once "interrupted; continue with --resume", exit 130
        (CHECKPOINT, lambda run_dir: (run_dir / CHECKPOINT).read_bytes()[:300], "damaged"),
        (CHECKPOINT, lambda run_dir: os.urandom(4096), "damaged"),
        (CHECKPOINT, lambda run_dir: checkpoint_without(run_dir, "server"), "missing 'server'"),
        (CHECKPOINT, lambda run_dir: json.dumps({"round": 1}).encode(), "damaged"),
        (METRICS, lambda run_dir: b'{"round": 1}\n{"rou\n{"round": 1}\n', "line 2"),
    ],
    ids=["empty", "truncated", "random", "missing-key", "not-a-checkpoint", "damaged-metrics-line"],
)
def test_a_damaged_file_is_one_line_naming_it_and_changes_nothing(finished_run, data_root, tmp_path, capsys, name,
                                                                  make, fragment):
    out = damaged_copy(finished_run, tmp_path, name, make(finished_run))
    before = snapshot(out)
    code, err = cli(capsys, *TINY_ARGS, "--rounds", "1", "--dp", "none", "--data-dir", str(data_root), "--out",
                    str(out), "--resume")
    assert code == 2
    assert_one_line(err, str(out / name), fragment, "cannot be resumed")
    assert snapshot(out) == before


def test_a_metrics_line_cut_short_by_a_crash_is_dropped_on_resume(finished_run, data_root, tmp_path):
    out = damaged_copy(finished_run, tmp_path, METRICS, None)
    with open(out / METRICS, "a") as handle:
        handle.write('{"round": 2, "test_acc')  # a crash in the middle of writing round 2's line
    with open(out / PRIVATE, "a") as handle:
        handle.write('{"rou')
    run(tiny(data_root, out, dp="none", rounds=1), resume=True)
    assert [row["round"] for row in metrics(out)] == [1]
    assert [json.loads(line)["round"] for line in (out / PRIVATE).read_text().splitlines()] == [1]


# --- item 6: one run per --out ------------------------------------------------------------------------------------


def test_a_second_run_on_a_locked_out_is_refused_and_writes_nothing(data_root, tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    fd = os.open(out / LOCK, os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)  # as a first run holds it while it trains
    try:
        with pytest.raises(ConfigError, match="another fltrain run is writing"):
            run(tiny(data_root, out, dp="none", rounds=1))
        assert [p.name for p in out.iterdir()] == [LOCK]
    finally:
        os.close(fd)
    run(tiny(data_root, out, dp="none", rounds=1))  # the lock released, the directory is usable
    assert (out / SUMMARY).exists()


def test_the_lock_is_taken_before_the_directory_is_checked_again(data_root, tmp_path, monkeypatch):
    """Two runs started at once both pass the first (read-only) check; the second to lock sees the first's files."""
    out = tmp_path / "o"
    cfg = tiny(data_root, out, dp="none", rounds=1)
    lock = run_module._lock

    def the_other_run_locks_first(folder):
        monkeypatch.setattr(run_module, "_lock", lock)
        run(cfg)  # started at the same time, past the same first check, it took the lock first and finished
        return lock(folder)

    monkeypatch.setattr(run_module, "_lock", the_other_run_locks_first)
    with pytest.raises(ConfigError, match="already holds a run"):
        run(cfg)
    assert [row["round"] for row in metrics(out)] == [1]  # one run's lines, not two


# --- item 7: an --out that is not a run's -------------------------------------------------------------------------


def test_out_that_is_not_a_run_directory_is_refused_untouched(data_root, tmp_path, capsys, monkeypatch):
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    a_file = tmp_path / "file"
    a_file.write_text("not a directory")
    for out, fragment in [(busy, "non-empty directory holding no fltrain run"), (a_file, "is not a directory")]:
        code, err = cli(capsys, *TINY_ARGS, "--data-dir", str(data_root), "--out", str(out))
        assert code == 2
        assert_one_line(err, str(out), fragment)
    assert snapshot(busy) == {"notes.txt": b"mine"} and a_file.read_text() == "not a directory"
    monkeypatch.chdir(tmp_path / "busy")
    code, err = cli(capsys, *TINY_ARGS, "--data-dir", str(data_root), "--out", "")
    assert code == 2
    assert_one_line(err, "--out is empty")
    assert snapshot(busy) == {"notes.txt": b"mine"}


# --- item 8: config values refused before anything is written -------------------------------------------------------


@pytest.mark.parametrize(
    "toml,fragment",
    [
        (b"rounds = true\n", "rounds=True"),
        (b'[sample]\nclip = "0.1"\n', "sample.clip='0.1'"),
        (b"local-steps = 2\nlocal_steps = 3\n", "given twice"),
        (b"rounds = 2 # \xff\xfe\n", "not valid TOML"),
        (b"lr = 1e300\n", "lr=1e+300"),
    ],
    ids=["bool-count", "string-clip", "two-spellings", "not-utf8", "huge-lr"],
)
def test_bad_config_files_are_refused_in_one_line_and_write_nothing(tmp_path, capsys, toml, fragment):
    config = tmp_path / "run.toml"
    config.write_bytes(toml)
    out = tmp_path / "out"
    code, err = cli(capsys, "--config", str(config), "--data-dir", str(tmp_path / "data"), "--out", str(out))
    assert code == 2
    assert_one_line(err, fragment)
    assert not out.exists() and not (tmp_path / "data").exists()


def test_config_numbers_take_their_declared_type():
    cfg = RunConfig.from_dict({"rounds": 2.0, "local_steps": 3.0, "lr": 1, "sample": {"clip": 1}})
    assert type(cfg.rounds) is int and type(cfg.local_steps) is int and cfg.rounds == 2
    assert type(cfg.lr) is float and type(cfg.sample.clip) is float
    assert RunConfig.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize(
    "args,fragment",
    [(["--lr", "1e300"], "lr=1e+300"), (["--server-lr", "5000"], "server_lr"),
     (["--dp", "client", "--clients", "4", "--delta", "1e-5", "--secure-agg", "--clip", "1e12"], "client.clip=1e+12")],
)
def test_values_that_failed_in_round_one_are_refused_before_writing(data_root, tmp_path, capsys, args, fragment):
    out = tmp_path / "out"
    code, err = cli(capsys, *TINY_ARGS, "--data-dir", str(data_root), "--out", str(out), *args)
    assert code == 2
    assert_one_line(err, fragment)
    assert not out.exists()


def test_an_unexpected_exception_is_one_line_with_status_1(data_root, tmp_path, capsys, monkeypatch):
    def broken(*args, **kwargs):
        raise ZeroDivisionError("division by zero")

    monkeypatch.setattr(run_module, "evaluate", broken)
    code, err = cli(capsys, *TINY_ARGS, "--dp", "none", "--data-dir", str(data_root), "--out", str(tmp_path / "o"))
    assert code == 1  # after the round's progress bar, one error line
    assert_one_line(err.strip().splitlines()[-1], "internal error (ZeroDivisionError: division by zero)")
    # the run stopped in round 1 after its round-0 checkpoint: it can be resumed
    monkeypatch.undo()
    assert run(tiny(data_root, tmp_path / "o", dp="none"), resume=True).rounds_completed == 2
