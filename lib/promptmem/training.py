"""The training step: AdamW on whatever requires grad (the prompt, for a soft-prompt model), full batch or
minibatches, the precision measured fastest for the model and device, optional early stop at 100% memorization.

Memorization accuracy is the fraction of the n training pairs whose arg-max prediction equals its label; test
accuracy the same fraction on held-out pairs, when a run is given some.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from . import deadline
from .model import SoftPromptModel

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
# A full-batch epoch of a soft prompt on a CPU runs forward and backward in chunks of this many activation elements
# per tensor (rows × (p + N) × d), the gradients summed into one AdamW step: a chunk's activations stay in the
# caches, where a whole large batch's do not. Measured (bench_step.chunk_benchmark, n = 3600, p = 8, width 512, bf16)
# on an Intel Xeon (AMX, 2 threads): an epoch took 4.03 s whole, 2.99 s in chunks of 400 rows, 2.49 s of 200 and
# 3.03 s of 100, against 2.92 s for nine n = 400 epochs; on an AMD EPYC (Zen 5, AVX512-BF16) 5.18 s whole, 2.52 s
# of 800, 2.61 s of 400 and 2.88 s of 200, against 2.84 s for nine n = 400 epochs. 200 rows costs 0.85× and 1.01×
# the small batches' (the best on the Intel host, 14% behind 800 rows on the AMD one), at 8 + 8 tokens of width 512:
CPU_CHUNK_ELEMENTS = 200 * 16 * 512


def select_precision(device: torch.device | str, model: nn.Module | None = None) -> str:
    """The precision that trains `model` fastest on `device`, as measured (bench/bench_step.py, the README's
    Performance). On a GPU: bf16 from compute capability 8.0 (A100, H100); fp16 with a GradScaler on 7.x (V100, T4),
    where `torch.cuda.is_bf16_supported()` says yes but bf16 only runs by slow emulation; fp32 below. On a CPU: bf16
    for a soft prompt on a frozen encoder when the CPU computes bf16 natively (AVX512-BF16 or AMX), as the readout
    encoder's bf16 matmuls then run several times faster than fp32; fp32 for every other model and CPU (Hugging
    Face's forward under CPU bf16 autocast measured slower than fp32 at width 128).

    A soft prompt on a causal model trains in fp32 on every device: continuous generation feeds each final hidden
    state back as an input and so amplifies rounding (bench/generation_rounding.py, at width 512, σ = 0.1: bf16
    logits 1% off fp32's at K = 0, 3% at K = 2, 22% at K = 8), and notebook 02 compares the cost of K at one
    precision."""
    if isinstance(model, SoftPromptModel) and model.backbone.is_causal:
        return "fp32"
    device = torch.device(device)
    if device.type != "cuda":
        fast_readout = isinstance(model, SoftPromptModel) and model.backbone.has_readout_forward
        return "bf16" if fast_readout and cpu_has_native_bf16() else "fp32"
    major, _ = torch.cuda.get_device_capability(device)
    if major >= 8:
        return "bf16"
    return "fp16" if major == 7 else "fp32"


# oneDNN's ISA levels that compute bf16 in hardware (AVX512-BF16, AMX); a cap below them (ONEDNN_MAX_CPU_ISA, or its
# older name DNNL_MAX_CPU_ISA) leaves oneDNN emulating bf16.
NATIVE_BF16_ISAS = ("AVX512_CORE_BF16", "AVX512_CORE_FP16", "AVX512_CORE_AMX", "AVX512_CORE_AMX_FP16",
                    "AVX10_1_512", "AVX10_1_512_AMX", "AVX10_1_512_AMX_FP16", "AVX10_2_512", "AVX10_2_512_AMX_2",
                    "ALL", "DEFAULT")


def cpu_has_native_bf16() -> bool:
    """Whether oneDNN computes bf16 matmuls in hardware on this CPU: it has AVX512-BF16 or AMX, and no ISA cap says
    otherwise. oneDNN also takes bf16 on AVX-512 CPUs without them (Skylake to Ice Lake) and emulates it: measured
    with oneDNN capped to AVX512_CORE on this machine, a quick-profile epoch took 98–113 ms in bf16 against 60 ms in
    fp32 (natively 33 ms in bf16), so there fp32 is the faster choice."""
    cap = (os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA") or "ALL").upper()
    hardware = any(getattr(torch.cpu, probe, lambda: False)()
                   for probe in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"))
    return hardware and cap in NATIVE_BF16_ISAS and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def default_chunk_rows(model: nn.Module, embeds: torch.Tensor, device: torch.device) -> int:
    """How many rows a full-batch epoch computes at once: all of them on a GPU and for models other than a soft
    prompt; on a CPU, CPU_CHUNK_ELEMENTS' worth of activations (200 rows at 8 prompt + 8 data tokens of width 512)."""
    n = len(embeds)
    if device.type == "cuda" or not isinstance(model, SoftPromptModel):
        return n
    per_row = (model.prompt_len + embeds.shape[1]) * embeds.shape[2]
    return max(1, min(n, CPU_CHUNK_ELEMENTS // per_row))


def full_batch_gradient(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor, chunk_rows: int,
                        device: torch.device, precision: str, scaler) -> tuple[torch.Tensor, torch.Tensor]:
    """The gradient of the mean loss over all pairs, accumulated chunk by chunk (the full batch's up to summation
    order); returns the summed loss and the number of pairs predicted right, both before the step."""
    n = len(labels)
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    for start in range(0, n, chunk_rows):
        with autocast(device, precision):
            logits = model(inputs[start:start + chunk_rows]).float()
        target = labels[start:start + chunk_rows]
        loss = nn.functional.cross_entropy(logits, target, reduction="sum")
        scaler.scale(loss / n).backward()
        loss_sum += loss.detach()
        correct += (logits.detach().argmax(-1) == target).sum()
    return loss_sum, correct


DEVICE_ENV = "PROMPTMEM_DEVICE"


def default_device() -> torch.device:
    """`PROMPTMEM_DEVICE` where set ('cpu', 'cuda' or 'cuda:<index>': e.g. a CPU run on a machine with a GPU), else
    the GPU where CUDA has one, else the CPU."""
    override = os.environ.get(DEVICE_ENV, "").strip()
    if not override:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not re.fullmatch(r"cpu|cuda(:\d+)?", override):
        raise ValueError(f"{DEVICE_ENV} must be 'cpu', 'cuda' or 'cuda:<index>', got {override!r}")
    return torch.device(override)


@dataclass
class TrainResult:
    final_accuracy: float  # on all n pairs after training, in fp32 whatever trained the prompt (NaN if "nonfinite")
    final_loss: float
    epochs: int  # epochs run (fewer than asked when stopped early)
    status: str  # "completed", "memorized" (early stop at 100%) or "nonfinite" (loss overflowed)
    precision: str
    seconds: float
    history: dict = field(default_factory=lambda: {"epoch": [], "loss": [], "accuracy": []})
    test_accuracy: float = float("nan")  # on the held-out pairs after training (NaN without them)
    # clean evaluations every `eval_every` epochs (epoch 0 = before training): train and test accuracy
    evaluations: dict = field(default_factory=lambda: {"epoch": [], "train_accuracy": [], "test_accuracy": []})


def autocast(device: torch.device, precision: str):
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


@torch.no_grad()
def evaluate(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor, *, precision: str = "fp32",
             batch_size: int | None = None) -> tuple[float, float]:
    """(accuracy, mean cross-entropy) over all pairs, computed where the model is (`train` moves it there)."""
    device = next(model.parameters()).device
    inputs, labels = inputs.to(device), labels.to(device)
    batch_size = batch_size or len(labels)
    correct, loss_sum = 0, 0.0
    with autocast(device, precision):
        for start in range(0, len(labels), batch_size):
            logits = model(inputs[start:start + batch_size]).float()
            target = labels[start:start + batch_size]
            loss_sum += nn.functional.cross_entropy(logits, target, reduction="sum").item()
            correct += (logits.argmax(-1) == target).sum().item()
    return correct / len(labels), loss_sum / len(labels)


def check_arguments(*, epochs, lr, batch_size, precision, inputs, labels, checkpoint_every, eval_every,
                    test_data) -> None:
    """Raise a ValueError naming the first bad training argument and what it allows."""
    if not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs must be an integer >= 1, got {epochs!r}")
    if not (isinstance(lr, (int, float)) and 0 < lr < 10):
        raise ValueError(f"lr must be a number in (0, 10), got {lr!r}")
    if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
        raise ValueError(f"batch_size must be None (full batch) or an integer >= 1, got {batch_size!r}")
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if len(inputs) != len(labels) or len(labels) == 0:
        raise ValueError(f"inputs and labels must hold the same number (>= 1) of examples, "
                         f"got {len(inputs)} and {len(labels)}")
    if not isinstance(checkpoint_every, int) or checkpoint_every < 1:
        raise ValueError(f"checkpoint_every must be an integer >= 1, got {checkpoint_every!r}")
    if eval_every is not None and (not isinstance(eval_every, int) or isinstance(eval_every, bool) or eval_every < 1):
        raise ValueError(f"eval_every must be None or an integer >= 1, got {eval_every!r}")
    if test_data is not None and (len(test_data) != 2 or len(test_data[0]) != len(test_data[1])
                                  or len(test_data[1]) == 0):
        raise ValueError("test_data must be a pair (inputs, labels) of the same number (>= 1) of examples")


def train(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor, *, epochs: int, lr: float,
          batch_size: int | None = None, weight_decay: float = 0.01, early_stop: bool = True,
          precision: str = "auto", device: torch.device | str | None = None, seed: int = 0,
          progress: bool = True, checkpoint: str | os.PathLike | None = None,
          checkpoint_every: int = 100, test_data: tuple[torch.Tensor, torch.Tensor] | None = None,
          eval_every: int | None = None, chunk_rows: int | None = None) -> TrainResult:
    """Train the parameters of `model` that require grad; `batch_size=None` means full batch.

    `test_data` (inputs, labels) are held-out pairs, evaluated after training; with `eval_every` = k, the train and
    test accuracy are evaluated cleanly before training and every k epochs (the accuracy curves over epochs).

    The accuracy logged per epoch is measured on the forward pass of the step itself: exact for the parameters
    before the step with a full batch, a running estimate with minibatches. Early stop (full batch: when that
    accuracy is 1 and, trained in bf16 or fp16, a clean evaluation confirms it; minibatches: when a clean evaluation
    confirms it) leaves the memorizing parameters in place. A full batch larger than `chunk_rows` (None: the
    measured default, `default_chunk_rows`) is computed in chunks whose gradients sum into one step.
    Clean evaluations (the curves, that confirmation, the final accuracies and loss) run in fp32 whatever
    `precision` trains the prompt: memorization is a property of the frozen model as it computes in fp32.

    With `checkpoint` (a file path), the trained parameters, the optimizer, the loss scaler, the shuffling generator
    and the history are saved every `checkpoint_every` epochs, and a run that finds the file continues from it: an
    interrupted run ends where an uninterrupted one would. The file is removed when the run ends. Past the deadline
    `PROMPTMEM_DEADLINE` (promptmem.deadline) the run saves its checkpoint at the end of an epoch and raises
    BudgetExhausted.
    """
    check_arguments(epochs=epochs, lr=lr, batch_size=batch_size, precision=precision, inputs=inputs, labels=labels,
                    checkpoint_every=checkpoint_every, eval_every=eval_every, test_data=test_data)
    if chunk_rows is not None and (not isinstance(chunk_rows, int) or isinstance(chunk_rows, bool) or chunk_rows < 1):
        raise ValueError(f"chunk_rows must be None (the measured default) or an integer >= 1, got {chunk_rows!r}")
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no parameter that requires grad: nothing to train")

    device = torch.device(device) if device is not None else default_device()
    precision = select_precision(device, model) if precision == "auto" else precision
    model.to(device)
    inputs, labels = inputs.to(device), labels.to(device)
    if test_data is not None:
        test_data = (test_data[0].to(device), test_data[1].to(device))
    if isinstance(model, SoftPromptModel):  # the frozen data's token embeddings, looked up once, not every step
        with torch.no_grad():
            inputs = model.backbone.embed_tokens(inputs)
            test_data = None if test_data is None else (model.backbone.embed_tokens(test_data[0]), test_data[1])
    n = len(labels)
    batch_size = min(batch_size or n, n)
    chunk_rows = min(chunk_rows or default_chunk_rows(model, inputs, device), n)
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=device.type == "cuda")
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    generator = torch.Generator(device="cpu").manual_seed(seed)
    result = TrainResult(float("nan"), float("nan"), 0, "completed", precision, 0.0)
    checkpoint = Path(checkpoint) if checkpoint is not None else None
    if checkpoint is not None and checkpoint.exists():
        result.seconds = load_checkpoint(checkpoint, model, optimizer, scaler, generator, result)
    start_time = time.perf_counter() - result.seconds
    stop_at = deadline.from_environment()

    def clean_evaluation() -> tuple[float, float, float]:  # train accuracy and loss, test accuracy; in fp32
        train_accuracy, train_loss = evaluate(model, inputs, labels, batch_size=batch_size)
        test_accuracy = float("nan") if test_data is None else evaluate(model, *test_data, batch_size=batch_size)[0]
        return train_accuracy, train_loss, test_accuracy

    clean_at = {}  # epoch -> the clean evaluation this call made there (the curves' points)

    def record_evaluation():
        if result.evaluations["epoch"][-1:] == [result.epochs]:
            return  # already evaluated at this epoch
        train_accuracy, _, test_accuracy = clean_at[result.epochs] = clean_evaluation()
        result.evaluations["epoch"].append(result.epochs)
        result.evaluations["train_accuracy"].append(train_accuracy)
        result.evaluations["test_accuracy"].append(test_accuracy)

    def memorizes() -> bool:  # a clean evaluation, in fp32, finds every pair right
        return evaluate(model, inputs, labels, batch_size=batch_size)[0] == 1.0

    if eval_every is not None and result.epochs == 0:
        record_evaluation()
    bar = tqdm(range(result.epochs, epochs), desc="epochs", disable=not progress, leave=False, initial=result.epochs,
               total=epochs)
    for epoch in bar:
        order = torch.randperm(n, generator=generator).to(device) if batch_size < n else None
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device, dtype=torch.long)
        held = False  # full batch: the parameters before the step memorize, so the step is not taken
        if order is None and chunk_rows < n:  # full batch in chunks, their gradients summed into one step
            optimizer.zero_grad(set_to_none=True)
            loss_sum, correct = full_batch_gradient(model, inputs, labels, chunk_rows, device, precision, scaler)
            held = early_stop and correct.item() == n and (precision == "fp32" or memorizes())
            if not held:
                scaler.step(optimizer)
                scaler.update()
        for start in range(0, n, batch_size) if order is not None or chunk_rows == n else ():
            rows = order[start:start + batch_size] if order is not None else slice(None)
            with autocast(device, precision):
                logits = model(inputs[rows]).float()
            target = labels[rows]
            loss = nn.functional.cross_entropy(logits, target)
            loss_sum += loss.detach() * len(target)
            correct += (logits.detach().argmax(-1) == target).sum()
            if early_stop and order is None and correct.item() == n and (precision == "fp32" or memorizes()):
                held = True
                break  # the parameters before this step already memorize every pair (in fp32, confirmed)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        mean_loss, accuracy = loss_sum.item() / n, correct.item() / n
        result.history["epoch"].append(epoch)
        result.history["loss"].append(mean_loss)
        result.history["accuracy"].append(accuracy)
        result.epochs = epoch + 1
        bar.set_postfix(loss=f"{mean_loss:.4f}", acc=f"{accuracy:.3f}", refresh=False)
        if not math.isfinite(mean_loss):  # the forward itself overflowed (a GradScaler only guards gradients)
            result.status = "nonfinite"
            break
        if early_stop and accuracy == 1.0 and (held if order is None else memorizes()):
            result.status = "memorized"
            break
        if eval_every is not None and result.epochs % eval_every == 0:
            record_evaluation()
        out_of_time = result.epochs < epochs and deadline.passed(stop_at)
        if checkpoint is not None and result.epochs < epochs and (result.epochs % checkpoint_every == 0 or out_of_time):
            save_checkpoint(checkpoint, model, optimizer, scaler, generator, result, time.perf_counter() - start_time)
        if out_of_time:
            bar.close()
            raise deadline.stopped(1, int(checkpoint is not None))
    bar.close()
    if checkpoint is not None:
        checkpoint.unlink(missing_ok=True)

    # the memorization measured in fp32, as the frozen model computes it, whatever precision trained the prompt (the
    # curves' evaluation of the same parameters when it was made at the last epoch)
    result.final_accuracy, result.final_loss, result.test_accuracy = clean_at.get(result.epochs) or clean_evaluation()
    close_run(result, eval_every)
    result.seconds = time.perf_counter() - start_time
    return result


def close_run(result: TrainResult, eval_every: int | None) -> None:
    """Once the final accuracies are in: the curves' last point (the last epoch, when it is not a multiple of
    eval_every), and no accuracy at all for a run whose loss went non-finite (arg-max of NaN logits predicts
    nothing)."""
    curves = result.evaluations
    if eval_every is not None and result.status != "nonfinite" and curves["epoch"][-1:] != [result.epochs]:
        curves["epoch"].append(result.epochs)
        curves["train_accuracy"].append(result.final_accuracy)
        curves["test_accuracy"].append(result.test_accuracy)
    if result.status == "nonfinite":
        result.final_accuracy = result.test_accuracy = float("nan")


def save_checkpoint(path: Path, model: nn.Module, optimizer, scaler, generator: torch.Generator,
                     result: TrainResult, seconds: float) -> None:
    state = {"trainable": {name: p.detach().cpu() for name, p in model.named_parameters() if p.requires_grad},
             "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(), "generator": generator.get_state(),
             "epochs": result.epochs, "history": result.history, "evaluations": result.evaluations,
             "seconds": seconds}
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save(state, temporary)
    os.replace(temporary, path)  # a crash mid-save leaves the previous checkpoint intact


def load_checkpoint(path: Path, model: nn.Module, optimizer, scaler, generator: torch.Generator,
                     result: TrainResult) -> float:
    state = torch.load(path, weights_only=True, map_location="cpu")  # saved on a GPU, resumed anywhere
    trainable = dict(model.named_parameters())
    if set(state["trainable"]) != {name for name, p in trainable.items() if p.requires_grad}:
        raise ValueError(f"the checkpoint {path} belongs to another model: it holds {sorted(state['trainable'])}")
    with torch.no_grad():
        for name, value in state["trainable"].items():
            trainable[name].copy_(value)
    optimizer.load_state_dict(state["optimizer"])
    scaler.load_state_dict(state["scaler"])
    generator.set_state(state["generator"])
    result.epochs, result.history = state["epochs"], state["history"]
    result.evaluations = state.get("evaluations", result.evaluations)  # checkpoints written before eval_every existed
    return state["seconds"]
