"""Theory formulas and the fits that compare measurements with them."""

from __future__ import annotations

import numpy as np


def sqrt_nN_prompt_length(n, seq_len, constant: float = 1.0):
    """Wang & Lin's upper bound on the prompt length, Õ(sqrt(n N)), without its log factors: c * sqrt(n N)."""
    return constant * np.sqrt(np.asarray(n, dtype=float) * np.asarray(seq_len, dtype=float))


def sqrt_through(x, x0: float, y0: float):
    """The curve y ∝ sqrt(x) through the point (x0, y0): the theory's rate, drawn through a measurement."""
    return y0 * np.sqrt(np.asarray(x, dtype=float) / x0)


def fit_power_law(x, y) -> tuple[float, float]:
    """Least squares on log y = a log x + log c over the finite positive points; returns (a, c).

    NaN points (settings never memorized) are left out; with fewer than two distinct x left, (NaN, NaN).
    """
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    keep = np.isfinite(x) & np.isfinite(y) & (x > 0) & (y > 0)
    if len(np.unique(x[keep])) < 2:
        return float("nan"), float("nan")
    exponent, log_constant = np.polyfit(np.log(x[keep]), np.log(y[keep]), 1)
    return float(exponent), float(np.exp(log_constant))
