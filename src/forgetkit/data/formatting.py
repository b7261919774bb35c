"""Prompt formatting and tokenisation with answer-only labels.

A QA record becomes ``prompt + answer + end``. With a chat template, the prompt is the rendered
user turn plus the generation prompt, and the labelled answer is exactly what the template renders
for the assistant turn, cut after its end-of-turn marker (``Paris<|im_end|>`` for ChatML,
``Paris<|eot_id|>`` for Llama-3): one end of turn, never a second EOS after the template's trailing
newline. Without a template the prompt is ``Question: …\\nAnswer:`` and the answer ends in EOS.
Generation stops at the same end (``stop_token_ids``). Labels are the answer tokens and its end;
the prompt and padding are masked with -100 so that no loss or metric ever counts them.
A tokenizer that carries a :class:`~forgetkit.data.context.PromptContext` (input-based unlearning, an
attack) renders every question behind it; texts tokenised for language modelling are raw completions.
Records longer than ``max_length`` are truncated (answer end first) and counted, never
silently: a record whose prompt alone fills ``max_length`` keeps no answer and is dropped.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from forgetkit.data.context import prompt_context
from forgetkit.data.records import QARecord, TextRecord

IGNORE_INDEX = -100
PLAIN_TEMPLATE = "Question: {question}\nAnswer:"
log = logging.getLogger("forgetkit")


def has_chat_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def _messages(tokenizer, question: str) -> tuple[list[dict], str]:
    """The chat turns up to ``question`` (the tokenizer's :class:`PromptContext` around it, if it carries one)
    and the text the answer starts with (a context's prefill for this question, else empty)."""
    context = prompt_context(tokenizer)
    if context is None:
        return [{"role": "user", "content": question}], ""
    messages = [{"role": "system", "content": context.system}] if context.system else []
    for q, a in context.turns(question):
        messages += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
    return messages + [{"role": "user", "content": question}], context.prefill.get(question, "")


def format_prompt(tokenizer, question: str) -> str:
    """The text the model sees before its answer (after a context's prefill, when it has one)."""
    messages, prefill = _messages(tokenizer, question)
    if has_chat_template(tokenizer):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) + prefill
    text = ""
    for m in messages[:-1]:
        if m["role"] == "system":
            text += m["content"] + "\n\n"
        elif m["role"] == "user":
            text += PLAIN_TEMPLATE.format(question=m["content"])
        else:
            text += " " + m["content"] + "\n\n"
    return text + PLAIN_TEMPLATE.format(question=question) + (" " + prefill if prefill else "")


def _render_turn(tokenizer, question: str, answer: str) -> str:
    messages, prefill = _messages(tokenizer, question)
    content = f"{prefill} {answer}" if prefill else answer
    return tokenizer.apply_chat_template(messages + [{"role": "assistant", "content": content}], tokenize=False)


def _answer_text(tokenizer, question: str, answer: str, prompt: str) -> str:
    """The labelled text after the prompt: the rendered assistant turn up to and including its
    end-of-turn marker (trailing whitespace after it dropped), or ``" " + answer`` without a template."""
    if not has_chat_template(tokenizer):
        return " " + answer
    full = _render_turn(tokenizer, question, answer)
    if not full.startswith(prompt):
        return answer  # a template that rewrites earlier turns: fall back to the bare answer
    turn = full[len(prompt) :]
    at = turn.rfind(answer)
    if at < 0:  # the template changed the answer's text: keep what it rendered
        return turn.rstrip()
    return turn[: at + len(answer)] + turn[at + len(answer) :].rstrip()


def end_of_turn_text(tokenizer) -> str:
    """What the chat template renders right after an assistant answer, trailing whitespace dropped
    (``<|im_end|>``, ``<|eot_id|>``); empty without a template or when the template adds nothing."""
    if not has_chat_template(tokenizer):
        return ""
    probe = "forgetkit probe answer"
    prompt = format_prompt(tokenizer, "forgetkit probe question")
    full = _render_turn(tokenizer, "forgetkit probe question", probe)
    at = full.rfind(probe)
    return full[at + len(probe) :].rstrip() if full.startswith(prompt) and at >= 0 else ""


_STOP_IDS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def stop_token_ids(tokenizer) -> list[int]:
    """Token ids that end an answer in generation: the template's end of turn (when it is one
    token) and EOS. Rendered once per tokenizer and template."""
    state = (getattr(tokenizer, "chat_template", None), tokenizer.eos_token_id)
    cached = _STOP_IDS.get(tokenizer)
    if cached is not None and cached[0] == state:
        return cached[1]
    ids: list[int] = []
    end = end_of_turn_text(tokenizer)
    if end:
        end_ids = tokenizer(end, add_special_tokens=False)["input_ids"]
        if len(end_ids) == 1:
            ids.append(end_ids[0])
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(tokenizer.eos_token_id)
    _STOP_IDS[tokenizer] = (state, ids)
    return ids


def prompt_ids(tokenizer, question: str) -> list[int]:
    """Token ids of the prompt (with BOS where the tokenizer adds one, and no chat template does)."""
    prompt = format_prompt(tokenizer, question)
    return tokenizer(prompt, add_special_tokens=not has_chat_template(tokenizer))["input_ids"]


def encode_qa(tokenizer, question: str, answer: str) -> tuple[list[int], list[int]]:
    """``(input_ids, labels)`` of one QA pair, untruncated; labels are -100 outside the answer.

    The answer ends in the template's end of turn; EOS is appended only when it ends in neither
    (no template, or a template that renders nothing after the answer)."""
    prompt = format_prompt(tokenizer, question)
    p_ids = prompt_ids(tokenizer, question)
    a_ids = tokenizer(_answer_text(tokenizer, question, answer, prompt), add_special_tokens=False)["input_ids"]
    if not a_ids or a_ids[-1] not in stop_token_ids(tokenizer):
        if tokenizer.eos_token_id is not None:
            a_ids = a_ids + [tokenizer.eos_token_id]
    return p_ids + a_ids, [IGNORE_INDEX] * len(p_ids) + a_ids


@dataclass
class TokenizedSet:
    """Tokenised examples of one set, with the bookkeeping of what truncation did."""

    examples: list[dict] = field(default_factory=list)  # each: input_ids, labels, index
    n_truncated: int = 0
    n_dropped: int = 0

    def __len__(self) -> int:
        return len(self.examples)


def tokenize_qa(
    tokenizer,
    records: Sequence[QARecord],
    max_length: int,
    answer_field: str = "answer",
    question_field: str = "question",
    name: str = "set",
) -> TokenizedSet:
    """Tokenise QA records, using ``answer_field`` (e.g. ``paraphrased_answer``) as the answer."""
    out = TokenizedSet()
    for i, rec in enumerate(records):
        ids, labels = encode_qa(tokenizer, getattr(rec, question_field), getattr(rec, answer_field))
        _add(out, ids, labels, i, max_length)
    _report(out, name, max_length)
    return out


def tokenize_text(tokenizer, records: Sequence[TextRecord], max_length: int, name: str = "set") -> TokenizedSet:
    """Tokenise plain texts for language modelling: every token is a label, EOS appended."""
    out = TokenizedSet()
    for i, rec in enumerate(records):
        ids = tokenizer(rec.text, add_special_tokens=True)["input_ids"] + [tokenizer.eos_token_id]
        _add(out, ids, list(ids), i, max_length)
    _report(out, name, max_length)
    return out


def _add(out: TokenizedSet, ids: list[int], labels: list[int], index: int, max_length: int) -> None:
    if len(ids) > max_length:
        out.n_truncated += 1
        ids, labels = ids[:max_length], labels[:max_length]
        if all(lab == IGNORE_INDEX for lab in labels[1:]):
            out.n_dropped += 1
            return
    out.examples.append({"input_ids": ids, "labels": labels, "index": index})


def _report(out: TokenizedSet, name: str, max_length: int) -> None:
    if out.n_truncated:
        log.warning(
            "%s: %d record(s) longer than max_length=%d were truncated (%d dropped: no answer token left)",
            name,
            out.n_truncated,
            max_length,
            out.n_dropped,
        )


def pad_id(tokenizer) -> int:
    """The id batches are padded with: the tokenizer's pad token, else its EOS (GPT-2 and Llama ship none)."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def collate(examples: Sequence[dict], pad_token_id: int, padding_side: str = "right") -> dict[str, torch.Tensor]:
    """Pad a batch: ``input_ids``, ``attention_mask``, ``labels`` (padding labelled -100)."""
    width = max(len(e["input_ids"]) for e in examples)
    ids, mask, labels = [], [], []
    for e in examples:
        n = len(e["input_ids"])
        pad = width - n
        if padding_side == "left":
            ids.append([pad_token_id] * pad + list(e["input_ids"]))
            mask.append([0] * pad + [1] * n)
            labels.append([IGNORE_INDEX] * pad + list(e["labels"]))
        else:
            ids.append(list(e["input_ids"]) + [pad_token_id] * pad)
            mask.append([1] * n + [0] * pad)
            labels.append(list(e["labels"]) + [IGNORE_INDEX] * pad)
    return {
        "input_ids": torch.tensor(ids, dtype=torch.long),
        "attention_mask": torch.tensor(mask, dtype=torch.long),
        "labels": torch.tensor(labels, dtype=torch.long),
    }
