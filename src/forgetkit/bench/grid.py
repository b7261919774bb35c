"""A bench's grid and its cache: the cells (two reference rows per split, the target and the oracle, then
methods × variants × splits × seeds), each keyed by the hash of what it computes, and the results they hold.

A cell's result is ``cells/<id>/result.json``, written last and atomically: a cell with that file is done and
is never recomputed. Settings added to the bench after cells were cached leave the key while they hold their
defaults (``config.ADDED_SETTING``), so those cells keep their ids.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from forgetkit.bench.config import BenchConfig
from forgetkit.checks import cached_object, damage
from forgetkit.config import build, config_hash, plain_config
from forgetkit.errors import ConfigError
from forgetkit.eval.calibration import CRITERION_VERSION
from forgetkit.io import set_aside
from forgetkit.request import UnlearnConfig, recipe_config

BENCH_VERSION = 2  # bump when what a cell computes changes: every cached cell is recomputed
RESULT = "result.json"


@dataclass
class Cell:
    kind: str  # "method" or "reference"
    method: str  # a method or editor; for references "target" or "oracle"
    variant: str  # the leaderboard's name for it
    split: str
    seed: int
    unlearn: dict = field(default_factory=dict)  # the resolved unlearn config (methods)
    key: str = ""
    edits: str | None = None  # an editor's edit request (MethodEntry.edits) instead of the split's removal
    eval_every: int = 0  # the request's quick evaluation every N steps (MethodEntry.eval_every)

    @property
    def id(self) -> str:
        slug = re.sub(r"[^A-Za-z0-9_.=-]+", "_", self.variant).strip("_")[:60]
        return f"{slug}-{self.split}-s{self.seed}-{self.key[:8]}"

    def unlearn_config(self) -> UnlearnConfig:
        """The cell's resolved ``UnlearnConfig``."""
        return build(UnlearnConfig, self.unlearn)

    def describe(self) -> dict:
        edits = {"edits": self.edits} if self.edits else {}
        return {"id": self.id, "kind": self.kind, "method": self.method, "variant": self.variant,
                "split": self.split, "seed": self.seed, "key": self.key, **edits}


def unlearn_config(name: str, recipe: str | None, overrides: dict, seed: int) -> UnlearnConfig:
    """The method's recipe (shipped or a path) with the overrides and the seed applied."""
    return recipe_config(name, recipe, values={**overrides, "train.seed": seed}, where=f"methods.{name}")


def settings_key(config: BenchConfig, source) -> dict:
    """What every cell's key holds: the bench's version, its starting point and its evaluation settings."""
    return {"version": BENCH_VERSION, "source": source.key, "eval": plain_config(config.eval)}


def reference_cell(config: BenchConfig, source, name: str, split: str) -> Cell:
    """The ``target`` or ``oracle`` row of a split."""
    cell = Cell("reference", name, name, split, 0)
    cell.key = config_hash({**settings_key(config, source), "reference": name, "split": split,
                            "oracle": source.oracle_key(split)})
    return cell


def from_oracle(config: BenchConfig, cell: Cell) -> bool:
    """Whether the cell is ``retrain`` on a prepared run standing for the run's oracle stage."""
    return cell.method == "retrain" and config.retrain_from_oracle and config.data is None


def grid_cells(config: BenchConfig, source) -> list[Cell]:
    """Every cell of the grid, the oracles first (their evaluation is every other cell's Forget Quality
    reference); two cells that are the same are refused."""
    cells = []
    for split in config.splits:
        cells += [reference_cell(config, source, "oracle", split), reference_cell(config, source, "target", split)]
    for entry in config.methods:
        for label, overrides in entry.variants():
            for split in entry.splits or config.splits:
                for seed in config.seeds:
                    unlearn = unlearn_config(entry.name, entry.recipe, overrides, seed)
                    cell = Cell("method", entry.name, label, split, seed, plain_config(unlearn), edits=entry.edits,
                                eval_every=entry.eval_every)
                    key = {**settings_key(config, source), "unlearn": cell.unlearn, "split": split,
                           "attacks": plain_config(config.attacks), "oracle": source.oracle_key(split),
                           "retrain_from_oracle": from_oracle(config, cell)}
                    if entry.edits:  # fields added later: cells without them keep their keys
                        key["edits"] = entry.edits
                    if entry.eval_every:
                        key["eval_every"] = entry.eval_every
                    if unlearn.until:  # the stopping rule's own version: a changed rule recomputes these cells
                        key["criterion_version"] = CRITERION_VERSION
                    cell.key = config_hash(key)
                    cells.append(cell)
    ids = [c.id for c in cells]
    if len(set(ids)) != len(ids):
        raise ConfigError("two cells of the grid are the same (give the methods distinct labels or grids)")
    return cells


def cached_result(out: Path, cell: Cell) -> dict | None:
    """The finished cell's result; None when it has none, or when its ``result.json`` is damaged (not a JSON
    object): that file is then set aside and the cell is not computed."""
    result = cached_object(out / "cells" / cell.id / RESULT)
    return None if result is None else {**result, "cached": True}


def intact(directory: Path, names: tuple[str, ...]) -> bool:
    """Whether each named file of a cached ``directory`` holds a JSON object; else the directory is set aside
    (to be recomputed) and False."""
    reason = damage(directory, names)
    if reason:
        set_aside(directory, reason)
    return reason is None


def failure(exc: Exception) -> dict:
    """A method that stopped: ``diverged`` (NaN/inf loss or gradient guard) or ``refused``, with the reason."""
    from forgetkit.train import DivergenceError

    return {"status": "diverged" if isinstance(exc, DivergenceError) else "refused", "reason": str(exc)}


def add_cost_ratios(results: list[dict]) -> None:
    """``time_vs_retrain`` and ``memory_vs_retrain`` of every cell: its cost over the retrain cell's of the
    same split and seed (else any seed's, else the oracle's training)."""
    def cost_of(pred) -> dict | None:
        found = [r["cost"] for r in results if r.get("status") == "done" and pred(r["cell"]) and r.get("cost")]
        return found[0] if found else None

    for r in results:
        c = r["cell"]
        if r.get("status") != "done" or not r.get("cost"):
            continue
        retrain = (cost_of(lambda x, c=c: x["method"] == "retrain" and x["split"] == c["split"]
                           and x["seed"] == c["seed"])
                   or cost_of(lambda x, c=c: x["method"] == "retrain" and x["split"] == c["split"])
                   or cost_of(lambda x, c=c: x["method"] == "oracle" and x["split"] == c["split"]))
        for key, base in (("time_vs_retrain", "wall_time_s"), ("memory_vs_retrain", "peak_memory_mb")):
            num, den = r["cost"].get(base), (retrain or {}).get(base)
            r["cost"][key] = num / den if num is not None and den else None
