"""KL minimisation: gradient ascent on the forget set, KL to the reference model on the retain set."""

from __future__ import annotations

from dataclasses import dataclass

from forgetkit.methods import losses
from forgetkit.methods.base import Method, UnlearnBatch, forward, register


@register
@dataclass
class KL(Method):
    name = "kl"
    forget_term = "neg_forget_ce"
    summary = "L = -γ·CE(D_f) + α·KL(π_ref ‖ π_θ) on D_r"
    needs_reference = True

    def parts(self, model, batch: UnlearnBatch, reference=None):
        forget_ce = losses.mean_nll(forward(model, batch.forget).logits, batch.forget["labels"])
        yield self.term(self.gamma, -forget_ce, "neg_forget_ce")
        kl = losses.kl_ref_to_model(forward(model, batch.retain).logits, reference(model, batch.retain).logits,
                                    batch.retain["labels"])
        yield self.term(self.alpha, kl, "retain_kl")
