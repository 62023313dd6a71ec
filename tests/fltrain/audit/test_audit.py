"""End to end: the audit catches a run whose noise is switched off while its ledger still claims ε = 4 (record
level) or ε = 2 (client level, canary clients), and finds the unmodified runs consistent. All go through the
ordinary code path (record-level DP-SGD or client-level DP-FedAvg, secret source)."""

from __future__ import annotations

import json

import pytest

import torch

import fltrain.client
from fltrain.audit import AUDIT, CANARIES, run_audit
from fltrain.config import RunConfig
from fltrain.privacy.clientlevel import ClientLevel
from fltrain.run import SUMMARY

#: a small MNIST run: 2 clients of 1,000 records, 2 rounds of 25 DP-SGD steps at q = 0.2, an MLP (about 3 s)
SMALL = dict(dataset="mnist", train_samples=2000, test_samples=1000, clients=2, rounds=2, local_steps=25,
             batch_size=200, lr=0.5, momentum=0.0, model="mlp", sample={"eps": 4.0, "clip": 1.0})


def _audit(data_root, out):
    return run_audit(RunConfig(**SMALL, data_dir=str(data_root), out=str(out)), threat="white-box", canaries=1000)


@pytest.mark.slow
def test_audit_catches_a_run_without_noise(data_root, tmp_path, monkeypatch):
    real = fltrain.client.noisy_gradient
    monkeypatch.setattr(fltrain.client, "noisy_gradient",
                        lambda *args, **kwargs: real(*args, **{**kwargs, "noise_multiplier": 0.0}))
    result = _audit(data_root, tmp_path / "broken")
    assert result.epsilon_accounted == pytest.approx(4.0, abs=1e-4)  # the ledger still claims epsilon = 4
    assert result.correct == result.guesses == 500  # without noise every Dirac canary is found
    assert result.epsilon_lower > 5.0
    assert result.verdict == "violation" and result.likely_causes


@pytest.mark.slow
def test_audit_of_the_unmodified_run_is_consistent(data_root, tmp_path):
    out = tmp_path / "honest"
    result = _audit(data_root, out)
    assert result.verdict == "consistent" and 0.0 <= result.epsilon_lower < 4.0 and not result.likely_causes
    assert result.correct < result.guesses  # the noise hides some canaries
    public = json.loads((out / AUDIT).read_text())
    assert public["epsilon_lower"] == result.epsilon_lower
    # aggregates only: no per-canary data in the public file
    assert not any(isinstance(value, list) for key, value in public.items() if key != "likely_causes")
    assert json.loads((out / SUMMARY).read_text())["audit"]["verdict"] == "consistent"
    private = json.loads((out / CANARIES).read_text())
    assert len(private["included"]) == len(private["scores"]) == 1000


#: client level: 10 clients of 200 records, 5 expected per round (q = 0.5), 8 rounds, (2, 1e-5) (about 8 s)
CLIENTS = dict(dataset="mnist", train_samples=2000, test_samples=1000, clients=10, rounds=8, local_steps=5,
               batch_size=50, lr=0.1, momentum=0.0, model="mlp", dp="client",
               client={"eps": 2.0, "clip": 1.0, "expected_clients": 5, "delta": 1e-5})


def _audit_clients(data_root, out):
    return run_audit(RunConfig(**CLIENTS, data_dir=str(data_root), out=str(out)), canaries=500)


@pytest.mark.slow
def test_canary_clients_catch_a_client_level_run_without_noise(data_root, tmp_path, monkeypatch):
    monkeypatch.setattr(ClientLevel, "_stds", lambda self, clip: torch.zeros(self.dim, dtype=torch.float64))
    result = _audit_clients(data_root, tmp_path / "broken")
    assert result.epsilon_accounted == pytest.approx(2.0, abs=1e-4) and result.dp == "client"
    assert result.epsilon_lower > 2.0  # up to 20 of the 250 guesses may be wrong (a canary client never drawn)
    assert result.verdict == "violation"


@pytest.mark.slow
def test_canary_clients_find_the_unmodified_client_level_run_consistent(data_root, tmp_path):
    out = tmp_path / "honest"
    result = _audit_clients(data_root, out)
    assert result.verdict == "consistent" and result.correct < result.guesses
    summary = json.loads((out / SUMMARY).read_text())
    assert summary["privacy"]["cohort"]["clients"] == 10  # the public N that set q, not N + the canary clients
    assert json.loads((out / CANARIES).read_text())["canary_clients"]
