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
the full-vocabulary statistics the costliest part of a pass.
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
    labelled_positions_only: bool = True,
) -> list[TokenStats]:
    """Token statistics of each example, in input order.

    ``examples`` are dicts with ``input_ids`` and ``labels`` (as from ``tokenize_qa``); an
    example must have at least one scored label. ``progress`` is an optional tqdm bar,
    advanced by the number of examples of each batch. ``labelled_positions_only=False`` computes
    the logits at every position (the reference the tests compare with).
    """
    model.eval()
    device = _model_device(model)
    keep_only = labelled_positions_only and takes_logits_to_keep(model)
    order = sorted(range(len(examples)), key=lambda i: -len(examples[i]["input_ids"]))
    out: list[TokenStats | None] = [None] * len(examples)
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
        logp = torch.log_softmax(logits.float(), dim=-1)
        targets = labels[mask]
        label_logp = logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
        correct = logp.argmax(-1) == targets
        p = logp.exp()
        mu = (p * logp).sum(-1)
        second = (p * logp.square()).sum(-1)
        sigma = (second - mu.square()).clamp(min=0).sqrt()
        counts = mask.sum(1).tolist()
        parts = zip(*(t.split(counts) for t in (label_logp.double(), correct, mu.double(), sigma.double())),
                    strict=True)
        for i, n, (lp, ok, m, sd) in zip(chunk, counts, parts, strict=True):
            if n == 0:
                raise ValueError(f"example {i} has no scored token")
            out[i] = TokenStats(logprobs=lp.cpu().numpy(), correct=ok.cpu().numpy(), mu=m.cpu().numpy(),
                                sigma=sd.cpu().numpy())
        if progress is not None:
            progress.update(len(chunk))
    return out  # type: ignore[return-value]
