"""Profiles: `paper` runs the papers' settings, `quick` the same experiment shrunk to minutes on 2 CPU cores, and
`medium` the papers' backbones and optimizers at the sizes 2 CPU cores finish in hours (a subset of paper's grids).

`auto` picks paper on a CUDA machine and quick elsewhere (never medium: it is asked for by name); the environment
variable PROMPTMEM_PROFILE overrides what `auto` picks (the tests set it to quick, so a GPU machine running `make test`
stays quick).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field

from .backbones import ENCODER_2X512, MINILM, ROBERTA_BASE, available_checkpoint
from .configs import RunConfig, checkpoint_base
from .seeds import check_seeds
from .seq2seq import Seq2SeqConfig
from .single_layer import SingleLayerConfig
from .store import ResultsStore
from .training import default_device

PROFILES = ("auto", "paper", "medium", "quick")
PROFILE_ENV = "PROMPTMEM_PROFILE"


def resolve_profile(profile: str = "auto") -> str:
    """'paper', 'medium' or 'quick'; says which it picked and why."""
    if profile not in PROFILES:
        raise ValueError(f"profile must be one of {PROFILES}, got {profile!r}")
    if profile != "auto":
        return profile
    override = os.environ.get(PROFILE_ENV, "").strip()
    if override:
        if override not in PROFILES[1:]:
            raise ValueError(f"{PROFILE_ENV} must be one of {PROFILES[1:]}, got {override!r}")
        print(f"profile auto -> {override} (set by {PROFILE_ENV})")
        return override
    picked = "paper" if default_device().type == "cuda" else "quick"
    print(f"profile auto -> {picked} ({'runs go to a CUDA GPU' if picked == 'paper' else 'runs go to the CPU'})")
    return picked


@dataclass(frozen=True)
class InitScaleScan:
    """The scan of a random backbone's init scale: random labels, one n, one prompt length; only the scale varies."""

    init_scales: tuple[float, ...] = (0.02, 0.05, 0.1, 0.2, 0.5, 1.0)
    n: int = 1600
    prompt_len: int = 8
    epochs: int = 300


QUICK_SCAN = InitScaleScan(init_scales=(0.02, 0.1, 0.3, 1.0), n=128, prompt_len=4, epochs=100)


@dataclass(frozen=True)
class MemorizationSettings:
    """Notebook 01. `base` carries the backbone shape and the optimizer; the tuples are the grids."""

    base: RunConfig
    n_values: tuple[int, ...]
    prompt_lengths: tuple[int, ...]  # the grid the smallest memorizing p is read off, or (searching) the ticks
    label_kinds: tuple[str, ...] = ("true", "random")
    # None: read the smallest memorizing p off the grid; an integer: search it on the integers 1…this
    # (promptmem.search: from the last n's threshold grown with n, then bisection), in panels (a)-(b) and (c)
    search_max_prompt_len: int | None = None
    # seeds per n: seeds 0 … m-1 of the data draw, labels and initial prompt at each p (None: one); 4 or more let a
    # unanimous rate bracket p50 (promptmem.seeds). The backbone's seed varied at one n, random labels, data seed 0.
    seeds: tuple[int, ...] | None = None
    backbone_seeds: int = 1
    backbone_seed_n: int | None = None
    # panel (c): N at a fixed n
    seq_lens: tuple[int, ...] = (4, 8, 16)
    seq_len_n: int = 1600
    scan: InitScaleScan = InitScaleScan()
    # panel (d): the same shape trained from scratch (at scratch_lr), and a compact-vocabulary model of about the
    # longest prompt's size (at the prompt's lr; width 4, as LayerNorm over fewer dimensions is degenerate), at
    # baseline_n_values (None: every n)
    scratch_lr: float = 0.001
    baseline_n_values: tuple[int, ...] | None = None
    small_model: dict = field(default_factory=lambda: dict(hidden_size=4, num_heads=1, ffn_size=16))


def init_scale_scan(settings) -> list[RunConfig]:
    """The configs of `settings.scan` on `settings.base`. Notebook 01 runs them; later notebooks look them up."""
    scan = settings.scan
    scan_base = dataclasses.replace(settings.base, n=scan.n, prompt_len=scan.prompt_len, labels="random",
                                    epochs=scan.epochs)
    return [dataclasses.replace(scan_base, init_scale=scale) for scale in scan.init_scales]


