# fiqa: common tasks. `make install train` is the quick start; `make test` the default suite.
PY ?= python
VENV ?= .venv
TORCH = torch==2.14.1 torchvision==0.29.1
# real photos for the tests (insightface's t1.jpg, Tom_Hanks_54745.png): read from the wheel, never installed
TESTDATA ?= .cache/testdata
# GPU by default; on a CPU-only machine a small configuration (the GPU grid would take hours)
THROUGHPUT_ARGS ?= $(shell $(PY) -c "import torch; print('' if torch.cuda.is_available() else '--backbones iresnet18 --batches 32 --steps 5 --warmup 2 --num-classes 10000')" 2>/dev/null)

.PHONY: help install train test test-full test-gpu bench figures lint format sheet

.DEFAULT_GOAL := help

help:               ## this list
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/:[^#]*## +/\t/' | expand -t 20

install:            ## editable install (torch pinned to the version on this machine's disk)
	$(PY) -m pip install $(TORCH)
	$(PY) -m pip install -e ".[dev]"
	$(PY) -m pip download --no-deps -q -d $(TESTDATA) insightface==2.1

train:              ## the embedded default: CR-FIQA on SynthFace, CPU, a few minutes
	$(PY) main.py

test:               ## fast suite (~ minutes on 2 cores)
	$(PY) -m pytest -m "not slow and not gpu" -q

test-full:          ## everything that runs on CPU, incl. multi-process DDP
	$(PY) -m pytest -m "not gpu" -q

test-gpu:           ## on a machine with a CUDA device
	$(PY) -m pytest -m gpu -q

bench:              ## speed figures (never part of the tests)
	$(PY) benchmarks/synthface_throughput.py
	bash benchmarks/default_job.sh
	$(PY) benchmarks/recordio_throughput.py
	$(PY) benchmarks/serfiq_cost.py
	$(PY) benchmarks/erc_speed.py
	$(PY) benchmarks/ijb_speed.py
	$(PY) benchmarks/partial_fc_memory.py
	$(PY) benchmarks/throughput.py $(THROUGHPUT_ARGS)
	$(PY) benchmarks/align_throughput.py
	$(PY) benchmarks/checkpoint_cost.py
	$(PY) benchmarks/grafiqs_cost.py
	$(PY) benchmarks/froq_cost.py
	$(PY) benchmarks/iso_speed.py

lint:               ## ruff check + ruff format --check (CI runs it)
	$(PY) -m ruff check src tests benchmarks main.py
	$(PY) -m ruff format --check src tests benchmarks main.py

format:             ## ruff format in place
	$(PY) -m ruff format src tests benchmarks main.py

figures:            ## README's default-job table, measured on this machine
	bash benchmarks/default_job.sh

sheet:              ## SynthFace contact sheet
	$(PY) -m fiqa.data.contact_sheet --out docs/synthface.png
