"""``guardrail``: a system prompt that names the forget subjects and tells the model to refuse questions about
them (the survey's input-based baseline: "Rethinking Machine Unlearning for LLMs", Liu et al. 2024).

The subjects are ``subjects`` when given, else the forget people's names (a prepared run knows them), else
the forget questions themselves, listed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from forgetkit.data.context import PromptContext
from forgetkit.errors import ForgetkitError
from forgetkit.incontext.base import ContextInputs, InputUnlearner, register


@register
@dataclass
class Guardrail(InputUnlearner):
    subjects: list[str] = field(default_factory=list)
    refusal: str = "I'm sorry, but I can't share any information about that person."
    preamble: str = "You are a helpful assistant."

    name = "guardrail"
    summary = "input-based: a system prompt naming the forget subjects and instructing refusal (no weights change)"

    def context(self, inputs: ContextInputs) -> PromptContext:
        subjects = list(self.subjects) or list(dict.fromkeys(inputs.names[r.id] for r in inputs.forget
                                                             if r.id in inputs.names))
        if subjects:
            what = "the following people: " + "; ".join(subjects) + "."
        else:
            if not inputs.forget:
                raise ForgetkitError("guardrail: the forget set is empty; there is nothing to guard")
            what = ("the people and facts asked about in these questions:\n"
                    + "\n".join(f"- {r.question}" for r in inputs.forget))
        system = (f"{self.preamble} You must never reveal, confirm or guess any information about {what}\n"
                  f"If a question is about any of them, reply only: \"{self.refusal}\" "
                  "Answer every other question normally and accurately.")
        return PromptContext(system=system)
