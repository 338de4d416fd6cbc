"""Hu et al.'s object (notebook 08): a frozen random Transformer of one attention layer with one head and a ReLU MLP
after it, on continuous d-dimensional tokens, read out at all L positions; a soft prompt of p tokens fitted to
sequence-to-sequence targets.

Two tasks. `memorize`: n inputs X in [0, 1]^(L x d) (uniform, or every cell centre of a grid: `grid_points` per
coordinate, n = grid_points^(dL)) with targets Y drawn uniformly from the same cube; the error of a pair is the
largest absolute error over its L x d entries (the sup norm). `lipschitz`: the targets are a random map f with a
known Lipschitz bound (`LipschitzMap`); the prompt is fitted on n inputs and judged on `test_n` held-out ones.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass

import pandas as pd
import torch
from torch import nn

from .configs import check_counts, check_numbers, fields_id
from .rows import RESULTS_SCHEMA, device_name
from .store import ResultsStore

TASKS = ("memorize", "lipschitz")
MODEL_SEED_OFFSET = 1_000_003  # the backbone and prompt draw from seed + this, the data from the seed


@dataclass(frozen=True)
class SingleLayerConfig:
    """One prompt fitted on the frozen 1-layer, 1-head Transformer. Training stops once the sup error on the training
    pairs is at most `target_error`."""

    task: str
    n: int
    dim: int  # d, the token dimension
    length: int  # L, the data tokens per sequence
    prompt_len: int
    width: int | None = None  # the model's width D >= d (data tokens zero-padded to it); None: D = d
    mlp_width: int = 256
    init_scale: float = 1.0
    grid_points: int | None = None  # task 'memorize': inputs on a grid of this many points per coordinate
    lipschitz: float | None = None  # task 'lipschitz' only: the target map's Lipschitz bound
    test_n: int | None = None  # task 'lipschitz' only: held-out inputs
    epochs: int = 2000
    lr: float = 0.05
    target_error: float = 0.01
    seed: int = 0

    @property
    def config_id(self) -> str:
        return fields_id(self)

    def validate(self) -> None:
        """Raise a ValueError naming the first bad field and its allowed range, before anything is built."""
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {self.task!r}")
        check_counts(self, ("n", "dim", "length", "prompt_len", "mlp_width", "epochs"))
        check_numbers(self, ("init_scale", "lr", "target_error"))
        if self.width is not None and (not isinstance(self.width, int) or self.width < self.dim):
            raise ValueError(f"width must be None or an integer >= dim ({self.dim}), got {self.width!r}")
        is_map = self.task == "lipschitz"
        if is_map != (self.lipschitz is not None) or is_map != (self.test_n is not None):
            raise ValueError(f"lipschitz and test_n must be set for task 'lipschitz' and only for it, got "
                             f"lipschitz={self.lipschitz!r}, test_n={self.test_n!r} with task {self.task!r}")
        if self.lipschitz is not None and not (isinstance(self.lipschitz, (int, float)) and 0 < self.lipschitz <= 100):
            raise ValueError(f"lipschitz must be a number in (0, 100], got {self.lipschitz!r}")
        if self.test_n is not None and (not isinstance(self.test_n, int) or self.test_n < 1):
            raise ValueError(f"test_n must be an integer >= 1, got {self.test_n!r}")
        if self.grid_points is not None:
            if self.task != "memorize" or not isinstance(self.grid_points, int) or self.grid_points < 2:
                raise ValueError(f"grid_points must be None or, for task 'memorize', an integer >= 2, got "
                                 f"{self.grid_points!r} with task {self.task!r}")
            cells = self.grid_points ** (self.dim * self.length)
            if self.n != cells:
                raise ValueError(f"n must be grid_points^(dim * length) = {cells} on a grid, got {self.n}")


def grid_inputs(grid_points: int, dim: int, length: int) -> torch.Tensor:
    """Every cell centre of a grid with `grid_points` points per coordinate in [0, 1]^(length x dim)."""
    centres = (torch.arange(grid_points) + 0.5) / grid_points
    return torch.cartesian_prod(*[centres] * (dim * length)).reshape(-1, length, dim)


class SingleLayerTransformer(nn.Module):
    """x + attention(x), then h + MLP(h): one head (queries, keys, values and output D x D), a ReLU MLP of width w
    with biases; no LayerNorm. Entries drawn from N(0, init_scale^2 / fan_in); all frozen (buffers, not parameters)."""

    def __init__(self, width: int, mlp_width: int, init_scale: float, generator: torch.Generator):
        super().__init__()

        def draw(*shape, fan_in):
            return torch.randn(*shape, generator=generator) * init_scale / math.sqrt(fan_in)

        for name in ("query", "key", "value", "out"):
            self.register_buffer(name, draw(width, width, fan_in=width))
        self.register_buffer("hidden", draw(width, mlp_width, fan_in=width))
        self.register_buffer("hidden_bias", draw(mlp_width, fan_in=1))
        self.register_buffer("output", draw(mlp_width, width, fan_in=mlp_width))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:  # (batch, length, D) -> the same shape
        scores = (tokens @ self.query) @ (tokens @ self.key).transpose(-1, -2) / math.sqrt(tokens.shape[-1])
        attended = tokens + torch.softmax(scores, dim=-1) @ (tokens @ self.value) @ self.out
        return attended + torch.relu(attended @ self.hidden + self.hidden_bias) @ self.output


class PromptedSingleLayer(nn.Module):
    """p trainable tokens of the model's width D in front of the data tokens (every position attends to every other).
    A data token is zero-padded from d to D, and its padding carries a frozen random code of its position, so that
    positions differ (with D = d there is none, as in the theorem's object). The output is the backbone's first d
    coordinates at the L data positions."""

    def __init__(self, backbone: SingleLayerTransformer, dim: int, length: int, prompt_len: int,
                 generator: torch.Generator):
        super().__init__()
        self.backbone, self.dim = backbone, dim
        width = backbone.query.shape[0]
        positions = torch.rand(length, width, generator=generator)
        positions[:, :dim] = 0
        self.register_buffer("positions", positions)
        self.prompt = nn.Parameter(torch.rand(prompt_len, width, generator=generator))  # like the data: in [0, 1]

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:  # (batch, L, d) -> the same shape
        tokens = nn.functional.pad(inputs, (0, self.positions.shape[1] - self.dim)) + self.positions
        prompt = self.prompt.expand(inputs.shape[0], -1, -1)
        return self.backbone(torch.cat([prompt, tokens], dim=1))[:, self.prompt.shape[0]:, :self.dim]

    def prompt_query_key_bound(self) -> float:
        """B of the prompt: the largest absolute entry of its queries and keys (Hu et al.'s efficiency criterion)."""
        return float(torch.cat([self.prompt @ self.backbone.query, self.prompt @ self.backbone.key]).abs().max())


class LipschitzMap(nn.Module):
    """A random map f(X) = 1/2 + c · tanh((x - 1/2) A + b) A^T on flattened sequences x in R^(L d), A (Ld x h) with
    orthonormal rows (spectral norm 1) and b ~ N(0, 1/4): tanh is 1-Lipschitz, so c bounds f's Lipschitz constant
    (Euclidean norms on both sides); its Jacobian c A diag(tanh') A^T has norm near c where tanh' is near 1."""

    def __init__(self, dim: int, length: int, lipschitz: float, generator: torch.Generator, hidden: int = 64):
        super().__init__()
        size = dim * length
        self.register_buffer("first", torch.linalg.qr(torch.randn(hidden, size, generator=generator)).Q.T)
        self.register_buffer("bias", 0.5 * torch.randn(hidden, generator=generator))
        self.lipschitz = lipschitz

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        flat = inputs.reshape(inputs.shape[0], -1) - 0.5
        return (0.5 + self.lipschitz * torch.tanh(flat @ self.first + self.bias) @ self.first.T).reshape(inputs.shape)


def measured_lipschitz(function, inputs: torch.Tensor) -> float:
    """The largest spectral norm of f's Jacobian over `inputs`: a lower bound on f's Lipschitz constant, and equal to
    it when the supremum is attained near one of them."""
    norms = []
    for point in inputs:
        jacobian = torch.autograd.functional.jacobian(lambda x: function(x[None])[0].reshape(-1), point)
        norms.append(torch.linalg.matrix_norm(jacobian.reshape(point.numel(), point.numel()), ord=2))
    return float(torch.stack(norms).max())


def sup_errors(predictions: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per pair, the largest absolute error over its L x d entries."""
    return (predictions - targets).abs().flatten(1).amax(dim=1)


def build(config: SingleLayerConfig):
    """The prompted model and its data: (model, train inputs, train targets, test inputs, test targets, target map).
    The data come from the seed alone, so configs that differ only in the model (p, width, init scale) share them."""
    data_generator = torch.Generator().manual_seed(config.seed)
    shape = (config.n, config.length, config.dim)
    if config.grid_points is not None:
        inputs = grid_inputs(config.grid_points, config.dim, config.length)
    else:
        inputs = torch.rand(shape, generator=data_generator)
    if config.task == "memorize":
        target_map, test_inputs, test_targets = None, None, None
        targets = torch.rand(shape, generator=data_generator)
    else:
        target_map = LipschitzMap(config.dim, config.length, config.lipschitz, data_generator)
        test_inputs = torch.rand(config.test_n, config.length, config.dim, generator=data_generator)
        with torch.no_grad():
            targets, test_targets = target_map(inputs), target_map(test_inputs)
    model_generator = torch.Generator().manual_seed(MODEL_SEED_OFFSET + config.seed)
    backbone = SingleLayerTransformer(config.width or config.dim, config.mlp_width, config.init_scale, model_generator)
    model = PromptedSingleLayer(backbone, config.dim, config.length, config.prompt_len, model_generator)
    return model, inputs, targets, test_inputs, test_targets, target_map


def fit(config: SingleLayerConfig) -> dict:
    """Fit the prompt by full-batch AdamW on the mean squared error (no weight decay); return the results row. The
    sup error that counts is the lowest reached on the training pairs at any epoch (`best_max_error`), and the prompt
    of that epoch is the one judged on held-out inputs. `constant_max_error` is the sup error of the best constant
    output (the midpoint of each entry's range over the training targets): what a prompt must beat to fit anything."""
    config.validate()
    threads = torch.get_num_threads()
    # matrices of a few dozen rows: a second thread only adds synchronization (fits ran 10x slower with 2 threads
    # than with 1 while other work shared the 2 cores)
    torch.set_num_threads(1)
    try:
        return _fit(config)
    finally:
        torch.set_num_threads(threads)


def _fit(config: SingleLayerConfig) -> dict:
    start = time.perf_counter()
    model, inputs, targets, test_inputs, test_targets, target_map = build(config)
    optimizer = torch.optim.AdamW([model.prompt], lr=config.lr, weight_decay=0.0)
    with torch.no_grad():
        initial_max_error = float(sup_errors(model(inputs), targets).max())
    best_max_error, best_prompt, epochs_run = initial_max_error, model.prompt.detach().clone(), 0
    for epoch in range(1, config.epochs + 1):
        loss = torch.mean((model(inputs) - targets) ** 2)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        epochs_run = epoch
        with torch.no_grad():
            max_error = float(sup_errors(model(inputs), targets).max())
        if max_error < best_max_error:
            best_max_error, best_prompt = max_error, model.prompt.detach().clone()
        if best_max_error <= config.target_error:
            break
    constant = (targets.amax(dim=0) + targets.amin(dim=0)) / 2
    with torch.no_grad():
        model.prompt.copy_(best_prompt)
        row = {"config_id": config.config_id, "results_schema": RESULTS_SCHEMA, **asdict(config),
               "initial_max_error": initial_max_error, "best_max_error": best_max_error,
               "constant_max_error": float(sup_errors(constant.expand_as(targets), targets).max()),
               "final_mse": float(torch.mean((model(inputs) - targets) ** 2)), "epochs_run": epochs_run,
               "status": "fitted" if best_max_error <= config.target_error else "completed",
               "prompt_numbers": model.prompt.numel(), "target_numbers": targets.numel(),
               "prompt_query_key_bound": model.prompt_query_key_bound()}
        if test_inputs is not None:
            test_errors = sup_errors(model(test_inputs), test_targets)
            row.update(test_max_error=float(test_errors.max()), test_mean_error=float(test_errors.mean()),
                       test_constant_max_error=float(sup_errors(constant.expand_as(test_targets), test_targets).max()))
    if target_map is not None:
        row["measured_lipschitz"] = measured_lipschitz(target_map, test_inputs[:64])
    row.update(device=device_name(torch.device("cpu")), torch_version=torch.__version__,
               seconds=time.perf_counter() - start)
    return row


def run_sweep(configs: list[SingleLayerConfig], results_path, recompute: bool = False,
              workers: int | None = None) -> pd.DataFrame:
    """Fit every config not yet in the results file (all of them with `recompute`), storing each row as it ends, so
    an interrupted sweep resumes; return the configs' rows in their order. Each fit takes one thread, so `workers`
    processes fit at once (None: as many as torch's threads, one per core it may use)."""
    workers = torch.get_num_threads() if workers is None else workers
    return ResultsStore(results_path).fill(configs, fit, recompute, workers)


def smallest_prompt(rows: pd.DataFrame, error_column: str, errors, by: list[str]) -> pd.DataFrame:
    """Per group of `by` and per error level ε: the smallest prompt length whose `error_column` is at most ε (NaN when
    none in the grid reaches it)."""
    table = []
    for keys, group in rows.groupby(by):
        for epsilon in errors:
            reached = group.loc[group[error_column] <= epsilon, "prompt_len"]
            table.append({**dict(zip(by, keys if isinstance(keys, tuple) else (keys,))), "epsilon": epsilon,
                          "min_prompt_len": reached.min() if len(reached) else float("nan")})
    return pd.DataFrame(table)
