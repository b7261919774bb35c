"""ReLearn (Xu et al., 2025): learn privacy-free answers to the forget questions, keep the retain set."""

from __future__ import annotations

from dataclasses import dataclass

from forgetkit.methods import losses
from forgetkit.methods.base import Method, UnlearnBatch, forward, register


@register
@dataclass
class ReLearn(Method):
    kl_weight: float = 1.0

    name = "relearn"
    summary = "L = γ·CE(D_aug) + α·CE(D_r) + kl_weight·KL(π_ref ‖ π_θ) on D_r; D_aug = vague answers"
    needs_reference = True
    alternate_answers = "vague"

    def loss(self, model, batch: UnlearnBatch, reference=None):
        aug_ce = losses.mean_nll(forward(model, batch.alternate).logits, batch.alternate["labels"])
        retain_logits = forward(model, batch.retain).logits
        retain_ce = losses.mean_nll(retain_logits, batch.retain["labels"])
        kl = losses.kl_ref_to_model(retain_logits, reference(model, batch.retain).logits, batch.retain["labels"])
        total, terms = self.combine(aug_ce, retain_ce, ("aug_ce", "retain_ce"))
        terms["retain_kl"] = float(kl.detach())
        return total + self.kl_weight * kl, terms
