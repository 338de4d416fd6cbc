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
def prompt_attention_statistics(model, inputs: torch.Tensor, chunk: int = 512) -> dict[str, list[float]]:
    """Per layer of a soft-prompt model on a BERT- or RoBERTa-style encoder, over all `inputs`:

    entropy        the entropy of the data-token queries' attention over the p + N positions, divided by ln(p + N)
                   (1: uniform attention, which adds every position's value alike whatever the input);
    prompt_mass    the attention weight those queries put on the prompt positions (mean over inputs, heads, queries);
    prompt_spread  its standard deviation across inputs, per head and query, then averaged: 0 means the prompt's
                   share of every output is the same for every input, so the prompt can only shift outputs alike;
    bound          the max-norm B of the queries and keys at the prompt positions, in the convention
                   exp(Q K^T / d_head) of Hu et al. (Q and K carry d_head^(1/4) of the 1/sqrt(d_head) scaling);
                   layer 1's is the same for every input, deeper layers' depend on the data.
    """
    inputs = inputs.to(next(model.parameters()).device)  # where the model trained, wherever the caller's data is
    backbone = model.backbone
    encoder = backbone.hf_model.base_model
    heads = backbone.config.num_attention_heads
    head_dim = backbone.config.hidden_size // heads
    p, n = model.prompt_len, len(inputs)
    layers = len(encoder.encoder.layer)
    entropy = torch.zeros(layers, dtype=torch.float64)
    mass = torch.zeros(layers, heads, inputs.shape[1], dtype=torch.float64)  # summed over inputs, per head and query
    mass_squared = torch.zeros_like(mass)
    bound = [0.0] * layers
    for start in range(0, n, chunk):
        batch = inputs[start:start + chunk]
        hidden_states = encoder(inputs_embeds=model.embed(batch), output_hidden_states=True).hidden_states
        for index, (layer, hidden) in enumerate(zip(encoder.encoder.layer, hidden_states)):
            attention = layer.attention.self
            query, key = (projection(hidden.float()).unflatten(-1, (heads, head_dim)).transpose(1, 2)
                          for projection in (attention.query, attention.key))  # (B, H, p + N, d_head)
            weights = torch.softmax(query @ key.transpose(-2, -1) / head_dim ** 0.5, dim=-1)[:, :, p:]
            plogp = weights * weights.clamp_min(1e-30).log()
            entropy[index] += (-plogp.sum(-1) / math.log(weights.shape[-1])).mean((1, 2)).sum().cpu()
            on_prompt = weights[..., :p].sum(-1).double().cpu()  # (B, H, N)
            mass[index] += on_prompt.sum(0)
            mass_squared[index] += on_prompt.square().sum(0)
            largest = max(query[:, :, :p].abs().max().item(), key[:, :, :p].abs().max().item())
            bound[index] = max(bound[index], largest * head_dim ** 0.25)
    mean = mass / n
    spread = (mass_squared / n - mean.square()).clamp_min(0).sqrt()
    return {"entropy": (entropy / n).tolist(), "prompt_mass": mean.mean((1, 2)).tolist(),
            "prompt_spread": spread.mean((1, 2)).tolist(), "bound": bound}


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
