"""forgetkit against a bare Hugging Face + peft loop on a real model, side by side in one process.

On the imported SmolLM2-135M-Instruct (``make smollm2``) and the benchmark of a prepared run
(``forgetkit prepare --config smollm2``), on identical batches (the training loop's own seeded
order, replayed by the bare loop):

1. training: a bare step (``model(**batch, labels=...)``-style full-logit losses, backward, clip,
   AdamW) against ``train_loop`` with forgetkit's losses (the head at the labelled positions only),
   for cross-entropy (fine-tuning, ``retrain``), GradDiff and NPO (π_ref: the adapter disabled);
   tokens/s and peak memory (RSS on CPU; ``max_memory_allocated`` on GPU), each block in a fresh
   process from the same weights (so no block's peak holds what another left resident), forgetkit's
   loop as it is by default (a method's forget and retain parts backpropagated one after the other),
   with ``train.gradient_checkpointing``, and, for cross-entropy, with ``train.micro_batch_size`` at
   half the batch; the process's resident memory before each
   block is reported too, so the block's own memory can be read apart from the weights and libraries;
2. evaluation: a bare batched loop that scores every QA text variant (full logits, log-softmax)
   and greedily generates every answer, against ``forgetkit.eval.evaluate``'s full metric set on
   the same examples; wall time, the largest per-example loss difference, and whether the greedy
   answers are identical.

Usage::

    python benchmarks/real_model_cost.py --run-dir runs/smollm2 [--steps 4] [--batch-size 8] [--json FILE]
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
import torch.nn.functional as F
from transformers.utils import logging as hf_logging

from forgetkit.cost import measure, rss_mb
from forgetkit.data.formatting import IGNORE_INDEX, collate, encode_qa, prompt_ids, stop_token_ids, tokenize_qa
from forgetkit.data.readers import read_records
from forgetkit.io import write_json
from forgetkit.methods import Reference, build_method
from forgetkit.models import load_model
from forgetkit.train import EpochOrder, PairedData, TrainConfig, fine_tune, train_loop

SEED = 0


def _bare_ce(model, part) -> torch.Tensor:
    return model(**part).loss  # Hugging Face's own loss: full [B, T, V] logits


def _bare_sequence_nll(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    logp = F.log_softmax(logits[:, :-1].float(), dim=-1)
    targets = labels[:, 1:]
    mask = targets != IGNORE_INDEX
    token = logp.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return -(token * mask).sum(-1)


def _bare_loss(kind: str, model, forget, retain) -> torch.Tensor:
    if kind == "ce":
        return _bare_ce(model, retain)
    if kind == "graddiff":
        return -_bare_ce(model, forget) + _bare_ce(model, retain)
    inputs = {k: forget[k] for k in ("input_ids", "attention_mask")}
    nll = _bare_sequence_nll(model(**inputs).logits, forget["labels"])
    with torch.no_grad(), model.disable_adapter():
        ref_nll = _bare_sequence_nll(model(**inputs).logits, forget["labels"])
    return -(2 / 0.1) * F.logsigmoid(-0.1 * (ref_nll - nll)).mean() + _bare_ce(model, retain)


def _batches(kind: str, forget, retain, batch_size: int, steps: int, pad: int):
    """The batches ``train_loop`` draws (its seeded order), for the bare loop to replay."""
    if kind == "ce":
        order = EpochOrder(len(retain), SEED)
        return [(None, collate([retain[i] for i in order.take(s * batch_size, batch_size)], pad))
                for s in range(steps)]
    f_order, r_order = EpochOrder(len(forget), SEED), EpochOrder(len(retain), SEED + 1)
    return [(collate([forget[i] for i in f_order.take(s * batch_size, batch_size)], pad),
             collate([retain[i] for i in r_order.take(s * batch_size, batch_size)], pad)) for s in range(steps)]


def _starting_model(run: Path):
    """The target merged into the base, with a fresh LoRA r 8 on it: the same weights in every process."""
    from forgetkit.adapters.lora import LoraSettings, attach_lora

    model, tokenizer = load_model(run / "base", adapter=run / "target")
    torch.manual_seed(SEED)
    return attach_lora(model.merge_and_unload(), LoraSettings(r=8, alpha=16)), tokenizer


def _sets(run: Path, tokenizer):
    bench = run / "benchmark"
    return (tokenize_qa(tokenizer, read_records(bench / "forget10.jsonl"), 128).examples,
            tokenize_qa(tokenizer, read_records(bench / "retain90.jsonl"), 128).examples)


def _block(run: Path, kind: str, impl: str, batch_size: int, steps: int) -> dict:
    """One training block in this (fresh) process: the bare loop or forgetkit's on the same batches."""
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    model, tokenizer = _starting_model(run)
    forget, retain = _sets(run, tokenizer)
    pad = tokenizer.pad_token_id
    batches = _batches(kind, forget, retain, batch_size, steps, pad)
    parts = [p for b in batches for p in b if p is not None]
    out = {"tokens": sum(int(p["attention_mask"].sum()) for p in parts),
           "labelled_tokens": sum(int((p["labels"] != IGNORE_INDEX).sum()) for p in parts)}
    model.train()
    out["resident_before_mb"] = rss_mb()  # the process before the block: libraries, weights, data
    if impl == "bare":
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=1e-5)
        with measure() as bare:
            for f, r in batches:
                loss = _bare_loss(kind, model, f, r)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                optimizer.step()
                optimizer.zero_grad()
        return {**out, "wall_time_s": bare.wall_time_s, "peak_memory_mb": bare.peak_memory_mb}
    driver = retain if kind == "ce" else forget  # the loop's epochs count its batches: exactly `steps` of them
    config = TrainConfig(epochs=steps / math.ceil(len(driver) / batch_size),
                         batch_size=batch_size, lr=1e-5, seed=SEED,
                         gradient_checkpointing=impl == "forgetkit+checkpointing",
                         micro_batch_size=batch_size // 2 if impl == "forgetkit+micro-batches" else None)
    if kind == "ce":
        stats = fine_tune(model, SimpleNamespace(examples=retain), config, pad, quiet=True)
    else:
        method = build_method(kind)
        reference = Reference(model) if method.needs_reference else None
        stats = train_loop(model, lambda m, b: method.parts(m, b, reference), PairedData(forget=forget, retain=retain),
                           config, pad, quiet=True)
    assert stats.steps == steps, (kind, stats.steps)
    return {**out, "wall_time_s": stats.wall_time_s, "peak_memory_mb": stats.peak_memory_mb}


def training(run: Path, batch_size: int, steps: int) -> list[dict]:
    """Each block (loss × bare or forgetkit) in its own fresh process, so that no block's peak memory holds
    what another left resident; the model's loading is outside the measured block."""
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    rows = []
    blocks = [(k, o) for k in ("ce", "graddiff", "npo") for o in ("forgetkit", "forgetkit+checkpointing")]
    blocks.insert(1, ("ce", "forgetkit+micro-batches"))
    for kind, ours_kind in blocks:
        got = {}
        for impl in ("bare", ours_kind):
            if impl == "bare" and rows and rows[-1]["kind"] == kind:  # the same bare block: measured once
                got["bare"] = rows[-1]["bare"]
                continue
            with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
                got[impl] = pool.submit(_block, run, kind, impl, batch_size, steps).result()
        bare, ours, seen = got["bare"], got[ours_kind], got["bare"]["tokens"]
        label = {"forgetkit": kind, "forgetkit+checkpointing": f"{kind}, gradient checkpointing",
                 "forgetkit+micro-batches": f"{kind}, micro-batches of {batch_size // 2}"}[ours_kind]
        rows.append({"loss": label, "kind": kind, "bare": bare, "steps": steps, "tokens": seen,
                     "labelled_tokens": bare["labelled_tokens"],
                     "bare_s": bare["wall_time_s"], "forgetkit_s": ours["wall_time_s"],
                     "bare_tokens_per_s": seen / bare["wall_time_s"],
                     "forgetkit_tokens_per_s": seen / ours["wall_time_s"],
                     "time_ratio": ours["wall_time_s"] / bare["wall_time_s"],
                     "bare_peak_mb": bare["peak_memory_mb"], "forgetkit_peak_mb": ours["peak_memory_mb"],
                     "memory_ratio": ours["peak_memory_mb"] / bare["peak_memory_mb"],
                     "bare_resident_before_mb": bare["resident_before_mb"],
                     "forgetkit_resident_before_mb": ours["resident_before_mb"],
                     "bare_block_mb": bare["peak_memory_mb"] - bare["resident_before_mb"],
                     "forgetkit_block_mb": ours["peak_memory_mb"] - ours["resident_before_mb"]})
    for row in rows:
        del row["bare"], row["kind"]
    return rows


def _bare_scores(model, examples, pad: int, batch_size: int) -> list[float]:
    """Average NLL of each example's labelled tokens: full logits, one batch at a time, input order."""
    out = []
    with torch.no_grad():
        for i in range(0, len(examples), batch_size):
            batch = collate(examples[i:i + batch_size], pad)
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            nll = _bare_sequence_nll(logits, batch["labels"])
            counts = (batch["labels"][:, 1:] != IGNORE_INDEX).sum(-1)
            out.extend((nll / counts).tolist())
    return out


def _bare_generate(model, tokenizer, questions, max_new_tokens: int, batch_size: int) -> list[str]:
    pad = tokenizer.pad_token_id
    texts = []
    with torch.no_grad():
        for i in range(0, len(questions), batch_size):
            prompts = [prompt_ids(tokenizer, q) for q in questions[i:i + batch_size]]
            width = max(map(len, prompts))
            ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
            mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
            out = model.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=max_new_tokens,
                                 pad_token_id=pad, eos_token_id=stop_token_ids(tokenizer))
            texts.extend(t.strip() for t in tokenizer.batch_decode(out[:, width:], skip_special_tokens=True))
    return texts


