import json

import pytest

from dpcalib.errors import InvalidArgumentError
from dpcalib.events import (
    Composed,
    Gaussian,
    PoissonSampled,
    Repeated,
    SampledWithoutReplacement,
    dpsgd_event,
    event_from_dict,
    event_to_dict,
)

EVENTS = [
    Gaussian(0.7),
    PoissonSampled(0.01, Gaussian(1.1)),
    SampledWithoutReplacement(60000, 256, Gaussian(0.9)),
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
