import math

import pytest
import torch

from promptmem import attention
from promptmem.model import SoftPromptModel


def qkv(length=12, dim=3, bound=1.0, seed=0):
    return attention.bounded_qkv(length, dim, bound, seed)


def test_monomials_count_and_degree():
    exponents = attention.monomial_exponents(4, 3)
    assert len(exponents) == math.comb(7, 3) and exponents.sum(1).max() == 3
    assert len({tuple(row) for row in exponents.tolist()}) == len(exponents)


def test_features_give_the_taylor_kernel_exactly():
    x, y = torch.randn(5, 3, dtype=torch.float64), torch.randn(7, 3, dtype=torch.float64)
    for degree in (0, 1, 2, 5):
        kernel = attention.taylor_features(x, degree) @ attention.taylor_features(y, degree).T
        dots = x @ y.T
        explicit = sum(dots ** j / math.factorial(j) for j in range(degree + 1))
        assert torch.allclose(kernel, explicit, rtol=1e-10, atol=1e-12)


def test_factored_attention_equals_the_explicit_polynomial_kernel():
    q, k, v = qkv(bound=1.5)
    degree = 4
    dots = q @ k.T / q.shape[-1]
    kernel = sum(dots ** j / math.factorial(j) for j in range(degree + 1))
    explicit = (kernel @ v) / kernel.sum(-1, keepdim=True)
    assert torch.allclose(attention.polynomial_attention(q, k, v, degree), explicit, rtol=1e-9)


def test_exact_in_the_limit_of_small_bound_and_high_degree():
    q, k, v = qkv(length=64, dim=4, bound=0.5)
    exact = attention.exact_attention(q, k, v)
    assert attention.relative_error(attention.polynomial_attention(q, k, v, 10), exact) < 1e-9
    assert attention.relative_error(attention.polynomial_attention(q, k, v, 1), exact) > 1e-6


def test_blocked_exact_attention_equals_softmax():
    q, k, v = qkv(length=50)
    reference = torch.softmax(q @ k.T / 3, dim=-1) @ v
    assert torch.allclose(attention.exact_attention(q, k, v, block_rows=7), reference, rtol=1e-12)


@pytest.mark.parametrize("call, message", [
    (lambda: attention.polynomial_attention(*qkv(), degree=-1), "degree"),
    (lambda: attention.polynomial_attention(*qkv(), degree=2.5), "degree"),
    (lambda: attention.polynomial_attention(torch.ones(4, 3), torch.ones(4, 2), torch.ones(4, 3), 2), "same shape"),
    (lambda: attention.exact_attention(torch.ones(3), torch.ones(3), torch.ones(3)), "same shape"),
])
def test_bad_degree_or_shapes_are_refused(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_error_grid_and_timings_have_their_columns():
    errors = attention.approximation_errors([16, 32], [0.5, 2.0], [1, 6], dim=2)
    assert len(errors) == 8 and (errors["rank"] == [3, 28] * 4).all()
    small = errors[(errors.bound == 0.5) & (errors.degree == 6)].relative_error
    large = errors[(errors.bound == 2.0) & (errors.degree == 1)].relative_error
    assert small.max() < large.min()
    timings = attention.attention_timings([16], [2], dim=2, repeats=1)
    assert set(timings.method) == {"exact", "polynomial"} and (timings.seconds > 0).all()


def test_prompt_bounds_per_layer(tiny_backbone, tiny_data):
    model = SoftPromptModel(tiny_backbone, 3, seed=0)
    bounds = attention.prompt_attention_statistics(model, tiny_data.inputs)["bound"]
    assert len(bounds) == 2 and all(b > 0 for b in bounds)
    layer = tiny_backbone.hf_model.base_model.encoder.layer[0].attention.self
    hidden = tiny_backbone.hf_model.base_model.embeddings(inputs_embeds=model.embed(tiny_data.inputs))  # layer 1 input
    expected = max(layer.query(hidden[:, :3]).abs().max(), layer.key(hidden[:, :3]).abs().max()).item() * 16 ** 0.25
    with torch.no_grad():
        model.prompt.mul_(3.0)
    assert attention.prompt_attention_statistics(model, tiny_data.inputs)["bound"] != bounds  # follows the prompt
    assert bounds[0] == pytest.approx(expected, rel=1e-6)


def test_required_degree_and_transition():
    import pandas as pd

    errors = pd.DataFrame({"length": [100] * 6, "bound": [1, 1, 1, 3, 3, 3], "degree": [1, 4, 8] * 2,
                           "rank": [5, 70, 495] * 2, "relative_error": [0.1, 1e-3, 1e-9, 0.5, 0.1, 1e-3]})
    required = attention.required_degrees(errors)
    assert required.degree.tolist() == [4, 8] and required.cheaper_than_exact.tolist() == [True, False]
    transition = attention.transition_bounds(required)
    assert transition.transition_bound.tolist() == [3] and transition.sqrt_log_length.iloc[0] == math.sqrt(math.log(100))


def test_features_do_not_depend_on_the_chunking():
    x = torch.randn(9, 3, dtype=torch.float64)
    # other chunk shapes may sum in another order: equal to float64 rounding, not bit for bit
    torch.testing.assert_close(attention.taylor_features(x, 5, chunk=7), attention.taylor_features(x, 5, chunk=10_000),
                               rtol=1e-12, atol=0)


def test_attention_statistics_tell_a_shift_from_an_input_dependent_prompt(tiny_data):
    from promptmem.backbones import random_backbone
    from tests.conftest import TINY

    statistics = {}
    for scale in (0.001, 0.3):
        backbone = random_backbone(seed=0, **{**TINY, "init_scale": scale})
        statistics[scale] = attention.prompt_attention_statistics(SoftPromptModel(backbone, 3, seed=0),
                                                                  tiny_data.inputs, chunk=10)
    uniform, selective = statistics[0.001], statistics[0.3]
    # tiny weights: attention logits vanish, every position weighs 1 / (p + N) for every input
    assert all(value > 0.999 for value in uniform["entropy"])
    assert uniform["prompt_mass"] == pytest.approx([3 / 7] * 2, abs=1e-3)
    assert all(value < 1e-3 for value in uniform["prompt_spread"])
    assert all(value < 0.9 for value in selective["entropy"]) and all(value > 0.02 for value in selective["prompt_spread"])
    assert all(s > u for s, u in zip(selective["bound"], uniform["bound"]))


def test_attention_statistics_do_not_depend_on_the_chunking(tiny_backbone, tiny_data):
    model = SoftPromptModel(tiny_backbone, 3, seed=0)
    whole, chunked = (attention.prompt_attention_statistics(model, tiny_data.inputs, chunk=c) for c in (512, 5))
    for name in whole:
        assert whole[name] == pytest.approx(chunked[name], rel=1e-5, abs=1e-7), name
