"""Sweeps: a grid of run configs, one function that runs a config, and a results store that survives crashes.

Each finished config becomes one row of a CSV file (its config, its metrics, the device, the versions, the
seconds). The file is rewritten whole into a temporary file and moved over the old one, so a crash leaves
either the old or the new file, never half of one. Rerunning a sweep skips the configs already in the file.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import itertools
import json
import os
import platform
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
import transformers
from tqdm.auto import tqdm

from . import backbones, data, spectra
from .attention import prompt_attention_statistics
from .batched import Run, train_together
from .model import PROMPT_INITS, SoftPromptModel
from .training import PRECISIONS, TrainResult, default_device, select_precision, train

METHODS = ("prompt", "scratch")  # soft prompt on a frozen backbone | all weights of a fresh model trained
# Text columns of a results row beside the config's own: read back as text, as pandas would turn an all-digit
# config_id into an int (and the config's labels "true" into a bool).
# Set (to anything but 0) by `make figures`: notebooks re-plot from results/ and nothing may train or measure anew.
REPLOT_ENV = "PROMPTMEM_REPLOT"
# The version of a results row's columns, stored in each row; raised whenever a row gains or changes a column. Rows
# of an older version run again (their missing columns would read as NaN); rows of a newer one are refused.
RESULTS_SCHEMA = 2  # 2: held-out accuracy, accuracy curves, attention statistics
# Per-layer attention statistics of a trained prompt (see attention.prompt_attention_statistics), as JSON lists
ATTENTION_COLUMNS = {"entropy": "attention_entropy", "prompt_mass": "prompt_attention_mass",
                     "prompt_spread": "prompt_attention_spread", "bound": "prompt_qk_bound"}
RESULT_TEXT_COLUMNS = ("config_id", "status", "precision_used", "device", "torch_version", "transformers_version",
                       "initial_prompt_singular_values", "prompt_singular_values", "prompt_update_singular_values",
                       "evaluations", *ATTENTION_COLUMNS.values())


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
        fields = {name: value for name, value in dataclasses.asdict(self).items() if value is not None}
        canonical = json.dumps(fields, sort_keys=True)
        return hashlib.sha1(canonical.encode()).hexdigest()[:12]

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
        for name in ("n", "seq_len", "epochs", "num_layers", "hidden_size", "num_heads", "ffn_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
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
        for name, allowed, within in (("init_scale", "(0, 100]", lambda v: 0 < v <= 100),
                                      ("lr", "(0, 10)", lambda v: 0 < v < 10),
                                      ("weight_decay", "[0, 10]", lambda v: 0 <= v <= 10)):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not within(value):
                raise ValueError(f"{name} must be a number in {allowed}, got {value!r}")
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
        different = {name: (getattr(self, name), getattr(expected, name)) for name in _CHECKPOINT_FIELDS
                     if getattr(self, name) != getattr(expected, name)}
        if different:
            raise ValueError(f"the fields {different} ((given, checkpoint's)) differ from the checkpoint "
                             f"{self.model_name}: build the config with checkpoint_base")


_CHECKPOINT_FIELDS = ("architecture", "num_layers", "hidden_size", "num_heads", "ffn_size")


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


def _backbone_arguments(config: RunConfig) -> dict:
    return dict(architecture=config.architecture, init_scale=config.init_scale, seed=config.backbone_seed,
                num_layers=config.num_layers, hidden_size=config.hidden_size, num_heads=config.num_heads,
                ffn_size=config.ffn_size)


@functools.lru_cache(maxsize=4)
def _frozen_backbone(**arguments) -> backbones.Backbone:
    return backbones.random_backbone(**arguments)


@functools.lru_cache(maxsize=4)
def _frozen_checkpoint(model_name: str, weights: str, init_scale: float | None, seed: int) -> backbones.Backbone:
    return backbones.pretrained_backbone(model_name, weights=weights, init_scale=init_scale, seed=seed)


def backbone_for(config: RunConfig) -> backbones.Backbone:
    """The frozen backbone a prompt config tunes; shared by every run of a sweep, as nothing trains it."""
    if config.model_name is not None:
        return _frozen_checkpoint(config.model_name, config.weights,
                                  config.init_scale if config.weights == "random" else None, config.backbone_seed)
    return _frozen_backbone(**_backbone_arguments(config))


@functools.lru_cache(maxsize=16)
def _dataset(dataset, n, seq_len, seed, labels, **options) -> data.PairData:
    return data.make_dataset(dataset, n, seq_len, seed=seed, labels=labels, **options)


def _tokenizer_source(config: RunConfig) -> str | None:
    return None if config.model_name is None else backbones.checkpoint_source(config.model_name)


def data_for(config: RunConfig) -> data.PairData:
    """The pairs a config memorizes, cut by the backbone's tokenizer. Low-rank tokens get the std of the random word
    embeddings (init_scale), as real tokens have."""
    options = dict(rank=config.rank, width=config.hidden_size, scale=config.init_scale) \
        if config.dataset == "low_rank" else dict(tokenizer=_tokenizer_source(config))
    return _dataset(config.dataset, config.n, config.seq_len, config.seed, config.labels, **options)


@functools.lru_cache(maxsize=16)
def _held_out(dataset, test_n, seq_len, seed, tokenizer, train_n) -> data.PairData:
    train_inputs = _dataset(dataset, train_n, seq_len, seed, "true", tokenizer=tokenizer).inputs
    return data.held_out_texts(dataset, test_n, seq_len, train_inputs, seed=seed, tokenizer=tokenizer)


def test_data_for(config: RunConfig) -> data.PairData | None:
    """The config's held-out pairs (None without test_n): none of them equals one of its training inputs."""
    if config.test_n is None:
        return None
    return _held_out(config.dataset, config.test_n, config.seq_len, config.seed, _tokenizer_source(config), config.n)


