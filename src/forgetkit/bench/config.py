"""Bench configs (``forgetkit bench --config NAME``): what grid to run, on what, with which attacks.

A config names its starting point, either a prepared run of the built-in benchmark (``prepare``:
a prepare config that is built or reused, or ``run``: an existing run directory) or the user's own
model and data (``data``); the methods (each a registered method or editor with its shipped recipe,
overrides and an optional hyper-parameter grid), the forget splits and the seeds; the evaluation's
settings; and the robustness attacks each cell gets.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field, replace

from forgetkit.config import ADDED_SETTING, load_config
from forgetkit.errors import ConfigError, require_positive
from forgetkit.eval.settings import EvalSettings


@dataclass
class MethodEntry:
    name: str  # a registered method or editor (forgetkit methods)
    label: str | None = None  # its name on the leaderboard; default: name, plus the grid's values
    recipe: str | None = None  # a shipped unlearn recipe or a YAML path; default: the method's own
    overrides: dict = field(default_factory=dict)  # dotted recipe key -> value
    grid: dict = field(default_factory=dict)  # dotted recipe key -> list of values: one variant per combination
    # an editor's edit request instead of the removal of the split: "query" or "response" (a prepared run's edit
    # file for the split) or an edit file
    edits: str | None = field(default=None, metadata=ADDED_SETTING)
    splits: list[str] | None = field(default=None, metadata=ADDED_SETTING)  # a subset of the bench's; default: all
    # on a prepared run: Forget Quality and Model Utility from a quick evaluation every N steps, into the cell's
    # curve (the leaderboard's best-in-training columns and the curves plot); 0: off
    eval_every: int = field(default=0, metadata=ADDED_SETTING)

    def __post_init__(self) -> None:
        require_positive(self, "eval_every", allow_zero=True)

    def variants(self) -> list[tuple[str, dict]]:
        """(label, overrides) for each point of the grid (one when there is no grid)."""
        for key, values in self.grid.items():
            if not isinstance(values, list) or not values:
                raise ConfigError(f"methods.{self.name}.grid.{key}: expected a non-empty list of values")
        keys = sorted(self.grid)
        out = []
        for combo in itertools.product(*(self.grid[k] for k in keys)):
            point = dict(zip(keys, combo, strict=True))
            label = self.label or self.name
            if point:
                label += "[" + ",".join(f"{k}={v}" for k, v in point.items()) + "]"
            out.append((label, {**self.overrides, **point}))
        return out


@dataclass
class RelearnAttack:
    """Fine-tune the unlearned model on part of the forget set; measure the rest (how much comes back)."""

    enabled: bool = True
    fraction: float = 0.5  # of the forget set trained on (by person on the built-in benchmark)
    steps: int = 10
    batch_size: int = 8
    lr: float = 1.0e-3
    # person: shown some forget people, measured on the others; fact: shown some facts of every forget person,
    # measured on their other facts (does relearning one fact bring back the rest?)
    split: str = field(default="person", metadata=ADDED_SETTING)

    def __post_init__(self) -> None:
        require_positive(self, "steps", "batch_size", "lr")
        if self.split not in ("person", "fact"):
            raise ConfigError(f"attacks.relearn.split must be person or fact, got '{self.split}'")


JAILBREAKS = ("roleplay", "ignore_instructions", "multi_turn", "completion")


@dataclass
class AttackSettings:
    relearn: RelearnAttack = field(default_factory=RelearnAttack)
    quantize_bits: list[int] = field(default_factory=lambda: [8, 4])  # weight round trips
    prompt: bool = True  # forget questions behind a leading context that names the person
    sequential: int = 0  # k successive requests (equal slices of the forget split, by person); 0: off
    # the jailbreak suite (bench.attacks.jailbreak): any of JAILBREAKS
    jailbreaks: list[str] = field(default_factory=list, metadata=ADDED_SETTING)

    def __post_init__(self) -> None:
        unknown = [j for j in self.jailbreaks if j not in JAILBREAKS]
        if unknown:
            raise ConfigError(f"attacks.jailbreaks: unknown {', '.join(unknown)} (known: {', '.join(JAILBREAKS)})")
        if any(b not in (2, 3, 4, 8) for b in self.quantize_bits):
            raise ConfigError(f"attacks.quantize_bits: each must be 2, 3, 4 or 8, got {self.quantize_bits}")
        if not 0 < self.relearn.fraction < 1:
            raise ConfigError("attacks.relearn.fraction must be between 0 and 1")
        if self.sequential < 0:
            raise ConfigError("attacks.sequential must be ≥ 0")


@dataclass
class BenchEvalSettings(EvalSettings):
    """The evaluation of each cell: forgetkit eval's settings (any of them, smoothing included) with lighter
    defaults to keep grids affordable, and the quick one after each attack (forget set, ``quick_retain`` retain
    records, world facts; no GradNorm, WEAT, toxicity or smoothing)."""

    retain_limit: int = 200
    max_new_tokens: int = 48
    verbatim_new_tokens: int = 48
    canary_candidates: int = 100
    gradnorm: bool = False
    quick_retain: int = 100
    # N world facts, evenly spaced through the file, in every evaluation (0: all)
    world_facts_limit: int = field(default=0, metadata=ADDED_SETTING)

    def __post_init__(self) -> None:
        super().__post_init__()
        require_positive(self, "quick_retain", "world_facts_limit", allow_zero=True)

    def quick(self) -> EvalSettings:
        """The quick evaluation's settings."""
        return replace(self, retain_limit=self.quick_retain, gradnorm=False, weat=None, toxicity=None, smoothing=None)


