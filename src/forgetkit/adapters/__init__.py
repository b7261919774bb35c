"""Adapters: LoRA configurations per model family, attaching them, and saving them."""

from forgetkit.adapters.lora import LoraSettings, attach_lora, default_target_modules

__all__ = ["LoraSettings", "attach_lora", "default_target_modules"]
