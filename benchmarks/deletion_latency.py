"""One person's deletion with ``forgetkit forget``, end to end, on a prepared run's target (issue 36's latency goal).

For each person asked for (a group of the run's ``full`` split: ids ``g<group>-…``) it writes that person's
records and the rest of ``full`` as the retain file, runs ``forgetkit forget`` on the run's target as a subprocess
(command start to written audit, timed from outside), and reads the verdict, the time split the command
records (training, checks, loading and writing) and the retain sample's probability kept. Then, with what only
the benchmark has, it scores the result against the run's never-trained calibration people (forget vs people
AUC and the tolerance their sizes give): the check that the twins' stop is a stop the real reference agrees
with. Outputs are cached under ``--out`` (a finished person is read back).

    python benchmarks/deletion_latency.py runs/tofu-layout/run --groups 13 3 7 --out runs/deletion
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from forgetkit.data.readers import read_records
from forgetkit.data.records import QARecord
from forgetkit.eval.calibration import forget_vs_calibration
from forgetkit.io import write_jsonl


def _files(run: Path, group: int, out: Path) -> tuple[Path, Path]:
    full = read_records(run / "benchmark" / "full.jsonl")
    prefix = f"g{group:04d}-"
    person = [r for r in full if r.id.startswith(prefix)]
    if not person:
        raise SystemExit(f"{run}: no record of group {group} in full.jsonl")
    out.mkdir(parents=True, exist_ok=True)
    write_jsonl(out / "records.jsonl", [r.to_dict() for r in person])
    write_jsonl(out / "retain.jsonl", [r.to_dict() for r in full if not r.id.startswith(prefix)])
    return out / "records.jsonl", out / "retain.jsonl"


def delete_one(run: Path, group: int, seed: int, out: Path, extra: list[str]) -> dict:
    done = out / "deletion.json"
    if done.is_file():
        return json.loads(done.read_text())
    records, retain = _files(run, group, out / "data")
    target = run / "target"
    model = ["--model", str(run / "base"), "--adapter", str(target)] if (target / "adapter_config.json").is_file() \
        else ["--model", str(target)]
    argv = [sys.executable, "-m", "forgetkit.cli", "--quiet", "forget", *model, "--records", str(records),
            "--retain", str(retain), "--out", str(out / "result"), f"train.seed={seed}", *extra]
    t0 = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode not in (0, 5):
        raise SystemExit(f"forget failed ({proc.returncode}): {proc.stderr.strip()[-500:]}")
    summary = json.loads((out / "result" / "summary.json").read_text())
    crit = summary["criterion"]
    row = {"group": group, "seed": seed, "exit": proc.returncode, "wall_s": wall, "printed": proc.stdout,
           "reached": crit["reached"], "step": crit["chosen"]["step"], "auc_twins": crit["chosen"]["auc"],
           "tolerance_twins": crit["tolerance"], "checks": crit["checks"], "checks_s": crit["checks_s"],
           "train_s": summary["wall_time_s"] - crit["checks_s"],
           "retain_kept": crit["chosen"]["retain_probability"] / crit["start"]["retain_probability"],
           **_against_people(run, out)}
    row["other_s"] = wall - row["train_s"] - row["checks_s"]
    done.write_text(json.dumps(row, indent=1))
    return row


def _against_people(run: Path, out: Path) -> dict:
    """The result scored forget vs the run's never-trained calibration people (only a benchmark has them)."""
    from forgetkit.unlearn import load_unlearned

    model, tokenizer = load_unlearned(out / "result")
    model.eval()
    forget: list[QARecord] = read_records(out / "data" / "records.jsonl")
    people = read_records(run / "benchmark" / "calibration.jsonl")
    r = forget_vs_calibration(model, tokenizer, forget, people)
    return {"auc_people": r["auc"], "tolerance_people": r["tolerance"],
            "inside_people": abs(r["auc"] - 0.5) <= r["tolerance"]}


def _ms(values: list[float]) -> str:
    return f"{statistics.mean(values):.3g} ± {statistics.stdev(values):.2g}" if len(values) > 1 else f"{values[0]:.3g}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="a prepared run (its target, full split and calibration people)")
    parser.add_argument("--groups", type=int, nargs="+", required=True, help="the people to delete, one at a time")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("overrides", nargs="*", help="recipe overrides passed to forgetkit forget")
    args = parser.parse_args()
    rows = [delete_one(args.run, g, s, args.out / f"g{g}-s{s}", args.overrides) for g in args.groups
            for s in args.seeds]
    print("| person | seed | exit | stop step | AUC vs twins (tol.) | AUC vs people (tol.) | retain prob. kept | "
          "total s | training s | checks s | other s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| g{r['group']} | {r['seed']} | {r['exit']} | {r['step']} | {r['auc_twins']:.3f} "
              f"(±{r['tolerance_twins']:.3f}) | {r['auc_people']:.3f} (±{r['tolerance_people']:.3f}) | "
              f"{r['retain_kept']:.3f} | {r['wall_s']:.0f} | {r['train_s']:.0f} | {r['checks_s']:.0f} | "
              f"{r['other_s']:.0f} |")
    print(f"\ntotal {_ms([r['wall_s'] for r in rows])} s; checks {_ms([r['checks_s'] / r['wall_s'] for r in rows])} "
          f"of it; retain kept {_ms([r['retain_kept'] for r in rows])}; reached {sum(r['reached'] for r in rows)}/"
          f"{len(rows)}; inside the people's tolerance {sum(r['inside_people'] for r in rows)}/{len(rows)}")


if __name__ == "__main__":
    main()
