"""Where a bench's models and data come from: a prepared run of the built-in benchmark, or the user's files.

Both answer the same questions: the target and the oracle for a split (and the oracle's training
cost, the denominator of cost ratios), the evaluation's sets, an ``unlearn`` request for a cell,
and the records the attacks need. ``key`` identifies the starting point in every cell's cache key.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from forgetkit import checks
from forgetkit.bench.config import BenchConfig, UserData
from forgetkit.data.readers import read_records
from forgetkit.data.records import QARecord, records_hash
from forgetkit.data.synthetic import person_of
from forgetkit.errors import ForgetkitError
from forgetkit.eval.evaluate import EvalData, benchmark_data
from forgetkit.runs import check_run, run_stages


@dataclass
class ModelRef:
    """A model directory with an optional adapter on top, and the training that made it (if known)."""

    model: Path
    adapter: Path | None = None
    train: dict | None = None  # the stage's training statistics: wall_time_s, peak_memory_mb, ...


class PreparedRun:
    """A run directory built by ``forgetkit prepare`` (benchmark, base, target, oracle_<split>)."""

    def __init__(self, run_dir: str | Path, splits: list[str]) -> None:
        self.run = check_run(run_dir, stages=("target",), splits=tuple(splits))
        self.bench = self.run / "benchmark"
        self.key = self._stage("target").get("key") or ""
        people = self.bench / "people.jsonl"
        self.names = ({row["person"]: row["name"] for row in map(json.loads, people.read_text().splitlines()) if row}
                      if people.is_file() else {})

    def inputs(self) -> list[Path]:
        """The run's stages: what a bench must not write into."""
        return run_stages(self.run)

    def _stage(self, name: str) -> dict:
        path = self.run / name / "stage.json"
        return json.loads(path.read_text()) if path.is_file() else {}

    def _ref(self, stage: str) -> ModelRef | None:
        d = self.run / stage
        if not (d / "stage.json").is_file():
            return None
        info = self._stage(stage)
        if (d / "adapter_config.json").is_file():
            return ModelRef(self.run / "base", d, info.get("train"))
        return ModelRef(d, None, info.get("train"))

    def target(self) -> ModelRef:
        ref = self._ref("target")
        if ref is None:
            raise ForgetkitError(f"{self.run}: no target stage (run forgetkit prepare first)")
        return ref

    def oracle(self, split: str) -> ModelRef | None:
        return self._ref(f"oracle_{split}")

    def oracle_key(self, split: str) -> str:
        return self._stage(f"oracle_{split}").get("key", "")

    def eval_data(self, split: str, retain_limit: int) -> EvalData:
        return benchmark_data(self.bench, split, retain_limit=retain_limit)

    def forget(self, split: str) -> list[QARecord]:
        return read_records(self.bench / f"{split}.jsonl")

    def retain(self, split: str) -> list[QARecord]:
        """The split's retain people plus the world facts (what the target and oracle trained on)."""
        retain = read_records(self.bench / f"retain{100 - int(split.removeprefix('forget')):02d}.jsonl")
        facts = self.bench / "world_facts.jsonl"
        return retain + (read_records(facts) if facts.is_file() else [])

    def world_facts(self) -> list[QARecord] | None:
        facts = self.bench / "world_facts.jsonl"
        return read_records(facts) if facts.is_file() else None

    def request_kwargs(self, split: str) -> dict:
        return {"run": str(self.run), "split": split}

    def person_names(self, records: list[QARecord]) -> dict[str, str]:
        return {r.id: self.names[person_of(r.id)] for r in records if person_of(r.id) in self.names}

    def group_of(self, record_id: str) -> str:
        return person_of(record_id)


class UserFiles:
    """The user's model (and adapter) with forget / retain / holdout / world-facts files."""

    def __init__(self, data: UserData) -> None:
        self.data = data
        self.forget_records = read_records(data.forget)
        self.retain_records = read_records(data.retain) if data.retain else []
        for path in (data.holdout, data.world_facts):  # read in every cell: checked now
            if path:
                read_records(path)
        checks.model_dir(data.model, "data.model")
        if data.adapter:
            checks.adapter_dir(data.adapter)
        if data.oracle_model:
            checks.model_dir(data.oracle_model, "data.oracle_model")
        self.key = records_hash(self.forget_records) + ":" + str(Path(data.model).resolve())
        self.names: dict[str, str] = {}

    def inputs(self) -> list[str]:
        """The user's model directories and files: what a bench must not write into."""
        d = self.data
        return [p for p in (d.model, d.adapter, d.oracle_model, d.forget, d.retain, d.holdout, d.world_facts,
                            d.oracle_log) if p]

    def target(self) -> ModelRef:
        return ModelRef(Path(self.data.model), Path(self.data.adapter) if self.data.adapter else None)

    def oracle(self, split: str) -> ModelRef | None:
        return ModelRef(Path(self.data.oracle_model)) if self.data.oracle_model else None

    def oracle_key(self, split: str) -> str:
        return str(Path(self.data.oracle_model).resolve()) if self.data.oracle_model else ""

    def eval_data(self, split: str, retain_limit: int) -> EvalData:
        d = self.data
        return EvalData(forget=self.forget_records, retain=self.retain_records[:retain_limit] or None,
                        holdout=read_records(d.holdout) if d.holdout else None,
                        world_facts=read_records(d.world_facts) if d.world_facts else None)

    def forget(self, split: str) -> list[QARecord]:
        return self.forget_records

    def retain(self, split: str) -> list[QARecord]:
        return self.retain_records

    def world_facts(self) -> list[QARecord] | None:
        return read_records(self.data.world_facts) if self.data.world_facts else None

    def request_kwargs(self, split: str) -> dict:
        d = self.data
        return {"model": d.model, "adapter": d.adapter, "forget": d.forget, "retain": d.retain}

    def person_names(self, records: list[QARecord]) -> dict[str, str]:
        return {}

    def group_of(self, record_id: str) -> str:
        return record_id


def open_source(config: BenchConfig, quiet: bool, build: bool = True):
    """The bench's starting point; with ``prepare``, the run is built (or reused) first, unless ``build`` is
    false (a report of what the cells hold: the run must be there)."""
    if config.data is not None:
        return UserFiles(config.data)
    if config.run is not None:
        return PreparedRun(config.run, config.splits)
    from forgetkit.prepare import load_prepare_config, prepare

    overrides = list(config.prepare_overrides) + [f"oracle_splits=[{','.join(config.splits)}]"]
    prep = load_prepare_config(config.prepare, overrides)
    if build:
        prepare(prep, quiet=quiet)
    return PreparedRun(prep.run_dir, config.splits)
