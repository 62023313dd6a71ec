"""Datasets as in-memory tensors, and the partitions of a training set among clients.

Datasets come from torchvision (MNIST, Fashion-MNIST, CIFAR-10) under a local root; torchvision downloads them
when the network allows and finds the official ``.gz``/``.tar.gz`` files already there otherwise.  Images are
converted once to normalised float tensors: training then indexes tensors, never a ``DataLoader``.

Partitions return one ``LongTensor`` of training-set indices per client; together they cover every index exactly
once, and the same seed gives the same partition:

- ``iid``: a random permutation cut into ``clients`` near-equal parts;
- ``shards``: McMahan et al. 2017, "Communication-efficient learning of deep networks from decentralized data":
  sort by label, cut into ``clients × shards_per_client`` near-equal contiguous shards, deal them at random,
  ``shards_per_client`` to each client;
- ``dirichlet``: label skew of Hsu, Qi, Brown 2019: for every class, proportions over clients drawn from
  Dirichlet(α), so small α gives clients few classes.  A client left empty receives one record from the currently
  largest client (so every client can run), which keeps the cover exact.
"""

from __future__ import annotations

import contextlib
import functools
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .config import ConfigError

__all__ = ["DataUnavailableError", "Dataset", "load_dataset", "load_inputs", "partition", "partition_iid", "partition_shards",
           "partition_dirichlet"]


class DataUnavailableError(RuntimeError):
    """The dataset is not under the data directory and could not be downloaded."""


@dataclass(frozen=True)
class Dataset:
    """A dataset held as tensors: images ``(N, C, H, W)`` float32 (normalised), labels ``(N,)`` int64."""

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])