MEMORIZATION = {
    # The paper's setup at its n, and the medium profile's two smaller n (the same configs: their rows are shared
    # where the scan picks the same σ), so the exponent rests on five n. The smallest memorizing p is searched on the
    # integers. The N panel and the baselines stay at n = 1600: a from-scratch run at n = 3600 trains every weight
    # for hours, and the medium profile's rows there are the paper profile's.
    "paper": MemorizationSettings(
        base=RunConfig(n=1600, prompt_len=8, dataset="imdb", seq_len=8, epochs=1000, lr=0.005),
        n_values=(400, 800, 1600, 2500, 3600),
        prompt_lengths=(1, 2, 4, 8, 16, 32),
        search_max_prompt_len=32,
        seeds=(4, 4, 1, 1, 1),
        backbone_seeds=4,
        backbone_seed_n=400,
        seq_len_n=1600,
        baseline_n_values=(1600,),
    ),
    # The paper's backbone, optimizer and epoch budget; n up to the paper's smallest, p on the powers of two of its
    # grid and 3, the one grid point between the thresholds the powers found at n = 1600 (p = 2 fails, 4 memorizes):
    # without it p doubles with n on the grid alone, whatever the rate. The scan at the smallest n (measured on 2
    # cores: an epoch at n = 1600 takes 0.5 s at p = 1, 0.9 s at p = 8 and 3.6 s at p = 32, in bf16). The N panel at
    # the paper's n: at n = 400 one prompt token memorizes every N = 4, 8, 16 (in 617, 494, 366 epochs; those rows
    # stay in results/), so the panel could not show N's effect.
    "medium": MemorizationSettings(
        base=RunConfig(n=400, prompt_len=8, dataset="imdb", seq_len=8, epochs=1000, lr=0.005),
        n_values=(400, 800, 1600),
        prompt_lengths=(1, 2, 3, 4, 8, 16, 32),
        seq_len_n=1600,
        scan=InitScaleScan(n=400),
        baseline_n_values=(1600,),
    ),
    "quick": MemorizationSettings(
        base=RunConfig(n=64, prompt_len=8, dataset="imdb", seq_len=8, epochs=100, lr=0.02,
                       hidden_size=128, num_heads=4, ffn_size=512),
        n_values=(32, 64, 128, 256),
        prompt_lengths=(1, 2, 3, 4, 6, 8, 16),  # the search's ticks, and the Dask benchmark's grid
        search_max_prompt_len=16,  # the paper profile's search, so make test runs it
        seeds=(4, 4, 1, 1),
        backbone_seeds=4,
        backbone_seed_n=64,
        seq_len_n=128,
        scan=QUICK_SCAN,
    ),
}


@dataclass(frozen=True)
class LowRankSettings:
    """Notebook 03. `base` is notebook 01's backbone and optimizer; the init scale comes from notebook 01's scan."""

    base: RunConfig
    n: int  # the same n for the synthetic data, SST-2 and the random-token control
    ranks: tuple[int, ...]  # the last is the full width: the full-rank control
    random_label_ranks: tuple[int, ...]  # ranks also run with random labels (pure memorization)
    prompt_lengths: tuple[int, ...]
    spectrum_ranks: tuple[int, ...]  # synthetic ranks whose data spectra are drawn
    # seeds 0 … m-1 of each rank's p50 with the rule labels (the claim's setting), searched on the integers up to the
    # longest prompt of the grid; the other panels are one run (seed 0) per grid point
    threshold_seeds: int = 1

    def __post_init__(self):
        check_seeds(self.threshold_seeds, "threshold_seeds")


LOW_RANK = {
    "paper": LowRankSettings(
        base=MEMORIZATION["paper"].base,
        n=1000,
        ranks=(1, 2, 4, 8, 16, 32, 64, 128, 512),
        random_label_ranks=(1, 2, 4, 8, 16, 32, 64, 128, 512),
        prompt_lengths=(1, 2, 3, 4, 6, 8, 12, 16, 24, 32),
        spectrum_ranks=(4, 32, 512),
        threshold_seeds=4,
    ),
    # The paper's n = 1000 on the width-512 encoder; four ranks spanning 1 to the full width, p up to 16.
    "medium": LowRankSettings(
        base=MEMORIZATION["medium"].base,
        n=1000,
        ranks=(1, 8, 64, 512),
        random_label_ranks=(1, 512),
        prompt_lengths=(1, 2, 4, 8, 16),
        spectrum_ranks=(4, 32, 512),
        threshold_seeds=3,  # each run takes 2–10 minutes on 2 CPU cores; four would bracket p50 at 95%
    ),
    "quick": LowRankSettings(
        base=MEMORIZATION["quick"].base,
        n=128,
        ranks=(1, 2, 4, 16, 128),
        random_label_ranks=(1, 4, 128),
        prompt_lengths=(1, 2, 3, 4, 6, 8),
        spectrum_ranks=(4, 32, 128),
        threshold_seeds=3,
    ),
}


