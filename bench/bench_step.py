"""The training step against PEFT's prompt tuning, the batched sweep against one config at a time, and both against
the machine's measured matmul peak; in one run, on identical work. Writes bench/results/<device>.json.

    python bench/bench_step.py            # the issue's shapes on a GPU; the same shrunk on a CPU (labelled)
    python bench/bench_step.py --smoke    # seconds: checks that the benchmark runs, measures nothing useful

(a) one full-batch step, 8 prompt + 8 data tokens, on the 2-layer width-512 encoder at n = 2000 and 3600 and on
    RoBERTa-base's shape at n = 2000 (random weights: only the shape matters): Hugging Face PEFT's prompt tuning
    (`PromptTuningConfig`, a standard AdamW loop; only the prompt trains, as in the library) against the library's
    step (`batched.train_together`, what a sweep uses on a GPU). bf16 autocast on a GPU that has it, fp32 on a CPU.
(b) a sweep of 6 prompt lengths x 3 dataset sizes on the 2-layer encoder through `run_sweep`: one config at a time
    against the batched sweep (runs of similar prompt length share passes), the same epochs, no early stop.
(c) the peak: a large matmul timed in the same run; each step's FLOPs counted (forward and the backward pass to the
    input, no weight gradients) and divided by its time.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import re
import tempfile
import time
from pathlib import Path

import torch
import transformers

from promptmem.backbones import random_backbone
from promptmem.batched import Run, train_together
from promptmem.model import SoftPromptModel
from promptmem.chunking import default_tokens_per_pass, plan_chunks
from promptmem.configs import RunConfig, grid
from promptmem.sweeps import run_sweep
from promptmem.training import autocast, select_precision

SHAPES = {"2-layer width 512": dict(num_layers=2, hidden_size=512, num_heads=8, ffn_size=2048),
          "RoBERTa-base": dict(num_layers=12, hidden_size=768, num_heads=12, ffn_size=3072)}
STEP_CASES = [("2-layer width 512", 2000), ("2-layer width 512", 3600), ("RoBERTa-base", 2000)]
SWEEP = dict(prompt_lengths=(1, 2, 4, 8, 16, 32), sizes=(1600, 2500, 3600), epochs=20)
PROMPT_LEN, SEQ_LEN, VOCAB = 8, 8, 50265
# On a CPU the same cases with n divided by this (RoBERTa-base by 4x more), and a shorter sweep.
CPU_SHRINK = 20


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def step_flops(shape: dict, n: int, length: int) -> float:
    """Forward plus the backward pass to the input (frozen weights: no weight gradients) of one full batch.
    Per layer and token, forward: 2 (4 d^2 + 2 d f) for the projections and the FFN, 4 L d for Q K^T and A V;
    backward to the input: the projections once more (dX = dY W^T), the attention products twice (dQ, dK and
    dA, dV)."""
    d, f = shape["hidden_size"], shape["ffn_size"]
    linear = 2 * (4 * d * d + 2 * d * f)
    attention = 4 * length * d
    return shape["num_layers"] * n * length * (2 * linear + 3 * attention)


def matmul_peak(device: torch.device, precision: str, size: int, repeats: int) -> float:
    """TFLOP/s of a size^3 matmul in the step's precision (bf16 / fp16 on a GPU, fp32 on a CPU)."""
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)
    a, b = (torch.randn(size, size, device=device, dtype=dtype) for _ in range(2))
    for _ in range(3):
        a @ b
    synchronize(device)
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    synchronize(device)
    return 2 * size ** 3 * repeats / (time.perf_counter() - start) / 1e12


