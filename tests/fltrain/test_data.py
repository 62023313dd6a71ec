"""Datasets from the real files, and partitions: exact cover, reproducibility, the promised skew."""

from __future__ import annotations

import pytest
import torch

from fltrain.config import ConfigError
from fltrain.data import Dataset, DataUnavailableError, load_dataset, partition, split_validation


def _labels(n: int = 6000, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 10, (n,), generator=torch.Generator().manual_seed(seed))


def _assert_exact_cover(parts: list[torch.Tensor], n: int) -> None:
    allidx = torch.cat(parts)
    assert len(allidx) == n
    assert torch.equal(allidx.sort().values, torch.arange(n))


@pytest.mark.parametrize(
    "scheme,clients,extra",
    [("iid", 7, {}), ("shards", 7, {"shards_per_client": 3}), ("shards", 4, {"shards_per_client": 3}),
     ("dirichlet", 13, {"alpha": 0.1}), ("dirichlet", 1000, {"alpha": 0.1}), ("iid", 1000, {})],
)
def test_partitions_cover_every_record_exactly_once(scheme, clients, extra):
    labels = _labels()
    parts = partition(labels, scheme=scheme, clients=clients, seed=3, **extra)
    assert len(parts) == clients
    assert all(len(p) > 0 for p in parts)
    _assert_exact_cover(parts, len(labels))
    again = partition(labels, scheme=scheme, clients=clients, seed=3, **extra)
    assert all(torch.equal(a, b) for a, b in zip(parts, again))
    other = partition(labels, scheme=scheme, clients=clients, seed=4, **extra)
    assert any(not torch.equal(a, b) for a, b in zip(parts, other))


def test_shards_give_each_client_few_labels():
    labels = torch.arange(10).repeat_interleave(600)  # 10 classes × 600, as label-sorted MNIST
    parts = partition(labels, scheme="shards", clients=10, seed=0, shards_per_client=2)
    for p in parts:
        assert len(torch.unique(labels[p])) <= 2
        assert len(p) == 600  # 20 shards of 300


def test_iid_sizes_differ_by_at_most_one():
    sizes = [len(p) for p in partition(_labels(1003), scheme="iid", clients=10, seed=0)]
    assert max(sizes) - min(sizes) <= 1


def test_dirichlet_small_alpha_is_skewed_large_alpha_is_balanced():
    labels = _labels(20000)

    def mean_classes(alpha: float) -> float:
        parts = partition(labels, scheme="dirichlet", clients=20, seed=0, alpha=alpha)
        return sum(len(torch.unique(labels[p])) for p in parts) / 20

    assert mean_classes(0.05) < 4 < 9.5 < mean_classes(100.0)


def test_validation_split_is_a_seeded_disjoint_cut_of_the_training_records():
    x = torch.arange(1000, dtype=torch.float32).view(1000, 1, 1, 1)  # each record's value is its index
    data = Dataset("mnist", x, _labels(1000), x[:5], _labels(5), 10)
    kept, (x_val, y_val) = split_validation(data, 0.25, seed=3)
    train_ids, val_ids = kept.x_train.flatten().long(), x_val.flatten().long()
    assert len(val_ids) == 250 and len(train_ids) == 750
    assert torch.equal(torch.cat([train_ids, val_ids]).sort().values, torch.arange(1000))
    assert torch.equal(y_val, data.y_train[val_ids]) and torch.equal(kept.y_train, data.y_train[train_ids])
    assert torch.equal(kept.x_test, data.x_test)  # the test set is untouched
    again, (x_again, _) = split_validation(data, 0.25, seed=3)
    assert torch.equal(x_again, x_val)
    assert not torch.equal(split_validation(data, 0.25, seed=4)[1][0], x_val)
    with pytest.raises(ConfigError, match="val_fraction"):
        split_validation(data, 0.0001, seed=0)


def test_too_many_pieces_is_a_clear_error():
    with pytest.raises(ConfigError, match="cannot cut"):
        partition(_labels(10), scheme="shards", clients=5, seed=0, shards_per_client=3)


def test_real_mnist_loads_as_normalised_tensors(data_root):
    data = load_dataset("mnist", data_root, train_samples=500, test_samples=200)
    assert data.x_train.shape == (500, 1, 28, 28) and data.x_train.dtype == torch.float32
    assert data.y_test.shape == (200,) and data.y_test.dtype == torch.int64
    assert abs(float(data.x_train.mean())) < 0.2  # normalised with the training-set mean/std
    full = load_dataset("fashion-mnist", data_root)
    assert len(full.y_train) == 60000 and len(full.y_test) == 10000
    assert torch.equal(torch.bincount(full.y_train), torch.full((10,), 6000))


def test_missing_data_names_the_directory(tmp_path, monkeypatch):
    import torchvision.datasets.utils as tv_utils

    def offline(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(tv_utils, "download_url", offline)
    monkeypatch.setattr(tv_utils, "download_and_extract_archive", offline)
    root = tmp_path / "nothing-here"
    with pytest.raises(DataUnavailableError, match="nothing-here"):
        load_dataset("mnist", root)
    assert not root.exists()  # the folders the attempt made are gone again
