"""Shared fixtures: tiny tokenizers and models built in code, never downloaded."""

from __future__ import annotations

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
