import os

import pytest
import torch

from promptmem import data
from promptmem.backbones import random_backbone
from promptmem.training import DEVICE_ENV

# The suite tests the library's logic on the CPU, as CI runs it, also on a machine with a GPU (where sweeps would batch
# and every run train in bf16 through Hugging Face's forward); tests of the GPU path name their device.
os.environ.setdefault(DEVICE_ENV, "cpu")

# Tests that read the real IMDb / SST-2 files and tokenizer; CI points PROMPTMEM_DATA_DIR at the project's copy.
requires_local_data = pytest.mark.skipif(not os.environ.get(data.DATA_DIR_ENV),
                                         reason=f"needs {data.DATA_DIR_ENV} (the project's shared data folder)")

TINY = dict(num_layers=2, hidden_size=32, num_heads=2, ffn_size=64, vocab_size=100, init_scale=0.3)


@pytest.fixture
def tiny_backbone():
    return random_backbone(seed=0, **TINY)


@pytest.fixture
def tiny_data():
    torch.manual_seed(0)
    return data.random_tokens(32, 4, seed=0, vocab_size=TINY["vocab_size"])


@pytest.fixture(autouse=True)
def fresh_data_caches():
    """Loaders cache per process; a test that changes PROMPTMEM_DATA_DIR must not see another folder's files."""
    data.load_split.cache_clear()
    data.load_tokenizer.cache_clear()
    yield
    data.load_split.cache_clear()
    data.load_tokenizer.cache_clear()


def interrupt_at_call(model, call: int, exception=KeyboardInterrupt):
    """Make `model.forward` raise `exception` at its `call`-th call: a run killed in the middle of training."""
    forward, calls = model.forward, []

    def forward_or_die(inputs):
        calls.append(1)
        if len(calls) == call:
            raise exception
        return forward(inputs)

    model.forward = forward_or_die
