"""Record types of forgetkit's data: question-answer pairs and plain text.

Every set (forget, retain, holdout, utility) is a list of one of these. Field names in user
files can differ from ours; :class:`FieldMap` maps ours to theirs (``question_key=prompt``).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields

from forgetkit.io import fingerprint


@dataclass(frozen=True)
class QARecord:
    """A question with its answer, plus the optional variants TOFU-style metrics use."""

    question: str
    answer: str
    id: str
    paraphrased_answer: str | None = None
    perturbed_answer: tuple[str, ...] = ()
    paraphrased_question: str | None = None
    vague_answer: str | None = None  # a privacy-free answer (ReLearn-style augmentation)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["perturbed_answer"] = list(self.perturbed_answer)
        return {k: v for k, v in d.items() if v is not None and v != []}

    def content_hash(self) -> str:
        """Hash of the question and answer text: identifies the record in logs without its text."""
        return text_hash(self.question + "\x1f" + self.answer)


@dataclass(frozen=True)
class TextRecord:
    """A plain text document (narratives, general text for perplexity)."""

    text: str
    id: str

    def to_dict(self) -> dict:
        return asdict(self)

    def content_hash(self) -> str:
        return text_hash(self.text)


Record = QARecord | TextRecord

# Fields each record kind requires; the others are optional.
REQUIRED_FIELDS = {"qa": ("question", "answer"), "text": ("text",)}
RECORD_TYPES = {"qa": QARecord, "text": TextRecord}


@dataclass(frozen=True)
class FieldMap:
    """Maps forgetkit's field names to the names used in a user's file.

    ``FieldMap.parse(["question_key=prompt", "answer_key=completion"])`` reads ``prompt`` as the
    question and ``completion`` as the answer. Unmapped fields keep their own names.
    """

    mapping: dict[str, str] = field(default_factory=dict)

    @classmethod
    def parse(cls, items: list[str] | dict[str, str] | None) -> FieldMap:
        from forgetkit.errors import ConfigError

        if not items:
            return cls()
        pairs = items.items() if isinstance(items, dict) else (_split_pair(s) for s in items)
        known = {f.name for t in RECORD_TYPES.values() for f in fields(t)}
        mapping = {}
        for key, value in pairs:
            ours = key[: -len("_key")] if key.endswith("_key") else key
            if ours not in known:
                raise ConfigError(f"unknown field '{key}' in field map (known: {', '.join(sorted(known))})")
            mapping[ours] = value
        return cls(mapping)

    def source(self, ours: str) -> str:
        """The name of our field ``ours`` in the user's file."""
        return self.mapping.get(ours, ours)


def _split_pair(item: str) -> tuple[str, str]:
    from forgetkit.errors import ConfigError

    if "=" not in item:
        raise ConfigError(f"field map entry '{item}' is not of the form name=column")
    key, value = item.split("=", 1)
    return key.strip(), value.strip()


def group_of(record_id: str) -> str:
    """The group a record belongs to: its id up to the first ``-`` (``"p0042-birth_date"`` → ``"p0042"``). In the
    built-in benchmark a group is a person, whose records are forgotten, held out and sharded together; a user's
    records with ids of no such shape are each their own group."""
    return record_id.split("-", 1)[0]


def text_hash(text: str) -> str:
    """Short, stable SHA-256 hex digest of a text (16 hex characters)."""
    return fingerprint([text.encode("utf-8")])


def records_hash(records: list[Record]) -> str:
    """Content hash of a whole set, independent of how it was stored."""
    return fingerprint(json.dumps(r.to_dict(), sort_keys=True, ensure_ascii=False).encode("utf-8") + b"\n"
                       for r in records)
