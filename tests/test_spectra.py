import numpy as np
import pytest
import torch

from promptmem import spectra


@pytest.mark.parametrize("rank", [1, 3, 10])
def test_effective_rank_of_a_matrix_of_known_rank(rank):
    generator = torch.Generator().manual_seed(rank)
    matrix = torch.randn(50, rank, generator=generator, dtype=torch.float64) @ \
        torch.randn(rank, 30, generator=generator, dtype=torch.float64)
    values = spectra.singular_values(matrix)
    assert len(values) == 30 and (np.diff(values) <= 1e-12).all()
    assert spectra.effective_rank(values, 1.0) == rank  # all the energy: the exact rank
    assert spectra.effective_rank(values, 0.9) <= rank


def test_effective_rank_counts_energy():
    assert spectra.effective_rank([3.0, 1.0], 0.9) == 1  # 9 of 10
    assert spectra.effective_rank([3.0, 1.0], 0.95) == 2
    assert spectra.effective_rank(np.ones(8), 0.5) == 4
    assert spectra.effective_rank(np.zeros(4)) == 0


@pytest.mark.parametrize("energy", [0, 1.5])
def test_bad_energy_is_refused(energy):
    with pytest.raises(ValueError, match="energy"):
        spectra.effective_rank([1.0], energy)


def test_token_matrix_embeds_ids_and_keeps_embeddings():
    table = torch.nn.Embedding(10, 4)
    ids = torch.tensor([[1, 2, 3], [4, 5, 6]])
    assert torch.equal(spectra.token_matrix(ids, table), table.weight[ids.flatten()])
    embedded = torch.randn(2, 3, 4)
    assert torch.equal(spectra.token_matrix(embedded, None), embedded.reshape(6, 4))
