"""Batched greedy generation of answers and continuations, and exact-match scoring of answers.

Question prompts are formatted exactly as in training (``forgetkit.data.formatting``); every
prompt is left-padded so that a whole batch generates at once.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from forgetkit.data.formatting import pad_id, prompt_ids, stop_token_ids


def greedy_answers(
    model,
    tokenizer,
    questions: Sequence[str],
    max_new_tokens: int = 48,
    batch_size: int = 64,
) -> list[str]:
    """The model's greedy answer to each question (special tokens removed, stripped)."""
    prompts = [prompt_ids(tokenizer, q) for q in questions]
    return [t.strip() for t in greedy_continuations(model, tokenizer, prompts, max_new_tokens, batch_size)]


@torch.no_grad()
def greedy_continuations(
    model,
    tokenizer,
    prompts: Sequence[list[int]],
    max_new_tokens: int,
    batch_size: int = 64,
    progress=None,
) -> list[str]:
    """Greedy continuation of each tokenised prompt (KV cache on; special tokens removed), stopping
    at the chat template's end of turn or EOS (``stop_token_ids``).

    Prompts are left-padded, and batched in order of length so that a batch wastes little on
    padding; results come back in input order. ``progress`` is an optional tqdm bar.
    """
    model.eval()
    device = next(model.parameters()).device
    pad = pad_id(tokenizer)
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    out: list[str] = [""] * len(prompts)
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        encoded = [list(prompts[i]) for i in chunk]
        width = max(len(e) for e in encoded)
        ids = torch.tensor([[pad] * (width - len(e)) + e for e in encoded], device=device)
        mask = torch.tensor([[0] * (width - len(e)) + [1] * len(e) for e in encoded], device=device)
        generated = model.generate(
            input_ids=ids,
            attention_mask=mask,
            do_sample=False,
            max_new_tokens=max_new_tokens,
            pad_token_id=pad,
            eos_token_id=stop_token_ids(tokenizer),
            use_cache=True,
        )
        for i, text in zip(chunk, tokenizer.batch_decode(generated[:, width:], skip_special_tokens=True),
                           strict=True):
            out[i] = text
        if progress is not None:
            progress.update(len(chunk))
    return out


def normalise_answer(text: str) -> str:
    """Whitespace-collapsed, stripped text: what exact match compares."""
    return " ".join(text.split())


def exact_match(predictions: Sequence[str], references: Sequence[str]) -> list[bool]:
    """Per-example exact match after whitespace normalisation."""
    return [normalise_answer(p) == normalise_answer(r) for p, r in zip(predictions, references, strict=True)]
