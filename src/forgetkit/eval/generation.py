"""Batched greedy generation of answers and continuations, and exact-match scoring of answers.

Question prompts are formatted exactly as in training (``forgetkit.data.formatting``); every
prompt is left-padded so that a whole batch generates at once. On models that take
``logits_to_keep`` (Hugging Face causal LMs) the greedy loop is forgetkit's own: a row that has
ended its turn leaves the batch (its KV cache rows are dropped), so one long answer does not
keep a whole batch computing; other models use their ``generate``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from forgetkit.data.formatting import pad_id, prompt_ids, stop_token_ids
from forgetkit.models.logits import takes_logits_to_keep


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
        if takes_logits_to_keep(model):
            generated = greedy_tokens(model, ids, mask, max_new_tokens, stop_token_ids(tokenizer))
        else:
            generated = model.generate(input_ids=ids, attention_mask=mask, do_sample=False,
                                       max_new_tokens=max_new_tokens, pad_token_id=pad,
                                       eos_token_id=stop_token_ids(tokenizer), use_cache=True)[:, width:].tolist()
        for i, text in zip(chunk, tokenizer.batch_decode(generated, skip_special_tokens=True), strict=True):
            out[i] = text
        if progress is not None:
            progress.update(len(chunk))
    return out


@torch.no_grad()
def greedy_tokens(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, max_new_tokens: int,
                  stop_ids: Sequence[int]) -> list[list[int]]:
    """Each left-padded row's greedy continuation, up to and including its first stop token (at most
    ``max_new_tokens``): ``model.generate``'s greedy tokens, with each finished row dropped from the batch and
    its KV cache, so the step costs only the rows still generating."""
    stops = torch.tensor(list(stop_ids), device=input_ids.device)
    out: list[list[int]] = [[] for _ in range(len(input_ids))]
    rows = torch.arange(len(input_ids), device=input_ids.device)  # which output row each batch row is
    positions = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    step = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=positions, use_cache=True,
                 logits_to_keep=1)
    cache, last = step.past_key_values, positions[:, -1:]
    for _ in range(max_new_tokens):
        token = step.logits[:, -1].argmax(-1)
        for row, t in zip(rows.tolist(), token.tolist(), strict=True):
            out[row].append(t)
        going = ~torch.isin(token, stops)
        if len(out[int(rows[0])]) == max_new_tokens or not bool(going.any()):
            break
        if not bool(going.all()):  # finished rows leave the batch
            keep = going.nonzero().squeeze(-1)
            cache.batch_select_indices(keep)
            rows, token, attention_mask, last = rows[keep], token[keep], attention_mask[keep], last[keep]
        attention_mask = torch.cat([attention_mask, attention_mask.new_ones((len(rows), 1))], dim=1)
        last = last + 1
        step = model(input_ids=token.unsqueeze(-1), attention_mask=attention_mask, position_ids=last,
                     past_key_values=cache, use_cache=True)
    return out


def normalise_answer(text: str) -> str:
    """Whitespace-collapsed, stripped text: what exact match compares."""
    return " ".join(text.split())


def exact_match(predictions: Sequence[str], references: Sequence[str]) -> list[bool]:
    """Per-example exact match after whitespace normalisation."""
    return [normalise_answer(p) == normalise_answer(r) for p, r in zip(predictions, references, strict=True)]
