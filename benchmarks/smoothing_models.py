"""Randomized smoothing bounds for a prepared run's target and oracle and the unlearned models of a bench grid.

For each model (as ``benchmarks/weat_models.py`` finds them) and each noise given, ``forgetkit.eval.smoothing``
scores the split's forget questions under ``--samples`` noise draws each: the unperturbed emission rate (greedy
reproduction of the forget answer), the rate under noise, and the one-sided Clopper-Pearson bounds (for a random
forget question, and for every question at once). Prints a Markdown table.

Usage::

    python benchmarks/smoothing_models.py --run-dir runs/smollm2 --bench runs/smollm2/bench/smollm2 \\
        --noise embed:0.5 tokens:0.1 --samples 20 --limit 40 --only target oracle npo graddiff
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from transformers.utils import logging as hf_logging
from weat_models import models

from forgetkit.data.readers import read_records
from forgetkit.eval.smoothing import smoothed_emission


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run-dir", required=True)
    parser.add_argument("--bench")
    parser.add_argument("--split", default="forget10")
    parser.add_argument("--noise", nargs="+", default=["embed:0.5"])
    parser.add_argument("--samples", type=int, default=20)
    parser.add_argument("--limit", type=int, help="the first N forget questions")
    parser.add_argument("--only", nargs="*", help="model names to score (default: all)")
    args = parser.parse_args(argv)
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    run = Path(args.run_dir)
    forget = read_records(run / "benchmark" / f"{args.split}.jsonl")[: args.limit]
    print(f"{len(forget)} forget questions, {args.samples} draws each, α = 0.05")
    print("| model | noise | unperturbed emission | emission under noise | P(emit) ≤ (random question) "
          "| P(emit) ≤ (every question) | s |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for name, load in models(run, Path(args.bench) if args.bench else None, args.split):
        if args.only and name not in args.only:
            continue
        model, tokenizer = load()
        for noise in args.noise:
            start = time.perf_counter()
            s = smoothed_emission(model, tokenizer, forget, noise, args.samples)
            print(f"| {name} | {noise} | {s['unperturbed_emission_rate']:.3f} | {s['emission_rate']:.3f} | "
                  f"{s['set_upper_bound']:.3f} | {s['max_question_upper_bound']:.3f} | "
                  f"{time.perf_counter() - start:.0f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
