"""Issue 20's goals, checked cell by cell on a finished bench (``forgetkit bench --config calibrated``).

For each method variant and forget split: on how many seeds Forget Quality ≥ 0.05, Model Utility ≥ 0.95 × the
oracle's, the unlearning's wall time ≤ the split's share of retraining's (2 % for forget01, 5 % otherwise),
and the forget-vs-holdout MIA AUC in [0.4, 0.6]; and the criterion's stop reasons. It reads the bench's
``cells.json`` (numbers only) and prints a Markdown table.

    python benchmarks/criterion_goals.py runs/demo/bench/calibrated runs/demo/bench/calibrated-01-05
"""

from __future__ import annotations

import argparse
import json
from collections import Counter, defaultdict
from pathlib import Path

TIME_SHARE = {"forget01": 0.02}  # of retraining's wall time; 0.05 for the other splits


def goals(cells: list[dict]) -> list[dict]:
    oracle_mu = {c["cell"]["split"]: c["metrics"]["model_utility"] for c in cells
                 if c["cell"]["method"] == "oracle" and c["status"] == "done"}
    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for c in cells:
        if c["cell"]["kind"] == "method" and c["cell"]["method"] != "retrain":
            groups[(c["cell"]["split"], c["cell"]["variant"])].append(c)
    return [_row(split, variant, group, oracle_mu[split]) for (split, variant), group in sorted(groups.items())]


def _row(split: str, variant: str, group: list[dict], oracle_mu: float) -> dict:
    done = [c for c in group if c["status"] == "done"]
    share = TIME_SHARE.get(split, 0.05)

    def count(test) -> str:
        return f"{sum(bool(test(c)) for c in done)}/{len(group)}"

    def fq(c):
        return (c["metrics"]["forget_quality"] or 0) >= 0.05

    def mu(c):
        return (c["metrics"]["model_utility"] or 0) >= 0.95 * oracle_mu

    def time(c):
        return (c["cost"].get("time_vs_retrain") or float("inf")) <= share

    def mia(c):
        return 0.4 <= (c["metrics"]["mia_auc"] if c["metrics"]["mia_auc"] is not None else -1) <= 0.6

    stops = Counter((c.get("criterion") or {}).get("stopped", "fixed epochs") for c in done)
    return {"split": split, "variant": variant, "FQ ≥ 0.05": count(fq), "MU ≥ 0.95 × oracle": count(mu),
            "time ≤ 2 % (forget01) / 5 % of retrain": count(time),
            "all three": count(lambda c: fq(c) and mu(c) and time(c)), "MIA AUC in [0.4, 0.6]": count(mia),
            "stopped": ", ".join(f"{k} {v}" for k, v in sorted(stops.items()))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("benches", nargs="+", help="bench output directories (each with a cells.json)")
    args = parser.parse_args()
    cells = [c for d in args.benches for c in json.loads((Path(d) / "cells.json").read_text())]
    rows = goals(cells)
    header = list(rows[0])
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for r in rows:
        print("| " + " | ".join(str(r[h]) for h in header) + " |")


if __name__ == "__main__":
    main()
