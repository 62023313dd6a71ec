"""Benchmark: dpcalib's PLD accountant against dp_accounting's PLD and Opacus' PRV accountant, in one run.

    PYTHONPATH=. python benchmarks/bench_pld.py

Measures (best of several repeats, one thread; sections 1 and 2 by wall clock and by the thread's CPU time, since
the machine is shared; the load average is printed):
1. ε at (q = 0.01, σ = 1, 1000 steps, δ = 1e-5);
2. the mission's calibration: smallest σ with ε ≤ 2 at δ = 1e-5, q = 0.01, 1000 steps (goal, issue 11: ≤ 50 ms);
3. fixed-size batches without replacement (replace-one, n = 60000, b = 256, σ = 1.1, 7000 steps, δ = 1e-5),
   which dp_accounting's PLD does not support: our PLD against dp_accounting's RDP (σ/2 per unit of sensitivity);
0. peak memory of one ε evaluation at 10⁶ steps, in a fresh interpreter (tracemalloc peak and peak RSS).

Peers run at comparable accuracy: dp_accounting's PLDAccountant with the same grid interval Δ = 1e-3 (it uses the
same connect-the-dots discretisation, so its ε agrees with ours to 1e-9) and, for reference, at its default
Δ = 1e-4; Opacus' PRV accountant at its default eps_error = 0.01 (its estimate is not a guaranteed bound).
Peers are benchmark-only dependencies (the ``bench`` extra).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import warnings
from typing import Callable

from _common import DELTA, Q, SIGMA, STEPS, TARGET_EPS, best_time  # noqa: E402


def ours_epsilon() -> float:
    import dpcalib

    return dpcalib.epsilon(sigma=SIGMA, q=Q, steps=STEPS, delta=DELTA, accountant="pld")


def ours_calibration() -> float:
    import dpcalib

    return dpcalib.calibrate_sigma(eps=TARGET_EPS, delta=DELTA, q=Q, steps=STEPS, accountant="pld")


def ours_rdp_calibration() -> float:
    import dpcalib

    return dpcalib.calibrate_sigma(eps=TARGET_EPS, delta=DELTA, q=Q, steps=STEPS, accountant="rdp")


def dp_accounting_epsilon(interval: float) -> Callable[[], float]:
    from dp_accounting import dp_event
    from dp_accounting.pld import pld_privacy_accountant

    def run() -> float:
        acc = pld_privacy_accountant.PLDAccountant(value_discretization_interval=interval)
        acc.compose(dp_event.PoissonSampledDpEvent(Q, dp_event.GaussianDpEvent(SIGMA)), STEPS)
        return acc.get_epsilon(DELTA)

    return run


WOR = (60000, 256, 1.1, 7000)  # n, batch, sigma (noise std / C), steps: the fixed-size example


def ours_without_replacement() -> float:
    from dpcalib.accountant import PldAccountant
    from dpcalib.events import Gaussian, Repeated, SampledWithoutReplacement

    n, batch, sigma, steps = WOR
    acc = PldAccountant(neighbouring="replace_one")
    acc.compose(Repeated(SampledWithoutReplacement(n, batch, Gaussian(sigma)), steps))
    return acc.distribution().epsilon(DELTA)  # the PLD bound itself, before the min with RDP


def dp_accounting_without_replacement_rdp() -> float:
    from dp_accounting import dp_event, privacy_accountant
    from dp_accounting.rdp import rdp_privacy_accountant

    n, batch, sigma, steps = WOR
    acc = rdp_privacy_accountant.RdpAccountant(neighboring_relation=privacy_accountant.NeighboringRelation.REPLACE_ONE)
    acc.compose(dp_event.SampledWithoutReplacementDpEvent(n, batch, dp_event.GaussianDpEvent(sigma / 2)), steps)
    return acc.get_epsilon(DELTA)


def dp_accounting_calibration(interval: float) -> Callable[[], float]:
    from dp_accounting import dp_event, mechanism_calibration
    from dp_accounting.pld import pld_privacy_accountant

    def run() -> float:
        return mechanism_calibration.calibrate_dp_mechanism(
            lambda: pld_privacy_accountant.PLDAccountant(value_discretization_interval=interval),
            lambda s: dp_event.SelfComposedDpEvent(dp_event.PoissonSampledDpEvent(Q, dp_event.GaussianDpEvent(s)),
                                                   STEPS),
            TARGET_EPS,
            DELTA,
            mechanism_calibration.ExplicitBracketInterval(0.3, 5.0),
            tol=1e-6,
        )

    return run


def opacus_prv_epsilon() -> float:
    from opacus.accountants import PRVAccountant

    acc = PRVAccountant()
    acc.history = [(SIGMA, Q, STEPS)]
    return acc.get_epsilon(DELTA)


def opacus_prv_calibration() -> float:
    from opacus.accountants.utils import get_noise_multiplier

    return get_noise_multiplier(target_epsilon=TARGET_EPS, target_delta=DELTA, sample_rate=Q, steps=STEPS,
                                accountant="prv")


MEMORY_PROBE = """
import resource, time, tracemalloc


