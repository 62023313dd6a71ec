"""Accuracy of dpcalib's PLD accountant on DP-SGD settings: the default grid against a 4× finer one, the
optimistic (lower-bound) discretisation, and the RDP bound.

    PYTHONPATH=. python benchmarks/pld_accuracy.py

For each setting it prints ε at δ = 1e-5 from: the optimistic PLD on a 4× finer grid (a lower bound of the true
ε), the pessimistic PLD on a 4× finer grid, the default pessimistic PLD (what ``accountant="pld"`` reports, before
the min with RDP), and RDP; then the default's excess over the finer grid, which bounds its error from above up to
the finer grid's own (smaller) error. A second table shows settings where peers break (tiny δ, ε near 30,
10⁶ steps, σ = 0.3, q = 1, tiny q): PLD and RDP ε and the time of one PLD evaluation. A third table checks
tiny q at small δ against the exact values (issue 11) on three grids: a finer grid must not give a larger ε.
"""

from __future__ import annotations

import time

from dpcalib.accountant import RdpAccountant
from dpcalib.events import dpsgd_event
from dpcalib.pld import Phase, SubsampledGaussianPld

SETTINGS = [
    (0.01, 1.0, 1000),
    (0.01, 1.0, 10000),
    (0.01, 1.0, 100000),
    (0.001, 0.6, 100000),
    (1e-4, 1.0, 100000),
    (0.003, 0.8, 30000),
    (0.05, 2.0, 1000),
    (0.1, 0.8, 10000),
    (0.25, 1.5, 300),
    (1.0, 5.0, 1000),
]
DELTA = 1e-5
#: (q, sigma, steps, delta) where peers break: tiny delta, large epsilon, 10^6 steps, sigma = 0.3, q = 1, tiny q
ROBUSTNESS = [
    (0.01, 1.0, 1000, 1e-12),
    (0.01, 0.4842446, 1000, 1e-12),
    (0.01, 1.0, 1_000_000, 1e-5),
    (1.0, 0.3, 1, 1e-5),
    (1.0, 0.3, 1000, 1e-12),
    (1.0, 100.0, 10000, 1e-12),
    (1e-6, 0.5, 100000, 1e-10),
    (1e-8, 1.0, 1000, 1e-5),
]


def main() -> None:
    SubsampledGaussianPld([Phase(0.01, 1.0, 10)]).epsilon(DELTA)  # warm-up: scipy imports
    print(f"{'q':>7} {'sigma':>5} {'steps':>7} {'interval':>9} {'lower':>10} {'fine':>10} {'default':>10} "
          f"{'rdp':>10} {'excess %':>8} {'pld/rdp':>7} {'ms':>6}")
    for q, sigma, steps in SETTINGS:
        start = time.perf_counter()
        default = SubsampledGaussianPld([Phase(q, sigma, steps)])
        eps = default.epsilon(DELTA)
        millis = (time.perf_counter() - start) * 1e3
        fine = SubsampledGaussianPld([Phase(q, sigma, steps)], interval=default.interval / 4).epsilon(DELTA)
        lower = SubsampledGaussianPld([Phase(q, sigma, steps)], interval=default.interval / 4,
                                      pessimistic=False).epsilon(DELTA)
        rdp_eps = RdpAccountant().compose(dpsgd_event(sigma=sigma, q=q, steps=steps)).epsilon(DELTA)
        print(f"{q:7g} {sigma:5g} {steps:7d} {default.interval:9.2g} {lower:10.5f} {fine:10.5f} {eps:10.5f} "
              f"{rdp_eps:10.5f} {100 * (eps - fine) / fine:8.4f} {eps / rdp_eps:7.3f} {millis:6.1f}")




def robustness() -> None:
    print(f"\n{'q':>7} {'sigma':>9} {'steps':>8} {'delta':>6} {'interval':>9} {'pld eps':>12} {'rdp eps':>12} {'ms':>7}")
    for q, sigma, steps, delta in ROBUSTNESS:
        start = time.perf_counter()
        pld = SubsampledGaussianPld([Phase(q, sigma, steps)])
        eps = pld.epsilon(delta)
        millis = (time.perf_counter() - start) * 1e3
        rdp_eps = RdpAccountant().compose(dpsgd_event(sigma=sigma, q=q, steps=steps)).epsilon(delta)
        print(f"{q:7g} {sigma:9.7g} {steps:8d} {delta:6.0e} {pld.interval:9.2g} {eps:12.6g} {rdp_eps:12.6g} {millis:7.1f}")


#: (q, sigma, steps, delta, exact ε): exact values published in issue 11 (an exact inversion of the PLD's MGF)
TINY_Q = [(1e-4, 0.5, 1, 1e-8, 0.540190), (1e-4, 0.5, 100, 1e-8, 1.941770)]


def tiny_q() -> None:
    print(f"\n{'q':>7} {'sigma':>5} {'steps':>5} {'delta':>6} {'exact':>9} {'default':>9} {'Δ=1e-3':>9} {'Δ=1e-4':>9} "
          f"{'Δ=2.5e-5':>9} {'excess %':>8} {'ms':>7}")
    for q, sigma, steps, delta, exact in TINY_Q:
        start = time.perf_counter()
        default = SubsampledGaussianPld([Phase(q, sigma, steps)]).epsilon(delta)
        millis = (time.perf_counter() - start) * 1e3
        grids = [SubsampledGaussianPld([Phase(q, sigma, steps)], interval=iv).epsilon(delta) for iv in (1e-3, 1e-4, 2.5e-5)]
        print(f"{q:7g} {sigma:5g} {steps:5d} {delta:6.0e} {exact:9.6f} {default:9.6f} "
              + " ".join(f"{e:9.6f}" for e in grids) + f" {100 * (default - exact) / exact:8.4f} {millis:7.1f}")


if __name__ == "__main__":
    main()
    robustness()
    tiny_q()
