"""A results row: what a trained config's row holds (its fields, its metrics, the device, the versions, the seconds,
its prompt's spectra and attention statistics), the version of those columns, and the types they read back as."""

from __future__ import annotations

import dataclasses
import json
import re

import torch
import transformers

from . import spectra
from .attention import prompt_attention_statistics
from .building import data_for
from .configs import RunConfig
from .processor import this_processor
from .training import TrainResult

# The version of a results row's columns, stored in each row; raised whenever a row gains or changes a column. Rows
# of an older version run again (their missing columns would read as NaN); rows of a newer one are refused.
RESULTS_SCHEMA = 3  # 2: held-out accuracy, accuracy curves, attention statistics; 3: forward_used, fp32 accuracies
# Per-layer attention statistics of a trained prompt (see attention.prompt_attention_statistics), as JSON lists
ATTENTION_COLUMNS = {"entropy": "attention_entropy", "prompt_mass": "prompt_attention_mass",
                     "prompt_spread": "prompt_attention_spread", "bound": "prompt_qk_bound"}
# Columns holding JSON ('' where a row has none): the prompt's spectra, the accuracy curves, attention statistics
JSON_COLUMNS = ("initial_prompt_singular_values", "prompt_singular_values", "prompt_update_singular_values",
                "evaluations", *ATTENTION_COLUMNS.values())
# Text columns of a results row beside the config's own: read back as text, as pandas would turn an all-digit
# config_id into an int (and the config's labels "true" into a bool).
RESULT_TEXT_COLUMNS = ("config_id", "status", "precision_used", "forward_used", "device", "torch_version",
                       "transformers_version", *JSON_COLUMNS)
# Numbers of every row, whatever trained it (a prompt run, seq2seq, a single-layer fit), beside the config's own
RESULT_NUMBER_COLUMNS = ("results_schema", "final_accuracy", "final_loss", "epochs_run", "trainable_params", "seconds",
                         "test_accuracy")


def device_name(device: torch.device) -> str:
    """The GPU's name, or the processor's with its bf16 path and threads: "cpu (Intel Xeon Processor, bf16 AMX,
    2 threads)"."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({this_processor().describe(torch.get_num_threads())})"


def device_file_stem(device: str) -> str:
    """A device's name as a file name stem, for the benchmarks' reports: "NVIDIA H100 80GB HBM3" ->
    "nvidia-h100-80gb-hbm3"; reports of two processors get two files."""
    return re.sub(r"[^a-z0-9]+", "-", device.lower()).strip("-")


def results_row(config: RunConfig, model, initial_prompt: torch.Tensor | None, result: TrainResult,
                device: torch.device) -> dict:
    """The results row of a trained config: its fields, its metrics, where and how long it ran, and its prompt's
    spectra and attention statistics."""
    return {
        "config_id": config.config_id, "results_schema": RESULTS_SCHEMA, **dataclasses.asdict(config),
        "final_accuracy": result.final_accuracy, "final_loss": result.final_loss, "epochs_run": result.epochs,
        "status": result.status, "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "precision_used": result.precision,
        # the forward of a soft-prompt model's backbone, or of the model trained from scratch itself
        "forward_used": getattr(model, "backbone", model).forward_used(result.precision),
        "device": device_name(device), "torch_version": torch.__version__,
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
    statistics = prompt_attention_statistics(model, data_for(config).inputs)
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


def column_types() -> dict:
    """Read types from RunConfig's field types: its text fields as text, its optional ints as nullable ints."""
    types = {name: str for name in RESULT_TEXT_COLUMNS} | {"results_schema": "Int64"}
    for field in dataclasses.fields(RunConfig):
        if field.type in ("str", "str | None"):
            types[field.name] = str
        elif field.type == "int | None":
            types[field.name] = "Int64"
    return types


def number_columns() -> tuple[str, ...]:
    """The columns whose every non-empty field is a number: the rows' metrics and RunConfig's numeric fields."""
    numeric = ("int", "float", "int | None", "float | None")
    return RESULT_NUMBER_COLUMNS + tuple(field.name for field in dataclasses.fields(RunConfig) if field.type in numeric)
