"""Tests of the server optimisers (fltrain.serveropt): FedAvg, FedAvgM and FedAdam steps, exact resume, bad input."""

from __future__ import annotations

import math

import pytest
import torch

from dpcalib.errors import InvalidArgumentError
from fltrain.serveropt import ServerAdam, ServerSGD, make_server_optimizer

torch.set_num_threads(1)



def test_server_sgd_is_fedavg_and_momentum_accumulates() -> None:
    x = torch.zeros(3)
    ServerSGD(lr=1.0).step(x, torch.tensor([1.0, -2.0, 0.5]))
    assert torch.equal(x, torch.tensor([1.0, -2.0, 0.5]))
    opt, y, u = ServerSGD(lr=0.5, momentum=0.9), torch.zeros(1), torch.ones(1)
    opt.step(y, u)
    opt.step(y, u)
    assert float(y) == pytest.approx(0.5 * 1 + 0.5 * (0.9 + 1))


def test_server_adam_matches_reddi_algorithm() -> None:
    lr, b1, b2, tau = 0.1, 0.9, 0.99, 1e-3
    opt, x = ServerAdam(lr=lr, beta1=b1, beta2=b2, tau=tau), torch.zeros(1, dtype=torch.float64)
    m = v = 0.0
    ref = 0.0
    for u in (2.0, -1.0, 0.5):
        opt.step(x, torch.tensor([u], dtype=torch.float64))
        g = -u
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        ref -= lr * m / (math.sqrt(v) + tau)
        assert float(x) == pytest.approx(ref, rel=1e-12)


@pytest.mark.parametrize("name", ["sgd", "adam"])
def test_server_optimizer_resume_is_exact(name: str) -> None:
    kwargs = {"lr": 0.3, "momentum": 0.5} if name == "sgd" else {"lr": 0.3}
    a, xa = make_server_optimizer(name, **kwargs), torch.zeros(5)
    a.step(xa, torch.arange(5.0))
    b, xb = make_server_optimizer(name, **kwargs), xa.clone()
    b.load_state_dict(a.state_dict())
    a.step(xa, torch.ones(5))
    b.step(xb, torch.ones(5))
    assert torch.equal(xa, xb)


def test_bad_server_optimizer_input() -> None:
    with pytest.raises(InvalidArgumentError, match="server_opt"):
        make_server_optimizer("rmsprop", lr=1.0)
    with pytest.raises(InvalidArgumentError, match="server_lr"):
        make_server_optimizer("sgd", lr=0.0)
    with pytest.raises(InvalidArgumentError, match="server_momentum"):
        make_server_optimizer("sgd", lr=1.0, momentum=1.0)
