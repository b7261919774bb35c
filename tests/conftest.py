"""Shared fixtures: tiny tokenizers and models built in code, never downloaded."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from forgetkit.models import train_tokenizer

# One intra-op thread for the whole run, subprocesses included: the tests' models are tiny, so a second thread
# costs more in synchronisation than it gains (test_unlearn + test_influence: 53 s on one thread, 68 s on two),
# and the multi-process tests then do not oversubscribe the two cores.
os.environ.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
torch.set_num_threads(1)

WORDS = ["<eos>", "<pad>", "Question:", "Answer:", "Who", "is", "Ada", "?", "She", "a", "poet", "."]


@pytest.fixture
def word_tokenizer() -> PreTrainedTokenizerFast:
    """A word-level tokenizer whose ids are known by hand: id = position in WORDS."""
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", pad_token="<pad>")


@pytest.fixture(scope="session")
def bpe_tokenizer() -> PreTrainedTokenizerFast:
    texts = [f"Question: Who is person {i}?\nAnswer: Person {i} is a poet from town {i % 7}." for i in range(100)]
    return train_tokenizer(texts, vocab_size=300)


@pytest.fixture(scope="session")
def unlearn_run(tmp_path_factory) -> Path:
    """A prepared micro run (benchmark, tokenizer, base, target, oracle) for unlearning tests: read it, never write."""
    from forgetkit.cli import main

    run_dir = tmp_path_factory.mktemp("unlearn") / "micro"
    assert main(["prepare", "--config", "micro", "--quiet", f"run_dir={run_dir}"]) == 0
    return run_dir


@pytest.fixture(scope="session")
def lora_run(unlearn_run, tmp_path_factory):
    """The micro run with its target as a LoRA adapter (benchmark, tokenizer and base reused): read it only."""
    from forgetkit.cli import main

    run = tmp_path_factory.mktemp("lora") / "micro_lora"
    run.mkdir()
    for stage in ("benchmark", "tokenizer", "base"):
        shutil.copytree(unlearn_run / stage, run / stage)
    assert main(["prepare", "--config", "micro", "--quiet", f"run_dir={run}", "target_mode=lora",
                 "oracle_splits=[]"]) == 0
    return run


@pytest.fixture(scope="session")
def float64_lora_gpt2(bpe_tokenizer):
    """A builder of a fresh micro GPT-2 in float64 (Llama's RMSNorm computes in float32) with a rank-1 LoRA
    on the attention projections (a few hundred parameters, A and B random), and six tokenised examples."""
    import torch

    from forgetkit.adapters import LoraSettings, attach_lora
    from forgetkit.data.formatting import tokenize_qa
    from forgetkit.data.records import QARecord
    from forgetkit.models import build_tiny_model

    def build():
        torch.manual_seed(0)
        model = attach_lora(build_tiny_model(bpe_tokenizer, "gpt2", "micro", seed=0),
                            LoraSettings(r=1, alpha=2, target_modules=["c_attn"])).double().eval()
        with torch.no_grad():
            for n, p in model.named_parameters():
                if "lora_" in n:
                    p.normal_(0, 0.3)
        records = [QARecord(f"Who is person {i}?", f"Person {i} is a poet from town {i % 7}.", f"r{i}")
                   for i in range(6)]
        return model, tokenize_qa(bpe_tokenizer, records, 48).examples

    return build
