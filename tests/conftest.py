import os

import pytest
import torch

from promptmem import data, sweeps
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


# PROMPTMEM_TEST_BATCHED=1: sweeps batch by default on the CPU as they do on a GPU, so the GPU's code path (and every
# test that would bypass a fake trainer there) shows on a machine without one.
SIMULATE_GPU_BATCHING = os.environ.get("PROMPTMEM_TEST_BATCHED") == "1"


@pytest.fixture(autouse=True)
def gpu_style_batching(monkeypatch):
    if SIMULATE_GPU_BATCHING:
        monkeypatch.setattr(sweeps, "batches_by_default", lambda device: True)


@pytest.fixture
def one_run_at_a_time(monkeypatch):
    """Sweeps train one run at a time on any device: for tests whose fake or counter stands in for
    `sweeps.run_config` or `building.train`, which a GPU's batched sweep goes past (tests/test_batched.py and
    tests/test_allocation.py test that path)."""
    monkeypatch.setattr(sweeps, "batches_by_default", lambda device: False)


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
