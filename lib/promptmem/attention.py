"""Softmax attention computed exactly and by the polynomial method, and the bound B of trained prompts.

Convention (Alman & Song, NeurIPS 2023, used by Hu et al.): Att(Q, K, V) = D^-1 A V with A = exp(Q K^T / d) and
D = diag(A 1); the entries of Q and K are bounded by B. The polynomial method replaces exp(<q, k> / d) by its
degree-g Taylor polynomial sum_{j<=g} <q', k'>^j / j! (q' = q / sqrt(d)), which factors exactly through the
monomial features phi_a(x) = x^a / sqrt(a!) over all exponent vectors |a| <= g: A ~ phi(Q') phi(K')^T, of rank
r = C(d + g, g). Attention then costs O(L r d) instead of O(L^2 d).
"""

from __future__ import annotations

import itertools
import math
import time

import numpy as np
import pandas as pd
import torch


def _check_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    if q.dim() < 2 or q.shape != k.shape or v.shape[:-1] != k.shape[:-1]:
        raise ValueError(f"q and k must have the same shape (..., L, d) and v the shape (..., L, d_v); got "
                         f"q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}")


def exact_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, block_rows: int = 1024) -> torch.Tensor:
    """softmax(Q K^T / d) V, a block of query rows at a time so that memory stays O(block_rows * L)."""
    _check_qkv(q, k, v)
    scale = 1 / q.shape[-1]
    blocks = [torch.softmax(q[..., start:start + block_rows, :] @ k.transpose(-2, -1) * scale, dim=-1) @ v
              for start in range(0, q.shape[-2], block_rows)]
    return torch.cat(blocks, dim=-2)


def monomial_exponents(dim: int, degree: int) -> torch.Tensor:
    """All exponent vectors a in N^dim with |a| <= degree, as rows (C(dim + degree, degree) of them)."""
    if not isinstance(degree, int) or degree < 0:
        raise ValueError(f"degree must be an integer >= 0, got {degree!r}")
    if not isinstance(dim, int) or dim < 1:
        raise ValueError(f"dim must be an integer >= 1, got {dim!r}")
    rows = []
    for total in range(degree + 1):
        for variables in itertools.combinations_with_replacement(range(dim), total):
            rows.append(np.bincount(np.array(variables, dtype=int), minlength=dim))
    return torch.tensor(np.array(rows), dtype=torch.long)


def taylor_features(x: torch.Tensor, degree: int, chunk: int = 512) -> torch.Tensor:
    """phi(x) (..., L, r) with <phi(x), phi(y)> = sum_{j<=degree} <x, y>^j / j! exactly; built `chunk` monomials
    at a time, so the working memory is O(L d chunk) on top of the O(L r) result."""
    exponents = monomial_exponents(x.shape[-1], degree).to(x.device)
    powers = x[..., None] ** torch.arange(degree + 1, device=x.device, dtype=x.dtype)  # (..., L, d, g + 1)
    scales = torch.exp(-0.5 * torch.lgamma(exponents.to(x.dtype) + 1).sum(-1))  # 1 / sqrt(a!)
    columns = []
    for start in range(0, len(exponents), chunk):
        index = exponents[start:start + chunk].T.expand(*x.shape[:-1], -1, -1)  # (..., L, d, chunk)
        columns.append(torch.gather(powers, -1, index).prod(dim=-2) * scales[start:start + chunk])
    return torch.cat(columns, dim=-1)


def polynomial_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, degree: int) -> torch.Tensor:
    """Att(Q, K, V) with exp replaced by its degree-g Taylor polynomial, through rank-r factors: O(L r d)."""
    _check_qkv(q, k, v)
    scale = q.shape[-1] ** -0.5
    query_features, key_features = taylor_features(q * scale, degree), taylor_features(k * scale, degree)
    numerator = query_features @ (key_features.transpose(-2, -1) @ v)
    denominator = query_features @ key_features.sum(dim=-2, keepdim=True).transpose(-2, -1)
    return numerator / denominator


def relative_error(approximate: torch.Tensor, exact: torch.Tensor) -> float:
    """||approximate - exact||_F / ||exact||_F (inf where the approximation broke down into NaN)."""
    error = (torch.linalg.norm(approximate.double() - exact.double()) / torch.linalg.norm(exact.double())).item()
    return error if math.isfinite(error) else float("inf")


