"""Singular-value spectra and effective ranks, of data (tokens as rows) and of trained prompts."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

ENERGIES = (0.9, 0.99)


def singular_values(matrix) -> np.ndarray:
    """Singular values of a 2-D matrix, largest first, computed in float64."""
    matrix = torch.as_tensor(matrix).detach().double().cpu()
    if matrix.dim() != 2:
        raise ValueError(f"matrix must be 2-D, got shape {tuple(matrix.shape)}")
    return torch.linalg.svdvals(matrix).numpy()


def effective_rank(values, energy: float = 0.9) -> int:
    """The fewest leading singular values holding `energy` of the total squared energy (0 for a zero matrix)."""
    if not 0 < energy <= 1:
        raise ValueError(f"energy must be in (0, 1], got {energy!r}")
    squared = np.sort(np.asarray(values, dtype=float))[::-1] ** 2
    total = squared.sum()
    if total == 0:
        return 0
    return int(np.searchsorted(np.cumsum(squared) / total, energy - 1e-12) + 1)


def token_matrix(inputs: torch.Tensor, word_embeddings: torch.nn.Embedding) -> torch.Tensor:
    """All n*N input tokens as rows of width d, on the CPU: embedded by the backbone's table if they are ids."""
    if not inputs.is_floating_point():  # looked up where the table is (a GPU, once a run trained the backbone)
        inputs = word_embeddings(inputs.to(word_embeddings.weight.device))
    return inputs.detach().reshape(-1, inputs.shape[-1]).cpu()


def spectra_table(matrices: dict) -> pd.DataFrame:
    """Per named matrix: its singular values, largest first (index from 1), and each over the largest."""
    parts = []
    for name, matrix in matrices.items():
        values = singular_values(matrix)
        parts.append(pd.DataFrame({"data": name, "index": np.arange(1, len(values) + 1), "singular_value": values,
                                   "normalized": values / values[0]}))
    return pd.concat(parts, ignore_index=True)
