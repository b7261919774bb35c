"""What a request's ``summary.json`` holds, typed: the part every request shares (:class:`RequestSummary`: the
method, its cost, the oracle-free stop, the evaluation, the ledger row) and one dataclass per kind of unlearner
(gradient, closed-form editor, sharded exact deletion, input-based). The commands build them, ``UnlearnResult``
carries one, and the CLI, the bench and ``forgetkit forget`` read their fields; each kind says itself what it
did (:meth:`RequestSummary.headline`) and what it wrote (:meth:`RequestSummary.outputs`). ``to_dict`` is the file;
:func:`read_summary` reads one back. Numbers, ids and hashes only: never a record's text.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field, fields
from typing import ClassVar

from forgetkit.eval.calibration import CriterionRecord
from forgetkit.eval.result import EvalHeadline
from forgetkit.registry import EDITOR, GRADIENT, INPUT, SHARDED, unlearner

COST_FIELDS = ("wall_time_s", "peak_memory_mb", "trainable_parameters", "steps")  # a bench cell's cost columns


@dataclass(kw_only=True)
class RequestSummary(ABC):
    """The part of a summary every request has."""

    method: str
    mode: str
    wall_time_s: float
    peak_memory_mb: float | None = None
    memory_kind: str | None = None
    trainable_parameters: int | None = None
    steps: int | None = None
    forget_examples: int = 0
    retain_examples: int = 0
    criterion: CriterionRecord | None = None  # --until: the oracle-free stop (kept check, verdict, reached, trace)
    eval: EvalHeadline | None = None  # --eval: the evaluation's headline numbers
    ledger: dict | None = None  # the ledger row the request was recorded in: {path, id}

    KIND: ClassVar[str]
    OUTPUTS: ClassVar[str] = "adapter or model, train_log.jsonl"

    @abstractmethod
    def headline(self) -> str:
        """One line: what the request did and what it cost."""

    def outputs(self) -> str:
        """What the request wrote beside ``summary.json`` and ``audit.json``."""
        return self.OUTPUTS

    def cost(self) -> dict:
        """The cost columns of a bench cell."""
        return {name: getattr(self, name) for name in COST_FIELDS}

    @property
    def certificate(self) -> dict | None:
        """A certified method's (ε, δ) certificate, when its run issued one."""
        return None

    @property
    def reached(self) -> bool:
        """False only when an oracle-free stop ended outside its tolerance (not a finished deletion)."""
        return self.criterion is None or self.criterion.reached

    def to_dict(self) -> dict:
        """``summary.json``'s object: the kind, then every field that is set."""
        values = {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}
        for name in ("eval", "criterion"):
            if values.get(name) is not None:
                values[name] = values[name].to_dict()
        return {"kind": self.KIND, **values}

    @classmethod
    def from_dict(cls, data: dict) -> RequestSummary:
        return cls(**cls._fields_of(data, {f.name for f in fields(cls)}))

    @staticmethod
    def _fields_of(data: dict, known: set[str]) -> dict:
        """The ``known`` fields of a summary file's object, its evaluation typed."""
        values = {k: v for k, v in data.items() if k in known}
        if isinstance(values.get("eval"), dict):
            values["eval"] = EvalHeadline.from_dict(values["eval"])
        if isinstance(values.get("criterion"), dict):
            values["criterion"] = CriterionRecord.from_dict(values["criterion"])
        return values


@dataclass(kw_only=True)
class GradientSummary(RequestSummary):
    """A method trained by gradient steps (``forgetkit.methods``)."""

    KIND: ClassVar[str] = GRADIENT

    examples: int = 0
    tokens: int = 0
    first_loss: float | None = None
    final_loss: float | None = None
    tokens_per_s: float | None = None
    resumed_from_step: int = 0
    stopped: str | None = None  # why a hook ended the run early
    phases: dict | None = None  # a multi-phase method's per-phase times and numbers

    @property
    def certificate(self) -> dict | None:
        return (self.phases or {}).get("certificate")

    def headline(self) -> str:
        return (f"{self.method} ({self.mode}): {self.steps} steps in {self.wall_time_s:.1f}s, peak "
                f"{self.peak_memory_mb:.0f} MB, {self.trainable_parameters:,} trainable parameters; loss "
                f"{self.first_loss:.4f} -> {self.final_loss:.4f}")


@dataclass(kw_only=True)
class EditorSummary(RequestSummary):
    """A closed-form edit of a LoRA adapter (``forgetkit.editors``); ``solve`` is what the editor recorded
    (its solve's residual, products, time), written at the top level of the file."""

    request: str  # "removal", "query" or "response"
    request_examples: int = 0
    kept_examples: int = 0
    solve: dict = field(default_factory=dict)

    KIND: ClassVar[str] = EDITOR
    OUTPUTS: ClassVar[str] = "adapter"

    def headline(self) -> str:
        return (f"{self.method} ({self.request}): {self.request_examples} examples edited in {self.wall_time_s:.1f}s,"
                f" peak {self.peak_memory_mb:.0f} MB, {self.trainable_parameters:,} adapter parameters")

    def to_dict(self) -> dict:
        data = super().to_dict()
        solve = data.pop("solve")
        return {**data, **solve}

    @classmethod
    def from_dict(cls, data: dict) -> EditorSummary:
        known = {f.name for f in fields(cls)} - {"solve"}
        return cls(**cls._fields_of(data, known),
                   solve={k: v for k, v in data.items() if k not in known | {"kind"}})


@dataclass(kw_only=True)
class ShardedSummary(RequestSummary):
    """An exact deletion from a shard set (``sharded_exact``): the shards that held the records, retrained."""

    retrained: list[int]
    untouched: list[int]
    deleted: int
    shards: int
    share_retrained: float

    KIND: ClassVar[str] = SHARDED
    OUTPUTS: ClassVar[str] = "shards/ (the shard adapters after deletion)"

    def headline(self) -> str:
        return (f"{self.method}: retrained shard(s) {self.retrained} of {self.shards} in {self.wall_time_s:.1f}s "
                f"({self.deleted} records deleted); untouched {self.untouched}")


@dataclass(kw_only=True)
class InputSummary(RequestSummary):
    """An input-based unlearner (``forgetkit.incontext``): a context before each question, no weight changed."""

    context_tokens: dict  # {mean, max}: the tokens the context adds before a question

    KIND: ClassVar[str] = INPUT
    OUTPUTS: ClassVar[str] = "context/context.json (it holds the forget subjects' text)"

    def headline(self) -> str:
        return (f"{self.method} (input): a context of {self.context_tokens['mean']:.0f} tokens on average before "
                f"each question ({self.context_tokens['max']} at most), built in {self.wall_time_s:.2f}s; no "
                "weights changed")


BY_KIND = {GRADIENT: GradientSummary, EDITOR: EditorSummary, SHARDED: ShardedSummary, INPUT: InputSummary}


def read_summary(data: dict) -> RequestSummary:
    """A ``summary.json`` object as the summary of its kind (a file written before summaries named their kind:
    the kind its method is registered with)."""
    return BY_KIND[data.get("kind") or unlearner(data["method"]).kind].from_dict(data)
