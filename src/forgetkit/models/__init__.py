"""The model layer: local HF causal LMs and the tiny models of the tests and the demo."""

from forgetkit.models.loading import export_merged, load_model, save_model
from forgetkit.models.tiny import SIZES, build_tiny_model, train_tokenizer

__all__ = ["export_merged", "SIZES", "build_tiny_model", "load_model", "save_model", "train_tokenizer"]
