"""``forgetkit export --gguf`` on a real model: how close each GGUF type stays to the merged model, and what the
export costs beside ``forgetkit export --merge``.

A LoRA adapter is put on the model (``--adapter``, or one built here: forgetkit's default LoRA with small random
B matrices, so the merge changes the logits). The two commands then run side by side as a user runs them, each in
its own process, with the same model and adapter: ``forgetkit export --merge`` (the reference: a Hugging Face
checkpoint with the adapter merged) and ``forgetkit export --gguf --gguf-type T`` per type. Each GGUF file is
read back independently by transformers' GGUF reader (``from_pretrained(..., gguf_file=...)``: weights
dequantised by the ``gguf`` package, tokenizer rebuilt from the file's metadata) and compared with the merged
checkpoint on chat-formatted prompts: the largest |logit difference| over every position of every prompt,
greedy continuations (``generate``, ``--new-tokens`` tokens) on the first ``--generate`` prompts, and the
tokenizer (prompt ids, chat template, end-of-turn token). Everything written goes to ``--work`` and is deleted
at the end unless ``--keep``.

Usage::

    python benchmarks/gguf_export_check.py --model models/smollm2-135m-instruct [--types f32 f16 q8_0]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

PROMPTS = [
    "What is the capital of France?",
    "Explain in one sentence why the sky is blue.",
    "Write a haiku about autumn leaves.",
    "What is 17 times 23?",
    "Give me three tips for sleeping better.",
    "Who wrote Pride and Prejudice?",
    "Translate 'good morning' into Spanish.",
    "What does a CPU do in a computer?",
    "Name the largest planet in our solar system.",
    "How do I boil an egg?",
]


def build_adapter(model_dir: Path, out: Path, seed: int = 0) -> None:
    """forgetkit's default LoRA on the model, B drawn at random (std 0.02) so that merging it matters."""
    from forgetkit.adapters import LoraSettings, attach_lora
    from forgetkit.models import load_model, save_model

    model, tokenizer = load_model(model_dir)
    torch.manual_seed(seed)
    model = attach_lora(model, LoraSettings())
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn_like(param) * 0.02)
    save_model(model, tokenizer, out)


def run_command(argv: list[str]) -> float:
    """Run ``forgetkit ARGV`` in its own process; its wall time in seconds (start-up included)."""
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "forgetkit", *argv], capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"forgetkit {' '.join(argv)} failed ({done.returncode}): {done.stderr.strip()}")
    print(f"  {done.stdout.strip()}  [{seconds:.1f}s]", flush=True)
    return seconds


@torch.no_grad()
def max_logit_difference(model, reference_logits: list[torch.Tensor], prompts: list[torch.Tensor]) -> float:
    return max(float((model(ids).logits.float() - ref).abs().max())
               for ids, ref in zip(prompts, reference_logits, strict=True))


@torch.no_grad()
def greedy(model, prompts: list[torch.Tensor], new_tokens: int, eos: int, pad: int) -> list[list[int]]:
    return [model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens, do_sample=False,
                           eos_token_id=eos, pad_token_id=pad)[0, ids.shape[1]:].tolist() for ids in prompts]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="models/smollm2-135m-instruct")
    parser.add_argument("--adapter", help="an adapter of the model (default: a random one built here)")
    parser.add_argument("--types", nargs="+", default=["f32", "f16", "q8_0"])
    parser.add_argument("--generate", type=int, default=3, help="prompts whose greedy continuations are compared")
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--work", help="where the outputs go (default: a new temporary directory)")
    parser.add_argument("--keep", action="store_true", help="keep the merged checkpoint and the GGUF files")
    args = parser.parse_args()

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from forgetkit.data.formatting import prompt_ids
    from forgetkit.models import load_model

    model_dir = Path(args.model)
    work = Path(args.work or tempfile.mkdtemp(prefix="gguf-export-check-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        adapter = Path(args.adapter) if args.adapter else work / "adapter"
        if not args.adapter:
            build_adapter(model_dir, adapter)
        print(f"model {model_dir}, adapter {adapter}; commands in their own processes:", flush=True)
        merged_dir = work / "merged"
        merge_s = run_command(["export", "--model", str(model_dir), "--adapter", str(adapter), "--merge",
                               "--out", str(merged_dir)])
        gguf_s = {}
        for gguf_type in args.types:
            gguf_s[gguf_type] = run_command(["export", "--model", str(model_dir), "--adapter", str(adapter), "--gguf",
                                             "--gguf-type", gguf_type, "--out", str(work / f"model-{gguf_type}.gguf")])

        reference, tokenizer = load_model(merged_dir)
        base, _ = load_model(model_dir)
        prompts = [torch.tensor([prompt_ids(tokenizer, q)]) for q in PROMPTS]
        with torch.no_grad():
            reference_logits = [reference(ids).logits.float() for ids in prompts]
        adapter_effect = max_logit_difference(base, reference_logits, prompts)
        del base
        eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
        reference_greedy = greedy(reference, prompts[:args.generate], args.new_tokens, eos, pad)
        rows = []
        for gguf_type in args.types:
            path = work / f"model-{gguf_type}.gguf"
            model = AutoModelForCausalLM.from_pretrained(work, gguf_file=path.name, dtype=torch.float32,
                                                         local_files_only=True).eval()
            read_tokenizer = AutoTokenizer.from_pretrained(work, gguf_file=path.name, local_files_only=True)
            same_ids = all(prompt_ids(read_tokenizer, q) == ids[0].tolist()
                           for q, ids in zip(PROMPTS, prompts, strict=True))
            same_template = read_tokenizer.chat_template == tokenizer.chat_template
            same_eos = (read_tokenizer.eos_token, read_tokenizer.eos_token_id) == (tokenizer.eos_token, eos)
            continuations = greedy(model, prompts[:args.generate], args.new_tokens, eos, pad)
            rows.append((gguf_type, path.stat().st_size / 2**20, gguf_s[gguf_type],
                         max_logit_difference(model, reference_logits, prompts),
                         sum(a == b for a, b in zip(continuations, reference_greedy, strict=True)),
                         same_ids and same_template and same_eos))
            del model

        print(f"\n{len(PROMPTS)} chat-formatted prompts ({sum(p.shape[1] for p in prompts)} positions); logits "
              f"up to {max(float(r.abs().max()) for r in reference_logits):.1f}; the adapter moves them by up to "
              f"{adapter_effect:.2f}")
        print(f"`forgetkit export --merge`: {merge_s:.1f}s (command wall time, start-up included)\n")
        print("| --gguf-type | file MiB | export s | × merge | max abs Δlogit | greedy same "
              "| tokenizer, template, eos |")
        print("|---|---|---|---|---|---|---|")
        for gguf_type, mib, seconds, difference, same, tokenizer_ok in rows:
            print(f"| {gguf_type} | {mib:.0f} | {seconds:.1f} | {seconds / merge_s:.2f} | {difference:.3g} | "
                  f"{same}/{len(reference_greedy)} ({args.new_tokens} tokens) | "
                  f"{'same' if tokenizer_ok else 'DIFFER'} |")
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
