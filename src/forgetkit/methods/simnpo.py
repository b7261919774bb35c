"""SimNPO (Fan et al., 2024): NPO without a reference model, on length-normalised likelihood."""

from __future__ import annotations

from dataclasses import dataclass

from forgetkit.methods import losses
from forgetkit.methods.base import ForgetRetain, UnlearnBatch, forward, register


@register
@dataclass
class SimNPO(ForgetRetain):
    gamma: float = 0.125
    beta: float = 4.5
    delta: float = 0.0

    name = "simnpo"
    forget_term = "simnpo"
    summary = "L = -γ·(2/β)·log σ(β·(NLL_f/|y| - δ)) + α·CE(D_r)"

    def forget_loss(self, model, batch: UnlearnBatch, reference=None):
        nll, counts = losses.sequence_nll(forward(model, batch.forget).logits, batch.forget["labels"])
        return losses.simnpo_loss(nll, counts, self.beta, self.delta)
