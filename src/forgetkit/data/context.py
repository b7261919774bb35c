"""What a deployment places around every question: a system prompt, demonstration turns, an attacker's
lead-up turns and the first words of the answer.

Input-based unlearning (a guardrail system prompt, in-context unlearning) changes no weight: it changes what
the model reads before a question. A :class:`PromptContext` is that change as data. It travels with the
tokenizer (:func:`with_context` gives a copy of the tokenizer that carries it), so every prompt the
formatting module renders (training, scoring, generation, membership inference, attacks) is the question
behind the same context, and no metric can forget to apply it.

- ``system``: a system prompt (the chat template's system turn; without a template, a leading paragraph);
- ``shots``: demonstration turns ``(question, answer)``; ``shots_per_question = 0`` places them all before
  every question, ``k > 0`` the ``k`` whose questions are nearest the asked one (TF-IDF cosine over word
  uni- and bigrams, scikit-learn), most similar last; ``fixed_shots`` come after them, before every question;
- ``lead``: turns placed before one particular question (an attacker's multi-turn lead-up), by question;
- ``prefill``: the start of the assistant's answer for one particular question (a completion attack).

A context is saved as JSON (:meth:`PromptContext.to_dict`, :func:`read_context`); it holds the text it shows
the model. Texts scored as language modelling (narratives, canaries, held-out text) are raw completions,
without the context.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field, fields
from pathlib import Path

from forgetkit.errors import DataError

CONTEXT_ATTRIBUTE = "forgetkit_context"
CONTEXT_FILE = "context.json"  # in the directory an input-based unlearner writes
Turn = tuple[str, str]


@dataclass
class PromptContext:
    system: str | None = None
    shots: list[Turn] = field(default_factory=list)
    shots_per_question: int = 0
    fixed_shots: list[Turn] = field(default_factory=list)
    lead: dict[str, list[Turn]] = field(default_factory=dict)
    prefill: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.shots = [tuple(t) for t in self.shots]
        self.fixed_shots = [tuple(t) for t in self.fixed_shots]
        self.lead = {q: [tuple(t) for t in turns] for q, turns in self.lead.items()}
        self._chosen: dict[str, list[Turn]] = {}
        self._index = None

    def turns(self, question: str) -> list[Turn]:
        """The turns before ``question``: its chosen shots, the fixed shots, then its lead-up."""
        return self._shots_for(question) + self.fixed_shots + self.lead.get(question, [])

    def _shots_for(self, question: str) -> list[Turn]:
        if not self.shots or self.shots_per_question <= 0 or self.shots_per_question >= len(self.shots):
            return list(self.shots)
        if question not in self._chosen:
            import numpy as np

            if self._index is None:
                from sklearn.feature_extraction.text import TfidfVectorizer

                vectorizer = TfidfVectorizer(ngram_range=(1, 2), lowercase=True)
                self._index = (vectorizer, vectorizer.fit_transform([q for q, _ in self.shots]))
            vectorizer, matrix = self._index
            scores = (matrix @ vectorizer.transform([question]).T).toarray().ravel()
            best = np.argsort(-scores, kind="stable")[: self.shots_per_question]
            self._chosen[question] = [self.shots[i] for i in best[::-1]]  # the most similar nearest the question
        return self._chosen[question]

    def stacked(self, lead: dict[str, list[Turn]] | None = None, prefill: dict[str, str] | None = None
                ) -> PromptContext:
        """This context with more per-question lead-up turns and answer prefixes (an attack on top of it)."""
        merged_lead = {q: list(t) for q, t in self.lead.items()}
        for q, turns in (lead or {}).items():
            merged_lead[q] = merged_lead.get(q, []) + list(turns)
        return PromptContext(self.system, list(self.shots), self.shots_per_question, list(self.fixed_shots),
                             merged_lead, {**self.prefill, **(prefill or {})})

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, data: dict, where: str = "context") -> PromptContext:
        """A context from :meth:`to_dict`'s JSON; a one-line error naming the field that is wrong."""
        if not isinstance(data, dict):
            raise DataError(where, "must be a JSON object")
        known = {f.name for f in fields(cls)}
        for key in data:
            if key not in known:
                raise DataError(where, f"unknown field (known: {', '.join(sorted(known))})", field=key)
        for key in ("shots", "fixed_shots"):
            for i, turn in enumerate(data.get(key, [])):
                if not (isinstance(turn, (list, tuple)) and len(turn) == 2 and all(isinstance(s, str) for s in turn)):
                    raise DataError(where, "each turn must be a [question, answer] pair of strings", record=i,
                                    field=key)
        if data.get("system") is not None and not isinstance(data["system"], str):
            raise DataError(where, "must be a string", field="system")
        if not isinstance(data.get("shots_per_question", 0), int) or data.get("shots_per_question", 0) < 0:
            raise DataError(where, "must be an integer ≥ 0", field="shots_per_question")
        return cls(**data)


def with_context(tokenizer, context: PromptContext | None):
    """A shallow copy of ``tokenizer`` whose rendered prompts carry ``context`` (None: the tokenizer's own
    context removed). The tokenizer given is unchanged."""
    clone = copy.copy(tokenizer)
    setattr(clone, CONTEXT_ATTRIBUTE, context)
    return clone


def prompt_context(tokenizer) -> PromptContext | None:
    """The context ``tokenizer`` carries (None for a plain tokenizer)."""
    return getattr(tokenizer, CONTEXT_ATTRIBUTE, None)


def read_context(directory: str | Path) -> PromptContext:
    """The context an input-based unlearner wrote into ``directory`` (one-line error when it is not one)."""
    path = Path(directory) / CONTEXT_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(path, f"not a forgetkit context ({exc})") from None
    return PromptContext.from_dict(data, where=str(path))
