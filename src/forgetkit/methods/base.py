"""What every unlearning method is: a named loss over a paired forget/retain batch, and a registry.

A method is a dataclass of its hyper-parameters (checked like any config) with class-level
facts the engine reads: whether it needs retain batches, the reference model π_ref, and
alternative answers to the forget questions ("idk" refusals or the benchmark's "vague" answers).
Its :meth:`Method.parts` yields the loss as weighted parts (γ·forget term, α·retain term, ...), each
with the named terms to log; the training loop backpropagates each part before it asks for the
next, so only one batch's graph (its activations) is alive at a time, and :meth:`Method.loss` is
their sum. It knows nothing of optimisers, devices or processes: the training loop does.

π_ref is the model before unlearning. With LoRA it is the same network with its adapters
disabled (no second copy of the weights); in full mode, a frozen copy (:class:`Reference`).
"""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch

from forgetkit.data.formatting import pad_id
from forgetkit.methods import losses
from forgetkit.models.logits import labelled_logits_mask, takes_logits_to_keep
from forgetkit.registry import EMPIRICAL, GRADIENT, register_unlearner, unlearner
from forgetkit.train import LossPart, UnlearnBatch, sum_parts


def forward(model, part: dict[str, torch.Tensor], hidden_states: bool = False):
    """The model's outputs on a collated part. When the model takes ``logits_to_keep``, ``.logits`` are
    ``[n, V]`` at the n labelled positions (the losses accept either layout), or, when the hidden states
    are asked for (RMU reads only those), the last position's; else the full ``[B, T, V]``."""
    inputs = {"input_ids": part["input_ids"], "attention_mask": part["attention_mask"]}
    if not takes_logits_to_keep(model):
        return model(**inputs, output_hidden_states=hidden_states)
    if hidden_states:
        return model(**inputs, output_hidden_states=True, logits_to_keep=1)
    return model(**inputs, logits_to_keep=labelled_logits_mask(part["labels"]))


class Reference:
    """π_ref's outputs, without gradients: the adapter-disabled model (LoRA) or a frozen copy (full, or
    ``frozen_copy=True``: an adapter that already holds the knowledge is itself trained)."""

    def __init__(self, model, frozen_copy: bool = False) -> None:
        self._lora = hasattr(model, "disable_adapter") and not frozen_copy
        self._copy = None
        if not self._lora:
            self._copy = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def __call__(self, model, part: dict[str, torch.Tensor], hidden_states: bool = False):
        """``model`` is the trained model, unwrapped from any DDP/FSDP wrapper."""
        if self._copy is not None:
            return forward(self._copy, part, hidden_states)
        with model.disable_adapter():
            return forward(model, part, hidden_states)


@dataclass
class UnlearnContext:
    """What a method's optional phases (:meth:`Method.place_adapter`, ``start``, ``finish``) may use."""

    model: torch.nn.Module
    tokenizer: object
    data: object  # forgetkit.train.PairedData
    forget: list  # the forget records (for answer variants; never logged)
    config: object  # forgetkit.request.UnlearnConfig
    out: Path
    quiet: bool
    existing_adapter: bool  # the knowledge lives in the adapter being trained

    @property
    def pad(self) -> int:
        return pad_id(self.tokenizer)

    def batches(self, examples, batch_size: int = 32) -> list[dict[str, torch.Tensor]]:
        from forgetkit.data.formatting import collate

        examples = [{k: e[k] for k in ("input_ids", "labels")} for e in examples]
        return [collate(examples[i:i + batch_size], self.pad) for i in range(0, len(examples), batch_size)]

    def answer_variants(self) -> list[dict]:
        """The forget questions with their perturbed and vague answers, tokenised."""
        from forgetkit.data.formatting import tokenize_qa
        from forgetkit.data.records import QARecord

        variants = [QARecord(r.question, answer, f"{r.id}-variant{i}") for r in self.forget
                    for i, answer in enumerate([*r.perturbed_answer, *([r.vague_answer] if r.vague_answer else [])])]
        if not variants:
            return []
        return tokenize_qa(self.tokenizer, variants, self.config.max_length, name="answer variants").examples


