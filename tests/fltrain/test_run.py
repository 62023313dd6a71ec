"""Whole runs on small subsets of real MNIST: metrics, checkpoints, resume after an interruption."""

from __future__ import annotations

import json

import pytest
import torch

from fltrain.config import ConfigError, RunConfig
from fltrain.run import CHECKPOINT, PRIVATE, run

from .runs import StopAt, metrics, without_timing

SMALL = dict(dataset="mnist", train_samples=1500, test_samples=300, clients=3, partition="shards",
             shards_per_client=2, rounds=3, local_steps=4, batch_size=40, lr=0.1, seed=7)


def _config(data_root, out, **overrides) -> RunConfig:
    values = dict(SMALL, data_dir=str(data_root), out=str(out))
    values.update(overrides)
    return RunConfig(**values)


@pytest.mark.parametrize("dp", ["none", "sample"])
def test_resume_after_interruption_equals_uninterrupted_run(data_root, tmp_path, dp):
    """With reproducible noise (a simulation) a resumed run is the uninterrupted one, bit for bit."""
    whole = _config(data_root, tmp_path / "whole", dp=dp, insecure_reproducible_noise=True)
    summary = run(whole)
    assert summary.rounds_completed == 3
    cut = _config(data_root, tmp_path / "cut", dp=dp, insecure_reproducible_noise=True)
    with pytest.raises(KeyboardInterrupt):
        run(cut, progress=StopAt(3))
    assert [row["round"] for row in metrics(tmp_path / "cut")] == [1, 2]
    resumed = run(cut, resume=True)
    a = torch.load(tmp_path / "whole" / CHECKPOINT, weights_only=True)
    b = torch.load(tmp_path / "cut" / CHECKPOINT, weights_only=True)
    assert torch.equal(a["server"]["params"], b["server"]["params"])
    assert torch.equal(a["mode"]["rng"]["generator"], b["mode"]["rng"]["generator"])
    assert a["mode"]["ledger"] == b["mode"]["ledger"]
    assert without_timing(metrics(tmp_path / "whole")) == without_timing(metrics(tmp_path / "cut"))
    assert resumed.test_accuracy == summary.test_accuracy


def test_metrics_lines_have_the_promised_keys(data_root, tmp_path):
    run(_config(data_root, tmp_path / "o", dp="none", rounds=2))
    rows = metrics(tmp_path / "o")
    assert [r["round"] for r in rows] == [1, 2]
    for row in rows:
        assert set(row) == {"round", "test_accuracy", "epsilon", "delta", "sigma", "noise", "seconds", "cpu_seconds",
                            "elapsed"}
        assert 0.0 <= row["test_accuracy"] <= 1.0
        assert row["seconds"] > 0 and row["noise"] == "none"
    private = [json.loads(line) for line in (tmp_path / "o" / PRIVATE).read_text().splitlines()]
    assert [set(r) for r in private] == [{"round", "clients", "train_loss"}] * 2


def test_existing_run_is_not_overwritten_and_resume_checks_the_config(data_root, tmp_path):
    out = tmp_path / "o"
    run(_config(data_root, out, dp="none", rounds=1))
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(ConfigError, match="already holds a run"):
        run(_config(data_root, out, dp="none", rounds=1))
    with pytest.raises(ConfigError, match="differs in: rounds, lr"):
        run(_config(data_root, out, dp="none", rounds=2, lr=0.2), resume=True)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    with pytest.raises(ConfigError, match="no checkpoint"):
        run(_config(data_root, tmp_path / "empty", dp="none"), resume=True)
    assert not (tmp_path / "empty").exists()


