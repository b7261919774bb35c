"""Issue 36's goals for ``--calibration auto``, pair by pair on a finished bench (``--config calibrated_auto``).

Each ``X+auto`` cell (stopped against counterfactual twins of its forget set) is paired with the ``X+until`` cell
of the same split and seed (stopped against the run's never-trained calibration people). Both final models are
judged by what only the benchmark has: the true calibration people (the bench's ``calibration AUC``, every cell's
model scored forget vs calibration people) and the oracle (Forget Quality). A pair agrees when

- the same decision: both final models lie inside the true calibration set's tolerance, or both above it
  (still recognised), or both below it (over-forgotten); or
- a stop whose Forget Quality is within one KS step: the KS statistics behind the two FQs (equal samples of n
  forget examples, so D moves in steps of 1/n) differ by at most one step (when the data have no perturbed answers,
  FQ is missing and only the decision counts).

Each pair also shows what the stop itself recorded (``cells/<id>/unlearn/summary.json``): whether it reached the
tolerance of its own reference, and the retain probability it kept against the target's (its first check's).

It prints the pairs, then per variant: agreement, MIA AUC (forget vs holdout) in [0.4, 0.6], FQ, MU and stop
steps as mean ± std, and Spearman's ρ between |the criterion's own AUC − 0.5| (twins or people) and FQ over the
cells of each reference. It reads ``cells.json`` (numbers only).

    python benchmarks/auto_calibration_goals.py runs/demo/bench/calibrated_auto
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections import defaultdict
from pathlib import Path

from scipy.stats import ks_2samp, spearmanr

from forgetkit.eval.calibration import auc_tolerance

AUTO, TRUE = "+auto", "+until"


def ks_step(fq: float, n: int) -> int:
    """The KS statistic's step k (D = k/n) of a two-sample test of n against n whose p-value is ``fq``."""
    pvalues = [ks_2samp(list(range(n)), [x + k for x in range(n)]).pvalue for k in range(n + 1)]
    return min(range(n + 1), key=lambda k: abs(pvalues[k] - fq))


def _mean_std(values: list[float]) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.3g}"
    return f"{statistics.mean(values):.3g} ± {statistics.stdev(values):.2g}"


def _fmt(value: float | None) -> str:
    return "–" if value is None else f"{value:.3g}"


def _side(auc: float, tolerance: float) -> str:
    """Where a final model's forget-vs-people AUC lies: inside the tolerance, above it (still recognised) or
    below it (over-forgotten)."""
    return "inside" if abs(auc - 0.5) <= tolerance else "above" if auc > 0.5 else "below"


def stop_record(bench: Path, cell: dict) -> dict:
    """What the cell's stop recorded: reached, and the retain probability kept (chosen check / first check)."""
    criterion = json.loads((bench / "cells" / cell["cell"]["id"] / "unlearn" / "summary.json").read_text())["criterion"]
    start, chosen = criterion.get("start") or {}, criterion.get("chosen") or {}
    kept = (chosen["retain_probability"] / start["retain_probability"]
            if start.get("retain_probability") and chosen.get("retain_probability") is not None else None)
    return {"reached": criterion.get("reached"), "retain kept": kept}


