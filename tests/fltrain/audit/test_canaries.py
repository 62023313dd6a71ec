"""The canaries' parts without training: guesses, constant features, the Dirac engine wrapper, mislabelled records,
canary clients."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fltrain.audit.blackbox import MislabelledCanaries
from fltrain.audit.canaries import guess
from fltrain.audit.clients import DiracClients
from fltrain.audit.whitebox import BOOST, DiracCanaries, constant_features
from fltrain.client import ClientUpdates
from fltrain.config import ConfigError
from fltrain.data import Dataset
from fltrain.dpsgd import make_engine
from fltrain.models import ParamLayout, build_model


def test_guesses_count_the_extremes():
    scores = np.array([0.9, 0.1, 0.5, 0.8, 0.2, 0.3])
    included = np.array([True, False, False, True, True, False])
    g = guess(scores, included, k_plus=2, k_minus=2)  # in: 0.9, 0.8 (both right); out: 0.1 (right), 0.2 (wrong)
    assert (g.r, g.v) == (4, 3)
    assert guess(scores, included, 0, 0).r == 0
    with pytest.raises(ValueError):
        guess(scores, included, 4, 3)


def test_constant_features_are_the_largest_equal_group():
    a = torch.tensor([[0.0, 1.0, 2.0, 0.0, 5.0], [0.0, 3.0, 2.0, 0.0, 5.0]])
    features, value = constant_features(a, a[:1])
    assert features.tolist() == [0, 3] and value == 0.0


def _tiny(n: int = 12, features: int = 16) -> Dataset:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n, 1, 4, 4, generator=gen)
    x[:, 0, 0, :] = -0.5  # four constant features (0..3)
    return Dataset("tiny", x, torch.randint(0, 10, (n,), generator=gen), x.clone(), torch.randint(0, 10, (n,)), 10)


def test_dirac_canary_adds_its_clipped_gradient_and_nothing_else():
    data = _tiny()
    model = build_model("logreg", data.input_shape)
    layout = ParamLayout.of(model)
    canaries = DiracCanaries(6, clip=0.5)
    planted = canaries.data(data)
    n_in = int(canaries.included.sum())
    assert len(planted.y_train) == len(data.y_train) + n_in and (planted.y_train < 0).sum() == n_in
    inner = make_engine(model, "layerwise")
    engine = canaries.engine(inner, layout)
    params = {k: v.unsqueeze(0) for k, v in layout.unflatten(layout.flatten(dict(model.named_parameters()))
                                                               .detach()).items()}
    x, y = planted.x_train.unsqueeze(0), planted.y_train.unsqueeze(0)
    weight = torch.ones(1, len(planted.y_train))
    got = layout.flatten(engine(params, x, y, weight, 0.5).grads, lead=1)[0]
    real = layout.flatten(inner(params, data.x_train.unsqueeze(0), data.y_train.unsqueeze(0),
                                torch.ones(1, len(data.y_train)), 0.5).grads, lead=1)[0]
    expected = real.clone()
    expected[canaries.coords[torch.from_numpy(canaries.included)]] += 0.5  # a Dirac of 4C, clipped to C
    assert torch.allclose(got, expected, atol=1e-6)
    assert BOOST * 0.5 == canaries.size
    # the control and the canary coordinates have equal real gradients (constant feature, same output)
    assert torch.allclose(real[canaries.coords], real[canaries.controls], atol=1e-7)


def test_dirac_canaries_refuse_a_convolutional_model_and_too_many_canaries():
    data = _tiny()
    canaries = DiracCanaries(4, clip=1.0)
    canaries.data(data)
    cnn = build_model("tanh-cnn", (1, 28, 28))
    with pytest.raises(ConfigError, match="first layer is linear"):
        canaries.engine(make_engine(cnn), ParamLayout.of(cnn))
    many = DiracCanaries(31, clip=1.0)  # 10 outputs x 3 host features
    many.data(data)
    logreg = build_model("logreg", data.input_shape)
    with pytest.raises(ConfigError, match="at most 30"):
        many.engine(make_engine(logreg), ParamLayout.of(logreg))


def test_mislabelled_canaries_come_from_the_test_tail_with_wrong_labels():
    data = _tiny()
    canaries = MislabelledCanaries(5)
    planted = canaries.data(data)
    assert len(planted.y_test) == len(data.y_test) - 5
    assert (canaries.y != canaries.true_labels).all()
    assert len(planted.y_train) == len(data.y_train) + int(canaries.included.sum())
    model = build_model("logreg", data.input_shape)
    layout = ParamLayout.of(model)
    params = layout.flatten(dict(model.named_parameters())).detach()
    canaries.started(model, layout, params)
    canaries.finished(params)
    scores = canaries.scores()
    assert scores.shape == (5,) and (scores < 0).all()


def test_canary_clients_join_without_records_and_send_their_dirac():
    data = _tiny()
    model = build_model("logreg", data.input_shape)
    layout = ParamLayout.of(model)
    canaries = DiracClients(6, clip=0.5)
    assert canaries.data(data) is data  # no records are planted
    assert canaries.engine(make_engine(model), layout) is not None
    members = [torch.arange(6), torch.arange(6, 12)]
    federation = canaries.clients(members)
    chosen = torch.nonzero(torch.from_numpy(canaries.included)).flatten()
    assert len(federation) == 2 + len(chosen) and all(len(m) == 0 for m in federation[2:])
    ids = torch.arange(len(federation))
    deltas = torch.randn(len(ids), layout.size)
    sent = canaries.updates(ClientUpdates(ids, deltas, torch.zeros(len(ids)), torch.zeros(len(ids))))
    assert torch.equal(sent.deltas[:2], deltas[:2])  # the real clients' updates are untouched
    expected = torch.zeros(len(chosen), layout.size)
    expected[torch.arange(len(chosen)), canaries.coords[chosen]] = -BOOST * 0.5  # norm 4C: the mode clips it to C
    assert torch.equal(sent.deltas[2:], expected)
