"""Theory formulas and the fits that compare measurements with them.

Every bound carries its source and whether it is EXACT (the formula as stated, up to the constant and log factors
its Õ hides) or a PROXY (an order-of-magnitude stand-in, because the exact expression is not available here).
Constants hidden by O(.) are parameters, 1 by default.
"""

from __future__ import annotations

import itertools
import math
from typing import NamedTuple

import numpy as np


def _array(x):
    return np.asarray(x, dtype=float)


# --- Memorization: how many prompt tokens / parameters (Wang & Lin and the works they compare with) ---

def sqrt_nN_prompt_length(n, seq_len, constant: float = 1.0):
    """EXACT rate. Wang & Lin (NeurIPS 2025): a constant-size Transformer memorizes n pairs of length N with
    prompts of length Õ(sqrt(n N)); here c * sqrt(n N), log factors dropped."""
    return constant * np.sqrt(_array(n) * _array(seq_len))


def depth_limited_parameters(num_points, depth, constant: float = 1.0):
    """EXACT rate. Vardi, Yehudai & Shamir (ICLR 2022): with depth L_depth <= sqrt(M), memorizing M points needs
    Õ(M / L_depth) parameters (Õ(sqrt(M)) at depth sqrt(M)); here c * M / min(L_depth, sqrt(M))."""
    num_points, depth = _array(num_points), _array(depth)
    return constant * num_points / np.minimum(depth, np.sqrt(num_points))


def kim_parameters(n, seq_len, dim, constant: float = 1.0):
    """EXACT rate. Kim, Kim & Mozafari (ICLR 2023): Transformers memorize n sequences of length N with
    Õ(d + n + sqrt(n N)) parameters; here c * (d + n + sqrt(n N))."""
    return constant * (_array(dim) + _array(n) + np.sqrt(_array(n) * _array(seq_len)))


def kajitsuka_parameters(n, seq_len, constant: float = 1.0):
    """EXACT rate. Kajitsuka & Sato (ICLR 2025): Õ(sqrt(n N)) parameters suffice and, for hardmax attention, are
    necessary; here c * sqrt(n N): the rate of Wang & Lin's prompt length, in parameters."""
    return sqrt_nN_prompt_length(n, seq_len, constant)


def hu_memorization_lower_bound_proxy(dim, seq_len, epsilon):
    """PROXY. Hu et al. (ICLR 2025, arXiv 2411.16525): memorizing any dataset with a 1-layer, 1-head Transformer
    needs a soft prompt exponential in d L and in 1/epsilon. The exact expression is not available here; this is
    the order-of-magnitude stand-in (1/epsilon)^(d L). Returned as log10, since it overflows floats at once."""
    epsilon = _array(epsilon)
    if np.any((epsilon <= 0) | (epsilon >= 1)):
        raise ValueError(f"epsilon must be in (0, 1), got {epsilon}")
    return _array(dim) * _array(seq_len) * np.log10(1 / epsilon)


# --- Universality: how deep the constructions are ---

def earlier_attention_layers_log10(prompt_len, seq_len, dim, epsilon):
    """EXACT rate (as cited by Hu et al.). Earlier universality constructions for prompt tuning used
    O((L_p + L) (1/epsilon)^d) attention layers; log10 of (L_p + L) (1/epsilon)^d."""
    return np.log10(_array(prompt_len) + _array(seq_len)) + _array(dim) * np.log10(1 / _array(epsilon))


def earlier_ffn_layers_log10(prompt_len, seq_len, dim, epsilon):
    """EXACT rate (as cited by Hu et al.). ... or O((1/epsilon)^(d (L_p + L))) feed-forward layers; log10 of it."""
    return _array(dim) * (_array(prompt_len) + _array(seq_len)) * np.log10(1 / _array(epsilon))


HU_UNIVERSAL_LAYERS = 1  # EXACT. Hu et al.: one attention layer with one head suffices for universality.


# --- Efficiency: the phase transition in the norm B of the soft-prompt-induced queries and keys ---

def efficiency_threshold(seq_len):
    """EXACT (up to the constant). Hu et al., after Alman & Song (NeurIPS 2023): with queries and keys bounded in
    max-norm by B, d = O(log L) and error 1/poly(L), prompt-tuning inference takes L^(1+o(1)) time when
    B = o(sqrt(log L)); for B = Theta(sqrt(log L)) no O(L^(2-q)) algorithm exists under SETH. B* = sqrt(ln L)."""
    return np.sqrt(np.log(_array(seq_len)))


def exp_polynomial_degree(bound, delta):
    """EXACT rate (Aggarwal & Alman): the degree a polynomial needs to approximate e^x on [0, B] within delta,
    Theta(max{B, log(1/delta) / log(log(1/delta) / B)}), constant 1. Attention with entries of Q and K bounded
    by B covers an interval of length about B^2 (for exp(Q K^T / d)), so pass bound = B^2 for that case."""
    bound, delta = _array(bound), _array(delta)
    log_inverse = np.log(1 / delta)
    ratio = np.maximum(log_inverse / np.maximum(bound, 1e-300), math.e)  # the rate's second regime needs ratio > e
    return np.maximum(bound, log_inverse / np.log(ratio))


