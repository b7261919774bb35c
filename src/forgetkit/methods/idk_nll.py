"""IdkNLL (TOFU): teach "I don't know" answers to the forget questions."""

from __future__ import annotations

from dataclasses import dataclass

from forgetkit.methods.base import ForgetRetain, UnlearnBatch, register


@register
@dataclass
class IdkNLL(ForgetRetain):
    name = "idk_nll"
    forget_term = "idk_ce"
    summary = "L = γ·CE(q_f, refusal) + α·CE(D_r)"
    alternate_answers = "idk"

    def forget_loss(self, model, batch: UnlearnBatch, reference=None):
        return self.ce(model, batch.alternate)
