"""Accuracy against ε: central DP-SGD (one client holding every training record), tuned on a validation split.

For every ε of ``--eps`` and every point of the grid ``--lr`` × ``--epochs``, one :func:`fltrain.run.run` with
``clients = 1``, ``rounds = 1`` and ``local_steps = epochs × ⌈n / B⌉`` (n: training records left after the
validation split), record-level DP at (ε, ``--delta``), σ calibrated by ``--accountant``. The grid point with the
best validation accuracy (training records held out, read from the run's private diagnostics) is chosen, and
the table reports that run's test accuracy, the only test figure read (the run evaluates the test set once, at
its end). Choosing among grid points by a validation accuracy spends privacy that no ledger accounts (Papernot &
Steinke 2022, "Hyperparameter tuning with Rényi differential privacy"): the reported ε is that of one run.

All runs are in one process, so the scattering features are computed once per dataset
(:func:`fltrain.data.load_inputs`). Prints a Markdown table (and writes ``--table``), plots with ``--plot``.

Usage (from the repository root)::

    PYTHONPATH=. OMP_NUM_THREADS=1 python benchmarks/sweep_eps.py --dataset mnist --eps 1 2 4 8 \\
        --lr 2 4 --epochs 10 20 --batch-size 2048 --plot docs/figures/accuracy-mnist.png
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import time
from pathlib import Path

import torch

from fltrain.config import ACCOUNTANTS, DATASETS, DEVICES, MODELS, RunConfig
from fltrain.data import load_inputs
from fltrain.models import SCATTERING_MODELS
from fltrain.run import PRIVATE, run


def _validation_accuracy(out: Path) -> float:
    return float(json.loads((out / PRIVATE).read_text().splitlines()[-1])["val_accuracy"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", choices=DATASETS, default="mnist")
    parser.add_argument("--data-dir", default="../shared/data")
    parser.add_argument("--model", choices=MODELS, default="scatter-linear")
    parser.add_argument("--eps", type=float, nargs="+", default=[1.0, 2.0, 4.0, 8.0])
    parser.add_argument("--delta", type=float, default=1e-5)
    parser.add_argument("--accountant", choices=ACCOUNTANTS, default="rdp")
    parser.add_argument("--lr", type=float, nargs="+", default=[4.0])
    parser.add_argument("--epochs", type=int, nargs="+", default=[20])
    parser.add_argument("--batch-size", type=int, default=2048)
    parser.add_argument("--clip", type=float, default=0.1)
    parser.add_argument("--momentum", type=float, default=0.9)
    parser.add_argument("--val-fraction", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", choices=DEVICES, default="auto")
    parser.add_argument("--max-physical-batch", type=int, default=1024)
    parser.add_argument("--out", default="runs/sweep", help="parent directory of the runs (one per grid point)")
    parser.add_argument("--table", default=None, help="also write the Markdown table to this file")
    parser.add_argument("--plot", default=None, help="save the accuracy-against-epsilon plot (needs matplotlib)")
    args = parser.parse_args()
    torch.set_num_threads(1)

    print(f"torch {torch.__version__}, load average {os.getloadavg()}", flush=True)
    began = time.perf_counter()
    # loaded (and featurised) once here; the runs find it in load_inputs' in-memory cache
    records = len(load_inputs(args.dataset, args.data_dir, scattering=args.model in SCATTERING_MODELS).y_train)
    train = records - round(args.val_fraction * records)  # left after the split, as split_validation counts them
    print(f"{args.dataset} inputs ready in {time.perf_counter() - began:.0f} s", flush=True)
    rows = []
    for eps in args.eps:
        trials = []
        for lr, epochs in itertools.product(args.lr, args.epochs):
            out = Path(args.out) / f"{args.dataset}-{args.model}-eps{eps:g}-lr{lr:g}-ep{epochs}-seed{args.seed}"
            base = dict(dataset=args.dataset, data_dir=args.data_dir, model=args.model, clients=1, partition="iid",
                        rounds=1, batch_size=args.batch_size, lr=lr, momentum=args.momentum,
                        val_fraction=args.val_fraction, seed=args.seed, device=args.device,
                        max_physical_batch=args.max_physical_batch, out=str(out),
                        sample={"eps": eps, "delta": args.delta, "clip": args.clip, "accountant": args.accountant})
            steps = epochs * math.ceil((train - round(args.val_fraction * train)) / args.batch_size)
            cfg = RunConfig(**base, local_steps=steps)
            wall, cpu = time.perf_counter(), time.process_time()
            summary = run(cfg)
            trial = {"lr": lr, "epochs": epochs, "steps": steps, "val": _validation_accuracy(out),
                     "test": summary.test_accuracy, "sigma": summary.sigma, "epsilon": summary.epsilon,
                     "wall": time.perf_counter() - wall, "cpu": time.process_time() - cpu}
            trials.append(trial)
            print(f"eps {eps:g}: lr {lr:g} epochs {epochs} ({steps} steps, sigma {summary.sigma:.3f}): validation "
                  f"{trial['val']:.4f}  [{trial['wall']:.0f} s wall, {trial['cpu']:.0f} s CPU, load "
                  f"{os.getloadavg()[0]:.1f}]", flush=True)
        best = max(trials, key=lambda t: t["val"])
        rows.append({"eps": eps, **best, "grid": len(trials)})
        print(f"eps {eps:g}: chosen lr {best['lr']:g}, epochs {best['epochs']}: TEST {best['test']:.4f}", flush=True)

    lines = [f"{args.dataset}, {args.model}, B = {args.batch_size}, C = {args.clip}, momentum {args.momentum}, "
             f"δ = {args.delta:g}, {args.accountant}, validation {args.val_fraction:g} of the training records, "
             f"seed {args.seed}", "",
             "| ε | σ | chosen lr | chosen epochs (steps) | validation acc. | test acc. | wall s / CPU s (chosen run) |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['eps']:g} | {r['sigma']:.3f} | {r['lr']:g} | {r['epochs']} ({r['steps']}) | "
                     f"{100 * r['val']:.2f} % | {100 * r['test']:.2f} % | {r['wall']:.0f} / {r['cpu']:.0f} |")
    table = "\n".join(lines)
    print("\n" + table)
    if args.table:
        Path(args.table).write_text(table + "\n")
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(5, 3.5))
        ax.plot([r["eps"] for r in rows], [100 * r["test"] for r in rows], "o-", label=f"{args.model} (test)")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("ε (δ = %g)" % args.delta)
        ax.set_ylabel(f"{args.dataset} test accuracy (%)")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(args.plot, dpi=120)
        print(f"plot written to {args.plot}")
    print(f"load average at the end {os.getloadavg()}")


if __name__ == "__main__":
    main()
