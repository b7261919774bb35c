"""IdkDPO (TOFU): DPO that prefers an "I don't know" answer over the forget answer."""

from __future__ import annotations

from dataclasses import dataclass

from forgetkit.methods import losses
from forgetkit.methods.base import Method, UnlearnBatch, forward, register


@register
@dataclass
class IdkDPO(Method):
    beta: float = 0.1

    name = "idk_dpo"
    forget_term = "idk_dpo"
    summary = "L = -γ·(2/β)·log σ(β·(Δ_idk - Δ_f)) + α·CE(D_r), win = a refusal"
    needs_reference = True
    alternate_answers = "idk"

    def parts(self, model, batch: UnlearnBatch, reference=None):
        win, lose = batch.alternate, batch.forget
        win_nll, _ = losses.sequence_nll(forward(model, win).logits, win["labels"])
        win_ref, _ = losses.sequence_nll(reference(model, win).logits, win["labels"])
        lose_nll, _ = losses.sequence_nll(forward(model, lose).logits, lose["labels"])
        lose_ref, _ = losses.sequence_nll(reference(model, lose).logits, lose["labels"])
        yield self.term(self.gamma, losses.dpo_loss(win_nll, win_ref, lose_nll, lose_ref, self.beta), "idk_dpo")
        yield self.term(self.alpha, self.retain_ce(model, batch), "retain_ce")
