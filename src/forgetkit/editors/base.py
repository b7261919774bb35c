"""What a closed-form editor is: no training loop, one computed change of a LoRA adapter's weights.

An editor receives the model with the adapter that holds the knowledge (its LoRA weights are the
parameters it changes), the tokenised data of the request (:class:`EditData`) and changes the
adapter in place. Editors are in the one registry (``forgetkit.registry``, ``forgetkit unlearn --method
NAME``) beside the methods, but do not share their loss interface.
"""

from __future__ import annotations

import random
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import torch

from forgetkit.data.formatting import collate
from forgetkit.registry import EDITOR, EMPIRICAL, register_unlearner, unlearner

REQUESTS = ("removal", "query", "response")


@dataclass
class EditData:
    """The request, tokenised.

    ``original``: the trained examples to remove or replace; ``edited``: their replacements (empty
    for removal); ``kept``: the rest of the training set. The model after the edit should behave as
    if trained on ``kept + edited``.
    """

    request: str
    original: list[dict]
    edited: list[dict]
    kept: list[dict]
    pad_token_id: int

    def batches(self, examples: list[dict], batch_size: int) -> list[dict[str, torch.Tensor]]:
        return [collate(examples[i:i + batch_size], self.pad_token_id) for i in range(0, len(examples), batch_size)]

    def sample_new_training_set(self, limit: int | None, seed: int) -> list[dict]:
        """Up to ``limit`` examples of ``kept + edited`` (a seeded sample; every edited example kept)."""
        kept = self.kept
        room = None if limit is None else max(limit - len(self.edited), 0)
        if room is not None and len(kept) > room:
            kept = random.Random(seed).sample(kept, room)
        return kept + self.edited


def lora_parameters(model) -> list[tuple[str, torch.nn.Parameter]]:
    """The adapter's LoRA weights (made to require gradients): what an editor changes."""
    named = [(n, p) for n, p in model.named_parameters() if "lora_" in n]
    for _, p in named:
        p.requires_grad_(True)
    return named


@dataclass
class Editor(ABC):
    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    requests: ClassVar[tuple[str, ...]] = REQUESTS

    @abstractmethod
    def apply(self, model, data: EditData, quiet: bool = False) -> dict:
        """Change ``model``'s adapter weights in place; return what to record (numbers only, no text)."""


def register(cls: type[Editor]) -> type[Editor]:
    """Register an editor class in the one registry (a closed-form unlearner)."""
    register_unlearner(cls.name, cls, EDITOR, EMPIRICAL, cls.summary)
    return cls


def build_editor(name: str, params: dict | None = None) -> Editor:
    return unlearner(name, EDITOR).build(params)
