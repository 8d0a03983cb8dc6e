# qin-lightning: every target sets itself up (venv + install) on a fresh machine.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-base
DEV_STAMP := $(VENV)/.installed-dev
# torch is pinned in the same pip call: here it resolves to the CPU wheel on disk (no multi-GB CUDA download).
TORCH_PIN := torch==2.13.0
# the test suite exercises the sweep (Optuna), postgres-server (a PostgreSQL server for the shared-study tests)
# and serve (ONNX) extras too; `make train` needs none of them
DEV_EXTRAS ?= dev,sweep,postgres-server,serve
# wandb: offline unless `logger.wandb.offline=false` (conf/logger/wandb.yaml); WANDB_MODE is deliberately not
# exported here, since it would override that setting
export PYTHONDONTWRITEBYTECODE := 1

.PHONY: install train test test-slow bench clean help

help:  ## list targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check "$(TORCH_PIN)" -e .
	touch $(STAMP)

$(DEV_STAMP): $(STAMP)
	$(PY) -m pip install --quiet --disable-pip-version-check "$(TORCH_PIN)" -e ".[$(DEV_EXTRAS)]"
	touch $(DEV_STAMP)

install: $(DEV_STAMP)  ## create .venv and install the package with the dev, sweep and serve extras

# `make train` caps the published protocol (up to 100 epochs, early stopping) at 3 epochs so it finishes in a
# few minutes on 2 CPU cores; `make train TRAIN_ARGS=` runs it uncapped. ARGS: any extra Hydra overrides.
TRAIN_ARGS ?= trainer.max_epochs=3
train: $(STAMP)  ## train QIN on the embedded synthetic dataset (generated on first use), 3 epochs
	$(PY) -m qin_lightning.train $(TRAIN_ARGS) $(ARGS)

test: $(DEV_STAMP)  ## the whole default test suite
	$(PY) -m pytest tests -q

test-slow: $(DEV_STAMP)  ## only the slow tests (succeeds when none is marked slow: pytest exit status 5)
	$(PY) -m pytest tests -q -m slow || [ $$? -eq 5 ]

bench: $(DEV_STAMP)  ## benchmark plain vs fast paths, writes experiments/bench/bench.json
	$(PY) -m qin_lightning.bench --out experiments/bench/bench.json $(ARGS)

clean:  ## remove outputs and caches (keeps .venv)
	rm -rf logs outputs multirun .cache .pytest_cache
