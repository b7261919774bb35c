"""Input-based unlearning: unlearners that change no weight, only what the model reads before a question
(a guardrail system prompt, in-context unlearning), registered beside the methods (``forgetkit methods``)."""

from forgetkit.incontext import guardrail, icul  # noqa: F401  (each module registers its unlearner)
from forgetkit.incontext.base import InputUnlearner, build_input_unlearner

__all__ = ["InputUnlearner", "build_input_unlearner"]
