"""Scoring with and without shared prompts, on a prepared run's evaluation workload.

``score_examples`` can run a question's prompt once and score each of its answer variants on a copy
of the prompt's KV cache (``share_prompts``); by default it does so only for models of
``SHARE_PROMPTS_MIN_PARAMETERS`` parameters and more. This measures the choice: the same texts as
``benchmarks/eval_speed.py`` (every variant of forget, retain, holdout and world-facts records), scored
both ways, alternately, ``--repeats`` times each, with the largest difference between the two.

Usage::

    python benchmarks/shared_prompts.py --run-dir runs/small
    python benchmarks/shared_prompts.py --run-dir runs/smollm2-cost --limit 20   # a LoRA target on its base
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from eval_speed import workload
from transformers.utils import logging as hf_logging

from forgetkit.data.formatting import IGNORE_INDEX
from forgetkit.eval.sets import benchmark_data
from forgetkit.eval.token_stats import score_examples
from forgetkit.models import load_model


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run-dir", default="runs/small")
    parser.add_argument("--stage", default="target")
    parser.add_argument("--split", default="forget10")
    parser.add_argument("--limit", type=int, help="first N records of each set")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args(argv)
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    run = Path(args.run_dir)
    stage = run / args.stage
    model, tokenizer = (load_model(stage) if (stage / "config.json").is_file()
                        else load_model(run / "base", adapter=stage))
    data = benchmark_data(run / "benchmark", args.split)
    data.retain = (data.retain or [])[:400]
    examples, _ = workload(data, tokenizer, args.limit)
    prompt = [next(t for t, label in enumerate(e["labels"]) if label != IGNORE_INDEX) for e in examples]
    parameters = sum(p.numel() for p in model.parameters())
    print(f"{len(examples)} texts, mean length {np.mean([len(e['input_ids']) for e in examples]):.1f} tokens, "
          f"mean prompt {np.mean(prompt):.1f}; model {parameters / 1e6:.1f} M parameters, "
          f"{torch.get_num_threads()} threads")
    times, stats = {False: [], True: []}, {}
    for _ in range(args.repeats):
        for share in (False, True):
            start = time.perf_counter()
            stats[share] = score_examples(model, examples, tokenizer.pad_token_id, args.batch_size,
                                          share_prompts=share)
            times[share].append(time.perf_counter() - start)
    diff = max(float(np.max(np.abs(a.logprobs - b.logprobs))) for a, b in zip(stats[False], stats[True], strict=True))
    for share in (False, True):
        print(f"share_prompts={share}: " + ", ".join(f"{t:.2f} s" for t in times[share]))
    print("shared / plain: " + ", ".join(f"{s / p:.2f}" for s, p in zip(times[True], times[False], strict=True))
          + f"; max |Δ log p| {diff:.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
