"""Tiny chat models built in code for the real-model tests: a byte-level BPE tokenizer with a
ChatML (SmolLM2/Qwen-style) or Llama-3-style chat template, a tiny Llama on it, and a GGUF file
written from them with the ``gguf`` package's writer the way llama.cpp's converter lays it out."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from forgetkit.models import build_tiny_model, train_tokenizer

# ChatML as SmolLM2 ships it: a default system turn, and a newline after each <|im_end|>.
CHATML_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
# Llama-3: BOS in the template, header tokens, <|eot_id|> ends a turn with nothing after it.
LLAMA3_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] + '<|eot_id|>' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
TEXTS = [f"Question: Who is person {i}?\nAnswer: Person {i} is a poet from the town of Arlen {i % 7}. "
         f"What is the capital of France? Paris." for i in range(60)]


def chatml_tokenizer():
    tok = train_tokenizer(TEXTS, vocab_size=400)
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tok.eos_token = "<|im_end|>"
    tok.pad_token = "<|im_end|>"
    tok.chat_template = CHATML_TEMPLATE
    return tok


def llama3_tokenizer():
    tok = train_tokenizer(TEXTS, vocab_size=400)
    tok.add_special_tokens({"additional_special_tokens": ["<|start_header_id|>", "<|end_header_id|>",
                                                         "<|eot_id|>", "<|begin_of_text|>"]})
    tok.bos_token = "<|begin_of_text|>"
    tok.chat_template = LLAMA3_TEMPLATE
    return tok


def tiny_chat_model(tokenizer, seed: int = 0):
    return build_tiny_model(tokenizer, "llama", "micro", seed=seed)


def _permute(weight: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's Q/K row order (transformers undoes it when it reads a llama GGUF)."""
    rows = weight.shape[0]
    return weight.reshape(heads, 2, rows // heads // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def write_llama_gguf(model, tokenizer, path: Path, architecture: str = "llama") -> Path:
    """Write ``model`` (a tiny Llama) and its BPE ``tokenizer`` as a float32 GGUF file."""
    import gguf

    cfg = model.config
    writer = gguf.GGUFWriter(str(path), architecture)
    writer.add_name("forgetkit-tiny-chat")
    writer.add_block_count(cfg.num_hidden_layers)
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_head_count(cfg.num_attention_heads)
    writer.add_head_count_kv(cfg.num_key_value_heads)
    writer.add_rope_dimension_count(cfg.hidden_size // cfg.num_attention_heads)
    writer.add_rope_freq_base(float(cfg.rope_parameters["rope_theta"]) if getattr(cfg, "rope_parameters", None)
                              else float(cfg.rope_theta))
    writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    writer.add_vocab_size(len(tokenizer))
    vocab = tokenizer.get_vocab()
    tokens = [None] * len(vocab)
    for token, index in vocab.items():
        tokens[index] = token
    special = set(tokenizer.all_special_ids)
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_types([gguf.TokenType.CONTROL if i in special else gguf.TokenType.NORMAL
                            for i in range(len(tokens))])
    merges = json.loads(tokenizer.backend_tokenizer.to_str())["model"]["merges"]
    writer.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in merges])
    writer.add_bos_token_id(tokenizer.bos_token_id)
    writer.add_eos_token_id(tokenizer.eos_token_id)
    writer.add_pad_token_id(tokenizer.pad_token_id)
    writer.add_chat_template(tokenizer.chat_template)
    state = {k: v.detach().float().numpy() for k, v in model.state_dict().items()}
    heads, kv_heads = cfg.num_attention_heads, cfg.num_key_value_heads
    writer.add_tensor("token_embd.weight", state["model.embed_tokens.weight"])
    writer.add_tensor("output_norm.weight", state["model.norm.weight"])
    writer.add_tensor("output.weight", state["lm_head.weight"])
    names = {"input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
             "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output", "post_attention_layernorm": "ffn_norm",
             "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}
    for layer in range(cfg.num_hidden_layers):
        for hf, gg in names.items():
            weight = state[f"model.layers.{layer}.{hf}.weight"]
            if gg == "attn_q":
                weight = _permute(weight, heads)
            elif gg == "attn_k":
                weight = _permute(weight, kv_heads)
            writer.add_tensor(f"blk.{layer}.{gg}.weight", np.ascontiguousarray(weight))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
