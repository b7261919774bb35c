"""Unlearning methods, one module each, registered by name (``forgetkit methods`` lists them)."""

from forgetkit.methods import (  # noqa: F401  (each module registers its method)
    bounded_graddiff,
    ga,
    graddiff,
    idk_dpo,
    idk_nll,
    influence_peft,
    kl,
    noisy_finetune,
    npo,
    relearn,
    retrain,
    rmu,
    simnpo,
    undial,
)
from forgetkit.methods.base import Method, Reference, UnlearnBatch, UnlearnContext, build_method
from forgetkit.registry import GRADIENT, UNLEARNERS

# The gradient methods' classes by name: a view of the one registry (forgetkit.registry).
METHODS = {name: u.params for name, u in UNLEARNERS.items() if u.kind == GRADIENT}

__all__ = ["METHODS", "Method", "Reference", "UnlearnBatch", "UnlearnContext", "build_method"]
