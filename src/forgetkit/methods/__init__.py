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
from forgetkit.methods.base import METHODS, Method, Reference, UnlearnBatch, UnlearnContext, build_method

__all__ = ["METHODS", "Method", "Reference", "UnlearnBatch", "UnlearnContext", "build_method"]
