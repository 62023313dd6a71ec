"""Shared fixtures of the fltrain tests: one CPU thread, and the real MNIST / Fashion-MNIST files copied to a
temporary root (the shared copy beside the repository is read-only and may be absent: then data tests skip)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A writable data root holding MNIST/raw and FashionMNIST/raw copied from ../shared/data."""
    if not (SHARED_DATA / "MNIST" / "raw").is_dir():
        pytest.skip(f"real MNIST files not found under {SHARED_DATA}")
    root = tmp_path_factory.mktemp("data")
    for name in ("MNIST", "FashionMNIST"):
        if (SHARED_DATA / name / "raw").is_dir():
            shutil.copytree(SHARED_DATA / name / "raw", root / name / "raw")
    return root
