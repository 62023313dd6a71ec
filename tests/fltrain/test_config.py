"""Run configuration: validation with named arguments, TOML files, resume comparison."""

from __future__ import annotations

import pytest

from dpcalib.errors import InvalidArgumentError
from fltrain.config import ConfigError, RunConfig, load_toml


@pytest.mark.parametrize(
    "field,value",
    [("clip", -1.0), ("clip", 0.0), ("eps", 0.0), ("delta", 1.0), ("delta", 0.0), ("client_fraction", 1.5),
     ("clients", 0), ("rounds", 0), ("local_steps", 0), ("batch_size", 0), ("dataset", "imagenet"),
     ("partition", "by-writer"), ("momentum", 1.0), ("lr", float("nan")), ("sigma", -0.5), ("dp", "user"),
     ("accountant", "moments"), ("server_opt", "rmsprop"), ("expected_clients", 20.0), ("target_quantile", 1.0),
     ("clip_lr", 0.0), ("count_noise_std", -1.0)],
)
def test_bad_values_name_the_argument(field, value):
    with pytest.raises(InvalidArgumentError) as info:
        RunConfig(**{field: value})
    assert info.value.name == field


def test_unimplemented_modes_are_refused_clearly():
    with pytest.raises(ConfigError, match="dp='client' only"):
        RunConfig(dp="sample", adaptive_clip=True)
    with pytest.raises(ConfigError, match="cifar-cnn"):
        RunConfig(dataset="cifar10", model="tanh-cnn")


def test_delta_default_depends_on_the_privacy_unit():
    assert RunConfig(dp="sample").resolved_delta == 1e-5
    assert RunConfig(dp="client", clients=1000).resolved_delta == pytest.approx(1000**-1.1)
    assert RunConfig(dp="client", clients=1000, delta=1e-6).resolved_delta == 1e-6
    assert RunConfig(dp="client", clients=1000, client_fraction=0.1).clients_per_round == pytest.approx(100)


def test_model_auto_resolves_by_dataset():
    assert RunConfig().resolved_model == "tanh-cnn"
    assert RunConfig(dataset="cifar10").resolved_model == "cifar-cnn"


def test_toml_keys_match_the_options(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('dataset = "fashion-mnist"\nbatch-size = 64\nlocal_steps = 7\nsigma = 1.1\n')
    cfg = RunConfig.from_dict(load_toml(path))
    assert (cfg.dataset, cfg.batch_size, cfg.local_steps, cfg.sigma) == ("fashion-mnist", 64, 7, 1.1)
    path.write_text("batch-sise = 64\n")
    with pytest.raises(ConfigError, match="unknown config key 'batch-sise'"):
        RunConfig.from_dict(load_toml(path))
    path.write_text("batch-size = \n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_toml(path)
    with pytest.raises(ConfigError, match="does not exist"):
        load_toml(tmp_path / "absent.toml")


def test_differences_ignore_runtime_fields():
    base = RunConfig()
    assert base.differences(RunConfig(threads=2, out="elsewhere", data_dir="d")) == []
    assert base.differences(RunConfig(lr=0.1, rounds=3)) == ["rounds", "lr"]