@dataclass
class Method(ABC):
    """Base of every method: γ weighs the forget term, α the retain term."""

    gamma: float = 1.0
    alpha: float = 1.0

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    # the logged loss term that unlearning drives down: the forget side of the objective (``retain_ce`` for a
    # method that trains on the retain set only); the test suite checks every registered method moves it
    forget_term: ClassVar[str] = ""
    needs_retain: ClassVar[bool] = True
    needs_reference: ClassVar[bool] = False
    alternate_answers: ClassVar[str | None] = None  # "idk" or "vague"
    starts_from_base: ClassVar[bool] = False  # retrain: fine-tune the base, not the target
    default_adapter: ClassVar[str] = "lora"  # the adapter kind when the config does not name one
    trains_existing_adapter: ClassVar[bool] = False  # an adapter target is trained itself, not merged
    guarantee: ClassVar[str] = EMPIRICAL  # what the registry and the ledger record for it

    def place_adapter(self, ctx: UnlearnContext, lora):
        """Optional phase before the adapter exists: the LoRA settings to use, and what to record."""
        return lora, {}

    def start(self, ctx: UnlearnContext) -> dict:
        """Optional phase once the adapter exists, before training; returns what to record."""
        return {}

    def train_steps(self, default: float) -> float:
        """The epochs to train (a method may skip training: 0)."""
        return default

    def finish(self, ctx: UnlearnContext) -> dict:
        """Optional phase after training; returns what to record."""
        return {}

    @abstractmethod
    def parts(self, model, batch: UnlearnBatch, reference: Reference | None) -> Iterator[LossPart]:
        """The loss for one batch as weighted parts ``(tensor, {name: float})``, yielded one at a time: each
        part's graph is backpropagated (and freed) before the next part's forward runs."""

    def loss(self, model, batch: UnlearnBatch, reference: Reference | None = None
             ) -> tuple[torch.Tensor, dict[str, float]]:
        """The total loss (the sum of :meth:`parts`, every graph alive at once) and its named terms."""
        return sum_parts(self.parts(model, batch, reference))

    def retain_ce(self, model, batch: UnlearnBatch) -> torch.Tensor:
        return self.ce(model, batch.retain)

    @staticmethod
    def ce(model, part: dict[str, torch.Tensor]) -> torch.Tensor:
        """The mean cross-entropy of a batch part's answer tokens."""
        return losses.mean_nll(forward(model, part).logits, part["labels"])

    @staticmethod
    def nll_and_reference(model, reference: Reference, part: dict[str, torch.Tensor]
                          ) -> tuple[torch.Tensor, torch.Tensor]:
        """Each sequence's answer NLL under the model and under the reference."""
        nll, _ = losses.sequence_nll(forward(model, part).logits, part["labels"])
        ref_nll, _ = losses.sequence_nll(reference(model, part).logits, part["labels"])
        return nll, ref_nll

    @staticmethod
    def term(weight: float, value: torch.Tensor, name: str) -> LossPart:
        """The part ``weight·value``, logging ``value`` under ``name``."""
        return weight * value, {name: float(value.detach())}


class ForgetRetain(Method):
    """The objectives of the shape L = γ·(a forget term) + α·CE(D_r): a method of this shape gives its forget term
    (:meth:`forget_loss`, logged under ``forget_term``)."""

    @abstractmethod
    def forget_loss(self, model, batch: UnlearnBatch, reference: Reference | None) -> torch.Tensor:
        """The forget term, before γ."""

    def parts(self, model, batch: UnlearnBatch, reference: Reference | None = None) -> Iterator[LossPart]:
        yield self.term(self.gamma, self.forget_loss(model, batch, reference), self.forget_term)
        yield self.term(self.alpha, self.retain_ce(model, batch), "retain_ce")


def register(cls: type[Method]) -> type[Method]:
    """Register a method class in the one registry (a gradient unlearner, with its class-level guarantee)."""
    register_unlearner(cls.name, cls, GRADIENT, cls.guarantee, cls.summary)
    return cls


def build_method(name: str, params: dict | None = None) -> Method:
    """The method ``name`` with hyper-parameters ``params`` (unknown keys and wrong types: ConfigError)."""
    return unlearner(name, GRADIENT).build(params)