def test_ledger_in_metrics_equals_dpcalib_and_explicit_sigma_stops_at_the_budget(data_root, tmp_path):
    import dpcalib

    q = 40 * 3 / 1500  # the public rate: batch 40 x 3 clients / 1500 records
    sigma = dpcalib.calibrate_sigma(eps=4.0, delta=1e-5, q=q, steps=8)  # enough for 2 rounds of 4 steps, not 3
    summary = run(_config(data_root, tmp_path / "o", dp="sample", sample={"sigma": sigma}))
    assert summary.stopped_by_budget and summary.rounds_completed == 2
    rows = metrics(tmp_path / "o")
    assert [row["round"] for row in rows] == [1, 2]
    for row in rows:
        expected = dpcalib.epsilon(sigma=sigma, q=q, steps=4 * row["round"], delta=1e-5)
        assert row["epsilon"] == pytest.approx(expected, rel=1e-9) and row["epsilon"] <= 4.0
        assert row["sigma"] == sigma and row["delta"] == 1e-5 and row["noise"] == "secure"
    assert summary.epsilon == rows[-1]["epsilon"]
    assert summary.privacy["plan"]["neighbouring"] == "add_remove" and summary.privacy["q"] == q


@pytest.mark.slow
def test_end_to_end_dp_fedavg_on_real_mnist_learns_within_budget(data_root, tmp_path, capsys):
    from fltrain.cli import main

    out = tmp_path / "run"
    code = main(["run", "--dataset", "mnist", "--data-dir", str(data_root), "--out", str(out), "--clients", "2",
                 "--partition", "shards", "--shards-per-client", "5", "--train-samples", "6000", "--test-samples",
                 "1000", "--rounds", "3", "--local-steps", "40", "--batch-size", "60", "--lr", "0.5", "--clip", "1",
                 "--momentum", "0.5", "--eps", "4", "--delta", "1e-5", "--seed", "1"])
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    rows = metrics(out)
    assert [row["round"] for row in rows] == [1, 2, 3]
    assert 0 < rows[0]["epsilon"] < rows[-1]["epsilon"] == summary["epsilon"] <= 4.0
    assert summary["test_accuracy"] == rows[-1]["test_accuracy"] > 0.6  # chance is 0.1


@pytest.mark.parametrize("sampler", ["fixed", "shuffle"])
def test_fixed_and_shuffle_runs_charge_the_smallest_clients_event_and_refuse_another_sampler(data_root, tmp_path,
                                                                                           sampler):
    import dpcalib
    from fltrain.data import load_dataset, partition

    data = load_dataset("mnist", str(data_root), train_samples=1500, test_samples=1)
    sizes = [len(m) for m in partition(data.y_train, scheme="dirichlet", clients=3, seed=7, alpha=2.0)]
    assert len(set(sizes)) == 3  # clients of different sizes: the smallest is accounted
    settings = dict(dp="sample", partition="dirichlet", alpha=2.0)
    out = tmp_path / "o"
    summary = run(_config(data_root, out, **settings, sample={"sampler": sampler, "eps": 3.0}))
    assert summary.rounds_completed == 3 and 0 < summary.epsilon <= 3.0
    privacy = summary.privacy
    assert privacy["sampler"] == sampler and privacy["smallest_client_records"] == min(sizes)
    assert privacy["plan"]["neighbouring"] == "replace_one" and "replace-one" in privacy["guarantee"]
    event = dpcalib.training_event(sampler, sigma=summary.sigma, steps=4, dataset_size=min(sizes), batch_size=40)
    for row in metrics(out):
        expected = dpcalib.event_epsilon(dpcalib.Repeated(event, row["round"]), delta=1e-5,
                                         neighbouring="replace_one")
        assert row["epsilon"] == pytest.approx(expected, rel=1e-9)
    ledger = json.loads((out / "ledger.json").read_text())
    assert ledger["accountant"]["options"]["sampler"] == sampler
    other = "poisson" if sampler == "fixed" else "fixed"
    with pytest.raises(ConfigError, match=f"trained with --sampler {sampler}.*cannot continue with --sampler {other}"):
        run(_config(data_root, out, **settings, sample={"sampler": other, "eps": 3.0}), resume=True)