def evaluation(model, tokenizer, sets: dict, max_new_tokens: int, batch_size: int) -> dict:
    from forgetkit.eval.evaluate import evaluate
    from forgetkit.eval.sets import EvalData
    from forgetkit.eval.settings import EvalSettings
    from forgetkit.eval.tofu import SET_FILES

    pad = tokenizer.pad_token_id
    examples, keys, questions = [], [], []
    for role, records in sets.items():
        for r in records:
            variants = [("gt", r.question, r.answer)]
            base = r.answer if role == "world_facts" else r.paraphrased_answer
            if base:
                variants.append(("para", r.question, base))
            variants += [(f"pert{j}", r.question, a) for j, a in enumerate(r.perturbed_answer)]
            if role == "forget" and r.paraphrased_question:
                variants.append(("pq", r.paraphrased_question, r.answer))
                questions.append(r.paraphrased_question)
            for name, q, a in variants:
                ids, labels = encode_qa(tokenizer, q, a)
                examples.append({"input_ids": ids, "labels": labels})
                keys.append((role, r.id, name))
            questions.append(r.question)
    with measure() as bare:
        scores = _bare_scores(model, examples, pad, batch_size)
        answers = _bare_generate(model, tokenizer, questions, max_new_tokens, 64)
    settings = EvalSettings(max_new_tokens=max_new_tokens, batch_size=batch_size, gradnorm=False,
                            canary_candidates=10, include_text=True)
    data = EvalData(**sets)
    with measure() as ours:
        log, _ = evaluate(model, tokenizer, data, settings, quiet=True)
    mine = {}
    for role, records in sets.items():
        set_log = log[SET_FILES[role]]
        for r in records:
            mine[(role, r.id, "gt")] = set_log["avg_gt_loss"][r.id]
            if "avg_paraphrased_loss" in set_log:
                mine[(role, r.id, "para")] = set_log["avg_paraphrased_loss"][r.id]
            for j, v in enumerate(set_log.get("average_perturb_loss", {}).get(r.id, [])):
                mine[(role, r.id, f"pert{j}")] = v
            if "avg_gt_loss_paraphrased_question" in set_log:
                mine[(role, r.id, "pq")] = set_log["avg_gt_loss_paraphrased_question"][r.id]
    diffs = [abs(mine[k] - s) for k, s in zip(keys, scores, strict=True) if k in mine]
    generated = [log[SET_FILES[role]]["generated_text"][r.id][1] for role, records in sets.items() for r in records]
    bare_main = [a for a, q in zip(answers, questions, strict=True)
                 if q in {r.question for records in sets.values() for r in records}]
    return {"sequences": len(examples), "questions": len(questions), "bare_s": bare.wall_time_s,
            "forgetkit_s": ours.wall_time_s, "time_ratio": ours.wall_time_s / bare.wall_time_s,
            "bare_peak_mb": bare.peak_memory_mb, "forgetkit_peak_mb": ours.peak_memory_mb,
            "max_abs_loss_difference": float(np.max(diffs)), "compared_losses": len(diffs),
            "identical_generations": sum(a == b for a, b in zip(generated, bare_main, strict=False)),
            "generations": len(generated)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run-dir", default="runs/smollm2")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--eval-records", type=int, default=20, help="records per evaluation set")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args(argv)
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    run = Path(args.run_dir)
    bench = run / "benchmark"
    started = time.perf_counter()
    train_rows = training(run, args.batch_size, args.steps)
    model, tokenizer = _starting_model(run)
    n = args.eval_records
    sets = {"forget": read_records(bench / "forget10.jsonl")[:n],
            "holdout": read_records(bench / "holdout10.jsonl")[:n],
            "world_facts": read_records(bench / "world_facts.jsonl")[:n]}
    with torch.no_grad():
        merged = model.merge_and_unload()
    eval_row = evaluation(merged.eval(), tokenizer, sets, args.max_new_tokens, 32)
    print(f"Training, batch {args.batch_size} (+ {args.batch_size} retain), {args.steps} steps, LoRA r 8, "
          f"float32, {'cuda' if torch.cuda.is_available() else 'cpu'}:")
    print("| loss | bare tokens/s | forgetkit tokens/s | time × bare | bare peak MB | forgetkit peak MB "
          "| memory × bare | resident before: bare / forgetkit MB | block's own: bare / forgetkit MB |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in train_rows:
        print(f"| {r['loss']} | {r['bare_tokens_per_s']:.0f} | {r['forgetkit_tokens_per_s']:.0f} | "
              f"{r['time_ratio']:.2f} | {r['bare_peak_mb']:.0f} | {r['forgetkit_peak_mb']:.0f} | "
              f"{r['memory_ratio']:.2f} | {r['bare_resident_before_mb']:.0f} / {r['forgetkit_resident_before_mb']:.0f} "
              f"| {r['bare_block_mb']:.0f} / {r['forgetkit_block_mb']:.0f} |")
    e = eval_row
    print(f"\nEvaluation of {e['sequences']} scored sequences and {e['questions']} generated answers: bare "
          f"{e['bare_s']:.1f} s (scoring + generation only), forgetkit eval {e['forgetkit_s']:.1f} s (every metric): "
          f"× {e['time_ratio']:.2f}; max |Δ avg loss| {e['max_abs_loss_difference']:.2e} over "
          f"{e['compared_losses']} losses; identical greedy answers {e['identical_generations']}/{e['generations']}")
    print(f"(whole benchmark {time.perf_counter() - started:.0f} s)")
    if args.json:
        write_json(args.json, {"training": train_rows, "evaluation": eval_row, "settings": vars(args)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