def build_model(config: RunConfig) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    """The model a config trains and the data it memorizes: (model, inputs, labels)."""
    pairs = data_for(config)
    inputs = pairs.inputs
    if config.method == "prompt":
        model = SoftPromptModel(backbone_for(config), config.prompt_len, generation_steps=config.generation_steps or 0,
                                init=config.prompt_init, seed=config.seed)
    else:
        vocab_size = backbones.ROBERTA_VOCAB_SIZE
        if config.compact_vocab:
            inputs, vocab_size = data.compact_vocabulary(inputs)
        model = backbones.random_backbone(vocab_size=vocab_size, trainable=True, **_backbone_arguments(config))
    return model, inputs, pairs.labels


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def _setup(config: RunConfig) -> tuple[torch.nn.Module, torch.Tensor | None, dict]:
    """The model a config trains, its initial prompt (None for scratch) and its training arguments, data included:
    the same for a run alone (`training.train`) and in a batch (`batched.Run`)."""
    config.validate()
    model, inputs, labels = build_model(config)
    initial_prompt = model.prompt.detach().clone() if config.method == "prompt" else None
    held_out = test_data_for(config)
    arguments = dict(inputs=inputs, labels=labels, epochs=config.epochs, lr=config.lr, batch_size=config.batch_size,
                     weight_decay=config.weight_decay, early_stop=config.early_stop, seed=config.seed,
                     test_data=None if held_out is None else (held_out.inputs, held_out.labels),
                     eval_every=config.eval_every)
    return model, initial_prompt, arguments


def train_config(config: RunConfig, device: torch.device | None = None, progress: bool = False,
                 **checkpointing) -> tuple[torch.nn.Module, torch.Tensor | None, TrainResult]:
    """Build and train one config: (the trained model, its initial prompt or None, the training result). Runs are
    deterministic on the CPU, so training a finished config again gives back its prompt exactly. `checkpointing`:
    `checkpoint` and `checkpoint_every`, as for `train`."""
    model, initial_prompt, arguments = _setup(config)
    result = train(model, **arguments, precision=config.precision, device=device or default_device(),
                   progress=progress, **checkpointing)
    return model, initial_prompt, result


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


def run_config(config: RunConfig, device: torch.device | None = None, progress: bool = False,
               **checkpointing) -> dict:
    """Train one config and return its results row."""
    device = device or default_device()
    model, initial_prompt, result = train_config(config, device, progress, **checkpointing)
    return results_row(config, model, initial_prompt, result, device)