@dataclass(frozen=True)
class GenerationSettings:
    """Notebook 02: a causal backbone that generates K continuous tokens before it answers."""

    base: RunConfig
    n_values: tuple[int, ...]
    prompt_lengths: tuple[int, ...]
    generation_steps: tuple[int, ...] = (0, 1, 2, 4, 8)
    label_kinds: tuple[str, ...] = ("true", "random")
    scan: InitScaleScan = InitScaleScan()  # the causal backbone's own scan, as notebook 01's for the encoder
    # None: read p50 off the grid `prompt_lengths`; an integer: search it on the integers 1…this, as notebook 01 does
    search_max_prompt_len: int | None = None
    seeds: int = 1  # seeds 0 … m-1 of the data draw, labels and initial prompt at each (n, K, p)


GENERATION = {
    # Searched on the integers over four seeds, as notebook 01's paper profile: at n >= 1600 a threshold moves by one
    # or two between seeds.
    "paper": GenerationSettings(
        base=dataclasses.replace(MEMORIZATION["paper"].base, architecture="gpt2", generation_steps=0),
        n_values=(1600, 3600),
        prompt_lengths=(1, 2, 4, 8, 16, 32),
        search_max_prompt_len=32,
        seeds=4,
    ),
    # The causal backbone at width 512 and one n: what 2 CPU cores add to the quick profile in a few hours.
    "medium": GenerationSettings(
        base=dataclasses.replace(MEMORIZATION["medium"].base, architecture="gpt2", generation_steps=0),
        n_values=(400,),
        prompt_lengths=(1, 2, 4, 8, 16),
        generation_steps=(0, 2, 8),
        label_kinds=("true",),
        scan=InitScaleScan(n=400),
    ),
    "quick": GenerationSettings(
        base=dataclasses.replace(MEMORIZATION["quick"].base, architecture="gpt2", generation_steps=0),
        n_values=(64, 128),
        prompt_lengths=(1, 2, 3, 4, 6),
        generation_steps=(0, 2, 8),  # K = 4 left out to keep make test within its budget (rows stay in results/)
        label_kinds=("true",),
        scan=dataclasses.replace(QUICK_SCAN, n=64),
    ),
}


@dataclass(frozen=True)
class InitializationSettings:
    """Notebook 04: one pretrained architecture with its weights as trained, shuffled, and drawn afresh at each init
    scale; and the 2-layer encoder of notebook 01 at the same scales. `base` carries the data (train and test) and the
    optimizer; the seed draws the data sample, the prompt and the backbone's random weights alike."""

    base: RunConfig
    checkpoint: str  # the pretrained model the paper uses
    fallback: str  # used, saying so, when `checkpoint` cannot be loaded (no hub, no local copy)
    init_scales: tuple[float, ...]
    prompt_lengths: tuple[int, ...]  # the paper's 8 and a longer one
    seeds: tuple[int, ...]
    encoder: dict  # the shape of the random 2-layer encoder

    def checkpoint_to_use(self, results_path) -> str:
        """The checkpoint whose runs of this profile the results already hold (the paper's first, then the fallback:
        a re-plot needs neither the hub nor training); else the paper's checkpoint if it loads, else the fallback
        (said so)."""
        frame = ResultsStore(results_path).load()
        if len(frame) and "model_name" in frame.columns and (frame.model_name == self.checkpoint).any():
            return self.checkpoint
        finished = ResultsStore(results_path).finished_ids()
        if self.fallback != self.checkpoint and any(config.config_id in finished
                                                    for config in self.configs(self.fallback)):
            print(f"the results hold this profile's runs with {self.fallback}, so it is used; "
                  f"model_name={self.checkpoint!r} trains the paper's checkpoint instead")
            return self.fallback
        return available_checkpoint(self.checkpoint, self.fallback)

    def configs(self, model_name: str) -> list[RunConfig]:
        """Every run, grouped by backbone (so that each frozen backbone is built once): for `model_name` (the
        checkpoint or its fallback) pretrained, shuffled and random weights, then the 2-layer encoder."""
        frozen = [checkpoint_base(self.base, model_name, weights) for weights in ("pretrained", "shuffled")]
        frozen += [dataclasses.replace(checkpoint_base(self.base, model_name, "random"), init_scale=scale)
                   for scale in self.init_scales]
        frozen += [dataclasses.replace(self.base, init_scale=scale, **self.encoder) for scale in self.init_scales]
        return [dataclasses.replace(backbone, seed=seed, backbone_seed=seed, prompt_len=prompt_len)
                for backbone in frozen for seed in self.seeds for prompt_len in self.prompt_lengths]


