"""High-precision (mpmath, 50 digits) reference values of the Poisson-subsampled Gaussian's RDP.

Integer orders: the exact binomial sum A_α = Σ_k C(α,k) (1-q)^{α-k} q^k exp(k(k-1)/(2σ²)).
Fractional orders: numerical integration of the defining integral, written as
A_α - 1 = E_{z~N(0,σ²)}[(1 + q(r(z) - 1))^α - 1 - αq(r(z) - 1)] (the subtracted term integrates to 0), which
keeps relative precision when A_α - 1 is tiny.
"""

from __future__ import annotations

import mpmath as mp


def reference_rdp(q: float, sigma: float, alpha: float) -> float:
    with mp.workdps(50):
        qq, s, a = mp.mpf(q), mp.mpf(sigma), mp.mpf(alpha)
        if float(alpha).is_integer():
            n = int(alpha)
            am1 = mp.fsum(
                mp.binomial(n, k) * (1 - qq) ** (n - k) * qq**k * mp.expm1(mp.mpf(k * (k - 1)) / (2 * s * s))
                for k in range(2, n + 1)
            )
        else:

            def integrand(z):
                x = qq * mp.expm1((2 * z - 1) / (2 * s * s))
                return mp.npdf(z, 0, s) * (mp.expm1(a * mp.log1p(x)) - a * x)

            z0 = s * s * mp.log(1 / qq - 1) + mp.mpf(1) / 2
            cuts = sorted({-10 * s, mp.mpf(0), mp.mpf(0.5), min(max(z0, -50 * s), 50 * s + a), a, a + 10 * s})
            am1 = mp.quad(integrand, [-mp.inf, *cuts, mp.inf])
        return float(mp.log1p(am1) / (a - 1))
