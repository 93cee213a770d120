# Two entry points on a fresh clone:
#   make demo   the whole STP pipeline (and the TP baseline) on the embedded dataset
#   make test   the test suite
#   make lint   ruff over the sources, tests and benchmarks; mypy over the package; import-linter's
#               contracts (pyproject.toml: no import cycle, and the package's layers)
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test lint install bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install -q -e '.[test,export,lint]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(MAKE) -C examples demo STP=$(CURDIR)/$(BIN)/stp

test: $(STAMP)
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/mypy
	$(BIN)/lint-imports

# Benchmark-only peers (SpikingJelly, snnTorch) are installed here, never at run time.
bench: $(STAMP)
	$(BIN)/pip install -q spikingjelly==2.0.0 snntorch==1.0.0
	$(BIN)/python benchmarks/train_throughput.py --device cpu

clean:
	rm -rf examples/out
