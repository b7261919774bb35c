"""Negative Preference Optimisation (Zhang et al., 2024): a bounded, reference-relative ascent."""

from __future__ import annotations

from dataclasses import dataclass

from forgetkit.methods import losses
from forgetkit.methods.base import Method, UnlearnBatch, forward, register


@register
@dataclass
class NPO(Method):
    beta: float = 0.1

    name = "npo"
    forget_term = "npo"
    summary = "L = -γ·(2/β)·log σ(-β·Δ_f) + α·CE(D_r), Δ = log π_θ - log π_ref"
    needs_reference = True

    def parts(self, model, batch: UnlearnBatch, reference=None):
        labels = batch.forget["labels"]
        nll, _ = losses.sequence_nll(forward(model, batch.forget).logits, labels)
        ref_nll, _ = losses.sequence_nll(reference(model, batch.forget).logits, labels)
        yield self.term(self.gamma, losses.npo_loss(nll, ref_nll, self.beta), "npo")
        yield self.term(self.alpha, self.retain_ce(model, batch), "retain_ce")
