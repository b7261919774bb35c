"""Did an unlearning or edit request take? Greedy answers scored by exact match (normalised).

- removal: the share of forget questions whose trained answer is no longer produced;
- response correction: the share of questions answered with the corrected answer;
- query modification: the share of records whose answer now comes for the new question and no
  longer for the old one.
"""

from __future__ import annotations

from collections.abc import Sequence

from forgetkit.data.edits import EditRecord
from forgetkit.data.records import QARecord
from forgetkit.eval.generation import exact_match, greedy_answers


def _mean(flags: Sequence[bool]) -> float:
    return sum(flags) / len(flags) if flags else float("nan")


def removal_success(model, tokenizer, forget: Sequence[QARecord], max_new_tokens: int = 40) -> dict:
    old = exact_match(greedy_answers(model, tokenizer, [r.question for r in forget], max_new_tokens),
                      [r.answer for r in forget])
    return {"request": "removal", "count": len(forget), "success": _mean([not o for o in old]),
            "old_answer_rate": _mean(old)}


def edit_success(model, tokenizer, edits: Sequence[EditRecord], max_new_tokens: int = 40) -> dict:
    old_answers = greedy_answers(model, tokenizer, [e.question for e in edits], max_new_tokens)
    old = exact_match(old_answers, [e.answer for e in edits])
    kind = edits[0].kind
    if kind == "response":
        new = exact_match(old_answers, [e.new_answer for e in edits])
        success = new
    else:
        new = exact_match(greedy_answers(model, tokenizer, [e.new_question for e in edits], max_new_tokens),
                          [e.answer for e in edits])
        success = [n and not o for n, o in zip(new, old, strict=True)]
    return {"request": kind, "count": len(edits), "success": _mean(success), "new_answer_rate": _mean(new),
            "old_answer_rate": _mean(old)}
