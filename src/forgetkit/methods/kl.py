"""KL minimisation: gradient ascent on the forget set, KL to the reference model on the retain set."""

from __future__ import annotations

from dataclasses import dataclass

from forgetkit.methods import losses
from forgetkit.methods.base import UnlearnBatch, forward, register
from forgetkit.methods.ga import GradAscent


@register
@dataclass
class KL(GradAscent):
    """Gradient ascent's forget term, held in place by the KL to the reference on the retain set."""

    name = "kl"
    summary = "L = -γ·CE(D_f) + α·KL(π_ref ‖ π_θ) on D_r"
    needs_retain = True
    needs_reference = True

    def parts(self, model, batch: UnlearnBatch, reference=None):
        yield from super().parts(model, batch, reference)
        kl = losses.kl_ref_to_model(forward(model, batch.retain).logits, reference(model, batch.retain).logits,
                                    batch.retain["labels"])
        yield self.term(self.alpha, kl, "retain_kl")
