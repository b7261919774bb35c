"""`forgetkit export --gguf`: the model (adapter merged) as one GGUF file, read back independently by
transformers' GGUF reader (weights dequantised by the `gguf` package, tokenizer rebuilt from the metadata)."""

from __future__ import annotations

import errno
import json

import numpy as np
import pytest
import torch
from chat_models import chatml_tokenizer, llama3_tokenizer, tiny_chat_model
from transformers import AutoModelForCausalLM, AutoTokenizer

from forgetkit.adapters import LoraSettings, attach_lora
from forgetkit.cli import main
from forgetkit.data.formatting import encode_qa, prompt_ids
from forgetkit.models import build_tiny_model, load_model, save_model

QUESTIONS = ["Who is person 3?", "What is the capital of France?", "Where is the town of Arlen 5?",
             "Is person 42 a poet from town 1234?"]
TEXTS = ["Question: Who is person 12?\nAnswer: a poet.", "  two  spaces,\ttab and 1234567 digits",
         "<|im_start|>user\nhi<|im_end|>\n", "Paris.<|im_end|>", "émigré naïve café"]
# Largest |logit difference| against the merged float32 model on the tiny chat Llama (LoRA merged; logits up to
# 0.45, the adapter moves them by 0.30): measured 0 (f32), 1.8e-4 (f16), 4.1e-3 (q8_0) on these prompts; the
# bounds leave about 5x headroom. f32 is exact up to summation order.
BOUNDS = {"f32": 1e-4, "f16": 1e-3, "q8_0": 2e-2}


@pytest.fixture(scope="module")
def chat_llama(tmp_path_factory):
    """A tiny ChatML Llama saved as a base, a perturbed LoRA adapter on it, and the merged model's logits on
    chat-formatted prompts (the reference every exported file is held to)."""
    root = tmp_path_factory.mktemp("gguf-export")
    tok = chatml_tokenizer()
    save_model(tiny_chat_model(tok, seed=1), tok, root / "base")
    torch.manual_seed(0)
    peft_model = attach_lora(tiny_chat_model(tok, seed=1), LoraSettings(r=4, alpha=8))
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_" in name:
                param.copy_(torch.randn_like(param) * 0.05)
    save_model(peft_model, tok, root / "adapter")
    merged, merged_tok = load_model(root / "base", root / "adapter")
    merged = merged.merge_and_unload()
    base, _ = load_model(root / "base")
    prompts = [torch.tensor([prompt_ids(merged_tok, q)]) for q in QUESTIONS]
    with torch.no_grad():
        reference = [merged(p).logits for p in prompts]
        adapter_effect = max(float((base(p).logits - r).abs().max()) for p, r in zip(prompts, reference, strict=True))
    return {"root": root, "tokenizer": merged_tok, "prompts": prompts, "reference": reference,
            "adapter_effect": adapter_effect}


def _read(path):
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32,
                                                 local_files_only=True).eval()
    return model, AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name, local_files_only=True)


def _max_difference(model, prompts, reference) -> float:
    with torch.no_grad():
        return max(float((model(p).logits - r).abs().max()) for p, r in zip(prompts, reference, strict=True))


def _export(chat_llama, gguf_type, name=None, adapter=True) -> list[str]:
    root = chat_llama["root"]
    out = root / (name or f"merged-{gguf_type}.gguf")
    return ["export", "--model", str(root / "base"), *(["--adapter", str(root / "adapter")] if adapter else []),
            "--gguf", "--gguf-type", gguf_type, "--out", str(out)]


@pytest.mark.parametrize("gguf_type", ["f32", "f16", "q8_0"])
def test_export_reads_back_with_the_merged_models_logits(chat_llama, gguf_type, capsys):
    from gguf import GGUFReader

    argv = _export(chat_llama, gguf_type)
    assert main(argv) == 0
    printed = capsys.readouterr().out.strip()
    assert "\n" not in printed and "adapter merged" in printed and f"llama GGUF, {gguf_type}" in printed
    out = chat_llama["root"] / f"merged-{gguf_type}.gguf"
    model, _ = _read(out)
    difference = _max_difference(model, chat_llama["prompts"], chat_llama["reference"])
    assert difference <= BOUNDS[gguf_type], (gguf_type, difference)
    assert chat_llama["adapter_effect"] > 100 * BOUNDS["f32"], "the adapter must change the logits to be tested"
    types = {t.name: t.tensor_type.name for t in GGUFReader(out).tensors}
    matrix = {"f32": "F32", "f16": "F16", "q8_0": "Q8_0"}[gguf_type]
    assert types["blk.0.attn_q.weight"] == types["token_embd.weight"] == types["output.weight"] == matrix
    assert types["blk.0.attn_norm.weight"] == types["output_norm.weight"] == "F32"
    assert not list(out.parent.glob(f".{out.name}*")), "no temporary sibling or lock left"


def _bos_adding_llama3_tokenizer():
    """Llama-3's shape: the tokenizer itself puts BOS before every text (tokenizer.ggml.add_bos_token)."""
    from tokenizers import processors

    tok = llama3_tokenizer()
    bos = tok.bos_token
    tok.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, tok.bos_token_id)])
    return tok


