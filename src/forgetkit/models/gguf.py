"""``forgetkit import-gguf``: a GGUF file (what llama.cpp and Ollama users have) → an ordinary
Hugging Face model directory (float safetensors, config, tokenizer with its chat template).

transformers reads GGUF through the ``gguf`` package and dequantises every tensor to float;
this module checks the file first (GGUF magic, an architecture transformers can read), drops the
GGUF quantisation record so the result saves and reloads as a plain checkpoint, writes it
atomically, and proves the copy by reloading it and comparing logits on a probe prompt with the
model read from the GGUF file. ``import.json`` in the output records the source file's hash, the
architecture, the parameter count and the largest logit difference.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch

from forgetkit import checks
from forgetkit.errors import ForgetkitError, first_line
from forgetkit.io import atomic_path, write_json
from forgetkit.locks import output_lock

GGUF_MAGIC = b"GGUF"
PROBE = "What is the capital of France?"


def supported_architectures() -> list[str]:
    """GGUF ``general.architecture`` values the installed transformers can load."""
    from transformers.integrations.ggml import GGUF_CONFIG_MAPPING

    return sorted(set(GGUF_CONFIG_MAPPING) - {"general", "tokenizer"})  # those two are metadata, not models


def gguf_architecture(path: Path) -> str:
    """The file's ``general.architecture``, or a one-line error naming the file."""
    from gguf import GGUFReader

    with open(path, "rb") as handle:
        if handle.read(4) != GGUF_MAGIC:
            raise ForgetkitError(f"{path}: not a GGUF file (no GGUF magic at its start)")
    try:
        reader = GGUFReader(path)
        field = reader.fields["general.architecture"]
        return bytes(field.parts[field.data[0]]).decode("utf-8")
    except KeyError:
        raise ForgetkitError(f"{path}: GGUF file without 'general.architecture'") from None
    except (ValueError, IndexError, OSError) as exc:  # truncated or corrupt metadata
        raise ForgetkitError(f"{path}: unreadable GGUF file ({first_line(exc)})") from None


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@torch.no_grad()
def _probe_logits(model, tokenizer) -> torch.Tensor:
    from forgetkit.data.formatting import prompt_ids

    ids = torch.tensor([prompt_ids(tokenizer, PROBE)])
    return model(input_ids=ids).logits.float()


def import_gguf(gguf_file: str | os.PathLike, out_dir: str | os.PathLike, tolerance: float = 1e-5) -> dict:
    """Convert ``gguf_file`` into a Hugging Face directory at ``out_dir``; return the import record."""
    source = Path(gguf_file)
    out = Path(out_dir)
    checks.input_file(source, "GGUF")
    checks.output_path(out, "--out", [source])
    if out.is_dir() and any(out.iterdir()) and not (out / "import.json").is_file():
        raise ForgetkitError(f"{out}: --out is a non-empty directory that no import wrote; choose another")
    with output_lock(out, "--out"):
        return _convert(source, out, tolerance)


def _convert(source: Path, out: Path, tolerance: float) -> dict:
    """The import itself: read, dequantise, save, reload-check (``out`` checked and locked by the caller)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from forgetkit.models.loading import load_model

    architecture = gguf_architecture(source)
    known = supported_architectures()
    if architecture not in known:
        raise ForgetkitError(f"{source}: architecture '{architecture}' cannot be read from GGUF by transformers "
                             f"(readable: {', '.join(known)})")
    directory, name = source.parent, source.name
    tokenizer = AutoTokenizer.from_pretrained(directory, gguf_file=name, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(directory, gguf_file=name, dtype=torch.float32,
                                                 local_files_only=True)
    model.eval()
    # Dequantised weights are plain floats: without this record the copy would claim a GGUF quantisation.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    expected = _probe_logits(model, tokenizer)
    record = {"source": str(source), "source_sha256": file_sha256(source), "architecture": architecture,
              "model_type": model.config.model_type, "parameters": sum(p.numel() for p in model.parameters()),
              "vocab_size": model.config.vocab_size, "chat_template": bool(getattr(tokenizer, "chat_template", None)),
              "dtype": "float32"}
    with atomic_path(out) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        reloaded, reloaded_tokenizer = load_model(tmp)
        difference = float((_probe_logits(reloaded, reloaded_tokenizer) - expected).abs().max())
        if difference > tolerance:
            raise ForgetkitError(f"{source}: the saved copy's logits differ from the GGUF model's by {difference:.3g} "
                                 f"(tolerance {tolerance:g}); nothing written")
        record["probe_max_abs_logit_difference"] = difference
        write_json(tmp / "import.json", record)
    return record
