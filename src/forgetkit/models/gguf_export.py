"""``forgetkit export --gguf``: a model directory (with a LoRA adapter merged into it, when one is given) →
one GGUF file that llama.cpp, Ollama and transformers' GGUF reader load: weights, tokenizer, special tokens
and chat template.

The file is laid out the way llama.cpp's ``convert_hf_to_gguf.py`` lays out a Llama (or Qwen2): tensor names
from ``gguf``'s own name map, llama's Q/K rows in llama.cpp's rotary order (transformers undoes it on read),
1-D tensors (norms, biases) always float32, and the weight matrices in the chosen type: ``f32`` (exact),
``f16`` (llama.cpp's default) or ``q8_0`` (``gguf.quants``; a matrix whose rows do not split into 32-value
blocks stays f16, as llama.cpp does). The tokenizer is written as llama.cpp's byte-level BPE (``gpt2``)
vocabulary: tokens with their types (special added tokens are control tokens), merges (read by
``gguf.SpecialVocab``), the pre-tokenizer's name, bos/eos/unk/pad ids, whether BOS/EOS are added, and the chat
template, all from the tokenizer forgetkit itself loads.

What cannot be written faithfully is refused in one line before any work: another architecture, rope scaling,
Llama biases, a tokenizer that is not byte-level BPE or whose pre-tokenizer llama.cpp has no name for. The
file is written under the output's lock into a temporary sibling and renamed into place, so a full disk or a
kill leaves no partial ``.gguf``; an existing ``--out`` is never overwritten.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import numpy as np
import torch

from forgetkit import checks
from forgetkit.errors import ForgetkitError
from forgetkit.io import atomic_path
from forgetkit.locks import output_lock

GGUF_TYPES = ("f32", "f16", "q8_0")
# f16: llama.cpp's converter's default and half of f32's size; on SmolLM2-135M-Instruct with a LoRA merged it stays
# within 0.04 of the merged model's logits (which reach 39) with identical greedy answers
# (benchmarks/gguf_export_check.py). f32 is the exact one; q8_0 (1.1 there) the small one.
DEFAULT_GGUF_TYPE = "f16"
# model_type → the gguf package's architecture (its name is the file's ``general.architecture``)
ARCHITECTURES = {"llama": "LLAMA", "qwen2": "QWEN2"}
# a byte-level BPE pre-tokenizer's regex (as transformers' GGUF reader knows it) → llama.cpp's name for it
NAMED_SPLITS = ("llama-bpe", "qwen2")
# llama.cpp's ``smollm`` pre-tokenizer: every digit on its own, then GPT-2's regex
SMOLLM_PRE = [{"type": "Digits", "individual_digits": True},
              {"type": "ByteLevel", "add_prefix_space": False, "use_regex": True}]
SPECIAL_TYPES = ("bos", "eos", "unk", "sep", "pad", "cls", "mask")


def _gguf_type(name: str):
    import gguf

    if name not in GGUF_TYPES:
        raise ForgetkitError(f"unknown --gguf-type '{name}' (known: {', '.join(GGUF_TYPES)})")
    quant = gguf.GGMLQuantizationType
    file_type = gguf.LlamaFileType
    return {"f32": (quant.F32, file_type.ALL_F32), "f16": (quant.F16, file_type.MOSTLY_F16),
            "q8_0": (quant.Q8_0, file_type.MOSTLY_Q8_0)}[name]


def _rope(config: dict) -> tuple[str, float]:
    """The config's rope type and base frequency (transformers 5's ``rope_parameters`` or the older keys)."""
    rope = config.get("rope_parameters") or {}
    scaling = config.get("rope_scaling") or {}
    kind = rope.get("rope_type") or scaling.get("rope_type") or scaling.get("type") or "default"
    theta = rope.get("rope_theta", config.get("rope_theta", 10000.0))
    return kind, float(theta)


def check_architecture(model_dir: Path, config: dict) -> str:
    """The GGUF architecture name for the model's config, or a one-line refusal naming what cannot be written."""
    import gguf

    model_type = config.get("model_type")
    if model_type not in ARCHITECTURES:
        raise ForgetkitError(f"{model_dir}: model_type '{model_type}' cannot be exported to GGUF by forgetkit "
                             f"(supported: {', '.join(ARCHITECTURES)}); export --merge writes a Hugging Face "
                             "checkpoint for other converters")
    kind, _ = _rope(config)
    if kind != "default":
        raise ForgetkitError(f"{model_dir}: rope scaling '{kind}' is not written by forgetkit's GGUF export "
                             "(plain rope only)")
    if model_type == "llama" and (config.get("attention_bias") or config.get("mlp_bias")):
        raise ForgetkitError(f"{model_dir}: a Llama with attention or MLP biases is not written by forgetkit's "
                             "GGUF export (transformers' GGUF reader would drop them)")
    heads = config.get("num_attention_heads")
    head_dim = config.get("head_dim")
    if model_type == "qwen2" and head_dim and heads and head_dim * heads != config.get("hidden_size"):
        raise ForgetkitError(f"{model_dir}: a Qwen2 whose head_dim ({head_dim}) is not hidden_size / heads "
                             "cannot be described in GGUF")
    if model_type == "qwen2" and config.get("use_sliding_window"):
        raise ForgetkitError(f"{model_dir}: a Qwen2 with sliding-window attention is not written by forgetkit's "
                             "GGUF export")
    return gguf.MODEL_ARCH_NAMES[getattr(gguf.MODEL_ARCH, ARCHITECTURES[model_type])]


