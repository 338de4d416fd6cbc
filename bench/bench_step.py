"""The library's training step against PEFT's prompt tuning and against its own step before the readout encoder, the
batched sweep against one config at a time, and all against the machine's measured matmul peak; in one run, on
identical work. Writes bench/results/<device>.json.

    python bench/bench_step.py            # the paper's shapes (a GPU: n = 2000 and 3600; a CPU: n = 400 and 1600)
    python bench/bench_step.py --smoke    # seconds: checks that the benchmark runs, measures nothing useful

(a) one full-batch step, 8 prompt + 8 data tokens, on the 2-layer width-512 encoder and on RoBERTa-base's shape
    (random weights: only the shape matters), four ways: Hugging Face PEFT's prompt tuning (`PromptTuningConfig`, a
    standard AdamW loop, only the prompt trains) in fp32 and under bf16 autocast where the machine computes bf16
    natively (the best of the two counts, as a user would pick it); the library's step before the readout encoder
    (fp32, Hugging Face's forward with sdpa attention); and the library's step as `run_config` takes it now (the
    precision `select_precision` picks: bf16 through the readout encoder where the machine has bf16).
(b) a sweep of 6 prompt lengths x 3 dataset sizes on the 2-layer encoder through `run_sweep`: one config at a time
    against the batched sweep (runs of similar prompt length share passes), the same epochs, no early stop.
(c) the causal decoder's step (notebook 02: a frozen random GPT-2, K continuous tokens generated before the
    readout), both in fp32 as `select_precision` trains it: Hugging Face's forward with its key/value cache against
    the readout decoder, at notebook 02's quick shape (width 128) and its medium one (width 512), K = 0 and 8.
(d) the peak: a large matmul in the machine's best precision (bf16 where it is native), timed in the same run; each
    step's FLOPs counted as it does them (forward and the backward pass to the input, no weight gradients; the
    readout encoder's last layer at one position) and divided by its time.
"""

from __future__ import annotations

import argparse
import copy
import json
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
from promptmem.rows import device_file_stem, device_name
from promptmem.sweeps import run_sweep
from promptmem.training import (autocast, cpu_has_native_bf16, default_chunk_rows, default_device, select_precision,
                                train)

SHAPES = {"2-layer width 512": dict(num_layers=2, hidden_size=512, num_heads=8, ffn_size=2048),
          "RoBERTa-base": dict(num_layers=12, hidden_size=768, num_heads=12, ffn_size=3072)}
STEP_CASES = {"cuda": [("2-layer width 512", 2000), ("2-layer width 512", 3600), ("RoBERTa-base", 2000)],
              "cpu": [("2-layer width 512", 400), ("2-layer width 512", 1600), ("2-layer width 512", 3600),
                      ("RoBERTa-base", 100)]}
# On a CPU, a full-batch epoch at the paper's largest n in chunks of these many rows (training.CPU_CHUNK_ELEMENTS),
# against n / CHUNK_SMALL_N epochs of CHUNK_SMALL_N rows
CHUNK_ROWS, CHUNK_N, CHUNK_SMALL_N = (3600, 800, 400, 200), 3600, 400
# The causal decoder: (shape, n, p, K) at notebook 02's quick and medium shapes; on a GPU its medium shape at the
# paper's n.
DECODER_SHAPES = {"GPT-2 width 128": dict(num_layers=2, hidden_size=128, num_heads=4, ffn_size=512),
                  "GPT-2 width 512": SHAPES["2-layer width 512"]}
DECODER_CASES = {"cuda": [("GPT-2 width 512", 1600, 8, 0), ("GPT-2 width 512", 1600, 8, 8)],
                 "cpu": [("GPT-2 width 128", 128, 4, 0), ("GPT-2 width 128", 128, 4, 8),
                         ("GPT-2 width 512", 400, 8, 0), ("GPT-2 width 512", 400, 8, 8)]}
