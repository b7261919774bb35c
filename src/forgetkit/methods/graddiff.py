"""Gradient difference: gradient ascent on the forget set, descent on the retain set."""

from __future__ import annotations

from dataclasses import dataclass

from forgetkit.methods import losses
from forgetkit.methods.base import Method, UnlearnBatch, forward, register


@register
@dataclass
class GradDiff(Method):
    name = "graddiff"
    forget_term = "neg_forget_ce"
    summary = "gradient difference: L = -γ·CE(D_f) + α·CE(D_r)"

    def parts(self, model, batch: UnlearnBatch, reference=None):
        forget_ce = losses.mean_nll(forward(model, batch.forget).logits, batch.forget["labels"])
        yield self.term(self.gamma, -forget_ce, "neg_forget_ce")
        yield self.term(self.alpha, self.retain_ce(model, batch), "retain_ce")
