"""Shared fixtures: tiny tokenizers and models built in code, never downloaded."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from forgetkit.models import train_tokenizer

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
