"""Retraining: fine-tune the base on the retain set only. The gold standard and the cost denominator."""

from __future__ import annotations

from dataclasses import dataclass

from forgetkit.methods.base import Method, UnlearnBatch, register
from forgetkit.models.logits import cross_entropy_parts
from forgetkit.registry import EXACT


@register
@dataclass
class Retrain(Method):
    name = "retrain"
    forget_term = "retain_ce"
    summary = "fine-tune the base model on D_r only (the oracle): L = CE(D_r)"
    starts_from_base = True
    guarantee = EXACT  # trained without the records from the start

    def __post_init__(self) -> None:
        self._micro_batch_size = None  # train.micro_batch_size, read when the run starts

    def start(self, ctx) -> dict:
        self._micro_batch_size = ctx.config.train.micro_batch_size
        return {}

    def parts(self, model, batch: UnlearnBatch, reference=None):
        """The retain cross-entropy, in chunks of ``train.micro_batch_size`` rows when set (their logged values
        add up to the batch's)."""
        for part in cross_entropy_parts(model, batch.retain, self._micro_batch_size):
            yield self.term(1.0, part, "retain_ce")
