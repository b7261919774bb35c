"""Tiny causal language models built from config in code, and a byte-level BPE tokenizer
trained locally with ``tokenizers``.

The tests and the demo need real Hugging Face models without downloading anything: these
factories build Llama- and GPT-2-family models of a few hundred thousand (``micro``) or a
few million (``small``) parameters, and a tokenizer saved as a standard HF tokenizer
directory, so every later stage treats them like any model loaded from disk.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerFast,
)

from forgetkit.errors import ConfigError

EOS_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<|pad|>"
FAMILIES = ("llama", "gpt2")


@dataclass(frozen=True)
class TinyModelSize:
    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int


# ``micro`` keeps tests in seconds (< 0.5 M parameters with a 512-token vocabulary).
# ``small`` is the demo's model: ~0.8 M parameters with a 1024-token vocabulary, the size that
# memorises 200 people in ~2 minutes on 2 CPU cores (measured: docs/results.md); ``medium``
# (~1.6 M with a 2048-token vocabulary) is the next step up for machines with more time.
SIZES = {
    "micro": TinyModelSize(hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64),
    "small": TinyModelSize(hidden_size=128, num_layers=2, num_heads=4, intermediate_size=512),
    "medium": TinyModelSize(hidden_size=128, num_layers=4, num_heads=4, intermediate_size=512),
}


def build_tiny_model(
    tokenizer: PreTrainedTokenizerFast,
    family: str = "llama",
    size: str | TinyModelSize = "micro",
    max_positions: int = 256,
    seed: int = 0,
) -> PreTrainedModel:
    """A randomly initialised causal LM of ``family`` whose vocabulary matches ``tokenizer``."""
    import torch

    if isinstance(size, str):
        if size not in SIZES:
            raise ConfigError(f"unknown tiny model size '{size}' (known: {', '.join(SIZES)})")
        size = SIZES[size]
    common = dict(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    if family == "llama":
        config = LlamaConfig(
            hidden_size=size.hidden_size,
            num_hidden_layers=size.num_layers,
            num_attention_heads=size.num_heads,
            num_key_value_heads=size.num_heads,
            intermediate_size=size.intermediate_size,
            max_position_embeddings=max_positions,
            tie_word_embeddings=False,
            **common,
        )
        return LlamaForCausalLM(config)
    if family == "gpt2":
        config = GPT2Config(
            n_embd=size.hidden_size,
            n_layer=size.num_layers,
            n_head=size.num_heads,
            n_inner=size.intermediate_size,
            n_positions=max_positions,
            **common,
        )
        return GPT2LMHeadModel(config)
    raise ConfigError(f"unknown tiny model family '{family}' (known: {', '.join(FAMILIES)})")


def train_tokenizer(texts: Iterable[str], vocab_size: int = 2048) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer on ``texts`` (GPT-2 style: no unknown tokens).

    ``<|endoftext|>`` serves as BOS and EOS, ``<|pad|>`` as padding. Save it with
    ``save_pretrained`` to get a standard HF tokenizer directory.
    """
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS_TOKEN, PAD_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=EOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        model_max_length=1024,
    )
