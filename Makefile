# Every target builds the .venv it needs, so a fresh clone needs only `make test` or `make serve`.
PYTHON     ?= python3
VENV       ?= .venv
BIN        := $(VENV)/bin
# The exact torch build to install before anything else. On a machine with the CPU wheel on
# disk this resolves to it; on a GPU box set TORCH_SPEC to the CUDA build you want.
TORCH_SPEC ?= torch==2.13.0
HOST       ?= 0.0.0.0
PORT       ?= 8000
PYTEST_ARGS ?=

STAMP := $(VENV)/.installed

.PHONY: install test serve bench bench-quick lint clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

test: $(STAMP)
	./scripts/system-deps
	$(BIN)/python -m pytest $(PYTEST_ARGS)

serve: $(STAMP)
	$(BIN)/musicgen serve --host $(HOST) --port $(PORT)

bench: $(STAMP)
	$(BIN)/python benchmarks/engine.py

bench-quick: $(STAMP)
	$(BIN)/python benchmarks/engine.py --quick

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache
