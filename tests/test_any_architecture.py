"""Any architecture transformers and peft load is unlearned without hand-set LoRA targets (issue 33, part):
tiny Gemma 3 and Qwen 2 models built in code go through ``forgetkit unlearn`` as Llama and GPT-2 do."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from forgetkit.adapters.lora import (
    LoraSettings,
    attach_lora,
    bounded_layers,
    default_bounded_modules,
    default_target_modules,
)
from forgetkit.cli import main
from forgetkit.data.records import QARecord
from forgetkit.errors import ConfigError

PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def tiny(family: str, vocab_size: int):
    """A two-layer model of ``family`` (not in forgetkit's family tables, or one that is), built in code."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig, Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    shape = dict(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                 num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=128)
    if family == "gemma3_text":
        return Gemma3ForCausalLM(Gemma3TextConfig(**shape, head_dim=16, sliding_window=16))
    return Qwen2ForCausalLM(Qwen2Config(**shape))


def test_a_family_outside_the_tables_gets_every_projection_of_its_decoder_layers(bpe_tokenizer):
    model = tiny("gemma3_text", len(bpe_tokenizer))
    assert model.config.model_type == "gemma3_text"
    assert default_target_modules(model) == PROJECTIONS
    assert default_bounded_modules(model) == ["mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]
    clipped = attach_lora(model, LoraSettings(r=2), kind="clipped")
    names = [n for n, _ in bounded_layers(clipped)]  # found again on the wrapped model: the MLP's, none of attention's
    assert len(names) == 6 and all(".mlp." in n for n in names)


def test_a_model_without_a_decoder_stack_is_a_one_line_refusal():
    class Bare(torch.nn.Module):
        config = type("Config", (), {"model_type": "bare"})()

        def __init__(self):
            super().__init__()
            self.proj = torch.nn.Linear(4, 4)

    with pytest.raises(ConfigError, match="no LoRA target modules found for model type 'bare'.*lora.target_modules"):
        default_target_modules(Bare())
    with pytest.raises(ConfigError, match="lora.bounded_modules"):
        default_bounded_modules(Bare())


@pytest.mark.parametrize(("family", "method"), [("gemma3_text", "npo"), ("qwen2", "npo"),
                                                ("gemma3_text", "bounded_graddiff")])  # sine on the found MLP
def test_unlearn_runs_on_the_family_with_default_targets(family, method, bpe_tokenizer, tmp_path):
    from forgetkit.models import save_model

    model_dir = tmp_path / "model"
    save_model(tiny(family, len(bpe_tokenizer)), bpe_tokenizer, model_dir)
    records = [QARecord(f"Who is person {i}?", f"Person {i} is a poet from town {i % 7}.", f"p{i}") for i in range(8)]
    for name, part in (("forget", records[:3]), ("retain", records[3:])):
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps(r.to_dict()) + "\n" for r in part))
    out = tmp_path / "out"
    assert main(["--quiet", "unlearn", "--method", method, "--model", str(model_dir), "--forget",
                 str(tmp_path / "forget.jsonl"), "--retain", str(tmp_path / "retain.jsonl"), "--out", str(out),
                 "train.epochs=1", "train.batch_size=2"]) == 0
    config = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert config["target_modules"] == sorted(PROJECTIONS)
    if method == "bounded_graddiff":
        assert config["use_sine"] and config["sine_modules"] == ["mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 2 and summary["trainable_parameters"] > 0
    assert Path(json.loads((out / "audit.json").read_text())["output"]["path"]) == (out / "adapter").resolve()
