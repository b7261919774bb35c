# Two commands do all the set-up on a fresh machine with only Python 3:
#   make demo   build the built-in benchmark's starting point (prepare --config small) and evaluate
#               its target against the retrain oracle (forgetkit eval)
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
	$(BIN)/forgetkit prepare --config small
	$(BIN)/forgetkit eval --model runs/small/oracle_forget10 --data runs/small/benchmark --split forget10 \
		--out runs/small/eval/oracle_forget10
	$(BIN)/forgetkit eval --model runs/small/target --data runs/small/benchmark --split forget10 \
		--oracle-log runs/small/eval/oracle_forget10 --out runs/small/eval/target

test: $(STAMP)
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks

clean-runs:
	rm -rf runs
