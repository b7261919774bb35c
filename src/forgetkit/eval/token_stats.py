"""One teacher-forced pass that feeds every loss-based metric.

For each tokenised example (``input_ids`` and ``labels`` with -100 outside the scored part) a
single forward pass yields, at every scored position: the log-probability of the label, whether
the argmax equals it, and the mean and standard deviation of ``log p`` under the model's own
next-token distribution (Min-K%++ needs them). Everything else (NLL, probability, truth ratio,
MIA scores, extraction strength) is arithmetic on these arrays.

Examples are sorted by length and batched with right padding, so that a batch wastes little on
padding; the results come back in input order, in float64, identical to a pass with batch size 1
up to float32 rounding (the speed benchmark checks this).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from forgetkit.data.formatting import IGNORE_INDEX, collate


@dataclass
class TokenStats:
    """Per-scored-token statistics of one example (arrays of equal length n ≥ 1)."""

    logprobs: np.ndarray  # log p(label_t), float64
    correct: np.ndarray  # argmax_t == label_t, bool
    mu: np.ndarray  # Σ_v p_v log p_v at t
    sigma: np.ndarray  # sqrt(Σ_v p_v (log p_v)² − mu²) at t

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


@torch.no_grad()
def score_examples(
    model,
    examples: Sequence[dict],
    pad_token_id: int,
    batch_size: int = 32,
    progress=None,
) -> list[TokenStats]:
    """Token statistics of each example, in input order.

    ``examples`` are dicts with ``input_ids`` and ``labels`` (as from ``tokenize_qa``); an
    example must have at least one scored label. ``progress`` is an optional tqdm bar,
    advanced by the number of examples of each batch.
    """
    model.eval()
    device = _model_device(model)
    order = sorted(range(len(examples)), key=lambda i: -len(examples[i]["input_ids"]))
    out: list[TokenStats | None] = [None] * len(examples)
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        batch = collate([examples[i] for i in chunk], pad_token_id)
        logits = model(input_ids=batch["input_ids"].to(device),
                       attention_mask=batch["attention_mask"].to(device)).logits
        labels = batch["labels"][:, 1:].to(device)
        logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
        mask = labels != IGNORE_INDEX
        safe = labels.clamp(min=0)
        label_logp = logp.gather(-1, safe.unsqueeze(-1)).squeeze(-1)
        correct = logp.argmax(-1) == safe
        p = logp.exp()
        mu = (p * logp).sum(-1)
        second = (p * logp.square()).sum(-1)
        sigma = (second - mu.square()).clamp(min=0).sqrt()
        for row, i in enumerate(chunk):
            m = mask[row]
            if not bool(m.any()):
                raise ValueError(f"example {i} has no scored token")
            out[i] = TokenStats(
                logprobs=label_logp[row][m].double().cpu().numpy(),
                correct=correct[row][m].cpu().numpy(),
                mu=mu[row][m].double().cpu().numpy(),
                sigma=sigma[row][m].double().cpu().numpy(),
            )
        if progress is not None:
            progress.update(len(chunk))
    return out  # type: ignore[return-value]
