"""Gradient ascent: raise the forget answers' cross-entropy; nothing holds the rest in place."""

from __future__ import annotations

from dataclasses import dataclass

from forgetkit.methods import losses
from forgetkit.methods.base import Method, UnlearnBatch, forward, register


@register
@dataclass
class GradAscent(Method):
    name = "ga"
    forget_term = "neg_forget_ce"
    summary = "gradient ascent on the forget set: L = -γ·CE(D_f)"
    needs_retain = False

    def parts(self, model, batch: UnlearnBatch, reference=None):
        forget_ce = losses.mean_nll(forward(model, batch.forget).logits, batch.forget["labels"])
        yield self.term(self.gamma, -forget_ce, "neg_forget_ce")
