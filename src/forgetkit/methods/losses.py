"""The loss terms unlearning methods are built from, on a batch's logits and answer labels.

Conventions: ``labels`` are -100 outside the answer (``forgetkit.data.formatting``) and are
shifted here, so position t's logits predict label t+1, as in Hugging Face causal LMs. ``logits``
are either the full ``[B, T, V]`` or the ``[n, V]`` logits at the n labelled positions only, row
by row (what ``methods.base.forward`` gets with ``logits_to_keep``; ``forgetkit.models.logits``):
every term below gives the same number from either.
NLL(y|x) is summed over the answer's tokens; Δ(x, y) = log π_θ(y|x) − log π_ref(y|x). The
formulas are those of ../shared/reference/methods.md (open-unlearning's definitions).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from forgetkit.data.formatting import IGNORE_INDEX


def _labelled(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The ``[n, V]`` logits at the labelled positions (given so already, or taken from ``[B, T, V]``)."""
    if logits.dim() == 2:
        return logits
    return logits[:, :-1][labels[:, 1:] != IGNORE_INDEX]


def _shifted(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(log-probs [n, V] in float32, targets [n], mask [B, T-1])`` at the n labelled positions."""
    mask = labels[:, 1:] != IGNORE_INDEX
    logp = F.log_softmax(_labelled(logits, labels).float(), dim=-1)
    return logp, labels[:, 1:][mask], mask


def sequence_nll(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(NLL summed over each sequence's answer tokens [B], answer token counts [B])``."""
    logp, targets, mask = _shifted(logits, labels)
    token_nll = -logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    rows = mask.nonzero()[:, 0]
    return torch.zeros(len(labels), dtype=token_nll.dtype, device=token_nll.device).index_add(0, rows, token_nll), \
        mask.sum(-1)


def mean_nll(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy averaged over all answer tokens of the batch (a causal LM's own loss)."""
    nll, counts = sequence_nll(logits, labels)
    return nll.sum() / counts.sum().clamp(min=1)


def kl_ref_to_model(logits: torch.Tensor, ref_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """KL(π_ref ‖ π_θ) of the next-token distributions, averaged over answer positions."""
    logp, _, mask = _shifted(logits, labels)
    ref_logp, _, _ = _shifted(ref_logits, labels)
    kl = (ref_logp.exp() * (ref_logp - logp)).sum(-1)
    return kl.sum() / mask.sum().clamp(min=1)


def npo_loss(nll: torch.Tensor, ref_nll: torch.Tensor, beta: float) -> torch.Tensor:
    """NPO: −(2/β)·mean log σ(−β·Δ), Δ = log π_θ − log π_ref = ref_nll − nll."""
    delta = ref_nll - nll
    return -(2 / beta) * F.logsigmoid(-beta * delta).mean()


def simnpo_loss(nll: torch.Tensor, counts: torch.Tensor, beta: float, delta: float) -> torch.Tensor:
    """SimNPO: −(2/β)·mean log σ(β·(NLL/|y| − δ)), reference-free and length-normalised.

    Written with NLL ≥ 0 as open-unlearning's code does: the loss falls as the forget answers'
    per-token NLL rises (methods.md writes the same with the log-likelihood's sign).
    """
    return -(2 / beta) * F.logsigmoid(beta * (nll / counts.clamp(min=1) - delta)).mean()


def dpo_loss(win_nll: torch.Tensor, win_ref_nll: torch.Tensor, lose_nll: torch.Tensor, lose_ref_nll: torch.Tensor,
             beta: float) -> torch.Tensor:
    """DPO on (win, lose) answers to the same question: −(2/β)·mean log σ(β·(Δ_win − Δ_lose))."""
    margin = (win_ref_nll - win_nll) - (lose_ref_nll - lose_nll)
    return -(2 / beta) * F.logsigmoid(beta * margin).mean()


def undial_loss(logits: torch.Tensor, ref_logits: torch.Tensor, labels: torch.Tensor, beta: float) -> torch.Tensor:
    """UNDIAL: cross-entropy of π_θ to softmax(z_ref − β·onehot(y_t)), averaged over answer positions."""
    logp, targets, mask = _shifted(logits, labels)
    ref = _labelled(ref_logits, labels).float()
    adjusted = ref - beta * F.one_hot(targets, ref.shape[-1]).to(ref.dtype)
    target_p = F.softmax(adjusted, dim=-1)
    ce = -(target_p * logp).sum(-1)
    return ce.sum() / mask.sum().clamp(min=1)


def masked_mse(hidden: torch.Tensor, target: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean over non-padding positions and hidden units of (hidden − target)² (RMU's distances)."""
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    squared = (hidden.float() - target.float()).square() * mask
    return squared.sum() / (mask.sum() * hidden.shape[-1]).clamp(min=1)