def results_row(config: RunConfig, model, initial_prompt: torch.Tensor | None, result: TrainResult,
                device: torch.device) -> dict:
    """The results row of a trained config: its fields, its metrics, where and how long it ran, and its prompt's
    spectra and attention statistics."""
    return {
        "config_id": config.config_id, "results_schema": RESULTS_SCHEMA, **dataclasses.asdict(config),
        "final_accuracy": result.final_accuracy, "final_loss": result.final_loss, "epochs_run": result.epochs,
        "status": result.status, "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "precision_used": result.precision, "device": device_name(device), "torch_version": torch.__version__,
        "transformers_version": transformers.__version__, "seconds": round(result.seconds, 3),
        "test_accuracy": result.test_accuracy,
        "evaluations": json.dumps(result.evaluations) if config.eval_every is not None else "",
        # singular values of the prompt before and after training and of the change, as JSON lists ('[]' for scratch)
        **_prompt_spectra(initial_prompt, model.prompt.detach() if initial_prompt is not None else None),
        **_attention_columns(config, model),
    }


def _attention_columns(config: RunConfig, model) -> dict:
    """The trained prompt's attention statistics per layer, as JSON lists ('' for scratch runs and causal models)."""
    if config.method != "prompt" or model.backbone.is_causal:
        return {column: "" for column in ATTENTION_COLUMNS.values()}
    statistics = prompt_attention_statistics(model, data_for(config).inputs.to(model.prompt.device))
    return {column: json.dumps([float(f"{value:.6g}") for value in statistics[name]])
            for name, column in ATTENTION_COLUMNS.items()}


def _prompt_spectra(initial: torch.Tensor | None, trained: torch.Tensor | None) -> dict:
    pairs = {"initial_prompt_singular_values": initial, "prompt_singular_values": trained,
             "prompt_update_singular_values": None if trained is None else trained.cpu() - initial.cpu()}
    return {name: _singular_values_json(matrix) for name, matrix in pairs.items()}


def _singular_values_json(matrix: torch.Tensor | None) -> str:
    if matrix is None:
        return "[]"
    return json.dumps([float(f"{value:.6g}") for value in spectra.singular_values(matrix)])


def _column_types() -> dict:
    """Read types from RunConfig's field types: its text fields as text, its optional ints as nullable ints."""
    types = {name: str for name in RESULT_TEXT_COLUMNS} | {"results_schema": "Int64"}
    for field in dataclasses.fields(RunConfig):
        if field.type in ("str", "str | None"):
            types[field.name] = str
        elif field.type == "int | None":
            types[field.name] = "Int64"
    return types


def write_atomically(path: str | os.PathLike, write) -> None:
    """`write(handle)` into a temporary file beside `path`, synced, then renamed over `path`: a crash leaves the old
    file or the new one, never half of one (atomic on POSIX and Windows)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(temporary, "w", newline="") as handle:
        write(handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


class ResultsStore:
    """A CSV of results rows, one per finished config, keyed by `config_id`."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def load(self) -> pd.DataFrame:
        if not self.path.exists():
            return pd.DataFrame()
        frame = pd.read_csv(self.path, dtype=_column_types())
        if len(frame) and "config_id" not in frame.columns:
            raise ValueError(f"{self.path} is not a promptmem results file (no config_id column)")
        newest = frame["results_schema"].max() if "results_schema" in frame.columns and len(frame) else None
        if newest is not None and newest > RESULTS_SCHEMA:
            raise ValueError(f"{self.path} holds rows of results schema {newest}, written by a newer promptmem than "
                             f"this one (schema {RESULTS_SCHEMA}): upgrade promptmem, or move the file away")
        return frame

    def finished_ids(self) -> set[str]:
        """The configs whose rows this version wrote (schema RESULTS_SCHEMA): older rows do not count as finished."""
        frame = self.load()
        if not len(frame) or "results_schema" not in frame.columns:
            return set()
        return set(frame.loc[frame["results_schema"].fillna(0) == RESULTS_SCHEMA, "config_id"])

    def older_ids(self) -> set[str]:
        """The configs whose rows an older version wrote (no results_schema, or a lower one)."""
        frame = self.load()
        if not len(frame):
            return set()
        if "results_schema" not in frame.columns:
            return set(frame["config_id"])
        return set(frame.loc[frame["results_schema"].fillna(0) < RESULTS_SCHEMA, "config_id"])

    def put(self, row: dict) -> None:
        """Add a row, replacing any earlier row of the same config (`write_atomically`)."""
        frame = self.load()
        if len(frame):
            frame = frame[frame["config_id"] != row["config_id"]]
        frame = pd.concat([frame, pd.DataFrame([row])], ignore_index=True)
        write_atomically(self.path, lambda handle: frame.to_csv(handle, index=False))


