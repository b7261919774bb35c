"""What an input-based unlearner is: a function from the request to a :class:`PromptContext`.

It trains nothing and changes no weight. The context it builds is placed before every question the model
is asked (``data.context``), so every metric and attack sees the deployed prompt. The price is paid at
inference (the context's tokens on every query), and the context holds the forget set's text (names,
questions), since the model must read it to refuse: the request's data is kept, not deleted.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

from forgetkit.data.context import PromptContext
from forgetkit.data.records import QARecord
from forgetkit.registry import EMPIRICAL, INPUT, register_unlearner, unlearner


@dataclass
class ContextInputs:
    """What an input-based unlearner may read: the forget and retain records and the forget people's names
    (record id → name; empty when the request has none)."""

    forget: list[QARecord]
    retain: list[QARecord]
    names: dict[str, str]


class InputUnlearner(ABC):
    name: ClassVar[str]
    summary: ClassVar[str] = ""

    @abstractmethod
    def context(self, inputs: ContextInputs) -> PromptContext:
        """The context to place before every question."""


def register(cls: type[InputUnlearner]) -> type[InputUnlearner]:
    register_unlearner(cls.name, cls, INPUT, EMPIRICAL, cls.summary)
    return cls


def build_input_unlearner(name: str, params: dict | None = None) -> InputUnlearner:
    return unlearner(name, INPUT).build(params)
