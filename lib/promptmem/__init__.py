"""promptmem: reproducing two papers on prompt tuning and memorization.

Modules, each one concern (imports flow downwards only):
    data        IMDb / SST-2 cut to N tokens, random tokens; hub or PROMPTMEM_DATA_DIR
    backbones   frozen Hugging Face encoders and causal decoders, random (explicit init scale) or pretrained
    model       the soft-prompt model
    training    the training step (precision by compute capability, AdamW, early stop)
    sweeps      run configs, the crash-safe results store, minimal prompt length
    spectra     singular-value spectra and effective ranks of data and prompts
    profiles    paper / quick / auto, and each notebook's grids
    theory      the papers' formulas (each with its source, exact or proxy) and power-law fits
    attention   exact and polynomial-method attention; the query/key bound B of trained prompts
    plotting    figure style and saving (PNG + PDF + CSV)
"""

from .backbones import Backbone, pretrained_backbone, random_backbone
from .data import PairData, load_tokenizer, low_rank_sequences, make_dataset, random_tokens, sample_texts
from .model import SoftPromptModel
from .profiles import EFFICIENCY, GENERATION, LOW_RANK, MEMORIZATION, init_scale_scan, resolve_profile
from .sweeps import (RunConfig, ResultsStore, backbone_for, best_setting, config_from_row, data_for, grid,
                     min_prompt_length, run_config, run_sweep, train_config)
from .training import select_precision, train

__version__ = "0.1.0"
