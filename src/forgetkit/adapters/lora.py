"""LoRA adapters (peft) with sensible target modules for any architecture, in three kinds.

Target modules: forgetkit's measured list for the families it names, else every linear projection of the model's
decoder layers, found in the model; the MLP projections (the bounded ones) likewise.

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


# The names of the child module that holds a decoder layer's MLP, across the families transformers implements.
MLP_CHILDREN = ("mlp", "feed_forward", "ffn")


def _projections(model) -> list[tuple[str, str]]:
    """``(path inside a decoder layer, leaf name)`` of every linear projection of the first decoder layer
    (``nn.Linear``, GPT-2's ``Conv1D``, or a peft layer already wrapping one, whose own parts are not counted),
    in the layer's order; empty when no layer stack is found."""
    from peft.tuners.tuners_utils import BaseTunerLayer
    from transformers.pytorch_utils import Conv1D

    from forgetkit.models.latent import decoder_layers

    try:
        layer = decoder_layers(model)[0]
    except (ValueError, IndexError):  # no layer stack (NoLayerStack is one), or an empty one
        return []
    found: list[tuple[str, str]] = []
    for path, m in layer.named_modules():
        if path and not any(path.startswith(f"{p}.") for p, _ in found) and \
                isinstance(m, (torch.nn.Linear, Conv1D, BaseTunerLayer)):
            found.append((path, path.rsplit(".", 1)[-1]))
    return found


def _model_type(model) -> str:
    return getattr(model.config, "model_type", "") or type(model).__name__


def default_target_modules(model) -> list[str]:
    """LoRA's targets: forgetkit's measured list for the families it names (``FAMILY_TARGET_MODULES``), else
    every linear projection of the decoder layers (attention and MLP), found in the model itself, so that any
    architecture transformers and peft load (Gemma 3, Qwen 2 …) is unlearned without ``lora.target_modules``.
    peft's own per-architecture defaults are not used: they target the query and value projections only, a
    smaller adapter than every recipe here was measured with."""
    model_type = _model_type(model)
    if model_type in FAMILY_TARGET_MODULES:
        return list(FAMILY_TARGET_MODULES[model_type])
    leaves = list(dict.fromkeys(leaf for _, leaf in _projections(model)))
    if not leaves:
        raise ConfigError(f"no LoRA target modules found for model type '{model_type}' (no decoder layer stack "
                          "with linear projections): set lora.target_modules")
    return leaves


def default_bounded_modules(model) -> list[str]:
    """The MLP projections (what ``sine`` and ``clipped`` bound by default): the family's list, else the linear
    projections inside each decoder layer's MLP child (``mlp``, ``feed_forward``, ``ffn``), named with it
    (``mlp.down_proj``) so that an attention projection of the same leaf name is never taken for one."""
    model_type = _model_type(model)
    if model_type in FAMILY_MLP_MODULES:
        return list(FAMILY_MLP_MODULES[model_type])
    found = [path for path, _ in _projections(model) if path.split(".")[0] in MLP_CHILDREN]
    if not found:
        raise ConfigError(f"no MLP projections found for model type '{model_type}' (no mlp, feed_forward or ffn "
                          "in its decoder layers): set lora.bounded_modules")
    return found


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