def check_tokenizer(model_dir: Path) -> str:
    """llama.cpp's name for the directory's byte-level BPE pre-tokenizer, or a one-line refusal."""
    path = model_dir / "tokenizer.json"
    if not path.is_file():
        raise ForgetkitError(f"{model_dir}: no tokenizer.json; forgetkit's GGUF export writes fast byte-level BPE "
                             "tokenizers only")
    spec = checks.json_object(path)
    model, decoder = spec.get("model") or {}, spec.get("decoder") or {}
    if model.get("type") != "BPE" or model.get("byte_fallback") or decoder.get("type") != "ByteLevel":
        raise ForgetkitError(f"{path}: not a byte-level BPE tokenizer (model {model.get('type')!r}, decoder "
                             f"{decoder.get('type')!r}); forgetkit's GGUF export writes those only (llama.cpp's "
                             "'gpt2' vocabulary)")
    name = pre_tokenizer_name(spec.get("pre_tokenizer"))
    if name is None:
        raise ForgetkitError(f"{path}: its pre-tokenizer ({json.dumps(spec.get('pre_tokenizer'))[:120]}) has no "
                             "llama.cpp name forgetkit knows (gpt-2, smollm, llama-bpe, qwen2)")
    return name


def pre_tokenizer_name(pre: dict | None) -> str | None:
    """llama.cpp's ``tokenizer.ggml.pre`` for a tokenizer.json pre-tokenizer, or None when it has none."""
    from transformers.integrations.gguf.gguf_tokenizer_mapping import GGUF_PRE_TOKENIZER_SPLITS

    if not pre:
        return None
    steps = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else [pre]
    shape = [{k: v for k, v in step.items() if k in ("type", "individual_digits", "add_prefix_space", "use_regex")}
             for step in steps]
    if shape == [{"type": "ByteLevel", "add_prefix_space": False, "use_regex": True}]:
        return "gpt-2"  # llama.cpp's name (it refuses "gpt2": found by benchmarks/gguf_llama_cpp_check.py)
    if shape == SMOLLM_PRE:
        return "smollm"
    if (len(steps) == 2 and steps[0].get("type") == "Split" and steps[0].get("behavior") == "Isolated"
            and not steps[0].get("invert") and shape[1] == {"type": "ByteLevel", "add_prefix_space": False,
                                                            "use_regex": False}):
        regex = (steps[0].get("pattern") or {}).get("Regex")
        return next((name for name in NAMED_SPLITS if GGUF_PRE_TOKENIZER_SPLITS.get(name) == regex), None)
    return None


