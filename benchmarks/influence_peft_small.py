"""Influence-guided PEFT unlearning against the baselines, and its ablation, on prepared runs.

For each run (a fully fine-tuned target, e.g. ``runs/small``, and a LoRA target, e.g.
``runs/small_lora``) and forget split with an oracle log, it runs ``forgetkit unlearn --eval``
for ``influence_peft`` and the compared methods (``npo``, ``graddiff``, ``bounded_graddiff``,
``llmeraser`` where the target is an adapter, and ``retrain``, the gold standard measured in the
same command), then prints Forget Quality, Model Utility (and its ratio to the oracle's), the
LOSS attack's AUC, PrivLeak, wall time and wall time / retrain's. ``--ablation`` adds
influence_peft variants on the first run's first split: each phase off, the mask fraction swept,
and the synthetic data as gradient-matched / random retain / none.

Usage::

    python benchmarks/influence_peft_small.py --runs runs/small runs/small_lora [--splits forget10 forget01]
        [--ablation] [--reuse] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

from forgetkit.io import write_json

COMPARED = ("influence_peft", "npo", "graddiff", "bounded_graddiff", "llmeraser", "retrain")
ABLATION = {
    "no phase 1 (adapters on every module)": ["params.phase1=false"],
    "no phase 2 training": ["params.phase2=false"],
    "no phase 3 (no mask, no refinement)": ["params.phase3=false"],
    "phase 2: regulariser only (no NPO)": ["params.objective=none"],
    "phase 2: no regulariser": ["params.reg_lambda=0"],
    "mask 0.5": ["params.mask_fraction=0.5"],
    "mask 0.95 (the proposal's)": ["params.mask_fraction=0.95"],
    "refine at the training lr (1e-2)": ["params.refine_lr=1e-2"],
    "synthetic: random retain": ["params.synth=random"],
    "synthetic: none": ["params.synth=none"],
}


def _unlearn(run: Path, split: str, method: str, out: Path, overrides: list[str], reuse: bool) -> dict | None:
    """Run (or reuse) one method; None when the method refuses this run (one-line error)."""
    if not (reuse and (out / "summary.json").is_file()):
        shutil.rmtree(out, ignore_errors=True)
        done = subprocess.run([str(Path(sys.executable).parent / "forgetkit"), "--quiet", "unlearn", "--run", str(run),
                               "--split", split, "--method", method, "--eval", "--out", str(out), *overrides],
                              stderr=subprocess.PIPE, text=True)
        if done.returncode == 2:
            return {"refused": done.stderr.strip().splitlines()[-1]}
        done.check_returncode()
    return json.loads((out / "summary.json").read_text())


def _row(run: Path, split: str, label: str, summary: dict, oracle: dict, out: Path) -> dict:
    if "refused" in summary:
        return {"run": run.name, "split": split, "method": label, "refused": summary["refused"]}
    ev = json.loads((out / "eval" / "summary.json").read_text())
    return {"run": run.name, "split": split, "method": label, "forget_quality": summary["eval"]["forget_quality"],
            "model_utility": summary["eval"]["model_utility"], "mu_vs_oracle": summary["eval"]["model_utility"]
            / oracle["model_utility"], "mia_loss_auc": (summary["eval"]["mia_auc"] or {}).get("loss"),
            "privleak": ev.get("mia", {}).get("privleak"), "wall_time_s": summary["wall_time_s"],
            "critical_modules": summary.get("phases", {}).get("critical_modules")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", nargs="+", default=["runs/small", "runs/small_lora"])
    parser.add_argument("--splits", nargs="+", default=["forget10"])
    parser.add_argument("--methods", nargs="+", default=list(COMPARED))
    parser.add_argument("--ablation", action="store_true")
    parser.add_argument("--reuse", action="store_true", help="tabulate finished runs instead of rerunning them")
    parser.add_argument("--json", help="also write the rows here")
    args = parser.parse_args(argv)
    rows = []
    for run_name in args.runs:
        run = Path(run_name)
        for split in args.splits:
            oracle_eval = run / "eval" / f"oracle_{split}" / "summary.json"
            if not oracle_eval.is_file():
                print(f"skip {run} {split}: no oracle evaluation ({oracle_eval})")
                continue
            oracle = json.loads(oracle_eval.read_text())
            jobs = [(m, m, []) for m in args.methods]
            if args.ablation and run_name == args.runs[0] and split == args.splits[0]:
                jobs += [("influence_peft", f"influence_peft: {label}", overrides)
                         for label, overrides in ABLATION.items()]
            run_rows = []
            for method, label, overrides in jobs:
                slug = label.replace(" ", "_").replace(":", "").replace("(", "").replace(")", "").replace(",", "")
                out = run / "unlearn" / "influence_peft_bench" / f"{slug}-{split}"
                summary = _unlearn(run, split, method, out, overrides, args.reuse)
                run_rows.append(_row(run, split, label, summary, oracle, out))
            retrain = next((r for r in run_rows if r["method"] == "retrain" and "refused" not in r), None)
            for r in run_rows:
                r["time_vs_retrain"] = r["wall_time_s"] / retrain["wall_time_s"] if retrain and "wall_time_s" in r \
                    else None
            rows += run_rows
            print(f"\n{run} {split}: oracle MU {oracle['model_utility']:.3f}"
                  + (f"; retrain {retrain['wall_time_s']:.1f} s" if retrain else ""))
            print("| method | FQ | MU | MU / oracle MU | MIA AUC (LOSS) | PrivLeak | wall s | × retrain | "
                  "critical modules |")
            print("|---|---|---|---|---|---|---|---|---|")
            for r in run_rows:
                if "refused" in r:
                    print(f"| {r['method']} | refused: {r['refused'].removeprefix('error: ')} |||||||| ")
                    continue
                fq = f"{r['forget_quality']:.3g}" if r["forget_quality"] is not None else "missing"
                leak = f"{r['privleak']:.1f}" if isinstance(r["privleak"], int | float) else "–"
                ratio = f"{r['time_vs_retrain']:.3f}" if r["time_vs_retrain"] is not None else "–"
                modules = ", ".join(m.split("model.")[-1] for m in r["critical_modules"] or []) or "–"
                print(f"| {r['method']} | {fq} | {r['model_utility']:.3f} | {r['mu_vs_oracle']:.3f} | "
                      f"{r['mia_loss_auc']:.3f} | {leak} | {r['wall_time_s']:.1f} | {ratio} | {modules} |")
    if args.json:
        write_json(args.json, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
