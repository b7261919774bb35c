"""One teacher-forced pass that feeds every loss-based metric.

For each tokenised example (``input_ids`` and ``labels`` with -100 outside the scored part) a
single forward pass yields, at every scored position: the log-probability of the label, whether
the argmax equals it, and the mean and standard deviation of ``log p`` under the model's own
next-token distribution (Min-K%++ needs them). Everything else (NLL, probability, truth ratio,
MIA scores, extraction strength) is arithmetic on these arrays.

Examples are sorted by length and batched with right padding, so that a batch wastes little on
padding; the results come back in input order, in float64, identical to a pass with batch size 1
up to float32 rounding (the speed benchmark checks this). The output head runs only at the
labelled positions (``forgetkit.models.logits``), for models whose forward takes
``logits_to_keep``: a chat prompt is most of a sequence, and a real vocabulary makes the head and
the full-vocabulary statistics the costliest part of a pass. The answer variants of one question
(its answer, paraphrase, perturbed answers) share their prompt: it runs once, and the answers are
scored on a copy of its KV cache (:func:`prompt_groups`), so a chat prompt's tokens are not
recomputed for every variant.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from forgetkit.data.formatting import IGNORE_INDEX, collate
from forgetkit.models.logits import labelled_logits_mask, takes_logits_to_keep


@dataclass
class TokenStats:
    """Per-scored-token statistics of one example (arrays of equal length n ≥ 1)."""

    logprobs: np.ndarray  # log p(label_t), float64
    correct: np.ndarray  # argmax_t == label_t, bool
    mu: np.ndarray  # Σ_v p_v log p_v at t
    sigma: np.ndarray  # sqrt(Σ_v p_v (log p_v − mu)²) at t

    @property
    def n_tokens(self) -> int:
        return int(self.logprobs.size)

    @property
    def nll(self) -> float:
        """Summed negative log-likelihood of the scored tokens."""
        return float(-self.logprobs.sum())

    @property
    def avg_nll(self) -> float:
        """Mean negative log-likelihood per scored token."""
        return float(-self.logprobs.mean())


def _model_device(model) -> torch.device:
    return next(model.parameters()).device


# Sharing a prompt's cache costs a second forward call per batch; it pays where compute, not per-call
# overhead, is the cost (benchmarks/shared_prompts.py, docs/results.md: 0.59-0.66x the time on SmolLM2-135M,
# 1.23-1.28x on the 0.8 M-parameter tiny model), so by default it is used from this model size up.
SHARE_PROMPTS_MIN_PARAMETERS = 10_000_000


def _shares_prompts(model, share_prompts: bool | None) -> bool:
    if share_prompts is not None:
        return share_prompts
    return sum(p.numel() for p in model.parameters()) >= SHARE_PROMPTS_MIN_PARAMETERS


def _stats(logits: torch.Tensor, targets: torch.Tensor, counts: list[int]) -> list[TokenStats]:
    """Each example's statistics from the ``[n, V]`` logits at its labelled positions (``counts[i]`` rows each)."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    label_logp = logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    correct = logp.argmax(-1) == targets
    p = logp.exp()
    mu = (p * logp).sum(-1)
    sigma = (p * (logp - mu.unsqueeze(-1)).square()).sum(-1).sqrt()  # two-pass: no cancellation of E[x²] − μ²
    parts = zip(*(t.split(counts) for t in (label_logp.double(), correct, mu.double(), sigma.double())), strict=True)
    return [TokenStats(logprobs=lp.cpu().numpy(), correct=ok.cpu().numpy(), mu=m.cpu().numpy(),
                       sigma=sd.cpu().numpy()) for lp, ok, m, sd in parts]


def _shared_prompt(example: dict) -> int:
    """How many leading tokens no scored logit sits on: the prompt up to (not including) the position that
    predicts the first label. Every answer variant of one question shares them."""
    first = next(t for t, label in enumerate(example["labels"]) if label != IGNORE_INDEX)
    return first - 1


def prompt_groups(examples: Sequence[dict]) -> tuple[list[list[int]], list[int]]:
    """``(groups, alone)``: the indices of examples sharing a prompt prefix (two or more per group, in input
    order), and those that share theirs with no other example."""
    by_prompt: dict[tuple, list[int]] = {}
    for i, ex in enumerate(examples):
        cut = _shared_prompt(ex)
        if cut > 0:
            by_prompt.setdefault(tuple(ex["input_ids"][:cut]), []).append(i)
    groups = [g for g in by_prompt.values() if len(g) > 1]
    shared = {i for g in groups for i in g}
    return groups, [i for i in range(len(examples)) if i not in shared]