def export_gguf(model_dir: str | os.PathLike, out: str | os.PathLike, adapter_dir: str | os.PathLike | None = None,
                gguf_type: str = DEFAULT_GGUF_TYPE) -> dict:
    """Write the model (the adapter merged into it when given) as one GGUF file at ``out``; return its record."""
    started = time.perf_counter()
    model_dir = checks.model_dir(model_dir, "model")
    adapter_dir = checks.adapter_dir(adapter_dir) if adapter_dir is not None else None
    _gguf_type(gguf_type)
    out = Path(out)
    if out.exists() or out.is_symlink():
        raise ForgetkitError(f"{out}: --out exists; export writes a new file and never replaces one")
    checks.output_path(out, "--out", [model_dir, adapter_dir], kind="file")
    config = checks.json_object(model_dir / "config.json")
    architecture = check_architecture(model_dir, config)
    pre = check_tokenizer(model_dir)
    with output_lock(out, "--out"):
        if out.exists():  # written by another writer between the check and the lock
            raise ForgetkitError(f"{out}: --out exists; export writes a new file and never replaces one")
        from forgetkit.models.loading import load_merged

        model, tokenizer = load_merged(model_dir, adapter_dir)
        with atomic_path(out) as tmp:
            record = _write(model, tokenizer, model_dir, tmp, architecture, pre, gguf_type)
    record.update(out=str(out), adapter_merged=adapter_dir is not None, bytes=out.stat().st_size,
                  seconds=time.perf_counter() - started)
    return record