# per-dataset channel means and standard deviations of the training set (used to normalise the inputs)
_NORMALISATION = {
    "mnist": ((0.1307,), (0.3081,)),
    "fashion-mnist": ((0.2860,), (0.3530,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
}


def _torchvision_split(name: str, root: Path, train: bool):
    from torchvision import datasets

    cls = {"mnist": datasets.MNIST, "fashion-mnist": datasets.FashionMNIST, "cifar10": datasets.CIFAR10}[name]
    sink = io.StringIO()
    # folders a failed download attempt may create (deepest first), removed again if they stay empty
    absent = [d for d in (root / cls.__name__ / "raw", root / cls.__name__, root) if not d.exists()]
    try:
        with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
            return cls(str(root), train=train, download=True)
    except Exception as error:  # torchvision raises RuntimeError, URLError, OSError ... when offline
        for folder in absent:
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise DataUnavailableError(
            f"{name} is not under data directory {str(root)!r} and could not be downloaded "
            f"({type(error).__name__}: {str(error).splitlines()[0] if str(error) else 'no detail'})"
        ) from None


def _to_tensors(name: str, split) -> tuple[torch.Tensor, torch.Tensor]:
    data = split.data
    images = torch.as_tensor(np.asarray(data))
    if images.ndim == 3:  # MNIST-like (N, H, W) uint8
        images = images.unsqueeze(1)
    else:  # CIFAR (N, H, W, C) uint8
        images = images.permute(0, 3, 1, 2)
    images = images.to(torch.float32).div_(255.0)
    mean, std = _NORMALISATION[name]
    mean_t = torch.tensor(mean).view(1, -1, 1, 1)
    std_t = torch.tensor(std).view(1, -1, 1, 1)
    images = ((images - mean_t) / std_t).contiguous()
    labels = torch.as_tensor(np.asarray(split.targets), dtype=torch.int64)
    return images, labels


def load_dataset(name: str, root: str | Path, *, train_samples: int = 0, test_samples: int = 0) -> Dataset:
    """Load ``name`` from ``root`` (downloading if possible) as tensors.

    ``train_samples`` / ``test_samples`` > 0 keep only the first that many records (small runs and tests).
    Raises :class:`DataUnavailableError` naming ``root`` when the files are absent and cannot be fetched.
    """
    root = Path(root)
    x_train, y_train = _to_tensors(name, _torchvision_split(name, root, train=True))
    x_test, y_test = _to_tensors(name, _torchvision_split(name, root, train=False))
    if train_samples:
        x_train, y_train = x_train[:train_samples], y_train[:train_samples]
    if test_samples:
        x_test, y_test = x_test[:test_samples], y_test[:test_samples]
    return Dataset(name, x_train, y_train, x_test, y_test, num_classes=10)


@functools.lru_cache(maxsize=2)
def _cached_inputs(name: str, root: str, train_samples: int, test_samples: int, scattering: bool,
                   device: str) -> Dataset:
    data = load_dataset(name, root, train_samples=train_samples, test_samples=test_samples)
    if not scattering:
        return data
    from .scattering import scattering_features

    return Dataset(name, scattering_features(data.x_train.to(device)), data.y_train,
                   scattering_features(data.x_test.to(device)), data.y_test, data.num_classes)


def load_inputs(name: str, root: str | Path, *, train_samples: int = 0, test_samples: int = 0,
                scattering: bool = False, device: torch.device | str = "cpu") -> Dataset:
    """:func:`load_dataset`, with the images replaced by their scattering features
    (:func:`fltrain.scattering.scattering_features`, a fixed per-record map, computed on ``device`` and left
    there; the labels stay on the CPU) when ``scattering``. The last two results are kept in memory (several runs
    in one process compute the features once), so their tensors are shared: never modify them in place."""
    return _cached_inputs(name, str(Path(root).resolve()), train_samples, test_samples, scattering, str(device))


def split_validation(data: Dataset, fraction: float, seed: int) -> tuple[Dataset, tuple[torch.Tensor, torch.Tensor]]:
    """Carve a validation split of ``round(fraction · n)`` training records (a seeded uniform choice) off ``data``.

    Returns the dataset without them and ``(x_val, y_val)``. The validation records are training data: an accuracy
    measured on them is not a DP release (fltrain writes it to the private diagnostics), and choosing settings by it
    spends privacy that no ledger accounts (see docs/fltrain.md, "Choosing settings").
    """
    n = len(data.y_train)
    count = round(fraction * n)
    if fraction and not 0 < count < n:
        raise ConfigError(f"val_fraction={fraction} of {n} training records leaves {count} validation records; "
                          "choose a fraction that keeps both splits non-empty")
    order = torch.from_numpy(np.random.default_rng([seed, 1]).permutation(n))
    val, keep = order[:count].sort().values, order[count:].sort().values
    kept = Dataset(data.name, data.x_train[keep], data.y_train[keep], data.x_test, data.y_test, data.num_classes)
    return kept, (data.x_train[val], data.y_train[val])


def _check_clients(clients: int, n: int, pieces: int) -> None:
    if clients < 1:
        raise ConfigError(f"clients={clients} must be >= 1")
    if pieces > n:
        raise ConfigError(f"cannot cut {n} training records into {pieces} non-empty pieces; use fewer clients/shards")


def partition_iid(labels: torch.Tensor, clients: int, seed: int) -> list[torch.Tensor]:
    """A uniformly random partition into ``clients`` parts whose sizes differ by at most one."""
    n = len(labels)
    _check_clients(clients, n, clients)
    perm = np.random.default_rng(seed).permutation(n)
    return [torch.as_tensor(np.sort(part), dtype=torch.int64) for part in np.array_split(perm, clients)]


def partition_shards(labels: torch.Tensor, clients: int, shards_per_client: int, seed: int) -> list[torch.Tensor]:
    """McMahan et al. 2017 shards: label-sorted records cut into contiguous shards, ``shards_per_client`` each."""
    n = len(labels)
    num_shards = clients * shards_per_client
    _check_clients(clients, n, num_shards)
    rng = np.random.default_rng(seed)
    order = np.argsort(labels.numpy(), kind="stable")
    shards = np.array_split(order, num_shards)
    dealt = rng.permutation(num_shards).reshape(clients, shards_per_client)
    return [torch.as_tensor(np.sort(np.concatenate([shards[s] for s in row])), dtype=torch.int64) for row in dealt]


def partition_dirichlet(labels: torch.Tensor, clients: int, alpha: float, seed: int) -> list[torch.Tensor]:
    """Label skew (Hsu, Qi, Brown 2019): class ``c``'s records split over clients by proportions ~ Dirichlet(α)."""
    n = len(labels)
    _check_clients(clients, n, clients)
    rng = np.random.default_rng(seed)
    y = labels.numpy()
    owner = np.empty(n, dtype=np.int64)
    for c in np.unique(y):
        members = rng.permutation(np.flatnonzero(y == c))
        proportions = rng.dirichlet(np.full(clients, alpha))
        cuts = np.floor(np.cumsum(proportions)[:-1] * len(members)).astype(np.int64)
        owner[members] = np.repeat(np.arange(clients), np.diff(np.concatenate([[0], cuts, [len(members)]])))
    sizes = np.bincount(owner, minlength=clients)
    for empty in np.flatnonzero(sizes == 0):
        donor = int(np.argmax(sizes))
        moved = rng.choice(np.flatnonzero(owner == donor))
        owner[moved] = empty
        sizes[donor] -= 1
        sizes[empty] += 1
    order = np.argsort(owner, kind="stable")
    bounds = np.concatenate([[0], np.cumsum(sizes)])
    return [torch.as_tensor(order[bounds[k]:bounds[k + 1]], dtype=torch.int64) for k in range(clients)]


def partition(
    labels: torch.Tensor, *, scheme: str, clients: int, seed: int, shards_per_client: int = 2, alpha: float = 0.5
) -> list[torch.Tensor]:
    """Dispatch to :func:`partition_iid`, :func:`partition_shards` or :func:`partition_dirichlet`."""
    if scheme == "iid":
        return partition_iid(labels, clients, seed)
    if scheme == "shards":
        return partition_shards(labels, clients, shards_per_client, seed)
    if scheme == "dirichlet":
        return partition_dirichlet(labels, clients, alpha, seed)
    raise ConfigError(f"unknown partition scheme {scheme!r}")