@dataclass
class CellResources:
    """What one cell asks of a Ray cluster (``forgetkit bench --executor ray``); unset: 1 GPU when the
    cluster has GPUs, else 1 CPU."""

    cpus: float | None = None
    gpus: float | None = None

    def __post_init__(self) -> None:
        require_positive(self, "cpus", "gpus", allow_zero=True)


@dataclass
class UserData:
    """The user's own model and files (any format ``forgetkit data check`` reads)."""

    model: str = ""
    adapter: str | None = None
    forget: str = ""
    retain: str | None = None
    holdout: str | None = None
    world_facts: str | None = None
    oracle_log: str | None = None  # an evaluation log of a model never trained on the forget set: Forget Quality
    oracle_model: str | None = None  # that model itself (evaluated as the oracle row)
    calibration: str | None = None  # never-trained examples like the forget set's (until: indistinguishable)


@dataclass
class BenchConfig:
    name: str = "bench"
    out: str | None = None  # default: <run>/bench/<name>, or runs/bench/<name> with user data
    prepare: str | None = "small"  # a prepare config (name or path): built or reused first
    prepare_overrides: list[str] = field(default_factory=list)
    run: str | None = None  # an existing prepared run directory (instead of prepare)
    data: UserData | None = None  # the user's model and data (instead of a prepared run)
    methods: list[MethodEntry] = field(default_factory=list)
    splits: list[str] = field(default_factory=lambda: ["forget10"])
    seeds: list[int] = field(default_factory=lambda: [0])
    retrain_from_oracle: bool = True  # on a prepared run, `retrain` is the oracle stage (built by the same recipe)
    attacks: AttackSettings = field(default_factory=AttackSettings)
    eval: BenchEvalSettings = field(default_factory=BenchEvalSettings)
    device: str = "auto"
    resources_per_cell: CellResources = field(default_factory=CellResources)  # --executor ray

    def __post_init__(self) -> None:
        if not self.methods:
            raise ConfigError("methods: list at least one method")
        if not self.seeds:
            raise ConfigError("seeds: list at least one seed")
        for entry in self.methods:
            if entry.splits is not None and (not entry.splits or set(entry.splits) - set(self.splits)):
                raise ConfigError(f"methods.{entry.name}.splits: give some of the bench's splits "
                                  f"({', '.join(self.splits)}), got {entry.splits}")
        if self.data is not None:
            if not self.data.model or not self.data.forget:
                raise ConfigError("data: give at least model and forget")
            if any(entry.eval_every for entry in self.methods):
                raise ConfigError("methods: eval_every needs a prepared run (its oracle log); data: has none")
            self.prepare = None
            self.splits = ["custom"]
        elif self.run is not None:
            self.prepare = None
        elif self.prepare is None:
            raise ConfigError("give prepare (a prepare config), run (a prepared run directory) or data (your files)")


def load_bench_config(name_or_path: str, overrides: list[str] | None = None) -> BenchConfig:
    return load_config(name_or_path, overrides, BenchConfig, kind="bench")
