"""Sine-bounded and clipped LoRA: the bound, exact forward/merge, save/load, strict loading, the peft hook."""

from __future__ import annotations

import json
import math

import peft
import pytest
import torch
from peft.tuners.lora.layer import LoraLayer

from forgetkit.adapters import LoraSettings, attach_lora, bounded_layers, clip_adapters, load_adapter
from forgetkit.adapters.sine import SineLinear, SineLoraVariant
from forgetkit.errors import ForgetkitError
from forgetkit.models import build_tiny_model, load_model, save_model

SETTINGS = LoraSettings(r=4, alpha=8, sine_omega=30.0)


def sine_model(tokenizer, family="llama", settings=SETTINGS):
    return attach_lora(build_tiny_model(tokenizer, family, "micro", seed=0), settings, kind="sine")


def randomise_adapters(model, std: float) -> None:
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_" in n:
                p.normal_(0, std)


def sine_layers(model):
    return [(n, m) for n, m in model.named_modules() if isinstance(m, SineLinear) and "default" in m.lora_variant]


def test_sine_goes_on_mlp_projections_and_attention_stays_plain(bpe_tokenizer):
    model = sine_model(bpe_tokenizer)
    lora_layers = {n.split(".")[-1] for n, m in model.named_modules() if isinstance(m, LoraLayer)}
    sine = {n.split(".")[-1] for n, _ in sine_layers(model)}
    assert sine == {"gate_proj", "up_proj", "down_proj"}
    assert lora_layers - sine == {"q_proj", "k_proj", "v_proj", "o_proj"}


@pytest.mark.parametrize("std", [1.0, 1e3])
def test_bound_holds_for_adversarially_large_a_and_b(bpe_tokenizer, std):
    model = sine_model(bpe_tokenizer)
    randomise_adapters(model, std)
    for _, layer in sine_layers(model):
        delta = layer.get_delta_weight("default")
        bound = SETTINGS.alpha / (SETTINGS.r * math.sqrt(layer.in_features))
        assert delta.abs().max() <= bound * (1 + 1e-6)
        assert delta.abs().max() > 0.5 * bound  # large A, B: the bound is reached, not trivially met


