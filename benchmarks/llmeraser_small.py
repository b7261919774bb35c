"""LLMEraser on a run whose target is a LoRA adapter: removal, query modification, response correction.

For each request on the split (``forget10`` by default) it runs ``forgetkit unlearn --method
llmeraser --eval`` and reports the request's success (greedy exact match, see
``forgetkit.eval.edit_success``) before and after, Model Utility before and after, Forget Quality
for the removal, the wall time and its ratio to retraining (the run's oracle stage: the same
recipe on the retain split). The target's own evaluation gives the "before" numbers.

Usage (the run prepared with ``forgetkit prepare --config small target_mode=lora run_dir=runs/small_lora``)::

    python benchmarks/llmeraser_small.py --run-dir runs/small_lora [--split forget10] [key=value ...] [--reuse]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

from forgetkit.io import write_json

REQUESTS = ("removal", "response", "query")


def _forgetkit(*args: str) -> None:
    subprocess.run([str(Path(sys.executable).parent / "forgetkit"), "--quiet", *args], check=True)


def baseline(run: Path, split: str) -> dict:
    """The target's success rates (as if it were the edited model) and its Model Utility."""
    from forgetkit.data.edits import read_edits
    from forgetkit.data.readers import read_records
    from forgetkit.eval.edit_success import edit_success, removal_success
    from forgetkit.models import load_model

    oracle_eval, target_eval = run / "eval" / f"oracle_{split}", run / "eval" / f"target_{split}"
    if not (oracle_eval / "summary.json").is_file():
        _forgetkit("eval", "--model", str(run / "base"), "--adapter", str(run / f"oracle_{split}"), "--data",
                   str(run / "benchmark"), "--split", split, "--out", str(oracle_eval))
    if not (target_eval / "summary.json").is_file():
        _forgetkit("eval", "--model", str(run / "base"), "--adapter", str(run / "target"), "--data",
                   str(run / "benchmark"), "--split", split, "--oracle-log", str(oracle_eval), "--out",
                   str(target_eval))
    model, tokenizer = load_model(run / "base", run / "target")
    success = {"removal": removal_success(model, tokenizer, read_records(run / "benchmark" / f"{split}.jsonl"))}
    for kind in ("response", "query"):
        success[kind] = edit_success(model, tokenizer, read_edits(run / "edits" / f"{kind}_{split}.jsonl"))
    ev = json.loads((target_eval / "summary.json").read_text())
    return {"success": success, "model_utility": ev["model_utility"], "forget_quality": ev["forget_quality"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run-dir", default="runs/small_lora")
    parser.add_argument("--split", default="forget10")
    parser.add_argument("--out", help="where the runs go (default RUN/unlearn)")
    parser.add_argument("--json", help="also write the table here")
    parser.add_argument("--reuse", action="store_true", help="tabulate finished runs instead of rerunning them")
    parser.add_argument("--removal-ratios", nargs="*", type=float, default=[3.0, 10.0, 30.0],
                        help="damping ratios to sweep for the removal")
    parser.add_argument("--edit-ratios", nargs="*", type=float, default=[1.0, 3.0],
                        help="damping ratios to sweep for the query and response edits")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="llmeraser config overrides")
    args = parser.parse_args(argv)
    run = Path(args.run_dir)
    out_root = Path(args.out) if args.out else run / "unlearn"
    before = baseline(run, args.split)
    retrain_s = json.loads((run / f"oracle_{args.split}" / "stage.json").read_text())["train"]["wall_time_s"]
    rows = []
    jobs = [("removal", [f"params.damping_ratio={r:g}"]) for r in args.removal_ratios]
    jobs += [(kind, [f"params.damping_ratio={r:g}"]) for kind in REQUESTS if kind != "removal"
             for r in args.edit_ratios]
    for kind, settings in jobs:
        out = out_root / "-".join(["llmeraser", kind, args.split, *[x.split("=")[1] for x in settings]])
        if not (args.reuse and (out / "summary.json").is_file()):
            shutil.rmtree(out, ignore_errors=True)
            extra = [] if kind == "removal" else ["--edits", kind]
            _forgetkit("unlearn", "--run", str(run), "--split", args.split, "--method", "llmeraser", "--eval",
                       "--out", str(out), *extra, *args.overrides, *settings)
        summary = json.loads((out / "summary.json").read_text())
        ev = summary["eval"]
        rows.append({"request": kind, "setting": " ".join(settings) or "recipe",
                     "examples": summary["request_examples"],
                     "success_before": before["success"][kind]["success"], "success_after": ev["success"]["success"],
                     "success_among_known": ev["success"].get("success_among_known"),
                     "new_pair_probability": ev["success"].get("new_pair_probability"),
                     "new_pair_probability_before": before["success"][kind].get("new_pair_probability"),
                     "old_answer_rate_after": ev["success"]["old_answer_rate"],
                     "mu_before": before["model_utility"], "mu_after": ev["model_utility"],
                     "forget_quality": ev["forget_quality"] if kind == "removal" else None,
                     "wall_time_s": summary["wall_time_s"], "retrain_s": retrain_s, "products": summary["products"],
                     "damping": summary["damping"]})
    print(f"target FQ {before['forget_quality']:.3g}, MU {before['model_utility']:.3f}; retrain (oracle stage) "
          f"{retrain_s:.1f} s")
    print("| request | setting | examples | success target → edited | among answers the target gave | "
          "old answer still given | edited pair probability | MU target → edited (change) | FQ | products | wall s | "
          "× retrain |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        fq = f"{r['forget_quality']:.3g}" if r["forget_quality"] is not None else "–"
        known = f"{r['success_among_known']:.3f}" if r["success_among_known"] is not None else "–"
        change = r["mu_after"] / r["mu_before"] - 1
        pair = (f"{r['new_pair_probability_before']:.3f} → {r['new_pair_probability']:.3f}"
                if r["new_pair_probability"] is not None else "–")
        print(f"| {r['request']} | {r['setting']} | {r['examples']} | {r['success_before']:.3f} → "
              f"{r['success_after']:.3f} | {known} | {r['old_answer_rate_after']:.3f} | {pair} | "
              f"{r['mu_before']:.3f} → {r['mu_after']:.3f} ({change:+.1%}) | {fq} | {r['products']} | "
              f"{r['wall_time_s']:.1f} | {r['wall_time_s'] / r['retrain_s']:.3f} |")
    if args.json:
        write_json(args.json, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
