"""Edit requests on training records: query modification and response correction.

An edit file is JSON Lines, one trained record per line with its replacement:
``{"id": ..., "question": ..., "answer": ..., "new_question": ...}`` (query modification: the
same answer now belongs to another question) or ``{..., "new_answer": ...}`` (response
correction: the question's answer was wrong). Every line of a file is of one kind.

The built-in benchmark derives both kinds for the people of each forget split
(:func:`benchmark_edits`): corrected phone numbers, and email addresses that turn out to be
work addresses (so the old question should no longer be answered with them).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

from forgetkit.data.readers import jsonl_rows
from forgetkit.data.records import QARecord
from forgetkit.errors import DataError

EDIT_KINDS = ("query", "response")
FIELDS = ("id", "question", "answer", "new_question", "new_answer")


@dataclass(frozen=True)
class EditRecord:
    id: str
    question: str
    answer: str
    new_question: str | None = None
    new_answer: str | None = None

    @property
    def kind(self) -> str:
        return "query" if self.new_question is not None else "response"

    def original(self) -> QARecord:
        return QARecord(self.question, self.answer, self.id)

    def edited(self) -> QARecord:
        return QARecord(self.new_question or self.question, self.new_answer or self.answer, self.id)

    def to_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if v is not None}


def read_edits(path: str | Path) -> list[EditRecord]:
    """Read and validate an edit file (JSONL); errors name the file, line and field."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "file not found")
    if path.suffix.lower() != ".jsonl":
        raise DataError(path, "edit files are JSON Lines (.jsonl)")
    edits, kinds, seen = [], set(), set()
    for row, where in jsonl_rows(path):
        if not isinstance(row, dict):
            raise DataError(path, "expected a JSON object", **where)
        for name in row:
            if name not in FIELDS:
                raise DataError(path, f"unknown field (known: {', '.join(FIELDS)})", field=name, **where)
        for name in ("id", "question", "answer"):
            if not isinstance(row.get(name), str) or not row[name].strip():
                raise DataError(path, "missing or not a non-empty string", field=name, **where)
        present = [n for n in ("new_question", "new_answer") if row.get(n) is not None]
        if len(present) != 1:
            raise DataError(path, "give exactly one of new_question (query modification) and new_answer "
                                  "(response correction)", field="new_question", **where)
        if not isinstance(row[present[0]], str) or not row[present[0]].strip():
            raise DataError(path, "not a non-empty string", field=present[0], **where)
        if row["id"] in seen:
            raise DataError(path, "duplicate id", field="id", **where)
        seen.add(row["id"])
        edit = EditRecord(row["id"], row["question"], row["answer"], row.get("new_question"), row.get("new_answer"))
        kinds.add(edit.kind)
        if len(kinds) > 1:
            raise DataError(path, "mixes query modifications and response corrections (one kind per file)",
                            field=present[0], **where)
        edits.append(edit)
    if not edits:
        raise DataError(path, "no edit records")
    return edits


def _digest(text: str) -> int:
    return int(hashlib.sha256(text.encode()).hexdigest(), 16)


def benchmark_edits(forget: list[QARecord], kind: str) -> list[EditRecord]:
    """The benchmark's edits for the people of a forget split: each person's phone number corrected
    (``response``), or each person's email address reassigned to a work-address question (``query``)."""
    if kind not in EDIT_KINDS:
        raise ValueError(f"edit kind must be one of {EDIT_KINDS}")
    edits = []
    for r in forget:
        if kind == "response" and r.id.endswith("-phone"):
            old = re.search(r"555-(\d{4})", r.answer)
            if old is None:
                continue
            number = (int(old.group(1)) + 1 + _digest(r.id) % 9998) % 10000  # never the old number
            edits.append(EditRecord(r.id, r.question, r.answer,
                                    new_answer=r.answer.replace(old.group(0), f"555-{number:04d}")))
        elif kind == "query" and r.id.endswith("-email") and " email address of " in r.question:
            edits.append(EditRecord(r.id, r.question, r.answer,
                                    new_question=r.question.replace(" email address of ", " work email address of ")))
    return edits