def test_forward_equals_the_merged_weights_and_unmerge_restores(bpe_tokenizer):
    model = sine_model(bpe_tokenizer).eval()
    randomise_adapters(model, 0.3)
    x = torch.tensor([bpe_tokenizer("Question: Who is person 3?")["input_ids"]])
    base_weights = {n: p.clone() for n, p in model.named_parameters() if "base_layer" in n}
    with torch.no_grad():
        unmerged = model(x).logits
        with model.disable_adapter():
            plain = model(x).logits
        model.merge_adapter()
        merged = model(x).logits
        model.unmerge_adapter()
        again = model(x).logits
    assert not torch.allclose(unmerged, plain, atol=1e-3)  # the adapter does something
    torch.testing.assert_close(merged, unmerged, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(again, unmerged, atol=1e-5, rtol=1e-5)
    for n, p in model.named_parameters():
        if "base_layer" in n:
            torch.testing.assert_close(p, base_weights[n], atol=1e-6, rtol=0)


def test_gradients_reach_a_and_b(bpe_tokenizer):
    model = sine_model(bpe_tokenizer)
    randomise_adapters(model, 0.1)
    x = torch.tensor([bpe_tokenizer("Question: Who is person 3?")["input_ids"]])
    model(input_ids=x, labels=x).loss.backward()
    for _, layer in sine_layers(model):
        for part in (layer.lora_A, layer.lora_B):
            grad = part["default"].weight.grad
            assert grad is not None and grad.abs().sum() > 0


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_save_load_round_trip_gives_identical_logits(bpe_tokenizer, tmp_path, family):
    base = build_tiny_model(bpe_tokenizer, family, "micro", seed=0)
    save_model(base, bpe_tokenizer, tmp_path / "base")
    model = sine_model(bpe_tokenizer, family).eval()
    randomise_adapters(model, 0.3)
    save_model(model, bpe_tokenizer, tmp_path / "adapter")
    saved = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert saved["use_sine"] is True and saved["sine_omega"] == 30.0 and saved["peft_type"] == "LORA"
    loaded, _ = load_model(tmp_path / "base", adapter=tmp_path / "adapter")
    assert len(sine_layers(loaded)) == len(sine_layers(model)) > 0
    x = torch.tensor([bpe_tokenizer("Who is person 5?")["input_ids"]])
    with torch.no_grad():
        assert torch.equal(model(x).logits, loaded(x).logits)
    # Plain peft drops the sine flag and gives another model: the reason forgetkit loads adapters itself.
    plain = peft.PeftModel.from_pretrained(build_tiny_model(bpe_tokenizer, family, "micro", seed=0),
                                           str(tmp_path / "adapter")).eval()
    with torch.no_grad():
        assert not torch.allclose(plain(x).logits, loaded(x).logits, atol=1e-4)


def test_gpt2_sine_modules_are_the_mlp_not_the_attention_output(bpe_tokenizer):
    model = sine_model(bpe_tokenizer, "gpt2")
    names = [n for n, _ in sine_layers(model)]
    assert names and all(".mlp." in n for n in names)
    assert any(n.endswith("attn.c_proj") for n, m in model.named_modules() if isinstance(m, LoraLayer))


def test_loading_an_adapter_config_with_an_unknown_flag_is_an_error(bpe_tokenizer, tmp_path):
    model = sine_model(bpe_tokenizer)
    save_model(model, bpe_tokenizer, tmp_path / "adapter")
    config_path = tmp_path / "adapter" / "adapter_config.json"
    config = json.loads(config_path.read_text())
    config["sine_phase_shift"] = 0.5  # a flag of some later version
    config_path.write_text(json.dumps(config))
    with pytest.raises(ForgetkitError, match=r"adapter_config.json: field 'sine_phase_shift'"):
        load_adapter(build_tiny_model(bpe_tokenizer, "llama", "micro", seed=0), tmp_path / "adapter")
    config.pop("sine_phase_shift")
    config["peft_type"] = "IA3"
    config_path.write_text(json.dumps(config))
    with pytest.raises(ForgetkitError, match="field 'peft_type'"):
        load_adapter(build_tiny_model(bpe_tokenizer, "llama", "micro", seed=0), tmp_path / "adapter")


def test_peft_variant_hook_is_where_forgetkit_expects_it(bpe_tokenizer):
    """An upgrade of peft that moves the LoRA-variant mechanism must fail here, loudly."""
    assert peft.__version__.startswith("0.21."), "forgetkit's sine adapter is built on peft 0.21's LoraVariant hook"
    model = sine_model(bpe_tokenizer)
    layer = sine_layers(model)[0][1]
    assert isinstance(layer.lora_variant["default"], SineLoraVariant)
    assert ("use_sine",) in layer.lora_variants and not layer.supports_lora_conversion("default")


def test_clipped_adapters_stay_within_their_norm(bpe_tokenizer):
    model = attach_lora(build_tiny_model(bpe_tokenizer, "llama", "micro", seed=0), SETTINGS, kind="clipped")
    randomise_adapters(model, 1.0)
    layers = bounded_layers(model)
    assert {n.split(".")[-1] for n, _ in layers} == {"gate_proj", "up_proj", "down_proj"}
    norms = [float(torch.linalg.matrix_norm(m.get_delta_weight("default"))) for _, m in layers]
    assert min(norms) > 0.5  # they start beyond the bound
    clip_adapters(layers, 0.5)
    for _, m in layers:
        assert float(torch.linalg.matrix_norm(m.get_delta_weight("default"))) <= 0.5 * (1 + 1e-5)
