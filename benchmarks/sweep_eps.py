"""Accuracy against ε, tuned on a validation split: central DP-SGD, or a federated plan from a TOML file.

For every ε of ``--eps`` and every point of the grid ``--lr`` × ``--steps``, one :func:`fltrain.run.run` at
record-level (ε, ``--delta``), σ calibrated by ``--accountant``, with ``--val-fraction`` of the training records
held out:

- central DP (the default): one client holding every training record, ``rounds = 1``, ``local_steps`` from
  ``--steps``, batch ``--batch-size`` (so q = B / n);
- ``--config FILE``: the plan of a run's TOML file (clients, partition, rounds, local steps, batch, momentum...,
  e.g. ``examples/mnist_reference.toml``) with ``--model``, ``--eps`` and the grid's ``--lr`` put in
  (``--steps``, ``--batch-size``, ``--clip``, ``--momentum`` are then the file's).

The grid point with the best validation accuracy (read from the run's private diagnostics: training records) is
chosen and the table reports that run's test accuracy, the only test figure read (a run with a validation split
evaluates the test set once, at its end). ``--seeds`` repeats the chosen setting with more seeds (partition,
split, initialisation; the noise is secret anyway) and reports the mean and spread of their test accuracies.
Choosing among grid points by a validation accuracy spends privacy that no ledger accounts (Papernot & Steinke
2022, "Hyperparameter tuning with Rényi differential privacy"): the reported ε is that of one run.

All runs are in one process, so the scattering features are computed once per dataset
(:func:`fltrain.data.load_inputs`). Prints a Markdown table (and writes ``--table``), plots with ``--plot``.

Usage (from the repository root)::

    PYTHONPATH=. OMP_NUM_THREADS=1 python benchmarks/sweep_eps.py --dataset mnist --eps 1 2 4 8 \\
        --lr 4 8 --steps 180 480 --batch-size 4096 --plot docs/figures/accuracy-mnist.png
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from fltrain.config import ACCOUNTANTS, DATASETS, DEVICES, MODELS, RunConfig, load_toml, nest
from fltrain.data import load_inputs
from fltrain.device import resolve_device
from fltrain.models import SCATTERING_MODELS
from fltrain.run import PRIVATE, run


def _validation_accuracy(out: Path) -> float:
    return float(json.loads((out / PRIVATE).read_text().splitlines()[-1])["val_accuracy"])


def _config(args: argparse.Namespace, eps: float, lr: float, steps: int, seed: int) -> RunConfig:
    common: dict[str, Any] = dict(dataset=args.dataset, data_dir=args.data_dir, model=args.model, lr=lr,
                                  val_fraction=args.val_fraction, seed=seed, device=args.device,
                                  max_physical_batch=args.max_physical_batch, dp="sample")
    if args.config:
        values = nest(load_toml(args.config))
        values.update(common)
        values["sample"] = {**values.get("sample", {}), "eps": eps, "delta": args.delta}
        name = f"{Path(args.config).stem}-{args.model}-eps{eps:g}-lr{lr:g}-seed{seed}"
    else:
        values = dict(common, clients=1, partition="iid", rounds=1, local_steps=steps, batch_size=args.batch_size,
                      momentum=args.momentum,
                      sample={"eps": eps, "delta": args.delta, "clip": args.clip, "accountant": args.accountant})
        name = f"{args.dataset}-{args.model}-eps{eps:g}-lr{lr:g}-steps{steps}-seed{seed}"
    return RunConfig.from_dict({**values, "out": str(Path(args.out) / name)})


def _trial(cfg: RunConfig, train: int) -> dict[str, Any]:
    wall, cpu = time.perf_counter(), time.process_time()
    summary = run(cfg)
    steps = cfg.rounds * cfg.local_steps
    trial = {"lr": cfg.lr, "steps": steps, "epochs": steps * cfg.batch_size * cfg.clients / train,
             "val": _validation_accuracy(Path(cfg.out)), "test": summary.test_accuracy, "sigma": summary.sigma,
             "epsilon": summary.epsilon, "wall": time.perf_counter() - wall, "cpu": time.process_time() - cpu,
             "seed": cfg.seed}
    print(f"eps {cfg.sample.eps:g}: lr {cfg.lr:g}, {steps} steps per client ({trial['epochs']:.1f} epochs), seed "
          f"{cfg.seed}, sigma {summary.sigma:.3f}: validation {trial['val']:.4f}  [{trial['wall']:.0f} s wall, "
          f"{trial['cpu']:.0f} s CPU, load {os.getloadavg()[0]:.1f}]", flush=True)
    return trial


def plot(rows: list[dict[str, Any]], dataset: str, model: str, delta: float, path: str) -> None:
    """Test accuracy against ε (rows with ``eps`` and ``test``), saved to ``path`` (needs matplotlib)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = sorted((r["eps"], 100 * r["test"]) for r in rows)
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot([e for e, _ in points], [a for _, a in points], "o-", label=f"{model} (test)")
    ax.set_xscale("log", base=2)
    ax.set_xlabel(f"ε (δ = {delta:g})")
    ax.set_ylabel(f"{dataset} test accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=None, help="a run's TOML file: its federated plan instead of central DP")
    parser.add_argument("--dataset", choices=DATASETS, default="mnist")
    parser.add_argument("--data-dir", default="../shared/data")
    parser.add_argument("--model", choices=MODELS, default="scatter-linear")
    parser.add_argument("--eps", type=float, nargs="+", default=[1.0, 2.0, 4.0, 8.0])
    parser.add_argument("--delta", type=float, default=1e-5)
    parser.add_argument("--accountant", choices=ACCOUNTANTS, default="rdp")
    parser.add_argument("--lr", type=float, nargs="+", default=[4.0])
    parser.add_argument("--steps", type=int, nargs="+", default=[480], help="DP-SGD steps (central DP)")
    parser.add_argument("--batch-size", type=int, default=4096)
    parser.add_argument("--clip", type=float, default=0.1)
    parser.add_argument("--momentum", type=float, default=0.9)
    parser.add_argument("--val-fraction", type=float, default=0.1)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="the first tunes; all run the choice")
    parser.add_argument("--device", choices=DEVICES, default="auto")
    parser.add_argument("--max-physical-batch", type=int, default=2048)
    parser.add_argument("--out", default="runs/sweep", help="parent directory of the runs (one per grid point)")
    parser.add_argument("--table", default=None, help="also write the Markdown table to this file")
    parser.add_argument("--plot", default=None, help="save the accuracy-against-epsilon plot (needs matplotlib)")
    args = parser.parse_args()
    torch.set_num_threads(1)

    print(f"torch {torch.__version__}, load average {os.getloadavg()}", flush=True)
    began = time.perf_counter()
    # loaded (and featurised) once here; the runs find it in load_inputs' in-memory cache
    records = len(load_inputs(args.dataset, args.data_dir, scattering=args.model in SCATTERING_MODELS,
                              device=resolve_device(args.device)).y_train)
    train = records - round(args.val_fraction * records)  # left after the split, as split_validation counts them
    print(f"{args.dataset} inputs ready in {time.perf_counter() - began:.0f} s", flush=True)
    steps_grid = [0] if args.config else args.steps
    rows = []
    for eps in args.eps:
        first, *others = args.seeds
        trials = [_trial(_config(args, eps, lr, steps, first), train)
                  for lr, steps in itertools.product(args.lr, steps_grid)]
        best = max(trials, key=lambda t: t["val"])
        print(f"eps {eps:g}: chosen lr {best['lr']:g}, {best['steps']} steps: TEST {best['test']:.4f}", flush=True)
        tests = [best["test"]] + [_trial(_config(args, eps, best["lr"], best["steps"], seed), train)["test"]
                                  for seed in others]
        rows.append({"eps": eps, **best, "grid": len(trials), "tests": tests})

    plan = (f"the plan of {args.config}" if args.config else
            f"central DP, B = {args.batch_size}, C = {args.clip}, momentum {args.momentum}")
    lines = [f"{args.dataset}, {args.model}, {plan}, δ = {args.delta:g}, {args.accountant}, validation "
             f"{args.val_fraction:g} of the training records, seeds {', '.join(map(str, args.seeds))}", "",
             "| ε | σ | chosen lr | steps per client (epochs) | validation acc. | test acc. (chosen run) | "
             "test acc. over seeds: mean (min–max) | wall s / CPU s (chosen run) |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        spread = (f"{100 * statistics.mean(r['tests']):.2f} % ({100 * min(r['tests']):.2f}–"
                  f"{100 * max(r['tests']):.2f})" if len(r["tests"]) > 1 else "–")
        lines.append(f"| {r['eps']:g} | {r['sigma']:.3f} | {r['lr']:g} | {r['steps']} ({r['epochs']:.1f}) | "
                     f"{100 * r['val']:.2f} % | {100 * r['test']:.2f} % | {spread} | {r['wall']:.0f} / "
                     f"{r['cpu']:.0f} |")
    table = "\n".join(lines)
    print("\n" + table)
    if args.table:
        Path(args.table).write_text(table + "\n")
    if args.plot:
        plot(rows, args.dataset, args.model, args.delta, args.plot)
        print(f"plot written to {args.plot}")
    print(f"load average at the end {os.getloadavg()}")


if __name__ == "__main__":
    main()
