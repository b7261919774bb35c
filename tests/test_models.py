"""The model layer: tiny models built in code, local loading, save/load round trips."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoTokenizer

from forgetkit.adapters import LoraSettings, attach_lora
from forgetkit.errors import ConfigError, ForgetkitError
from forgetkit.models import build_tiny_model, load_model, save_model


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_micro_model_round_trip_gives_identical_logits(bpe_tokenizer, tmp_path, family):
    model = build_tiny_model(bpe_tokenizer, family, "micro").eval()
    assert sum(p.numel() for p in model.parameters()) < 500_000
    save_model(model, bpe_tokenizer, tmp_path / "m")
    assert (tmp_path / "m" / "model.safetensors").is_file()
    assert not list(tmp_path.glob(".*tmp*")), "no temporary directory left behind"
    loaded, tok = load_model(tmp_path / "m")
    x = torch.tensor([bpe_tokenizer("Question: Who is person 3?")["input_ids"]])
    with torch.no_grad():
        assert torch.equal(model(x).logits, loaded(x).logits)
    assert tok("Answer: Person 3")["input_ids"] == bpe_tokenizer("Answer: Person 3")["input_ids"]


def test_trained_tokenizer_is_a_standard_hf_directory(bpe_tokenizer, tmp_path):
    bpe_tokenizer.save_pretrained(tmp_path)
    tok = AutoTokenizer.from_pretrained(tmp_path, local_files_only=True)
    text = "Person 42 is a poet from town 3."
    assert tok.decode(tok(text)["input_ids"]) == text
    assert tok.eos_token == "<|endoftext|>" and tok.pad_token == "<|pad|>"


def test_lora_adapter_round_trip(bpe_tokenizer, tmp_path):
    base = build_tiny_model(bpe_tokenizer, "llama", "micro")
    save_model(base, bpe_tokenizer, tmp_path / "base")
    peft_model = attach_lora(build_tiny_model(bpe_tokenizer, "llama", "micro"), LoraSettings(r=4, alpha=8))
    trainable = [p for p in peft_model.parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n, p in peft_model.named_parameters() if p.requires_grad)
    with torch.no_grad():  # make the adapter non-trivial (B starts at zero)
        for n, p in peft_model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.1)
    peft_model.eval()
    save_model(peft_model, bpe_tokenizer, tmp_path / "adapter")
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()
    loaded, _ = load_model(tmp_path / "base", adapter=tmp_path / "adapter")
    x = torch.tensor([bpe_tokenizer("Who is person 5?")["input_ids"]])
    with torch.no_grad():
        assert torch.allclose(peft_model(x).logits, loaded(x).logits, atol=1e-6)


def test_load_model_errors_are_clear(tmp_path):
    with pytest.raises(ForgetkitError, match="directory not found"):
        load_model(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ForgetkitError, match="no config.json"):
        load_model(tmp_path / "empty")


def test_unknown_family_and_size(bpe_tokenizer):
    with pytest.raises(ConfigError, match="unknown tiny model family"):
        build_tiny_model(bpe_tokenizer, "bert", "micro")
    with pytest.raises(ConfigError, match="unknown tiny model size"):
        build_tiny_model(bpe_tokenizer, "llama", "huge")


def test_forgetkit_switches_hugging_face_offline():
    import os

    import forgetkit  # noqa: F401

    assert os.environ["HF_HUB_OFFLINE"] == "1" and os.environ["TRANSFORMERS_OFFLINE"] == "1"
