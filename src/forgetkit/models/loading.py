"""Loading and saving causal LMs from local directories: never a network call
(``forgetkit/__init__`` sets the Hugging Face offline switches).

Any Hugging Face causal LM directory (Llama, GPT-2, Qwen2, Mistral, Phi, ...) loads through
``AutoModelForCausalLM`` with ``local_files_only``; remote code stays off unless asked for.
Weights are written as safetensors.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from forgetkit import checks
from forgetkit.errors import ForgetkitError, first_line
from forgetkit.io import atomic_path
from forgetkit.locks import output_lock

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def load_model(
    path: str | os.PathLike,
    adapter: str | os.PathLike | None = None,
    dtype: str | torch.dtype = "float32",
    device: str | torch.device = "cpu",
    trust_remote_code: bool = False,
):
    """Load ``(model, tokenizer)`` from a local directory, with an optional peft adapter on top.

    ``dtype`` is ``float32``, ``bfloat16`` or ``float16`` (or a torch dtype).
    """
    path = checks.model_dir(path, "model")
    adapter = checks.adapter_dir(adapter) if adapter is not None else None
    if isinstance(dtype, str):
        if dtype not in DTYPES:
            raise ForgetkitError(f"unknown dtype '{dtype}' (known: {', '.join(DTYPES)})")
        dtype = DTYPES[dtype]
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, KeyError, TypeError) as exc:  # what transformers raises for a bad tokenizer
        raise ForgetkitError(f"{path}: the tokenizer does not load ({_reason(exc)})") from None
    try:
        model = AutoModelForCausalLM.from_pretrained(
            path, dtype=dtype, local_files_only=True, trust_remote_code=trust_remote_code
        )
    except (OSError, ValueError, KeyError) as exc:  # e.g. a config whose architecture is not a causal LM
        raise ForgetkitError(f"{path}: the model does not load ({_reason(exc)})") from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if adapter is not None:
        from forgetkit.adapters.loading import load_adapter

        model = load_adapter(model, adapter)
    model.to(device)
    model.eval()
    return model, tokenizer


def _reason(exc: BaseException) -> str:
    return first_line(exc) or type(exc).__name__


def save_model(model: PreTrainedModel, tokenizer, out_dir: str | os.PathLike) -> Path:
    """Write model (or peft adapter) and tokenizer to ``out_dir`` atomically, weights as safetensors."""
    out_dir = Path(out_dir)
    with atomic_path(out_dir) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        canonical_adapter_config(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
    return out_dir


# adapter_config.json fields that peft holds as sets and writes in hash-seed order
SET_VALUED_ADAPTER_FIELDS = ("target_modules", "modules_to_save", "exclude_modules")


def canonical_adapter_config(directory: Path) -> None:
    """Rewrite a saved ``adapter_config.json`` canonically (set-valued lists sorted, keys sorted), so that two
    identical runs write identical bytes and the output fingerprint reproduces; no-op without one."""
    path = Path(directory) / "adapter_config.json"
    if not path.is_file():
        return
    config = json.loads(path.read_text(encoding="utf-8"))
    for key in SET_VALUED_ADAPTER_FIELDS:
        if isinstance(config.get(key), list):
            config[key] = sorted(config[key])
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def export_merged(model_dir: str | os.PathLike, adapter_dir: str | os.PathLike, out_dir: str | os.PathLike) -> Path:
    """Merge the adapter (plain, sine or clipped LoRA) into the model's weights and write a plain
    Hugging Face checkpoint: the form in which any adapter, the sine kind included, reaches other tools."""
    checks.output_path(out_dir, "--out", [model_dir, adapter_dir])
    with output_lock(out_dir, "--out"):
        return save_model(*load_merged(model_dir, adapter_dir), out_dir)


def load_merged(model_dir: str | os.PathLike, adapter_dir: str | os.PathLike | None = None):
    """``(model, tokenizer)``: the model with the adapter (plain, sine or clipped LoRA), when given, merged into its
    weights: what ``export`` writes, as a Hugging Face checkpoint or as GGUF."""
    model, tokenizer = load_model(model_dir, adapter_dir)
    return (model.merge_and_unload() if adapter_dir is not None else model), tokenizer
