"""Do counterfactual twins stand in for never-seen people? Scored on a prepared run's target and oracles.

For each forget split with an oracle, the criterion's check (``eval.calibration.CriterionSets``) runs on the
target and on the oracle (a model that never trained on the split): against the twins of the forget records
(``--calibration auto``; each donor pool, with and without the fictitious-name control) and against the run's
never-trained calibration people. A reference that stands in for unseen data puts the oracle inside the
tolerance (|AUC − 0.5| ≤ tol) and the target outside it.

    python benchmarks/twins_reference_check.py runs/demo --splits forget01 forget05 forget10
"""

from __future__ import annotations

import argparse
from pathlib import Path

from forgetkit.data.readers import read_records
from forgetkit.data.twins import POOLS, TwinSettings, counterfactual_twins
from forgetkit.eval.calibration import CriterionSets, CriterionSettings, compare
from forgetkit.models import load_model
from forgetkit.runs import PreparedRun


def _check(model, tokenizer, settings: CriterionSettings, forget, reference) -> tuple[float, float]:
    sets = CriterionSets(settings, tokenizer, forget, reference, None, 128)
    f, c, _ = sets._scores(model)
    return compare(f, c)[0], sets.criterion.tolerance


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--splits", nargs="+", default=["forget10"])
    parser.add_argument("--pools", nargs="+", default=list(POOLS), choices=POOLS)
    args = parser.parse_args()
    run = PreparedRun(args.run)
    people = read_records(run.calibration_file())
    print("| split | model | reference | AUC | tolerance | inside |")
    print("|---|---|---|---|---|---|")
    for split in args.splits:
        forget = read_records(args.run / "benchmark" / f"{split}.jsonl")
        retain = read_records(args.run / "benchmark" / f"retain{100 - int(split.removeprefix('forget'))}.jsonl")
        for stage in ("target", f"oracle_{split}"):
            directory = args.run / stage
            if (directory / "adapter_config.json").is_file():
                model, tokenizer = load_model(args.run / "base", directory)
            else:
                model, tokenizer = load_model(directory)
            model.eval()
            rows = [("people", CriterionSettings(), people)]
            for pool in args.pools:
                for control in (True, False):
                    twins = TwinSettings(pool=pool, control=control)
                    rows.append((f"twins, pool={pool}, control={'on' if control else 'off'}",
                                 CriterionSettings(reference="twins", twins=twins),
                                 counterfactual_twins(forget, retain, twins)))
            for name, settings, reference in rows:
                auc, tol = _check(model, tokenizer, settings, forget, reference)
                inside = "yes" if abs(auc - 0.5) <= tol else "no"
                print(f"| {split} | {stage} | {name} | {auc:.3f} | ±{tol:.3f} | {inside} |")


if __name__ == "__main__":
    main()
