"""``icul``: in-context unlearning (Pawelczyk et al., 2024, "In-Context Unlearning: Language Models as Few-Shot
Unlearners"). Before each question the model reads demonstrations: the forget examples nearest the question,
each with a wrong answer (ICUL's flipped label: the record's first perturbed answer, else ``refusal``), then
``correct_shots`` examples of the retain set with their true answers (drawn once, with ``seed``), so that the
model keeps answering other questions. Nearest: TF-IDF cosine of the questions (``data.context``).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from forgetkit.data.context import PromptContext
from forgetkit.errors import ForgetkitError, require_positive
from forgetkit.incontext.base import ContextInputs, InputUnlearner, register


@register
@dataclass
class ICUL(InputUnlearner):
    forget_shots: int = 4  # forget demonstrations before each question (0: every forget example)
    correct_shots: int = 2
    refusal: str = "I don't know."
    seed: int = 0

    name = "icul"
    summary = "input-based: in-context unlearning, the nearest forget examples with wrong answers before each query"

    def __post_init__(self) -> None:
        require_positive(self, "forget_shots", "correct_shots", allow_zero=True)

    def context(self, inputs: ContextInputs) -> PromptContext:
        if not inputs.forget:
            raise ForgetkitError("icul: the forget set is empty; there is nothing to unlearn")
        shots = [(r.question, r.perturbed_answer[0] if r.perturbed_answer else self.refusal) for r in inputs.forget]
        forget = {r.content_hash() for r in inputs.forget}
        pool = [r for r in inputs.retain if r.content_hash() not in forget]
        correct = random.Random(self.seed).sample(pool, min(self.correct_shots, len(pool)))
        return PromptContext(shots=shots, shots_per_question=self.forget_shots,
                             fixed_shots=[(r.question, r.answer) for r in correct])
