"""Cost of one secure round of distributed DP: discrete Skellam shares against the continuous Gaussian shares.

For n clients each holding a clipped vector of ``--dim`` floats (clip norm 1), one secure-aggregation round (the
complete graph up to 64 clients, SecAgg+ above, as :class:`fltrain.secagg.aggregate.SecureSum` does):

- continuous: each client adds a Gaussian share ``N(0, (z·C)²/t)`` from the secret source and the protocol
  encodes the float vector in fixed point (24 fractional bits, range ±16: today's client-level secure mode);
- discrete: each client rotates, rounds and adds its Skellam share (:class:`fltrain.secagg.DiscreteCodec`,
  planned by :func:`dpcalib.plan_skellam` for ``--bits``) and the protocol masks the ring vector
  (:class:`fltrain.secagg.RingCodec`); the server un-rotates the lifted sum.

Reported: client CPU seconds (mean and max over clients, preparing the message included), server CPU seconds
(decoding included), bytes sent per client, the ring width. Single-threaded; every party runs in this one process,
one after another, timed with ``time.process_time``; each CPU figure is the minimum over ``--repeats`` rounds.

    PYTHONPATH=. python benchmarks/bench_discrete.py --clients 10 100 --out bench_discrete.jsonl
"""

from __future__ import annotations

from _common import single_threaded

single_threaded()

import argparse, json, os, random, statistics, time  # noqa: E401,E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

import dpcalib  # noqa: E402
from fltrain.randomness import SecureRandom, skellam  # noqa: E402
from fltrain.secagg import DiscreteCodec, FixedPoint, SecAggParams, run_secure_aggregation  # noqa: E402
from fltrain.secagg import complete_graph, harary_graph, secagg_plus_degree  # noqa: E402

torch.set_num_threads(1)


def timed(fn):
    start = time.process_time()
    value = fn()
    return time.process_time() - start, value


def one_round(n: int, dim: int, codec_kind: str, plan: dpcalib.SkellamPlan, sigma: float) -> dict:
    ids = list(range(1, n + 1))
    graph = complete_graph(ids) if n <= 64 else harary_graph(ids, secagg_plus_degree(n), random.Random(n))
    holders = len(next(iter(graph.values()))) + 1
    data = np.random.default_rng(n).normal(size=(n, dim))
    data /= np.linalg.norm(data, axis=1, keepdims=True)  # clipped to norm 1
    rng = SecureRandom()
    prepare = {}
    if codec_kind == "continuous":
        codec = FixedPoint(16.0, 24, n)
        for u in ids:
            prepare[u], message = timed(lambda: data[u - 1] + sigma / np.sqrt(plan.min_survivors)
                                        * rng.randn(dim, torch.float64).numpy())
            data[u - 1] = message
        params = SecAggParams(dim, codec, threshold=2 * holders // 3 + 1, min_survivors=plan.min_survivors)
        inputs = {u: data[u - 1] for u in ids}
    else:
        codec = DiscreteCodec(plan.bits, plan.scale, plan.clip, plan.dim, plan.l2_sensitivity)
        inputs = {}
        for u in ids:
            prepare[u], inputs[u] = timed(lambda: codec.encode(
                data[u - 1], seed=n, noise=skellam(rng, plan.share_variance, codec.padded_dim).numpy(), rng=rng))
        params = SecAggParams(codec.padded_dim, codec.ring_codec, threshold=2 * holders // 3 + 1,
                              min_survivors=plan.min_survivors)
    result, cost = run_secure_aggregation(inputs, params, graph=graph)
    decode = timed(lambda: codec.decode(result.total, seed=n))[0] if codec_kind == "discrete" else 0.0
    cpu = [cost.client_cpu_s[u] + prepare[u] for u in ids]
    return {"client_cpu_mean_s": statistics.fmean(cpu), "client_cpu_max_s": max(cpu),
            "server_cpu_s": cost.server_cpu_s + decode,
            "client_bytes_mean": statistics.fmean(cost.client_bytes_sent.values()),
            "ring_bits": params.codec.ring.bits, "ring_bytes": params.codec.ring.width, "length": params.dim}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[10, 100])
    parser.add_argument("--dim", type=int, default=26010, help="vector length (default: the CNN of the examples)")
    parser.add_argument("--bits", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", default=None, help="append JSON lines here")
    args = parser.parse_args()
    run_secure_aggregation({1: np.zeros(8), 2: np.zeros(8)}, SecAggParams(8, FixedPoint(1.0, 8, 2), threshold=2))
    print(f"{'n':>4} {'mode':>10} {'ring':>9} {'client CPU s (mean/max)':>24} {'server CPU s':>12} "
          f"{'client kB sent':>14}", flush=True)
    for n in args.clients:
        floor = 2 * n // 3 + 1
        plan = dpcalib.plan_skellam(eps=8.0, delta=1e-5, q=1.0, steps=100, bits=args.bits, clip=1.0, dim=args.dim,
                                    clients=n, min_survivors=floor)
        for kind in ("continuous", "discrete"):
            rows = [one_round(n, args.dim, kind, plan, plan.noise_multiplier) for _ in range(args.repeats)]
            row = {key: min(r[key] for r in rows) if key.endswith("_s") else rows[0][key] for key in rows[0]}
            row.update(n=n, dim=args.dim, mode=kind, bits=args.bits, load=os.getloadavg()[0])
            print(f"{n:>4} {kind:>10} {row['ring_bits']:>3}b/{row['ring_bytes']}B {row['client_cpu_mean_s']:>11.4f} / "
                  f"{row['client_cpu_max_s']:<10.4f}{row['server_cpu_s']:>12.3f} {row['client_bytes_mean'] / 1e3:>14.1f}",
                  flush=True)
            if args.out:
                with open(args.out, "a") as f:
                    f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
