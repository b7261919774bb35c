"""Batched evaluation against a straightforward per-example loop: same numbers, how much faster.

The workload is what ``forgetkit eval`` scores and generates on a built-in benchmark split: every
QA text variant (answer, paraphrased answer, each perturbed answer, the answer after the
paraphrased question) of the forget, retain (first 400), holdout and world-facts sets,
teacher-forced; and a greedy answer to every question.

- batched: ``score_examples`` (length-sorted, right-padded batches, one pass feeding every
  metric) and ``greedy_continuations`` (length-sorted, left-padded batches, KV cache);
- per example: one forward pass per text variant with batch size 1, and ``model.generate`` per
  question, as a plain evaluation loop does.

It checks that both give the same average NLL per text (max abs diff) and the same generations,
and prints a table of times. Usage::

    python benchmarks/eval_speed.py --run-dir runs/small [--split forget10] [--limit N] [--json FILE]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformers.utils import logging as hf_logging

from forgetkit.data.formatting import IGNORE_INDEX, encode_qa, prompt_ids
from forgetkit.eval.generation import greedy_continuations
from forgetkit.eval.sets import benchmark_data
from forgetkit.eval.token_stats import score_examples
from forgetkit.io import write_json
from forgetkit.models import load_model


def workload(data, tokenizer, limit: int | None) -> tuple[list[dict], list[list[int]]]:
    examples, prompts = [], []
    for role, records in data.qa_sets().items():
        for r in records[:limit]:
            variants = [(r.question, r.answer), (r.question, r.paraphrased_answer or r.answer)]
            variants += [(r.question, wrong) for wrong in r.perturbed_answer]
            prompts.append(prompt_ids(tokenizer, r.question))
            if role == "forget" and r.paraphrased_question:
                variants.append((r.paraphrased_question, r.answer))
                prompts.append(prompt_ids(tokenizer, r.paraphrased_question))
            for question, answer in variants:
                ids, labels = encode_qa(tokenizer, question, answer)
                examples.append({"input_ids": ids, "labels": labels})
    return examples, prompts


@torch.no_grad()
def naive_avg_nll(model, examples: list[dict], quiet: bool) -> list[float]:
    out = []
    for ex in tqdm(examples, desc="per-example score", disable=quiet):
        ids = torch.tensor([ex["input_ids"]])
        labels = torch.tensor([ex["labels"]])
        out.append(float(model(input_ids=ids, labels=labels).loss))
    return out


@torch.no_grad()
def naive_generate(model, tokenizer, prompts: list[list[int]], max_new_tokens: int, quiet: bool) -> list[str]:
    out = []
    for p in tqdm(prompts, desc="per-example generate", disable=quiet):
        ids = torch.tensor([p])
        generated = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                   max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id,
                                   eos_token_id=tokenizer.eos_token_id)
        out.append(tokenizer.decode(generated[0, len(p):], skip_special_tokens=True))
    return out


def timed(fn):
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run-dir", default="runs/small", help="a prepared run (make demo builds runs/small)")
    parser.add_argument("--stage", default="target", help="which model of the run to evaluate")
    parser.add_argument("--split", default="forget10")
    parser.add_argument("--limit", type=int, help="first N records of each set (a quick check)")
    parser.add_argument("--max-new-tokens", type=int, default=200, help="forgetkit eval's default")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--generation-batch-size", type=int, default=64)
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    run_dir = Path(args.run_dir)
    model, tokenizer = load_model(run_dir / args.stage)
    model.eval()
    data = benchmark_data(run_dir / "benchmark", args.split)
    data.retain = (data.retain or [])[:400]
    examples, prompts = workload(data, tokenizer, args.limit)
    room = model.config.max_position_embeddings - max(len(p) for p in prompts)
    new_tokens = min(args.max_new_tokens, room)
    pad = tokenizer.pad_token_id

    batched_stats, t_score = timed(lambda: score_examples(model, examples, pad, args.batch_size))
    batched_text, t_gen = timed(lambda: greedy_continuations(model, tokenizer, prompts, new_tokens,
                                                              args.generation_batch_size))
    naive_nll, t_naive_score = timed(lambda: naive_avg_nll(model, examples, args.quiet))
    naive_text, t_naive_gen = timed(lambda: naive_generate(model, tokenizer, prompts, new_tokens, args.quiet))

    diff = max(abs(s.avg_nll - n) for s, n in zip(batched_stats, naive_nll, strict=True))
    mismatches = sum(a != b for a, b in zip(batched_text, naive_text, strict=True))
    tokens = sum(sum(lab != IGNORE_INDEX for lab in ex["labels"]) for ex in examples)
    result = {
        "run_dir": str(run_dir), "stage": args.stage, "split": args.split, "limit": args.limit,
        "texts_scored": len(examples), "answer_tokens_scored": tokens, "prompts": len(prompts),
        "max_new_tokens": new_tokens, "threads": torch.get_num_threads(),
        "batched_s": {"score": t_score, "generate": t_gen, "total": t_score + t_gen},
        "per_example_s": {"score": t_naive_score, "generate": t_naive_gen, "total": t_naive_score + t_naive_gen},
        "max_abs_diff_avg_nll": diff, "generation_mismatches": mismatches,
    }
    result["speedup"] = {k: result["per_example_s"][k] / result["batched_s"][k] for k in ("score", "generate",
                                                                                          "total")}
    print(f"{len(examples)} texts scored ({tokens} answer tokens), {len(prompts)} greedy generations "
          f"(up to {new_tokens} new tokens), {torch.get_num_threads()} threads")
    print(f"| {'step':<9} | {'per example (s)':>15} | {'batched (s)':>11} | {'speed-up':>8} |")
    print(f"|{'-' * 11}|{'-' * 17}|{'-' * 13}|{'-' * 10}|")
    for k in ("score", "generate", "total"):
        print(f"| {k:<9} | {result['per_example_s'][k]:>15.2f} | {result['batched_s'][k]:>11.2f} | "
              f"{result['speedup'][k]:>7.1f}x |")
    print(f"max |Δ avg NLL| = {diff:.2e}; generations differing: {mismatches} of {len(prompts)}")
    if args.json:
        write_json(args.json, result)
    ok = diff <= 1e-4 and mismatches == 0
    if not ok:
        print("FAIL: batched and per-example results differ", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