INITIALIZATION = {
    "paper": InitializationSettings(
        base=RunConfig(n=2000, test_n=200, prompt_len=8, dataset="sst2", seq_len=8, epochs=100, lr=0.001,
                       batch_size=32, early_stop=False, eval_every=5),
        checkpoint=ROBERTA_BASE,
        fallback=MINILM,
        init_scales=(0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0),
        prompt_lengths=(8, 32),
        seeds=(0, 1, 2),
        encoder=dict(ENCODER_2X512),
    ),
    # The paper's data, optimizer and prompt lengths with three seeds, and two init scales: transformers' default
    # 0.02 (uniform attention, where a random backbone stays near chance) and 0.1, where notebook 01's scan found the
    # width-512 encoder memorizing fastest, so that the pretrained weights also meet a random backbone that can fit.
    # Measured on 2 cores: a MiniLM run takes 5-7 minutes at p = 8 and 10-17 at p = 32, the 2-layer encoder's 3-4
    # and 6-7; these 36 runs, about 5 hours alone.
    "medium": InitializationSettings(
        base=RunConfig(n=2000, test_n=200, prompt_len=8, dataset="sst2", seq_len=8, epochs=100, lr=0.001,
                       batch_size=32, early_stop=False, eval_every=5),
        checkpoint=ROBERTA_BASE,
        fallback=MINILM,
        init_scales=(0.02, 0.1),
        prompt_lengths=(8, 32),
        seeds=(0, 1, 2),
        encoder=dict(ENCODER_2X512),
    ),
    "quick": InitializationSettings(
        base=RunConfig(n=32, test_n=64, prompt_len=8, dataset="sst2", seq_len=8, epochs=12, lr=0.05,
                       batch_size=8, early_stop=False, eval_every=4),
        checkpoint=MINILM,
        fallback=MINILM,
        init_scales=(0.02, 0.05, 0.1, 0.2, 0.5),
        prompt_lengths=(8, 12),
        seeds=(0, 1),
        encoder=dict(num_layers=2, hidden_size=128, num_heads=4, ffn_size=512),
    ),
}


@dataclass(frozen=True)
class EfficiencySettings:
    """Notebook 06: the polynomial method against exact attention, Q and K with entries bounded by B."""

    dim: int
    lengths: tuple[int, ...]  # L of the error sweep
    bounds: tuple[float, ...]
    degrees: tuple[int, ...]
    timing_lengths: tuple[int, ...]
    timing_bounds: tuple[float, ...]  # timed at the degree error 1/L needs: one B below sqrt(ln L), one above


EFFICIENCY = {
    "paper": EfficiencySettings(
        dim=4,
        lengths=(2 ** 8, 2 ** 10, 2 ** 12, 2 ** 14, 2 ** 16),
        bounds=tuple(b / 4 for b in range(2, 17)),  # 0.5 to 4
        degrees=(1, 2, 3, 4, 6, 8, 10, 12, 14, 16, 20),
        timing_lengths=tuple(2 ** e for e in range(8, 17)),
        timing_bounds=(1.0, 3.0),
    ),
    "quick": EfficiencySettings(
        dim=4,
        lengths=(2 ** 8, 2 ** 10, 2 ** 12),
        bounds=(0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5),
        degrees=(1, 2, 4, 6, 8, 12, 16),
        timing_lengths=tuple(2 ** e for e in range(8, 14)),
        timing_bounds=(1.0, 3.0),
    ),
}
# Nothing is trained in notebook 06: the medium profile is the quick one.
EFFICIENCY["medium"] = EFFICIENCY["quick"]


