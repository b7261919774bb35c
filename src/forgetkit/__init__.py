"""forgetkit: make a language model forget specific data."""
__version__ = "0.1.0"
