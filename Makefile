# spklip: the README's two commands are `make demo` and `make test`; both install what they need first.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.spklip-installed
RUN_DIR ?= runs
export PYTHONUNBUFFERED := 1
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export RAY_USAGE_STATS_ENABLED := 0

.PHONY: install demo test test-fast bench-data bench-model clean

install: $(STAMP)  ## build .venv (CPU torch without a GPU; idempotent)

$(STAMP): pyproject.toml tools/install.sh
	bash tools/install.sh
	touch $@

demo: install  ## build a small moving-digits spike dataset and print its stats
	$(PY) -m spklip.cli data build moving-digits --out $(RUN_DIR)/data/moving-digits --clips-per-class 6 --seed 0
	$(PY) -m spklip.cli data inspect $(RUN_DIR)/data/moving-digits

test: install  ## the whole suite (slow tests included), as CI runs it
	$(PY) -m pytest -q tests

test-fast: install  ## the suite without tests marked slow
	$(PY) -m pytest -q -m "not slow" tests

bench-data: install  ## simulator, shard write and Ray Data read throughput
	$(PY) benchmarks/bench_data.py

bench-model: install  ## forward/backward clips/s and GMAC per clip for each preset; batched vs loop HSFE
	$(PY) benchmarks/bench_model.py

clean:  ## remove run outputs (keeps .venv)
	rm -rf $(RUN_DIR)
