"""Does unlearning move bias? WEAT 6-8 effect sizes of a prepared run's base, target and oracle and of every
unlearned model of one of its bench grids.

Each model is rebuilt from its files (the base; the target and oracle adapters on it; each bench cell's unlearned
model from its audit record) and scored with ``forgetkit.eval.bias.weat_scores``: the effect size d of each shipped
test and its exact permutation p-value. Prints a Markdown table.

Usage::

    python benchmarks/weat_models.py --run-dir runs/smollm2 --bench runs/smollm2/bench/smollm2 [--split forget10]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from transformers.utils import logging as hf_logging

from forgetkit.eval.bias import read_weat_tests, weat_scores
from forgetkit.models import load_model
from forgetkit.request import UnlearnResult


def models(run: Path, bench: Path | None, split: str):
    """``(name, loader)`` of each model to score."""
    yield "base", lambda: load_model(run / "base")
    yield "target", lambda: load_model(run / "base", adapter=run / "target")
    if (run / f"oracle_{split}").is_dir():
        yield "oracle", lambda: load_model(run / "base", adapter=run / f"oracle_{split}")
    for cell in sorted(bench.glob("cells/*/unlearn")) if bench else []:
        if (cell / "audit.json").is_file() and (cell / "adapter").is_dir():
            yield cell.parent.name.rsplit("-", 3)[0], lambda cell=cell: UnlearnResult.read(cell).load_model()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run-dir", required=True)
    parser.add_argument("--bench", help="a bench output directory on this run")
    parser.add_argument("--split", default="forget10")
    args = parser.parse_args(argv)
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    tests = read_weat_tests()
    print("| model | " + " | ".join(f"{name}: d (p)" for name in tests) + " |")
    print("|---|" + "---:|" * len(tests))
    for name, load in models(Path(args.run_dir), Path(args.bench) if args.bench else None, args.split):
        model, tokenizer = load()
        scores = weat_scores(model, tokenizer, tests)
        print(f"| {name} | " + " | ".join(f"{scores[t]['effect_size']:+.3f} ({scores[t]['p_value']:.3f})"
                                        for t in tests) + " |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
