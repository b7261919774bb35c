"""UNDIAL (Dong et al., 2024): self-distillation towards the reference with the answer token's logit lowered."""

from __future__ import annotations

from dataclasses import dataclass

from forgetkit.methods import losses
from forgetkit.methods.base import Method, UnlearnBatch, forward, register


@register
@dataclass
class UNDIAL(Method):
    beta: float = 10.0

    name = "undial"
    forget_term = "undial"
    summary = "L = γ·CE(π_θ, softmax(z_ref - β·onehot(y))) on D_f + α·CE(D_r)"
    needs_reference = True

    def parts(self, model, batch: UnlearnBatch, reference=None):
        labels = batch.forget["labels"]
        distil = losses.undial_loss(forward(model, batch.forget).logits, reference(model, batch.forget).logits,
                                    labels, self.beta)
        yield self.term(self.gamma, distil, "undial")
        yield self.term(self.alpha, self.retain_ce(model, batch), "retain_ce")
