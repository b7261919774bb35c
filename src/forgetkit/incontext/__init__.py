"""Input-based unlearning: unlearners that change no weight, only what the model reads before a question
(a guardrail system prompt, in-context unlearning), registered beside the methods (``forgetkit methods``)."""

from forgetkit.incontext.base import InputUnlearner, build_input_unlearner
from forgetkit.registry import register_package

register_package(__name__, __path__, ("base", "command"))  # every other module registers one unlearner

__all__ = ["InputUnlearner", "build_input_unlearner"]
