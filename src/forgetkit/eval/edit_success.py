"""Did an unlearning or edit request take? Greedy answers scored by exact match (normalised).

- removal: the share of forget questions whose trained answer is no longer produced;
- response correction: the share of questions answered with the corrected answer;
- query modification: the share of records whose answer now comes for the new question and no
  longer for the old one.

For edits, TOFU's answer probability of the edited and of the original pairs shows the direction
of a change too small to flip a greedy answer.
"""

from __future__ import annotations

from collections.abc import Sequence

from forgetkit.data.edits import EditRecord
from forgetkit.data.formatting import pad_id
from forgetkit.data.records import QARecord
from forgetkit.eval.generation import exact_match, greedy_answers


def _mean(flags: Sequence[bool]) -> float:
    return sum(flags) / len(flags) if flags else float("nan")


def removal_success(model, tokenizer, forget: Sequence[QARecord], max_new_tokens: int = 40,
                    known: Sequence[bool] | None = None) -> dict:
    """With ``known`` (which answers the model produced before the request), also the success among those."""
    old = exact_match(greedy_answers(model, tokenizer, [r.question for r in forget], max_new_tokens),
                      [r.answer for r in forget])
    out = {"request": "removal", "count": len(forget), "success": _mean([not o for o in old]),
           "old_answer_rate": _mean(old), "answered": old}
    if known is not None:
        out["success_among_known"] = _mean([not o for o, k in zip(old, known, strict=True) if k])
        out["known"] = sum(known)
    return out


def answer_probability(model, tokenizer, records: Sequence[QARecord]) -> float:
    """Mean over records of exp(−mean token NLL of the answer given the question): TOFU's probability."""
    import torch

    from forgetkit.data.formatting import collate, tokenize_qa
    from forgetkit.influence.curvature import example_losses

    examples = tokenize_qa(tokenizer, records, 512, name="edit scoring").examples
    pad = pad_id(tokenizer)
    device = next(model.parameters()).device
    total = 0.0
    with torch.no_grad():
        for i in range(0, len(examples), 32):
            batch = {k: v.to(device) for k, v in collate(examples[i:i + 32], pad).items()}
            total += float(torch.exp(-example_losses(model.eval(), batch)).sum())
    return total / len(examples)


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
            "old_answer_rate": _mean(old),
            "new_pair_probability": answer_probability(model, tokenizer, [e.edited() for e in edits]),
            "old_pair_probability": answer_probability(model, tokenizer, [e.original() for e in edits])}
