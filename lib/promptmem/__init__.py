"""promptmem: reproducing two papers on prompt tuning and memorization.

Modules, each one concern (each imports only modules listed above it):
    processor   which processor computed something: vendor, model, bf16 path, widest instruction set
    data        IMDb / SST-2 cut to N tokens, random tokens; hub or PROMPTMEM_DATA_DIR
    readout     a frozen encoder's hidden state at the readout position, computing only what it needs (bf16 or fp32)
    backbones   frozen Hugging Face encoders and causal decoders: random (explicit init scale), or a pretrained
                checkpoint's architecture with its weights as trained, shuffled or drawn afresh
    model       the soft-prompt model
    deadline    the wall-clock deadline the training loops stop at (PROMPTMEM_DEADLINE), their checkpoints saved
    training    the training step (the precision measured fastest, AdamW, early stop, fp32 evaluation)
    batched     many prompt runs on one frozen encoder trained together in shared passes
    spectra     singular-value spectra and effective ranks of data and prompts
    attention   exact and polynomial-method attention; attention statistics and the query/key bound B of prompts
    configs     run configs: their fields, validation and ids; grids; the config of a results row
    building    what a config trains: its frozen backbone and data (cached), model and training arguments
    rows        a results row: its columns (metrics, prompt spectra, attention statistics) and schema version
    store       the crash-safe results store (damaged files refused, salvaged on request), measurements kept beside
                it, re-plot mode
    chunking    which configs share a batched pass, and chunks of them by memory and prompt length
    sweeps      running configs: one alone, or a sweep that skips finished ones (batched on a GPU)
    search      the smallest memorizing prompt of a setting on the integers: a guess, doubling, bisection, resumable;
                its brackets along n or N, searched or read off a grid
    seeds       a threshold over seeds: success rates with Wilson intervals, p50 and its bracket, the seeded search
                (resumable), the bootstrap interval of p50's exponent
    capacity    bits a trained prompt stores about random labels (likelihood and hard-decision views); capacity
                curves along n, their plateau or rate; the anchors (Morris et al., the perceptron)
    tables      finished rows into what the figures plot: best setting, minimal prompt length, bounds; training cost
    reproducibility  what a rerun reproduces across machines and batch shapes, and within which tolerance
    seq2seq     sequence-to-sequence memorization through a frozen causal model's LM head: pairs, teacher-forced
                training, exact match under greedy decoding, their sweep
    single_layer     Hu et al.'s frozen 1-layer, 1-head Transformer: grid and Lipschitz data, prompt fits, their sweep
    profiles    paper / quick / auto, and each notebook's grids
    provenance  where the committed figures come from (figures/provenance.json); stripping executed notebooks
    theory      the papers' formulas (each with its source, exact or proxy) and power-law fits
    plotting    figure style and saving (PNG + PDF + CSV)
    allocation  training within a wall-clock allocation on an offline GPU machine (notebooks run until a deadline,
                their new rows and checkpoints packed) and merging what it brings back into results/
"""

from .backbones import Backbone, available_checkpoint, pretrained_backbone, random_backbone
from .building import backbone_for, data_for, test_data_for, train_config
from .configs import RunConfig, checkpoint_base, config_from_row, grid
from .data import PairData, load_tokenizer, low_rank_sequences, make_dataset, random_tokens, sample_texts
from .model import SoftPromptModel
from .profiles import (CAPACITY, EFFICIENCY, GENERATION, INITIALIZATION, LOW_RANK, MEMORIZATION, SEQ2SEQ,
                       SINGLE_LAYER, init_scale_scan, resolve_profile)
from .rows import device_name
from .store import ResultsStore, read_results, stored_table
from .search import Bracket, prompt_length_runs, smallest_memorizing_prompt, smallest_memorizing_prompts
from .seeds import (brackets_of_rates, p50_exponent, rates_of_runs, seeded_threshold, seeded_thresholds, threshold_runs,
                    thresholds_of)
from .sweeps import run_config, run_sweep
from .tables import (best_setting, evaluation_curves, min_prompt_length, prompt_bounds, prompt_length_brackets,
                     shortest_memorizing, show_training)
from .training import select_precision, train

__version__ = "0.1.0"
