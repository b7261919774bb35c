"""Gradient difference: gradient ascent on the forget set, descent on the retain set."""

from __future__ import annotations

from dataclasses import dataclass

from forgetkit.methods.base import ForgetRetain, UnlearnBatch, register


@register
@dataclass
class GradDiff(ForgetRetain):
    name = "graddiff"
    forget_term = "neg_forget_ce"
    summary = "gradient difference: L = -γ·CE(D_f) + α·CE(D_r)"

    def forget_loss(self, model, batch: UnlearnBatch, reference=None):
        return -self.ce(model, batch.forget)
