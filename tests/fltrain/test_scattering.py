"""The scattering transform: shapes, known properties, Kymatio where importable; the per-record features."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from fltrain.scattering import Scattering2D, scattering_channels, scattering_features


def _digit_like(size: int = 28) -> torch.Tensor:
    """A synthetic pen-stroke image (1, 1, size, size): a thin oriented ridge plus a small blob."""
    u = torch.arange(size, dtype=torch.float32)
    yy, xx = torch.meshgrid(u, u, indexing="ij")
    ridge = torch.exp(-((xx - yy * 0.6 - 6) ** 2) / 0.5) * ((yy > 5) & (yy < 22))
    blob = torch.exp(-((xx - 18) ** 2 + (yy - 9) ** 2) / 2)
    return (ridge + blob).view(1, 1, size, size)


def _orders(J: int, L: int) -> torch.Tensor:
    return torch.tensor([0] + [1] * (J * L) + [2] * (scattering_channels(J, L) - 1 - J * L))


@pytest.mark.parametrize(("J", "L", "size", "grid"), [(2, 8, 28, 7), (1, 4, 28, 14), (3, 4, 32, 4)])
def test_output_shape_and_channel_count(J, L, size, grid):
    out = Scattering2D((size, size), J, L)(torch.rand(3, 2, size, size))
    assert scattering_channels(2, 8) == 81
    assert out.shape == (3, 2 * scattering_channels(J, L), grid, grid)
    assert torch.isfinite(out).all()


def test_constant_image_has_only_the_low_pass_coefficient():
    """The Morlet wavelets have zero mean: a constant image has no first- or second-order energy, and the low-pass
    filter (unit mass) returns the constant."""
    out = Scattering2D((28, 28))(torch.full((1, 1, 28, 28), 2.5))
    assert torch.allclose(out[:, 0], torch.full_like(out[:, 0], 2.5), rtol=1e-3)
    assert float(out[:, 1:].abs().max()) < 1e-4


def test_positively_homogeneous_and_per_record():
    x = torch.rand(4, 1, 28, 28)
    transform = Scattering2D((28, 28))
    both = transform(x)
    torch.testing.assert_close(transform(3.0 * x), 3.0 * both, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(transform(x[2:3]), both[2:3], rtol=1e-5, atol=1e-6)


def test_stable_to_a_small_translation():
    """A one-pixel shift moves the pixels by much more than it moves the features (Mallat 2012, Lipschitz
    stability to deformations)."""
    x = _digit_like()
    shifted = torch.roll(x, 1, dims=-1)
    transform = Scattering2D((28, 28))
    pixel_change = float((shifted - x).norm() / x.norm())
    feature_change = float((transform(shifted) - transform(x)).norm() / transform(x).norm())
    assert feature_change < 0.5 * pixel_change


def test_equals_kymatio_up_to_its_rounded_pi():
    frontend = pytest.importorskip("kymatio.scattering2d.frontend.torch_frontend")
    J, L = 2, 8
    x = torch.rand(6, 1, 28, 28)
    reference = frontend.ScatteringTorch2D(J=J, shape=(28, 28), L=L)(x).reshape(6, -1, 7, 7)
    ours = Scattering2D((28, 28), J, L)(x)
    # Kymatio divides each filter by 2·3.1415·σ², this module by 2πσ²: an order-m coefficient passes m + 1 filters
    scale = (math.pi / 3.1415) ** (_orders(J, L) + 1).to(torch.float64)
    torch.testing.assert_close(ours * scale.view(1, -1, 1, 1).float(), reference, rtol=1e-4,
                               atol=1e-4 * float(reference.abs().max()))


def test_features_are_group_normalised_per_record():
    x = torch.rand(5, 1, 28, 28)
    features = scattering_features(x, chunk=2)
    assert features.shape == (5, 81, 7, 7)
    groups = features.view(5, 27, -1)
    torch.testing.assert_close(groups.mean(-1), torch.zeros(5, 27), atol=1e-4, rtol=0)
    assert float(groups.var(-1, unbiased=False).max()) <= 1.0 + 1e-4  # unit variance, less where it is below ε
    torch.testing.assert_close(scattering_features(x[3:4]), features[3:4], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(features, F.group_norm(Scattering2D((28, 28))(x), 27, eps=1e-5))
    with pytest.raises(ValueError, match="groups=10"):
        scattering_features(x, groups=10)


def test_runs_train_on_features_computed_once(data_root, tmp_path):
    from fltrain.config import RunConfig
    from fltrain.data import load_inputs
    from fltrain.run import run

    values = dict(dataset="mnist", data_dir=str(data_root), train_samples=800, test_samples=300, clients=1,
                  rounds=2, local_steps=15, batch_size=100, lr=2.0, dp="none", model="scatter-linear")
    summary = run(RunConfig(**values, out=str(tmp_path / "linear")))
    assert summary.test_accuracy > 0.6  # chance is 0.1
    features = load_inputs("mnist", data_root, train_samples=800, test_samples=300, scattering=True)
    assert features.x_train.shape == (800, 81, 7, 7)
    assert load_inputs("mnist", data_root, train_samples=800, test_samples=300, scattering=True) is features
    assert run(RunConfig(**{**values, "model": "scatter-cnn"}, out=str(tmp_path / "cnn"))).rounds_completed == 2
