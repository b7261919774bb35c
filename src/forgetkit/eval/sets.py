"""Which sets one evaluation reads (:class:`EvalData`), and where they are found in a built-in benchmark directory
(:func:`benchmark_data`). How it runs is :class:`forgetkit.eval.settings.EvalSettings`."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from forgetkit.data.readers import jsonl_rows, read_records, refuse_overlap
from forgetkit.data.records import QARecord, TextRecord, group_of
from forgetkit.data.synthetic import holdout_of, retain_of
from forgetkit.errors import DataError, ForgetkitError
from forgetkit.runs import check_split

QA_ROLES = ("forget", "retain", "holdout", "world_facts", "real_authors")


@dataclass
class EvalData:
    """The sets one evaluation reads; only ``forget`` is required."""

    forget: list[QARecord]
    retain: list[QARecord] | None = None
    holdout: list[QARecord] | None = None
    world_facts: list[QARecord] | None = None
    real_authors: list[QARecord] | None = None
    forget_text: list[TextRecord] | None = None
    heldout_text: list[TextRecord] | None = None
    canaries: list[dict] | None = None  # each: id, prefix, secret (digits)
    holdout_canaries: list[dict] | None = None  # never-trained canaries: the exposure baseline
    sources: dict[str, str] = field(default_factory=dict)
    allow_overlap: bool = False  # --allow-overlap: forget records in the retain or holdout set are accepted

    def qa_sets(self) -> dict[str, list[QARecord]]:
        return {role: getattr(self, role) for role in QA_ROLES if getattr(self, role)}

    def check_disjoint(self) -> None:
        """Refuse a retain or holdout set that holds forget records (by content): the holdout is the membership
        attacks' never-seen reference and the retain set the utility's, so either would measure the forget set
        against itself. ``allow_overlap`` lets it through with a warning."""
        for role in ("retain", "holdout"):
            refuse_overlap(self.forget, getattr(self, role), role, source=self.sources.get(role),
                           allow=self.allow_overlap)


def read_canaries(path: Path) -> list[dict]:
    """Canaries from JSON Lines: each an object with ``prefix`` and a digit-string ``secret``."""
    rows = []
    for row, where in jsonl_rows(path):
        n = where["line"]
        if not isinstance(row, dict):
            raise DataError(path, f"expected a JSON object, got {type(row).__name__}", line=n)
        for key in ("prefix", "secret"):
            if not isinstance(row.get(key), str) or not row[key]:
                raise DataError(path, "missing or not a string", line=n, field=key)
        if not row["secret"].isdigit():
            raise DataError(path, "secret must be a string of digits", line=n, field="secret")
        row.setdefault("id", f"{path.stem}-{n}")
        rows.append(row)
    return rows


def benchmark_data(data_dir: str | Path, split: str, retain_limit: int = 400) -> EvalData:
    """The sets of a built-in benchmark directory for forget split ``split`` (e.g. ``forget10``)."""
    data_dir = Path(data_dir)
    if not (data_dir / "manifest.json").is_file():
        raise ForgetkitError(f"{data_dir}: not a benchmark directory (no manifest.json; forgetkit prepare writes "
                             "one in RUN/benchmark)")
    check_split(data_dir, split)
    retain_name, holdout_name = retain_of(split), holdout_of(split)

    def qa(name: str) -> list[QARecord] | None:
        path = data_dir / f"{name}.jsonl"
        return read_records(path) if path.is_file() else None

    data = EvalData(forget=qa(split), retain=qa(retain_name), holdout=qa(holdout_name),
                    world_facts=qa("world_facts"))
    data.sources = {"forget": split, "retain": retain_name, "holdout": holdout_name, "world_facts": "world_facts"}
    forget_people = {group_of(r.id) for r in data.forget}
    holdout_people = {group_of(r.id) for r in data.holdout or []}
    if (data_dir / "narratives.jsonl").is_file():
        texts = read_records(data_dir / "narratives.jsonl", kind="text")
        data.forget_text = [t for t in texts if group_of(t.id) in forget_people]
        data.heldout_text = [t for t in texts if group_of(t.id) in holdout_people]
        data.sources.update(forget_text="narratives (forget people)", heldout_text="narratives (holdout people)")
    if (data_dir / "canaries.jsonl").is_file():
        canaries = read_canaries(data_dir / "canaries.jsonl")
        data.canaries = [c for c in canaries if c["person"] in forget_people]
        data.holdout_canaries = [c for c in canaries if c["person"] in holdout_people]
        data.sources.update(canaries="canaries (forget people)", holdout_canaries="canaries (holdout people)")
    return data
