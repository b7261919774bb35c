"""Peak memory of unlearning methods (LoRA and full) and the training loop's overhead.

1. Memory: each (method, mode) trains ``--steps`` steps on the same model and batch size, in
   its own process (so one run's allocations do not inflate the next one's peak). Reported:
   peak memory during training (CPU: resident set; GPU: max allocated), and the part above the
   memory held before training started (model loaded, data tokenised). In LoRA mode the
   reference model of ``npo`` and ``kl`` is the adapter-disabled network; in full mode it is a
   frozen copy of the weights.
2. Overhead: ms per step of ``train_loop`` (cross-entropy, as fine-tuning uses it) against a bare
   PyTorch loop (collate, forward, backward, clip, AdamW step) on the same model and batches.

Usage::

    python benchmarks/unlearn_cost.py --run-dir runs/small [--steps 30] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch
from transformers.utils import logging as hf_logging

from forgetkit.cost import rss_mb
from forgetkit.data.formatting import collate, tokenize_qa
from forgetkit.data.readers import read_records
from forgetkit.io import write_json
from forgetkit.models import load_model

METHODS = ("ga", "graddiff", "npo", "kl")


def _job(run_dir: Path, mode: str):
    from forgetkit.adapters.lora import LoraSettings, attach_lora

    model, tokenizer = load_model(run_dir / "target")
    model = attach_lora(model, LoraSettings(r=8, alpha=16)) if mode == "lora" else model.requires_grad_(True)
    bench = run_dir / "benchmark"
    forget = tokenize_qa(tokenizer, read_records(bench / "forget10.jsonl"), 128).examples
    retain = tokenize_qa(tokenizer, read_records(bench / "retain90.jsonl"), 128).examples
    return model, tokenizer, forget, retain


def one_memory_run(run_dir: Path, method_name: str, mode: str, steps: int, batch_size: int) -> dict:
    from forgetkit.methods import Reference, build_method
    from forgetkit.train import PairedData, TrainConfig, train_loop

    model, tokenizer, forget, retain = _job(run_dir, mode)
    method = build_method(method_name)
    before = rss_mb()  # everything held before training: model, data, libraries
    reference = Reference(model) if method.needs_reference else None
    data = PairedData(forget=forget, retain=retain if method.needs_retain else None)
    epochs = steps * batch_size / len(forget)
    stats = train_loop(model, lambda m, b: method.parts(m, b, reference), data,
                       TrainConfig(epochs=epochs, batch_size=batch_size, lr=1e-4), tokenizer.pad_token_id, quiet=True)
    return {"method": method_name, "mode": mode, "steps": stats.steps, "peak_mb": stats.peak_memory_mb,
            "memory_kind": stats.memory_kind, "before_training_mb": before,
            "training_mb": stats.peak_memory_mb - before if stats.memory_kind == "cpu_rss" else stats.peak_memory_mb,
            "trainable_parameters": stats.trainable_parameters, "s_per_step": stats.wall_time_s / stats.steps}


def overhead(run_dir: Path, steps: int, batch_size: int) -> dict:
    from forgetkit.methods.base import UnlearnBatch
    from forgetkit.train import PairedData, TrainConfig, train_loop

    results = {}
    for name in ("bare", "loop", "bare again"):
        model, tokenizer, _, retain = _job(run_dir, "full")
        pad = tokenizer.pad_token_id
        model.train()
        if name == "loop":
            def ce(m, b: UnlearnBatch):
                return m(**b.retain).loss, {}

            stats = train_loop(model, ce, PairedData(retain=retain),
                               TrainConfig(epochs=steps * batch_size / len(retain), batch_size=batch_size, lr=1e-4),
                               pad, quiet=True)
            results[name] = stats.wall_time_s / stats.steps
            continue
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
        order = torch.randperm(len(retain), generator=torch.Generator().manual_seed(0)).tolist()
        start = time.perf_counter()
        for s in range(steps):
            batch = collate([retain[i] for i in order[s * batch_size:(s + 1) * batch_size]], pad)
            loss = model(**batch).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad()
        results[name] = (time.perf_counter() - start) / steps
    bare = min(results["bare"], results["bare again"])
    return {"ms_per_step": {k: v * 1000 for k, v in results.items()}, "overhead": results["loop"] / bare - 1}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run-dir", default="runs/small")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--one", nargs=2, metavar=("METHOD", "MODE"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    run_dir = Path(args.run_dir)
    if args.one:
        print(json.dumps(one_memory_run(run_dir, args.one[0], args.one[1], args.steps, args.batch_size)))
        return 0

    rows = []
    for mode in ("lora", "full"):
        for method in METHODS:
            out = subprocess.run([sys.executable, __file__, "--run-dir", str(run_dir), "--steps", str(args.steps),
                                  "--batch-size", str(args.batch_size), "--one", method, mode],
                                 capture_output=True, text=True, check=True)
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    over = overhead(run_dir, args.steps, args.batch_size)

    ga = {r["mode"]: r for r in rows if r["method"] == "ga"}
    print(f"Peak memory, {args.steps} steps, batch {args.batch_size} forget (+ {args.batch_size} retain), "
          f"{rows[0]['memory_kind']}:")
    print("| method | mode | trainable params | peak MB | training MB (above pre-training) | × ga (training MB) "
          "| s/step |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        ratio = r["training_mb"] / ga[r["mode"]]["training_mb"]
        r["ratio_to_ga"] = ratio
        print(f"| {r['method']} | {r['mode']} | {r['trainable_parameters']:,} | {r['peak_mb']:.0f} | "
              f"{r['training_mb']:.1f} | {ratio:.2f} | {r['s_per_step']:.3f} |")
    ms = over["ms_per_step"]
    print(f"\nLoop overhead (full fine-tune, cross-entropy, {args.steps} steps of batch {args.batch_size}): "
          f"bare {ms['bare']:.1f} / {ms['bare again']:.1f} ms per step, train_loop {ms['loop']:.1f} ms: "
          f"{over['overhead'] * 100:+.1f}%")
    if args.json:
        write_json(args.json, {"memory": rows, "overhead": over, "steps": args.steps, "batch_size": args.batch_size})
    return 0


if __name__ == "__main__":
    sys.exit(main())