@pytest.mark.parametrize("make_tokenizer", [chatml_tokenizer, llama3_tokenizer, _bos_adding_llama3_tokenizer],
                         ids=["chatml", "llama3", "llama3-bos"])
def test_tokenizer_chat_template_and_eos_survive(make_tokenizer, tmp_path):
    tok = make_tokenizer()
    save_model(tiny_chat_model(tok), tok, tmp_path / "model")
    assert main(["export", "--model", str(tmp_path / "model"), "--gguf", "--out", str(tmp_path / "m.gguf")]) == 0
    _, original_tok = load_model(tmp_path / "model")
    _, read_tok = _read(tmp_path / "m.gguf")
    assert read_tok.chat_template == original_tok.chat_template
    for attribute in ("eos_token", "eos_token_id", "bos_token_id", "pad_token_id"):
        assert getattr(read_tok, attribute) == getattr(original_tok, attribute), attribute
    for text in TEXTS:
        assert read_tok(text)["input_ids"] == original_tok(text)["input_ids"], text
    messages = [{"role": "user", "content": "Who is person 3?"}, {"role": "assistant", "content": "A poet."}]
    assert (read_tok.apply_chat_template(messages, tokenize=True, return_dict=False)
            == original_tok.apply_chat_template(messages, tokenize=True, return_dict=False))
    # forgetkit's own formatting (answer-only labels ending in the end-of-turn token) is unchanged
    assert encode_qa(read_tok, "Who is person 3?", "A poet.") == encode_qa(original_tok, "Who is person 3?", "A poet.")


def test_qwen2_with_tied_embeddings_reads_back_exactly(bpe_tokenizer, tmp_path):
    from gguf import GGUFReader
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=len(bpe_tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                         tie_word_embeddings=True, bos_token_id=bpe_tokenizer.bos_token_id,
                         eos_token_id=bpe_tokenizer.eos_token_id, pad_token_id=bpe_tokenizer.pad_token_id)
    model = Qwen2ForCausalLM(config).eval()
    with torch.no_grad():  # the q/k/v biases are zero at initialisation: make them count
        for name, param in model.named_parameters():
            if name.endswith(".bias"):
                param.copy_(torch.randn_like(param))
    save_model(model, bpe_tokenizer, tmp_path / "qwen")
    out = tmp_path / "qwen.gguf"
    assert main(["export", "--model", str(tmp_path / "qwen"), "--gguf", "--gguf-type", "f32", "--out", str(out)]) == 0
    names = {t.name for t in GGUFReader(out).tensors}
    assert "output.weight" not in names and "blk.0.attn_q.bias" in names
    read, read_tok = _read(out)
    ids = torch.tensor([bpe_tokenizer("Question: Who is person 7?\nAnswer: Person 7")["input_ids"]])
    with torch.no_grad():
        assert float((read(ids).logits - model(ids).logits).abs().max()) <= 1e-4
    assert read_tok("Answer: Person 42")["input_ids"] == bpe_tokenizer("Answer: Person 42")["input_ids"]


