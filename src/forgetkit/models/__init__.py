"""The model layer: local HF causal LMs and the tiny models of the tests and the demo.

The names below load on first use (PEP 562): importing ``forgetkit.models.logits`` (as every method does)
does not pull in transformers' model classes, peft and the tokenizer stack, which ``forgetkit methods`` and
``forgetkit configs`` never need.
"""

from importlib import import_module

_HOMES = {"export_merged": "loading", "load_model": "loading", "save_model": "loading",
          "SIZES": "tiny", "build_tiny_model": "tiny", "train_tokenizer": "tiny"}

__all__ = sorted(_HOMES)


def __getattr__(name: str):
    if name not in _HOMES:
        raise AttributeError(f"module 'forgetkit.models' has no attribute '{name}'")
    return getattr(import_module(f"forgetkit.models.{_HOMES[name]}"), name)