SWEEP = dict(prompt_lengths=(1, 2, 4, 8, 16, 32), sizes=(1600, 2500, 3600), epochs=20)
PROMPT_LEN, SEQ_LEN, VOCAB = 8, 8, 50265
# On a CPU the sweep's sizes are divided by this, and it runs fewer epochs.
CPU_SHRINK = 20


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def step_flops(shape: dict, n: int, length: int, readout: bool = False) -> float:
    """Forward plus the backward pass to the input (frozen weights: no weight gradients) of one full batch.
    Per layer and token, forward: 2 (4 d^2 + 2 d f) for the projections and the FFN, 4 L d for Q K^T and A V;
    backward to the input: the projections once more (dX = dY W^T), the attention products twice (dQ, dK and
    dA, dV). With `readout` (the readout encoder), the last layer projects keys and values at all L positions and
    computes the query, attention, output projection and FFN at one position per sequence."""
    d, f = shape["hidden_size"], shape["ffn_size"]
    linear = 2 * (4 * d * d + 2 * d * f)
    attention = 4 * length * d
    if not readout:
        return shape["num_layers"] * n * length * (2 * linear + 3 * attention)
    last = n * (2 * (2 * 2 * d * d * length + 2 * (2 * d * d + 2 * d * f)) + 3 * attention)
    return (shape["num_layers"] - 1) * n * length * (2 * linear + 3 * attention) + last


def matmul_peak(device: torch.device, precision: str, size: int, repeats: int) -> float:
    """TFLOP/s of a size^3 matmul in `precision`."""
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


def best_precision(device: torch.device) -> str:
    """The machine's fastest matmul precision: on a GPU what `select_precision` picks by compute capability, on a CPU
    bf16 where it computes bf16 natively, fp32 otherwise."""
    if device.type == "cuda":
        return select_precision(device)
    return "bf16" if cpu_has_native_bf16() else "fp32"


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


def library_step(backbone, inputs, labels, precision, device, epochs: int, prompt_len: int = PROMPT_LEN,
                 generation_steps: int = 0, chunk_rows: int | None = None):
    """A function timing the library's training step as a sweep runs it on `device` (alone on a CPU or for a causal
    model, batched on a GPU): a run of `epochs` and one of twice as many, each in seconds per `epochs` (their
    difference is a step; setup and final evaluation cancel), and the peak memory of the longer run."""
    def run(length):
        model = SoftPromptModel(backbone, prompt_len, generation_steps=generation_steps, seed=0)
        if device.type == "cpu" or backbone.is_causal:
            return peak_memory(device, lambda: train(model, inputs, labels, epochs=length, lr=1e-3, early_stop=False,
                                                     precision=precision, device=device, progress=False,
                                                     chunk_rows=chunk_rows))
        return peak_memory(device, lambda: train_together(
            [Run(model, inputs, labels, epochs=length, lr=1e-3, early_stop=False)], precision=precision, device=device,
            progress=False, sync_every=length))

    run(2)  # warm-up

    def measure():
        short, _ = run(epochs)
        long, memory = run(2 * epochs)
        return (short / epochs, long / epochs), memory
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
        return (seconds / steps,), memory
    return measure


def fastest(*measures) -> list[tuple[float, float]]:
    """Each measure taken REPEATS times, the measures interleaved; per measure (seconds per step, peak memory). A
    measure times one part (seconds per step) or two (a short and a long run: a step is their difference). Per part
    the fastest repeat counts, the least disturbed: the fastest difference would favour a disturbed short run."""
    taken = [[measure() for measure in measures] for _ in range(REPEATS)]
    results = []
    for repeats in zip(*taken):
        parts = [min(part) for part in zip(*(timed for timed, _ in repeats))]
        results.append((parts[0] if len(parts) == 1 else parts[1] - parts[0], max(memory or 0 for _, memory in repeats)
                        if repeats[0][1] is not None else None))
    return results


