"""Adapters: LoRA per model family, in plain, sine-bounded and norm-clipped kinds; loading them back exactly."""

from forgetkit.adapters.loading import adapter_config, load_adapter
from forgetkit.adapters.lora import (
    ADAPTER_KINDS,
    LoraSettings,
    attach_lora,
    bounded_layers,
    clip_adapters,
    default_bounded_modules,
    default_target_modules,
)

__all__ = ["ADAPTER_KINDS", "LoraSettings", "adapter_config", "attach_lora", "bounded_layers", "clip_adapters",
           "default_bounded_modules", "default_target_modules", "load_adapter"]
