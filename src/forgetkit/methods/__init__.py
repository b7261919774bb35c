"""Unlearning methods, one module each, registered by name (``forgetkit methods`` lists them)."""

from forgetkit.methods.base import Method, Reference, UnlearnBatch, UnlearnContext, build_method
from forgetkit.registry import GRADIENT, UNLEARNERS, register_package

# Every module here but these registers one method: a new method is its file (and its recipe).
register_package(__name__, __path__, ("adversarial", "base", "command", "losses", "stopping"))

# The gradient methods' classes by name: a view of the one registry (forgetkit.registry).
METHODS = {name: u.params for name, u in UNLEARNERS.items() if u.kind == GRADIENT}

__all__ = ["METHODS", "Method", "Reference", "UnlearnBatch", "UnlearnContext", "build_method"]