def step_benchmarks(device, steps: int, peak: float, cases) -> list[dict]:
    rows = []
    for shape_name, n in cases:
        shape = SHAPES[shape_name]
        backbone = random_backbone(init_scale=0.02, seed=0, **shape).to(device)
        generator = torch.Generator().manual_seed(0)
        inputs = torch.randint(4, VOCAB, (n, SEQ_LEN), generator=generator).to(device)
        labels = torch.randint(0, 2, (n,), generator=generator).to(device)
        now = select_precision(device, SoftPromptModel(backbone, PROMPT_LEN))
        peft_precisions = sorted({"fp32", best_precision(device)}) if device.type == "cpu" else [best_precision(device)]
        # PEFT rewraps the model it is given: a copy each
        peft = {precision: peft_step(copy.deepcopy(backbone.hf_model), inputs, labels, precision, device, steps)
                for precision in peft_precisions}
        library = {"before": library_step(backbone, inputs, labels, "fp32", device, steps),
                   "now": library_step(backbone, inputs, labels, now, device, steps)}
        timed = dict(zip([*(f"peft {p}" for p in peft), *library], fastest(*peft.values(), *library.values())))
        best_peft = min((name for name in timed if name.startswith("peft")), key=lambda name: timed[name][0])
        full, readout = step_flops(shape, n, PROMPT_LEN + SEQ_LEN), step_flops(shape, n, PROMPT_LEN + SEQ_LEN, True)
        flops = {"before": full, "now": readout if now != "fp32" and backbone.has_readout_forward else full}
        row = {"shape": shape_name, "n": n, "prompt_len": PROMPT_LEN, "seq_len": SEQ_LEN, "precision_now": now,
               **{f"{name.replace(' ', '_')}_ms": 1e3 * seconds for name, (seconds, _) in timed.items()},
               "peft_best": best_peft, "peft_best_ms": 1e3 * timed[best_peft][0],
               "now_vs_peft_best": timed[best_peft][0] / timed["now"][0],
               "now_vs_before": timed["before"][0] / timed["now"][0],
               "step_tflop_full": full / 1e12, "step_tflop_readout": readout / 1e12,
               **{f"{name}_tflops": flops[name] / timed[name][0] / 1e12 for name in library},
               "now_fraction_of_peak": flops["now"] / timed["now"][0] / 1e12 / peak,
               "peft_best_tflops": full / timed[best_peft][0] / 1e12,
               **{f"{name.replace(' ', '_')}_peak_gib": memory for name, (_, memory) in timed.items()}}
        rows.append(row)
        print(f"  {shape_name}, n={n}: {best_peft} {row['peft_best_ms']:.1f} ms, library before (fp32 sdpa) "
              f"{row['before_ms']:.1f} ms, now ({now}) {row['now_ms']:.1f} ms: {row['now_vs_before']:.2f}x before, "
              f"{row['now_vs_peft_best']:.2f}x PEFT's best, {row['now_tflops']:.2f} TFLOP/s = "
              f"{100 * row['now_fraction_of_peak']:.0f}% of the peak", flush=True)
    return rows


def chunk_benchmark(steps: int, peak: float, sizes=(CHUNK_N, CHUNK_SMALL_N), chunks=CHUNK_ROWS) -> dict:
    """On a CPU: a full-batch epoch at n = sizes[0] computed in chunks of each of `chunks` rows, against the epoch of
    sizes[1] rows times sizes[0] / sizes[1] (the same work in small full batches: what an epoch should cost)."""
    device, shape = torch.device("cpu"), SHAPES["2-layer width 512"]
    backbone = random_backbone(init_scale=0.02, seed=0, **shape)
    generator = torch.Generator().manual_seed(0)
    large, small = sizes
    inputs = torch.randint(4, VOCAB, (large, SEQ_LEN), generator=generator)
    labels = torch.randint(0, 2, (large,), generator=generator)
    precision = select_precision(device, SoftPromptModel(backbone, PROMPT_LEN))
    default = default_chunk_rows(SoftPromptModel(backbone, PROMPT_LEN), torch.empty(large, SEQ_LEN, shape["hidden_size"]),
                                 device)
    measures = [library_step(backbone, inputs, labels, precision, device, steps, chunk_rows=chunk) for chunk in chunks]
    measures.append(library_step(backbone, inputs[:small], labels[:small], precision, device, steps))
    *chunked, (small_epoch, _) = fastest(*measures)
    epoch_ms = {chunk: 1e3 * seconds for chunk, (seconds, _) in zip(chunks, chunked)}
    flops = step_flops(shape, large, PROMPT_LEN + SEQ_LEN, precision != "fp32")
    best = min(epoch_ms, key=epoch_ms.get)
    result = {"n": large, "precision": precision, "default_chunk_rows": default, "epoch_ms_per_chunk_rows": epoch_ms,
              "best_chunk_rows": best, f"n{small}_epoch_ms": 1e3 * small_epoch,
              "default_vs_small_epochs": epoch_ms.get(default, float("nan")) / (1e3 * small_epoch * large / small),
              "default_fraction_of_peak": flops / (epoch_ms.get(default, float("nan")) / 1e3) / 1e12 / peak}
    print(f"  n={large} epoch per chunk of rows (ms): "
          + ", ".join(f"{chunk}: {ms:.0f}" for chunk, ms in epoch_ms.items())
          + f"; {large // small} epochs of n={small}: {1e3 * small_epoch * large / small:.0f} ms; default chunk "
          f"{default} rows: {result['default_vs_small_epochs']:.2f}x that, "
          f"{100 * result['default_fraction_of_peak']:.0f}% of the peak", flush=True)
    return result


