"""Issue 33's measurement of the user-data path on a real model: the built-in benchmark written out in TOFU's
released layout (no ids, no grouping field: JSON Lines named ``.json``, as TOFU ships them), then
``forgetkit bench --config tofu_smollm2`` on it, which prepares the model (SmolLM2-135M-Instruct by default;
``--base models/gemma3-270m`` for Gemma 3) through ``forgetkit prepare --data`` (the LoRA target on every
person, the oracle on retain90) and runs npo, npo+until and retrain on forget10. Prints the memorisation of
target and oracle (greedy exact match), the stages' times, and the leaderboard's rows. Every stage and cell is
cached: rerunning resumes.

The benchmark is smaller than ``configs/smollm2.yaml``'s (20 people, not 40) so that prepare and bench fit
about 45 minutes of this 2-core CPU with SmolLM2; 10 QA pairs per person, 4 never-trained calibration people,
every world fact in the utility set (the user-data path replays none).

Usage::

    python benchmarks/user_data_real_model.py [--work runs/tofu-layout] [--people 20] [--qa-per-person 10]
    python benchmarks/user_data_real_model.py --base models/gemma3-270m --work runs/tofu-gemma --name tofu_gemma3
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from forgetkit.data.synthetic import SyntheticConfig, write_benchmark
from forgetkit.data.user_splits import write_tofu_layout


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", default="runs/tofu-layout", help="where the TOFU-layout files and the run go")
    parser.add_argument("--people", type=int, default=20)
    parser.add_argument("--qa-per-person", type=int, default=10)
    parser.add_argument("--base", default="models/smollm2-135m-instruct", help="the pretrained model directory")
    parser.add_argument("--name", default="tofu_smollm2", help="the bench's name (its directory in RUN/bench)")
    args = parser.parse_args()
    work = Path(args.work)
    data = work / "data"
    if not data.is_dir():
        config = SyntheticConfig(seed=0, n_people=args.people, qa_per_person=args.qa_per_person, n_generic_people=0,
                                 canary_digits=6, calibration_people=4, world_replay=0)
        with tempfile.TemporaryDirectory() as tmp:
            write_benchmark(config, Path(tmp) / "benchmark")
            data.mkdir(parents=True)
            print("TOFU layout:", ", ".join(write_tofu_layout(Path(tmp) / "benchmark", data)))
    run = work / "run"
    overrides = (f"prepare_overrides=[data.path={data},data.group_size={args.qa_per_person},run_dir={run},"
                 f"base_model={args.base}]")
    start = time.perf_counter()
    name = args.name
    subprocess.run([sys.executable, "-m", "forgetkit", "bench", "--config", "tofu_smollm2", f"name={name}", overrides],
                   check=True)
    print(f"\nprepare + bench: {time.perf_counter() - start:.0f} s wall in this call (cached stages and cells "
          "cost nothing)")
    summary = json.loads((run / "summary.json").read_text())
    print("\nGreedy exact match:", json.dumps(summary["exact_match"], indent=1))
    for stage in ("benchmark", "base", "target", "oracle_forget10"):
        record = json.loads((run / stage / "stage.json").read_text())
        print(f"{stage}: built in {record['stage_wall_time_s']} s", record.get("examples", ""))
    for row in json.loads((run / "bench" / name / "leaderboard.json").read_text()):  # one row per variant
        columns = {k.removeprefix("metrics."): v["mean"] for k, v in row["columns"].items()
                   if k in ("metrics.forget_quality", "metrics.model_utility", "metrics.mia_auc", "cost.wall_time_s")}
        print(row["variant"], row["status"], json.dumps(columns))
    return 0


if __name__ == "__main__":
    sys.exit(main())
