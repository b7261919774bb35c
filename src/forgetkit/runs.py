"""A prepared run's directory as the commands read it: its format, its stages, its splits, its layout.

``forgetkit prepare`` writes ``run.json`` at the run's root (the run format and the forgetkit
version that wrote it); a run without one predates the record and is read as format 1.
``check_run`` is what every command that takes ``--run`` (or a bench's ``run:``) asks first.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from forgetkit import __version__
from forgetkit.checks import existing_dir, json_object
from forgetkit.data.readers import read_records
from forgetkit.data.records import QARecord
from forgetkit.data.synthetic import retain_of
from forgetkit.errors import DataError, ForgetkitError
from forgetkit.io import write_json

RUN_FILE = "run.json"
RUN_FORMAT = 1  # bump when a stage's layout changes so that older runs cannot be read as they are
FORGET_SPLIT = re.compile(r"forget\d{2}")


def write_run_record(run_dir: Path) -> None:
    write_json(run_dir / RUN_FILE, {"format": RUN_FORMAT, "forgetkit": __version__})


def run_stages(run: Path) -> list[Path]:
    """The stage directories of a prepared run (each holds a ``stage.json``): inputs no command writes into."""
    return [p.parent for p in sorted(run.glob("*/stage.json"))]


def check_split(bench: Path, split: str, run: Path | None = None) -> None:
    """``split`` names a forget split present in the benchmark directory ``bench`` (of the prepared ``run``)."""
    if not FORGET_SPLIT.fullmatch(split) or not (bench / f"{split}.jsonl").is_file():
        present = ", ".join(sorted(p.stem for p in bench.glob("forget*.jsonl") if FORGET_SPLIT.fullmatch(p.stem)))
        where = f"{run}: no prepared benchmark split" if run else f"{bench}: no split"
        raise ForgetkitError(f"{where} '{split}' (present: {present or 'none'})")


def check_run_dir_format(run: Path) -> None:
    """A run directory that holds a ``run.json`` is of this forgetkit's format (none: format 1, or a new run)."""
    record = run / RUN_FILE
    if record.is_file():
        doc = json_object(record)
        if doc.get("format") != RUN_FORMAT:
            raise DataError(record, f"the run is in format {doc.get('format')!r} (written by forgetkit "
                            f"{doc.get('forgetkit', '?')}); this forgetkit reads format {RUN_FORMAT}: prepare it "
                            "again into a new run_dir", field="format")


def check_run(run: str | os.PathLike, stages: tuple[str, ...] = (), splits: tuple[str, ...] = ()) -> Path:
    """``run`` as a prepared run of this format holding ``stages`` and the forget ``splits``."""
    run = existing_dir(run, "prepared run")
    check_run_dir_format(run)
    if not (run / "benchmark" / "stage.json").is_file():
        raise ForgetkitError(f"{run}: not a prepared run (no benchmark/stage.json; build one with forgetkit prepare)")
    for stage in stages:
        if not (run / stage / "stage.json").is_file():
            raise ForgetkitError(f"{run}: stage '{stage}' missing (rerun forgetkit prepare with run_dir={run} to "
                                 "build it)")
    for split in splits:
        check_split(run / "benchmark", split, run)
    return run


@dataclass
class ModelRef:
    """A model directory with an optional adapter on top, and the training that made it (if known)."""

    model: Path
    adapter: Path | None = None
    train: dict | None = None  # the stage's training statistics: wall_time_s, peak_memory_mb, ...


class PreparedRun:
    """The one reader of a prepared run's layout: its stages (``benchmark``, ``base``, ``target``,
    ``oracle_<split>``, ``edits``), the benchmark's split files (a forget split's retain and holdout splits),
    what the target trained on, and where the oracle's evaluation log lives. Checked on opening."""

    def __init__(self, run_dir: str | os.PathLike, stages: tuple[str, ...] = (), splits: tuple[str, ...] = ()) -> None:
        self.root = check_run(run_dir, stages=stages, splits=splits)
        self.benchmark = self.root / "benchmark"

    def stages(self) -> list[Path]:
        return run_stages(self.root)

    def stage(self, name: str) -> dict:
        """The stage's ``stage.json`` (its key and training statistics); empty when the stage is missing. One that
        does not parse is a one-line error: ``forgetkit prepare`` sets the stage aside and builds it again."""
        path = self.root / name / "stage.json"
        if not path.is_file():
            return {}
        try:
            return json_object(path)
        except DataError as exc:
            raise DataError(path, f"{exc.problem}: the stage is damaged (rerun forgetkit prepare with "
                            f"run_dir={self.root} to build it again)", line=exc.line) from None

    def model_of(self, stage: str) -> ModelRef | None:
        """The stage's model: a LoRA stage is the base with the stage's adapter; None when missing."""
        d = self.root / stage
        if not (d / "stage.json").is_file():
            return None
        train = self.stage(stage).get("train")
        if (d / "adapter_config.json").is_file():
            return ModelRef(self.root / "base", d, train)
        return ModelRef(d, None, train)

    def lora_target(self) -> bool:
        return (self.root / "target" / "adapter_config.json").is_file()

    def split_file(self, name: str) -> Path:
        """A benchmark file by name: ``forget10``, ``retain90``, ``holdout10``, ``full``, ``world_facts`` …"""
        return self.benchmark / f"{name}.jsonl"

    def forget_file(self, split: str) -> Path:
        check_split(self.benchmark, split, self.root)
        return self.split_file(split)

    def retain_file(self, split: str) -> Path:
        return self.split_file(retain_of(split))

    def _split_if_present(self, name: str) -> Path | None:
        path = self.split_file(name)
        return path if path.is_file() else None

    def world_facts_file(self) -> Path | None:
        """The world facts of the utility set (Model Utility's), if the run has them."""
        return self._split_if_present("world_facts")

    def replayed_world_facts_file(self) -> Path | None:
        """The world facts the target and the oracles replayed in training, so a retain set holds them too: the
        split the target's ``stage.json`` names (``world_replay`` when the benchmark keeps them apart from the
        utility set; none when the fine-tunes replayed none); for a run prepared before the stage recorded it,
        the world facts."""
        name = self.stage("target").get("world_facts", "world_facts")
        return self._split_if_present(name) if name else None

    def calibration_file(self) -> Path | None:
        """The never-trained calibration people's QA (``benchmark.calibration_people``), if the run has them."""
        return self._split_if_present("calibration")

    def retain_records(self, split: str) -> list[QARecord]:
        """The split's retain people plus the replayed world facts: what the oracle of the split trained on."""
        facts = self.replayed_world_facts_file()
        return read_records(self.retain_file(split)) + (read_records(facts) if facts else [])

    def training_records(self) -> tuple[list[QARecord], list]:
        """What the target trained on: every benchmark person's QA and the replayed world facts; and the
        narratives."""
        facts = self.replayed_world_facts_file()
        qa = read_records(self.split_file("full")) + (read_records(facts) if facts else [])
        narratives = self.split_file("narratives")
        return qa, read_records(narratives, kind="text") if narratives.is_file() else []

    def edits_file(self, kind: str, split: str) -> Path:
        return self.root / "edits" / f"{kind}_{split}.jsonl"

    def oracle_eval_dir(self, split: str) -> Path:
        """Where ``forgetkit eval`` of the split's oracle writes its log (``RUN/eval/oracle_<split>``)."""
        return self.root / "eval" / f"oracle_{split}"

    def person_names(self) -> dict[str, str]:
        people = self.benchmark / "people.jsonl"
        if not people.is_file():
            return {}
        return {row["person"]: row["name"] for row in map(json.loads, people.read_text().splitlines()) if row}