def test_other_architectures_are_refused_in_one_line_before_any_work(bpe_tokenizer, word_tokenizer, tmp_path,
                                                                     capsys, monkeypatch):
    import forgetkit.models.loading

    def no_loading(*args, **kwargs):
        raise AssertionError("a refused export must not load the model")

    monkeypatch.setattr(forgetkit.models.loading, "load_model", no_loading)
    save_model(build_tiny_model(bpe_tokenizer, "gpt2", "micro"), bpe_tokenizer, tmp_path / "gpt2")
    out = tmp_path / "gpt2.gguf"
    assert main(["export", "--model", str(tmp_path / "gpt2"), "--gguf", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "model_type 'gpt2' cannot be exported to GGUF" in err
    save_model(build_tiny_model(word_tokenizer, "llama", "micro"), word_tokenizer, tmp_path / "words")
    assert main(["export", "--model", str(tmp_path / "words"), "--gguf", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "not a byte-level BPE tokenizer" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gpt2", "words"], "nothing written, no lock left"


def test_existing_out_and_bad_flags_are_refused(chat_llama, tmp_path, capsys):
    out = tmp_path / "taken.gguf"
    out.write_text("someone's file")
    argv = _export(chat_llama, "f32")
    argv[-1] = str(out)
    assert main(argv) == 2
    assert "--out exists" in capsys.readouterr().err and out.read_text() == "someone's file"
    base, adapter = str(chat_llama["root"] / "base"), str(chat_llama["root"] / "adapter")
    new = str(tmp_path / "new")
    for argv, message in [
        (["export", "--model", base, "--adapter", adapter, "--out", new], "give --merge"),
        (["export", "--model", base, "--adapter", adapter, "--merge", "--gguf", "--out", new], "give --merge"),
        (["export", "--model", base, "--merge", "--out", new], "give --adapter"),
        (["export", "--model", base, "--adapter", adapter, "--merge", "--gguf-type", "f16", "--out", new],
         "--gguf-type"),
        (["export", "--model", base, "--gguf", "--gguf-type", "q4_k", "--out", new], "invalid choice"),
    ]:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and message in err, (argv, err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken.gguf"]


def test_a_full_disk_leaves_no_partial_gguf(chat_llama, tmp_path, capsys, monkeypatch):
    import gguf

    def full(self, *args, **kwargs):
        for handle in self.fout:
            handle.write(b"\0" * 4096)
        raise OSError(errno.ENOSPC, "No space left on device", str(self.path))

    monkeypatch.setattr(gguf.GGUFWriter, "write_tensors_to_file", full)
    out = tmp_path / "full.gguf"
    argv = _export(chat_llama, "f16")
    argv[-1] = str(out)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "no space left on device" in err and str(out) in err
    assert list(tmp_path.iterdir()) == [], "no partial file, temporary sibling or lock"


def test_export_then_import_gguf_round_trip(chat_llama, tmp_path, capsys):
    out = tmp_path / "merged.gguf"
    argv = _export(chat_llama, "f32")
    argv[-1] = str(out)
    assert main(argv) == 0
    assert main(["import-gguf", str(out), "--out", str(tmp_path / "imported")]) == 0
    record = json.loads((tmp_path / "imported" / "import.json").read_text())
    assert record["architecture"] == "llama" and record["chat_template"]
    imported, imported_tok = load_model(tmp_path / "imported")
    assert _max_difference(imported, chat_llama["prompts"], chat_llama["reference"]) <= BOUNDS["f32"]
    assert imported_tok.chat_template == chat_llama["tokenizer"].chat_template
    assert imported_tok.eos_token == chat_llama["tokenizer"].eos_token == "<|im_end|>"
    assert np.array_equal(prompt_ids(imported_tok, QUESTIONS[0]), prompt_ids(chat_llama["tokenizer"], QUESTIONS[0]))


def test_pre_tokenizer_names_are_llama_cpps():
    from transformers.integrations.gguf.gguf_tokenizer_mapping import GGUF_PRE_TOKENIZER_SPLITS

    from forgetkit.models.gguf_export import pre_tokenizer_name

    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
    assert pre_tokenizer_name(byte_level) == "gpt-2"  # llama.cpp's name; it refuses "gpt2"
    digits = {"type": "Sequence", "pretokenizers": [{"type": "Digits", "individual_digits": True}, byte_level]}
    assert pre_tokenizer_name(digits) == "smollm"
    for name in ("llama-bpe", "qwen2"):
        split = {"type": "Split", "pattern": {"Regex": GGUF_PRE_TOKENIZER_SPLITS[name]}, "behavior": "Isolated",
                 "invert": False}
        assert pre_tokenizer_name({"type": "Sequence", "pretokenizers": [split, dict(byte_level, use_regex=False)]}) \
            == name
    assert pre_tokenizer_name({"type": "Metaspace", "replacement": "▁"}) is None
    assert pre_tokenizer_name(dict(byte_level, add_prefix_space=True)) is None
    assert pre_tokenizer_name(None) is None


def test_the_ledger_follows_the_exported_file(unlearn_run, tmp_path, capsys, caplog):
    """An unlearned adapter exported as GGUF is recorded in its request's ledger row: `audit show` names the
    served file and its fingerprint, `audit verify` checks it (exit 4 once it changes); an adapter changed
    after its request is exported but not recorded as the request's."""
    out, ledger = tmp_path / "npo", tmp_path / "ledger.sqlite"
    assert main(["unlearn", "--run", str(unlearn_run), "--split", "forget10", "--method", "npo", "--quiet",
                 "train.epochs=1", "--out", str(out), "--ledger", str(ledger)]) == 0
    request = json.loads((out / "summary.json").read_text())["ledger"]["id"]
    gguf = tmp_path / "served.gguf"
    capsys.readouterr()
    assert main(["export", "--model", str(unlearn_run / "target"), "--adapter", str(out / "adapter"), "--gguf",
                 "--gguf-type", "f32", "--out", str(gguf)]) == 0
    assert f"Recorded in request {request}" in capsys.readouterr().out
    assert main(["audit", "show", request, "--ledger", str(ledger)]) == 0
    shown = capsys.readouterr().out
    assert f"served as: {gguf.resolve()} (gguf f32" in shown
    assert main(["audit", "verify", request, "--ledger", str(ledger)]) == 0
    with gguf.open("r+b") as f:  # one byte of the served file changes
        f.seek(-1, 2)
        last = f.read(1)
        f.seek(-1, 2)
        f.write(bytes([last[0] ^ 1]))
    capsys.readouterr()
    assert main(["audit", "verify", request, "--ledger", str(ledger)]) == 4
    assert "served file" in capsys.readouterr().out
    config = out / "adapter" / "adapter_config.json"
    config.write_text(config.read_text().replace('"r": ', '"r":  '))  # the adapter is no longer the request's
    assert main(["export", "--model", str(unlearn_run / "target"), "--adapter", str(out / "adapter"), "--gguf",
                 "--gguf-type", "f32", "--out", str(tmp_path / "other.gguf")]) == 0
    assert "Recorded in request" not in capsys.readouterr().out and "the export is not recorded" in caplog.text
