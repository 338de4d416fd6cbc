"""Run configs: `RunConfig` (one training run, checked by `validate` before anything loads, identified by a hash of
its fields), grids of them, and the config of a results row read back."""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
from dataclasses import dataclass

import pandas as pd

from . import backbones, data
from .model import PROMPT_INITS
from .training import PRECISIONS

METHODS = ("prompt", "scratch")  # soft prompt on a frozen backbone | all weights of a fresh model trained


# The numeric fields several configs share: name -> (allowed, as said in the error; the test)
NUMBER_RANGES = {"init_scale": ("(0, 100]", lambda v: 0 < v <= 100), "lr": ("(0, 10)", lambda v: 0 < v < 10),
                 "weight_decay": ("[0, 10]", lambda v: 0 <= v <= 10), "target_error": ("(0, 1)", lambda v: 0 < v < 1)}


def check_counts(config, names) -> None:
    """Raise a ValueError naming the first of the fields `names` of `config` that is not an integer >= 1."""
    for name in names:
        value = getattr(config, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")


def check_numbers(config, names) -> None:
    """Raise a ValueError naming the first of the fields `names` of `config` outside its range in NUMBER_RANGES."""
    for name in names:
        value = getattr(config, name)
        allowed, within = NUMBER_RANGES[name]
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not within(value):
            raise ValueError(f"{name} must be a number in {allowed}, got {value!r}")


def fields_id(config) -> str:
    """A dataclass's id: a hash of its fields, those at None left out."""
    fields = {name: value for name, value in dataclasses.asdict(config).items() if value is not None}
    return hashlib.sha1(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:12]


@dataclass(frozen=True)
class RunConfig:
    """One training run. `prompt_len` is p for method 'prompt' and 0 for 'scratch'.

    Fields left at None are left out of `config_id`: a field added later with default None keeps the ids, and so
    the finished rows, of every earlier config.
    """

    n: int
    prompt_len: int
    seq_len: int = 8
    dataset: str = "imdb"
    labels: str = "true"
    rank: int | None = None  # dataset 'low_rank' only: the dimension the input tokens span
    method: str = "prompt"
    architecture: str = "roberta"  # the frozen backbone: "roberta" (encoder) or "gpt2" (causal decoder)
    # A pretrained checkpoint's architecture (hub name; `checkpoint_base` fills the shape fields from it) with
    # weights "pretrained", "shuffled" (permuted within each tensor) or "random" (drawn afresh at init_scale);
    # None: the random backbone the shape fields describe.
    model_name: str | None = None
    weights: str | None = None
    generation_steps: int | None = None  # causal models: K continuous tokens generated before the readout
    num_layers: int = backbones.ENCODER_2X512["num_layers"]
    hidden_size: int = backbones.ENCODER_2X512["hidden_size"]
    num_heads: int = backbones.ENCODER_2X512["num_heads"]
    ffn_size: int = backbones.ENCODER_2X512["ffn_size"]
    init_scale: float = 0.02
    backbone_seed: int = 0
    compact_vocab: bool = False  # scratch only: embed just the tokens that occur (a small model stays small)
    epochs: int = 1000
    lr: float = 0.005
    batch_size: int | None = None  # None: full batch
    weight_decay: float = 0.01
    prompt_init: str = "vocab"
    seed: int = 0  # draws the data sample, the random labels and the initial prompt
    early_stop: bool = True
    precision: str = "auto"
    test_n: int | None = None  # held-out pairs from the dataset's test split (text datasets, true labels)
    eval_every: int | None = None  # evaluate train and test accuracy every k epochs (the curves over epochs)

    @property
    def config_id(self) -> str:
        return fields_id(self)

    def validate(self) -> None:
        """Raise a ValueError naming the first bad field and what it allows; loads no model."""
        def choice(name, allowed):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {tuple(allowed)}, got {getattr(self, name)!r}")

        choice("method", METHODS)
        if self.model_name is None:
            choice("architecture", backbones.ARCHITECTURES)
        choice("dataset", data.DATASET_NAMES)
        choice("labels", ("random",) if self.dataset == "random_tokens" else data.LABEL_KINDS)
        choice("prompt_init", PROMPT_INITS)
        choice("precision", PRECISIONS)
        check_counts(self, ("n", "seq_len", "epochs", "num_layers", "hidden_size", "num_heads", "ffn_size"))
        if self.method == "prompt" and (not isinstance(self.prompt_len, int) or self.prompt_len < 1):
            raise ValueError(f"prompt_len must be an integer >= 1 for method 'prompt', got {self.prompt_len!r}")
        if self.method == "scratch" and self.prompt_len != 0:
            raise ValueError(f"prompt_len must be 0 for method 'scratch', got {self.prompt_len!r}")
        steps = self.generation_steps
        if (self.architecture == "gpt2") != (steps is not None):
            raise ValueError(f"generation_steps must be set (an integer >= 0) for architecture 'gpt2' and only for "
                             f"it, got generation_steps={steps!r} with architecture {self.architecture!r}")
        if steps is not None and (not isinstance(steps, int) or steps < 0 or (steps and self.method != "prompt")):
            raise ValueError(f"generation_steps must be an integer >= 0 (0 for method 'scratch'), got {steps!r}")
        # a checkpoint's own limit (BERT-style: 512) is checked again when its model is built
        positions = backbones.MAX_SEQUENCE_LENGTH.get(self.architecture, 512)
        if self.seq_len + self.prompt_len + (steps or 0) > positions:
            raise ValueError(f"seq_len + prompt_len + generation_steps (N + p + K) must be at most {positions}, the "
                             f"backbone's positions; got {self.seq_len} + {self.prompt_len} + {steps or 0}")
        check_numbers(self, ("init_scale", "lr", "weight_decay"))
        if self.batch_size is not None and (not isinstance(self.batch_size, int) or self.batch_size < 1):
            raise ValueError(f"batch_size must be None (full batch) or an integer >= 1, got {self.batch_size!r}")
        if (self.dataset == "low_rank") != (self.rank is not None):
            raise ValueError(f"rank must be set (an integer in [1, hidden_size]) for dataset 'low_rank' and only "
                             f"for it, got rank={self.rank!r} with dataset {self.dataset!r}")
        if self.rank is not None and (not isinstance(self.rank, int) or not 1 <= self.rank <= self.hidden_size):
            raise ValueError(f"rank must be an integer in [1, hidden_size={self.hidden_size}], got {self.rank!r}")
        if self.compact_vocab and (self.method != "scratch" or self.dataset == "low_rank"):
            raise ValueError("compact_vocab is for method 'scratch' on token data only")
        for name in ("test_n", "eval_every"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise ValueError(f"{name} must be None or an integer >= 1, got {value!r}")
        if self.test_n is not None and (self.dataset not in data.TEXT_DATASETS or self.labels != "true"):
            raise ValueError(f"test_n is for text datasets {tuple(data.TEXT_DATASETS)} with true labels, got dataset "
                             f"{self.dataset!r} with labels {self.labels!r}")
        self._validate_checkpoint()
        if self.dataset in data.TEXT_DATASETS:
            available = len(data.load_split(self.dataset, "train"))
            if self.n > available:
                raise ValueError(f"n must be at most {available} (the size of {self.dataset}/train), got {self.n}")
            test_split = data.TEXT_DATASETS[self.dataset][2][1]
            available = len(data.load_split(self.dataset, test_split))
            if self.test_n is not None and self.test_n > available:
                raise ValueError(f"test_n must be at most {available} (the size of {self.dataset}/{test_split}), "
                                 f"got {self.test_n}")

    def _validate_checkpoint(self) -> None:
        if (self.model_name is None) != (self.weights is None):
            raise ValueError(f"model_name and weights go together (weights one of {backbones.WEIGHT_KINDS}), got "
                             f"model_name={self.model_name!r} with weights={self.weights!r}")
        if self.model_name is None:
            return
        if self.weights not in backbones.WEIGHT_KINDS:
            raise ValueError(f"weights must be one of {backbones.WEIGHT_KINDS}, got {self.weights!r}")
        if self.method != "prompt" or self.dataset not in data.TEXT_DATASETS:
            raise ValueError(f"a model_name backbone is for method 'prompt' on the text datasets "
                             f"{tuple(data.TEXT_DATASETS)}, got method {self.method!r} on {self.dataset!r}")
        expected = checkpoint_base(self, self.model_name, self.weights)
        different = {name: (getattr(self, name), getattr(expected, name)) for name in CHECKPOINT_FIELDS
                     if getattr(self, name) != getattr(expected, name)}
        if different:
            raise ValueError(f"the fields {different} ((given, checkpoint's)) differ from the checkpoint "
                             f"{self.model_name}: build the config with checkpoint_base")


CHECKPOINT_FIELDS = ("architecture", "num_layers", "hidden_size", "num_heads", "ffn_size")


def checkpoint_base(base: RunConfig, model_name: str, weights: str) -> RunConfig:
    """`base` on the architecture of a pretrained checkpoint: its shape fields read from the checkpoint's config, and
    for pretrained or shuffled weights the init scale set to the checkpoint's (that of the new task head alone)."""
    config = backbones.checkpoint_config(model_name)
    shape = dict(architecture=config.model_type, num_layers=config.num_hidden_layers, hidden_size=config.hidden_size,
                 num_heads=config.num_attention_heads, ffn_size=config.intermediate_size)
    if weights != "random":
        shape["init_scale"] = config.initializer_range
    return dataclasses.replace(base, model_name=model_name, weights=weights, **shape)


def grid(base: RunConfig, **axes) -> list[RunConfig]:
    """Every combination of the values given per field, on top of `base`: grid(base, n=[..], prompt_len=[..])."""
    names = list(axes)
    return [dataclasses.replace(base, **dict(zip(names, values))) for values in itertools.product(*axes.values())]


def config_from_row(row) -> RunConfig:
    """The RunConfig of a results row (a dict or a pandas row), checked against the row's config_id."""
    convert = {"int": int, "float": float, "bool": bool, "str": str}
    values = {}
    for field in dataclasses.fields(RunConfig):
        value = row.get(field.name)
        if value is None or pd.isna(value):
            if "None" not in field.type:
                raise ValueError(f"the results row has no {field.name}: it was written by another version of "
                                 f"promptmem; rerun its config")
            values[field.name] = None
        else:
            values[field.name] = convert[field.type.split(" |")[0]](value)
    config = RunConfig(**values)
    if row.get("config_id") is not None and config.config_id != row.get("config_id"):
        raise ValueError(f"the row's config_id {row.get('config_id')} does not match its fields: it was written by "
                         f"another version of promptmem; rerun its config")
    return config
