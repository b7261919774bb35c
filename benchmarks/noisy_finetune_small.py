"""What certified noisy fine-tuning costs: Forget Quality, Model Utility and time at a few ε.

For each ε it runs ``forgetkit unlearn --method noisy_finetune params.epsilon=ε --eval`` on a run whose
target is a LoRA adapter (and once with ``params.sigma=0``: the same clipping, decay and recovery steps
without noise, hence without a guarantee), and prints one row each, with the wall time's ratio to the
run's oracle fine-tune (retraining). The run's oracle evaluation log must exist for Forget Quality
(``forgetkit eval --model RUN/oracle_SPLIT ... --out RUN/eval/oracle_SPLIT``).

Usage::

    python benchmarks/noisy_finetune_small.py --run-dir runs/demo [--split forget10] [--epsilons 1,10,100]
        [key=value ...]   # any recipe override, e.g. params.recover_epochs=1
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run-dir", required=True)
    parser.add_argument("--split", default="forget10")
    parser.add_argument("--epsilons", default="1,10,100")
    parser.add_argument("--out-dir", default=None, help="default: RUN/noisy_finetune")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    run = Path(args.run_dir)
    out_dir = Path(args.out_dir or run / "noisy_finetune")
    retrain_s = json.loads((run / f"oracle_{args.split}" / "stage.json").read_text())["train"]["wall_time_s"]
    settings = [(f"epsilon={e}", [f"params.epsilon={e}"]) for e in args.epsilons.split(",")]
    settings.append(("no noise", ["params.sigma=0"]))
    rows = []
    for label, params in settings:
        out = out_dir / label.replace(" ", "_").replace("=", "")
        subprocess.run([str(Path(sys.executable).parent / "forgetkit"), "unlearn", "--quiet", "--method",
                        "noisy_finetune", "--run", str(run), "--split", args.split, "--out", str(out), "--eval",
                        *params, *args.overrides], check=True)
        summary = json.loads((out / "summary.json").read_text())
        cert = summary.get("phases", {}).get("certificate")
        rows.append({"setting": label, "sigma": cert["sigma"] if cert else 0.0,
                     "epsilon": cert["epsilon"] if cert else None, "delta": cert["delta"] if cert else None,
                     "forget_quality": summary["eval"]["forget_quality"],
                     "model_utility": summary["eval"]["model_utility"],
                     "forget_probability": summary["eval"]["forget"]["probability"],
                     "wall_time_s": summary["wall_time_s"],
                     "time_vs_retrain": summary["wall_time_s"] / retrain_s if retrain_s else None})
    print(f"{'setting':<14} {'sigma':>8} {'FQ':>10} {'MU':>7} {'P(forget)':>9} {'time s':>7} {'x retrain':>9}")
    for r in rows:
        ratio = f"{r['time_vs_retrain']:.2f}" if r["time_vs_retrain"] else "-"
        print(f"{r['setting']:<14} {r['sigma']:>8.4g} {r['forget_quality']:>10.3g} {r['model_utility']:>7.3f} "
              f"{r['forget_probability']:>9.3f} {r['wall_time_s']:>7.1f} {ratio:>9}")
    (out_dir / "results.json").write_text(json.dumps(rows, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