def run_sweep(configs: list[RunConfig], results_path: str | os.PathLike, *, recompute: bool = False,
              device: torch.device | None = None, progress: bool = True, checkpoint_every: int | None = None,
              batched: bool | None = None, tokens_per_pass: int | None = None) -> pd.DataFrame:
    """Run every config not yet in the results file (all of them with `recompute`); return their rows.

    All configs are validated before the first one trains. With `batched` (the default on a CUDA GPU), the prompt
    configs that can share a pass (`shared_pass_key`) train together (`batched.train_together`, which never waits
    for the host inside an epoch, so a lone encoder run goes there too), in chunks of at most `tokens_per_pass`
    tokens per pass (default: what the GPU's free memory holds, `default_tokens_per_pass`); each run's row is
    stored as soon as it ends. Others (causal models, training from scratch) train one at a time. With
    `checkpoint_every`, each run saves its state that often into `.<results name>.checkpoints/<config_id>.pt`
    beside the results file, and a rerun of an interrupted sweep continues the interrupted run from there instead
    of from epoch 0.
    """
    if not isinstance(recompute, bool):
        raise ValueError(f"recompute must be True or False, got {recompute!r}")
    if batched is not None and not isinstance(batched, bool):
        raise ValueError(f"batched must be None (on a CUDA GPU only), True or False, got {batched!r}")
    if tokens_per_pass is not None and (not isinstance(tokens_per_pass, int) or tokens_per_pass < 1):
        raise ValueError(f"tokens_per_pass must be None or an integer >= 1, got {tokens_per_pass!r}")
    for config in configs:
        config.validate()
    device = device or default_device()
    batched = device.type == "cuda" if batched is None else batched
    store = ResultsStore(results_path)
    done = set() if recompute else store.finished_ids()
    todo = [config for config in dict.fromkeys(configs) if config.config_id not in done]
    if todo and replotting():
        raise RuntimeError(f"{REPLOT_ENV} is set (re-plot from results/ only), but {len(todo)} of these configs are "
                           f"not finished in {results_path}: run `make reproduce` (or the notebook) to compute them")
    older = store.older_ids() & {config.config_id for config in todo}
    if older and not recompute:
        print(f"{len(older)} rows of {results_path} were written by an older promptmem (results schema below "
              f"{RESULTS_SCHEMA}, columns missing): they run again")
    checkpoints = Path(results_path).parent / f".{Path(results_path).stem}.checkpoints"

    def checkpointing(config: RunConfig) -> dict:
        return {} if checkpoint_every is None else dict(checkpoint=checkpoints / f"{config.config_id}.pt",
                                                        checkpoint_every=checkpoint_every)

    bar = tqdm(total=len(todo), desc=f"{Path(results_path).stem}: {len(todo)} to run", disable=not progress)
    for group in shared_pass_groups(todo) if batched else [[config] for config in todo]:
        if shared_pass_key(group[0]) is None or not batched:
            store.put(run_config(group[0], device, **checkpointing(group[0])))
            bar.update(1)
            continue
        budget = tokens_per_pass or default_tokens_per_pass(group[0], device)
        chunks = plan_chunks(group, budget)
        if len(group) > 1:
            sizes = ", ".join(str(len(chunk)) for chunk in chunks)
            print(f"{len(group)} runs on one backbone (N = {group[0].seq_len}) train together: {len(chunks)} "
                  f"chunk(s) of {sizes} runs, at most {budget} tokens per pass")
        for chunk in chunks:
            _train_together(chunk, store, device, checkpointing, bar)
    bar.close()
    wanted = [config.config_id for config in configs]
    frame = store.load()
    return frame.set_index("config_id").loc[list(dict.fromkeys(wanted))].reset_index()