def high_water_mb():
    # VmHWM: this process's peak resident set (ru_maxrss can carry the parent's peak over fork + exec)
    try:
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) for line in status if line.startswith("VmHWM")) / 1024
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


import dpcalib

base = high_water_mb()
tracemalloc.start()
start = time.perf_counter()
eps = dpcalib.epsilon(sigma=1.0, q=0.01, steps=1_000_000, delta=1e-5, accountant="pld")
seconds = time.perf_counter() - start
peak = tracemalloc.get_traced_memory()[1] / 2**20
print(eps, peak, base, high_water_mb(), seconds)
"""


def peak_memory_million_steps() -> tuple[float, float, float, float, float]:
    """(ε, tracemalloc peak MB, max RSS MB after imports, max RSS MB at the end, seconds) of one PLD ε evaluation
    at 10⁶ steps, in a fresh interpreter so that the peers' memory does not count."""
    out = subprocess.run([sys.executable, "-c", MEMORY_PROBE], check=True, capture_output=True, text=True,
                         env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)))
    eps, peak, base, rss, seconds = (float(v) for v in out.stdout.split())
    return eps, peak, base, rss, seconds


def main() -> int:
    warnings.filterwarnings("ignore")
    print(f"load average at start: {os.getloadavg()}")
    eps, peak, base, rss, seconds = peak_memory_million_steps()  # first, in a fresh interpreter
    print(f"\n0. 10^6 steps (fresh process, includes scipy imports): eps={eps:.4f} in {seconds:.3f} s; "
          f"peak traced allocation {peak:.1f} MB; peak RSS {rss:.0f} MB ({base:.0f} MB after importing dpcalib)")
    print(f"\n1. epsilon at q={Q}, sigma={SIGMA}, steps={STEPS}, delta={DELTA}")
    rows = [("dpcalib pld (default grid)", ours_epsilon)]
    rows += [(f"dp_accounting PLD (interval {iv:g})", dp_accounting_epsilon(iv)) for iv in (1e-3, 1e-4)]
    rows += [("opacus PRV (eps_error 0.01)", opacus_prv_epsilon)]
    results = {name: best_time(fn) for name, fn in rows}
    cpu = {name: best_time(fn, clock=time.thread_time)[0] for name, fn in rows}
    ours_t, ours_cpu = results[rows[0][0]][0], cpu[rows[0][0]]
    for name, (seconds, value) in results.items():
        print(f"  {name:38s} eps={value:.6f}  {seconds * 1e3:8.2f} ms wall ({seconds / ours_t:5.1f}x ours)  "
              f"{cpu[name] * 1e3:8.2f} ms cpu ({cpu[name] / ours_cpu:5.1f}x ours)")
    fastest_peer = min(t for name, (t, _) in results.items() if name != rows[0][0])
    print(f"  speed-up over the fastest peer: {fastest_peer / ours_t:.1f}x")

    print(f"\n2. calibration: smallest sigma with eps <= {TARGET_EPS} at delta={DELTA}, q={Q}, steps={STEPS}")
    rows = [("dpcalib pld", ours_calibration), ("dpcalib rdp (for reference)", ours_rdp_calibration)]
    rows += [("dp_accounting PLD (interval 1e-3)", dp_accounting_calibration(1e-3))]
    rows += [("opacus PRV (tolerance 0.01)", opacus_prv_calibration)]
    results = {name: best_time(fn, repeats=3) for name, fn in rows}
    cpu = {name: best_time(fn, repeats=3, clock=time.thread_time)[0] for name, fn in rows}
    ours_t, ours_cpu = results["dpcalib pld"][0], cpu["dpcalib pld"]
    for name, (seconds, value) in results.items():
        print(f"  {name:38s} sigma={value:.6f}  {seconds * 1e3:8.1f} ms wall ({seconds / ours_t:5.1f}x ours)  "
              f"{cpu[name] * 1e3:8.1f} ms cpu ({cpu[name] / ours_cpu:5.1f}x ours)")
    fastest_peer = min(t for name, (t, _) in results.items() if not name.startswith("dpcalib"))
    print(f"  speed-up over the fastest peer: {fastest_peer / ours_t:.1f}x")

    n, batch, sigma, steps = WOR
    print(f"\n3. fixed-size batches, replace-one: n={n}, batch={batch}, sigma={sigma}, steps={steps}, delta={DELTA}")
    rows = [("dpcalib pld (sampling w/o replacement)", ours_without_replacement),
            ("dp_accounting RDP (sigma/2, its only WOR)", dp_accounting_without_replacement_rdp)]
    results = {name: best_time(fn, repeats=3) for name, fn in rows}
    ours_t, ours_eps = results[rows[0][0]]
    for name, (seconds, value) in results.items():
        print(f"  {name:42s} eps={value:.4f}  {seconds * 1e3:8.1f} ms  ({seconds / ours_t:5.1f}x ours)")
    print(f"  ours / peer epsilon: {ours_eps / results[rows[1][0]][1]:.3f}")

    print(f"\nload average at end: {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
