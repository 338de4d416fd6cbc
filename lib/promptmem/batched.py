"""Many prompt-tuning runs on one frozen encoder, trained together: one forward and one backward pass for all.

The runs share the backbone and the data length N. Their prompts (lengths p_k) are left-padded to the longest, p_max,
and the padded slots are masked out of attention; explicit position ids give each run's prompt and data the
positions of its solo run, so every row computes what it computes alone, and the readout is the first data token,
position p_max, for every row. The loss is the sum over runs of each run's mean loss, so the gradient reaching
prompt k is exactly its own run's; each run keeps its own AdamW (elementwise) and loss scaler, so each trajectory is
its solo run's, up to the floating-point order of the larger matmuls. The token embeddings of the frozen data are
looked up once.

Runs stop individually: at their epoch budget, at a non-finite loss, or, with early stop, at 100% (the prompt before
the memorizing step is kept, as alone). With full batches an epoch never waits for the host: memorization and
non-finite losses are detected on the device, a finished run's prompt is held there, and the host reads the state
back every `sync_every` epochs to drop finished runs from the batch. With minibatches (all runs then share n and the
batch size, so their steps line up) the host reads back once per epoch, as the early stop needs a clean evaluation.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from . import deadline
from .model import SoftPromptModel
from .training import (TrainResult, autocast, check_arguments, close_run, default_device, load_checkpoint,
                       save_checkpoint, select_precision)


@dataclass
class Run:
    """One run of a batch: its soft-prompt model (every run's on the same backbone), its pairs and its settings, as
    `training.train` takes them."""

    model: SoftPromptModel
    inputs: torch.Tensor
    labels: torch.Tensor
    epochs: int
    lr: float
    batch_size: int | None = None
    weight_decay: float = 0.01
    early_stop: bool = True
    seed: int = 0
    test_data: tuple[torch.Tensor, torch.Tensor] | None = None
    eval_every: int | None = None
    checkpoint: Path | None = None
    checkpoint_every: int = 100


class _Slot:
    """A run in training: its optimizer, loss scaler, shuffling generator and result, its data embedded on the
    device, and what it computed on the device since the host last looked."""

    def __init__(self, index: int, run: Run, device: torch.device, precision: str):
        self.index, self.run = index, run
        self.prompt = run.model.prompt
        self.optimizer = torch.optim.AdamW([self.prompt], lr=run.lr, weight_decay=run.weight_decay,
                                           fused=device.type == "cuda")
        self.scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
        self.generator = torch.Generator(device="cpu").manual_seed(run.seed)
        self.result = TrainResult(float("nan"), float("nan"), 0, "completed", precision, 0.0)
        if run.checkpoint is not None and Path(run.checkpoint).exists():
            self.result.seconds = load_checkpoint(Path(run.checkpoint), run.model, self.optimizer, self.scaler,
                                                  self.generator, self.result)
        embed = run.model.backbone.embed_tokens
        with torch.no_grad():
            self.data = {"train": (embed(run.inputs.to(device)), run.labels.to(device))}
            if run.test_data is not None:
                self.data["test"] = (embed(run.test_data[0].to(device)), run.test_data[1].to(device))
        self.n = len(run.labels)
        self.evaluations = []  # (epoch, train accuracy, test accuracy), device scalars until the host reads them

    @property
    def prompt_len(self) -> int:
        return self.prompt.shape[0]


def train_together(runs: list[Run], *, precision: str = "auto", device: torch.device | str | None = None,
                   progress: bool = True, sync_every: int = 10, on_finish=None) -> list[TrainResult]:
    """Train every run to its end in shared passes over one frozen encoder; return their results in order.

    `on_finish(index, result)` is called as each run ends (its prompt is final then), so a caller can store it at
    once. With a run's `checkpoint` the run saves its state every `checkpoint_every` epochs in the format of
    `training.train`, and a run that finds its file continues from it (in a batch or alone). Past the deadline
    `PROMPTMEM_DEADLINE` (promptmem.deadline) every unfinished run saves its checkpoint and BudgetExhausted is raised
    (runs that ended before have had their `on_finish`)."""
    _check_runs(runs, precision, sync_every)
    device = torch.device(device) if device is not None else default_device()
    precision = select_precision(device, runs[0].model) if precision == "auto" else precision
    backbone = runs[0].model.backbone.to(device)
    for run in runs:
        run.model.to(device)
    slots = [_Slot(index, run, device, precision) for index, run in enumerate(runs)]
    batch = _Batch(backbone, device, precision)
    results: list[TrainResult | None] = [None] * len(runs)
    start_time = time.perf_counter()
    stop_at = deadline.from_environment()

    def finish(ended):
        batch.finish(ended, time.perf_counter() - start_time)
        for slot in ended:
            results[slot.index] = slot.result
            if slot.run.checkpoint is not None:
                Path(slot.run.checkpoint).unlink(missing_ok=True)
            if on_finish is not None:
                on_finish(slot.index, slot.result)

    active = [slot for slot in slots if slot.result.epochs < slot.run.epochs]
    finish([slot for slot in slots if slot not in active])
    batch.evaluate_curves([slot for slot in active if slot.run.eval_every is not None and slot.result.epochs == 0])
    full_batch = all(slot.run.batch_size is None or slot.run.batch_size >= slot.n for slot in slots)
    bar = tqdm(total=max((slot.run.epochs - slot.result.epochs for slot in active), default=0), disable=not progress,
               desc=f"{len(runs)} runs together", leave=False)
    records, since_sync = [], 0
    done = torch.zeros(len(active), dtype=torch.bool, device=device)  # per active run: ended, not yet read back
    while active:
        if full_batch:
            record, done = batch.full_batch_epoch(active, done)
        else:
            record = batch.minibatch_epoch(active)
        records.append(record)
        since_sync += 1
        for slot in active:
            slot.result.epochs += 1
        batch.evaluate_curves([slot for slot in active
                               if slot.run.eval_every and slot.result.epochs % slot.run.eval_every == 0])
        at_budget = [slot for slot in active if slot.result.epochs == slot.run.epochs]
        out_of_time = deadline.passed(stop_at)  # then read back and checkpoint every run now
        checkpointing = [slot for slot in active if slot.run.checkpoint is not None and slot not in at_budget
                         and (out_of_time or slot.result.epochs % slot.run.checkpoint_every == 0)]
        if not full_batch or at_budget or checkpointing or since_sync == sync_every or out_of_time:
            ended = batch.read_back(active, records, check_memorized=not full_batch)
            ended += [slot for slot in at_budget if slot not in ended]
            finish(ended)
            active = [slot for slot in active if slot not in ended]
            done = torch.zeros(len(active), dtype=torch.bool, device=device)  # every run that had ended is gone
            for slot in checkpointing:
                if slot in active:
                    save_checkpoint(Path(slot.run.checkpoint), slot.run.model, slot.optimizer, slot.scaler,
                                    slot.generator, slot.result,
                                    slot.result.seconds + time.perf_counter() - start_time)
            records, since_sync = [], 0
        bar.update(1)
        bar.set_postfix(runs=len(active), refresh=False)
        if out_of_time and active:
            bar.close()
            raise deadline.stopped(len(active), sum(slot.run.checkpoint is not None for slot in active))
    bar.close()
    return results


def _check_runs(runs: list[Run], precision: str, sync_every: int) -> None:
    if not runs:
        raise ValueError("runs must hold at least one Run")
    if not isinstance(sync_every, int) or isinstance(sync_every, bool) or sync_every < 1:
        raise ValueError(f"sync_every must be an integer >= 1, got {sync_every!r}")
    backbone = runs[0].model.backbone
    for index, run in enumerate(runs):
        check_arguments(epochs=run.epochs, lr=run.lr, batch_size=run.batch_size, precision=precision,
                        inputs=run.inputs, labels=run.labels, checkpoint_every=run.checkpoint_every,
                        eval_every=run.eval_every, test_data=run.test_data)
        if run.model.backbone is not backbone:
            raise ValueError(f"runs must share one backbone: run {index} has another")
        if run.model.generation_steps or backbone.is_causal:
            raise ValueError("runs train together on an encoder only (causal models generate one run at a time)")
        if run.inputs.shape[1] != runs[0].inputs.shape[1]:
            raise ValueError(f"runs must share the sequence length N: run {index} has {run.inputs.shape[1]}, "
                             f"run 0 {runs[0].inputs.shape[1]}")
        run.model.check_sequence_length(run.inputs.shape[1])
    full = [run.batch_size is None or run.batch_size >= len(run.labels) for run in runs]
    if not all(full) and len({(run.batch_size, len(run.labels)) for run in runs}) > 1:
        raise ValueError("runs with minibatches must share n and batch_size (their steps line up); got "
                         f"{sorted({(len(run.labels), run.batch_size) for run in runs})} as (n, batch_size)")


class _Batch:
    """The shared passes: one frozen encoder, the rows of several runs at once."""

    def __init__(self, backbone, device: torch.device, precision: str):
        self.backbone, self.device, self.precision = backbone, device, precision

    def forward(self, slots: list[_Slot], rows: list[torch.Tensor | None], split: str = "train",
                precision: str | None = None):
        """Logits of the chosen rows of every slot's data (None: all rows), their labels, and each row's slot; in
        `precision` (default: the training precision)."""
        data = [slot.data[split] for slot in slots]
        inputs = torch.cat([x if chosen is None else x[chosen] for (x, _), chosen in zip(data, rows)])
        labels = torch.cat([y if chosen is None else y[chosen] for (_, y), chosen in zip(data, rows)])
        counts = torch.tensor([len(y) if chosen is None else len(chosen) for (_, y), chosen in zip(data, rows)],
                              device=self.device)
        owner = torch.repeat_interleave(torch.arange(len(slots), device=self.device), counts)
        lengths = [slot.prompt_len for slot in slots]
        longest = max(lengths)
        mask = positions = None
        if len(set(lengths)) > 1:  # pads to hide, and positions to restore: those of each run's solo sequence
            total = longest + inputs.shape[1]
            slot_index = torch.arange(total, device=self.device)
            pads = torch.tensor([longest - length for length in lengths], device=self.device)[:, None]
            mask = (slot_index[None] >= pads).long()[owner]
            positions = ((slot_index[None] - pads).clamp_min(0) + self.backbone.position_offset)[owner]
        # each run's prompt expanded over its own rows, as alone: its gradient is summed over them in the same order
        prompts = torch.cat([nn.functional.pad(slot.prompt, (0, 0, longest - slot.prompt_len, 0)).expand(
            int(count), -1, -1) for slot, count in zip(slots, counts.tolist())])
        with autocast(self.device, precision or self.precision):
            embeds = torch.cat([prompts.to(inputs.dtype), inputs], dim=1)
            hidden = self.backbone.readout(embeds, longest, attention_mask=mask, position_ids=positions)
            logits = self.backbone.classify(hidden).float()
        return logits, labels, owner, counts

    def losses(self, slots, rows):
        """Per slot: the mean cross-entropy (with its graph), the number of correct rows, the number of rows."""
        logits, labels, owner, counts = self.forward(slots, rows)
        per_row = nn.functional.cross_entropy(logits, labels, reduction="none")
        zeros = torch.zeros(len(slots), device=self.device)
        mean_loss = zeros.index_add(0, owner, per_row) / counts
        correct = zeros.index_add(0, owner, (logits.detach().argmax(-1) == labels).float())
        return mean_loss, correct, counts

    def step(self, slots, mean_loss, hold: torch.Tensor | None = None) -> None:
        """One AdamW step per slot on the sum of their losses; slots where `hold` is true keep their prompt."""
        before = [slot.prompt.detach().clone() for slot in slots] if hold is not None else None
        for slot in slots:
            slot.optimizer.zero_grad(set_to_none=True)
        sum(slot.scaler.scale(loss) for slot, loss in zip(slots, mean_loss)).backward()
        for slot in slots:
            slot.scaler.step(slot.optimizer)
            slot.scaler.update()
        if hold is not None:
            with torch.no_grad():
                for slot, held, keep in zip(slots, before, hold):
                    slot.prompt.copy_(torch.where(keep, held, slot.prompt))

    def full_batch_epoch(self, slots, done: torch.Tensor) -> tuple[dict, torch.Tensor]:
        """One full-batch step for every slot, with no host synchronization in fp32. `done` (per slot, on the
        device): runs that ended since the last read-back, whose prompts are held. Returns device tensors per slot
        (the loss, the number of correct pairs, memorized before the step, which is then undone, and a non-finite
        loss) and the new `done`. Trained in bf16 or fp16, a run counts as memorized only when a clean fp32
        evaluation confirms it (the host then waits for the check, in the epochs where some run is at 100%)."""
        mean_loss, correct, counts = self.losses(slots, [None] * len(slots))
        early = torch.tensor([slot.run.early_stop for slot in slots], device=self.device)
        memorized = early & (correct == counts) & ~done
        if self.precision != "fp32" and memorized.any():
            candidates = [slot for slot, candidate in zip(slots, memorized.tolist()) if candidate]
            clean_correct, clean_counts, _ = self.accuracy(candidates, "train")
            confirmed = iter((clean_correct == clean_counts).tolist())
            memorized = torch.tensor([candidate and next(confirmed) for candidate in memorized.tolist()],
                                     device=self.device)
        self.step(slots, mean_loss, hold=done | memorized)
        nonfinite = ~torch.isfinite(mean_loss.detach()) & ~done
        record = {"loss": mean_loss.detach(), "correct": correct, "memorized": memorized, "nonfinite": nonfinite}
        return record, done | memorized | nonfinite

    def minibatch_epoch(self, slots) -> dict:
        """One epoch of minibatches for every slot, each in its own shuffled order (all share n and the batch size)."""
        n, batch_size = slots[0].n, slots[0].run.batch_size
        orders = [torch.randperm(n, generator=slot.generator).to(self.device) for slot in slots]
        loss_sum = torch.zeros(len(slots), device=self.device)
        correct_sum = torch.zeros(len(slots), device=self.device)
        for start in range(0, n, batch_size):
            mean_loss, correct, counts = self.losses(slots, [order[start:start + batch_size] for order in orders])
            loss_sum += mean_loss.detach() * counts
            correct_sum += correct
            self.step(slots, mean_loss)
        nothing = torch.zeros(len(slots), dtype=torch.bool, device=self.device)
        return {"loss": loss_sum / n, "correct": correct_sum, "memorized": nothing,
                "nonfinite": ~torch.isfinite(loss_sum)}

    def read_back(self, slots, records: list[dict], check_memorized: bool) -> list[_Slot]:
        """Move the epochs recorded since the last read-back into each slot's history and status; return the slots
        that ended (memorized or non-finite). Accuracies are counts / n in Python floats, as alone. With minibatches
        a run whose running accuracy was 1 is memorized when a clean evaluation confirms it."""
        table = {name: torch.stack([record[name] for record in records]).cpu() for name in records[0]}
        ended = []
        for column, slot in enumerate(slots):
            first_epoch = slot.result.epochs - len(records)
            for row in range(len(records)):
                loss, accuracy = table["loss"][row, column].item(), int(table["correct"][row, column]) / slot.n
                history = slot.result.history
                history["epoch"].append(first_epoch + row)
                history["loss"].append(loss)
                history["accuracy"].append(accuracy)
                status = ("nonfinite" if not math.isfinite(loss) or table["nonfinite"][row, column]
                          else "memorized" if table["memorized"][row, column] else None)
                if status is None and check_memorized and slot.run.early_stop and accuracy == 1.0 \
                        and self.accuracy([slot], "train")[0].item() == slot.n:
                    status = "memorized"
                if status is not None:
                    slot.result.status, slot.result.epochs = status, first_epoch + row + 1
                    ended.append(slot)
                    break
            self.collect_curves(slot)
        return ended

    @torch.no_grad()
    def accuracy(self, slots, split: str):
        """Per slot: the number of correct pairs of its `split` ("train" or "test"), their number and the mean loss,
        in fp32 whatever the training precision, as device tensors (accuracy = correct / count, taken on the host as
        Python floats, as alone)."""
        logits, labels, owner, counts = self.forward(slots, [None] * len(slots), split, precision="fp32")
        zeros = torch.zeros(len(slots), device=self.device)
        correct = zeros.index_add(0, owner, (logits.argmax(-1) == labels).float())
        loss = zeros.index_add(0, owner, nn.functional.cross_entropy(logits, labels, reduction="none"))
        return correct, counts, loss / counts

    def evaluate_curves(self, slots) -> None:
        """A point of the accuracy curves (train and test) for each slot, kept on the device."""
        if not slots:
            return
        correct, counts, _ = self.accuracy(slots, "train")
        tested = [slot for slot in slots if "test" in slot.data]
        test = dict(zip(tested, zip(*self.accuracy(tested, "test")[:2]))) if tested else {}
        for slot, train in zip(slots, zip(correct, counts)):
            slot.evaluations.append((slot.result.epochs, train, test.get(slot)))

    @staticmethod
    def collect_curves(slot) -> None:
        """Curve points computed so far, into the result; none beyond the run's last epoch (none at the epoch whose
        loss was non-finite, as alone)."""
        curves = slot.result.evaluations
        last = slot.result.epochs - (slot.result.status == "nonfinite")
        for epoch, train, test in slot.evaluations:
            if epoch <= last and curves["epoch"][-1:] != [epoch]:
                curves["epoch"].append(epoch)
                curves["train_accuracy"].append(_fraction(*train))
                curves["test_accuracy"].append(float("nan") if test is None else _fraction(*test))
        slot.evaluations = []

    def finish(self, slots, seconds: float) -> None:
        """Final train and test evaluation of the runs that ended, into their results."""
        if not slots:
            return
        correct, counts, loss = self.accuracy(slots, "train")
        tested = [slot for slot in slots if "test" in slot.data]
        test = dict(zip(tested, map(_fraction, *self.accuracy(tested, "test")[:2]))) if tested else {}
        for slot, train, train_loss in zip(slots, map(_fraction, correct, counts), loss.tolist()):
            result = slot.result
            result.final_accuracy, result.final_loss = train, train_loss
            result.test_accuracy = test.get(slot, float("nan"))
            close_run(result, slot.run.eval_every)
            result.seconds += seconds


def _fraction(correct: torch.Tensor, count: torch.Tensor) -> float:
    return int(correct.item()) / int(count.item())