def decoder_benchmarks(device, steps: int, cases) -> list[dict]:
    """The causal decoder's training step in fp32 through Hugging Face's forward and through the readout decoder."""
    rows = []
    for shape_name, n, prompt_len, generation_steps in cases:
        generator = torch.Generator().manual_seed(0)
        inputs = torch.randint(4, VOCAB, (n, SEQ_LEN), generator=generator).to(device)
        labels = torch.randint(0, 2, (n,), generator=generator).to(device)
        backbones = {name: random_backbone(architecture="gpt2", init_scale=0.1, seed=0, **DECODER_SHAPES[shape_name])
                     .to(device) for name in ("hugging face", "readout decoder")}
        backbones["hugging face"]._readout_forward = lambda embeds: None  # the step before the readout decoder
        timed = dict(zip(backbones, fastest(*(
            library_step(backbone, inputs, labels, "fp32", device, steps, prompt_len, generation_steps)
            for backbone in backbones.values()))))
        row = {"shape": shape_name, "n": n, "prompt_len": prompt_len, "seq_len": SEQ_LEN,
               "generation_steps": generation_steps, "precision": "fp32",
               "hugging_face_ms": 1e3 * timed["hugging face"][0],
               "readout_decoder_ms": 1e3 * timed["readout decoder"][0],
               "readout_decoder_vs_hugging_face": timed["hugging face"][0] / timed["readout decoder"][0]}
        rows.append(row)
        print(f"  {shape_name}, n={n}, p={prompt_len}, K={generation_steps} (fp32): Hugging Face "
              f"{row['hugging_face_ms']:.1f} ms, readout decoder {row['readout_decoder_ms']:.1f} ms "
              f"({row['readout_decoder_vs_hugging_face']:.2f}x)", flush=True)
    return rows


def sweep_benchmark(device, shrink: int, epochs: int, prompt_lengths, sizes) -> dict:
    """6 prompt lengths x 3 sizes on the 2-layer encoder, through `run_sweep` (random tokens, no early stop): one
    config at a time against the batched sweep, results store and rows included."""
    base = RunConfig(n=2, prompt_len=1, dataset="random_tokens", labels="random", seq_len=SEQ_LEN, epochs=epochs,
                     lr=0.005, init_scale=0.3, early_stop=False,
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


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"), help="folder for <device>.json")
    parser.add_argument("--smoke", action="store_true", help="tiny shapes, a few steps: checks that it runs")
    arguments = parser.parse_args(argv)
    device = default_device()
    smoke, on_cpu = arguments.smoke, device.type == "cpu"
    steps = 1 if smoke else 3 if on_cpu else 20
    peak_precision = best_precision(device)
    print(device_name(device), flush=True)
    peak = matmul_peak(device, peak_precision, 256 if smoke else 4096 if on_cpu else 8192, 2 if smoke else 10)
    print(f"  measured {peak_precision} matmul peak: {peak:.2f} TFLOP/s", flush=True)
    cases = [("2-layer width 512", 8)] if smoke else STEP_CASES[device.type]
    decoder_cases = [("GPT-2 width 128", 8, 2, 2)] if smoke else DECODER_CASES[device.type]
    shrink = 400 if smoke else CPU_SHRINK if on_cpu else 1
    sweep = dict(SWEEP, prompt_lengths=SWEEP["prompt_lengths"][:2], sizes=SWEEP["sizes"][:2], epochs=2) if smoke \
        else dict(SWEEP, epochs=3) if on_cpu else SWEEP
    report = {"device": device_name(device), "torch": torch.__version__, "transformers": transformers.__version__,
              "peft": __import__("peft").__version__, "smoke": smoke, "peak_precision": peak_precision,
              "peak_matmul_tflops": peak, "steps": step_benchmarks(device, steps, peak, cases),
              "decoder_steps": decoder_benchmarks(device, steps, decoder_cases),
              "sweep": {"n_shrunk_by": shrink, **sweep_benchmark(device, shrink, **sweep)}}
    if on_cpu:
        report["chunks"] = chunk_benchmark(steps, peak, (64, 32), (64, 16)) if smoke else chunk_benchmark(steps, peak)
    folder = Path(arguments.out)
    folder.mkdir(parents=True, exist_ok=True)
    name = device_file_stem(report["device"])
    (folder / f"{name}.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {folder / f'{name}.json'}")
    return report


if __name__ == "__main__":
    main()