@dataclass(frozen=True)
class SingleLayerSettings:
    """Notebook 08: Hu et al.'s frozen 1-layer, 1-head Transformer. `base` carries the backbone and the optimizer."""

    base: SingleLayerConfig
    shapes: tuple[tuple[int, int], ...]  # (d, L) of the capacity panels' grid datasets
    grid_points: int  # per coordinate: n = grid_points^(dL), every cell of the grid
    prompt_lengths: tuple[int, ...]
    errors: tuple[float, ...]  # the levels ε at which the smallest prompt is read off
    lipschitz_shapes: tuple[tuple[int, int], ...]  # (d, L) of the universality panel
    lipschitz_constants: tuple[float, ...]
    lipschitz_n: int  # training inputs of a Lipschitz map
    test_n: int  # its held-out inputs

    def capacity_configs(self) -> list[SingleLayerConfig]:
        return [dataclasses.replace(self.base, task="memorize", dim=dim, length=length, prompt_len=prompt_len,
                                    grid_points=self.grid_points, n=self.grid_points ** (dim * length))
                for dim, length in self.shapes for prompt_len in self.prompt_lengths]

    def lipschitz_configs(self) -> list[SingleLayerConfig]:
        return [dataclasses.replace(self.base, task="lipschitz", dim=dim, length=length, prompt_len=prompt_len,
                                    lipschitz=constant, n=self.lipschitz_n, test_n=self.test_n)
                for dim, length in self.lipschitz_shapes for constant in self.lipschitz_constants
                for prompt_len in self.prompt_lengths]


SINGLE_LAYER = {
    # dL from 1 to 5 two ways: one token of d = dL dimensions, and d = 1 with L = dL tokens; n = 2^(dL) up to 32
    "medium": SingleLayerSettings(
        base=SingleLayerConfig(task="memorize", n=1, dim=1, length=1, prompt_len=1, width=32, epochs=4000,
                               target_error=0.02),
        shapes=((1, 1), (2, 1), (3, 1), (4, 1), (5, 1), (1, 2), (1, 3), (1, 4), (1, 5)),
        grid_points=2,
        prompt_lengths=(1, 2, 4, 8, 16, 32, 64),
        errors=(0.4, 0.2, 0.1, 0.05, 0.02),
        lipschitz_shapes=((2, 1), (2, 2), (1, 4)),
        lipschitz_constants=(0.5, 1.0, 2.0, 4.0),
        lipschitz_n=64,
        test_n=256,
    ),
    "quick": SingleLayerSettings(
        base=SingleLayerConfig(task="memorize", n=1, dim=1, length=1, prompt_len=1, width=32, epochs=1500,
                               target_error=0.02),
        shapes=((1, 1), (2, 1), (3, 1), (1, 2), (1, 3)),
        grid_points=2,
        prompt_lengths=(1, 2, 4, 8, 16),
        errors=(0.4, 0.2, 0.1, 0.05, 0.02),
        lipschitz_shapes=((2, 1), (2, 2)),
        lipschitz_constants=(0.5, 2.0),
        lipschitz_n=32,
        test_n=128,
    ),
}
# Hu et al. report no experiments: the largest profile, medium, is the paper profile too.
SINGLE_LAYER["paper"] = SINGLE_LAYER["medium"]


