"""Every registered method on a prepared run's forget split, with its shipped recipe: quality and cost.

Runs ``forgetkit unlearn --run RUN --split SPLIT --method M --eval`` for each method (one seed),
then prints a table of Forget Quality (against the oracle's log that ``make demo`` writes into
``RUN/eval/oracle_<split>``), Model Utility, forget probability and ROUGE-L, the LOSS attack's
AUC, wall time, peak memory, and the time as a fraction of the ``retrain`` method's.

Usage::

    python benchmarks/methods_small.py --run-dir runs/small [--methods ga npo ...] [--json FILE] [--reuse]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

from forgetkit.io import write_json


def main(argv: list[str] | None = None) -> int:
    from forgetkit.methods import METHODS

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run-dir", default="runs/small")
    parser.add_argument("--split", default="forget10")
    parser.add_argument("--methods", nargs="*", default=sorted(METHODS))
    parser.add_argument("--out", help="where the runs go (default RUN/unlearn)")
    parser.add_argument("--json", help="also write the table here")
    parser.add_argument("--reuse", action="store_true", help="tabulate finished runs instead of rerunning them")
    args = parser.parse_args(argv)
    run_dir = Path(args.run_dir)
    out_root = Path(args.out) if args.out else run_dir / "unlearn"
    forgetkit = str(Path(sys.executable).parent / "forgetkit")

    rows = []
    for name in args.methods:
        out = out_root / f"{name}-{args.split}"
        if not (args.reuse and (out / "eval" / "summary.json").is_file() and (out / "audit.json").is_file()):
            shutil.rmtree(out, ignore_errors=True)  # a fresh run: a resumed one would time only its remainder
            subprocess.run([forgetkit, "--quiet", "unlearn", "--run", str(run_dir), "--split", args.split,
                            "--method", name, "--eval", "--out", str(out)], check=True)
        summary = json.loads((out / "summary.json").read_text())
        ev = json.loads((out / "eval" / "summary.json").read_text())
        rows.append({"method": name, "mode": summary["mode"], "forget_quality": ev["forget_quality"],
                     "model_utility": ev["model_utility"], "forget_probability": ev["sets"]["forget"]["probability"],
                     "forget_rougeL": ev["sets"]["forget"]["rougeL_recall"],
                     "mia_loss_auc": ev["mia"]["auc"].get("loss"), "wall_time_s": summary["wall_time_s"],
                     "peak_memory_mb": summary["peak_memory_mb"], "steps": summary["steps"],
                     "trainable_parameters": summary["trainable_parameters"]})
    retrain = next((r for r in rows if r["method"] == "retrain"), None)
    print(f"| method | mode | FQ | MU | forget prob | forget ROUGE-L | MIA AUC (LOSS) | steps | wall s | "
          f"{'× retrain time | ' if retrain else ''}peak MB |")
    print("|---|---|---|---|---|---|---|---|---|" + ("---|" if retrain else "") + "---|")
    for r in rows:
        fq = f"{r['forget_quality']:.3g}" if r["forget_quality"] is not None else "missing"
        ratio = f"{r['wall_time_s'] / retrain['wall_time_s']:.3f} | " if retrain else ""
        print(f"| {r['method']} | {r['mode']} | {fq} | {r['model_utility']:.3f} | {r['forget_probability']:.3f} | "
              f"{r['forget_rougeL']:.3f} | {r['mia_loss_auc']:.3f} | {r['steps']} | {r['wall_time_s']:.1f} | "
              f"{ratio}{r['peak_memory_mb']:.0f} |")
    if args.json:
        write_json(args.json, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
