"""IdkDPO (TOFU): DPO that prefers an "I don't know" answer over the forget answer."""

from __future__ import annotations

from dataclasses import dataclass

from forgetkit.methods import losses
from forgetkit.methods.base import ForgetRetain, UnlearnBatch, register


@register
@dataclass
class IdkDPO(ForgetRetain):
    beta: float = 0.1

    name = "idk_dpo"
    forget_term = "idk_dpo"
    summary = "L = -γ·(2/β)·log σ(β·(Δ_idk - Δ_f)) + α·CE(D_r), win = a refusal"
    needs_reference = True
    alternate_answers = "idk"

    def forget_loss(self, model, batch: UnlearnBatch, reference=None):
        win_nll, win_ref = self.nll_and_reference(model, reference, batch.alternate)  # win: a refusal
        lose_nll, lose_ref = self.nll_and_reference(model, reference, batch.forget)
        return losses.dpo_loss(win_nll, win_ref, lose_nll, lose_ref, self.beta)
