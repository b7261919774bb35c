"""A prepared run's directory as the commands read it: its format, its stages, its splits.

``forgetkit prepare`` writes ``run.json`` at the run's root (the run format and the forgetkit
version that wrote it); a run without one predates the record and is read as format 1.
``check_run`` is what every command that takes ``--run`` (or a bench's ``run:``) asks first.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from forgetkit import __version__
from forgetkit.checks import existing_dir, json_object
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
