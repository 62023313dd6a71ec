"""Cost of one aggregation round with secure aggregation against plain aggregation.

For n clients each holding a vector of ``--dim`` floats (default 100,000, a small model's update):

- plain: each client sends its float32 vector, the server parses and sums them;
- secagg: Bonawitz et al. (2017) over the complete graph;
- secagg+: Bell et al. (2020) over a random Harary graph of degree ``secagg_plus_degree(n)``;

each without dropouts and with 5 % of the clients dropping after sharing their keys (the server must then rebuild
their pairwise masks: the expensive case). Reported: client CPU seconds (mean and max over clients), server CPU
seconds, bytes sent per client and by the server. Single-threaded (OMP/MKL threads = 1); every party runs in this
one process, one after another, timed with ``time.process_time``. Each configuration runs ``--repeats`` times and
each CPU figure is the minimum over the repeats (the usual estimate of the cost without interference from the
other processes of a shared machine, and without the allocator's warm-up in the first round).

    PYTHONPATH=. python benchmarks/bench_secagg.py --clients 10 100 500 --out bench_secagg.jsonl
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import json  # noqa: E402
import random  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

from fltrain.secagg import (  # noqa: E402
    FixedPoint,
    SecAggParams,
    complete_graph,
    harary_graph,
    run_secure_aggregation,
    secagg_plus_degree,
)


def plain_round(inputs: dict[int, np.ndarray]) -> dict:
    """Clients serialise float32 vectors; the server parses and sums them."""
    client_cpu, sent = [], []
    total = None
    server_cpu = 0.0
    for x in inputs.values():
        start = time.process_time()
        data = x.astype("<f4").tobytes()
        client_cpu.append(time.process_time() - start)
        sent.append(len(data))
        start = time.process_time()
        v = np.frombuffer(data, dtype="<f4").astype(np.float64)
        total = v if total is None else total + v
        server_cpu += time.process_time() - start
    return {"client_cpu_mean_s": statistics.fmean(client_cpu), "client_cpu_max_s": max(client_cpu),
            "server_cpu_s": server_cpu, "client_bytes_mean": statistics.fmean(sent), "server_bytes": 0}


def secure_round(inputs, params, graph, dropouts) -> dict:
    result, cost = run_secure_aggregation(inputs, params, graph=graph, dropouts=dropouts)
    expected = np.sum([inputs[u] for u in result.survivors], axis=0)
    error = float(np.max(np.abs(result.total - expected)))
    assert error <= params.codec.sum_error_bound(len(result.survivors)), error
    cpu = list(cost.client_cpu_s.values())
    sent = list(cost.client_bytes_sent.values())
    return {"client_cpu_mean_s": statistics.fmean(cpu), "client_cpu_max_s": max(cpu),
            "server_cpu_s": cost.server_cpu_s, "client_bytes_mean": statistics.fmean(sent),
            "server_bytes": cost.server_bytes_sent, "max_abs_error": error,
            "survivors": len(result.survivors)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[10, 100, 500])
    parser.add_argument("--dim", type=int, default=100_000)
    parser.add_argument("--modes", nargs="+", default=["plain", "secagg", "secagg+"])
    parser.add_argument("--dropout", type=float, default=0.05, help="fraction dropping after ShareKeys")
    parser.add_argument("--repeats", type=int, default=2, help="runs per configuration; CPU figures: the minimum")
    parser.add_argument("--out", default=None, help="append JSON lines here")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    # warm-up: the first round pays one-off costs (imports, cipher back-end initialisation)
    run_secure_aggregation({1: np.zeros(8), 2: np.zeros(8)}, SecAggParams(8, FixedPoint(1.0, 8, 2), threshold=2))
    print(f"{'n':>4} {'mode':>8} {'drop':>4} {'client CPU s (mean/max)':>24} {'server CPU s':>12} "
          f"{'client kB sent':>14} {'server kB sent':>14}", flush=True)
    for n in args.clients:
        ids = list(range(1, n + 1))
        inputs = {u: rng.uniform(-0.1, 0.1, args.dim) for u in ids}
        codec = FixedPoint(clip=1.0, frac_bits=16, max_clients=n)
        for mode in args.modes:
            for drop in (0, max(1, round(args.dropout * n))) if mode != "plain" else (0,):
                if mode == "plain":
                    rows = [plain_round(inputs) for _ in range(args.repeats)]
                else:
                    graph = complete_graph(ids) if mode == "secagg" else harary_graph(
                        ids, secagg_plus_degree(n), random.Random(n))
                    holders = len(next(iter(graph.values()))) + 1
                    params = SecAggParams(args.dim, codec, threshold=2 * holders // 3 + 1)
                    dropped = set(random.Random(drop).sample(ids, drop)) if drop else set()
                    rows = [secure_round(inputs, params, graph, {"masked_input": dropped}) for _ in range(args.repeats)]
                row = {key: min(r[key] for r in rows) if key.endswith("_s") else rows[0][key] for key in rows[0]}
                if mode != "plain":
                    row.update(threshold=params.threshold, holders=holders, ring_bits=codec.ring.bits)
                row.update(n=n, dim=args.dim, mode=mode, dropped=drop, load=os.getloadavg()[0])
                print(f"{n:>4} {mode:>8} {drop:>4} {row['client_cpu_mean_s']:>11.4f} / {row['client_cpu_max_s']:<10.4f}"
                      f"{row['server_cpu_s']:>12.3f} {row['client_bytes_mean'] / 1e3:>14.1f} "
                      f"{row['server_bytes'] / 1e3:>14.1f}", flush=True)
                if args.out:
                    with open(args.out, "a") as f:
                        f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
