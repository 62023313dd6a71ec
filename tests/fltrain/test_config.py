"""Run configuration: validation with named arguments, the nested privacy sections, TOML files (old flat ones
included), resume comparison."""

from __future__ import annotations

import pytest

from dpcalib.errors import InvalidArgumentError
from fltrain.config import ClientDeltaWarning, ClientDP, ConfigError, RunConfig, SampleDP, load_toml


@pytest.mark.parametrize(
    "field,value",
    [("client_fraction", 1.5), ("clients", 0), ("rounds", 0), ("local_steps", 0), ("batch_size", 0),
     ("dataset", "imagenet"), ("partition", "by-writer"), ("momentum", 1.0), ("lr", float("nan")), ("dp", "user"),
     ("server_opt", "rmsprop"), ("val_fraction", 1.0), ("val_fraction", -0.1), ("secure_agg", 1),
     ("insecure_reproducible_noise", "yes")],
)
def test_bad_values_name_the_argument(field, value):
    with pytest.raises(InvalidArgumentError) as info:
        RunConfig(**{field: value})
    assert info.value.name == field


@pytest.mark.parametrize(
    "section,field,value",
    [("sample", "clip", -1.0), ("sample", "clip", 0.0), ("sample", "eps", 0.0), ("sample", "delta", 1.0),
     ("sample", "delta", 0.0), ("sample", "sigma", -0.5), ("sample", "accountant", "moments"), ("sample", "q", 1.5),
     ("sample", "sampler", "uniform"),
     ("client", "target_quantile", 1.0), ("client", "clip_lr", 0.0), ("client", "count_noise_std", -1.0),
     ("client", "sampling", "stratified"), ("client", "adaptive_clip", 1), ("client", "min_survivors", 1)],
)
def test_bad_mode_settings_name_the_section_and_key(section, field, value):
    with pytest.raises(InvalidArgumentError) as info:
        RunConfig(**{section: {field: value}})
    assert info.value.name == f"{section}.{field}"


def test_each_mode_has_its_own_clip_sigma_and_delta():
    cfg = RunConfig.from_dict({"dp": "client", "clients": 1000, "sample": {"clip": 0.1, "sigma": 1.2},
                               "client": {"clip": 0.7, "delta": 1e-6}})
    assert (cfg.sample.clip, cfg.sample.sigma, cfg.client.clip, cfg.client.sigma) == (0.1, 1.2, 0.7, None)
    assert cfg.resolved_delta == 1e-6
    assert RunConfig().sample == SampleDP() and RunConfig().client == ClientDP()
    assert ClientDP().clip != SampleDP().clip  # a client update is not a per-sample gradient


def test_flat_privacy_keys_go_to_the_selected_mode_or_fail_naming_the_new_key():
    cfg = RunConfig.from_dict({"dp": "client", "clients": 1000, "clip": 0.3, "eps": 2.0, "expected_clients": 50})
    assert (cfg.client.clip, cfg.client.eps, cfg.client.expected_clients) == (0.3, 2.0, 50)
    assert cfg.sample == SampleDP()
    assert RunConfig.from_dict({"clip": 0.2}).sample.clip == 0.2  # dp defaults to sample
    with pytest.raises(ConfigError, match=r"client\.clip"):
        RunConfig.from_dict({"dp": "client", "clip": 0.3, "client": {"clip": 0.4}})
    with pytest.raises(ConfigError, match=r"client\.adaptive_clip"):
        RunConfig.from_dict({"dp": "sample", "adaptive_clip": True})
    with pytest.raises(ConfigError, match=r"\[sample\] or \[client\]"):
        RunConfig.from_dict({"dp": "none", "clip": 0.3})


def test_client_level_delta_default_is_refused_for_few_clients():
    assert RunConfig(dp="client", clients=1000).resolved_delta == pytest.approx(1000**-1.1)
    with pytest.raises(ConfigError, match="client.delta"):
        RunConfig(dp="client", clients=30)
    assert RunConfig(dp="client", clients=30, client={"delta": 1e-4}).resolved_delta == 1e-4
    with pytest.warns(ClientDeltaWarning, match="1/clients"):
        RunConfig(dp="client", clients=1000, client={"delta": 2e-3})
    assert RunConfig(dp="sample").resolved_delta == 1e-5 and RunConfig(dp="none").resolved_delta is None


