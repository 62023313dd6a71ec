import json

import pytest

from dpcalib.errors import InvalidArgumentError
from dpcalib.events import (
    Composed,
    Gaussian,
    Neighbouring,
    PoissonSampled,
    Repeated,
    SampledWithoutReplacement,
    Sampler,
    ShuffledEpoch,
    dpsgd_event,
    event_from_dict,
    event_to_dict,
    sampler_of,
    shuffled_epochs,
    training_event,
)

EVENTS = [
    Gaussian(0.7),
    PoissonSampled(0.01, Gaussian(1.1)),
    SampledWithoutReplacement(60000, 256, Gaussian(0.9)),
    ShuffledEpoch(60000, 256, Gaussian(0.9)),
    dpsgd_event(sigma=1.0, q=0.004, steps=1234),
    Composed((dpsgd_event(sigma=1.0, q=0.01, steps=10), Repeated(Composed((Gaussian(3.0),)), 2))),
]


@pytest.mark.parametrize("event", EVENTS)
def test_round_trip_through_json(event):
    data = json.loads(json.dumps(event_to_dict(event)))
    assert event_from_dict(data) == event


def test_floats_survive_exactly():
    event = PoissonSampled(0.1 + 0.2, Gaussian(1 / 3))
    back = event_from_dict(json.loads(json.dumps(event_to_dict(event))))
    assert back.q == 0.1 + 0.2 and back.event.sigma == 1 / 3


@pytest.mark.parametrize(
    "data,name",
    [
        ({"type": "laplace", "b": 1.0}, "event"),
        ({"type": "gaussian"}, "event"),
        ({"type": "gaussian", "sigma": -1.0}, "sigma"),
        ({"type": "poisson_sampled", "q": 2.0, "event": {"type": "gaussian", "sigma": 1.0}}, "q"),
        ({"type": "repeated", "count": 0, "event": {"type": "gaussian", "sigma": 1.0}}, "count"),
        ("not a dict", "event"),
    ],
)
def test_bad_dicts_are_rejected(data, name):
    with pytest.raises(InvalidArgumentError) as info:
        event_from_dict(data)
    assert info.value.name == name


def test_event_to_dict_rejects_non_events():
    with pytest.raises(InvalidArgumentError) as info:
        event_to_dict(3.0)
    assert info.value.name == "event"


def test_shuffled_epoch_round_trips_and_samplers_are_named():
    epoch = ShuffledEpoch(60000, 256, Gaussian(1.1))
    assert event_from_dict(json.loads(json.dumps(event_to_dict(Repeated(epoch, 3))))) == Repeated(epoch, 3)
    assert sampler_of(Repeated(epoch, 3)) is Sampler.SHUFFLE
    assert sampler_of(dpsgd_event(sigma=1.0, q=0.1, steps=2)) is Sampler.POISSON
    assert sampler_of(SampledWithoutReplacement(10, 2, Gaussian(1.0))) is Sampler.FIXED
    assert sampler_of(Composed((Gaussian(1.0), Repeated(Gaussian(2.0), 3)))) is None
    assert [s.neighbouring for s in Sampler] == [Neighbouring.ADD_REMOVE, Neighbouring.REPLACE_ONE, Neighbouring.REPLACE_ONE]
    assert Neighbouring.ADD_REMOVE.sensitivity == 1.0 and Neighbouring.REPLACE_ONE.sensitivity == 2.0
    with pytest.raises(InvalidArgumentError) as info:
        sampler_of(Composed((epoch, PoissonSampled(0.1, Gaussian(1.0)))))
    assert info.value.name == "event"


@pytest.mark.parametrize(
    "steps,n,batch,epochs",
    # ⌊n/batch⌋ batches per epoch (an upper bound whether or not the last, smaller batch is kept); started epochs count
    [(1, 100, 10, 1), (10, 100, 10, 1), (11, 100, 10, 2), (3, 10, 3, 1), (4, 10, 3, 2), (7, 10, 3, 3), (5, 5, 5, 5)],
)
def test_shuffled_epochs_counts_every_epoch_touched(steps, n, batch, epochs):
    assert shuffled_epochs(steps, n, batch) == epochs


def test_training_event_per_sampler():
    assert training_event("poisson", sigma=1.0, steps=7, q=0.1) == dpsgd_event(sigma=1.0, q=0.1, steps=7)
    assert training_event(Sampler.FIXED, sigma=1.0, steps=7, dataset_size=100, batch_size=10) == Repeated(
        SampledWithoutReplacement(100, 10, Gaussian(1.0)), 7
    )
    assert training_event("shuffle", sigma=1.0, steps=25, dataset_size=100, batch_size=10) == Repeated(
        ShuffledEpoch(100, 10, Gaussian(1.0)), 3
    )


@pytest.mark.parametrize(
    "call,name",
    [
        (lambda: training_event("minibatch", sigma=1.0, steps=1, q=0.1), "sampler"),
        (lambda: training_event("poisson", sigma=1.0, steps=1), "q"),
        (lambda: training_event("fixed", sigma=1.0, steps=1, batch_size=10), "dataset_size"),
        (lambda: training_event("shuffle", sigma=1.0, steps=1, dataset_size=10), "batch_size"),
        (lambda: ShuffledEpoch(10, 11, Gaussian(1.0)), "batch"),
        (lambda: shuffled_epochs(0, 10, 2), "steps"),
        (lambda: shuffled_epochs(3, 10, 20), "batch"),
    ],
)
def test_training_event_arguments_are_named(call, name):
    with pytest.raises(InvalidArgumentError) as info:
        call()
    assert info.value.name == name