def bounded_qkv(length: int, dim: int, bound: float, seed: int = 0, dtype=torch.float64, device="cpu"):
    """Q and K with entries uniform in [-B, B], V standard normal: the setting of the efficiency theorem."""
    generator = torch.Generator().manual_seed(seed)
    q, k = ((torch.rand(length, dim, generator=generator, dtype=dtype) * 2 - 1) * bound for _ in range(2))
    v = torch.randn(length, dim, generator=generator, dtype=dtype)
    return q.to(device), k.to(device), v.to(device)


def approximation_errors(lengths, bounds, degrees, dim: int = 4, seed: int = 0, device="cpu") -> pd.DataFrame:
    """The polynomial method's relative error against exact attention (fp64) over a grid of L, B and g."""
    rows = []
    for length, bound in itertools.product(lengths, bounds):
        q, k, v = bounded_qkv(length, dim, bound, seed, device=device)
        exact = exact_attention(q, k, v)
        for degree in degrees:
            rows.append({"length": length, "bound": bound, "degree": degree, "rank": math.comb(dim + degree, degree),
                         "relative_error": relative_error(polynomial_attention(q, k, v, degree), exact)})
    return pd.DataFrame(rows)


def _seconds(function, device, repeats: int) -> float:
    function()  # warm-up
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(repeats):
        function()
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - start) / repeats


def attention_timings(lengths, degrees, dim: int = 4, device="cpu", dtype=torch.float32,
                      repeats: int = 3) -> pd.DataFrame:
    """Seconds per call of exact attention and of the polynomial method at each degree, against L."""
    rows = []
    for length in lengths:
        q, k, v = bounded_qkv(length, dim, 1.0, dtype=dtype, device=device)
        rows.append({"length": length, "method": "exact", "degree": None,
                     "seconds": _seconds(lambda: exact_attention(q, k, v), device, repeats)})
        for degree in degrees:
            rows.append({"length": length, "method": "polynomial", "degree": degree,
                         "seconds": _seconds(lambda: polynomial_attention(q, k, v, degree), device, repeats)})
    return pd.DataFrame(rows)


@torch.no_grad()
def prompt_query_key_bounds(model, inputs: torch.Tensor) -> list[float]:
    """Per layer of a soft-prompt model on a RoBERTa-style encoder: the max-norm B of the queries and keys at the
    prompt positions over all `inputs`, in the convention exp(Q K^T / d_head) (so Q and K carry d_head^(1/4) of
    the 1/sqrt(d_head) scaling). Layer 1's are the same for every input; deeper layers' depend on the data."""
    backbone = model.backbone
    hidden_states = backbone.hf_model.base_model(inputs_embeds=model.embed(inputs),
                                                 output_hidden_states=True).hidden_states
    head_dim = backbone.config.hidden_size // backbone.config.num_attention_heads
    bounds = []
    for layer, hidden in zip(backbone.hf_model.base_model.encoder.layer, hidden_states):
        prompt = hidden[:, :model.prompt_len]
        attention = layer.attention.self
        largest = max(attention.query(prompt).abs().max().item(), attention.key(prompt).abs().max().item())
        bounds.append(largest * head_dim ** 0.25)
    return bounds


def required_degrees(errors: pd.DataFrame) -> pd.DataFrame:
    """Per (L, B): the smallest degree of the grid whose error is at most 1/L, its rank r, and whether the
    polynomial method is then cheaper than exact attention (r < L: 2 L r d against 2 L^2 d operations)."""
    rows = []
    for (length, bound), group in errors.groupby(["length", "bound"]):
        reached = group[group.relative_error <= 1 / length].sort_values("degree")
        degree = reached.degree.iloc[0] if len(reached) else float("nan")
        rank = reached["rank"].iloc[0] if len(reached) else float("nan")
        rows.append({"length": length, "bound": bound, "degree": degree, "rank": rank,
                     "cheaper_than_exact": bool(len(reached)) and rank < length})
    return pd.DataFrame(rows)


def transition_bounds(required: pd.DataFrame) -> pd.DataFrame:
    """Per L: the smallest B of the grid from which the polynomial method is no longer cheaper than exact
    attention at error 1/L (NaN if it stays cheaper over the whole grid), beside the theory's sqrt(ln L)."""
    rows = []
    for length, group in required.groupby("length"):
        expensive = group[~group.cheaper_than_exact].bound
        rows.append({"length": length, "transition_bound": expensive.min() if len(expensive) else float("nan"),
                     "sqrt_log_length": math.sqrt(math.log(length))})
    return pd.DataFrame(rows)