def test_client_level_cohort_rules():
    poisson = RunConfig(dp="client", clients=1000, client_fraction=0.1)
    assert poisson.client_sampling == "poisson" and poisson.clients_per_round == pytest.approx(100)
    assert RunConfig(dp="client", clients=1000, client_fraction=0.1, secure_agg=True).client_sampling == "fixed"
    with pytest.raises(ConfigError, match="poisson"):
        RunConfig(dp="client", clients=1000, secure_agg=True, client={"sampling": "poisson"})
    with pytest.raises(InvalidArgumentError, match="integer"):
        RunConfig(dp="client", clients=1000, secure_agg=True, client={"expected_clients": 10.5})
    assert RunConfig(dp="client", clients=1000, secure_agg=True, client={"accountant": "pld"}).client.accountant == "pld"
    with pytest.raises(InvalidArgumentError, match="min_survivors"):
        RunConfig(dp="client", clients=1000, secure_agg=True, client={"expected_clients": 10, "min_survivors": 5})
    with pytest.raises(ConfigError, match="adaptive"):
        RunConfig(dp="client", clients=1000, client={"count_noise_std": 1.0})
    assert RunConfig(dp="client", clients=1000, secure_agg=True, client={"noise": "skellam", "bits": 20}).client.bits == 20
    for bad in ({"noise": "skellam"}, {"noise": "skellam", "adaptive_clip": True}, {"noise": "skellam", "sigma": 1.0}):
        with pytest.raises(ConfigError, match="skellam"):
            RunConfig(dp="client", clients=1000, secure_agg="sigma" in bad or "adaptive_clip" in bad, client=bad)
    with pytest.raises(InvalidArgumentError, match="client.bits"):
        RunConfig(dp="client", clients=1000, secure_agg=True, client={"noise": "skellam", "bits": 64})
    with pytest.raises(InvalidArgumentError, match="client.noise"):
        RunConfig(dp="client", clients=1000, secure_agg=True, client={"noise": "laplace"})


def test_model_auto_resolves_by_dataset_and_mismatches_are_refused():
    assert RunConfig().resolved_model == "tanh-cnn"
    assert RunConfig(dataset="cifar10").resolved_model == "cifar-cnn"
    with pytest.raises(ConfigError, match="cifar-cnn"):
        RunConfig(dataset="cifar10", model="tanh-cnn")


def test_toml_keys_match_the_options(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('dataset = "fashion-mnist"\nbatch-size = 64\nlocal_steps = 7\n[sample]\nsigma = 1.1\n')
    cfg = RunConfig.from_dict(load_toml(path))
    assert (cfg.dataset, cfg.batch_size, cfg.local_steps, cfg.sample.sigma) == ("fashion-mnist", 64, 7, 1.1)
    path.write_text("batch-sise = 64\n")
    with pytest.raises(ConfigError, match="unknown config key 'batch_sise'"):
        RunConfig.from_dict(load_toml(path))
    path.write_text("[client]\nclipp = 1\n")
    with pytest.raises(ConfigError, match=r"unknown key 'clipp' in \[client\]"):
        RunConfig.from_dict(load_toml(path))
    path.write_text("[data]\nx = 1\n")
    with pytest.raises(ConfigError, match="only"):
        load_toml(path)
    path.write_text("batch-size = \n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_toml(path)
    with pytest.raises(ConfigError, match="does not exist"):
        load_toml(tmp_path / "absent.toml")


def test_config_round_trips_through_its_dict():
    cfg = RunConfig(dp="client", clients=1000, client={"clip": 0.7, "adaptive_clip": True})
    assert RunConfig.from_dict(cfg.to_dict()) == cfg


def test_differences_ignore_runtime_fields_and_name_mode_keys():
    base = RunConfig()
    assert base.differences(RunConfig(threads=2, out="elsewhere", data_dir="d")) == []
    assert base.differences(RunConfig(lr=0.1, rounds=3)) == ["rounds", "lr"]
    assert base.differences(RunConfig(sample={"clip": 0.2}, client={"eps": 1.0})) == ["sample.clip", "client.eps"]


def test_sampler_is_a_sample_key_default_poisson_and_q_belongs_to_poisson():
    assert RunConfig().sample.sampler == "poisson"
    assert RunConfig.from_dict({"sample": {"sampler": "shuffle"}}).sample.sampler == "shuffle"
    assert RunConfig.from_dict({"dp": "sample", "sampler": "fixed"}).sample.sampler == "fixed"  # flat, as before
    with pytest.raises(ConfigError, match="sample.q is the rate of the poisson sampler"):
        RunConfig(sample={"sampler": "fixed", "q": 0.1})
    with pytest.raises(ConfigError, match="'sampler' is a setting of dp='sample'"):
        RunConfig.from_dict({"dp": "client", "clients": 1000, "sampler": "fixed"})
