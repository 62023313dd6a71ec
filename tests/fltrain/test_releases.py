"""What a run releases: the DP noise is not determined by anything written to disk, reproducible noise is labelled,
public outputs carry no cohort size or un-noised loss, the ledger charges every round whose noise was drawn, and
the validation split keeps the test set for the end."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

import dpcalib
from fltrain.config import RunConfig
from fltrain.run import CHECKPOINT, LEDGER, METRICS, PRIVATE, SUMMARY, run

from .runs import StopAt, StopAtStep, metrics, private_rows, without_timing

RECORD = dict(dataset="mnist", train_samples=1500, test_samples=300, clients=3, partition="shards",
              shards_per_client=2, rounds=2, local_steps=3, batch_size=40, lr=0.1, seed=7, dp="sample",
              sample={"eps": 8.0})
CLIENT = dict(dataset="mnist", train_samples=1500, test_samples=300, clients=30, partition="dirichlet", alpha=0.1,
              rounds=3, local_steps=3, batch_size=10, lr=0.1, dp="client", server_opt="adam", server_lr=0.01, seed=3,
              client={"expected_clients": 10, "eps": 8.0, "delta": 1e-4, "clip": 0.5, "adaptive_clip": True})

#: every key a public metrics line may hold: settings, DP releases, accuracy on the public test set, timings
PUBLIC_METRICS = {"round", "test_accuracy", "epsilon", "delta", "sigma", "noise", "seconds", "cpu_seconds", "elapsed",
                  "clip", "noise_std", "noisy_fraction_unclipped"}


def _config(data_root, out, base=RECORD, **overrides) -> RunConfig:
    return RunConfig(**{**base, "data_dir": str(data_root), "out": str(out), **overrides})


def _params(out) -> torch.Tensor:
    return torch.load(out / CHECKPOINT, weights_only=True)["server"]["params"]


@pytest.mark.parametrize("reproducible", [False, True])
def test_a_checkpoint_and_the_config_do_not_determine_the_noise(data_root, tmp_path, reproducible):
    """Two resumes of one checkpoint draw different noise and batches (and, as a control, the same ones when the
    noise is the labelled reproducible simulation)."""
    first = tmp_path / "first"
    with pytest.raises(KeyboardInterrupt):
        run(_config(data_root, first, insecure_reproducible_noise=reproducible), progress=StopAt(2))
    checkpoint = torch.load(first / CHECKPOINT, weights_only=True)
    assert ("rng" in checkpoint["mode"]) is reproducible  # a secret source leaves no state behind
    second = tmp_path / "second"
    shutil.copytree(first, second)
    for out in (first, second):
        run(_config(data_root, out, insecure_reproducible_noise=reproducible), resume=True)
    a, b = _params(first), _params(second)
    assert torch.equal(a, b) is reproducible
    if not reproducible:
        assert float((a - b).abs().max()) > 1e-4  # not rounding: different noise vectors


def test_reproducible_noise_is_labelled_in_every_public_output(data_root, tmp_path):
    for flag, label in ((True, "insecure-reproducible"), (False, "secure")):
        out = tmp_path / label
        summary = run(_config(data_root, out, insecure_reproducible_noise=flag))
        assert [row["noise"] for row in metrics(out)] == [label, label]
        saved = json.loads((out / SUMMARY).read_text())
        assert saved["noise"] == saved["privacy"]["noise"] == summary.noise == label
    none = run(_config(data_root, tmp_path / "none", dp="none"))
    assert none.noise == "none" and {row["noise"] for row in metrics(tmp_path / "none")} == {"none"}


def _keys(value) -> set[str]:
    if isinstance(value, dict):
        return set(value) | set().union(*(_keys(v) for v in value.values()))
    if isinstance(value, list):
        return set().union(*(_keys(v) for v in value))
    return set()


def test_no_public_output_carries_the_cohort_size_or_an_unnoised_loss(data_root, tmp_path):
    out = tmp_path / "o"
    run(_config(data_root, out, CLIENT))
    rows = metrics(out)
    private = private_rows(out)
    assert [r["round"] for r in rows] == [r["round"] for r in private] == [1, 2, 3]
    for row, secret in zip(rows, private):
        assert set(row) <= PUBLIC_METRICS
        assert {"clients", "train_loss"} <= set(secret)  # the realised K and the loss are kept, privately
    sizes = {r["clients"] for r in private}
    assert len(sizes) > 1  # a Poisson cohort: the realised size varies, and would leak
    summary = json.loads((out / SUMMARY).read_text())
    assert not _keys(summary) & {"train_loss", "val_accuracy", "num_samples"}
    declared = set(summary["privacy"]["releases"][1:])  # the mode's list of what it releases each round
    assert declared == {"clip", "noise_std", "noisy_fraction_unclipped"}
    assert all(set(row) - declared <= PUBLIC_METRICS - {"clip", "noise_std", "noisy_fraction_unclipped"}
               for row in rows)
    assert summary["privacy"]["cohort"] == {"sampling": "poisson", "expected_clients": 10.0, "clients": 30}
    ledger = json.loads((out / LEDGER).read_text())
    assert _keys(ledger) <= {"rounds", "accountant", "options", "history", "event", "count", "type", "q", "sigma",
                             "orders", "conversion", "refine", "neighbouring", "sampler"}


def test_an_interrupted_round_stays_charged_and_its_rerun_is_charged_again(data_root, tmp_path):
    q = 40 * 3 / 1500
    sigma = dpcalib.calibrate_sigma(eps=8.0, delta=1e-5, q=q, steps=9)  # room for three rounds of 3 steps
    for name, settings in (("room", {"eps": 8.0, "sigma": sigma}), ("calibrated", {"eps": 8.0})):
        out = tmp_path / name
        with pytest.raises(KeyboardInterrupt):  # round 2's noise drawn, its checkpoint not written
            run(_config(data_root, out, sample=settings), progress=StopAtStep(2, step=1))
        assert [row["round"] for row in metrics(out)] == [1]
        assert json.loads((out / LEDGER).read_text())["rounds"] == 2
        summary = run(_config(data_root, out, sample=settings), resume=True)
        rows = metrics(out)
        if name == "calibrated":  # σ calibrated for exactly two rounds: the budget has no room for the re-run
            assert summary.stopped_by_budget and summary.rounds_completed == 1 and [r["round"] for r in rows] == [1]
            continue
        assert [row["round"] for row in rows] == [1, 2]
        # three rounds of noise were drawn (1, the interrupted 2, the re-run 2): all are charged
        assert rows[1]["epsilon"] == pytest.approx(dpcalib.epsilon(sigma=sigma, q=q, steps=9, delta=1e-5), rel=1e-9)
        assert summary.epsilon == rows[1]["epsilon"] <= 8.0


def test_a_client_level_run_resumes_exactly_with_reproducible_noise(data_root, tmp_path):
    summary = run(_config(data_root, tmp_path / "whole", CLIENT, insecure_reproducible_noise=True))
    cut = _config(data_root, tmp_path / "cut", CLIENT, insecure_reproducible_noise=True)
    with pytest.raises(KeyboardInterrupt):
        run(cut, progress=StopAt(3))
    resumed = run(cut, resume=True)
    a = torch.load(tmp_path / "whole" / CHECKPOINT, weights_only=True)
    b = torch.load(tmp_path / "cut" / CHECKPOINT, weights_only=True)
    assert torch.equal(a["server"]["params"], b["server"]["params"])
    assert torch.equal(a["server"]["optimizer"]["v"], b["server"]["optimizer"]["v"])
    assert a["mode"]["clip"] == b["mode"]["clip"] and a["mode"]["ledger"] == b["mode"]["ledger"]
    assert without_timing(metrics(tmp_path / "whole")) == without_timing(metrics(tmp_path / "cut"))
    assert resumed.test_accuracy == summary.test_accuracy
    rows = metrics(tmp_path / "whole")
    z, delta = rows[0]["sigma"], rows[0]["delta"]
    for row in rows:  # one Poisson-sampled Gaussian per round at q = 10/30
        assert row["epsilon"] == pytest.approx(dpcalib.epsilon(sigma=z, q=1 / 3, steps=row["round"], delta=delta),
                                               rel=1e-9)
    assert rows[-1]["epsilon"] <= 8.0 and delta == 1e-4
    assert rows[0]["clip"] == 0.5 and rows[1]["clip"] != 0.5  # the adaptive clip moved
    assert a["mode"]["clip"] != rows[-1]["clip"]  # the checkpoint holds the clip of the next round


def test_a_validation_split_keeps_the_test_set_for_the_end(data_root, tmp_path):
    out = tmp_path / "o"
    summary = run(_config(data_root, out, val_fraction=0.2))
    assert all("test_accuracy" not in row for row in metrics(out))
    assert [set(r) for r in private_rows(out)] == [{"round", "clients", "train_loss", "val_accuracy"}] * 2
    assert 0.0 <= summary.test_accuracy <= 1.0
    # the split is carved before partitioning: 1200 training records, so the public rate is 40 x 3 / 1200
    assert summary.privacy["q"] == pytest.approx(0.1)


@pytest.mark.slow
def test_client_level_dp_fedavg_learns_mnist_over_200_clients(data_root, tmp_path):
    """End to end, small: 200 non-IID clients, ~40 per round, client-level ε = 8; against the same run without DP."""
    common = dict(dataset="mnist", train_samples=12000, test_samples=1000, clients=200, partition="dirichlet",
                  alpha=0.5, rounds=12, local_steps=8, batch_size=16, lr=0.05, model="logreg", seed=1,
                  data_dir=str(data_root), server_momentum=0.5)
    private = run(RunConfig(**common, dp="client", out=str(tmp_path / "dp"),
                            client={"expected_clients": 40, "eps": 8.0, "delta": 1e-5, "clip": 0.5,
                                    "adaptive_clip": True}))
    plain = run(RunConfig(**common, dp="none", client_fraction=0.2, out=str(tmp_path / "plain")))
    assert private.epsilon is not None and private.epsilon <= 8.0 and private.rounds_completed == 12
    assert plain.test_accuracy > 0.8
    assert private.test_accuracy > 0.7
