"""How far bf16 moves a causal model's answer after K generated continuous tokens, against fp32: the measurement
behind `select_precision` training prompts on causal models in fp32. Writes
bench/results/generation-rounding-<device>.json.

    python bench/generation_rounding.py            # notebook 02's medium backbone (width 512), n = 200 IMDb inputs
    python bench/generation_rounding.py --smoke    # seconds: checks that it runs

For each init scale σ and K: one untrained prompt (p = 8) on the frozen random GPT-2 of notebook 02's medium profile;
the logits under bf16 autocast (the readout decoder in bf16) against those in fp32, as a relative norm of the
difference, and the share of inputs whose predicted label agrees.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import torch

from promptmem.building import backbone_for, data_for
from promptmem.model import SoftPromptModel
from promptmem.profiles import GENERATION
from promptmem.rows import device_file_stem, device_name

INIT_SCALES = (0.02, 0.05, 0.1, 0.2)
GENERATION_STEPS = (0, 2, 8)


def rounding(config) -> dict:
    model = SoftPromptModel(backbone_for(config), config.prompt_len, generation_steps=config.generation_steps,
                            seed=config.seed)
    inputs = data_for(config).inputs
    with torch.no_grad():
        fp32 = model(inputs)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bf16 = model(inputs).float()
    return {"init_scale": config.init_scale, "generation_steps": config.generation_steps,
            "logits_relative_error": ((bf16 - fp32).norm() / fp32.norm()).item(),
            "labels_agreeing": (bf16.argmax(-1) == fp32.argmax(-1)).float().mean().item()}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"), help="folder for the JSON")
    parser.add_argument("--smoke", action="store_true", help="a tiny backbone and n: checks that it runs")
    arguments = parser.parse_args(argv)
    base = dataclasses.replace(GENERATION["quick" if arguments.smoke else "medium"].base, prompt_len=8,
                               n=8 if arguments.smoke else 200)
    rows = []
    for scale in INIT_SCALES[2:3] if arguments.smoke else INIT_SCALES:
        for steps in GENERATION_STEPS:
            row = rounding(dataclasses.replace(base, init_scale=scale, generation_steps=steps))
            rows.append(row)
            print(f"  σ = {scale}, K = {steps}: bf16 logits {100 * row['logits_relative_error']:.1f}% off fp32's, "
                  f"{100 * row['labels_agreeing']:.1f}% of the labels agree", flush=True)
    device = device_name(torch.device("cpu"))
    report = {"device": device, "torch": torch.__version__, "smoke": arguments.smoke,
              "backbone": {name: getattr(base, name) for name in ("num_layers", "hidden_size", "num_heads",
                                                                     "ffn_size")},
              "n": base.n, "prompt_len": base.prompt_len, "dataset": base.dataset, "rows": rows}
    folder = Path(arguments.out)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"generation-rounding-{device_file_stem(device)}.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {path}")
    return report


if __name__ == "__main__":
    main()
