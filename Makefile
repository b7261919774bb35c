# Two commands do all the set-up on a fresh machine with only Python 3:
#   make demo   the showcase: prepare the built-in `small` benchmark (LoRA target) and run the demo grid
#               (forgetkit bench --config demo): leaderboard, plots and an HTML report
#   make test   run the test suite
VENV   ?= .venv
PYTHON ?= python3
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.forgetkit-installed

.PHONY: demo test lint clean-runs

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch first, pinned: installs the local CPU build instead of a multi-GB CUDA one
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[dev,lm-eval]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/forgetkit bench --config demo

test: $(STAMP)
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks

clean-runs:
	rm -rf runs
