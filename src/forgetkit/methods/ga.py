"""Gradient ascent: raise the forget answers' cross-entropy; nothing holds the rest in place."""

from __future__ import annotations

from dataclasses import dataclass

from forgetkit.methods.base import Method, UnlearnBatch, register


@register
@dataclass
class GradAscent(Method):
    name = "ga"
    forget_term = "neg_forget_ce"
    summary = "gradient ascent on the forget set: L = -γ·CE(D_f)"
    needs_retain = False

    def parts(self, model, batch: UnlearnBatch, reference=None):
        yield self.term(self.gamma, -self.ce(model, batch.forget), "neg_forget_ce")
