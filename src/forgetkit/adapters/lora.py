"""Plain LoRA adapters (peft) with sensible target modules for each model family."""

from __future__ import annotations

from dataclasses import dataclass

from forgetkit.errors import ConfigError

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


@dataclass
class LoraSettings:
    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    target_modules: list[str] | None = None  # None: the family's default


def default_target_modules(model) -> list[str]:
    model_type = getattr(model.config, "model_type", "")
    if model_type not in FAMILY_TARGET_MODULES:
        raise ConfigError(
            f"no default LoRA target modules for model type '{model_type}': set target_modules explicitly"
        )
    return list(FAMILY_TARGET_MODULES[model_type])


def attach_lora(model, settings: LoraSettings):
    """Freeze ``model`` and wrap it in a trainable peft LoRA adapter."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=settings.r,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=settings.target_modules or default_target_modules(model),
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, config)