def _score_shared(model, examples: Sequence[dict], groups: list[list[int]], pad_token_id: int,
                  device) -> list[TokenStats]:
    """The statistics of every member of ``groups`` (in group order): each group's prompt runs once (left-padded
    among the groups, with its own positions), its KV cache is copied to each member, and only the answers run
    on it."""
    cuts = [_shared_prompt(examples[g[0]]) for g in groups]
    width = max(cuts)
    ids = torch.full((len(groups), width), pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(groups), width), dtype=torch.long)
    for row, (g, cut) in enumerate(zip(groups, cuts, strict=True)):
        ids[row, width - cut:] = torch.tensor(examples[g[0]]["input_ids"][:cut])
        mask[row, width - cut:] = 1
    ids, mask = ids.to(device), mask.to(device)
    cache = model(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
                  use_cache=True, logits_to_keep=1).past_key_values
    rows = [row for row, g in enumerate(groups) for _ in g]
    cache.batch_select_indices(torch.tensor(rows, device=device))  # each member gets its prompt's cache
    answers = collate([{k: examples[i][k][cuts[row]:] for k in ("input_ids", "labels")}
                       for row, g in enumerate(groups) for i in g], pad_token_id)
    length = answers["input_ids"].shape[1]
    positions = torch.tensor([cuts[row] for row in rows])[:, None] + torch.arange(length)
    labels = answers["labels"][:, 1:].to(device)
    scored = labels != IGNORE_INDEX
    logits = model(input_ids=answers["input_ids"].to(device),
                   attention_mask=torch.cat([mask[rows], answers["attention_mask"].to(device)], dim=1),
                   position_ids=positions.to(device), past_key_values=cache, use_cache=False,
                   logits_to_keep=labelled_logits_mask(answers["labels"]).to(device)).logits
    return _stats(logits, labels[scored], scored.sum(1).tolist())


@torch.no_grad()
def score_examples(
    model,
    examples: Sequence[dict],
    pad_token_id: int,
    batch_size: int = 32,
    progress=None,
    labelled_positions_only: bool = True,
    share_prompts: bool | None = None,
) -> list[TokenStats]:
    """Token statistics of each example, in input order.

    ``examples`` are dicts with ``input_ids`` and ``labels`` (as from ``tokenize_qa``); an
    example must have at least one scored label. ``progress`` is an optional tqdm bar,
    advanced by the number of examples of each batch. ``labelled_positions_only=False`` computes
    the logits at every position (the reference the tests compare with). With ``share_prompts`` (None: for
    models of ``SHARE_PROMPTS_MIN_PARAMETERS`` or more; only for models that take ``logits_to_keep``),
    examples that share a prompt (a question's answer variants) run it once and score their answers on its
    KV cache (:func:`prompt_groups`).
    """
    model.eval()
    device = _model_device(model)
    keep_only = labelled_positions_only and takes_logits_to_keep(model)
    for i, ex in enumerate(examples):
        if all(label == IGNORE_INDEX for label in ex["labels"][1:]):
            raise ValueError(f"example {i} has no scored token")
    share = keep_only and _shares_prompts(model, share_prompts)
    groups, alone = prompt_groups(examples) if share else ([], list(range(len(examples))))
    out: list[TokenStats | None] = [None] * len(examples)
    order = sorted(alone, key=lambda i: -len(examples[i]["input_ids"]))
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        batch = collate([examples[i] for i in chunk], pad_token_id)
        labels = batch["labels"][:, 1:].to(device)  # position t's logits predict label t + 1
        mask = labels != IGNORE_INDEX
        inputs = {"input_ids": batch["input_ids"].to(device), "attention_mask": batch["attention_mask"].to(device)}
        if keep_only:  # the head at the labelled positions only: [n_labelled, V], row-major
            logits = model(**inputs, logits_to_keep=labelled_logits_mask(batch["labels"]).to(device)).logits
        else:
            logits = model(**inputs).logits[:, :-1][mask]
        for i, stats in zip(chunk, _stats(logits, labels[mask], mask.sum(1).tolist()), strict=True):
            out[i] = stats
        if progress is not None:
            progress.update(len(chunk))
    groups.sort(key=lambda g: -len(examples[g[0]]["input_ids"]))
    start = 0
    while start < len(groups):  # groups together up to batch_size answers (at least one group)
        end, rows = start, 0
        while end < len(groups) and (end == start or rows + len(groups[end]) <= batch_size):
            rows, end = rows + len(groups[end]), end + 1
        chunk = groups[start:end]
        members = [i for g in chunk for i in g]
        for i, stats in zip(members, _score_shared(model, examples, chunk, pad_token_id, device), strict=True):
            out[i] = stats
        if progress is not None:
            progress.update(len(members))
        start = end
    return out  # type: ignore[return-value]
