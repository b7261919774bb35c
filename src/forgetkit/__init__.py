"""forgetkit: make a language model forget specific data with LoRA adapters, and measure it.

Importing forgetkit switches the Hugging Face libraries offline before any of them is
imported through it: models and data load from local directories only, never from a hub.
"""

import os

for _switch in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
    os.environ.setdefault(_switch, "1")

__version__ = "0.1.0"
