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

.PHONY: install demo test test-fast bench-data bench-model bench-train bench-gpu clean cluster-up cluster-down cluster-status mlflow-ui train

install: $(STAMP)  ## build .venv (CPU torch without a GPU; idempotent)

$(STAMP): pyproject.toml tools/install.sh
	bash tools/install.sh
	touch $@

DEMO_DATA ?= $(RUN_DIR)/data/moving-digits
# 4 digits x 4 motions x 30 clips; held out: digits 0 and 1 moving left or right (4 classes, 120 clips), so zero-shot
# must compose a digit seen moving up/down with a direction seen on other digits: an order-blind model tells the digit
# but not left from right (ceiling 0.5, chance 0.25). 12 seen classes: 216 training, 72 val, 72 test clips
DEMO_BUILD ?= --digits 0,1,2,3 --motions left,right,up,down --clips-per-class 30 --unseen 0:left,0:right,1:left,1:right --seed 0
# 600 optimiser steps per run (50 epochs of this data): what spklip-tiny needs to learn the direction of motion
DEMO_STEPS ?= 600
DEMO_SEEDS ?= 3
# "does the HSFE beat a plain spike average?": HSFE (K=3), one sub-block, the spike average, each with DEMO_SEEDS seeds
DEMO_STUDY ?= --first _variant=hsfe,hsfe-k1,average

demo: install  ## moving-digits spikes + the baselines study (HSFE vs K=1 vs spike average, DEMO_SEEDS=3 seeds; in-process Ray, MLflow sqlite)
	@[ -d $(DEMO_DATA) ] && echo "using the dataset in $(DEMO_DATA) (make clean rebuilds it)" || \
	$(PY) -m spklip.cli data build moving-digits --out $(DEMO_DATA) $(DEMO_BUILD)
	$(PY) -m spklip.cli data inspect $(DEMO_DATA)
	$(PY) sweeps/baselines.py --name demo-$$(date +%Y%m%d-%H%M%S) $(DEMO_STUDY) --seeds $(DEMO_SEEDS) \
	    --set data.path=$(DEMO_DATA) --set train.run_dir=$(RUN_DIR) --set train.max_steps=$(DEMO_STEPS)
	@echo "val/top1 selects (the best-on-val checkpoint of each run); test/top1 is the result: prompt classification"
	@echo "over the 12 seen classes (chance 0.083), and test/zeroshot/top1 over the 4 unseen ones (chance 0.25)."
	@echo "The spike average cannot tell left from right or up from down, so it tops out near 0.5."
	@echo "Open it in the MLflow UI: make mlflow-ui, then the link printed above (the runs table of experiment baselines)"
	@echo "(the study is the parent run; its report is under sweep_report/). Same table: spklip report --experiment baselines"
	@echo "Ray's, Tune's and MLflow's logs of the study: $(RUN_DIR)/sweeps/demo-*/spklip.log (sweeps/baselines.py --verbose prints them)"

train: install  ## train spklip-tiny on the demo data in this process, every core, no Ray (configs/tiny.yaml); extra flags: ARGS="--set k=v"
	$(PY) -m spklip.cli train --config configs/tiny.yaml $(ARGS)

test: install  ## the whole suite (slow tests included), as CI runs it
	$(PY) -m pytest -q tests

test-fast: install  ## the suite without tests marked slow
	$(PY) -m pytest -q -m "not slow" tests

bench-data: install  ## simulator, shard write, Ray Data read throughput, streaming input vs consumption rate
	$(PY) benchmarks/bench_data.py

bench-model: install  ## forward/backward clips/s and GMAC per clip for each preset; batched vs loop HSFE
	$(PY) benchmarks/bench_model.py

bench-train: install  ## plain PyTorch loop vs spklip train (1 and 2 workers), same steps: steps/s, ratios, phases (--steps N: shorter)
	$(PY) benchmarks/bench_train.py

bench-gpu:  ## the prepared GPU check (tools/gpu_check.sh; about 6-9 min on one GPU, start-up aside): figures to $$OUT/gpu_check.json or stdout
	VENV=$(VENV) bash tools/gpu_check.sh

cluster-up: install  ## private local Ray head + MLflow server (loopback, token auth, PIDs/logs in runs/cluster)
	RUN_DIR=$(RUN_DIR) VENV=$(VENV) bash cluster/local.sh up

cluster-down:  ## stop exactly the processes cluster-up started (never a host-wide `ray stop`)
	RUN_DIR=$(RUN_DIR) VENV=$(VENV) bash cluster/local.sh down

cluster-status:  ## PIDs, URLs, `ray status` and `ray job list` of the local cluster
	RUN_DIR=$(RUN_DIR) VENV=$(VENV) bash cluster/local.sh status

mlflow-ui: install  ## MLflow UI on the local sqlite store ($(RUN_DIR)/mlflow.db) at http://127.0.0.1:5056
	RUN_DIR=$(RUN_DIR) VENV=$(VENV) bash cluster/local.sh ui

clean:  ## remove run outputs (keeps .venv)
	rm -rf $(RUN_DIR)
