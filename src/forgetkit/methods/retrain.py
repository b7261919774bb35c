"""Retraining: fine-tune the base on the retain set only. The gold standard and the cost denominator."""

from __future__ import annotations

from dataclasses import dataclass

from forgetkit.methods.base import Method, UnlearnBatch, register
from forgetkit.registry import EXACT


@register
@dataclass
class Retrain(Method):
    name = "retrain"
    summary = "fine-tune the base model on D_r only (the oracle): L = CE(D_r)"
    starts_from_base = True
    guarantee = EXACT  # trained without the records from the start

    def loss(self, model, batch: UnlearnBatch, reference=None):
        retain_ce = self.retain_ce(model, batch)
        return retain_ce, {"retain_ce": float(retain_ce.detach())}
