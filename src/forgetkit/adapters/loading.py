"""Loading a saved adapter exactly as it was trained, or refusing to.

``PeftModel.from_pretrained`` builds the config class from ``peft_type`` alone and drops any
field it does not know with a warning: a sine adapter would come back as plain LoRA and give
other outputs. ``load_adapter`` reads ``adapter_config.json`` itself, picks ``SineLoraConfig``
when ``use_sine`` is set, and stops with an error naming the file and the field when the config
holds a setting this version cannot honour.
"""

from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path

from forgetkit.errors import ForgetkitError

CONFIG_FILE = "adapter_config.json"


def adapter_config(adapter_dir: str | Path):
    """The peft config of a saved LoRA or sine-LoRA adapter, every field honoured."""
    import peft
    from peft import LoraConfig

    from forgetkit.adapters.sine import SineLoraConfig

    path = Path(adapter_dir) / CONFIG_FILE
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ForgetkitError(f"{path}: cannot read the adapter config ({exc})") from None
    if not isinstance(raw, dict):
        raise ForgetkitError(f"{path}: the adapter config is not a JSON object")
    if raw.get("peft_type") != "LORA":
        raise ForgetkitError(f"{path}: field 'peft_type': {raw.get('peft_type')!r} is not an adapter type forgetkit "
                             "loads (LoRA: plain, sine or clipped)")
    cls = SineLoraConfig if raw.get("use_sine") else LoraConfig
    known = {f.name for f in fields(cls)}
    for key, value in raw.items():
        if key not in known and value not in (None, False, "", [], {}):
            raise ForgetkitError(f"{path}: field '{key}' = {value!r} is not supported by this forgetkit "
                                 f"(peft {peft.__version__}); refusing to load the adapter without it")
    try:
        return cls(**{k: v for k, v in raw.items() if k in known})
    except (TypeError, ValueError) as exc:
        raise ForgetkitError(f"{path}: invalid adapter config ({exc})") from None


def check_fits(model, adapter_dir: str | Path) -> None:
    """Refuse an adapter made for another base model: every LoRA tensor must name a module of ``model``
    whose input and output sizes match its shape (peft would fail deep inside, or skip the module)."""
    from forgetkit.checks import safetensors_shapes

    modules = dict(model.named_modules())
    for file in sorted(Path(adapter_dir).glob("*.safetensors")):
        for name, shape in safetensors_shapes(file).items():
            for part, side in ((".lora_A.", "in"), (".lora_B.", "out")):
                if part not in name or len(shape) != 2:
                    continue
                full_name = name.split(part)[0]
                module_name = full_name.removeprefix("base_model.model.")
                module = modules.get(module_name, modules.get(full_name))  # a plain model, or one peft wraps
                if module is None:
                    raise ForgetkitError(f"{file}: tensor '{name}': the model has no module '{module_name}' "
                                         "(an adapter for another base model?)")
                size = _features(module, side)
                got = shape[1] if side == "in" else shape[0]
                if size is not None and size != got:
                    raise ForgetkitError(f"{file}: tensor '{name}': {side}put size {got}, but the model's "
                                         f"'{module_name}' has {size}: an adapter for another base model")


def _features(module, side: str) -> int | None:
    """The input or output size of a linear-like module (nn.Linear, GPT-2's Conv1D, an already-wrapped layer)."""
    base = getattr(module, "base_layer", module)
    if hasattr(base, "in_features") and hasattr(base, "out_features"):
        return base.in_features if side == "in" else base.out_features
    weight = getattr(base, "weight", None)
    if type(base).__name__ == "Conv1D" and weight is not None:  # GPT-2: weight is [in, out]
        return weight.shape[0] if side == "in" else weight.shape[1]
    return None


def load_adapter(model, adapter_dir: str | Path, is_trainable: bool = False):
    """Wrap ``model`` in the peft adapter saved in ``adapter_dir`` (safetensors weights)."""
    from peft import PeftModel

    config = adapter_config(adapter_dir)
    check_fits(model, adapter_dir)
    return PeftModel.from_pretrained(model, str(adapter_dir), config=config, is_trainable=is_trainable)
