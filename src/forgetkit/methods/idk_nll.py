"""IdkNLL (TOFU): teach "I don't know" answers to the forget questions."""

from __future__ import annotations

from dataclasses import dataclass

from forgetkit.methods import losses
from forgetkit.methods.base import Method, UnlearnBatch, forward, register


@register
@dataclass
class IdkNLL(Method):
    name = "idk_nll"
    forget_term = "idk_ce"
    summary = "L = γ·CE(q_f, refusal) + α·CE(D_r)"
    alternate_answers = "idk"

    def parts(self, model, batch: UnlearnBatch, reference=None):
        idk_ce = losses.mean_nll(forward(model, batch.alternate).logits, batch.alternate["labels"])
        yield self.term(self.gamma, idk_ce, "idk_ce")
        yield self.term(self.alpha, self.retain_ce(model, batch), "retain_ce")