@dataclass(frozen=True)
class Seq2SeqSettings:
    """Notebook 07: sequence-to-sequence memorization through the frozen LM head of notebook 02's causal backbone, the
    shape and init-scale scan of notebook 02's `backbone_profile`. `base` carries the optimizer and the N, M and V
    that a panel does not vary; `panel_n` is the n of the panels over M, N and V."""

    base: Seq2SeqConfig
    backbone_profile: str
    prompt_lengths: tuple[int, ...]
    n_values: tuple[int, ...]  # (a) p against n
    panel_n: int
    output_lens: tuple[int, ...]  # (b) p against M
    seq_lens: tuple[int, ...]  # (c) p against N
    alphabet_sizes: tuple[int, ...]  # (d) the information view: V at panel_n
    imdb_n_values: tuple[int, ...]  # (d) IMDb reviews' next M tokens (the whole vocabulary)
    imdb_output_lens: tuple[int, ...]
    agreement_n_values: tuple[int, ...]  # (e) M = 1, V = 2 beside notebook 02's classifier on the same data
    # seeds 0 … m-1 (the data draw, targets and initial prompt) of panel (a), p against n; the others: seed 0
    seeds: int = 1

    def __post_init__(self):
        check_seeds(self.seeds)

    def backbone_base(self, init_scale: float) -> Seq2SeqConfig:
        """`base` on notebook 02's backbone shape at `init_scale`."""
        shape = GENERATION[self.backbone_profile].base
        return dataclasses.replace(self.base, num_layers=shape.num_layers, hidden_size=shape.hidden_size,
                                   num_heads=shape.num_heads, ffn_size=shape.ffn_size, init_scale=init_scale)

    def panels(self, init_scale: float) -> dict[str, list[Seq2SeqConfig]]:
        """Each panel's configs, every prompt length of the grid: 'n' (with its seeds), 'M', 'N', 'V', 'imdb' and
        'agreement'."""
        base = self.backbone_base(init_scale)

        def prompts(configs):
            return [dataclasses.replace(config, prompt_len=p) for config in configs for p in self.prompt_lengths]

        at_n = dataclasses.replace(base, n=self.panel_n)
        return {
            "n": prompts(dataclasses.replace(base, n=n, seed=seed)
                         for n in self.n_values for seed in range(self.seeds)),
            "M": prompts(dataclasses.replace(at_n, output_len=m) for m in self.output_lens),
            "N": prompts(dataclasses.replace(at_n, seq_len=length) for length in self.seq_lens),
            "V": prompts(dataclasses.replace(at_n, alphabet_size=v) for v in self.alphabet_sizes),
            "imdb": prompts(dataclasses.replace(base, dataset="imdb", alphabet_size=None, n=n, output_len=m)
                            for n in self.imdb_n_values for m in self.imdb_output_lens),
            "agreement": prompts(dataclasses.replace(base, n=n, output_len=1, alphabet_size=2)
                                 for n in self.agreement_n_values),
        }


SEQ2SEQ = {
    # Notebook 02's quick backbone (width 128) and optimizer; at width 512 a causal model trains several times slower
    # on a CPU. Measured on 2 cores: an epoch at n = 128, M = 2, p = 8 takes about 0.05 s.
    "medium": Seq2SeqSettings(
        base=Seq2SeqConfig(n=64, prompt_len=1, seq_len=8, output_len=2, alphabet_size=4, epochs=500, lr=0.02),
        backbone_profile="quick",
        prompt_lengths=(1, 2, 4, 8, 16, 32, 64),
        n_values=(16, 32, 64, 128, 256, 512),
        panel_n=64,
        output_lens=(1, 2, 4, 8),
        seq_lens=(4, 8, 16),
        alphabet_sizes=(2, 4, 16, 256),
        imdb_n_values=(16, 32),
        imdb_output_lens=(1,),
        agreement_n_values=(32, 64, 128),
    ),
    "quick": Seq2SeqSettings(
        base=Seq2SeqConfig(n=32, prompt_len=1, seq_len=8, output_len=2, alphabet_size=4, epochs=100, lr=0.02),
        backbone_profile="quick",
        prompt_lengths=(1, 2, 4, 8),
        n_values=(8, 16, 32),  # three seeds each; at n = 64 no p <= 8 memorizes in 100 epochs
        panel_n=32,
        output_lens=(1, 2, 4),
        seq_lens=(4, 8, 16),
        alphabet_sizes=(2, 4, 16),
        imdb_n_values=(16,),
        imdb_output_lens=(1,),
        agreement_n_values=(32, 64),
        seeds=3,
    ),
}
# Wang & Lin report no sequence-to-sequence experiment: the largest profile, medium, is the paper profile too.
SEQ2SEQ["paper"] = SEQ2SEQ["medium"]


