# Two commands a new user needs (README): `make demo` and `make test`.
# Both create .venv on first use. torch is pinned to the CPU wheel this machine image carries;
# GPU users install their own CUDA build of torch (>= 2.4) before `make setup`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH ?= torch==2.13.0

.PHONY: setup demo test clean

$(BIN)/engram-planner: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

setup: $(BIN)/engram-planner

# The headline question (a 100B-parameter table in host DRAM of an 8x H800 node, 512 sequences),
# then the bundled plan: table sizes, layers and tiers recommended for three node types.
demo: setup
	$(BIN)/engram-planner simulate h800-dense8b-engram100b
	$(BIN)/engram-planner plan examples/plans/offload.yaml --out out/plan

# Timing gates (marker `serial`) measure this machine, so they run alone after the rest.
test: setup
	$(BIN)/python -m pytest -n 2 --dist loadgroup -m "not serial"
	$(BIN)/python -m pytest -m serial

clean:
	rm -rf $(VENV) .pytest_cache
