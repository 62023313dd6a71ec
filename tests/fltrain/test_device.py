"""--device: resolution, the refusal of cuda without CUDA, and the CPU and CUDA paths (the latter skipped on
machines without CUDA; benchmarks/gpu_check.sh runs them where there is one)."""

from __future__ import annotations

import pytest
import torch

from dpcalib.errors import InvalidArgumentError
from fltrain.cli import main
from fltrain.config import ConfigError, RunConfig
from fltrain.device import resolve_device
from fltrain.dpsgd import make_engine, noisy_gradient
from fltrain.models import scatter_cnn, tanh_cnn
from fltrain.randomness import ReproducibleRandom
from fltrain.run import CHECKPOINT, run
from fltrain.scattering import Scattering2D

CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA device (run benchmarks/gpu_check.sh on one)")


def test_resolution():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if CUDA else "cpu")
    assert RunConfig().device == "auto"
    with pytest.raises(InvalidArgumentError, match="device"):
        RunConfig(device="gpu")


def test_cuda_without_cuda_is_one_line_and_exit_2(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="CUDA is not available"):
        resolve_device("cuda")
    assert resolve_device("auto") == torch.device("cpu")
    out = tmp_path / "o"
    assert main(["run", "--device", "cuda", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--device cuda" in err and "Traceback" not in err
    assert not out.exists()


def _small(data_root, out, **overrides) -> RunConfig:
    values = dict(dataset="mnist", data_dir=str(data_root), train_samples=600, test_samples=200, clients=2,
                  rounds=2, local_steps=3, batch_size=30, lr=0.1, seed=3, insecure_reproducible_noise=True,
                  out=str(out))
    values.update(overrides)
    return RunConfig(**values)


def _final_params(out) -> torch.Tensor:
    return torch.load(out / CHECKPOINT, weights_only=True)["server"]["params"]


@pytest.mark.skipif(CUDA, reason="on a CUDA machine 'auto' is the GPU (compared in the CUDA test below)")
def test_cpu_run_equals_the_default_run_bit_for_bit(data_root, tmp_path):
    """On a machine without CUDA, --device cpu and the default (auto) are the one CPU path, bit for bit."""
    a = run(_small(data_root, tmp_path / "cpu", device="cpu"))
    b = run(_small(data_root, tmp_path / "auto"))
    assert torch.equal(_final_params(tmp_path / "cpu"), _final_params(tmp_path / "auto"))
    assert a.test_accuracy == b.test_accuracy


@needs_cuda
@pytest.mark.parametrize("engine_name", ["vmap", "layerwise"])
@pytest.mark.parametrize(("build", "shape"), [(tanh_cnn, (1, 28, 28)), (lambda: scatter_cnn((81, 7, 7)), (81, 7, 7))])
def test_noisy_gradient_on_cuda_equals_cpu(engine_name, build, shape):
    """The same batch and the same noise (drawn on the CPU, copied to the GPU) give the same DP-SGD gradient."""
    torch.manual_seed(0)
    model = build()
    K, B = 2, 16
    params = {n: p.detach().unsqueeze(0).repeat(K, *([1] * p.ndim)) for n, p in model.named_parameters()}
    x, y = torch.randn(K * B, *shape), torch.randint(0, 10, (K * B,))
    index, weight = torch.arange(K * B).view(K, B), torch.ones(K, B)
    results = []
    for device in ("cpu", "cuda"):
        moved = {n: p.to(device) for n, p in params.items()}
        grads, loss = noisy_gradient(make_engine(model, engine_name), moved, x.to(device), y.to(device),
                                     index.to(device), weight.to(device), clip=0.1, noise_multiplier=1.0,
                                     denominator=torch.full((K,), float(B), device=device),
                                     rng=ReproducibleRandom(5), max_physical_batch=12)
        assert all(g.device.type == device for g in grads.values())
        results.append(({n: g.cpu() for n, g in grads.items()}, loss.cpu()))
    (cpu_grads, cpu_loss), (gpu_grads, gpu_loss) = results
    for name in cpu_grads:
        torch.testing.assert_close(gpu_grads[name], cpu_grads[name], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(gpu_loss, cpu_loss, rtol=1e-4, atol=1e-4)


@needs_cuda
def test_scattering_on_cuda_equals_cpu():
    x = torch.rand(8, 1, 28, 28)
    transform = Scattering2D((28, 28))
    torch.testing.assert_close(transform(x.cuda()).cpu(), transform(x), rtol=1e-4, atol=1e-5)


@needs_cuda
def test_cuda_run_follows_the_cpu_run(data_root, tmp_path):
    """With the same (reproducible) noise and batches, a GPU run ends where the CPU run ends, up to float rounding."""
    a = run(_small(data_root, tmp_path / "cpu", device="cpu"))
    b = run(_small(data_root, tmp_path / "cuda", device="cuda"))
    torch.testing.assert_close(_final_params(tmp_path / "cuda"), _final_params(tmp_path / "cpu"), rtol=1e-3,
                               atol=1e-4)
    assert abs(a.test_accuracy - b.test_accuracy) <= 0.02
