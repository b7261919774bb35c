"""Issue 36's last goal: the oracle-free stop on real QA data that forgetkit's generator did not write.

The data are TOFU's own questions and answers (fictitious authors written by TOFU's authors, MIT), as its released
evaluation logs carry them (``../shared/fixtures/tofu``: each log's ``generated_text`` holds [prompt, generation,
ground truth]; the forget log and the retain log each hold 15 authors of 20 consecutive questions). This script
deals them out by author, in TOFU's layout:

- ``forget10``: the forget log's first ``--forget-authors`` authors (60 QA by default);
- ``retain90``: the retain log's first ``--retain-authors`` authors (120 QA); ``full`` is the two together;
- ``holdout10``: the next forget-log authors, never trained (the evaluation's MIA reference);
- ``calibration``: the next ones after those, never trained (the true never-seen reference of ``+until``);
- ``world_facts_perturbed``, ``real_authors_perturbed``: TOFU's utility sets as released.

Then ``forgetkit bench`` prepares SmolLM2-135M-Instruct on ``full`` (a LoRA target, and the oracle on
``retain90``) and runs ``forgetkit forget``'s own recipe (``configs/unlearn/deletion.yaml``) twice per seed: stopped
against counterfactual twins of the forget records (``deletion+auto``: what ``forget`` does) and against the true
never-trained calibration authors (``deletion+until``), plus retraining (the oracle). TOFU's perturbed answers are
not in the logs, so Forget Quality is missing: the verdict is the true calibration set's tolerance, MIA AUC against
the holdout authors, and the retain probability kept against the target's. Every stage and cell is cached.

    python benchmarks/tofu_real_qa.py [--fixtures ../shared/fixtures/tofu] [--work runs/tofu-real] [--seeds 0 1 2]
        [--utility-tolerance 1.0]
    python benchmarks/auto_calibration_goals.py runs/tofu-real/run/bench/tofu_real_qa
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import yaml

from forgetkit.config import config_path

LOG = "llama2-7b_retain90_eval_log_aggregated.json"
PER_AUTHOR = 20
PROMPT = re.compile(r"^\[INST\]\s*(.*?)\s*\[/INST\]$", re.S)


def authors(log: dict) -> list[list[dict]]:
    """A log's ground-truth QA pairs, 20 consecutive per author."""
    pairs = []
    for key in sorted(log["generated_text"], key=int):
        prompt, _, truth = log["generated_text"][key]
        match = PROMPT.match(prompt.strip())
        if match is None:
            raise SystemExit(f"{LOG}: generated_text[{key}]: prompt not in [INST] … [/INST] form")
        pairs.append({"question": match.group(1), "answer": truth.strip()})
    return [pairs[i:i + PER_AUTHOR] for i in range(0, len(pairs), PER_AUTHOR)]


def write_layout(fixtures: Path, data: Path, n_forget: int, n_retain: int, n_holdout: int, n_cal: int) -> dict:
    """TOFU's layout from the released logs; returns the record count of each split."""
    logs = json.loads((fixtures / LOG).read_text())
    forget_log, retain_log = authors(logs["eval_log_forget.json"]), authors(logs["eval_log.json"])
    if n_forget + n_holdout + n_cal > len(forget_log) or n_retain > len(retain_log):
        raise SystemExit(f"the logs hold {len(forget_log)} forget and {len(retain_log)} retain authors")

    def flat(groups: list[list[dict]]) -> list[dict]:
        return [pair for group in groups for pair in group]

    splits = {"forget10": flat(forget_log[:n_forget]), "retain90": flat(retain_log[:n_retain]),
              "holdout10": flat(forget_log[n_forget:n_forget + n_holdout]),
              "calibration": flat(forget_log[n_forget + n_holdout:n_forget + n_holdout + n_cal])}
    splits["full"] = splits["forget10"] + splits["retain90"]
    data.mkdir(parents=True, exist_ok=True)
    for name, records in splits.items():
        (data / f"{name}.json").write_text("".join(json.dumps(r) + "\n" for r in records))
    for name in ("world_facts_perturbed.json", "real_authors_perturbed.json"):
        (data / name).write_text((fixtures / name).read_text())
    return {name: len(records) for name, records in splits.items()}


def write_configs(work: Path, data: Path, base: str, seeds: list[int], name: str,
                  tolerances: list[float] = ()) -> Path:
    """The prepare config (tofu_smollm2's recipe on these files) and the bench config; returns the latter.
    ``tolerances``: a twin-stopped variant per utility-guard tolerance (criterion.utility_tolerance)."""
    prepare = yaml.safe_load(config_path("tofu_smollm2").read_text())
    prepare.update(run_dir=str(work / "run"), base_model=base)
    prepare["data"].update(path=str(data), forget_splits=["forget10"])
    (work / "prepare.yaml").write_text(yaml.safe_dump(prepare, sort_keys=False))
    bench = yaml.safe_load(config_path("tofu_smollm2", "bench").read_text())
    bench.update(name=name, prepare=str(work / "prepare.yaml"), seeds=seeds, methods=[
        {"name": "npo", "recipe": "deletion", "label": "deletion+auto",
         "overrides": {"until": "indistinguishable", "criterion.reference": "twins"}},
        {"name": "npo", "recipe": "deletion", "label": "deletion+until", "overrides": {"until": "indistinguishable"}},
        *({"name": "npo", "recipe": "deletion", "label": f"deletion+auto[utility_tolerance={t}]",
           "overrides": {"until": "indistinguishable", "criterion.reference": "twins",
                         "criterion.utility_tolerance": t}} for t in tolerances),
        {"name": "retrain"}])
    path = work / "bench.yaml"
    path.write_text(yaml.safe_dump(bench, sort_keys=False))
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fixtures", default="../shared/fixtures/tofu", help="TOFU's released evaluation logs")
    parser.add_argument("--work", default="runs/tofu-real", help="where the split files, configs and the run go")
    parser.add_argument("--base", default="models/smollm2-135m-instruct", help="the pretrained model directory")
    parser.add_argument("--forget-authors", type=int, default=3)
    parser.add_argument("--retain-authors", type=int, default=6)
    parser.add_argument("--holdout-authors", type=int, default=3)
    parser.add_argument("--calibration-authors", type=int, default=3)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--name", default="tofu_real_qa", help="the bench's name (its directory in RUN/bench)")
    parser.add_argument("--utility-tolerance", type=float, nargs="*", default=[],
                        help="also a twin-stopped variant with the utility guard at each of these tolerances")
    args = parser.parse_args()
    work, name = Path(args.work), args.name
    counts = write_layout(Path(args.fixtures), work / "data", args.forget_authors, args.retain_authors,
                          args.holdout_authors, args.calibration_authors)
    print("TOFU layout:", json.dumps(counts))
    bench = write_configs(work, work / "data", args.base, args.seeds, name, args.utility_tolerance)
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "forgetkit", "bench", "--config", str(bench)], check=True)
    print(f"\nprepare + bench: {time.perf_counter() - start:.0f} s wall in this call (cached stages and cells "
          "cost nothing)")
    run = work / "run"
    print("Greedy exact match:", json.dumps(json.loads((run / "summary.json").read_text())["exact_match"]))
    for stage in ("target", "oracle_forget10"):
        record = json.loads((run / stage / "stage.json").read_text())
        print(f"{stage}: built in {record['stage_wall_time_s']} s", record.get("examples", ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
