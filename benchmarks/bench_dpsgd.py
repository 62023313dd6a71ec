"""DP-SGD steps per second on the tanh CNN (Papernot et al. 2020), side by side in one run.

Every contender does the same full DP-SGD step on a batch of B MNIST-shaped records: per-sample gradients,
clipping to C over all parameters, Gaussian noise of std σC on the sum, division by B, an SGD-with-momentum
update.

- ``fltrain layerwise``: :mod:`fltrain.dpsgd`'s closed-form per-sample gradients (ghost norms for Linear,
  channels-last im2col for Conv2d);
- ``fltrain vmap``: the same step with ``torch.func.vmap(grad(functional_call))``;
- ``opacus``: Opacus ``GradSampleModule`` + ``DPOptimizer`` (hooks compute per-sample gradients);
- ``loop``: one autograd pass per record, as a per-sample Python loop (the reference implementation's way);
- ``fltrain training``: :class:`fltrain.client.LocalTrainer` local steps as a run does them (Poisson sampling of
  the batch from 15,000 records, q = B/15,000), for 1 client, for 4 clients with the default grouping (as many
  clients at once as fill ``max_physical_batch`` = 384 records: one at a time at these batch sizes) and for 4
  clients stacked into one program (client-steps/s); "same, torch.Generator noise" is the 1-client case with the
  noise and batches drawn by ``torch.Generator`` instead of fltrain's secret AES-CTR source (the cost of the
  cryptographic source).

``--device cuda`` (or ``auto``) runs every contender on the GPU: the records, the models, Opacus, and fltrain's
per-sample gradients there, fltrain's noise drawn on the CPU by its secret source and copied over
(:mod:`fltrain.device`); the timer synchronises the device after each timing.

Usage: ``PYTHONPATH=. python benchmarks/bench_dpsgd.py [--batch 150 256] [--steps 40] [--threads 1]
[--device cpu|cuda|auto]``. Reports wall-clock steps/s (and CPU-time steps/s, less sensitive to other processes
on the CPU; on a GPU the wall figure is the one that counts) and ratios to Opacus.
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Callable

import torch
import torch.nn.functional as F

from fltrain.client import LocalTrainer, LocalTraining
from fltrain.device import resolve_device
from fltrain.dpsgd import make_engine, noisy_gradient
from fltrain.models import ParamLayout, tanh_cnn
from fltrain.randomness import ReproducibleRandom, SecureRandom

CLIP, SIGMA, LR, MOMENTUM = 0.1, 1.0, 0.15, 0.9


def _fltrain_step(engine_name: str, x: torch.Tensor, y: torch.Tensor) -> Callable[[], None]:
    model = tanh_cnn()
    engine = make_engine(model, engine_name)
    device = x.device
    params = {n: p.detach().unsqueeze(0).clone().to(device) for n, p in model.named_parameters()}
    velocity = {n: torch.zeros_like(p) for n, p in params.items()}
    batch = len(y)
    index = torch.arange(batch, device=device).unsqueeze(0)
    weight = torch.ones(1, batch, device=device)
    denominator = torch.tensor([float(batch)], device=device)
    gen = SecureRandom()  # fltrain's DP noise source

    def step() -> None:
        grads, _ = noisy_gradient(engine, params, x, y, index, weight, clip=CLIP, noise_multiplier=SIGMA,
                                  denominator=denominator, rng=gen, max_physical_batch=1024)
        for name, g in grads.items():
            velocity[name].mul_(MOMENTUM).add_(g)
            params[name].add_(velocity[name], alpha=-LR)

    return step


def _opacus_step(x: torch.Tensor, y: torch.Tensor) -> Callable[[], None]:
    from opacus import GradSampleModule
    from opacus.optimizers import DPOptimizer

    model = GradSampleModule(tanh_cnn().to(x.device))
    optimizer = DPOptimizer(torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM), noise_multiplier=SIGMA,
                            max_grad_norm=CLIP, expected_batch_size=len(y))

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        optimizer.step()

    return step


def _loop_step(x: torch.Tensor, y: torch.Tensor) -> Callable[[], None]:
    model = tanh_cnn().to(x.device)
    params = list(model.parameters())
    optimizer = torch.optim.SGD(params, lr=LR, momentum=MOMENTUM)
    gen = torch.Generator().manual_seed(0)

    def step() -> None:
        total = [torch.zeros_like(p) for p in params]
        for i in range(len(y)):
            grads = torch.autograd.grad(F.cross_entropy(model(x[i : i + 1]), y[i : i + 1]), params)
            norm = torch.sqrt(sum(g.pow(2).sum() for g in grads))
            factor = min(1.0, CLIP / (float(norm) + 1e-12))
            for t, g in zip(total, grads):
                t.add_(g, alpha=factor)
        for p, t in zip(params, total):
            p.grad = (t + SIGMA * CLIP * torch.randn(t.shape, generator=gen).to(t.device)) / len(y)
        optimizer.step()

    return step


def _training(batch: int, clients: int, steps: int, device: torch.device, parallel: int = 0,
              secure: bool = True) -> Callable[[], None]:
    """``steps`` local steps of ``clients`` clients of 15,000 records each (``parallel`` at a time; 0: auto), the
    noise and batches from the secret AES-CTR source (``secure``) or from ``torch.Generator``."""
    model = tanh_cnn()
    layout = ParamLayout.of(model)
    n = 15_000
    x = torch.randn(n * clients, 1, 28, 28, device=device)
    y = torch.randint(0, 10, (n * clients,), device=device)
    members = [torch.arange(k * n, (k + 1) * n) for k in range(clients)]
    plan = LocalTraining(local_steps=steps, batch_size=batch, lr=LR, momentum=MOMENTUM, clip=CLIP,
                         noise_multiplier=SIGMA, parallel_clients=parallel)
    trainer = LocalTrainer(layout, make_engine(model), x, y, members, plan)
    start = layout.flatten(dict(model.named_parameters())).detach()
    gen = SecureRandom() if secure else ReproducibleRandom(0)
    ids = torch.arange(clients)
    return lambda: trainer.train(start, ids, gen)


def _rates(contenders: dict[str, tuple[Callable[[], None], int, int]], rounds: int,
           sync: Callable[[], None]) -> dict[str, tuple[float, float]]:
    """(wall, CPU) steps per second of every contender, best of ``rounds`` timings taken in turn (interleaved, so
    that a change in the machine's load hits every contender alike)."""
    walls: dict[str, list[float]] = {name: [] for name in contenders}
    cpus: dict[str, list[float]] = {name: [] for name in contenders}
    for step, _, _ in contenders.values():
        step()  # warm-up
    for _ in range(rounds):
        for name, (step, repeats, per_call) in contenders.items():
            sync()
            wall, cpu = time.perf_counter(), time.process_time()
            for _ in range(repeats):
                step()
            sync()  # the device has finished the work queued by the timing
            walls[name].append((time.perf_counter() - wall) / (repeats * per_call))
            cpus[name].append((time.process_time() - cpu) / (repeats * per_call))
    return {name: (1 / min(walls[name]), 1 / min(cpus[name])) for name in contenders}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, nargs="+", default=[150, 256])
    parser.add_argument("--steps", type=int, default=20, help="steps per timing")
    parser.add_argument("--rounds", type=int, default=3, help="timings per contender (the best counts)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--skip-loop", action="store_true", help="leave out the slow per-sample loop")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = resolve_device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"torch {torch.__version__}, device {where}, threads {torch.get_num_threads()}, "
          f"load average {os.getloadavg()}")
    for batch in args.batch:
        x = torch.randn(batch, 1, 28, 28, device=device)
        y = torch.randint(0, 10, (batch,), device=device)
        contenders: dict[str, tuple[Callable[[], None], int, int]] = {
            "fltrain layerwise": (_fltrain_step("layerwise", x, y), args.steps, 1),
            "fltrain vmap": (_fltrain_step("vmap", x, y), args.steps, 1),
            "opacus": (_opacus_step(x, y), args.steps, 1),
            "fltrain training, 1 client": (_training(batch, 1, args.steps, device), 1, args.steps),
            "  same, torch.Generator noise": (_training(batch, 1, args.steps, device, secure=False), 1, args.steps),
            "fltrain training, 4 clients": (_training(batch, 4, args.steps // 2, device), 1, 4 * (args.steps // 2)),
            "fltrain training, 4 stacked": (_training(batch, 4, args.steps // 2, device, 4), 1,
                                            4 * (args.steps // 2)),
        }
        if not args.skip_loop:
            contenders["loop"] = (_loop_step(x, y), max(2, args.steps // 4), 1)
        rates = _rates(contenders, args.rounds, sync)
        opacus_wall, opacus_cpu = rates["opacus"]
        print(f"\nbatch {batch}: steps/s (wall)  steps/s (CPU)  ×opacus (wall)  ×opacus (CPU)")
        for name, (wall, cpu) in rates.items():
            print(f"  {name:28s} {wall:8.1f}  {cpu:13.1f}  {wall / opacus_wall:14.2f}  {cpu / opacus_cpu:13.2f}")
    print(f"\nload average at the end {os.getloadavg()}")


if __name__ == "__main__":
    main()