def replotting() -> bool:
    """Whether PROMPTMEM_REPLOT asks for figures from results/ alone."""
    return os.environ.get(REPLOT_ENV, "").strip() not in ("", "0")


def stored_table(path: str | os.PathLike, compute, settings) -> pd.DataFrame:
    """A measurement that is not a training run (error grids, timings), kept in results/: read back when the file
    holds it for these `settings` (any value with a stable repr: a profile's settings, a device), computed and
    saved otherwise (never while re-plotting)."""
    path = Path(path)
    settings_id = hashlib.sha1(repr(settings).encode()).hexdigest()[:12]
    if path.exists():
        stored = pd.read_csv(path)
        if "settings_id" in stored.columns and (stored.settings_id == settings_id).all():
            return stored.drop(columns="settings_id")
    if replotting():
        raise RuntimeError(f"{REPLOT_ENV} is set (re-plot from results/ only), but {path} does not hold these "
                           f"settings: run `make reproduce` (or the notebook) to measure them")
    table = compute().assign(settings_id=settings_id)
    write_atomically(path, lambda handle: table.to_csv(handle, index=False))
    return pd.read_csv(path).drop(columns="settings_id")  # as a later read gives it: the same figures either way


def shared_pass_key(config: RunConfig):
    """Configs with the same key can train in one pass: prompt runs on the same frozen encoder with the same N and
    precision (with minibatches also the same n and batch size, so that their steps line up). None: alone."""
    if config.method != "prompt" or config.architecture == "gpt2":
        return None
    backbone = (config.model_name, config.weights, config.init_scale, config.backbone_seed,
                *(getattr(config, name) for name in _CHECKPOINT_FIELDS))
    minibatches = (config.n, config.batch_size) if config.batch_size is not None and config.batch_size < config.n \
        else None
    return backbone, config.seq_len, config.precision, minibatches


def shared_pass_groups(configs: list[RunConfig]) -> list[list[RunConfig]]:
    """The configs grouped by `shared_pass_key`, in the order of their first config; unbatchable ones alone."""
    groups: dict = {}
    for position, config in enumerate(configs):
        key = shared_pass_key(config)
        groups.setdefault(("alone", position) if key is None else key, []).append(config)
    return list(groups.values())


def default_tokens_per_pass(config: RunConfig, device: torch.device) -> int:
    """How many tokens (rows x (p + N)) one training pass may hold. On a GPU: 60% of its free memory over the
    activation memory of a token in forward and backward, per layer about 34 d + 5 heads L bytes in 16 bits
    (Korthikanti et al. 2022), twice that in fp32. On the CPU: 2^16."""
    if device.type != "cuda":
        return 2 ** 16
    free_bytes, _ = torch.cuda.mem_get_info(device)
    length = config.prompt_len + config.seq_len
    per_token = config.num_layers * (34 * config.hidden_size + 5 * config.num_heads * length)
    precision = select_precision(device) if config.precision == "auto" else config.precision
    return int(0.6 * free_bytes / (per_token * (2 if precision == "fp32" else 1)))


# A pass pads every prompt to the longest of its chunk: the real tokens must be at least this share of those computed.
MIN_PASS_EFFICIENCY = 0.75


def plan_chunks(group: list[RunConfig], tokens_per_pass: int) -> list[list[RunConfig]]:
    """The runs of a group, by prompt length, as many per chunk as fit `tokens_per_pass` while padding wastes at most
    1 - MIN_PASS_EFFICIENCY of the pass (a run larger than the budget goes alone)."""
    def rows(config):
        return config.n if config.batch_size is None else min(config.batch_size, config.n)

    def fits(configs):
        padded = sum(map(rows, configs)) * (max(c.prompt_len for c in configs) + configs[0].seq_len)
        real = sum(rows(c) * (c.prompt_len + c.seq_len) for c in configs)
        return padded <= tokens_per_pass and real >= MIN_PASS_EFFICIENCY * padded

    ordered = sorted(group, key=lambda config: config.prompt_len)
    chunks = [[ordered[0]]]
    for config in ordered[1:]:
        if fits(chunks[-1] + [config]):
            chunks[-1].append(config)
        else:
            chunks.append([config])
    return chunks


