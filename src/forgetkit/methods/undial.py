"""UNDIAL (Dong et al., 2024): self-distillation towards the reference with the answer token's logit lowered."""

from __future__ import annotations

from dataclasses import dataclass

from forgetkit.methods import losses
from forgetkit.methods.base import ForgetRetain, UnlearnBatch, forward, register


@register
@dataclass
class UNDIAL(ForgetRetain):
    beta: float = 10.0

    name = "undial"
    forget_term = "undial"
    summary = "L = γ·CE(π_θ, softmax(z_ref - β·onehot(y))) on D_f + α·CE(D_r)"
    needs_reference = True

    def forget_loss(self, model, batch: UnlearnBatch, reference=None):
        return losses.undial_loss(forward(model, batch.forget).logits, reference(model, batch.forget).logits,
                                  batch.forget["labels"], self.beta)