def encoder_shape(width: int, depth: int = 2, head_dim: int = 64) -> dict:
    """A frozen random encoder of `width` and `depth`, heads of `head_dim` dimensions and an FFN 4x the width (the
    paper's 2-layer width-512 encoder is encoder_shape(512))."""
    return dict(num_layers=depth, hidden_size=width, num_heads=max(1, width // head_dim), ffn_size=4 * width)


@dataclass(frozen=True)
class CapacitySettings:
    """Notebook 09: the bits a prompt stores about random labels. `base` carries the data, the labels (random), the
    optimizer and the full epoch budget (no early stop: a run below its capacity keeps growing confident)."""

    base: RunConfig
    backbones: tuple[dict, ...]  # encoder shapes: widths at depth 2 (the first is the budget panel's), depths at one width
    prompt_lengths: tuple[int, ...]
    n_start: int  # each capacity curve doubles n from here (from the last p's largest memorized n, p after p)
    n_max: int
    beyond: int  # doublings past the first n a run does not memorize entirely
    scan: InitScaleScan  # each backbone's own scan of σ, at n = scan.n scaled with the width (scan.n at the first's)
    long_budget: int  # epochs of the budget panel (3x base.epochs), first backbone, first prompt length
    pretrained: str  # a checkpoint: its pretrained weights against its architecture drawn at random, one p
    pretrained_n_max: int  # the pretrained panel's largest n (its backbone is the slowest)
    pretrained_prompt_len: int = 1
    # seeds per backbone (aligned with `backbones`): seeds 0 … m-1 of the data draw, labels and initial prompt each get
    # their own capacity curves; with 3 or more the exponent of C in p gets an interval (None: one seed each)
    seeds: tuple[int, ...] | None = None

    def __post_init__(self):
        if self.seeds is not None and (len(self.seeds) != len(self.backbones) or any(
                not isinstance(count, int) or isinstance(count, bool) or count < 1 for count in self.seeds)):
            raise ValueError(f"seeds must be None or one integer >= 1 per backbone ({len(self.backbones)}), got "
                             f"{self.seeds!r}")

    def seeds_of(self, shape: dict) -> int:
        return 1 if self.seeds is None else self.seeds[self.backbones.index(shape)]

    def scan_configs(self, shape: dict) -> list[RunConfig]:
        scan = self.scan
        n = scan.n * shape["hidden_size"] // self.backbones[0]["hidden_size"]
        return [dataclasses.replace(self.base, **shape, n=n,
                                    prompt_len=scan.prompt_len, epochs=scan.epochs, early_stop=True, init_scale=scale)
                for scale in scan.init_scales]


CAPACITY = {
    # Widths 128, 256, 512 at depth 2 and depths 1, 4 at width 128; the paper's optimizer (AdamW lr 0.005, 1000
    # epochs, full batch) on IMDb inputs of N = 8 tokens; n up to 4096 (at width 512 an epoch there takes about 2.5 s
    # on 2 cores). The first backbone is the budget panel's; width 512 comes last, as it costs the most. The pretrained panel: all-MiniLM-L6-v2 (the hub's RoBERTa-base is not reachable
    # from these machines; notebook 04 uses the same fallback).
    "medium": CapacitySettings(
        base=RunConfig(n=64, prompt_len=1, dataset="imdb", labels="random", seq_len=8, epochs=1000, lr=0.005,
                       early_stop=False, eval_every=50),
        backbones=(encoder_shape(128), encoder_shape(256), encoder_shape(128, depth=1), encoder_shape(128, depth=4),
                   encoder_shape(512)),
        prompt_lengths=(1, 2, 4),
        n_start=64,
        n_max=4096,
        beyond=2,
        scan=InitScaleScan(init_scales=(0.05, 0.1, 0.2, 0.5), n=256, prompt_len=1, epochs=300),
        long_budget=3000,
        pretrained=MINILM,
        pretrained_n_max=2048,
        seeds=(3, 3, 1, 1, 1),  # widths 128 and 256 over seeds; width 512 is the costliest (7 CPU hours a seed)
    ),
    # Widths 32 and 64, depths 1 and 2, n up to 256, MiniLM's panel at n = 16: make test's share (about 2 min).
    "quick": CapacitySettings(
        base=RunConfig(n=16, prompt_len=1, dataset="imdb", labels="random", seq_len=8, epochs=100, lr=0.02,
                       early_stop=False, eval_every=10),
        backbones=(encoder_shape(32, head_dim=8), encoder_shape(64, head_dim=16),
                   encoder_shape(32, depth=1, head_dim=8)),
        prompt_lengths=(1, 2, 4),
        n_start=16,
        n_max=256,
        beyond=1,
        scan=InitScaleScan(init_scales=(0.1, 0.3, 1.0), n=32, prompt_len=1, epochs=100),
        long_budget=300,
        pretrained=MINILM,
        pretrained_n_max=16,
        seeds=(3, 1, 1),  # the first backbone's curves over seeds, in make test's budget
    ),
}
# Wang & Lin measure no capacity in bits: the largest profile, medium, is the paper profile too.
CAPACITY["paper"] = CAPACITY["medium"]
