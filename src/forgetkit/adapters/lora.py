"""LoRA adapters (peft) with sensible target modules for each model family, in three kinds.

- ``lora``: plain LoRA on the family's attention and MLP projections;
- ``sine``: the bounded modules (default: the MLP projections) use the sine-bounded form
  (``forgetkit.adapters.sine``); the others stay plain LoRA;
- ``clipped``: plain LoRA whose bounded modules have ‖ΔW‖_F = ‖(α/r)·B·A‖_F clipped to
  ``clip_norm`` after every optimiser step (``clip_adapters``), the natural baseline for ``sine``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from forgetkit.errors import ConfigError, require, require_positive

ADAPTER_KINDS = ("lora", "sine", "clipped")

# Attention and MLP projections, by the model's ``config.model_type``.
FAMILY_TARGET_MODULES = {
    "llama": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "mistral": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "qwen2": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "qwen3": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "phi": ["q_proj", "k_proj", "v_proj", "dense", "fc1", "fc2"],
    "phi3": ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"],
    "gpt2": ["c_attn", "c_proj", "c_fc"],
}
# The MLP projections among them (GPT-2's attention output is also called c_proj, hence "mlp.").
FAMILY_MLP_MODULES = {
    "llama": ["gate_proj", "up_proj", "down_proj"],
    "mistral": ["gate_proj", "up_proj", "down_proj"],
    "qwen2": ["gate_proj", "up_proj", "down_proj"],
    "qwen3": ["gate_proj", "up_proj", "down_proj"],
    "phi": ["fc1", "fc2"],
    "phi3": ["gate_up_proj", "down_proj"],
    "gpt2": ["mlp.c_fc", "mlp.c_proj"],
}


@dataclass
class LoraSettings:
    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    target_modules: list[str] | None = None  # None: the family's default
    # sine and clipped: which targeted modules are bounded (None: the family's MLP projections)
    bounded_modules: list[str] | None = None
    sine_omega: float = 100.0  # sine: ΔW = sin(ω·B·A)/s·(α/r)
    sine_scale: float | None = None  # sine: s (None: √d_in of each layer)
    clip_norm: float = 1.0  # clipped: the largest ‖ΔW‖_F of a bounded module

    def __post_init__(self) -> None:
        require_positive(self, "r", "alpha", "sine_omega", "sine_scale", "clip_norm")
        require(0 <= self.dropout < 1, "dropout", f"must be in [0, 1), got {self.dropout}")


def _family(model, table: dict[str, list[str]], what: str) -> list[str]:
    model_type = getattr(model.config, "model_type", "")
    if model_type not in table:
        raise ConfigError(f"no default {what} for model type '{model_type}': set it explicitly")
    return list(table[model_type])


def default_target_modules(model) -> list[str]:
    return _family(model, FAMILY_TARGET_MODULES, "LoRA target modules (lora.target_modules)")


def default_bounded_modules(model) -> list[str]:
    return _family(model, FAMILY_MLP_MODULES, "bounded modules (lora.bounded_modules)")


def attach_lora(model, settings: LoraSettings, kind: str = "lora"):
    """Freeze ``model`` and wrap it in a trainable peft adapter of ``kind`` (lora, sine, clipped)."""
    from peft import LoraConfig, get_peft_model

    from forgetkit.adapters.sine import SineLoraConfig

    if kind not in ADAPTER_KINDS:
        raise ConfigError(f"adapter must be one of {', '.join(ADAPTER_KINDS)}, got '{kind}'")
    common = dict(r=settings.r, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
                  target_modules=settings.target_modules or default_target_modules(model), task_type="CAUSAL_LM")
    if kind == "sine":
        config = SineLoraConfig(**common, use_sine=True,
                                sine_modules=settings.bounded_modules or default_bounded_modules(model),
                                sine_omega=settings.sine_omega, sine_scale=settings.sine_scale)
    else:
        config = LoraConfig(**common)
    return get_peft_model(model, config)


def bounded_layers(model, patterns: list[str] | None = None):
    """``(name, layer)`` of the peft LoRA layers whose module name matches ``patterns``
    (default: the family's MLP projections)."""
    from peft.tuners.lora.layer import LoraLayer

    from forgetkit.adapters.sine import name_matches

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    patterns = patterns or default_bounded_modules(base)
    return [(n, m) for n, m in model.named_modules() if isinstance(m, LoraLayer) and name_matches(n, patterns)]


@torch.no_grad()
def clip_adapters(layers, max_norm: float) -> None:
    """Scale A and B of each adapter in ``layers`` by one factor so that ‖(α/r)·B·A‖_F ≤ ``max_norm``."""
    for _, layer in layers:
        for name, lora_a in layer.lora_A.items():
            a, b = lora_a.weight, layer.lora_B[name].weight
            norm = float(torch.linalg.matrix_norm((b.float() @ a.float()) * layer.scaling[name]))
            if norm > max_norm:
                factor = math.sqrt(max_norm / norm)
                a.mul_(factor)
                b.mul_(factor)
