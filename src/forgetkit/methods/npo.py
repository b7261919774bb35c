"""Negative Preference Optimisation (Zhang et al., 2024): a bounded, reference-relative ascent."""

from __future__ import annotations

from dataclasses import dataclass

from forgetkit.methods import losses
from forgetkit.methods.base import ForgetRetain, UnlearnBatch, register


@register
@dataclass
class NPO(ForgetRetain):
    beta: float = 0.1

    name = "npo"
    forget_term = "npo"
    summary = "L = -γ·(2/β)·log σ(-β·Δ_f) + α·CE(D_r), Δ = log π_θ - log π_ref"
    needs_reference = True

    def forget_loss(self, model, batch: UnlearnBatch, reference=None):
        return losses.npo_loss(*self.nll_and_reference(model, reference, batch.forget), self.beta)