def _train_together(configs: list[RunConfig], store: ResultsStore, device: torch.device, checkpointing, bar) -> None:
    """Train configs that share a pass together, storing each run's row as it ends."""
    models, initial_prompts, runs = [], [], []
    for config in configs:
        model, initial_prompt, arguments = _setup(config)
        models.append(model)
        initial_prompts.append(initial_prompt)
        runs.append(Run(model=model, **arguments, **checkpointing(config)))

    def store_row(index: int, result: TrainResult) -> None:
        store.put(results_row(configs[index], models[index], initial_prompts[index], result, device))
        bar.update(1)

    train_together(runs, precision=configs[0].precision, device=device, progress=False, on_finish=store_row)


def best_setting(results: pd.DataFrame, column: str):
    """The value of `column` with the highest final accuracy; ties go to the run that memorized in fewer
    epochs, then to the smaller value."""
    ranked = results.sort_values(["final_accuracy", "epochs_run", column], ascending=[False, True, True])
    return ranked[column].iloc[0].item()


def min_prompt_length(results: pd.DataFrame, by: list[str], target: float = 1.0) -> pd.DataFrame:
    """Per setting (the columns `by`), the smallest prompt length whose accuracy reaches `target`.

    Settings where no prompt length reaches it get NaN, and `max_prompt_len_tried` says how far the grid went.
    """
    runs = results[results["method"] == "prompt"]
    rows = []
    for key, group in runs.groupby(by, sort=True):
        reached = group.loc[group["final_accuracy"] >= target - 1e-9, "prompt_len"]
        rows.append({**dict(zip(by, key if isinstance(key, tuple) else (key,))),
                     "min_prompt_len": reached.min() if len(reached) else float("nan"),
                     "max_prompt_len_tried": group["prompt_len"].max()})
    return pd.DataFrame(rows)


def evaluation_curves(rows: pd.DataFrame, keep: list[str]) -> pd.DataFrame:
    """The accuracy curves of runs with `eval_every`: one row per run and evaluated epoch (columns epoch,
    train_accuracy, test_accuracy), with the run's columns `keep` beside them."""
    runs = rows.to_dict("records")
    return pd.concat([pd.DataFrame(json.loads(run["evaluations"])).assign(**{name: run[name] for name in keep})
                      for run in runs], ignore_index=True)


def shortest_memorizing(results: pd.DataFrame, target: float = 1.0, **match) -> pd.DataFrame:
    """Per n, the prompt run of the shortest prompt reaching `target`, among the rows whose columns equal `match`."""
    rows = results[(results["method"] == "prompt") & (results["final_accuracy"] >= target - 1e-9)]
    for column, value in match.items():
        rows = rows[rows[column] == value]
    return rows.sort_values("prompt_len").groupby("n", as_index=False).head(1).sort_values("n")


def prompt_bounds(rows: pd.DataFrame) -> pd.DataFrame:
    """Per prompt run and layer: the max-norm bound B of its trained prompt's queries and keys, as its results row
    stores it (`prompt_qk_bound`, measured by attention.prompt_attention_statistics when the run ended)."""
    measured = [{"config_id": row["config_id"], "dataset": row["dataset"], "labels": row["labels"], "n": row["n"],
                 "prompt_len": row["prompt_len"], "length": row["prompt_len"] + row["seq_len"], "layer": layer,
                 "bound": bound}
                for row in rows.to_dict("records") for layer, bound in enumerate(json.loads(row["prompt_qk_bound"]), 1)]
    return pd.DataFrame(measured, columns=["config_id", "dataset", "labels", "n", "prompt_len", "length", "layer",
                                           "bound"])


def read_results(results_dir: str | os.PathLike, notebook: str) -> pd.DataFrame | None:
    """Another notebook's results table, or None (saying so) when that notebook has not run yet."""
    path = Path(results_dir) / f"{notebook}.csv"
    if not path.exists():
        print(f"{path} is missing (run notebook {notebook}): what needs it shows the theory alone")
        return None
    return ResultsStore(path).load()
