"""Where a bench's models and data come from: a prepared run of the built-in benchmark, or the user's files.

Both answer the same questions: the target and the oracle for a split (and the oracle's training
cost, the denominator of cost ratios), the evaluation's sets, an ``unlearn`` request for a cell,
and the records the attacks need. ``key`` identifies the starting point in every cell's cache key.
"""

from __future__ import annotations

from pathlib import Path

from forgetkit import checks
from forgetkit.bench.config import BenchConfig, UserData
from forgetkit.data.edits import EDIT_KINDS
from forgetkit.data.readers import read_records
from forgetkit.data.records import QARecord, group_of, records_hash
from forgetkit.errors import ConfigError
from forgetkit.eval.sets import EvalData, benchmark_data
from forgetkit.runs import ModelRef, PreparedRun


class RunSource:
    """A run directory built by ``forgetkit prepare``: its layout is :class:`forgetkit.runs.PreparedRun`'s."""

    def __init__(self, run_dir: str | Path, splits: list[str]) -> None:
        self.prepared = PreparedRun(run_dir, stages=("target",), splits=tuple(splits))
        self.run = self.prepared.root
        self.key = self.prepared.stage("target").get("key") or ""
        self.names = self.prepared.person_names()

    def inputs(self) -> list[Path]:
        """The run's stages: what a bench must not write into."""
        return self.prepared.stages()

    def target(self) -> ModelRef:
        return self.prepared.model_of("target")

    def oracle(self, split: str) -> ModelRef | None:
        return self.prepared.model_of(f"oracle_{split}")

    def oracle_key(self, split: str) -> str:
        return self.prepared.stage(f"oracle_{split}").get("key", "")

    def eval_data(self, split: str, retain_limit: int) -> EvalData:
        return benchmark_data(self.prepared.benchmark, split, retain_limit=retain_limit)

    def forget(self, split: str) -> list[QARecord]:
        return read_records(self.prepared.forget_file(split))

    def retain(self, split: str) -> list[QARecord]:
        return self.prepared.retain_records(split)

    def world_facts(self) -> list[QARecord] | None:
        facts = self.prepared.world_facts_file()
        return read_records(facts) if facts else None

    def calibration(self) -> list[QARecord] | None:
        """The run's never-trained calibration people (None for a run prepared without them)."""
        file = self.prepared.calibration_file()
        return read_records(file) if file else None

    def request_kwargs(self, split: str) -> dict:
        return {"run": str(self.run), "split": split}

    def edit_file(self, edits: str, split: str) -> Path:
        """The edit file of a cell's ``edits``: the run's file of that kind for the split, or the file named."""
        return self.prepared.edits_file(edits, split) if edits in EDIT_KINDS else Path(edits)

    def person_names(self, records: list[QARecord]) -> dict[str, str]:
        return {r.id: self.names[group_of(r.id)] for r in records if group_of(r.id) in self.names}

    def group_of(self, record_id: str) -> str:
        return group_of(record_id)


class UserFiles:
    """The user's model (and adapter) with forget / retain / holdout / world-facts files."""

    def __init__(self, data: UserData) -> None:
        self.data = data
        self.forget_records = read_records(data.forget)
        self.retain_records = read_records(data.retain) if data.retain else []
        for path in (data.holdout, data.world_facts, data.calibration):  # read in every cell: checked now
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
                            d.oracle_log, d.calibration) if p]

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

    def calibration(self) -> list[QARecord] | None:
        return read_records(self.data.calibration) if self.data.calibration else None

    def request_kwargs(self, split: str) -> dict:
        d = self.data
        return {"model": d.model, "adapter": d.adapter, "forget": d.forget, "retain": d.retain,
                "calibration": d.calibration}

    def edit_file(self, edits: str, split: str) -> Path:
        """The edit file a cell's ``edits`` names (user data has no run edit files)."""
        if edits in EDIT_KINDS:
            raise ConfigError(f"methods: edits '{edits}' names a prepared run's edit file; with data:, give a file")
        return Path(edits)

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
        return RunSource(config.run, config.splits)
    from forgetkit.prepare import load_prepare_config, prepare

    overrides = list(config.prepare_overrides) + [f"oracle_splits=[{','.join(config.splits)}]"]
    prep = load_prepare_config(config.prepare, overrides)
    if build:
        prepare(prep, quiet=quiet)
    return RunSource(prep.run_dir, config.splits)