def peak_memory(device: torch.device, work) -> tuple[float, float | None]:
    """(seconds, peak GiB allocated during `work`); no GiB (None) on a CPU."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    synchronize(device)
    start = time.perf_counter()
    work()
    synchronize(device)
    seconds = time.perf_counter() - start
    memory = torch.cuda.max_memory_allocated(device) / 2 ** 30 if device.type == "cuda" else None
    return seconds, memory


REPEATS = 3  # each timing taken this often, interleaved with the other's; the fastest counts (the least disturbed)


def library_step(backbone, inputs, labels, precision, device, epochs: int):
    """A function timing the library's training step: seconds per step from the difference of two runs of different
    lengths (setup and final evaluation cancel), and the peak memory of the longer run."""
    def run(length):
        model = SoftPromptModel(backbone, PROMPT_LEN, seed=0)
        return peak_memory(device, lambda: train_together(
            [Run(model, inputs, labels, epochs=length, lr=1e-3, early_stop=False)], precision=precision, device=device,
            progress=False, sync_every=length))

    run(2)  # warm-up

    def measure():
        short, _ = run(epochs)
        long, memory = run(2 * epochs)
        return (long - short) / epochs, memory
    return measure


def peft_step(hf_model, inputs, labels, precision, device, steps: int):
    """A function timing PEFT's prompt tuning in a standard AdamW loop (only the prompt trains): seconds per step and
    peak memory."""
    from peft import PromptTuningConfig, TaskType, get_peft_model

    model = get_peft_model(hf_model, PromptTuningConfig(task_type=TaskType.SEQ_CLS, num_virtual_tokens=PROMPT_LEN))
    for name, parameter in model.named_parameters():  # PEFT also trains the head (modules_to_save): not here
        parameter.requires_grad_("prompt_encoder" in name)
    model.to(device)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)

    def step():
        with autocast(device, precision):
            loss = model(input_ids=inputs, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(2):
        step()

    def measure():
        seconds, memory = peak_memory(device, lambda: [step() for _ in range(steps)])
        return seconds / steps, memory
    return measure


def fastest(*measures) -> list[tuple[float, float]]:
    """Each measure taken REPEATS times, the measures interleaved; per measure the fastest (seconds, memory)."""
    taken = [[measure() for measure in measures] for _ in range(REPEATS)]
    return [min(times, key=lambda taken_once: taken_once[0]) for times in zip(*taken)]


def step_benchmarks(device, precision, shrink: int, steps: int, peak: float, cases=STEP_CASES) -> list[dict]:
    rows = []
    for shape_name, paper_n in cases:
        shape = SHAPES[shape_name]
        n = max(paper_n // (shrink * (4 if shape_name == "RoBERTa-base" and shrink > 1 else 1)), 2)
        backbone = random_backbone(init_scale=0.02, seed=0, **shape).to(device)
        generator = torch.Generator().manual_seed(0)
        inputs = torch.randint(4, VOCAB, (n, SEQ_LEN), generator=generator).to(device)
        labels = torch.randint(0, 2, (n,), generator=generator).to(device)
        peft_model = copy.deepcopy(backbone.hf_model)  # PEFT rewraps the model it is given
        (library_seconds, library_memory), (peft_seconds, peft_memory) = fastest(
            library_step(backbone, inputs, labels, precision, device, steps),
            peft_step(peft_model, inputs, labels, precision, device, steps))
        flops = step_flops(shape, n, PROMPT_LEN + SEQ_LEN)
        rows.append({"shape": shape_name, "n": n, "prompt_len": PROMPT_LEN, "seq_len": SEQ_LEN,
                     "peft_ms": 1e3 * peft_seconds, "library_ms": 1e3 * library_seconds,
                     "throughput_vs_peft": peft_seconds / library_seconds, "step_tflop": flops / 1e12,
                     "library_tflops": flops / library_seconds / 1e12, "peft_tflops": flops / peft_seconds / 1e12,
                     "library_fraction_of_peak": flops / library_seconds / 1e12 / peak,
                     "library_peak_gib": library_memory, "peft_peak_gib": peft_memory})
        print(f"  {shape_name}, n={n}: PEFT {rows[-1]['peft_ms']:.1f} ms, library {rows[-1]['library_ms']:.1f} ms "
              f"({rows[-1]['throughput_vs_peft']:.2f}x), {rows[-1]['library_tflops']:.2f} TFLOP/s "
              f"= {100 * rows[-1]['library_fraction_of_peak']:.0f}% of peak", flush=True)
    return rows


def sweep_benchmark(device, precision, shrink: int, epochs: int, prompt_lengths, sizes) -> dict:
    """6 prompt lengths x 3 sizes on the 2-layer encoder, through `run_sweep` (random tokens, no early stop): one
    config at a time against the batched sweep, results store and rows included."""
    base = RunConfig(n=2, prompt_len=1, dataset="random_tokens", labels="random", seq_len=SEQ_LEN, epochs=epochs,
                     lr=0.005, init_scale=0.3, early_stop=False, precision=precision,
                     **SHAPES["2-layer width 512"])
    configs = grid(base, n=[max(n // shrink, 2) for n in sizes], prompt_len=list(prompt_lengths))
    with tempfile.TemporaryDirectory() as folder:
        run_sweep(configs[:2], Path(folder) / "warm-up.csv", device=device, batched=True, progress=False)
        one_at_a_time, _ = peak_memory(device, lambda: run_sweep(configs, Path(folder) / "one.csv", device=device,
                                                                 batched=False, progress=False))
        together, memory = peak_memory(device, lambda: run_sweep(configs, Path(folder) / "together.csv",
                                                                 device=device, batched=True, progress=False))
    chunks = plan_chunks(configs, default_tokens_per_pass(configs[0], device))
    result = {"configs": len(configs), "prompt_lengths": list(prompt_lengths), "sizes": sorted({c.n for c in configs}),
              "epochs": epochs, "chunks": [[(c.prompt_len, c.n) for c in chunk] for chunk in chunks],
              "one_at_a_time_s": one_at_a_time, "batched_s": together, "speedup": one_at_a_time / together,
              "batched_peak_gib": memory}
    print(f"  sweep of {len(configs)} configs x {epochs} epochs: one at a time {one_at_a_time:.1f} s, batched "
          f"{together:.1f} s ({result['speedup']:.1f}x) in {len(chunks)} chunks", flush=True)
    return result


def device_label(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu {platform.machine()} {torch.get_num_threads()} threads"


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"), help="folder for <device>.json")
    parser.add_argument("--smoke", action="store_true", help="tiny shapes, a few steps: checks that it runs")
    arguments = parser.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    precision = select_precision(device)
    smoke, on_cpu = arguments.smoke, device.type == "cpu"
    shrink = 400 if smoke else CPU_SHRINK if on_cpu else 1
    steps = 1 if smoke else 3 if on_cpu else 20
    print(f"{device_label(device)}, {precision}; n shrunk {shrink}x" if shrink > 1 else
          f"{device_label(device)}, {precision}", flush=True)
    peak = matmul_peak(device, precision, 256 if smoke else 2048 if on_cpu else 8192, 2 if smoke else 10)
    print(f"  measured matmul peak: {peak:.1f} TFLOP/s", flush=True)
    cases = [("2-layer width 512", 2000)] if smoke else STEP_CASES
    sweep = dict(SWEEP, prompt_lengths=SWEEP["prompt_lengths"][:2], sizes=SWEEP["sizes"][:2], epochs=2) if smoke \
        else dict(SWEEP, epochs=3) if on_cpu else SWEEP
    report = {"device": device_label(device), "precision": precision, "torch": torch.__version__,
              "transformers": transformers.__version__, "peft": __import__("peft").__version__,
              "n_shrunk_by": shrink, "smoke": smoke, "peak_matmul_tflops": peak,
              "steps": step_benchmarks(device, precision, shrink, steps, peak, cases),
              "sweep": sweep_benchmark(device, precision, shrink, **sweep)}
    folder = Path(arguments.out)
    folder.mkdir(parents=True, exist_ok=True)
    name = re.sub(r"[^a-z0-9]+", "-", report["device"].lower()).strip("-")
    (folder / f"{name}.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {folder / f'{name}.json'}")
    return report


if __name__ == "__main__":
    main()