def pairs(cells: list[dict], n_calibration: int, forget_sizes: dict[str, int], z: float = 1.96,
          bench: Path | None = None) -> list[dict]:
    done = {(c["cell"]["split"], c["cell"]["variant"], c["cell"]["seed"]): c for c in cells
            if c["status"] == "done" and c["cell"]["kind"] == "method"}
    out = []
    for (split, variant, seed), auto in sorted(done.items()):
        if AUTO not in variant:
            continue
        true = done.get((split, variant.split(AUTO)[0] + TRUE, seed))
        if true is None:
            continue
        n = forget_sizes[split]
        tol = auc_tolerance(n, n_calibration, z)
        sides = [_side(c["metrics"]["calibration_auc"], tol) for c in (true, auto)]
        fq = [c["metrics"]["forget_quality"] for c in (true, auto)]
        steps = [ks_step(f, n) for f in fq] if None not in fq else None
        stops = [stop_record(bench, c) if bench is not None else {} for c in (true, auto)]
        out.append({"split": split, "variant": variant, "seed": seed, "n": n,
                    "reached (people/auto)": [s.get("reached") for s in stops],
                    "retain kept (people/auto)": [s.get("retain kept") for s in stops],
                    "stop (people)": true["criterion"]["chosen"]["step"],
                    "stop (auto)": auto["criterion"]["chosen"]["step"],
                    "FQ (people)": fq[0], "FQ (auto)": fq[1], "KS steps": steps,
                    "side (people)": sides[0], "side (auto)": sides[1],
                    "agree": sides[0] == sides[1] or (steps is not None and abs(steps[0] - steps[1]) <= 1),
                    "MIA (auto)": auto["metrics"]["mia_auc"], "MU (auto)": auto["metrics"]["model_utility"],
                    "MU (people)": true["metrics"]["model_utility"], "MIA (people)": true["metrics"]["mia_auc"]})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bench", help="the bench output directory (with cells.json)")
    parser.add_argument("--calibration-examples", type=int, default=200, help="the run's calibration QA pairs")
    parser.add_argument("--forget-examples", type=json.loads, default={"forget01": 20, "forget05": 100,
                                                                        "forget10": 200},
                        help='JSON: forget QA pairs per split (default: the small benchmark\'s)')
    args = parser.parse_args()
    cells = json.loads((Path(args.bench) / "cells.json").read_text())
    rows = pairs(cells, args.calibration_examples, args.forget_examples, bench=Path(args.bench))
    print("| split | variant | seed | stop (people) | stop (auto) | FQ (people) | FQ (auto) | vs the people's "
          "tolerance (people/auto) | agree | MIA AUC (auto) | reached (people/auto) | retain kept (people/auto) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        reached = "/".join({True: "yes", False: "no"}.get(x, "–") for x in r["reached (people/auto)"])
        kept = "/".join(_fmt(x) for x in r["retain kept (people/auto)"])
        print(f"| {r['split']} | {r['variant']} | {r['seed']} | {r['stop (people)']} | {r['stop (auto)']} | "
              f"{_fmt(r['FQ (people)'])} | {_fmt(r['FQ (auto)'])} | {r['side (people)']}/{r['side (auto)']} | "
              f"{'yes' if r['agree'] else 'no'} | {r['MIA (auto)']:.3f} | {reached} | {kept} |")
    print()
    by_variant: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        by_variant[r["variant"]].append(r)
    print("| variant | pairs agreeing | MIA AUC in [0.4, 0.6] (auto) | (people) | FQ people | FQ auto | MU people | "
          "MU auto |")
    print("|---|---|---|---|---|---|---|---|")
    for variant, group in sorted(by_variant.items()):
        agree = sum(r["agree"] for r in group)
        mia = sum(0.4 <= r["MIA (auto)"] <= 0.6 for r in group)
        mia_people = sum(0.4 <= r["MIA (people)"] <= 0.6 for r in group)
        print(f"| {variant} | {agree}/{len(group)} | {mia}/{len(group)} | {mia_people}/{len(group)} | "
              f"{_mean_std([r['FQ (people)'] for r in group])} | {_mean_std([r['FQ (auto)'] for r in group])} | "
              f"{_mean_std([r['MU (people)'] for r in group])} | {_mean_std([r['MU (auto)'] for r in group])} |")
    shipped = [r for r in rows if r["variant"].endswith(AUTO)]
    if shipped:
        agree, mia = sum(r["agree"] for r in shipped), sum(0.4 <= r["MIA (auto)"] <= 0.6 for r in shipped)
        mia_people = sum(0.4 <= r["MIA (people)"] <= 0.6 for r in shipped)
        print(f"\nall twin-stopped cells: {agree}/{len(shipped)} pairs agree; MIA AUC in [0.4, 0.6] "
              f"for {mia}/{len(shipped)} (their people-stopped pairs: {mia_people}/{len(shipped)})")
    for reference, suffix in (("twins", AUTO), ("people", TRUE)):
        mine = [c for c in cells if c["status"] == "done" and c["cell"]["variant"].endswith(suffix)
                and c.get("criterion") and c["metrics"]["forget_quality"] is not None]
        if len(mine) > 2:
            rho, p = spearmanr([abs(c["criterion"]["chosen"]["auc"] - 0.5) for c in mine],
                               [c["metrics"]["forget_quality"] for c in mine])
            print(f"Spearman ρ, |criterion AUC ({reference}) − 0.5| vs FQ over {len(mine)} cells: {rho:.3f} "
                  f"(p = {p:.2g})")


if __name__ == "__main__":
    main()
