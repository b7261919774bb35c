"""Sine-bounded LoRA: ΔW = sin(ω·B·A) / s · (α/r), a peft LoRA variant.

With B initialised to zero ΔW starts at 0, and |ΔW_ij| ≤ α/(r·s) however large A and B grow
(s = √d_in unless set). Bounded Parameter-Efficient Unlearning (arXiv 2509.24166) puts it on the
MLP projections to keep gradient-difference unlearning stable; the form is from sine-activated
low-rank adapters (arXiv 2403.19243).

It plugs into peft's LoRA-variant mechanism (peft 0.21): ``SineLoraConfig`` adds the field
``use_sine`` marked ``is_lora_variant``; ``SineLinear`` (a peft ``lora.Linear``) lists
``("use_sine",)`` in its ``lora_variants`` and ``SineLoraVariant`` does the forward, merge and
unmerge. Only the targeted modules named in ``sine_modules`` get the sine form; the others stay
plain LoRA. The adapter saves as a standard peft directory whose ``adapter_config.json`` carries
the sine fields; ``forgetkit.adapters.load_adapter`` restores it (plain peft would silently
drop them and load plain LoRA). sin(ω·BA) is not low-rank: it cannot be turned into plain LoRA
without loss, only merged into the base weights.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from peft import LoraConfig
from peft.tuners.lora.layer import Linear as LoraLinear
from peft.tuners.lora.layer import LoraVariant
from peft.utils.other import transpose
from torch import nn
from transformers.pytorch_utils import Conv1D


def name_matches(name: str, patterns: list[str] | None) -> bool:
    """peft's list rule: a module matches a pattern equal to its name or to a dotted suffix of it."""
    return patterns is None or any(name == p or name.endswith("." + p) for p in patterns)


@dataclass
class SineLoraConfig(LoraConfig):
    """A LoRA config whose ``sine_modules`` (default: every targeted module) use the sine form."""

    use_sine: bool = field(default=False, metadata={"is_lora_variant": True,
                                                     "help": "sine-bounded adapters on the sine_modules"})
    sine_modules: list[str] | None = field(default=None, metadata={"help": "targeted modules that get the sine "
                                                                           "form (suffixes); None: all"})
    sine_omega: float = field(default=100.0, metadata={"help": "frequency ω in sin(ω·B·A)"})
    sine_scale: float | None = field(default=None, metadata={"help": "divisor s; None: √d_in of each layer"})

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.use_sine:
            self._register_custom_module({nn.Linear: SineLinear, Conv1D: SineLinear})


class SineLoraVariant(LoraVariant):
    """Forward, merge and unmerge of one sine adapter on a ``SineLinear``."""

    def supports_lora_conversion(self) -> bool:
        return False

    @staticmethod
    def init(module: SineLinear, adapter_name: str, **kwargs: Any) -> None:
        config: SineLoraConfig = kwargs["config"]
        d_in = module.in_features
        module.sine_omega[adapter_name] = float(config.sine_omega)
        module.sine_scale[adapter_name] = float(config.sine_scale) if config.sine_scale else math.sqrt(d_in)

    @staticmethod
    def delta(module: SineLinear, adapter: str) -> torch.Tensor:
        """ΔW in the (d_out, d_in) layout of ``nn.Linear``."""
        a, b = module.lora_A[adapter].weight, module.lora_B[adapter].weight
        return torch.sin(module.sine_omega[adapter] * (b @ a)) * (module.scaling[adapter] / module.sine_scale[adapter])

    @staticmethod
    def merge_safe(module: SineLinear, active_adapter: str, orig_weight: torch.Tensor) -> torch.Tensor:
        delta = transpose(SineLoraVariant.delta(module, active_adapter), module.fan_in_fan_out)
        return (orig_weight + delta.to(orig_weight.dtype)).to(orig_weight.dtype)

    @staticmethod
    def merge_unsafe(module: SineLinear, active_adapter: str, orig_weight: torch.Tensor) -> None:
        delta = transpose(SineLoraVariant.delta(module, active_adapter), module.fan_in_fan_out)
        orig_weight.data += delta.to(orig_weight.dtype)

    @staticmethod
    def unmerge(module: SineLinear, active_adapter: str, orig_weight: torch.Tensor) -> torch.Tensor:
        delta = transpose(SineLoraVariant.delta(module, active_adapter), module.fan_in_fan_out)
        return orig_weight - delta.to(orig_weight.dtype)

    @staticmethod
    def forward(module: SineLinear, active_adapter: str, x: torch.Tensor, result: torch.Tensor,
                **kwargs: Any) -> torch.Tensor:
        x = module.lora_dropout[active_adapter](x)
        return result + F.linear(x, SineLoraVariant.delta(module, active_adapter).to(x.dtype))


class SineLinear(LoraLinear):
    """peft's LoRA ``Linear`` that also knows the sine variant (for modules in ``sine_modules``)."""

    def __init__(self, base_layer: nn.Module, adapter_name: str, config: SineLoraConfig, **kwargs: Any) -> None:
        self.sine_omega: dict[str, float] = {}
        self.sine_scale: dict[str, float] = {}
        if isinstance(base_layer, Conv1D) and not config.fan_in_fan_out:
            # GPT-2's Conv1D stores weights as (d_in, d_out); peft's default dispatch sets this flag itself.
            config.fan_in_fan_out = True
        super().__init__(base_layer, adapter_name, config=config, **kwargs)

    @property
    def lora_variants(self) -> dict:
        return {**super().lora_variants, ("use_sine",): SineLoraVariant}

    def update_layer(self, adapter_name: str, r: int, lora_alpha: int, config: LoraConfig, **kwargs: Any) -> None:
        self._sine_target = kwargs.get("target_name", "")
        super().update_layer(adapter_name, r, lora_alpha=lora_alpha, config=config, **kwargs)

    def resolve_lora_variant(self, *, config: LoraConfig, **kwargs: Any):
        variant = super().resolve_lora_variant(config=config, **kwargs)
        if isinstance(variant, SineLoraVariant) and not name_matches(self._sine_target, config.sine_modules):
            return None  # a targeted module outside sine_modules: plain LoRA
        return variant

    def get_delta_weight(self, adapter: str) -> torch.Tensor:
        if isinstance(self.lora_variant.get(adapter), SineLoraVariant):
            return transpose(SineLoraVariant.delta(self, adapter), self.fan_in_fan_out)
        return super().get_delta_weight(adapter)

    def __repr__(self) -> str:
        return "sine" + super().__repr__()
