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
    forget_term = "aug_ce"
    summary = "L = γ·CE(D_aug) + α·CE(D_r) + kl_weight·KL(π_ref ‖ π_θ) on D_r; D_aug = vague answers"
    needs_reference = True
    alternate_answers = "vague"

    def parts(self, model, batch: UnlearnBatch, reference=None):
        aug_ce = losses.mean_nll(forward(model, batch.alternate).logits, batch.alternate["labels"])
        yield self.term(self.gamma, aug_ce, "aug_ce")
        retain_logits = forward(model, batch.retain).logits  # one retain pass serves both retain terms
        retain_ce = losses.mean_nll(retain_logits, batch.retain["labels"])
        kl = losses.kl_ref_to_model(retain_logits, reference(model, batch.retain).logits, batch.retain["labels"])
        yield (self.alpha * retain_ce + self.kl_weight * kl,
               {"retain_ce": float(retain_ce.detach()), "retain_kl": float(kl.detach())})