def feature_rank(dim: int, degree: int) -> int:
    """EXACT. The number of monomials of degree <= g in d variables, C(d + g, g): the rank r of the polynomial
    method's factorization of the L x L attention matrix into L x r and r x L factors."""
    if dim < 1 or degree < 0:
        raise ValueError(f"dim must be >= 1 and degree >= 0, got dim={dim}, degree={degree}")
    return math.comb(dim + degree, degree)


# --- Fits ---

def sqrt_through(x, x0: float, y0: float):
    """The curve y ∝ sqrt(x) through the point (x0, y0): the theory's rate, drawn through a measurement."""
    return y0 * np.sqrt(_array(x) / x0)


def fit_power_law(x, y) -> tuple[float, float]:
    """Least squares on log y = a log x + log c over the finite positive points; returns (a, c).

    NaN points (settings never memorized) are left out; with fewer than two distinct x left, (NaN, NaN).
    """
    x, y = _array(x), _array(y)
    keep = np.isfinite(x) & np.isfinite(y) & (x > 0) & (y > 0)
    if len(np.unique(x[keep])) < 2:
        return float("nan"), float("nan")
    exponent, log_constant = np.polyfit(np.log(x[keep]), np.log(y[keep]), 1)
    return float(exponent), float(np.exp(log_constant))


class ExponentRange(NamedTuple):
    """The open interval (low, high) of exponents a of every power law through a set of brackets (empty when
    low >= high), and what it says about a theory's exponent and about linear growth."""
    low: float
    high: float

    @property
    def empty(self) -> bool:
        return not self.low < self.high

    def admits(self, exponent: float) -> bool:
        return self.low < exponent < self.high

    def below(self, exponent: float) -> bool:
        """Every power law through the brackets grows slower than x^exponent (open at high: high itself fails)."""
        return not self.empty and self.high <= exponent + 1e-9

    def describe(self, theory_exponent: float = 0.5, variable: str = "n") -> str:
        if self.empty:
            return "no single power law passes through every bracket"
        return (f"every power law through the brackets has an exponent in {variable} in ({self.low:.2f}, "
                f"{self.high:.2f}): {'admits' if self.admits(theory_exponent) else 'excludes'} the theory's "
                f"{theory_exponent:g}, {'excludes' if self.below(1) else 'admits'} linear growth")


def power_law_exponent_range(x, fails, memorizes) -> ExponentRange:
    """The exponents a of every power law y = c · x^a (any c > 0) that passes through every bracket fails_i < y_i ≤
    memorizes_i: the open interval (low, high), empty when low ≥ high (no power law fits them all).

    Integer thresholds make a least-squares exponent hinge on one grid step; the brackets bound it without a fit.
    A power law fits every bracket exactly when f_i / x_i^a < m_j / x_j^a for every pair i, j, and each pair bounds a
    from one side: from above where x_i < x_j, from below where x_i > x_j. fails 0 (nothing failed) and memorizes NaN or
    None (nothing memorized) bound nothing.
    """
    x, fails = _array(x), _array(fails)
    memorizes = np.array([np.inf if m is None or np.isnan(m) else m for m in memorizes], dtype=float)
    if not len(x) == len(fails) == len(memorizes):
        raise ValueError(f"x, fails and memorizes must have one entry per point, got {len(x)}, {len(fails)} and "
                         f"{len(memorizes)}")
    if not (x > 0).all() or (fails < 0).any() or not (fails < memorizes).all():
        raise ValueError("x must be positive and each bracket must satisfy 0 <= fails < memorizes, got "
                         f"x={x.tolist()}, fails={fails.tolist()}, memorizes={memorizes.tolist()}")
    low, high = -np.inf, np.inf
    for i, j in itertools.permutations(range(len(x)), 2):
        if x[i] == x[j] or fails[i] <= 0 or not np.isfinite(memorizes[j]):
            continue
        bound = math.log(memorizes[j] / fails[i]) / math.log(x[j] / x[i])
        if x[i] < x[j]:
            high = min(high, bound)
        else:
            low = max(low, bound)
    return ExponentRange(float(low), float(high))


def log_power_range(n, fails, memorizes, exponent: float = 0.5) -> ExponentRange:
    """The powers k of every law y = c · n^exponent · (ln n)^k (any c > 0) through every bracket fails_i < y_i <=
    memorizes_i: how many log factors an Õ(n^exponent) rate would need to hide to fit the brackets.

    Dividing by n^exponent makes it a power law in ln n, so this is `power_law_exponent_range` on (ln n, fails /
    n^exponent, memorizes / n^exponent). Needs every n > 1 (ln n > 0)."""
    n = _array(n)
    if not (n > 1).all():
        raise ValueError(f"n must be above 1 (ln n > 0), got {n.tolist()}")
    scale = n ** exponent
    return power_law_exponent_range(np.log(n), _array(fails) / scale, _array(memorizes) / scale)
