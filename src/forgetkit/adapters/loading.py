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
        raise ForgetkitError(f"{path}: field 'peft_type' is {raw.get('peft_type')!r}; forgetkit loads LoRA adapters "
                             "(plain, sine or clipped) only")
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


def load_adapter(model, adapter_dir: str | Path, is_trainable: bool = False):
    """Wrap ``model`` in the peft adapter saved in ``adapter_dir`` (safetensors weights)."""
    from peft import PeftModel

    config = adapter_config(adapter_dir)
    return PeftModel.from_pretrained(model, str(adapter_dir), config=config, is_trainable=is_trainable)