def permute_rotary(weight: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's row order of a Llama Q or K projection: within each head, the two rotary halves interleaved
    (transformers' GGUF reader applies the inverse)."""
    rows = weight.shape[0]
    return (weight.reshape(heads, 2, rows // heads // 2, *weight.shape[1:]).swapaxes(1, 2)
            .reshape(weight.shape))


def _tensors(model, architecture: str, config) -> list[tuple[str, np.ndarray]]:
    """``(GGUF name, float32 array)`` for every tensor of the model, in the model's order."""
    import gguf

    arch = next(a for a, name in gguf.MODEL_ARCH_NAMES.items() if name == architecture)
    names = gguf.get_tensor_name_map(arch, config.num_hidden_layers)
    state = model.state_dict()
    embedding = state.get("model.embed_tokens.weight")
    heads, kv_heads = config.num_attention_heads, config.num_key_value_heads
    tensors = []
    for hf_name, tensor in state.items():
        if hf_name.endswith("rotary_emb.inv_freq"):  # computed from the config, not a weight
            continue
        if hf_name == "lm_head.weight" and embedding is not None and tensor.data_ptr() == embedding.data_ptr():
            continue  # tied: a file without output.weight reads as tied, in llama.cpp and in transformers
        name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise ForgetkitError(f"tensor '{hf_name}' has no GGUF name for architecture '{architecture}'; "
                                 "nothing written")
        data = tensor.detach().to(device="cpu", dtype=torch.float32).numpy()
        if architecture == "llama" and name.endswith(".attn_q.weight"):
            data = permute_rotary(data, heads)
        elif architecture == "llama" and name.endswith(".attn_k.weight"):
            data = permute_rotary(data, kv_heads)
        tensors.append((name, np.ascontiguousarray(data)))
    return tensors


def _add_tensor(writer, name: str, data: np.ndarray, qtype, counts: dict) -> None:
    """One tensor in the chosen type: 1-D ones stay float32, a matrix that Q8_0 cannot block stays f16."""
    import gguf
    from gguf import quants

    quant = gguf.GGMLQuantizationType
    if data.ndim <= 1 or qtype == quant.F32:
        kind = quant.F32
    elif qtype == quant.Q8_0 and data.shape[-1] % gguf.GGML_QUANT_SIZES[quant.Q8_0][0] == 0:
        kind = quant.Q8_0
    else:
        kind = quant.F16
    if kind == quant.F32:
        writer.add_tensor(name, data)
    elif kind == quant.F16:
        half = data.astype(np.float16)
        if not np.isfinite(half).all():
            raise ForgetkitError(f"tensor '{name}' has values beyond float16's range; export with --gguf-type f32")
        writer.add_tensor(name, half)
    else:
        writer.add_tensor(name, quants.quantize(data, kind), raw_dtype=kind)
    counts[kind.name] = counts.get(kind.name, 0) + 1


def _vocabulary(tokenizer, size: int) -> tuple[list[str], list[int]]:
    """llama.cpp's token list and token types for ``size`` embedding rows: special added tokens are control
    tokens, other added tokens user-defined, rows no token uses ``[PAD<i>]`` (unused)."""
    import gguf

    vocab = tokenizer.get_vocab()
    if max(vocab.values()) >= size:
        raise ForgetkitError(f"the tokenizer has ids up to {max(vocab.values())}, beyond the model's {size} "
                             "embedding rows; nothing written")
    added = tokenizer.added_tokens_decoder
    tokens = [f"[PAD{i}]" for i in range(size)]
    types = [gguf.TokenType.UNUSED] * size
    for token, index in vocab.items():
        tokens[index] = token
        types[index] = (gguf.TokenType.NORMAL if index not in added else
                        gguf.TokenType.CONTROL if added[index].special else gguf.TokenType.USER_DEFINED)
    return tokens, [int(t) for t in types]


def _special_vocab(tokenizer, model_dir: Path, size: int):
    """``gguf.SpecialVocab`` of the directory (its merges), with the special ids, BOS/EOS adding and chat template
    of the tokenizer forgetkit loaded (what every forgetkit command formats prompts with)."""
    import gguf

    vocab_log = logging.getLogger("gguf.vocab")
    level = vocab_log.level
    vocab_log.setLevel(logging.ERROR)  # its guesses at BOS/EOS from a template processor: replaced just below
    try:
        special = gguf.SpecialVocab(model_dir, load_merges=True, n_vocab=size)
    finally:
        vocab_log.setLevel(level)
    if not special.merges:
        raise ForgetkitError(f"{model_dir}: tokenizer.json has no merges; nothing written")
    special.special_token_ids = {typ: tid for typ in SPECIAL_TYPES
                                 if isinstance(tid := getattr(tokenizer, f"{typ}_token_id", None), int)}
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    full = tokenizer("a")["input_ids"]
    start = full.index(plain[0]) if plain[0] in full else 0
    special.add_special_token = {"bos": start > 0 and full[0] == tokenizer.bos_token_id,
                                 "eos": len(full) > start + len(plain) and full[-1] == tokenizer.eos_token_id}
    template = tokenizer.chat_template
    if isinstance(template, dict):  # named templates: llama.cpp's list form, the default first
        template = [{"name": name, "template": text}
                    for name, text in sorted(template.items(), key=lambda item: item[0] != "default")]
    special.chat_template = template or None
    return special


def _write(model, tokenizer, model_dir: Path, path: Path, architecture: str, pre: str, gguf_type: str) -> dict:
    import gguf

    qtype, file_type = _gguf_type(gguf_type)
    config = model.config
    _, theta = _rope(config.to_dict())
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    tokens, types = _vocabulary(tokenizer, config.vocab_size)
    special = _special_vocab(tokenizer, model_dir, config.vocab_size)
    tensors = _tensors(model, architecture, config)

    writer = gguf.GGUFWriter(path, architecture)
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(model_dir.name)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_rope_freq_base(theta)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(config.vocab_size)
    if architecture == "llama":
        writer.add_rope_dimension_count(head_dim)
        if head_dim * heads != config.hidden_size:
            writer.add_key_length(head_dim)
            writer.add_value_length(head_dim)
    writer.add_file_type(file_type)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    special.add_to_gguf(writer, quiet=True)
    counts: dict[str, int] = {}
    for name, data in tensors:
        _add_tensor(writer, name, data, qtype, counts)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return {"architecture": architecture, "gguf_type": gguf_type, "tensors": len(tensors), "tensor_types": counts,
            "parameters": int(sum(data.size for _, data in tensors)), "vocab_size": config.vocab_size,
            "tokenizer_pre": pre, "chat_template": special.chat_template is not None,
            "special_token_ids": dict(special.special_token_ids)}
