"""Batched greedy generation of answers, and exact-match scoring of them.

Prompts are formatted exactly as in training (``forgetkit.data.formatting``), left-padded
so that a whole batch generates at once.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from forgetkit.data.formatting import prompt_ids


@torch.no_grad()
def greedy_answers(
    model,
    tokenizer,
    questions: Sequence[str],
    max_new_tokens: int = 48,
    batch_size: int = 64,
) -> list[str]:
    """The model's greedy answer to each question (special tokens removed, stripped)."""
    model.eval()
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    answers: list[str] = []
    for start in range(0, len(questions), batch_size):
        encoded = [prompt_ids(tokenizer, q) for q in questions[start : start + batch_size]]
        width = max(len(e) for e in encoded)
        ids = torch.tensor([[pad] * (width - len(e)) + e for e in encoded], device=device)
        mask = torch.tensor([[0] * (width - len(e)) + [1] * len(e) for e in encoded], device=device)
        out = model.generate(
            input_ids=ids,
            attention_mask=mask,
            do_sample=False,
            max_new_tokens=max_new_tokens,
            pad_token_id=pad,
            eos_token_id=tokenizer.eos_token_id,
        )
        texts = tokenizer.batch_decode(out[:, width:], skip_special_tokens=True)
        answers.extend(t.strip() for t in texts)
    return answers


def normalise_answer(text: str) -> str:
    """Whitespace-collapsed, stripped text: what exact match compares."""
    return " ".join(text.split())


def exact_match(predictions: Sequence[str], references: Sequence[str]) -> list[bool]:
    """Per-example exact match after whitespace normalisation."""
    return [normalise_answer(p) == normalise_answer(r) for p, r in zip(predictions, references, strict=True)]
